"""CSRF protection of the console's changes (sign-out, delete, live-call actions).

Every POST or DELETE must carry the session's CSRF token in the `X-CSRF-Token` header (the
console's script reads it from `/console/api/session`), compared in constant time; a request
whose `Origin` is another site is refused as well. The session cookie is SameSite=Strict too:
three locks, any one of which stops a cross-site request.
"""

from __future__ import annotations

import hmac
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from callbox.server.http.console.sessions import Session
from callbox.server.http.errors import json_error

CSRF_HEADER: Final = "X-CSRF-Token"


def csrf_valid(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(
        session.csrf_token.encode(), (presented or "").encode())


def same_origin(request: web.Request) -> bool:
    """True unless the request names an `Origin` other than the host it was sent to."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


def require_csrf(request: web.Request, session: Session) -> None:
    """A JSON 403 unless the request is same-origin and carries the session's CSRF token."""
    if not same_origin(request):
        raise json_error(web.HTTPForbidden, "cross_origin",
                         "the request comes from another site")
    if not csrf_valid(session, request.headers.get(CSRF_HEADER)):
        raise json_error(web.HTTPForbidden, "csrf",
                         f"the {CSRF_HEADER} header must carry this session's CSRF token "
                         "(reload the console)")
