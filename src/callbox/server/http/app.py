"""The web side: one aiohttp Application, routes in one place, thin handlers.

HTTPS (and WSS: RELAY at "/") on `[http] listen`; the REST API, recording downloads, live calls
and the operators' metrics. Handlers get the platform's `Services` (never the platform).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from callbox.server.database import DatabaseUnavailable
from callbox.server.http.calls import add_call_routes
from callbox.server.http.console import add_console_routes
from callbox.server.http.context import SERVICES_KEY, services_of
from callbox.server.http.errors import json_error
from callbox.server.http.metrics import add_metrics_routes
from callbox.server.http.recordings import add_recording_routes
from callbox.server.services import Services

log = logging.getLogger(__name__)

WebSocketHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DATABASE_RETRY_AFTER = "5"  # seconds, in the 503 of a request made while the database is down


@web.middleware
async def database_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that needs the metadata database while it is down gets a 503 to retry, not a
    500."""
    try:
        return await handler(request)
    except DatabaseUnavailable as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        raise json_error(web.HTTPServiceUnavailable, "database_unavailable",
                         "the metadata database cannot be reached; try again shortly",
                         headers={"Retry-After": DATABASE_RETRY_AFTER}) from None


async def health(request: web.Request) -> web.Response:
    """For load balancers: 200 `ok` once the node takes calls (SIP listens, media workers up);
    503 `unavailable` while it starts, drains or stops. No credentials, so no counts (see
    /metrics)."""
    if not services_of(request).ready:
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok"})


def make_app(services: Services, relay: WebSocketHandler) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024, middlewares=[database_unavailable])
    app[SERVICES_KEY] = services
    app.router.add_get("/health", health)
    add_metrics_routes(app)  # /metrics: counts for operators (project credentials)
    add_recording_routes(app)  # REST /api/relay/rest/recordings and /recordings/<id>.<ext>
    add_call_routes(app)  # /api/callbox/calls[/{id}/swaig]: live calls, SWAIG by hand
    add_console_routes(app)  # /console/: the recordings console in the browser
    app.router.add_get("/", relay)  # RELAY (JSON-RPC over WebSocket)
    return app
