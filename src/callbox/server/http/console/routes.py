"""The recordings console at `/console/`: pages, its JSON API and its event stream.

Pages: `/console/` (sign-in form when signed out, else the console), `/console/recordings/<id>`
(404 for another project's recording), static files under `/console/static/`. The JSON API
under `/console/api/` uses the session cookie (see `sessions`), never Basic auth; every change
needs the session's CSRF token (see `csrf`). Handlers are thin: the store, the engine and the
live calls do the work; the player streams the existing capability URL
`/recordings/<id>.<ext>` (HTTP Range).
"""

from __future__ import annotations

import hmac
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import hdrs, web

from callbox.server.call import Call
from callbox.server.http.bodies import read_json_object
from callbox.server.http.console.csrf import require_csrf, same_origin
from callbox.server.http.console.events import ConsoleEvents, sse_stream
from callbox.server.http.console.peaks import MAX_BINS, MIN_BINS, PeaksCache, PeaksError
from callbox.server.http.console.sessions import (
    COOKIE_NAME,
    COOKIE_PATH,
    AttemptLimiter,
    Session,
    SessionStore,
)
from callbox.server.http.context import services_of
from callbox.server.http.errors import json_error
from callbox.server.http.recordings import (
    DOWNLOAD_PREFIX,
    SERVABLE_STATES,
    file_of,
    own_row,
    parse_page_size,
    remove_recording,
    store_of,
)
from callbox.server.recording.engine import Recording, RecordingEngine, RecordingError
from callbox.server.store.recordings import (
    Parties,
    RecordingFilter,
    RecordingRow,
    iso_time,
)
from callbox.server.tasks import spawn
from callbox.wire.recording import FORMATS, PAUSE_BEHAVIORS, STATES, RecordParams

ROOT: Final = "/console/"
API: Final = "/console/api"
STATIC_DIR: Final = Path(__file__).parent / "static"
DEFAULT_BINS: Final = 1000
MAX_SEARCH_CHARS: Final = 128
MAX_BODY_BYTES: Final = 16 * 1024
# What a recording started from the console records unless the request says otherwise.
CONSOLE_RECORD_DEFAULTS: Final = {"format": "wav", "stereo": True}
CONTROL_ACTIONS: Final = ("pause", "resume", "stop")
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BINS: Final = re.compile(r"[0-9]{1,5}")


@dataclass
class ConsoleState:
    pages: dict[str, str]  # name -> HTML
    sessions: SessionStore = field(default_factory=SessionStore)
    limiter: AttemptLimiter = field(default_factory=AttemptLimiter)
    events: ConsoleEvents = field(default_factory=ConsoleEvents)
    peaks: PeaksCache = field(default_factory=PeaksCache)


CONSOLE_KEY: Final[web.AppKey[ConsoleState]] = web.AppKey("console", ConsoleState)


def add_console_routes(app: web.Application) -> None:
    pages = {name: (STATIC_DIR / f"{name}.html").read_text() for name in ("app", "signin")}
    app[CONSOLE_KEY] = ConsoleState(pages)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_close_streams)
    router = app.router
    router.add_get("/console", _to_root)
    router.add_get(ROOT, index_page)
    router.add_get(ROOT + "recordings/{id}", recording_page)
    router.add_post(ROOT + "signin", sign_in)
    router.add_post(ROOT + "signout", sign_out)
    router.add_static(ROOT + "static", STATIC_DIR, follow_symlinks=False)
    router.add_get(API + "/session", api_session)
    router.add_get(API + "/recordings", api_list)
    router.add_get(API + "/recordings/{id}", api_recording)
    router.add_get(API + "/recordings/{id}/peaks", api_peaks)
    router.add_delete(API + "/recordings/{id}", api_delete)
    router.add_get(API + "/calls", api_calls)
    router.add_post(API + "/calls/{call_id}/recordings", api_start)
    router.add_post(API + "/calls/{call_id}/recordings/{rec_id}/{action}", api_control)
    router.add_get(API + "/events", api_events)


# -- pages and sign-in ----------------------------------------------------------------------


