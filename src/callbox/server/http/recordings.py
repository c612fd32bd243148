"""Recordings over HTTP: the REST API (list, get, delete) and the file downloads.

REST, like SignalWire's: ``/api/relay/rest/recordings``, HTTP Basic auth with a project's id
and token, JSON bodies; times in ISO 8601 UTC. A project sees only its own recordings: another
project's id answers 404, exactly like an unknown one. Errors are
``{"errors": [{"code": ..., "message": ..., "attribute": ...}]}``.

Downloads: ``GET /recordings/<id>.<wav|mp3>`` (the url in recording events) needs no
credentials: the id (128 random bits) is the capability, so the url can be handed to a player or
a webhook receiver as it is. The id is checked against ``^[0-9a-f]{32}$`` before anything else,
and only the file the store names for that id, under that exact name, is ever served. A
recording moved to S3 (its row has a `location`) is proxied from the bucket, Range included and
streamed chunk by chunk, so the same url keeps working and is still all a client needs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeVar
from urllib.parse import urlencode

from aiohttp import hdrs, web

from callbox.server.http.auth import require_project
from callbox.server.http.context import services_of
from callbox.server.http.errors import json_error
from callbox.server.storage.s3 import ObjectStore, ObjectStoreError
from callbox.server.storage.uploads import object_key
from callbox.server.store.recordings import RecordingRow

if TYPE_CHECKING:
    from callbox.server.store.recordings import RecordingStore

log = logging.getLogger(__name__)

API_PATH: Final = "/api/relay/rest/recordings"
DOWNLOAD_PREFIX: Final = "/recordings/"
DEFAULT_PAGE_SIZE: Final = 25
MAX_PAGE_SIZE: Final = 1000
CONTENT_TYPES: Final = {"wav": "audio/wav", "mp3": "audio/mpeg"}
# A finished file exists in these states (an `error` recording keeps what was written).
SERVABLE_STATES: Final = frozenset({"finished", "error"})

_ID: Final = re.compile(r"[0-9a-f]{32}")
_FILE_NAME: Final = re.compile(r"([0-9a-f]{32})\.(wav|mp3)")
_PAGE_SIZE: Final = re.compile(r"[0-9]{1,7}")
_EMPTY_SUFFIX_RANGE: Final = re.compile(r"bytes\s*=\s*-\s*0+", re.ASCII | re.IGNORECASE)
_ONE_RANGE: Final = re.compile(r"bytes=(?:[0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})", re.ASCII)
DOWNLOAD_CHUNK_BYTES: Final = 256 * 1024
T = TypeVar("T")


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get(API_PATH, list_recordings)
    app.router.add_get(API_PATH + "/{id}", get_recording)
    app.router.add_delete(API_PATH + "/{id}", delete_recording)
    app.router.add_get(DOWNLOAD_PREFIX + "{name}", download_recording)


# -- handlers -------------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    project = require_project(request)
    page_size = parse_page_size(request.query.get("page_size"))
    page_token = request.query.get("page_token") or None
    try:
        rows, next_token = await store_of(request).list(project.id, page_size=page_size,
                                                cursor=page_token)
    except ValueError:
        raise json_error(web.HTTPBadRequest, "invalid_parameter",
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
    project = require_project(request)
    row = await own_row(request, project.id)
    return web.json_response(row.to_api())


async def delete_recording(request: web.Request) -> web.Response:
    project = require_project(request)
    row = await own_row(request, project.id)
    await remove_recording(request, row)
    return web.Response(status=204)


async def remove_recording(request: web.Request, row: RecordingRow) -> None:
    """Delete a recording's file, row and webhook deliveries log; a JSON 409 while it is
    still in progress."""
    if row.is_active:
        raise json_error(web.HTTPConflict, "recording_in_progress",
                     f"recording {row.id} is still in progress (state {row.state!r}); "
                     "stop it, then delete it")
    await _delete_object(request, row)
    path = file_of(row)
    if path is not None:
        await asyncio.get_running_loop().run_in_executor(None, _unlink, path)
    await store_of(request).delete(row.id)
    recorder = services_of(request).recorder
    if recorder is not None:
        await recorder.webhooks.queue.forget(row.id)


async def download_recording(request: web.Request) -> web.StreamResponse:
    """The finished file, with HTTP Range support. No credentials: the id is the capability."""
    match = _FILE_NAME.fullmatch(request.match_info["name"])
    if match is None:
        raise _not_found()
    rec_id, ext = match.groups()
    row = await store_of(request).get(rec_id)
    if row is None or row.format != ext or row.state not in SERVABLE_STATES:
        raise _not_found()
    headers: dict[str, str] = {hdrs.CONTENT_TYPE: CONTENT_TYPES[ext],
                               hdrs.CACHE_CONTROL: "private"}
    byte_range = request.headers.get(hdrs.RANGE, "").strip()
    path = file_of(row)
    if not row.location and path is not None and not await _run_blocking(path.exists):
        row = await store_of(request).get(rec_id) or row  # moved to S3 since we looked?
    if row.location:
        return await _send_object(request, row, headers, byte_range)
    if path is None:
        raise _not_found()
    if "," in byte_range:  # several ranges: allowed to ignore them, so the whole file
        return await _send_whole_file(request, path, headers)
    if _EMPTY_SUFFIX_RANGE.fullmatch(byte_range):  # "the last 0 bytes": unsatisfiable
        size = await _run_blocking(_file_size, path)
        if size is None:
            raise _not_found()
        return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{size}"})
    return web.FileResponse(path, headers=headers)


# -- helpers --------------------------------------------------------------------------------


def _not_found() -> web.HTTPException:
    return json_error(web.HTTPNotFound, "not_found", "no such recording")


def store_of(request: web.Request) -> RecordingStore:
    """The recording store (a 503 before the platform opened it)."""
    store = services_of(request).recordings
    if store is None:
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "the recording store is not open yet; try again")
    return store


def _public_url(request: web.Request) -> str:
    return services_of(request).public_url.rstrip("/")


def parse_page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if _PAGE_SIZE.fullmatch(raw) and 1 <= int(raw) <= MAX_PAGE_SIZE:
        return int(raw)
    raise json_error(web.HTTPBadRequest, "invalid_parameter",
                 f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {raw!r}",
                 attribute="page_size")


def _page_url(base: str, page_size: int, page_token: str | None) -> str:
    query: dict[str, str | int] = {"page_size": page_size}
    if page_token:
        query["page_token"] = page_token
    return f"{base}?{urlencode(query)}"


async def own_row(request: web.Request, project_id: str) -> RecordingRow:
    """The project's recording named in the path (`{id}`); a JSON 404 for any other (never
    another project's)."""
    rec_id = request.match_info["id"]
    if _ID.fullmatch(rec_id) is None:
        raise _not_found()
    row = await store_of(request).get(rec_id)
    if row is None or not hmac.compare_digest(row.project_id.encode(), project_id.encode()):
        raise _not_found()
    return row


