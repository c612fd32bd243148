"""Scale-out: Kamailio (the repository's example dispatcher config) in front of two
`callbox serve` nodes, each with its own data dir and node_id.

- Calls from one sipp are spread over both nodes; each node records the calls it took, and the
  caller's BYE reaches the node through Kamailio (Record-Route), so every recording finishes.
- A node told to stop (SIGTERM) drains: new calls get 503 from it, Kamailio moves them to the
  other node, the call in progress goes on; at a second SIGTERM the node hangs it up with a BYE
  that follows the route set (through Kamailio), its recording finished.
- A node killed with kill -9: Kamailio's INVITE to it times out and goes to the live node.
- The OPTIONS health check alone takes out a node that answers 503 (draining) or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from tests.integration.conftest import swml
from tests.integration.served_node import PROJECT, Node, start_node
from tests.peers import audio
from tests.peers.kamailio_dispatcher import Dispatcher, start_dispatcher
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.rawsip import RawSip
from tests.peers.sipp import SippResult, g711_stream, run_sipp

from callbox.server.store.recordings import SqliteRecordingStore

pytestmark = pytest.mark.peers

TONE_HZ = 700.0
MEASURABLE_SAMPLES = 1600  # 200 ms at 8 kHz
# Answer, record the call (mono WAV), stay on the line until the caller hangs up.
RECORDED = swml({"answer": {}}, {"record_call": {"format": "wav", "stereo": False}},
                {"sleep": 120_000})
ROUTES = {"rec": RECORDED}
# Kamailio's workers may relay a 180 after the 200: sipp ignores it instead of aborting.
LATE_PROVISIONALS_IGNORED = ["-default_behaviors", "all,-abortunexp"]


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, *, drain_seconds: int = 0, ping_interval: int = 1,
                  ) -> AsyncIterator[tuple[Dispatcher, list[Node]]]:
    """Nodes a and b (`drain_seconds` each) behind the dispatcher."""
    async with (start_node(tmp_path / "node-a", "node-a", ROUTES,
                           drain_seconds=drain_seconds) as a,
                start_node(tmp_path / "node-b", "node-b", ROUTES,
                           drain_seconds=drain_seconds) as b,
                start_dispatcher([a.target, b.target], ping_interval=ping_interval) as kamailio):
        yield kamailio, [a, b]


def tone_stream(tmp_path: Path) -> str:
    return g711_stream(audio.tone(TONE_HZ, 1.0), tmp_path / "tone.ulaw", loops=-1)


async def call_through(kamailio: Dispatcher, tmp_path: Path, *, calls: int,
                       seconds: float = 1.5, name: str = "sipp") -> SippResult:
    """`calls` calls from one sipp to "rec" through Kamailio, a few at once; each streams the
    tone and hangs up `seconds` after the ACK."""
    media = free_port_range(4 * calls)
    return await run_sipp(
        "uac_stream_bye_via_proxy", kamailio.target, service="rec", local_port=free_udp_port(),
        media_port=media.start, keys={"stream": tone_stream(tmp_path)}, calls=calls,
        rate=10, limit=5, timeout=120, workdir=tmp_path / name,
        extra_args=["-d", str(round(seconds * 1000)), *LATE_PROVISIONALS_IGNORED])


def sipp_call_ids(result: SippResult) -> set[str]:
    """The Call-IDs of the INVITEs this sipp sent (its message trace)."""
    ids = set()
    lines = result.messages.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("INVITE "):
            for header in lines[index:index + 12]:
                if header.startswith("Call-ID:"):
                    ids.add(header.split(":", 1)[1].strip())
                    break
    return ids


async def finished_recordings(node: Node, count: int) -> list[dict[str, object]]:
    """The node's recordings once `count` of them are finished (REST, polled)."""
    rows: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        rows = await node.recordings()
        if len(rows) >= count and all(row["state"] == "finished" for row in rows):
            break
        await asyncio.sleep(0.1)
    assert len(rows) == count and all(row["state"] == "finished" for row in rows), rows
    return rows