async def _to_root(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(ROOT)


async def index_page(request: web.Request) -> web.Response:
    if session_of(request) is None:
        return _signin_page(request, "")
    return _page(request, "app")


async def recording_page(request: web.Request) -> web.Response:
    session = session_of(request)
    if session is None:
        return _signin_page(request, "")
    await own_row(request, session.project_id)  # 404 for another project's recording
    return _page(request, "app")


async def sign_in(request: web.Request) -> web.Response:
    state = console_of(request)
    if not same_origin(request):
        return _signin_page(request, "Sign-in refused: the form was sent from another site.",
                            status=403)
    form = await request.post()
    project_id, token = str(form.get("project", "")), str(form.get("token", ""))
    keys = (f"address:{request.remote}", f"project:{project_id}")
    wait = state.limiter.retry_after(*keys)
    if wait > 0:
        seconds = int(wait) + 1
        return _signin_page(request, f"Too many failed sign-ins: try again in {seconds} s.",
                            status=429, headers={hdrs.RETRY_AFTER: str(seconds)})
    project = services_of(request).auth.authenticate(project_id, token)
    if project is None:
        state.limiter.failed(*keys)
        return _signin_page(request, "Wrong project id or token.", status=401)
    state.limiter.succeeded(*keys)
    session = state.sessions.create(project.id)
    response = web.Response(status=303, headers={hdrs.LOCATION: ROOT})
    response.set_cookie(COOKIE_NAME, session.id, path=COOKIE_PATH, httponly=True, secure=True,
                        samesite="Strict", max_age=int(state.sessions.lifetime))
    return response


async def sign_out(request: web.Request) -> web.Response:
    session = require_session(request)
    require_csrf(request, session)
    console_of(request).sessions.end(session.id)
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=True, httponly=True,
                        samesite="Strict")
    return response


# -- JSON API -------------------------------------------------------------------------------


async def api_session(request: web.Request) -> web.Response:
    session = require_session(request)
    return web.json_response({"project_id": session.project_id,
                              "csrf_token": session.csrf_token})


async def api_list(request: web.Request) -> web.Response:
    session = require_session(request)
    query = request.query
    page_size = parse_page_size(query.get("page_size"))
    try:
        rows, cursor = await store_of(request).list(session.project_id, page_size=page_size,
                                            cursor=query.get("cursor") or None,
                                            where=parse_filter(query))
    except ValueError:
        raise json_error(web.HTTPBadRequest, "invalid_parameter",
                         "cursor is not valid: use the `next` of a previous page",
                         attribute="cursor") from None
    return web.json_response({"data": [row.to_api() for row in rows], "next": cursor})


async def api_recording(request: web.Request) -> web.Response:
    session = require_session(request)
    row = await own_row(request, session.project_id)
    services = services_of(request)
    recorder = services.recorder
    deliveries = (await recorder.webhooks.queue.deliveries(row.id) if recorder is not None
                  else [])
    playable = row.state in SERVABLE_STATES and file_of(row) is not None
    running = recorder.active.get(row.id) if recorder is not None else None
    # running here: the engine's note so far; ended: the note stored with its end
    parties = running.parties if running is not None else row.parties
    return web.json_response({
        **row.to_api(),
        "audio_url": f"{DOWNLOAD_PREFIX}{row.id}.{row.format}" if playable else None,
        "peer_call_id": parties.peer_call_id if parties is not None else None,
        "channel_legend": channel_legend(row, parties),
        "deliveries": [{
            "url": d.url, "event": d.label, "status": d.status, "attempts": d.attempts,
            "last_error": d.last_error, "last_time": iso_time(d.last_time),
        } for d in deliveries],
    })


