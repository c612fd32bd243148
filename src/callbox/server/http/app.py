"""The web side: one aiohttp Application, routes in one place, thin handlers.

HTTPS (and WSS, RELAY at "/" from issue 3/6) on `[http] listen`; the REST API and recording
downloads come with issue 2/6.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from callbox.server.http.calls import add_call_routes
from callbox.server.http.recordings import add_recording_routes

if TYPE_CHECKING:
    from callbox.server.app import Platform

PLATFORM_KEY: web.AppKey[Platform] = web.AppKey("platform")


async def health(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    return web.json_response({
        "status": "healthy",
        "calls": len(platform.calls),
        "recordings": len(platform.recorder.active) if platform.recorder else 0,
        "media_ticks": platform.clock.ticks,
        "media_late_ticks": platform.clock.late_ticks,
        "media_max_behind_ms": round(platform.clock.max_behind * 1000, 1),
        "rtp": platform.media_counters(),  # totals since start: packets_received, ...
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    })


def make_app(platform: Platform) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[PLATFORM_KEY] = platform
    app.router.add_get("/health", health)
    add_recording_routes(app)  # REST /api/relay/rest/recordings and /recordings/<id>.<ext>
    add_call_routes(app)  # /api/callbox/calls[/{id}/swaig]: live calls, SWAIG by hand
    app.router.add_get("/", platform.relay.websocket)  # RELAY (JSON-RPC over WebSocket)
    return app
