"""Recording events to `status_url`: the webhook envelope, signed per project, queued on disk.

`RecordWebhooks` owns the platform's `WebhookQueue`. `send` is called from the event that
reports a state, so it does not wait: the event is held in memory, in order behind the other
held events, and one task moves them into the queue, oldest first. When the queue cannot store
one (the disk is full: SQLite says "database or disk is full"; the database is restarting), it
is tried again every `RETRY_HELD_SECONDS` until it fits: a full disk or a database outage delays
events instead of losing them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from typing import Any, Final

from callbox.server.database import DatabaseUnavailable
from callbox.server.tasks import spawn
from callbox.server.webhooks import WebhookQueue
from callbox.wire.recording import RECORD_EVENT

log = logging.getLogger(__name__)

RETRY_HELD_SECONDS: Final = 1.0


class RecordWebhooks:
    """The status_url envelope of recording.md, signed with the project's key, in order per
    recording."""

    def __init__(self, queue: WebhookQueue, signing_keys: dict[str, str]) -> None:
        self.queue = queue
        self.signing_keys = signing_keys
        # (url, envelope, signing key, ordering key) not in the queue yet
        self._held: deque[tuple[str, dict[str, Any], str, str]] = deque()
        self._mover: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """Events waiting in memory to enter the queue."""
        return len(self._held)

    async def start(self) -> None:
        await self.queue.start()

    def send(self, url: str, *, project_id: str, call_id: str, recording_id: str,
             params: dict[str, Any]) -> None:
        envelope = {
            "event_type": RECORD_EVENT,
            "event_channel": f"callbox.calls.{call_id}",
            "timestamp": time.time(),
            "project_id": project_id,
            "params": params,
        }
        self._held.append((url, envelope, self.signing_keys.get(project_id, ""), recording_id))
        if self._mover is None or self._mover.done():
            self._mover = spawn(self._queue_held(), name="recording-webhooks")

    async def _queue_held(self) -> None:
        """Queue the held events, oldest first; wait and retry one that does not fit."""
        failing = False
        while self._held:
            url, envelope, key, ordering_key = self._held[0]
            try:
                await self.queue.enqueue(url, envelope, key, ordering_key=ordering_key,
                                         label=str(envelope["params"].get("state", "")))
            except (sqlite3.Error, OSError, DatabaseUnavailable) as exc:
                if not failing:
                    log.error("webhook for recording %s held in memory: the queue cannot "
                              "store it (%s); trying again every %g s", ordering_key, exc,
                              RETRY_HELD_SECONDS)
                failing = True
                await asyncio.sleep(RETRY_HELD_SECONDS)
                continue
            self._held.popleft()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Deliver what can be delivered within `flush_timeout`, then stop (the rest stays
        queued for the next start; held events are logged as lost)."""
        if self._mover is not None:
            _, late = await asyncio.wait([self._mover], timeout=flush_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._held:
            log.error("%d recording webhook(s) lost: the queue could not store them",
                      len(self._held))
        await self.queue.flush(timeout=flush_timeout)
        await self.queue.stop()