async def api_peaks(request: web.Request) -> web.Response:
    session = require_session(request)
    row = await own_row(request, session.project_id)
    raw = request.query.get("bins", str(DEFAULT_BINS))
    if not (_BINS.fullmatch(raw) and MIN_BINS <= int(raw) <= MAX_BINS):
        raise _bad("bins", f"bins must be an integer from {MIN_BINS} to {MAX_BINS}, "
                           f"got {raw[:20]!r}")
    path = file_of(row)
    objects = services_of(request).objects
    if row.state not in SERVABLE_STATES or (path is None and not row.location):
        raise json_error(web.HTTPConflict, "not_ready",
                         f"recording {row.id} has no finished file yet (state {row.state!r})")
    cache = console_of(request).peaks
    try:
        if row.location and objects is not None:  # moved to S3
            peaks = await cache.object_peaks(objects, row.location, row.size or 0, row.format,
                                             row.channels, int(raw))
        elif path is not None:
            peaks = await cache.peaks(path, row.format, row.channels, int(raw))
        else:
            raise PeaksError("its audio is in an object storage this node is not configured "
                             "for")
    except PeaksError as exc:
        raise json_error(web.HTTPUnprocessableEntity, "unreadable", str(exc)) from None
    return web.json_response({"bins": peaks.shape[1], "duration": row.duration,
                              "channels": [[round(float(v), 3) for v in channel]
                                           for channel in peaks]})


async def api_delete(request: web.Request) -> web.Response:
    session = require_session(request)
    require_csrf(request, session)
    row = await own_row(request, session.project_id)
    await remove_recording(request, row)
    return web.Response(status=204)


async def api_calls(request: web.Request) -> web.Response:
    session = require_session(request)
    recorder = services_of(request).recorder
    running = list(recorder.active.values()) if recorder is not None else []
    calls = [c for c in services_of(request).calls.values() if _owns(session, c.project_id)]
    return web.json_response({"data": [{
        "call_id": call.id, "from": call.from_user, "to": call.to_user,
        "direction": call.direction, "state": str(call.state), "peer_call_id": call.peer_id,
        "recordings": [_live_recording(r) for r in running if r.call.id == call.id],
    } for call in calls]})


async def api_start(request: web.Request) -> web.Response:
    session = require_session(request)
    require_csrf(request, session)
    call = _own_call(request, session)
    body = await read_json_object(request, MAX_BODY_BYTES)
    try:
        params = RecordParams.parse({**CONSOLE_RECORD_DEFAULTS, **body}, "swml_record_call")
    except ValueError as exc:
        raise json_error(web.HTTPBadRequest, "invalid_parameter", str(exc)) from None
    try:
        recording = _recorder(request).create_recording(call, params,
                                                        project_id=call.project_id)
    except RecordingError as exc:
        raise json_error(web.HTTPConflict, "cannot_record", str(exc)) from None
    spawn(recording.start(), name=f"console-record-{recording.id}")  # reports its own end
    return web.json_response(_live_recording(recording), status=202)


async def api_control(request: web.Request) -> web.Response:
    session = require_session(request)
    require_csrf(request, session)
    call = _own_call(request, session)
    action = request.match_info["action"]
    if action not in CONTROL_ACTIONS:
        raise json_error(web.HTTPNotFound, "not_found",
                         f"action must be one of {', '.join(CONTROL_ACTIONS)}, got {action!r}")
    recording = _recorder(request).active.get(request.match_info["rec_id"])
    if recording is None or recording.call.id != call.id:
        raise json_error(web.HTTPNotFound, "not_found", "no such recording running on the call")
    if action == "pause":
        behavior = (await read_json_object(request, MAX_BODY_BYTES)).get("behavior", "silence")
        if behavior not in PAUSE_BEHAVIORS:
            raise json_error(web.HTTPBadRequest, "invalid_parameter",
                             f"behavior must be 'silence' or 'skip', got {behavior!r}",
                             attribute="behavior")
        recording.pause(behavior)
    elif action == "resume":
        recording.resume()
    else:
        recording.stop()
    return web.json_response(_live_recording(recording))


async def api_events(request: web.Request) -> web.StreamResponse:
    session = require_session(request)
    state = console_of(request)
    return await sse_stream(request, state.events, session.project_id,
                            lambda: state.sessions.get(session.id) is not None)


# -- helpers --------------------------------------------------------------------------------


def console_of(request: web.Request) -> ConsoleState:
    return request.app[CONSOLE_KEY]


