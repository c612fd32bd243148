"""One media clock for the whole process.

A single 20 ms tick sends, mixes and records every call's frame, instead of one timer per call.
The schedule is absolute (start + n * 20 ms), so ticks do not drift. After a stall (the process
was not scheduled, a slow disk, a long callback) it runs the missed ticks back to back, up to
MAX_CATCH_UP_FRAMES: every received frame is still played out and recorded, and recordings keep
their real-time length. A tick skipped instead would leave its audio in the receive buffer,
never recorded (measured: 120-145 ms stalls on a busy 2-core machine lost frames with a 5-frame
limit). Beyond the limit it re-bases and counts the skipped ticks in `late_ticks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from callbox.server.media.frames import FRAME_SECONDS

MAX_CATCH_UP_FRAMES = 50  # 1 s

log = logging.getLogger(__name__)


class Ticking(Protocol):
    def tick(self) -> None: ...


class MediaClock:
    def __init__(self) -> None:
        self._members: dict[int, Ticking] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.late_ticks = 0  # ticks skipped by re-basing
        self.max_behind = 0.0  # seconds: the longest stall seen (caught up or not)

    def add(self, member: Ticking) -> None:
        self._members[id(member)] = member

    def remove(self, member: Ticking) -> None:
        self._members.pop(id(member), None)

    def __contains__(self, member: object) -> bool:
        return id(member) in self._members

    def __len__(self) -> int:
        return len(self._members)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="media-clock")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def tick_all(self) -> None:
        for member in tuple(self._members.values()):
            try:
                member.tick()
            except Exception:  # one broken call must not stop every other call's media
                log.exception("media tick failed; removing %r", member)
                self.remove(member)
        self.ticks += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.tick_all()
            next_at += FRAME_SECONDS
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self.max_behind = max(self.max_behind, -delay)
            behind = int(-delay / FRAME_SECONDS)
            if behind > MAX_CATCH_UP_FRAMES:
                self.late_ticks += behind
                log.warning("media clock %.0f ms behind; re-basing", -delay * 1000)
                next_at = loop.time()
            await asyncio.sleep(0)
