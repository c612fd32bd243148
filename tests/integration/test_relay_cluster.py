"""RELAY across nodes over a real NATS server: two (or three) platforms share one bus.

A RELAY client connected to node A only gets the calls of its context that come to node B: it
answers, plays, records and hangs up, every command forwarded to B and every event back; the
recording stays on B. Two clients of one context on two nodes: each call offered from a third
node goes to exactly one of them. A node killed mid-call (`callbox serve` as a subprocess,
SIGKILL): the client on A hears its call end. No client anywhere: 480 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.conftest import RunningPlatform, running_platform
from tests.peers import audio
from tests.peers.nats import NatsServer, running_nats
from tests.peers.official_sdk import official_sdk_python
from tests.peers.poll import until
from tests.peers.ports import free_port_range, free_tcp_port, free_udp_port

from callbox.caller import place_call
from callbox.relay import Call, RelayClient
from callbox.server.config import Project, Route
from callbox.wire.basic_auth import basic_auth_header

pytestmark = pytest.mark.peers

PROJECT, TOKEN = "p1", "t1"
ROUTES = [Route("voicemail", context="default")]
NO_TIMEOUTS = {"initial_timeout": 0, "end_silence_timeout": 0, "terminators": ""}
API = "/api/relay/rest/recordings"
CALLBOX = str(Path(sys.executable).parent / "callbox")


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@contextlib.asynccontextmanager
async def node(tmp_path: Path, nats: NatsServer, node_id: str) -> AsyncIterator[RunningPlatform]:
    """One node of the cluster: project p1/t1, plain WS, media in this process."""
    async with running_platform(tmp_path / node_id, ROUTES, http__plain_listen="127.0.0.1:0",
                                server__workers=0, cluster__bus_url=nats.url,
                                cluster__node_id=node_id) as running:
        running.platform.config.projects[:] = [Project(PROJECT, TOKEN)]
        yield running


def ws_url(running: RunningPlatform) -> str:
    assert running.platform.listening is not None and running.platform.listening.plain
    return f"ws://127.0.0.1:{running.platform.listening.plain[1]}/"


@contextlib.asynccontextmanager
async def relay_client(running: RunningPlatform, handler: Callable[[Call], Awaitable[Any]],
                       ) -> AsyncIterator[RelayClient]:
    client = RelayClient(PROJECT, TOKEN, ws_url(running), ["default"])
    client.on_call(handler)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def knows_taker(running: RunningPlatform, what: str = "") -> None:
    """Until `running` has heard (in a heartbeat) of a node with a client of "default"."""
    cluster = running.platform.cluster
    assert cluster is not None
    await until(lambda: cluster.has_taker(PROJECT, "default"), 10, what or "a taker heard of")


async def list_recordings(running: RunningPlatform) -> list[dict[str, Any]]:
    assert running.platform.listening is not None
    context = ssl.create_default_context(cafile=str(running.platform.listening.cert))
    url = running.platform.config.http.public_url + API
    async with aiohttp.ClientSession() as http, http.get(
            url, ssl=context,
            headers={"Authorization": basic_auth_header(PROJECT, TOKEN)}) as response:
        assert response.status == 200
        body = await response.json()
    return list(body["data"])


async def test_client_on_a_answers_plays_records_and_hangs_up_a_call_on_b(tmp_path, nats):
    outcome: dict[str, Any] = {}

    async def handle(call: Call) -> None:
        outcome["node_id"] = call.node_id
        states: list[str] = []
        call.on("calling.call.state", lambda e: states.append(e.state))
        outcome["states"] = states
        await call.answer()
        play = await call.play([{"type": "tts", "text": "Hello from node B."}])
        outcome["play"] = await play.wait(timeout=15)
        action = await call.record(audio={"format": "wav", **NO_TIMEOUTS})
        await asyncio.sleep(1.0)
        await action.stop()
        outcome["record"] = await action.wait(timeout=10)
        await call.hangup()

    tone = tmp_path / "tone.wav"
    audio.write_wav(tone, audio.tone(600, 8.0, dbfs=-12))
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b, \
            relay_client(a, handle):
        await knows_taker(b, "node B hears of node A's client")
        result = await place_call(b.uri("voicemail"), play=str(tone), hangup_after=20)
        assert result.status == 200
        assert result.hung_up_by == "remote"  # the client's hangup, forwarded to B: a BYE
        await until(lambda: "ended" in outcome.get("states", []), 10, "the call's end")
        seen = await b.wait_call_ended(0)
        assert not a.observed  # the call never touched node A's SIP or media
        (recording,) = seen.call.recordings
        listed_on_b = await list_recordings(b)
        listed_on_a = await list_recordings(a)
    assert outcome["node_id"] == "node-b"
    assert outcome["play"].state == "finished"
    event = outcome["record"]
    assert event.state == "finished"
    assert event.url == recording.url and event.url.startswith(b.platform.config.http.public_url)
    assert event.duration == pytest.approx(recording.duration) and event.duration > 0.5
    assert event.params["record"]["size"] > 8000  # at least half a second of 8 kHz 16-bit
    assert [r["id"] for r in listed_on_b] == [recording.id] and listed_on_a == []
    assert outcome["states"][-2:] == ["ending", "ended"]
