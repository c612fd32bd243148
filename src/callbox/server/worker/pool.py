"""The platform's media hosts: one per worker process, or one inside the main process.

`MediaHosts.open()` binds an RTP port (the main process owns the port range) and hands the socket
to the least busy host, or to the host of a given session (`near`: both legs of a bridge must
share a host). A worker process that dies is reported (its calls end, its recordings are
repaired from what reached the disk) and started again; new calls go to the live ones meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket

from callbox.server.media.ports import RtpPortPool
from callbox.server.tasks import spawn
from callbox.server.worker import messages as m
from callbox.server.worker.handle import HostView, MediaHandle
from callbox.server.worker.link import LocalLink, MediaLink, ProcessLink, WorkerLost

log = logging.getLogger(__name__)


class MediaHosts:
    def __init__(self, workers: int, ports: RtpPortPool, advertised_host: str, *,
                 log_level: str = "info", event_loop: str = "asyncio") -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.ports = ports
        self.advertised_host = advertised_host
        self.family = socket.AF_INET6 if ":" in ports.host else socket.AF_INET
        self.log_level = log_level
        self.event_loop = event_loop
        self.views: list[HostView] = []
        self.restarts = 0
        self.retired_counters: dict[str, int] = {}  # of hosts that died
        self._sids = itertools.count(1)
        self._stopping = False

    async def start(self) -> None:
        if self.workers == 0:
            self.views = [await self._start_link(LocalLink())]
        else:
            self.views = list(await asyncio.gather(*(
                self._start_link(self._worker(index)) for index in range(self.workers))))

    def _worker(self, index: int) -> ProcessLink:
        return ProcessLink(f"media-{index + 1}", log_level=self.log_level,
                           event_loop=self.event_loop)

    async def _start_link(self, link: MediaLink) -> HostView:
        view = HostView(link)
        link.on_lost = self._lost
        await link.start()
        return view

    def open(self, near: MediaHandle | None = None) -> MediaHandle:
        """A session on a free RTP port; raises NoPortsAvailable."""
        if near is not None and near.view in self.views:
            view = near.view
        else:
            view = min(self.views, key=lambda v: len(v.handles))
        sock = self.ports.open()
        port = sock.getsockname()[1]
        sid = next(self._sids)
        view.link.open_session(m.OpenSession(sid, self.advertised_host), sock)
        return MediaHandle(view, sid, port, self.family, self.ports.release_port)

    def _lost(self, link: MediaLink) -> None:
        view = next((v for v in self.views if v.link is link), None)
        if view is None:
            return
        log.error("media worker %s died with %d call(s): they end, their recordings are "
                  "repaired", link.name, len(view.handles))
        for name, value in view.ended_counters.items():
            self.retired_counters[name] = self.retired_counters.get(name, 0) + value
        view.lost()
        if not self._stopping:
            spawn(self._restart(view), name=f"restart-{link.name}")

    async def _restart(self, dead: HostView) -> None:
        index = self.views.index(dead)
        replacement = await self._start_link(self._worker(index))
        self.views[index] = replacement
        self.restarts += 1
        log.info("media worker %s restarted", replacement.link.name)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*(view.link.stop() for view in self.views))

    async def snapshot(self) -> m.HostSnapshot:
        """Every host's clock and counters together (ended sessions included)."""
        total = m.HostSnapshot(counters=dict(self.retired_counters))
        for view in self.views:
            try:
                snap = await view.link.request(m.HostQuery())
            except WorkerLost:
                continue
            total.sessions += snap.sessions
            total.ticks = max(total.ticks, snap.ticks)
            total.late_ticks += snap.late_ticks
            total.max_behind = max(total.max_behind, snap.max_behind)
            for counters in (snap.counters, view.ended_counters):
                for name, value in counters.items():
                    total.counters[name] = total.counters.get(name, 0) + value
        return total
