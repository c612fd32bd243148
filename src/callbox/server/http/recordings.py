"""Recordings over HTTP: the REST API (list, get, delete) and the file downloads.

REST, like SignalWire's: ``/api/relay/rest/recordings``, HTTP Basic auth with a project's id
and token, JSON bodies; times in ISO 8601 UTC. A project sees only its own recordings: another
project's id answers 404, exactly like an unknown one. Errors are
``{"errors": [{"code": ..., "message": ..., "attribute": ...}]}``.

Downloads: ``GET /recordings/<id>.<wav|mp3>`` (the url in recording events) needs no
credentials: the id (128 random bits) is the capability, so the url can be handed to a player or
a webhook receiver as it is. The id is checked against ``^[0-9a-f]{32}$`` before anything else,
and only the file the store names for that id, under that exact name, is ever served.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from aiohttp import hdrs, web

from callbox.server.store.recordings import RecordingRow

if TYPE_CHECKING:
    from callbox.server.app import Platform
    from callbox.server.config import Project
    from callbox.server.store.recordings import RecordingStore

API_PATH: Final = "/api/relay/rest/recordings"
DOWNLOAD_PREFIX: Final = "/recordings/"
DEFAULT_PAGE_SIZE: Final = 25
MAX_PAGE_SIZE: Final = 1000
CONTENT_TYPES: Final = {"wav": "audio/wav", "mp3": "audio/mpeg"}
# A finished file exists in these states (an `error` recording keeps what was written).
SERVABLE_STATES: Final = frozenset({"finished", "error"})
REALM: Final = "callbox"

_ID: Final = re.compile(r"[0-9a-f]{32}")
_FILE_NAME: Final = re.compile(r"([0-9a-f]{32})\.(wav|mp3)")
_PAGE_SIZE: Final = re.compile(r"[0-9]{1,7}")


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get(API_PATH, list_recordings)
    app.router.add_get(API_PATH + "/{id}", get_recording)
    app.router.add_delete(API_PATH + "/{id}", delete_recording)
    app.router.add_get(DOWNLOAD_PREFIX + "{name}", download_recording)


# -- handlers -------------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    project = _authenticate(request)
    page_size = _page_size(request.query.get("page_size"))
    page_token = request.query.get("page_token") or None
    try:
        rows, next_token = _store(request).list(project.id, page_size=page_size,
                                                cursor=page_token)
    except ValueError:
        raise _error(web.HTTPBadRequest, "invalid_parameter",
                     "page_token is not valid: use the `next` link of a previous page",
                     attribute="page_token") from None
    base = _public_url(request) + API_PATH
    return web.json_response({
        "data": [row.to_api() for row in rows],
        "links": {
            "self": _page_url(base, page_size, page_token),
            "first": _page_url(base, page_size, None),
            "next": _page_url(base, page_size, next_token) if next_token else None,
        },
    })


async def get_recording(request: web.Request) -> web.Response:
    project = _authenticate(request)
    row = _own_row(request, project)
    return web.json_response(row.to_api())


async def delete_recording(request: web.Request) -> web.Response:
    project = _authenticate(request)
    row = _own_row(request, project)
    if row.is_active:
        raise _error(web.HTTPConflict, "recording_in_progress",
                     f"recording {row.id} is still in progress (state {row.state!r}); "
                     "stop it, then delete it")
    path = _file_of(row)
    if path is not None:
        await asyncio.get_running_loop().run_in_executor(None, _unlink, path)
    _store(request).delete(row.id)
    return web.Response(status=204)


async def download_recording(request: web.Request) -> web.StreamResponse:
    """The finished file, with HTTP Range support. No credentials: the id is the capability."""
    match = _FILE_NAME.fullmatch(request.match_info["name"])
    if match is None:
        raise _not_found()
    rec_id, ext = match.groups()
    row = _store(request).get(rec_id)
    if row is None or row.format != ext or row.state not in SERVABLE_STATES:
        raise _not_found()
    path = _file_of(row)
    if path is None:
        raise _not_found()
    return web.FileResponse(path, headers={
        hdrs.CONTENT_TYPE: CONTENT_TYPES[ext],
        hdrs.CACHE_CONTROL: "private",
    })


# -- helpers --------------------------------------------------------------------------------


def _error(cls: type[web.HTTPException], code: str, message: str, *,
           attribute: str | None = None,
           headers: dict[str, str] | None = None, **init: Any) -> web.HTTPException:
    """A JSON error response; `init` goes to the exception class (413 needs its sizes)."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if attribute is not None:
        detail["attribute"] = attribute
    return cls(text=json.dumps({"errors": [detail]}), content_type="application/json",
               headers=headers, **init)


def _not_found() -> web.HTTPException:
    return _error(web.HTTPNotFound, "not_found", "no such recording")


def _platform(request: web.Request) -> Platform:
    # Imported here: http/app.py imports this module to register the routes.
    from callbox.server.http.app import PLATFORM_KEY

    return request.app[PLATFORM_KEY]


def _store(request: web.Request) -> RecordingStore:
    store: RecordingStore | None = getattr(_platform(request), "recordings", None)
    if store is None:
        raise _error(web.HTTPServiceUnavailable, "unavailable",
                     "the recording store is not open yet; try again")
    return store


def _public_url(request: web.Request) -> str:
    return _platform(request).config.http.public_url.rstrip("/")


def _authenticate(request: web.Request) -> Project:
    """The project whose id:token the request carries (HTTP Basic), else 401."""
    project = None
    credentials = _basic_credentials(request.headers.get(hdrs.AUTHORIZATION, ""))
    if credentials is not None:
        project = _match_project(_platform(request).config.projects, *credentials)
    if project is None:
        raise _error(web.HTTPUnauthorized, "unauthorized",
                     "HTTP Basic authentication with a project id and its token is required",
                     headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'})
    return project


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """``Basic base64(login:password)`` -> (login, password); None for anything else."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, colon, password = decoded.partition(":")
    return (login, password) if colon else None


def _match_project(projects: list[Project], login: str, password: str) -> Project | None:
    """Constant-time: every project is compared, on both fields, whatever matches."""
    found = None
    given_id, given_token = login.encode(), password.encode()
    for project in projects:
        id_ok = hmac.compare_digest(project.id.encode(), given_id)
        token_ok = hmac.compare_digest(project.token.encode(), given_token)
        if id_ok & token_ok:
            found = project
    return found


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if _PAGE_SIZE.fullmatch(raw) and 1 <= int(raw) <= MAX_PAGE_SIZE:
        return int(raw)
    raise _error(web.HTTPBadRequest, "invalid_parameter",
                 f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {raw!r}",
                 attribute="page_size")


def _page_url(base: str, page_size: int, page_token: str | None) -> str:
    query: dict[str, str | int] = {"page_size": page_size}
    if page_token:
        query["page_token"] = page_token
    return f"{base}?{urlencode(query)}"


def _own_row(request: web.Request, project: Project) -> RecordingRow:
    """The project's recording named in the path; 404 for any other (never another's)."""
    rec_id = request.match_info["id"]
    if _ID.fullmatch(rec_id) is None:
        raise _not_found()
    row = _store(request).get(rec_id)
    if row is None or not hmac.compare_digest(row.project_id.encode(), project.id.encode()):
        raise _not_found()
    return row


def _file_of(row: RecordingRow) -> Path | None:
    """The recording's file, only if the stored path has the name the id implies."""
    if not row.path:
        return None
    path = Path(row.path)
    if path.name != f"{row.id}.{row.format}" or _ID.fullmatch(row.id) is None:
        return None
    return path


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
