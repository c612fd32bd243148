"""Fetching a route's SWML document from a URL, per call (agents' routes)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from callbox.server.swml.runner import SwmlError, parse_document

if TYPE_CHECKING:
    from callbox.server.call import Call

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024


class SwmlFetchError(RuntimeError):
    """The SWML URL did not give a usable document; the message says why."""


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """'http://u:p@h/x' -> ('http://h/x', {"Authorization": "Basic ..."})."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, {"Authorization": aiohttp.encode_basic_auth(
        unquote(parts.username), unquote(parts.password or ""))}


def call_payload(call: Call) -> dict[str, Any]:
    return {"call": {
        "call_id": call.id, "direction": call.direction, "from": call.from_user,
        "to": call.to_user, "state": str(call.state),
    }, "vars": {}}


async def fetch_swml(url: str, call: Call) -> dict[str, Any]:
    """POST the call's details to `url` and parse the SWML it returns. Redirects are not
    followed (a redirect could carry the credentials to another host)."""
    clean, auth_headers = split_credentials(url)
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
            clean, json=call_payload(call), headers=auth_headers, allow_redirects=False
        ) as response:
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
            if response.status != 200:
                raise SwmlFetchError(f"SWML fetch from {clean} answered HTTP {response.status}")
    except TimeoutError:
        raise SwmlFetchError(
            f"SWML fetch from {clean} timed out after {FETCH_TIMEOUT_SECONDS:.0f} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise SwmlFetchError(f"SWML fetch from {clean} failed: {exc}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise SwmlFetchError(f"SWML from {clean} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return parse_document(body)
    except SwmlError as exc:
        raise SwmlFetchError(f"SWML from {clean}: {exc}") from None
