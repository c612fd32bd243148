"""`GET /metrics`: operators' counters in the Prometheus text exposition format (0.0.4).

Needs a project's credentials (HTTP Basic, project id and token): the counts say how busy the
platform is, which is not for anyone on the network. `/health` only says the process is alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs, web

from callbox import __version__
from callbox.server.http.auth import require_project
from callbox.server.http.context import services_of
from callbox.server.services import Services
from callbox.server.worker.messages import HostSnapshot

METRICS_PATH: Final = "/metrics"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "callbox_"


def add_metrics_routes(app: web.Application) -> None:
    app.router.add_get(METRICS_PATH, metrics)


async def metrics(request: web.Request) -> web.Response:
    require_project(request)
    loop_module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    services = services_of(request)
    media = await services.media.snapshot() if services.media is not None else HostSnapshot()
    text = render_metrics(services, media, event_loop=loop_module)
    return web.Response(body=text.encode(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})


def render_metrics(services: Services, media: HostSnapshot, *, event_loop: str) -> str:
    recorder = services.recorder
    lines: list[str] = []
    lines += _metric("info", "gauge", "callbox version and event loop", 1,
                     labels=f'version="{__version__}",event_loop="{event_loop}"')
    lines += _metric("calls", "gauge", "live calls", len(services.calls))
    lines += _metric("recordings_active", "gauge", "recordings in progress",
                     len(recorder.active) if recorder is not None else 0)
    hosts = services.media
    if hosts is not None:
        lines += _metric("media_workers", "gauge", "media worker processes (0: media in the "
                         "main process)", hosts.workers)
        lines += _metric("media_worker_restarts_total", "counter",
                         "media workers restarted after they died", hosts.restarts)
    lines += _metric("media_ticks_total", "counter", "media clock ticks (20 ms each)",
                     media.ticks)
    lines += _metric("media_late_ticks_total", "counter",
                     "media clock ticks skipped after a stall", media.late_ticks)
    lines += _metric("media_max_behind_seconds", "gauge",
                     "the longest media clock stall seen", round(media.max_behind, 4))
    for name, value in sorted(media.counters.items()):
        lines += _metric(f"rtp_{name}_total", "counter",
                         f"RTP {name.replace('_', ' ')} since start", value)
    lines += _trunk_metrics(services.trunk_states())
    return "\n".join(lines) + "\n"


def _trunk_metrics(states: dict[str, str]) -> list[str]:
    """One sample per registering trunk: registered 1/0, and its current state as a label."""
    if not states:
        return []
    registered, state = PREFIX + "trunk_registered", PREFIX + "trunk_state"
    lines = [f"# HELP {registered} 1 while the trunk's registration is current",
             f"# TYPE {registered} gauge"]
    lines += [f'{registered}{{trunk="{name}"}} {int(value == "registered")}'
              for name, value in sorted(states.items())]
    lines += [f"# HELP {state} the trunk's registration state (the sample with value 1)",
              f"# TYPE {state} gauge"]
    lines += [f'{state}{{trunk="{name}",state="{value}"}} 1'
              for name, value in sorted(states.items())]
    return lines


def _metric(name: str, kind: str, help_text: str, value: float,
            labels: str = "") -> Iterable[str]:
    full = PREFIX + name
    sample = f"{full}{{{labels}}}" if labels else full
    return (f"# HELP {full} {help_text}", f"# TYPE {full} {kind}", f"{sample} {value}")
