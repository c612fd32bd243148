"""A durable queue of status_url webhooks: ordered per key, retried with backoff, kept on disk.

Guarantees
- `enqueue` writes the entry to its `QueueDb` before it returns (this node's SQLite file, WAL,
  autocommit; or the cluster's PostgreSQL database), so a platform restart does not lose it; the
  next `start()` picks up everything still queued. (WAL with synchronous=NORMAL survives a
  process crash; a power cut may lose the last commits.)
- With a shared database (PostgreSQL) every node delivers from the same table and each entry
  is sent by one node: the node claims the head of the key for a lease (see `postgres_db`); a
  node releases its claims in `stop()`, and one that dies loses them when their lease runs out;
  another node (each polls the table every `poll_interval`) takes over.
- Within one ordering key (a recording id, say) delivery is strictly FIFO: an entry is sent only
  after every earlier entry of that key was delivered or given up. Keys are independent: each has
  its own worker, so one dead receiver delays only its own keys' events.
- Delivery is at least once: a request cut short by a crash or `stop()` (or a claim lost to a
  lease that ran out) may have reached the receiver and is sent again later. Every attempt of
  one entry carries the same `X-Callbox-Delivery` id, so receivers can drop duplicates.

Each attempt is an HTTP POST of the JSON body (the same bytes every time) with
`Content-Type: application/json`, `User-Agent: callbox-webhooks`, `X-Callbox-Event`,
`X-Callbox-Delivery` and `X-Callbox-Signature` signed at send time (see `signing`). Redirects
are not followed.

Outcomes: any 2xx = delivered. 5xx, 408, 429, timeouts and connection errors are retried after
`backoff_initial * 2**(n-1)` seconds (capped at `backoff_max`, shortened by up to 10 % jitter,
lengthened to a numeric `Retry-After` up to `backoff_max`) until `max_age` after enqueue. With the
defaults (1 s doubling to 60 s, 24 h) that is 6 retries within the first ~63 s, then one a minute.
Any other status (3xx, 4xx) is a permanent failure: logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from callbox.server.database import DatabaseUnavailable
from callbox.server.webhooks.queue_db import Delivery, Entry, NewEntry, QueueDb
from callbox.server.webhooks.signing import SIGNATURE_HEADER, sign
from callbox.server.webhooks.sqlite_db import SqliteQueueDb

log = logging.getLogger(__name__)

EVENT_HEADER = "X-Callbox-Event"
DELIVERY_HEADER = "X-Callbox-Delivery"
USER_AGENT = "callbox-webhooks"
DEFAULT_EVENT = "calling.call.record"
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
JITTER = 0.1  # a delay is shortened by up to this fraction, so many entries' retries spread out
MAX_CONCURRENT_POSTS = 32
SNIPPET_BYTES = 200  # of a failed response's body, for the log line
LEASE_MARGIN = 10.0  # seconds a claim outlasts the request (or wait) it covers
POLL_INTERVAL = 2.0  # seconds between looks for other nodes' keys (shared database)
DB_RETRY_SECONDS = 1.0  # wait before trying a database that could not be reached again

SessionFactory = Callable[[], aiohttp.ClientSession]
Clock = Callable[[], float]

def backoff_delay(retry: int, initial: float, maximum: float,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `retry` (1 = the first retry)."""
    base = min(maximum, initial * 2.0 ** min(retry - 1, 62))
    return base * (1.0 - JITTER * rng())


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class _Result:
    outcome: _Outcome
    detail: str
    retry_after: float | None = None


