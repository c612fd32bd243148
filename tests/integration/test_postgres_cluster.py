"""Two nodes sharing one PostgreSQL database (a real server, tests/peers/postgres.py): recording
metadata every node lists, webhooks delivered once across nodes, a database restart survived.

Calls come from our own UAC (`place_call`) playing a tone; webhooks go to an aiohttp receiver
that counts what it answered 2xx, by delivery id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from tests.integration.conftest import RunningPlatform, console_json, running_platform, swml
from tests.peers import audio
from tests.peers.poll import until, until_async
from tests.peers.ports import free_tcp_port
from tests.peers.postgres import PostgresCluster

from callbox.caller import place_call
from callbox.server.config import Project, Route
from callbox.server.database import open_database
from callbox.server.recording import engine as recording_engine
from callbox.server.recording.engine import Recording
from callbox.server.recording.writers import open_writer
from callbox.server.store.postgres import PostgresRecordingStore
from callbox.server.store.recordings import RecordingRow, RecordingStore
from callbox.server.webhooks import DELIVERY_HEADER, PostgresQueueDb, WebhookQueue

AUTH = {"Authorization": aiohttp.encode_basic_auth("p1", "t1")}


@dataclass
class Receiver:
    """What the webhook receiver answered 2xx (body, delivery id), in arrival order, and when
    each arrived (time.time())."""

    url: str
    accepted: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    refused: int = 0

    def states(self) -> list[str]:
        return [body["params"]["state"] for body, _ in self.accepted]

    def per_delivery(self) -> Counter[str]:
        return Counter(delivery for _, delivery in self.accepted)


@contextlib.asynccontextmanager
async def receiver(refuse_share: float = 0.0, answer_after: float = 0.0
                   ) -> AsyncIterator[Receiver]:
    """An HTTP receiver; it answers 500 to about `refuse_share` of the requests (retried),
    each after `answer_after` seconds (a slow receiver: requests of two nodes overlap)."""
    rng = random.Random(7)
    port = free_tcp_port()
    got = Receiver(f"http://127.0.0.1:{port}/hook")

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        await asyncio.sleep(answer_after)
        if rng.random() < refuse_share:
            got.refused += 1
            return web.Response(status=500)
        got.accepted.append((body, request.headers[DELIVERY_HEADER]))
        got.arrived.append(time.time())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield got
    finally:
        await runner.cleanup()


def record_route(status_url: str) -> list[Route]:
    return [Route("rec", swml=swml(
        {"answer": {}}, {"record_call": {"status_url": status_url, "format": "wav"}},
        {"sleep": 60_000}), project="p1")]


def with_project(running: RunningPlatform) -> RunningPlatform:
    running.platform.config.projects.append(Project("p1", "t1", signing_key="sk"))
    assert running.platform.recorder is not None
    running.platform.recorder.signing_keys["p1"] = "sk"
    return running


def tone_file(tmp_path: Path) -> Path:
    """6 s of 700 Hz at -12 dBFS, what the calls play."""
    tone = tmp_path / "tone.wav"
    audio.write_wav(tone, audio.tone(700, 6.0, dbfs=-12))
    return tone


@contextlib.asynccontextmanager
async def recording_node(tmp_path: Path, postgres_url: str
                         ) -> AsyncIterator[tuple[Receiver, RunningPlatform]]:
    """A node on `postgres_url` that records every call of `rec`, with a webhook receiver."""
    async with receiver() as hooks, \
            running_platform(tmp_path, record_route(hooks.url),
                             database__url=postgres_url) as node:
        yield hooks, with_project(node)


async def started_recording(running: RunningPlatform) -> Recording:
    await until(lambda: bool(running.observed and running.observed[0].call.recordings),
                timeout=20, what="the recording started")
    (recording,) = running.observed[0].call.recordings
    assert isinstance(recording, Recording)
    return recording


@contextlib.asynccontextmanager
async def get_recordings(running: RunningPlatform) -> AsyncIterator[aiohttp.ClientResponse]:
    url = f"{running.platform.config.http.public_url}/api/relay/rest/recordings"
    async with aiohttp.ClientSession() as session, \
            session.get(url, headers=AUTH, ssl=False) as response:
        yield response


async def list_status(running: RunningPlatform) -> int:
    """The status of a request for the recordings' list."""
    async with get_recordings(running) as response:
        return response.status