def assert_holds_the_tone(node: Node, rows: Sequence[dict[str, object]]) -> None:
    for row in rows:
        samples, rate = audio.decode_audio(node.recordings_dir / f"{row['id']}.wav")
        # enough audio to measure the tone's frequency (the caller streamed it for >= 1 s)
        assert rate == 8000 and len(samples) >= MEASURABLE_SAMPLES, row
        assert abs(audio.dominant_frequency(samples) - TONE_HZ) < 10, row
        assert audio.tone_level_dbfs(samples, TONE_HZ) > -30, row


async def test_calls_through_kamailio_are_spread_over_both_nodes_and_all_recorded(
        tmp_path: Path, peer_env: object) -> None:
    calls = 40
    async with cluster(tmp_path) as (kamailio, nodes):
        result = await call_through(kamailio, tmp_path, calls=calls)
        assert result.ok, result.describe()
        assert result.stat("SuccessfulCall") == calls, result.describe()
        placed = sipp_call_ids(result)
        assert len(placed) == calls

        taken = {node.node_id: set(node.sip_call_ids()) for node in nodes}
        assert all(len(ids) >= 5 for ids in taken.values()), taken  # both nodes used
        assert taken["node-a"].isdisjoint(taken["node-b"])
        assert taken["node-a"] | taken["node-b"] == placed  # every call reached one node

        # The caller's BYE reached the node through Kamailio: each call ended normally on the
        # node that took it, and its recording (listed by that node) finished with the tone.
        byes = kamailio.requests("BYE")
        assert {bye.call_id for bye in byes} == placed
        for node in nodes:
            rows = await finished_recordings(node, len(taken[node.node_id]))
            platform_ids = node.sip_call_ids()
            assert {platform_ids[sip_id] for sip_id in taken[node.node_id]} == {
                row["call_id"] for row in rows}
            assert_holds_the_tone(node, rows)


def caller_waiting_for_bye(kamailio: Dispatcher, tmp_path: Path) -> asyncio.Task[SippResult]:
    """One call through Kamailio that streams the tone until the node hangs up."""
    return asyncio.create_task(run_sipp(
        "uac_hangup_by_server_via_proxy", kamailio.target, service="rec",
        local_port=free_udp_port(), media_port=free_port_range(4).start,
        keys={"stream": tone_stream(tmp_path)}, timeout=120, workdir=tmp_path / "first",
        extra_args=LATE_PROVISIONALS_IGNORED))


async def call_up_on(nodes: Sequence[Node], caller: asyncio.Task[SippResult]) -> Node:
    """The node that took the call `caller` places (polled through the nodes' REST API)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        for node in nodes:
            if await node.calls():
                return node
        assert loop.time() < deadline and not caller.done(), "the call never came up"
        await asyncio.sleep(0.05)


async def until_state(kamailio: Dispatcher, node: Node, flag: str) -> None:
    """Wait until Kamailio's dispatcher holds `node` active (``A``) or inactive (``I``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (states := await kamailio.states()).get(node.target, "").startswith(flag):
        assert loop.time() < deadline, f"{node.node_id} is not {flag}: {states}"
        await asyncio.sleep(0.1)


async def options_status(node: Node) -> int:
    """The status of an OPTIONS (a health check) sent straight to the node."""
    raw = RawSip()
    try:
        await raw.send(raw.request("OPTIONS", f"sip:{node.target}"), node.sip_port)
        response = await raw.final()
        assert response is not None, "no answer to OPTIONS"
        return response.status
    finally:
        raw.close()