class WebhookQueue:
    """Durable, per-key ordered, retrying delivery of webhook POSTs.

    `session_factory`, when given, is called by `start()` to make the aiohttp session used for
    every POST; the queue closes that session in `stop()`. `clock` (seconds since the epoch)
    dates entries, ages them against `max_age` and timestamps signatures; tests pass their own
    to age an entry without waiting. Retry delays are real waits whatever the clock.
    """

    def __init__(self, db: QueueDb | Path, *, timeout: float = 10.0,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0,
                 max_age: float = 24 * 3600, session_factory: SessionFactory | None = None,
                 max_concurrency: int = MAX_CONCURRENT_POSTS, clock: Clock = time.time,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.db: QueueDb = SqliteQueueDb(db) if isinstance(db, Path) else db
        self.poll_interval = poll_interval
        self.clock = clock
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_age = max_age
        self._session_factory = session_factory
        self._max_concurrency = max_concurrency
        # Counters since this object was made (tests, metrics).
        self.delivered = 0
        self.failed_permanently = 0  # given up for any reason, `expired` included
        self.expired = 0
        self.attempts = 0
        self._running = False
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._pending = 0
        self._idle.set()
        self._poller: asyncio.Task[None] | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries not yet delivered or given up, as last counted (`count_pending`) and kept
        up to date by this queue's own enqueues and deliveries."""
        return self._pending

    async def count_pending(self) -> int:
        """Count the entries in the database (of every node, when it is shared)."""
        self._set_pending(await self.db.count())
        return self._pending

    async def enqueue(self, url: str, body: Mapping[str, Any], signing_key: str, *,
                      ordering_key: str, label: str = "") -> None:
        """Queue a POST of `body` (as JSON) to `url`, signed with `signing_key`; on disk when
        this returns. A url that is not http(s) is logged and dropped at once. `label` names
        the event in the deliveries log (see `deliveries`)."""
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
        problem = _url_problem(url)
        event = body.get("event_type")
        await self.db.add(NewEntry(
            ordering_key=ordering_key, url=url, shown_url=_for_log(url), label=label,
            event=event if isinstance(event, str) else DEFAULT_EVENT, body=data,
            signing_key=signing_key, delivery_id=uuid.uuid4().hex, created_at=self.clock(),
            status="pending" if problem is None else "failed", error=problem))
        if problem is not None:
            log.error("webhook dropped: %s (ordering key %s)", problem, ordering_key)
            self.failed_permanently += 1
            return
        self._set_pending(self._pending + 1)
        if self._running and ordering_key not in self._workers:
            self._spawn(ordering_key)

    async def deliveries(self, ordering_key: str) -> list[Delivery]:
        """The deliveries log of one ordering key, oldest first (kept after delivery)."""
        return await self.db.deliveries(ordering_key)

    async def forget(self, ordering_key: str) -> None:
        """Drop the deliveries log of `ordering_key` (its subject was deleted)."""
        await self.db.forget(ordering_key)

    async def start(self) -> None:
        """Start delivering, beginning with whatever a previous run left in the database."""
        if self._running:
            return
        self._running = True
        self._stopping = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        factory = self._session_factory or _default_session
        self._session = factory()
        keys = await self.db.keys()
        await self.count_pending()
        if keys:
            log.info("webhooks: resuming %d queued deliveries (%d ordering keys)",
                     self._pending, len(keys))
        self._spawn_missing(keys)
        if self.db.shared:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="webhooks:poll")
            self._poller.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop delivering. Requests in flight get up to `timeout` to finish; everything not
        delivered stays on disk for the next `start()`."""
        if self._running:
            self._running = False
            self._stopping.set()
            if self._poller is not None:
                self._poller.cancel()
                await asyncio.gather(self._poller, return_exceptions=True)
                self._poller = None
            workers = list(self._workers.values())
            if workers:
                _, late = await asyncio.wait(workers, timeout=self.timeout + 1.0)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            if self._session is not None:
                await self._session.close()
                self._session = None
            try:
                await self.db.release()
            except DatabaseUnavailable as exc:  # its claims run out on their own
                log.warning("webhooks: could not release this node's claims: %s", exc)
            if self._pending:
                log.info("webhooks: stopped with %d deliveries queued on disk", self._pending)
        await self.db.close()

    async def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or `timeout` seconds pass; True when empty. (With a
        shared database `pending` counts every node's entries, recounted at each poll.)"""
        if self._pending == 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._pending == 0

    # -- workers ----------------------------------------------------------------------------

    def _spawn_missing(self, keys: list[str]) -> None:
        for key in keys:
            if key not in self._workers:
                self._spawn(key)

    async def _poll(self) -> None:
        """Shared database: start a worker for the keys other nodes queued or left (their
        claims ran out), and recount what is pending."""
        while not self._stopping.is_set():
            await self._sleep(self.poll_interval)
            try:
                self._spawn_missing(await self.db.keys())
                await self.count_pending()
            except DatabaseUnavailable as exc:
                log.debug("webhooks: cannot poll the database: %s", exc)

    def _spawn(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._work(key), name=f"webhooks:{key}")
        self._workers[key] = task
        task.add_done_callback(_log_crash)

    async def _work(self, key: str) -> None:
        """Deliver `key`'s entries one at a time, oldest first, until none is left."""
        try:
            while not self._stopping.is_set():
                try:
                    if await self._step(key):
                        return
                except DatabaseUnavailable as exc:
                    log.warning("webhooks: ordering key %s waits for the database: %s", key,
                                exc)
                    await self._sleep(min(DB_RETRY_SECONDS, self.backoff_max))
                except Exception:
                    log.exception("webhooks: unexpected error for ordering key %s; "
                                  "trying again in %.1f s", key, self.backoff_max)
                    await self._sleep(self.backoff_max)
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]

    async def _step(self, key: str) -> bool:
        """One attempt at `key`'s oldest entry; True when the key has nothing left (for this
        node: another node may hold its head)."""
        entry = await self.db.claim_head(key, self.timeout + LEASE_MARGIN)
        if entry is None:
            return True
        where = _for_log(entry.url)
        age = self.clock() - entry.created_at
        if age >= self.max_age:
            log.warning("webhook to %s dropped: not delivered within max_age %g s "
                        "(%d attempts)", where, self.max_age, entry.attempts)
            await self._finish(entry, "failed", entry.attempts,
                               f"not delivered within max_age {self.max_age:g} s",
                               expired=True)
            return False
        attempt = entry.attempts + 1
        result = await self._post(entry)
        self.attempts += 1
        if result.outcome is _Outcome.DELIVERED:
            log.debug("webhook to %s delivered: %s (attempt %d)", where, result.detail, attempt)
            await self._finish(entry, "delivered", attempt, None)
            return False
        if result.outcome is _Outcome.PERMANENT:
            log.warning("webhook to %s dropped: %s (attempt %d); this is not retried",
                        where, result.detail, attempt)
            await self._finish(entry, "failed", attempt, result.detail)
            return False
        delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max)
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, self.backoff_max))
        if self.clock() + delay - entry.created_at >= self.max_age:
            log.warning("webhook to %s dropped: %s (attempt %d); giving up, max_age %g s "
                        "reached", where, result.detail, attempt, self.max_age)
            await self._finish(entry, "failed", attempt, result.detail, expired=True)
            return False
        await self._stored(lambda: self._retry_later(entry, attempt, delay, result.detail))
        log.warning("webhook to %s failed: %s (attempt %d); next retry in %.3g s",
                    where, result.detail, attempt, delay)
        await self._sleep(delay)
        return False

    async def _post(self, entry: Entry) -> _Result:
        assert self._session is not None and self._semaphore is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: entry.event,
            DELIVERY_HEADER: entry.delivery_id,
        }
        async with self._semaphore:
            if entry.signing_key:  # signed now, not when queued: the time is the send time
                headers[SIGNATURE_HEADER] = sign(entry.body, entry.signing_key, int(self.clock()))
            try:
                async with self._session.post(
                    entry.url, data=entry.body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as response:
                    return await _classify(response)
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
                return _Result(_Outcome.PERMANENT, f"invalid url ({exc})")
            except TimeoutError:
                return _Result(_Outcome.RETRY, f"no response within {self.timeout:g} s")
            except (aiohttp.ClientError, OSError) as exc:
                return _Result(_Outcome.RETRY, f"{type(exc).__name__}: {exc}")

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less when `stop()` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    # -- database ---------------------------------------------------------------------------

    async def _stored(self, write: Callable[[], Awaitable[None]]) -> None:
        """Store what an attempt did. While the database cannot be reached, try again (the
        request is not sent again for it) until it can or `stop()` is called."""
        while True:
            try:
                await write()
                return
            except DatabaseUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning("webhooks: an attempt's outcome waits for the database: %s", exc)
                await self._sleep(min(DB_RETRY_SECONDS, self.backoff_max))

    async def _retry_later(self, entry: Entry, attempt: int, delay: float,
                           detail: str) -> None:
        await self.db.retry_later(entry, attempt, delay + self.timeout + LEASE_MARGIN)
        await self.db.log_delivery(entry.delivery_id, "retrying", attempt, detail,
                                   self.clock())

    async def _finish(self, entry: Entry, status: str, attempts: int, error: str | None,
                      *, expired: bool = False) -> None:
        """Log `entry` delivered (or failed: given up), drop it from the queue, count it."""
        removed = False

        async def settle() -> None:
            nonlocal removed
            await self.db.log_delivery(entry.delivery_id, status, attempts, error, self.clock())
            removed = await self.db.remove(entry) or removed

        await self._stored(settle)
        if status == "delivered":
            self.delivered += 1
        else:
            self.failed_permanently += 1
            self.expired += expired
        if removed:
            self._set_pending(self._pending - 1)

    def _set_pending(self, count: int) -> None:
        self._pending = max(0, count)
        if self._pending:
            self._idle.clear()
        else:
            self._idle.set()


async def _classify(response: aiohttp.ClientResponse) -> _Result:
    status = response.status
    if 200 <= status < 300:
        return _Result(_Outcome.DELIVERED, f"HTTP {status}")
    detail = f"HTTP {status}"
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        return _Result(_Outcome.PERMANENT,
                       f"{detail} redirect to {_for_log(location)!r} (redirects are not "
                       "followed; set status_url to the final address)")
    snippet = await _snippet(response)
    if snippet:
        detail += f" {snippet!r}"
    if status >= 500 or status in RETRYABLE_STATUSES:
        return _Result(_Outcome.RETRY, detail, _retry_after(response.headers.get("Retry-After")))
    return _Result(_Outcome.PERMANENT, detail)


async def _snippet(response: aiohttp.ClientResponse) -> str:
    """The start of a failed response's body, on one line, for the log."""
    try:
        raw = await response.content.read(SNIPPET_BYTES)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""
    return " ".join(raw.decode("utf-8", errors="replace").split())


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # the HTTP-date form is rare for webhooks; the normal backoff applies
    return float(value.strip())


def _url_problem(url: str) -> str | None:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        return f"url {url!r} cannot be parsed ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"url {_for_log(url)!r} is not an absolute http(s) url"
    return None


def _for_log(url: str) -> str:
    """`url` without credentials or query string (they may hold secrets)."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<unparsable url>"
    if not parsed.is_absolute():
        return url
    shown = str(parsed.with_user(None).with_query(None).with_fragment(None))
    return shown + ("?..." if parsed.query_string else "")


def _default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("webhook worker %s crashed", task.get_name(), exc_info=task.exception())