async def list_recordings(running: RunningPlatform) -> list[dict[str, Any]]:
    async with get_recordings(running) as response:
        assert response.status == 200
        return list((await response.json())["data"])


async def test_two_nodes_list_every_recording_and_send_each_webhook_once(
        tmp_path: Path, postgres_url: str) -> None:
    tone = tmp_path / "tone.wav"
    audio.write_wav(tone, audio.tone(700, 3.0, dbfs=-12))
    async with receiver(refuse_share=0.3) as hooks, \
            running_platform(tmp_path / "a", record_route(hooks.url),
                             database__url=postgres_url) as a, \
            running_platform(tmp_path / "b", record_route(hooks.url),
                             database__url=postgres_url) as b:
        with_project(a), with_project(b)
        result = await place_call(a.uri("rec"), play=str(tone), hangup_after=2.5)
        assert result.status == 200
        recording = await started_recording(a)
        await asyncio.wait_for(asyncio.shield(recording.done), 30)
        assert recording.state == "finished" and recording.size

        (listed,) = await list_recordings(b)  # B's REST API: A's recording, from the table
        assert (listed["id"], listed["state"], listed["size"]) == \
            (recording.id, "finished", recording.size)
        assert listed["url"].startswith(a.platform.config.http.public_url)
        assert [r["id"] for r in await list_recordings(a)] == [recording.id]
        # B's console says who the recording holds: A stored it with the recording's end
        shown = await console_json(b.platform, f"recordings/{recording.id}")
        caller = a.observed[0].call
        assert f"the caller ({caller.from_user})" in shown["channel_legend"][0], shown
        async with aiohttp.ClientSession() as session, \
                session.get(listed["url"], ssl=False) as response:  # served by A
            assert response.status == 200
            wav = await response.read()
        assert len(wav) == recording.size
        (tmp_path / "got.wav").write_bytes(wav)
        samples, _ = audio.decode_audio(tmp_path / "got.wav")
        assert audio.tone_level_dbfs(samples[2000:10000], 700) > -16

        async def all_sent() -> bool:
            assert a.platform.webhooks is not None
            return await a.platform.webhooks.count_pending() == 0
        await until_async(all_sent, timeout=60, what="the webhook queue emptied")
        assert a.platform.webhooks is not None and b.platform.webhooks is not None
        assert a.platform.recorder is not None and b.platform.recorder is not None
        log = await b.platform.recorder.webhooks.queue.deliveries(recording.id)  # B sees A's log
        assert [(d.label, d.status) for d in log] == [("recording", "delivered"),
                                                      ("finished", "delivered")]
        assert hooks.states() == ["recording", "finished"]  # in order, once each
        assert set(hooks.per_delivery().values()) == {1}
        assert a.platform.webhooks.delivered + b.platform.webhooks.delivered == 2


async def test_queues_of_two_nodes_deliver_every_entry_once_in_order_per_key(
        postgres_url: str) -> None:
    """Both nodes enqueue events of the same keys and both deliver; a receiver that refuses
    a third of the requests makes them retry (and hold the head of a key meanwhile)."""
    databases = [await open_database(postgres_url) for _ in range(2)]
    queues = [WebhookQueue(PostgresQueueDb(db, f"node-{n}"), backoff_initial=0.05,
                           backoff_max=0.2, timeout=5.0, poll_interval=0.2)
              for n, db in enumerate(databases)]
    keys = [f"rec-{k}" for k in range(4)]
    try:
        async with receiver(refuse_share=0.33, answer_after=0.05) as hooks:
            for queue in queues:
                await queue.start()
            for seq in range(40):
                key = keys[seq % len(keys)]
                body = {"event_type": "calling.call.record",
                        "params": {"state": "recording", "seq": seq, "key": key}}
                await queues[seq % 2].enqueue(hooks.url, body, "sk", ordering_key=key)

            async def empty() -> bool:
                return await queues[0].count_pending() == 0
            await until_async(empty, timeout=60, what="every entry delivered")
            assert set(hooks.per_delivery().values()) == {1}  # no entry twice
            assert len(hooks.accepted) == 40 and hooks.refused > 0
            for key in keys:
                sent = [body["params"]["seq"] for body, _ in hooks.accepted
                        if body["params"]["key"] == key]
                assert sent == sorted(sent) and len(sent) == 10  # FIFO per key
            assert all(queue.delivered > 0 for queue in queues)  # both nodes delivered
    finally:
        for queue in queues:
            await queue.stop()
        for db in databases:
            await db.close()