async def test_a_draining_node_sends_new_calls_to_the_other_and_finishes_its_own(
        tmp_path: Path, peer_env: object) -> None:
    # Probes every 60 s: nothing but the INVITE's 503 takes the draining node out.
    async with cluster(tmp_path, drain_seconds=60, ping_interval=60) as (kamailio, nodes):
        first = caller_waiting_for_bye(kamailio, tmp_path)
        draining = await call_up_on(nodes, first)
        other = next(node for node in nodes if node is not draining)
        assert await options_status(draining) == 200

        draining.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await options_status(draining) != 503:  # the health check says: not me
            assert loop.time() < deadline, "the draining node still answers OPTIONS 200"
            await asyncio.sleep(0.05)

        result = await call_through(kamailio, tmp_path, calls=6, seconds=1.0, name="during")
        assert result.ok, result.describe()  # every caller got a 200, none a 503
        placed = sipp_call_ids(result)
        assert len(placed) == 6 and placed <= set(other.sip_call_ids())  # all on the other
        assert not placed & set(draining.sip_call_ids())
        # Kamailio did try the draining node (round-robin), got its 503 and moved on.
        failed_over = [(node, status) for call_id, node, status in kamailio.failovers()
                       if call_id in placed]
        assert (draining.target, "503") in failed_over, kamailio.failovers()
        rows = await finished_recordings(other, len(placed))
        assert_holds_the_tone(other, rows)

        # The call in progress is still up on the draining node; a second SIGTERM ends the
        # drain: the node hangs up (BYE through Kamailio) and exits.
        assert draining.process.returncode is None and not first.done()
        assert len(await draining.calls()) == 1
        (first_call_id,) = draining.sip_call_ids()  # the one call the draining node took
        draining.signal(signal.SIGTERM)
        assert await draining.exited() == 0
        caller = await asyncio.wait_for(first, 30)
        assert caller.ok, caller.describe()  # it got the node's BYE and answered it
        assert [bye.source for bye in kamailio.requests("BYE")
                if bye.call_id == first_call_id] == [draining.target]

    store = SqliteRecordingStore(draining.directory / "data" / "recordings.db")
    try:
        rows_drained, _ = await store.list(PROJECT, page_size=10)
    finally:
        await store.close()
    assert [row.state for row in rows_drained] == ["finished"]
    assert_holds_the_tone(draining, [row.to_api() for row in rows_drained])


async def test_a_node_killed_outright_gets_no_new_calls(tmp_path: Path, peer_env: object) -> None:
    # Probes every 60 s: only the INVITE that times out takes the dead node out.
    async with cluster(tmp_path, ping_interval=60) as (kamailio, nodes):
        dead, alive = nodes
        dead.signal(signal.SIGKILL)
        assert await dead.exited() == -signal.SIGKILL

        result = await call_through(kamailio, tmp_path, calls=6, seconds=1.0)
        assert result.ok, result.describe()  # every call answered (by the live node)
        placed = sipp_call_ids(result)
        assert len(placed) == 6 and placed <= set(alive.sip_call_ids())
        rows = await finished_recordings(alive, len(placed))
        assert_holds_the_tone(alive, rows)
        routed = kamailio.routed()
        assert all(routed[call_id][-1] == alive.target for call_id in placed), routed
        # Round-robin tried the dead node (as often as calls were sent before the first of
        # them timed out): no answer (408), each INVITE moved on to the live node.
        failed_over = {(node, status) for call_id, node, status in kamailio.failovers()
                       if call_id in placed}
        assert failed_over == {(dead.target, "408")}, kamailio.failovers()


async def test_the_health_check_takes_out_a_node_that_answers_503_or_nothing(
        tmp_path: Path, peer_env: object) -> None:
    async with cluster(tmp_path, drain_seconds=60, ping_interval=1) as (kamailio, nodes):
        for node in nodes:
            await until_state(kamailio, node, "A")
        first = caller_waiting_for_bye(kamailio, tmp_path)
        draining = await call_up_on(nodes, first)
        dead = next(node for node in nodes if node is not draining)
        placed = len(kamailio.requests("INVITE"))

        dead.signal(signal.SIGKILL)
        draining.signal(signal.SIGTERM)  # it answers OPTIONS 503 from now on
        await until_state(kamailio, dead, "I")
        await until_state(kamailio, draining, "I")
        assert len(kamailio.requests("INVITE")) == placed  # the probes alone took them out
        assert draining.process.returncode is None and not first.done()

        draining.signal(signal.SIGTERM)
        assert await draining.exited() == 0
        caller = await asyncio.wait_for(first, 30)
        assert caller.ok, caller.describe()