def file_of(row: RecordingRow) -> Path | None:
    """The recording's file, only if the stored path has the name the id implies."""
    if not row.path:
        return None
    path = Path(row.path)
    if path.name != f"{row.id}.{row.format}" or _ID.fullmatch(row.id) is None:
        return None
    return path


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _run_blocking(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _read_chunk(file: BinaryIO) -> bytes:
    return file.read(DOWNLOAD_CHUNK_BYTES)


async def _send_whole_file(request: web.Request, path: Path,
                           headers: dict[str, str]) -> web.StreamResponse:
    """200 with the whole file, read off the event loop chunk by chunk."""
    try:
        file = await _run_blocking(path.open, "rb")
    except OSError:
        raise _not_found() from None
    try:
        size = os.fstat(file.fileno()).st_size
        response = web.StreamResponse(headers={**headers, hdrs.ACCEPT_RANGES: "bytes"})
        response.content_length = size
        await response.prepare(request)
        while request.method != hdrs.METH_HEAD and (
                chunk := await _run_blocking(_read_chunk, file)):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await _run_blocking(file.close)


# -- audio in the object storage ------------------------------------------------------------


def _objects(request: web.Request) -> ObjectStore:
    objects = services_of(request).objects
    if objects is None:
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "this recording is in S3 object storage, which is not configured "
                         "([storage] s3_endpoint) or not open yet")
    return objects


def _storage_failed(exc: ObjectStoreError) -> web.HTTPException:
    log.warning("recording storage: %s", exc)
    return json_error(web.HTTPServiceUnavailable, "storage_unavailable",
                      "the recording storage did not answer; try again later")


async def _send_object(request: web.Request, row: RecordingRow, headers: dict[str, str],
                       byte_range: str) -> web.StreamResponse:
    """The object, streamed from S3 with the client's Range passed on (206 and Content-Range
    come back as S3 gives them)."""
    objects = _objects(request)
    if _EMPTY_SUFFIX_RANGE.fullmatch(byte_range):
        return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{row.size}"})
    if not _ONE_RANGE.fullmatch(byte_range):
        byte_range = ""  # several ranges, or one we need not honour: the whole object
    try:
        if request.method == hdrs.METH_HEAD:
            info = await objects.head(row.location)
            if info is None:
                raise _not_found()
            return web.Response(headers={**headers, hdrs.ACCEPT_RANGES: "bytes",
                                         hdrs.CONTENT_LENGTH: str(info.size)})
        body = await objects.get(row.location, byte_range or None)
    except ObjectStoreError as exc:
        if exc.status == 404:
            raise _not_found() from None
        if exc.status == 416:
            return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{row.size}"})
        raise _storage_failed(exc) from None
    try:
        response = web.StreamResponse(status=body.status,
                                      headers={**headers, hdrs.ACCEPT_RANGES: "bytes"})
        response.content_length = body.size
        if body.content_range:
            response.headers[hdrs.CONTENT_RANGE] = body.content_range
        await response.prepare(request)
        async for chunk in body.chunks():
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        body.close()


async def _delete_object(request: web.Request, row: RecordingRow) -> None:
    """Remove the recording's object. Without a `location` it may still be uploading: its key
    is removed too when S3 is configured (a failure then is only logged: the audio is local)."""
    objects = services_of(request).objects
    if not row.location and objects is None:
        return
    try:
        await _objects(request).delete(row.location or object_key(row))
    except ObjectStoreError as exc:
        if row.location:
            raise _storage_failed(exc) from None
        log.warning("recording %s: %s", row.id, exc)
