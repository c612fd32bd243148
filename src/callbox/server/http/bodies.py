"""Request bodies of the JSON API: bounded, parsed with a nesting bound, a JSON object."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from callbox.server.http.errors import json_error
from callbox.wire.json_depth import loads_bounded


async def read_json_object(request: web.Request, max_bytes: int,
                           shape: str = "") -> dict[str, Any]:
    """The body as a JSON object (empty = `{}`); a 413 over `max_bytes`, a 400 otherwise.
    `shape` (e.g. ``{"function": NAME}``) is shown in the error messages."""
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise json_error(web.HTTPRequestEntityTooLarge, "too_large",
                         f"the body must be at most {max_bytes} bytes",
                         max_size=max_bytes, actual_size=len(raw))
    hint = f": {shape}" if shape else ""
    try:
        body = loads_bounded(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise json_error(web.HTTPBadRequest, "invalid_json",
                         f"the body must be JSON{hint}") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "invalid_json",
                         f"the body must be a JSON object{hint}")
    return body
