"""The platform's side of SWAIG: POST a function call to an agent's `web_hook_url`.

The request body is the one agents.md documents (and the official package expects):

    {"function": "start_recording",
     "argument": {"parsed": [{...args...}], "raw": "{...args as JSON...}"},
     "call_id": "...", "project_id": "...", "content_type": "text/swaig", "version": "2.0",
     "global_data": {...}, "meta_data": {...}, "caller_id_num": "...", "caller_id_name": "..."}

Credentials in the URL's userinfo become a Basic Authorization header. The URL is called as
given, query included (the official package adds `?__token=...` and checks it). Redirects are
followed only to the same scheme, host and port (the credentials never go to another host),
at most `MAX_REDIRECTS` times. The reply must be a JSON object; anything else is a
`SwaigCallError` whose message says what came back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from callbox.server.swml.fetch import split_credentials
from callbox.wire.json_depth import loads_bounded

log = logging.getLogger(__name__)

SWAIG_TIMEOUT_SECONDS: Final = 20.0
SWAIG_CONNECT_TIMEOUT_SECONDS: Final = 5.0
MAX_REPLY_BYTES: Final = 1024 * 1024
MAX_REDIRECTS: Final = 3
SWAIG_VERSION: Final = "2.0"
CONTENT_TYPE: Final = "text/swaig"


class SwaigCallError(RuntimeError):
    """The function's webhook did not give a usable reply; the message says why."""


def shown_url(url: str) -> str:
    """The URL for logs: no userinfo, no query (it may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def swaig_request(function: str, args: Mapping[str, Any], *, call_id: str, project_id: str,
                  global_data: Mapping[str, Any], meta_data: Mapping[str, Any],
                  caller_id_num: str, caller_id_name: str) -> dict[str, Any]:
    """The SWAIG request body for one function call."""
    return {
        "function": function,
        "argument": {"parsed": [dict(args)], "raw": json.dumps(dict(args))},
        "call_id": call_id,
        "project_id": project_id,
        "content_type": CONTENT_TYPE,
        "version": SWAIG_VERSION,
        "global_data": dict(global_data),
        "meta_data": dict(meta_data),
        "caller_id_num": caller_id_num,
        "caller_id_name": caller_id_name,
    }


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


async def post_swaig(session: aiohttp.ClientSession, url: str, body: Mapping[str, Any], *,
                     timeout: float = SWAIG_TIMEOUT_SECONDS) -> dict[str, Any]:
    """POST `body` to `url`; the reply as a dict, or SwaigCallError."""
    target, headers = split_credentials(url)
    origin = _origin(target)
    shown = shown_url(target)
    client_timeout = aiohttp.ClientTimeout(total=timeout, connect=SWAIG_CONNECT_TIMEOUT_SECONDS)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with session.post(target, json=dict(body), headers=headers,
                                    timeout=client_timeout, allow_redirects=False) as response:
                raw = await response.content.read(MAX_REPLY_BYTES + 1)
                status = response.status
                location = response.headers.get("Location")
                content_type = response.headers.get("Content-Type", "")
        except TimeoutError:
            raise SwaigCallError(f"{shown} did not answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise SwaigCallError(f"cannot reach {shown}: {exc}") from None
        if status in (301, 302, 303, 307, 308) and location:
            following = urljoin(target, location)
            if _origin(following) != origin:
                raise SwaigCallError(
                    f"{shown} redirected to another host ({shown_url(following)}); "
                    "not followed, so the credentials stay with the function's host")
            target, shown = following, shown_url(following)
            continue
        break
    else:
        raise SwaigCallError(f"{shown}: more than {MAX_REDIRECTS} redirects")
    if status != 200:
        detail = raw[:200].decode("utf-8", "replace").strip()
        raise SwaigCallError(f"{shown} answered HTTP {status}: {detail or 'no body'}")
    if len(raw) > MAX_REPLY_BYTES:
        raise SwaigCallError(f"{shown} answered more than {MAX_REPLY_BYTES} bytes")
    try:
        reply = loads_bounded(raw)
    except (ValueError, UnicodeDecodeError):
        excerpt = raw[:80].decode("utf-8", "replace")
        raise SwaigCallError(
            f"{shown} answered something that is not JSON (Content-Type {content_type!r}, "
            f"starting {excerpt!r})") from None
    if not isinstance(reply, dict):
        raise SwaigCallError(f"{shown} answered JSON that is not an object: {raw[:80]!r}")
    return reply
