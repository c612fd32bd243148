"""RELAY across nodes over a real NATS server: two (or three) platforms share one bus.

A RELAY client connected to node A only gets the calls of its context that come to node B: it
answers, plays, records and hangs up, every command forwarded to B and every event back; the
recording stays on B. Two clients of one context on two nodes: each call offered from a third
node goes to exactly one of them. A node killed mid-call (`callbox serve` as a subprocess,
SIGKILL): the client on A hears its call end; the node holding the client killed while the
call rings: the call ends. A draining node's client is offered no more calls. No client
anywhere: 480 at once. The bus killed and restarted: calls
cross again. No bus at start: a clear error. A client that drops off node A and comes back on
node B resumes its session there, with its waiting events and its calls on both nodes (and on a
third node, which hears that the session moved); the official SDK does so behind HAProxy when
node A is taken out, drains or stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.integration.conftest import RunningPlatform, make_config, running_platform
from tests.integration.test_relay import stop_program
from tests.peers import audio
from tests.peers.haproxy import Haproxy, running_haproxy
from tests.peers.nats import NatsServer, running_nats
from tests.peers.official_sdk import official_sdk_python
from tests.peers.poll import until
from tests.peers.ports import free_port_range, free_tcp_port, free_udp_port, tcp_port_listening

from callbox.caller import place_call
from callbox.relay import Call, RelayClient
from callbox.server.app import Platform
from callbox.server.cluster.bus import BusError
from callbox.server.cluster.directory import NodeInfo
from callbox.server.config import Project, Route
from callbox.server.tls import ensure_self_signed
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
async def node(tmp_path: Path, nats: NatsServer, node_id: str, **overrides: Any
               ) -> AsyncIterator[RunningPlatform]:
    """One node of the cluster: project p1/t1, plain WS, media in this process."""
    async with running_platform(tmp_path / node_id, ROUTES, http__plain_listen="127.0.0.1:0",
                                server__workers=0, cluster__bus_url=nats.url,
                                cluster__node_id=node_id, **overrides) as running:
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


async def test_each_call_from_a_third_node_goes_to_exactly_one_of_two_clients(tmp_path, nats):
    taken: dict[str, list[str]] = {"node-a": [], "node-b": []}

    def handler(name: str) -> Callable[[Call], Awaitable[None]]:
        async def handle(call: Call) -> None:
            taken[name].append(call.call_id)
            await call.answer()
            await call.hangup()
        return handle

    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b, \
            node(tmp_path, nats, "node-c") as c, \
            relay_client(a, handler("node-a")), relay_client(b, handler("node-b")):
        cluster = c.platform.cluster
        assert cluster is not None
        await until(lambda: {"node-a", "node-b"} <= {
            n for n, info in cluster.directory.nodes.items()
            if ("p1", "default") in info.contexts}, 10, "node C hears of both clients")
        results = await asyncio.gather(*(
            place_call(c.uri("voicemail"), hangup_after=20) for _ in range(4)))
        assert [(r.status, r.hung_up_by) for r in results] == [(200, "remote")] * 4
        for index in range(4):
            await c.wait_call_ended(index)
        offered = sorted(seen.call.id for seen in c.observed)
    assert not a.observed and not b.observed  # node C owned every call
    got = taken["node-a"] + taken["node-b"]
    assert sorted(got) == offered  # each call to one client, none twice, none lost


async def test_no_client_on_any_node_rejects_the_call_with_480(tmp_path, nats):
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b:
        cluster = b.platform.cluster
        assert cluster is not None
        await until(lambda: cluster.directory.alive("node-a"), 10, "node B hears node A")
        result = await place_call(b.uri("voicemail"), hangup_after=5)
    assert result.status == 480
    assert not a.observed and not b.observed  # rejected at the INVITE


async def test_an_offer_nobody_takes_ends_the_ringing_call_with_480(tmp_path, nats):
    """A heartbeat said a node has a client of the context, but no node takes the offer (its
    session left meanwhile): the call, admitted and ringing, ends with 480."""
    async with node(tmp_path, nats, "node-b") as b:
        cluster = b.platform.cluster
        assert cluster is not None
        cluster.directory.silence = 3600.0
        cluster.directory.heard(NodeInfo("node-x", "1", time.monotonic(),
                                         frozenset({(PROJECT, "default")})))
        result = await place_call(b.uri("voicemail"), hangup_after=5)
        seen = await b.wait_call_ended(0)
    assert result.status == 480
    assert seen.call.end_reason == "hangup"


async def test_a_draining_node_takes_no_more_calls_from_the_others_for_its_clients(
        tmp_path, nats):
    """Node A drains (what SIGTERM with drain_seconds does first): its client, still
    connected, is offered no call of node B any more; B, with no other taker, answers 480."""
    taken: list[str] = []

    async def handle(call: Call) -> None:
        taken.append(call.call_id)
        await call.answer()
        await call.hangup()

    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b, \
            relay_client(a, handle):
        await knows_taker(b, "node B hears of node A's client")
        first = await place_call(b.uri("voicemail"), hangup_after=20)
        assert (first.status, len(taken)) == (200, 1)  # taken across the nodes
        a.platform.refuse_new_calls()
        cluster = b.platform.cluster
        assert cluster is not None
        await until(lambda: not cluster.has_taker(PROJECT, "default"), 10,
                    "node B hears node A's client takes no more calls")
        assert a.platform.cluster is not None and not a.platform.cluster.offers.subscriptions
        second = await place_call(b.uri("voicemail"), hangup_after=5)
    assert second.status == 480
    assert len(taken) == 1 and not a.observed


def serve_config(tmp_path: Path, nats: NatsServer, node_id: str, sip_port: int,
                 plain_port: int = 0) -> Path:
    """A callbox.toml for `callbox serve`: one node of the cluster, a route to "default"
    (and plain WS on `plain_port`, when given)."""
    rtp = free_port_range(40)
    http_port = free_tcp_port()
    lines = [
        "[sip]", f'listen = "127.0.0.1:{sip_port}"', f'rtp_ports = "{rtp.start}-{rtp.stop - 1}"',
        "[http]", f'listen = "127.0.0.1:{http_port}"',
        f'public_url = "https://127.0.0.1:{http_port}"',
        f'plain_listen = "127.0.0.1:{plain_port}"' if plain_port else "",
        "[storage]", f'data_dir = "{tmp_path / "data"}"',
        "[server]", "workers = 0",
        "[cluster]", f'node_id = "{node_id}"', f'bus_url = "{nats.url}"',
        "[[projects]]", f'id = "{PROJECT}"', f'token = "{TOKEN}"',
        "[[routes]]", 'number = "voicemail"', 'context = "default"',
    ]
    path = tmp_path / f"{node_id}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_a_node_killed_mid_call_ends_the_call_for_the_client_on_another_node(
        tmp_path, nats):
    answered = asyncio.Event()
    recording = asyncio.Event()
    ended: list[Any] = []

    async def handle(call: Call) -> None:
        call.on("calling.call.state",
                lambda e: ended.append(e) if e.state == "ended" else None)
        await call.answer()
        answered.set()
        await call.record(audio={"format": "wav", **NO_TIMEOUTS})
        recording.set()

    sip_port = free_udp_port()
    config = serve_config(tmp_path, nats, "node-b", sip_port)
    async with node(tmp_path, nats, "node-a") as a, relay_client(a, handle):
        cluster = a.platform.cluster
        assert cluster is not None
        serve = await asyncio.create_subprocess_exec(
            CALLBOX, "serve", "--config", str(config), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        caller: asyncio.Task[Any] | None = None
        try:
            # node B hears node A (whose heartbeats name its client's context) when node A
            # hears node B name it among its peers
            await until(lambda: "node-a" in getattr(cluster.directory.nodes.get("node-b"),
                                                    "peers", ()), 30, "nodes A and B meet")
            caller = asyncio.ensure_future(
                place_call(f"sip:voicemail@127.0.0.1:{sip_port}", hangup_after=60))
            await asyncio.wait_for(recording.wait(), 15)
            assert not ended
            serve.send_signal(signal.SIGKILL)  # no BYE, no goodbye on the bus
            await serve.wait()
            # the silence of node B is noticed (3 s) and its call ends for the client
            await until(lambda: bool(ended), 15, "the client hears its call end")
        finally:
            if serve.returncode is None:
                serve.kill()
                await serve.wait()
            if caller is not None:
                caller.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await caller
        assert answered.is_set()
        (event,) = ended
        assert event.params["end_reason"] == "error"
        assert event.params["node_id"] == "node-b"
        assert not cluster.directory.alive("node-b") and not cluster.remote_calls.calls


# How the official SDK's programs end a call: the recording stopped, its url and size printed,
# hung up.
SDK_STOP_AND_SAVE = '''\
    await action.stop()
    event = await action.wait()
    record = event.params.get("record", {})
    print(f"Recording saved: {record.get('url', '')} {record.get('size', 0)}", flush=True)
    await call.hangup()

client.run()
'''

# The official SDK's program: a call offered by another node, answered, a prompt played, a
# message recorded for a second, then hung up. Only host/project/token are filled in.
SDK_PROGRAM = '''\
import asyncio
from signalwire.relay import RelayClient

client = RelayClient(project=PROJECT, token=TOKEN, host=HOST, contexts=["default"])

@client.on_call
async def handle_call(call):
    await call.answer()
    play = await call.play([{"type": "tts", "text": "Please leave a message."}])
    await play.wait()
    action = await call.record(audio=AUDIO)
    await asyncio.sleep(1.0)
''' + SDK_STOP_AND_SAVE


async def test_the_official_sdk_on_node_a_records_a_call_of_node_b(tmp_path, nats):
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b:
        listening = a.platform.listening
        assert listening is not None
        async with official_sdk(tmp_path, SDK_PROGRAM, listening.https[1],
                                listening.cert) as sdk:
            await knows_taker(b, "node B hears of the SDK's session on node A")
            tone = tmp_path / "tone.wav"
            audio.write_wav(tone, audio.tone(600, 10.0, dbfs=-12))
            result = await place_call(b.uri("voicemail"), play=str(tone), hangup_after=30)
            seen = await b.wait_call_ended(0)
        assert result.status == 200 and result.hung_up_by == "remote", sdk.err[-3000:]
        (recording,) = seen.call.recordings
        listed_on_b = await list_recordings(b)
    (saved,) = sdk.saved()
    assert saved == (recording.url, recording.size) and recording.size > 8000
    assert saved[0].startswith(b.platform.config.http.public_url)
    assert [r["id"] for r in listed_on_b] == [recording.id]
    assert not a.observed


async def test_a_node_killed_while_its_client_holds_a_ringing_call_ends_that_call(
        tmp_path, nats):
    """Node A (a `callbox serve`) holds the client; node B the call, still ringing. Node A
    dies: node B treats its session as gone (the hub's rule: an unanswered call is hung up)."""
    offered = asyncio.Event()

    async def handle(call: Call) -> None:
        offered.set()  # and never answers

    plain_port = free_tcp_port()
    config = serve_config(tmp_path, nats, "node-a", free_udp_port(), plain_port)
    serve = await asyncio.create_subprocess_exec(
        CALLBOX, "serve", "--config", str(config), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with node(tmp_path, nats, "node-b") as b:
            await until(lambda: tcp_port_listening(plain_port), 30, "node A listens")
            client = RelayClient(PROJECT, TOKEN, f"ws://127.0.0.1:{plain_port}/", ["default"])
            client.on_call(handle)
            await client.connect()
            try:
                await knows_taker(b, "node B hears of node A's client")
                caller = asyncio.ensure_future(place_call(b.uri("voicemail"), hangup_after=5))
                await asyncio.wait_for(offered.wait(), 15)
                serve.send_signal(signal.SIGKILL)
                await serve.wait()
                result = await asyncio.wait_for(caller, 20)
                seen = await b.wait_call_ended(0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 5)
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()
    assert result.status == 500  # hung up with reason "error" before the answer
    assert seen.call.end_reason == "error"
    cluster = b.platform.cluster
    assert cluster is not None and len(cluster.proxies) == 0


async def test_calls_cross_nodes_again_once_the_bus_is_back(tmp_path):
    """NATS is killed and restarted on its port: the nodes reconnect, hear each other again,
    and a call to node B reaches the client on node A."""
    answered: list[str] = []

    async def handle(call: Call) -> None:
        await call.answer()
        answered.append(call.call_id)
        await call.hangup()

    with running_nats() as bus:
        async with node(tmp_path, bus, "node-a") as a, node(tmp_path, bus, "node-b") as b, \
                relay_client(a, handle):
            await knows_taker(b)
            cluster = b.platform.cluster
            assert cluster is not None
            await asyncio.to_thread(bus.stop)
            await until(lambda: not cluster.directory.alive("node-a"), 15,
                        "node B finds node A silent")
            await asyncio.to_thread(bus.start)
            await knows_taker(b, "node B hears of node A's client again")
            result = await place_call(b.uri("voicemail"), hangup_after=10)
            assert (result.status, result.hung_up_by) == (200, "remote")
            seen = await b.wait_call_ended(0)
    assert answered == [seen.call.id]


async def test_a_node_that_cannot_reach_nats_refuses_to_start_and_says_why(tmp_path):
    config = make_config(tmp_path, ROUTES)
    config.server.workers = 0
    config.cluster.bus_url = f"nats://127.0.0.1:{free_tcp_port()}"  # nobody listens there
    platform = Platform(config)
    try:
        with pytest.raises(BusError) as caught:
            await platform.start()
    finally:
        await platform.stop()
    assert f"cannot reach the NATS server at {config.cluster.bus_url}" in str(caught.value)
    assert "(cluster.bus_url) within 5 s: [Errno 111]" in str(caught.value)  # refused


async def test_a_node_that_stops_gracefully_tells_the_client_elsewhere_its_calls_ended(
        tmp_path, nats):
    """Node B stops (SIGTERM's path): it hangs its calls up, and their last events reach the
    client on node A before B leaves the bus: `ended` with end_reason hangup, not a silence."""
    answered = asyncio.Event()
    ended: list[Any] = []

    async def handle(call: Call) -> None:
        call.on("calling.call.state", lambda e: ended.append(e) if e.state == "ended" else None)
        await call.answer()
        answered.set()

    async with node(tmp_path, nats, "node-a") as a, relay_client(a, handle):
        async with node(tmp_path, nats, "node-b") as b:
            await knows_taker(b)
            caller = asyncio.ensure_future(place_call(b.uri("voicemail"), hangup_after=30))
            await asyncio.wait_for(answered.wait(), 15)
        result = await asyncio.wait_for(caller, 15)
        await until(lambda: bool(ended), 10, "the client hears its call end")
        (event,) = ended
        cluster = a.platform.cluster
        assert cluster is not None and not cluster.remote_calls.calls
    assert result.hung_up_by == "remote"
    assert event.params["end_reason"] == "hangup"


@dataclass
class SdkRun:
    """What the official SDK's program printed, once it has stopped."""

    out: str = ""
    err: str = ""

    def saved(self) -> list[tuple[str, int]]:
        """(url, size) of each "Recording saved" line, in order."""
        found = re.findall(r"^Recording saved: (\S+) (\d+)$", self.out, re.M)
        assert found, f"stdout: {self.out!r}\nstderr: {self.err[-3000:]}"
        return [(url, int(size)) for url, size in found]


@contextlib.asynccontextmanager
async def official_sdk(tmp_path: Path, program: str, port: int, ca_file: Path
                       ) -> AsyncIterator[SdkRun]:
    """The official SDK running `program` (PROJECT, TOKEN, HOST, AUDIO filled in) against
    127.0.0.1:`port`, trusting `ca_file`, in `tmp_path`; stopped (SIGINT) at the end."""
    path = tmp_path / "sdk_program.py"
    path.write_text(f"PROJECT, TOKEN, HOST = {PROJECT!r}, {TOKEN!r}, '127.0.0.1:{port}'\n"
                    f"AUDIO = {dict(format='wav', **NO_TIMEOUTS)!r}\n" + program)
    env = dict(os.environ, SIGNALWIRE_RELAY_CA_FILE=str(ca_file))
    proc = await asyncio.create_subprocess_exec(
        str(official_sdk_python()), "-u", str(path), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    run = SdkRun()
    try:
        yield run
    finally:
        _, run.out, run.err = await stop_program(proc)


@contextlib.asynccontextmanager
async def two_nodes_behind_haproxy(tmp_path: Path, nats: NatsServer, *, health_checks: bool
                                   ) -> AsyncIterator[tuple[RunningPlatform, RunningPlatform,
                                                            Haproxy, Path]]:
    """Nodes A and B with one certificate (as behind any load balancer), HAProxy in front of
    their HTTPS port (A in service, B its backup); the certificate's path comes last."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    tls = {"http__tls_cert": str(cert), "http__tls_key": str(key)}
    async with node(tmp_path, nats, "node-a", **tls) as a, \
            node(tmp_path, nats, "node-b", **tls) as b:
        ports = {}
        for name, running in (("node-a", a), ("node-b", b)):
            assert running.platform.listening is not None
            ports[name] = running.platform.listening.https[1]
        with running_haproxy(ports, health_checks=health_checks) as haproxy:
            yield a, b, haproxy, cert


def resumed_on(running: RunningPlatform, protocol: str) -> bool:
    """`running` holds the session `protocol` for its client, connected there."""
    session = running.platform.relay.sessions.get(protocol)
    return session is not None and session.connected and not session.relayed


def assert_holds_the_tone(recording: Any, freq: float) -> None:
    """The recording's file lasts its reported duration and holds the caller's tone."""
    samples, rate = audio.decode_audio(recording.path)
    assert len(samples) / rate == pytest.approx(recording.duration, abs=0.1)
    heard = samples[int(0.2 * rate):]  # past the first packets' way in
    assert len(heard) >= rate // 2, len(samples)
    assert audio.dominant_frequency(heard, rate) == pytest.approx(freq, abs=10)
    assert audio.tone_level_dbfs(heard, freq, rate) > -20


async def test_a_client_that_resumes_on_another_node_keeps_its_session_and_its_calls(
        tmp_path, nats):
    """The client's socket to node A drops and it comes back on node B (as behind a load
    balancer) with its session's protocol: B takes the session over from A. It holds two
    recorded calls: one of A (its recording stopped on A while the client was away: the
    `finished` event waits and is delivered on B; the client's hangup from B is run on A) and
    one of B (held across the bus until then: the recording is stopped from B, where it now runs
    locally)."""
    moved = asyncio.Event()
    started: dict[str, asyncio.Event] = {"node-a": asyncio.Event(), "node-b": asyncio.Event()}
    outcome: dict[str, dict[str, Any]] = {}

    async def handle(call: Call) -> None:
        seen: dict[str, Any] = {"states": []}
        outcome[call.node_id] = seen
        call.on("calling.call.state", lambda e: seen["states"].append(e.state))
        await call.answer()
        action = await call.record(audio={"format": "wav", **NO_TIMEOUTS})
        started[call.node_id].set()
        await moved.wait()
        if call.node_id == "node-b":
            await action.stop()
        seen["record"] = await action.wait(timeout=15)
        await call.hangup()

    tones = {"node-a": 700, "node-b": 500}
    for name, freq in tones.items():
        audio.write_wav(tmp_path / f"{name}.wav", audio.tone(freq, 12.0, dbfs=-12))
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b, \
            relay_client(a, handle) as client:
        await knows_taker(b, "node B hears of node A's client")
        callers = {name: asyncio.ensure_future(place_call(
            running.uri("voicemail"), play=str(tmp_path / f"{name}.wav"), hangup_after=30))
            for name, running in (("node-a", a), ("node-b", b))}
        for event in started.values():
            await asyncio.wait_for(event.wait(), 15)
        await asyncio.sleep(1.0)  # a second of each tone in its recording
        protocol = client.protocol
        client.url = f"ws://127.0.0.1:{free_tcp_port()}/"  # away for a while: nothing there
        assert a.platform.relay.drop_connections(PROJECT) == 1
        (recording_a,) = a.observed[0].call.recordings
        recording_a.stop()  # while the client is away: its `finished` event waits on node A
        await asyncio.wait_for(asyncio.shield(recording_a.done), 5)
        assert a.platform.relay.sessions[protocol].unacked >= 1
        client.url = ws_url(b)  # the client's next attempt lands on node B
        await until(lambda: client.reconnects == 1, 15, "the client reconnects, to node B")
        moved.set()
        results = {name: await asyncio.wait_for(caller, 20) for name, caller in callers.items()}
        await until(lambda: all("ended" in o["states"] for o in outcome.values()), 10,
                    "both calls' end, heard on node B")
        (recording_b,) = b.observed[0].call.recordings
        session_b = b.platform.relay.sessions.get(protocol)
        assert session_b is not None and session_b.connected and not session_b.relayed
        assert protocol not in a.platform.relay.sessions
    assert client.protocol == protocol and client.session_restored
    for name, running, recording in (("node-a", a, recording_a), ("node-b", b, recording_b)):
        assert results[name].hung_up_by == "remote"  # the client's hangup, sent from node B
        event = outcome[name]["record"]
        assert event.state == "finished" and event.url == recording.url
        assert event.url.startswith(running.platform.config.http.public_url)
        assert event.duration == pytest.approx(recording.duration)
        assert_holds_the_tone(recording, tones[name])


async def test_a_third_node_sends_the_events_of_its_call_where_the_session_moved(
        tmp_path, nats):
    """The client on node A holds a recorded call of node C; it drops off A and resumes on
    node B. C hears that the session moved: the stop the client sends from B runs on C, and
    the recording's `finished` and the call's end come back to B."""
    moved = asyncio.Event()
    outcome: dict[str, Any] = {"states": []}

    async def handle(call: Call) -> None:
        call.on("calling.call.state", lambda e: outcome["states"].append(e.state))
        await call.answer()
        action = await call.record(audio={"format": "wav", **NO_TIMEOUTS})
        outcome["recording"] = True
        await moved.wait()
        await action.stop()
        outcome["record"] = await action.wait(timeout=15)
        await call.hangup()

    tone = audio.write_wav(tmp_path / "tone.wav", audio.tone(600, 12.0, dbfs=-12))
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b") as b, \
            node(tmp_path, nats, "node-c") as c, relay_client(a, handle) as client:
        await knows_taker(c, "node C hears of node A's client")
        await until(lambda: a.platform.cluster is not None
                    and a.platform.cluster.directory.alive("node-b"), 10, "A hears of B")
        caller = asyncio.ensure_future(place_call(c.uri("voicemail"), play=str(tone),
                                                  hangup_after=30))
        await until(lambda: "recording" in outcome, 15, "the client records C's call")
        await asyncio.sleep(1.0)  # a second of the tone in the recording
        protocol = client.protocol
        client.url = ws_url(b)
        assert a.platform.relay.drop_connections(PROJECT) == 1
        await until(lambda: resumed_on(b, protocol), 15, "the client resumes on node B")
        moved.set()
        result = await asyncio.wait_for(caller, 20)
        await until(lambda: "ended" in outcome["states"], 10, "the call's end, heard on B")
        (recording,) = (await c.wait_call_ended(0)).call.recordings
        cluster_c = c.platform.cluster
        # C stands in for the session once: A's stand-in became B's (the stop from B found it)
        assert cluster_c is not None and len(cluster_c.proxies) == 1
    assert result.hung_up_by == "remote"  # the client's hangup, from B, run on C
    event = outcome["record"]
    assert event.state == "finished" and event.url == recording.url
    assert event.url.startswith(c.platform.config.http.public_url)
    assert event.duration == pytest.approx(recording.duration)
    assert_holds_the_tone(recording, 600)
    assert not a.observed and not b.observed

async def test_a_session_no_node_holds_is_started_anew_once_every_node_said_so(
        tmp_path, nats, caplog):
    """A client comes back with a protocol no node holds (its session expired): node A asks,
    node B says it does not hold it, and A starts a new session (without waiting out the
    handover's timeout)."""
    caplog.set_level(logging.INFO, logger="callbox.server.cluster.handover")
    async with node(tmp_path, nats, "node-a") as a, node(tmp_path, nats, "node-b"):
        cluster = a.platform.cluster
        assert cluster is not None
        await until(lambda: cluster.directory.alive("node-b"), 10, "node A hears of node B")
        client = RelayClient(PROJECT, TOKEN, ws_url(a), ["default"])
        forgotten = "signalwire_" + "0" * 32
        client.protocol = forgotten
        await client.connect()
        try:
            assert not client.session_restored and client.protocol != forgotten
            assert client.protocol in a.platform.relay.sessions
        finally:
            await client.disconnect()
    assert "not every node answered" not in caplog.text


# The official SDK's program for a session that moves: each call answered and recorded; once
# the test says the client is on the other node, the recording is stopped and the call hung up.
SDK_MOVING_PROGRAM = '''\
import asyncio
from pathlib import Path
from signalwire.relay import RelayClient

client = RelayClient(project=PROJECT, token=TOKEN, host=HOST, contexts=["default"])

@client.on_call
async def handle_call(call):
    await call.answer()
    action = await call.record(audio=AUDIO)
    while not Path("moved").exists():
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a second of the caller in the recording, at least
''' + SDK_STOP_AND_SAVE


async def sdk_records_a_call_of(running: RunningPlatform, tone: Path) -> asyncio.Future[Any]:
    """Once the SDK is connected to `running` (node A): a caller playing `tone` calls it, and
    the SDK's recording of the call starts; the caller's result, to come."""
    await until(lambda: running.platform.relay.has_session_for(PROJECT, "default"), 20,
                "the SDK connects, through HAProxy, to node A")
    caller = asyncio.ensure_future(place_call(running.uri("voicemail"), play=str(tone),
                                              hangup_after=60))
    await until(lambda: bool(running.observed and running.observed[0].call.recordings), 15,
                "the SDK's recording starts on node A")
    await asyncio.sleep(1.0)  # a second of the tone in it
    return caller


async def test_the_official_sdk_behind_haproxy_resumes_on_node_b_when_node_a_is_taken_out(
        tmp_path, nats):
    """The official SDK reaches two nodes through HAProxy. It records a call of node A; the
    operator takes node A out of HAProxy (maintenance: its connections are cut), the SDK
    reconnects, lands on node B and resumes its session there; its stop and hangup, sent to
    B, run on A, where the call and the recording are."""
    tone = audio.write_wav(tmp_path / "tone.wav", audio.tone(700, 20.0, dbfs=-12))
    async with two_nodes_behind_haproxy(tmp_path, nats, health_checks=False) as (
            a, b, haproxy, cert), official_sdk(tmp_path, SDK_MOVING_PROGRAM, haproxy.port,
                                               cert) as sdk:
        caller = await sdk_records_a_call_of(a, tone)
        (protocol,) = a.platform.relay.sessions
        await asyncio.to_thread(haproxy.take_out, "node-a")
        await until(lambda: resumed_on(b, protocol), 30, "the SDK resumes its session on B")
        (tmp_path / "moved").touch()
        result = await asyncio.wait_for(caller, 30)
        seen = await a.wait_call_ended(0)
        assert protocol not in a.platform.relay.sessions
    assert result.status == 200 and result.hung_up_by == "remote", sdk.err[-3000:]
    (recording,) = seen.call.recordings
    assert sdk.saved() == [(recording.url, recording.size)]
    assert recording.url.startswith(a.platform.config.http.public_url)
    assert_holds_the_tone(recording, 700)
    assert not b.observed  # the call never touched node B's SIP or media


async def test_a_draining_node_sends_the_official_sdk_to_node_b_which_gives_it_new_calls(
        tmp_path, nats):
    """Node A drains (SIGTERM with drain_seconds) while the official SDK, reaching it through
    HAProxy, records a call there. A's /health says 503, HAProxy's checks take it out, and A
    asks its RELAY client to reconnect: the SDK lands on node B and resumes its session
    there. It gets B's new calls, and its stop and hangup of A's call, sent to B, run on A,
    whose drain then ends: its last call is over."""
    tones = {"node-a": 700, "node-b": 500}
    for name, freq in tones.items():
        audio.write_wav(tmp_path / f"{name}.wav", audio.tone(freq, 20.0, dbfs=-12))
    async with two_nodes_behind_haproxy(tmp_path, nats, health_checks=True) as (
            a, b, haproxy, cert), official_sdk(tmp_path, SDK_MOVING_PROGRAM, haproxy.port,
                                               cert) as sdk:
        first = await sdk_records_a_call_of(a, tmp_path / "node-a.wav")
        (protocol,) = a.platform.relay.sessions
        a.platform.relay_move_after = 0.5  # HAProxy checks every 100 ms
        drain = asyncio.ensure_future(a.platform.drain(60))
        await until(lambda: resumed_on(b, protocol), 30, "the SDK resumes its session on B")
        (tmp_path / "moved").touch()
        second = await place_call(b.uri("voicemail"), play=str(tmp_path / "node-b.wav"),
                                  hangup_after=30)
        results = {"node-a": await asyncio.wait_for(first, 30), "node-b": second}
        await asyncio.wait_for(drain, 30)
        assert not a.platform.calls and protocol not in a.platform.relay.sessions
        recordings = {name: (await running.wait_call_ended(0)).call.recordings[0]
                      for name, running in (("node-a", a), ("node-b", b))}
    assert sorted(sdk.saved()) == sorted((r.url, r.size) for r in recordings.values())
    for name, running in (("node-a", a), ("node-b", b)):
        assert results[name].status == 200 and results[name].hung_up_by == "remote"
        assert recordings[name].url.startswith(running.platform.config.http.public_url)
        assert_holds_the_tone(recordings[name], tones[name])


async def test_a_node_that_stops_hands_its_sdk_session_to_node_b_with_the_call_it_holds_there(
        tmp_path, nats):
    """The official SDK, through HAProxy on node A, records a call that came to node B. Node A
    stops (SIGTERM, no drain): it asks the SDK to reconnect and waits for its session to be
    taken over before it leaves. The SDK lands on node B and resumes there; its call, across
    the bus until then, is now B's own: the stop and hangup run on B."""
    cert, key = ensure_self_signed(tmp_path / "tls")
    tls = {"http__tls_cert": str(cert), "http__tls_key": str(key)}
    tone = audio.write_wav(tmp_path / "tone.wav", audio.tone(500, 20.0, dbfs=-12))
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(node(tmp_path, nats, "node-b", **tls))
        node_a = contextlib.AsyncExitStack()
        stack.push_async_callback(node_a.aclose)
        a = await node_a.enter_async_context(node(tmp_path, nats, "node-a", **tls))
        ports = {}
        for name, running in (("node-a", a), ("node-b", b)):
            assert running.platform.listening is not None
            ports[name] = running.platform.listening.https[1]
        haproxy = stack.enter_context(running_haproxy(ports, health_checks=True))
        sdk = await stack.enter_async_context(
            official_sdk(tmp_path, SDK_MOVING_PROGRAM, haproxy.port, cert))
        await until(lambda: a.platform.relay.has_session_for(PROJECT, "default"), 20,
                    "the SDK connects, through HAProxy, to node A")
        (protocol,) = a.platform.relay.sessions
        await knows_taker(b, "node B hears of the SDK's session on node A")
        caller = asyncio.ensure_future(place_call(b.uri("voicemail"), play=str(tone),
                                                  hangup_after=60))
        await until(lambda: bool(b.observed and b.observed[0].call.recordings), 15,
                    "the SDK's recording starts on node B")
        await node_a.aclose()  # node A stops
        assert resumed_on(b, protocol)  # taken over before node A left
        (tmp_path / "moved").touch()
        result = await asyncio.wait_for(caller, 30)
        seen = await b.wait_call_ended(0)
    assert result.status == 200 and result.hung_up_by == "remote", sdk.err[-3000:]
    (recording,) = seen.call.recordings
    assert sdk.saved() == [(recording.url, recording.size)]
    assert recording.url.startswith(b.platform.config.http.public_url)
    assert_holds_the_tone(recording, 500)
    assert not a.observed