async def test_a_dead_nodes_claim_expires_and_another_node_sends_the_entry(
        postgres_url: str) -> None:
    """A node claimed the head of a key and died (it never sends): another node sends the
    entry once the claim's lease has run out, not before, and the next entry after it."""
    database = await open_database(postgres_url)
    dead = PostgresQueueDb(database, "dead-node")
    queue = WebhookQueue(PostgresQueueDb(database, "live-node"), backoff_initial=0.05,
                         backoff_max=0.2, timeout=5.0, poll_interval=0.1)
    try:
        async with receiver() as hooks:
            for seq in range(2):
                await queue.enqueue(hooks.url, {"params": {"state": "recording", "seq": seq}},
                                    "sk", ordering_key="rec-1")
            claimed = await dead.claim_head("rec-1", lease=1.5)
            assert claimed is not None
            async with database.connection() as conn:
                cursor = await conn.execute(
                    "SELECT extract(epoch FROM claimed_until) FROM webhooks WHERE id = %s",
                    (claimed.id,))
                row = await cursor.fetchone()
            assert row is not None
            lease_end = float(row[0])  # the database's clock: this machine's
            await queue.start()
            await until(lambda: len(hooks.accepted) == 2, timeout=30,
                        what="both entries sent by the live node")
            assert [body["params"]["seq"] for body, _ in hooks.accepted] == [0, 1]
            assert hooks.accepted[0][1] == claimed.delivery_id
            assert hooks.arrived[0] >= lease_end  # not while the dead node's lease held

            async def empty() -> bool:  # the delivery is stored once its response came back
                return await queue.count_pending() == 0
            await until_async(empty, timeout=10, what="the second delivery stored as sent")
    finally:
        await queue.stop()
        await database.close()


async def test_a_database_restart_mid_recording_loses_nothing(
        tmp_path: Path, postgres_url: str, postgres_cluster: PostgresCluster) -> None:
    tone = tone_file(tmp_path)
    async with recording_node(tmp_path, postgres_url) as (hooks, node):
        store = node.platform.recordings
        assert store is not None
        call = asyncio.ensure_future(place_call(node.uri("rec"), play=str(tone),
                                                hangup_after=4.0))
        recording = await started_recording(node)

        async def stored_recording() -> bool:
            row = await store.get(recording.id)
            return row is not None and row.state == "recording"
        await until_async(stored_recording, timeout=20, what="its first state stored")

        await asyncio.to_thread(postgres_cluster.stop)
        try:
            api = f"{node.platform.config.http.public_url}/api/relay/rest/recordings"
            async with aiohttp.ClientSession() as session, \
                    session.get(api, headers=AUTH, ssl=False) as response:
                assert response.status == 503  # "try again", not a 500
                assert response.headers["Retry-After"] == "5"
                assert "database" in (await response.json())["errors"][0]["message"]
            assert (await asyncio.wait_for(call, 30)).status == 200  # hung up: it ends
            await until(lambda: recording.is_done, timeout=20, what="the end reported")
            assert not recording.done.done()  # its end waits for the database
        finally:
            await asyncio.to_thread(postgres_cluster.start)

        event = await asyncio.wait_for(asyncio.shield(recording.done), 60)
        assert event["state"] == "finished" and event["size"] == recording.size
        row = await store.get(recording.id)
        assert row is not None
        assert (row.state, row.size, row.duration) == ("finished", recording.size,
                                                       recording.duration)
        assert row.end_time is not None and row.end_time >= (row.start_time or 0)
        assert recording.path.stat().st_size == recording.size  # the file kept writing
        assert recording.duration is not None and recording.duration > 3.0

        await until(lambda: len(hooks.states()) >= 2, timeout=60,
                    what="both webhooks delivered")
        assert hooks.states() == ["recording", "finished"]
        assert set(hooks.per_delivery().values()) == {1}


