"""A durable queue of status_url webhooks: ordered per key, retried with backoff, kept on disk.

Guarantees
- `enqueue` writes the entry to SQLite (WAL, autocommit) before it returns, so a platform
  restart does not lose it; the next `start()` picks up everything still queued. (WAL with
  synchronous=NORMAL survives a process crash; a power cut may lose the last commits.)
- Within one ordering key (a recording id, say) delivery is strictly FIFO: an entry is sent only
  after every earlier entry of that key was delivered or given up. Keys are independent: each has
  its own worker, so one dead receiver delays only its own keys' events.
- Delivery is at least once: a request cut short by a crash or `stop()` may have reached the
  receiver and is sent again later. Every attempt of one entry carries the same
  `X-Callbox-Delivery` id, so receivers can drop duplicates.

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
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from callbox.server.webhooks.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

EVENT_HEADER = "X-Callbox-Event"
DELIVERY_HEADER = "X-Callbox-Delivery"
USER_AGENT = "callbox-webhooks"
DEFAULT_EVENT = "calling.call.record"
RETRYABLE_STATUSES = frozenset({408, 429})  # and every 5xx
JITTER = 0.1  # a delay is shortened by up to this fraction, so many entries' retries spread out
MAX_CONCURRENT_POSTS = 32
SNIPPET_BYTES = 200  # of a failed response's body, for the log line
DB_BUSY_TIMEOUT = 1.0  # seconds; the database is this process's own, so it is never busy long

SessionFactory = Callable[[], aiohttp.ClientSession]
Clock = Callable[[], float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ordering_key TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    signing_key  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_by_key ON webhooks (ordering_key, id);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id  TEXT    PRIMARY KEY,
    ordering_key TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    label        TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    last_time    REAL,
    created_at   REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_key ON deliveries (ordering_key, created_at);
"""


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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook's delivery as it went, kept after it was delivered or given up.

    `status`: pending (not tried yet), retrying, delivered or failed (given up); `label` is
    what the sender called the event (a recording event's state); `url` is shown without
    credentials or query string."""

    delivery_id: str
    url: str
    label: str
    status: str
    attempts: int
    last_error: str | None
    last_time: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class _Entry:
    id: int
    url: str
    event: str
    body: bytes
    signing_key: str
    delivery_id: str
    created_at: float
    attempts: int


class WebhookQueue:
    """Durable, per-key ordered, retrying delivery of webhook POSTs.

    `session_factory`, when given, is called by `start()` to make the aiohttp session used for
    every POST; the queue closes that session in `stop()`. `clock` (seconds since the epoch)
    dates entries, ages them against `max_age` and timestamps signatures; tests pass their own
    to age an entry without waiting. Retry delays are real waits whatever the clock.
    """

    def __init__(self, db_path: Path, *, timeout: float = 10.0, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, max_age: float = 24 * 3600,
                 session_factory: SessionFactory | None = None,
                 max_concurrency: int = MAX_CONCURRENT_POSTS, clock: Clock = time.time) -> None:
        self.db_path = Path(db_path)
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
        self._db: sqlite3.Connection | None = None
        self._running = False
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._pending = 0
        self._set_pending(self._count())

    # -- public API -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries not yet delivered or given up (on disk, whether or not the queue runs)."""
        return self._pending

    def enqueue(self, url: str, body: Mapping[str, Any], signing_key: str, *,
                ordering_key: str, label: str = "") -> None:
        """Queue a POST of `body` (as JSON) to `url`, signed with `signing_key`; on disk when
        this returns. A url that is not http(s) is logged and dropped at once. `label` names
        the event in the deliveries log (see `deliveries`)."""
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
        problem = _url_problem(url)
        delivery_id, now = uuid.uuid4().hex, self.clock()
        self._conn().execute(
            "INSERT INTO deliveries (delivery_id, ordering_key, url, label, status, last_error,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (delivery_id, ordering_key, _for_log(url), label,
             "pending" if problem is None else "failed", problem, now))
        if problem is not None:
            log.error("webhook dropped: %s (ordering key %s)", problem, ordering_key)
            self.failed_permanently += 1
            return
        event = body.get("event_type")
        self._conn().execute(
            "INSERT INTO webhooks (ordering_key, url, event, body, signing_key, delivery_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ordering_key, url, event if isinstance(event, str) else DEFAULT_EVENT, data,
             signing_key, delivery_id, now),
        )
        self._set_pending(self._pending + 1)
        if self._running and ordering_key not in self._workers:
            self._spawn(ordering_key)

    def deliveries(self, ordering_key: str) -> list[Delivery]:
        """The deliveries log of one ordering key, oldest first (kept after delivery)."""
        rows = self._conn().execute(
            "SELECT delivery_id, url, label, status, attempts, last_error, last_time,"
            " created_at FROM deliveries WHERE ordering_key = ? ORDER BY created_at, rowid",
            (ordering_key,)).fetchall()
        return [Delivery(*row) for row in rows]

    def forget(self, ordering_key: str) -> None:
        """Drop the deliveries log of `ordering_key` (its subject was deleted)."""
        self._conn().execute("DELETE FROM deliveries WHERE ordering_key = ?", (ordering_key,))

    async def start(self) -> None:
        """Start delivering, beginning with whatever a previous run left in the database."""
        if self._running:
            return
        self._running = True
        self._stopping = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self._max_concurrency)
        factory = self._session_factory or _default_session
        self._session = factory()
        rows = self._conn().execute(
            "SELECT ordering_key FROM webhooks GROUP BY ordering_key ORDER BY MIN(id)"
        ).fetchall()
        self._set_pending(self._count())
        if rows:
            log.info("webhooks: resuming %d queued deliveries (%d ordering keys)",
                     self._pending, len(rows))
        for (key,) in rows:
            if key not in self._workers:
                self._spawn(key)

    async def stop(self) -> None:
        """Stop delivering. Requests in flight get up to `timeout` to finish; everything not
        delivered stays on disk for the next `start()`."""
        if self._running:
            self._running = False
            self._stopping.set()
            workers = list(self._workers.values())
            if workers:
                _, late = await asyncio.wait(workers, timeout=self.timeout + 1.0)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            if self._session is not None:
                await self._session.close()
                self._session = None
            if self._pending:
                log.info("webhooks: stopped with %d deliveries queued on disk", self._pending)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or `timeout` seconds pass; True when empty."""
        if self._pending == 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._pending == 0

    # -- workers ----------------------------------------------------------------------------

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
                except Exception:
                    log.exception("webhooks: unexpected error for ordering key %s; "
                                  "trying again in %.1f s", key, self.backoff_max)
                    await self._sleep(self.backoff_max)
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]

    async def _step(self, key: str) -> bool:
        """One attempt at `key`'s oldest entry; True when the key has nothing left."""
        entry = self._head(key)
        if entry is None:
            return True
        where = _for_log(entry.url)
        age = self.clock() - entry.created_at
        if age >= self.max_age:
            log.warning("webhook to %s dropped: not delivered within max_age %g s "
                        "(%d attempts)", where, self.max_age, entry.attempts)
            self._log_delivery(entry, "failed", entry.attempts,
                               f"not delivered within max_age {self.max_age:g} s")
            self._remove(entry, failed=True, expired=True)
            return False
        attempt = entry.attempts + 1
        result = await self._post(entry)
        self.attempts += 1
        if result.outcome is _Outcome.DELIVERED:
            log.debug("webhook to %s delivered: %s (attempt %d)", where, result.detail, attempt)
            self._log_delivery(entry, "delivered", attempt, None)
            self._remove(entry)
            return False
        if result.outcome is _Outcome.PERMANENT:
            log.warning("webhook to %s dropped: %s (attempt %d); this is not retried",
                        where, result.detail, attempt)
            self._log_delivery(entry, "failed", attempt, result.detail)
            self._remove(entry, failed=True)
            return False
        delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max)
        if result.retry_after is not None:
            delay = max(delay, min(result.retry_after, self.backoff_max))
        if self.clock() + delay - entry.created_at >= self.max_age:
            log.warning("webhook to %s dropped: %s (attempt %d); giving up, max_age %g s "
                        "reached", where, result.detail, attempt, self.max_age)
            self._log_delivery(entry, "failed", attempt, result.detail)
            self._remove(entry, failed=True, expired=True)
            return False
        self._conn().execute("UPDATE webhooks SET attempts = ? WHERE id = ?",
                             (attempt, entry.id))
        self._log_delivery(entry, "retrying", attempt, result.detail)
        log.warning("webhook to %s failed: %s (attempt %d); next retry in %.3g s",
                    where, result.detail, attempt, delay)
        await self._sleep(delay)
        return False

    async def _post(self, entry: _Entry) -> _Result:
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

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            if not self.db_path.exists():  # it holds signing keys: owner-only
                os.close(os.open(self.db_path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(self.db_path, timeout=DB_BUSY_TIMEOUT, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM webhooks").fetchone()[0])

    def _head(self, key: str) -> _Entry | None:
        row = self._conn().execute(
            "SELECT id, url, event, body, signing_key, delivery_id, created_at, attempts"
            " FROM webhooks WHERE ordering_key = ? ORDER BY id LIMIT 1", (key,)
        ).fetchone()
        return None if row is None else _Entry(*row)

    def _log_delivery(self, entry: _Entry, status: str, attempts: int,
                      error: str | None) -> None:
        self._conn().execute(
            "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, last_time = ?"
            " WHERE delivery_id = ?", (status, attempts, error, self.clock(), entry.delivery_id))

    def _remove(self, entry: _Entry, *, failed: bool = False, expired: bool = False) -> None:
        """Forget `entry` (delivered, or given up when `failed`) and count it."""
        if failed:
            self.failed_permanently += 1
            self.expired += expired
        else:
            self.delivered += 1
        if self._conn().execute("DELETE FROM webhooks WHERE id = ?", (entry.id,)).rowcount:
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
