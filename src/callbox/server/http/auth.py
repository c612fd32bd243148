"""HTTP Basic authentication of API requests with a project's id and token."""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

from callbox.server.config import Project
from callbox.server.http.context import services_of
from callbox.server.http.errors import json_error

REALM: Final = "callbox"


def require_project(request: web.Request) -> Project:
    """The project whose id:token the request carries (HTTP Basic), else a JSON 401."""
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    project = services_of(request).auth.from_authorization(header)
    if project is None:
        raise json_error(web.HTTPUnauthorized, "unauthorized",
                         "HTTP Basic authentication with a project id and its token is required",
                         headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'})
    return project
