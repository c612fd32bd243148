"""Recording events to `status_url`: the webhook envelope, signed per project, queued on disk.

`RecordWebhooks` owns the platform's `WebhookQueue`. When the queue cannot store an event (the
disk is full: SQLite says "database or disk is full"), the event is held in memory, in order
behind that recording's other held events, and queued again every `RETRY_HELD_SECONDS` until it
fits; a full disk delays the error webhook instead of losing it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any, Final

from callbox.server.webhooks import WebhookQueue
from callbox.wire.recording import RECORD_EVENT

log = logging.getLogger(__name__)

RETRY_HELD_SECONDS: Final = 1.0


class RecordWebhooks:
    """The status_url envelope of recording.md, signed with the project's key, in order per
    recording."""

    def __init__(self, db_path: Path, signing_keys: dict[str, str]) -> None:
        self.queue = WebhookQueue(db_path)
        self.signing_keys = signing_keys
        # (url, envelope, signing key, ordering key) that the queue could not store yet
        self._held: deque[tuple[str, dict[str, Any], str, str]] = deque()
        self._retry: asyncio.TimerHandle | None = None

    @property
    def held(self) -> int:
        """Events waiting in memory for room on disk."""
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
        self._queue_held()

    def _retry_held(self) -> None:
        self._retry = None
        self._queue_held()

    def _queue_held(self) -> None:
        """Queue the held events, oldest first; stop at the first one that does not fit."""
        while self._held:
            url, envelope, key, ordering_key = self._held[0]
            try:
                self.queue.enqueue(url, envelope, key, ordering_key=ordering_key,
                                   label=str(envelope["params"].get("state", "")))
            except (sqlite3.Error, OSError) as exc:
                if self._retry is None:
                    log.error("webhook for recording %s held in memory: the queue cannot "
                              "store it (%s); trying again every %g s", ordering_key, exc,
                              RETRY_HELD_SECONDS)
                    self._retry = asyncio.get_running_loop().call_later(
                        RETRY_HELD_SECONDS, self._retry_held)
                return
            self._held.popleft()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Deliver what can be delivered within `flush_timeout`, then stop (the rest stays
        on disk for the next start; held events are logged as lost)."""
        self._queue_held()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._held:
            log.error("%d recording webhook(s) lost: the disk stayed full", len(self._held))
        await self.queue.flush(timeout=flush_timeout)
        await self.queue.stop()
