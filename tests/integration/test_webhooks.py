"""status_url webhook delivery over real HTTP: a receiver on 127.0.0.1 records what it gets.
Every test runs on the SQLite queue and on the PostgreSQL one (a real server)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.peers.poll import until, until_async

from callbox.server.database import open_database
from callbox.server.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    PostgresQueueDb,
    QueueDb,
    SqliteQueueDb,
    WebhookQueue,
    sign,
    verify,
)

KEY = "project-signing-key"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "timeout": 2.0}

Responder = Callable[[int], Awaitable[web.StreamResponse]]


class ManualClock:
    """The queue's clock, moved by the test: ages entries without waiting."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def seq(self) -> int:
        return int(json.loads(self.body)["params"]["seq"])


def status(*codes: int, then: int = 200) -> Responder:
    """Answer the n-th request with codes[n], and `then` once they are used up."""
    async def respond(n: int) -> web.StreamResponse:
        return web.Response(status=codes[n] if n < len(codes) else then)
    return respond


class Receiver:
    """An HTTP server on a socket bound at once but listening only after `start()`, so that
    before it the address refuses connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[Received] = []
        self.responders: dict[str, Responder] = {}
        self._in_flight: list[str] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def in_flight(self, path: str) -> int:
        """Requests to `path` received and not answered yet."""
        return self._in_flight.count(path)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self.sock.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        n = len(self.on(request.path)) + len([p for p in self._in_flight if p == request.path])
        self._in_flight.append(request.path)
        try:
            responder = self.responders.get(request.path, status())
            response = await responder(n)
        finally:
            self._in_flight.remove(request.path)
        self.requests.append(Received(request.path, dict(request.headers), body, response.status))
        return response


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    yield rx
    await rx.stop()


class Queues(list[WebhookQueue]):
    """The queues a test made, all on one database: a SQLite file, or a PostgreSQL database
    where each queue is another node (its own node id)."""

    def __init__(self, open_db: Callable[[int], QueueDb]) -> None:
        super().__init__()
        self.open_db = open_db


@pytest.fixture(params=["sqlite", "postgres"])
async def queues(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Queues]:
    """Every test runs on both databases; each queue is stopped afterwards (stop() is
    idempotent)."""
    database = None
    if request.param == "sqlite":
        made = Queues(lambda n: SqliteQueueDb(tmp_path / "wh.db"))
    else:
        database = await open_database(request.getfixturevalue("postgres_url"))
        made = Queues(lambda n: PostgresQueueDb(database, f"node-{n}"))
    yield made
    for queue in made:
        await queue.stop()
    if database is not None:
        await database.close()


def make(queues: Queues, **options: Any) -> WebhookQueue:
    q = WebhookQueue(queues.open_db(len(queues)), **{**FAST, **options})
    queues.append(q)
    return q


def event(seq: int, recording_id: str = "rec-1", state: str = "recording") -> dict[str, Any]:
    return {
        "event_type": "calling.call.record",
        "event_channel": "callbox.calls.call-1",
        "timestamp": time.time(),
        "project_id": "proj-1",
        "params": {"recording_id": recording_id, "state": state, "seq": seq,
                   "record": {"url": f"https://host/recordings/{recording_id}.wav"}},
    }


async def test_events_arrive_in_order_signed(receiver: Receiver, queues: Queues,
                                             tmp_path: Path) -> None:
    await receiver.start()
    clock = ManualClock()
    q = make(queues, clock=clock)
    await q.start()
    sent = [event(i, state=s) for i, s in
            enumerate(["recording", "paused", "recording", "paused", "finished"])]
    for body in sent:
        await q.enqueue(receiver.url("/hook"), body, KEY, ordering_key="rec-1")
    assert await q.flush(5)
    await q.stop()

    assert [json.loads(r.body) for r in receiver.requests] == sent
    assert (q.delivered, q.attempts, q.failed_permanently, q.pending) == (5, 5, 0, 0)
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 5
    for r in receiver.requests:
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers[EVENT_HEADER] == "calling.call.record"
        assert r.headers["User-Agent"] == "callbox-webhooks"
        header = r.headers[SIGNATURE_HEADER]
        t = int(header.split(",")[0].removeprefix("t="))
        assert t == int(clock.now)  # signed with the queue's clock at send time
        assert verify(r.body, KEY, header, now=clock.now)
        assert not verify(r.body, "another-key", header, now=clock.now)
        assert not verify(r.body.replace(b'"seq":', b'"seq":1'), KEY, header, now=clock.now)
        assert not verify(r.body, KEY, header, now=t + 301)  # a replay 5 minutes later
        assert not verify(r.body, KEY, sign(r.body, KEY, int(time.time()) - 3600))


async def test_5xx_retried_then_delivered_once_in_order(
        receiver: Receiver, queues: Queues, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver.responders["/flaky"] = status(500, 500)
    await receiver.start()
    q = make(queues)
    await q.start()
    with caplog.at_level(logging.WARNING, logger="callbox.server.webhooks"):
        for i in range(3):
            await q.enqueue(receiver.url("/flaky"), event(i), KEY, ordering_key="rec-1")
        assert await q.flush(5)
        await asyncio.sleep(0.3)  # would any duplicate follow the success?
    await q.stop()

    assert [(r.seq, r.status) for r in receiver.requests] == [
        (0, 500), (0, 500), (0, 200), (1, 200), (2, 200)]
    assert all(verify(r.body, KEY, r.headers[SIGNATURE_HEADER]) for r in receiver.requests)
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests[:3]}) == 1  # same entry
    assert (q.delivered, q.attempts, q.failed_permanently) == (3, 5, 0)
    retries = [m for m in caplog.messages if "next retry in" in m]
    assert len(retries) == 2
    assert receiver.url("/flaky") in retries[0] and "HTTP 500" in retries[0]
    assert "attempt 1" in retries[0] and "attempt 2" in retries[1]


async def test_a_dead_receiver_does_not_block_other_keys(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    hung = asyncio.Event()  # set by the test: until then A's receiver holds its request

    async def hang_once_then_503(n: int) -> web.StreamResponse:
        if n == 0:
            await hung.wait()
        return web.Response(status=503)

    receiver.responders["/dead"] = hang_once_then_503
    await receiver.start()
    q = make(queues, timeout=60.0)
    await q.start()
    await q.enqueue(receiver.url("/dead"), event(0, "rec-A"), KEY, ordering_key="rec-A")
    await q.enqueue(receiver.url("/dead"), event(1, "rec-A"), KEY, ordering_key="rec-A")
    await until(lambda: receiver.in_flight("/dead") == 1, timeout=10)
    for i in range(3):
        await q.enqueue(receiver.url("/ok"), event(i, "rec-B"), KEY, ordering_key="rec-B")
    # B is delivered while A's first request is still unanswered (if B waited behind A, it
    # would wait for the test to release A: never)
    await until(lambda: len(receiver.on("/ok")) == 3, timeout=10)
    assert receiver.in_flight("/dead") == 1 and receiver.on("/dead") == []
    assert [r.seq for r in receiver.on("/ok")] == [0, 1, 2]
    hung.set()
    await until(lambda: len(receiver.on("/dead")) >= 3, timeout=10)  # A keeps being retried...
    await q.stop()

    dead = receiver.on("/dead")
    assert {r.seq for r in dead} == {0}  # ...and its second event waited behind its first
    assert q.pending == 2 and q.delivered == 3


async def test_survives_a_restart_and_delivers_exactly_once(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    first = make(queues)
    await first.start()
    await first.enqueue(receiver.url("/hook"), event(0), KEY, ordering_key="rec-1")
    await until(lambda: first.attempts >= 1)  # connection refused: nobody listens yet
    assert first.delivered == 0 and first.pending == 1
    await first.stop()

    second = make(queues)
    assert await second.count_pending() == 1  # found on disk
    await receiver.start()
    await second.start()
    assert await second.flush(5)
    await asyncio.sleep(0.3)
    await second.stop()

    assert [r.seq for r in receiver.requests] == [0]
    assert verify(receiver.requests[0].body, KEY, receiver.requests[0].headers[SIGNATURE_HEADER])
    assert second.delivered == 1 and second.pending == 0
    assert await make(queues).count_pending() == 0  # and it is gone from disk


async def test_enqueued_before_start_is_delivered_after_start(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    await receiver.start()
    q = make(queues)
    await q.enqueue(receiver.url("/hook"), event(0), KEY, ordering_key="rec-1")
    await q.enqueue(receiver.url("/hook"), event(1), KEY, ordering_key="rec-1")
    await q.start()
    assert await q.flush(5)
    await q.stop()
    assert [r.seq for r in receiver.requests] == [0, 1]


async def test_404_is_permanent_and_the_next_event_still_goes(
        receiver: Receiver, queues: Queues, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver.responders["/gone"] = status(then=404)
    await receiver.start()
    q = make(queues)
    await q.start()
    with caplog.at_level(logging.WARNING, logger="callbox.server.webhooks"):
        await q.enqueue(receiver.url("/gone"), event(0), KEY, ordering_key="rec-1")
        await q.enqueue(receiver.url("/hook"), event(1), KEY, ordering_key="rec-1")
        assert await q.flush(5)
    await asyncio.sleep(0.2)
    await q.stop()

    assert [(r.path, r.status) for r in receiver.requests] == [("/gone", 404), ("/hook", 200)]
    assert (q.failed_permanently, q.delivered, q.attempts) == (1, 1, 2)
    assert any("HTTP 404" in m and "not retried" in m for m in caplog.messages)


async def test_redirect_is_not_followed(receiver: Receiver, queues: Queues,
                                        tmp_path: Path) -> None:
    async def moved(n: int) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": receiver.url("/hook")})
    receiver.responders["/old"] = moved
    await receiver.start()
    q = make(queues)
    await q.start()
    await q.enqueue(receiver.url("/old"), event(0), KEY, ordering_key="rec-1")
    assert await q.flush(5)
    await q.stop()
    assert [r.path for r in receiver.requests] == ["/old"]
    assert q.failed_permanently == 1 and q.delivered == 0


async def test_timeout_is_retried(receiver: Receiver, queues: Queues,
                                  tmp_path: Path) -> None:
    never = asyncio.Event()

    async def silent_once(n: int) -> web.StreamResponse:
        if n == 0:
            await never.wait()  # the first request never gets an answer
        return web.Response(status=200)
    receiver.responders["/slow"] = silent_once
    await receiver.start()
    q = make(queues, timeout=1.0)
    await q.start()
    await q.enqueue(receiver.url("/slow"), event(0), KEY, ordering_key="rec-1")
    assert await q.flush(20)
    await q.stop()
    assert q.attempts == 2 and q.delivered == 1
    assert [r.status for r in receiver.on("/slow")] == [200]  # the retry, answered


async def test_undeliverable_event_is_dropped_after_max_age(
        receiver: Receiver, queues: Queues, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver.responders["/dead"] = status(then=500)
    await receiver.start()
    clock = ManualClock()
    q = make(queues, max_age=3600, clock=clock)
    await q.start()
    with caplog.at_level(logging.WARNING, logger="callbox.server.webhooks"):
        await q.enqueue(receiver.url("/dead"), event(0), KEY, ordering_key="rec-1")
        await until(lambda: len(receiver.requests) >= 2, timeout=10)  # retried while young
        assert q.pending == 1 and q.expired == 0
        clock.advance(3600)
        assert await q.flush(10)
    await q.stop()
    assert q.attempts >= 2 and len(receiver.requests) == q.attempts
    assert (q.failed_permanently, q.expired, q.delivered, q.pending) == (1, 1, 0, 0)
    assert any("max_age" in m for m in caplog.messages)


async def test_entry_expired_while_down_is_dropped_unsent(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    clock = ManualClock()
    await make(queues, clock=clock).enqueue(receiver.url("/hook"), event(0), KEY,
                                                ordering_key="rec-1")
    await receiver.start()
    clock.advance(3600)  # down for an hour
    q = make(queues, max_age=3600, clock=clock)
    await q.start()
    assert await q.flush(3)
    await q.stop()
    assert receiver.requests == [] and q.attempts == 0
    assert q.failed_permanently == 1 and q.expired == 1


async def test_non_http_url_is_refused_at_enqueue(queues: Queues,
                                                  tmp_path: Path) -> None:
    q = make(queues)
    await q.enqueue("ftp://example.com/hook", event(0), KEY, ordering_key="rec-1")
    await q.enqueue("not a url", event(1), KEY, ordering_key="rec-1")
    assert q.pending == 0 and q.failed_permanently == 2
    await q.stop()


async def test_deliveries_log_kept_after_delivery_per_ordering_key(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    receiver.responders["/flaky"] = status(500, 503)
    receiver.responders["/gone"] = status(404)
    await receiver.start()
    clock = ManualClock()
    q = make(queues, clock=clock)
    await q.start()
    await q.enqueue(receiver.url("/flaky?secret=x"), event(0), KEY, ordering_key="rec-1",
                    label="recording")
    await q.enqueue(receiver.url("/flaky"), event(1, state="finished"), KEY,
                    ordering_key="rec-1", label="finished")
    await q.enqueue(receiver.url("/gone"), event(0, "rec-2"), KEY, ordering_key="rec-2",
                    label="recording")
    await q.enqueue("ftp://example.com/hook", event(1, "rec-2"), KEY, ordering_key="rec-2",
                    label="finished")
    assert await q.flush(5)

    first, second = await q.deliveries("rec-1")  # kept after delivery, oldest first
    assert (first.label, first.status, first.attempts) == ("recording", "delivered", 3)
    assert first.last_error is None and first.last_time == clock.now
    assert first.url == receiver.url("/flaky") + "?..."  # no query string: it may hold secrets
    assert (second.label, second.status, second.attempts) == ("finished", "delivered", 1)
    gone, bad_url = await q.deliveries("rec-2")
    assert (gone.status, gone.attempts) == ("failed", 1)
    assert gone.last_error is not None and "HTTP 404" in gone.last_error
    assert bad_url.status == "failed" and bad_url.attempts == 0
    assert bad_url.last_error is not None and "not an absolute http(s) url" in bad_url.last_error
    assert await q.deliveries("rec-3") == []

    await q.stop()  # the log is on disk: a new queue on the same file sees it
    again = make(queues)
    assert [d.status for d in await again.deliveries("rec-1")] == ["delivered", "delivered"]
    await again.forget("rec-1")
    assert await again.deliveries("rec-1") == [] and len(await again.deliveries("rec-2")) == 2


async def test_deliveries_log_shows_a_retry_in_progress(
        receiver: Receiver, queues: Queues, tmp_path: Path) -> None:
    receiver.responders["/down"] = status(500, then=500)
    await receiver.start()
    q = make(queues, backoff_initial=30.0, backoff_max=30.0)
    await q.start()
    await q.enqueue(receiver.url("/down"), event(0), KEY, ordering_key="rec-1", label="recording")
    # listed at once: still pending, or (a busy machine, a database round trip) already tried
    assert [d.status for d in await q.deliveries("rec-1")] in (["pending"], ["retrying"])

    async def retrying() -> bool:
        return (await q.deliveries("rec-1"))[0].status == "retrying"

    await until_async(retrying, timeout=5)
    (delivery,) = await q.deliveries("rec-1")
    assert delivery.attempts == 1 and "HTTP 500" in (delivery.last_error or "")