def session_of(request: web.Request) -> Session | None:
    """The request's live session, else None. Also starts observing the recording engine
    once it exists, so the console streams its events from then on."""
    state = console_of(request)
    state.events.attach(services_of(request).recorder)
    return state.sessions.get(request.cookies.get(COOKIE_NAME))


def require_session(request: web.Request) -> Session:
    session = session_of(request)
    if session is None:
        raise json_error(web.HTTPUnauthorized, "signed_out",
                         "sign in to the console first (at /console/)")
    return session


def parse_filter(query: Any) -> RecordingFilter:
    """The list's filters from the query string; a JSON 400 naming a wrong one."""
    state, fmt, channels = query.get("state") or None, query.get("format") or None, \
        query.get("channels") or None
    if state is not None and state not in STATES:
        raise _bad("state", f"state must be one of {', '.join(STATES)}, got {state!r}")
    if fmt is not None and fmt not in FORMATS:
        raise _bad("format", f"format must be 'wav' or 'mp3', got {fmt!r}")
    if channels is not None and channels not in ("1", "2"):
        raise _bad("channels", f"channels must be 1 or 2, got {channels!r}")
    search = (query.get("q") or "").strip() or None
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise _bad("q", f"the search must be at most {MAX_SEARCH_CHARS} characters")
    since, until = _day(query, "from"), _day(query, "to")
    return RecordingFilter(state=state, format=fmt,
                           channels=int(channels) if channels else None,
                           since=since, until=until + 86400 if until is not None else None,
                           search=search)


def channel_legend(row: RecordingRow, parties: Parties | None) -> list[str]:
    """Who each channel holds: left = the recorded leg's party (speak), right = what it hears
    (listen); on the inbound leg of a bridged call, caller left and callee right. Without a
    note (a recording repaired after a crash, or still running on another node) the labels
    say what each channel is, not whom."""
    party = parties.speaker if parties is not None else "the recorded party"
    hears = parties.hearer if parties is not None else "what that party hears"
    if row.channels == 2:
        return [f"Left: {party}", f"Right: {hears}"]
    heard = {"speak": party, "listen": hears, "both": f"{party} and {hears}, mixed"}
    return [f"Mono: {heard.get(row.direction, row.direction)}"]


def _live_recording(recording: Recording) -> dict[str, Any]:
    return {"id": recording.id, "control_id": recording.control_id,
            "state": recording.state.value if recording.state is not None else "starting",
            "format": recording.params.format, "channels": recording.params.channels}


def _owns(session: Session, project_id: str) -> bool:
    return hmac.compare_digest(project_id.encode(), session.project_id.encode())


def _own_call(request: web.Request, session: Session) -> Call:
    call = services_of(request).calls.get(request.match_info["call_id"])
    if call is None or not _owns(session, call.project_id):
        raise json_error(web.HTTPNotFound, "not_found", "no such live call")
    return call


def _recorder(request: web.Request) -> RecordingEngine:
    recorder = services_of(request).recorder
    if recorder is None:
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "recording is not available yet; try again")
    return recorder


def _bad(attribute: str, message: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "invalid_parameter", message, attribute=attribute)


def _day(query: Any, name: str) -> float | None:
    """A `YYYY-MM-DD` (UTC) as unix seconds at its start."""
    raw = query.get(name) or None
    if raw is None:
        return None
    if not _DATE.fullmatch(raw):
        raise _bad(name, f"{name} must be a date YYYY-MM-DD, got {raw[:20]!r}")
    try:
        return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise _bad(name, f"{name} is not a valid date: {raw!r}") from None


def _page(request: web.Request, name: str, *, status: int = 200,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=console_of(request).pages[name], status=status,
                        content_type="text/html", headers=headers)


def _signin_page(request: web.Request, error: str, *, status: int = 200,
                 headers: dict[str, str] | None = None) -> web.Response:
    page = console_of(request).pages["signin"].replace("{{error}}", html.escape(error))
    return web.Response(text=page, status=status, content_type="text/html", headers=headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/console" or request.path.startswith(ROOT):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith(ROOT + "static/"):
            response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")


async def _close_streams(app: web.Application) -> None:
    app[CONSOLE_KEY].events.close_all()