async def whole_call_kept_once_back(recording: Recording, store: RecordingStore,
                                    hooks: Receiver) -> None:
    """Once the database is back: the recording ends `finished`, its file holds the caller's
    tone from the answer to the hang-up, its row says so, each webhook arrived once."""
    event = await asyncio.wait_for(asyncio.shield(recording.done), 60)
    assert event["state"] == "finished"
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and samples.ndim == 1
    assert recording.duration is not None and recording.duration > 3.0
    assert len(samples) / rate == pytest.approx(recording.duration, abs=0.05)
    (start, end), = audio.active_spans(samples, rate, threshold_dbfs=-30)
    assert start < 0.2  # the tone from the answer on
    assert end == pytest.approx(len(samples) / rate, abs=0.1)  # up to the hang-up
    assert abs(audio.dominant_frequency(samples[int(start * rate):int(end * rate)]) - 700) < 5
    row = await store.get(recording.id)
    assert row is not None
    assert (row.state, row.size, row.duration) == ("finished", recording.size,
                                                   recording.duration)
    await until(lambda: len(hooks.states()) >= 2, timeout=60, what="both webhooks delivered")
    assert hooks.states() == ["recording", "finished"]
    assert set(hooks.per_delivery().values()) == {1}


LONG_ROW_WAIT = 5.0


@pytest.fixture
def long_row_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    """ROW_WAIT made 5 s (from 0.5): a start that waits for it is told from one that does not
    even when this loaded machine holds the test process up for a moment."""
    monkeypatch.setattr(recording_engine, "ROW_WAIT", LONG_ROW_WAIT)
    return LONG_ROW_WAIT


async def test_a_recording_started_while_the_database_is_down_keeps_the_whole_call(
        tmp_path: Path, postgres_url: str, postgres_cluster: PostgresCluster,
        long_row_wait: float) -> None:
    """Its row waits for the database, its audio does not: the file holds the call from the
    answer on (the outage is known: the recording does not even wait ROW_WAIT), and the row
    and both webhooks follow once the database is back."""
    tone = tone_file(tmp_path)
    async with recording_node(tmp_path, postgres_url) as (hooks, node):
        store = node.platform.recordings
        assert store is not None
        await asyncio.to_thread(postgres_cluster.stop)
        try:
            assert await list_status(node) == 503  # the platform knows the database is down
            result = await place_call(node.uri("rec"), play=str(tone), hangup_after=4.0)
            assert result.status == 200
            recording = await started_recording(node)
            answered_at = node.observed[0].call.answered_at
            assert recording.start_time is not None and answered_at is not None
            assert recording.start_time - answered_at < long_row_wait / 2
            await until(lambda: recording.is_done, timeout=20, what="the end reported")
            assert not recording.done.done()  # its row and its end wait for the database
        finally:
            await asyncio.to_thread(postgres_cluster.start)

        await whole_call_kept_once_back(recording, store, hooks)


async def test_a_database_that_hangs_does_not_hold_back_the_audio(
        tmp_path: Path, postgres_url: str, postgres_cluster: PostgresCluster,
        long_row_wait: float) -> None:
    """The database stops answering (frozen: connections open, nothing answered) before a
    call, and the platform does not know it: the recording starts at the answer all the same
    (its audio does not wait for its row), its `recording` event goes ROW_WAIT later without
    the row, and the row, its end and both webhooks follow once the database answers."""
    tone = tone_file(tmp_path)
    async with recording_node(tmp_path, postgres_url) as (hooks, node):
        store = node.platform.recordings
        assert store is not None and store.reachable
        with postgres_cluster.frozen():
            result = await place_call(node.uri("rec"), play=str(tone), hangup_after=4.0)
            assert result.status == 200
            recording = await started_recording(node)
            answered_at = node.observed[0].call.answered_at
            assert recording.start_time is not None and answered_at is not None
            assert recording.start_time - answered_at < long_row_wait / 2  # did not wait
            await until(lambda: recording.is_done, timeout=20, what="the end reported")
            await until(lambda: bool(recording.events), timeout=20,
                        what="its first event, without the row")
            assert [event["state"] for event in recording.events] == ["recording"]
            assert not recording.done.done()  # its row and its end wait for the database

        await whole_call_kept_once_back(recording, store, hooks)


async def test_a_node_repairs_only_its_own_unfinished_recordings(
        tmp_path: Path, postgres_url: str) -> None:
    """Another node's recording still running is in the shared table at this node's start:
    it is left alone (the other node is recording it), not ended as lost in a crash."""
    database = await open_database(postgres_url)
    try:
        store = PostgresRecordingStore(database)
        theirs = RecordingRow(
            id="ab" * 16, project_id="p1", call_id="c1", control_id="ctl", state="recording",
            format="wav", channels=1, direction="speak", duration=None, size=None,
            url=f"https://other-node.example/recordings/{'ab' * 16}.wav",
            path=str(tmp_path / "elsewhere" / f"{'ab' * 16}.wav"), created_at=time.time(),
            start_time=time.time(), end_time=None, reason=None, status_url="")
        await store.add(theirs)
        async with running_platform(tmp_path, database__url=postgres_url) as node:
            assert node.platform.recovered == []
        assert await store.get(theirs.id) == theirs
    finally:
        await database.close()


async def test_a_node_restarted_under_another_url_repairs_what_it_recorded(
        tmp_path: Path, postgres_url: str) -> None:
    """Its `.part` is in this node's recordings directory: it is this node's, whatever url the
    node had when it recorded it (a restart on another port, say)."""
    database = await open_database(postgres_url)
    try:
        store = PostgresRecordingStore(database)
        rec_id = "cd" * 16
        final = tmp_path / "data" / "recordings" / f"{rec_id}.wav"
        final.parent.mkdir(parents=True)
        writer = open_writer("wav", final, 1)
        writer.write(np.full(8000, 1000, dtype=np.int16))  # a second, then the crash
        ours = RecordingRow(
            id=rec_id, project_id="p1", call_id="c1", control_id="ctl", state="recording",
            format="wav", channels=1, direction="speak", duration=None, size=None,
            url=f"https://127.0.0.1:1/recordings/{rec_id}.wav", path=str(final),
            created_at=time.time(), start_time=time.time(), end_time=None, reason=None,
            status_url="")
        await store.add(ours)
        async with running_platform(tmp_path, database__url=postgres_url) as node:
            assert [row.id for row in node.platform.recovered] == [rec_id]
        row = await store.get(rec_id)
        assert row is not None and row.state == "finished" and row.duration == 1.0
        assert final.exists()
    finally:
        await database.close()


@pytest.mark.parametrize("value", ["sqlite:///x.db", "mysql://u@h/db", "http://h"])
def test_a_database_url_that_is_not_postgresql_is_refused(value: str) -> None:
    from callbox.server.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="postgresql://"):
        load_config(env={"CALLBOX_DATABASE_URL": value})
    config = load_config(env={"CALLBOX_DATABASE_URL": "postgresql://u:secret@h:5432/cb"})
    assert config.database.url == "postgresql://u:secret@h:5432/cb"


def test_serve_with_an_unreachable_database_says_so_without_the_password(
        tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens there
    done = subprocess.run(
        [str(Path(sys.executable).parent / "callbox"), "serve", "--sip-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", "--workers", "0", "--data-dir", str(tmp_path)],
        env={**os.environ, "CALLBOX_DATABASE_URL": f"postgresql://cb:s3cret@127.0.0.1:{port}/cb"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"callbox serve: cannot connect to database postgresql://cb@127.0.0.1:{port}"
                    "/cb within 5 s: is it running?")
    assert "s3cret" not in done.stderr

