"""The SWML `connect` verb with real peers: a sipp caller on a route whose SWML connects it to
sipp callees, each streaming its own tone.

- `record_call` (stereo) then `connect`: the caller on the left, the callee on the right, each
  without the other; the callee hangs up first and the script goes on with its next verb.
- serial [busy, answer] and parallel [ring, answer], with `call_state_url` events per leg.
- a failing connect sets `connect_failed_reason` and the script goes on.
- bad parameters: the SWML error path (logged, the call hung up).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.integration.conftest import RunningPlatform, running_platform, swml
from tests.peers import audio
from tests.peers.poll import until
from tests.peers.ports import free_port_range
from tests.peers.sipp import SippResult, g711_stream, require_pass, run_sipp, start_sipp_uas

from callbox.server.call import Call
from callbox.server.config import Route

pytestmark = pytest.mark.peers

CALLER_HZ = 1000
CALLEE_HZ = 700
STEREO = {"stereo": True, "format": "wav", "direction": "both", "control_id": "bridged"}


def media_port() -> int:
    return free_port_range(4).start


def tone_stream(tmp_path: Path, hz: int, name: str) -> str:
    return g711_stream(audio.tone(hz, 1.0, -12), tmp_path / f"{name}.ulaw", loops=-1)


def caller(running: RunningPlatform, tmp_path: Path, route: str,
           seconds: float) -> Awaitable[SippResult]:
    """A sipp caller on `route` streaming CALLER_HZ, hanging up after `seconds`."""
    block = free_port_range(8)
    return asyncio.ensure_future(run_sipp(
        "uac_stream_bye", running.target, service=route, local_port=block.start,
        media_port=block.start + 4, keys={"stream": tone_stream(tmp_path, CALLER_HZ, "caller")},
        extra_args=["-d", str(int(seconds * 1000))], timeout=60))


async def the_call(running: RunningPlatform, index: int = 0) -> Call:
    await until(lambda: len(running.observed) > index, 10, "the caller's call")
    return running.observed[index].call


async def callee_of(a: Call) -> Call:
    await until(lambda: a.peer is not None, 20, "the bridge")
    assert a.peer is not None
    return a.peer


def control_ids(call: Call) -> list[str]:
    return [r.control_id for r in call.recordings]


@asynccontextmanager
async def state_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on loopback collecting call_state_url POSTs."""
    received: list[dict[str, Any]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/state", collect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/state", received
    finally:
        await runner.cleanup()


def states_of(received: list[dict[str, Any]], to: str) -> list[tuple[str, str | None]]:
    return [(e["params"]["call_state"], e["params"].get("end_reason")) for e in received
            if e["params"]["device"]["params"]["to_number"] == to]


async def test_recorded_connect_caller_left_callee_right_then_the_script_goes_on(
        tmp_path: Path) -> None:
    async with start_sipp_uas("uas_answer_bye", media_port=media_port(),
                              keys={"stream": tone_stream(tmp_path, CALLEE_HZ, "callee")},
                              extra_args=["-d", "3000"]) as uas:
        routes = [Route("bridge", swml=swml(
            {"record_call": STEREO},
            {"connect": {"to": uas.uri(), "timeout": 20}},
            # runs only after the callee hung up, and shows connect_result
            {"record_call": {"control_id": "after-${connect_result}"}},
            {"sleep": 60_000}))]
        async with running_platform(tmp_path, routes) as running:
            placing = caller(running, tmp_path, "bridge", seconds=9.0)
            a = await the_call(running)
            b = await callee_of(a)
            assert b.direction == "outbound" and b.to_uri == uas.uri()
            await until(lambda: "after-connected" in control_ids(a), 15, "the next verb")
            assert not b.is_active and a.is_active and a.peer is None
            callee = await uas.wait(timeout=20)
            assert callee.ok, callee.describe()  # its BYE was answered
            require_pass(await placing)
            recording = a.recordings[0]
            await asyncio.wait_for(asyncio.shield(recording.done), 15)
    assert control_ids(a) == ["bridged", "after-connected"]
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and samples.ndim == 2 and samples.shape[1] == 2
    assert b.answered_at is not None
    start = int((b.answered_at - recording.start_time + 0.5) * 8000)
    left, right = samples[start:start + 12000, 0], samples[start:start + 12000, 1]
    assert audio.tone_level_dbfs(left, CALLER_HZ) > -16
    assert audio.tone_level_dbfs(right, CALLEE_HZ) > -16
    # each party alone on its channel: the other's tone is 40 dB down or more
    assert audio.tone_level_dbfs(left, CALLEE_HZ) < audio.tone_level_dbfs(left, CALLER_HZ) - 40
    assert audio.tone_level_dbfs(right, CALLER_HZ) < audio.tone_level_dbfs(right, CALLEE_HZ) - 40


async def test_serial_busy_then_answer_and_parallel_with_call_state_events(
        tmp_path: Path) -> None:
    events = ["created", "ringing", "answered", "ended"]
    async with start_sipp_uas("uas_busy", media_port=media_port()) as busy, \
            start_sipp_uas("uas_answer", media_port=media_port()) as answering, \
            start_sipp_uas("uas_ring", media_port=media_port()) as ringing, \
            start_sipp_uas("uas_answer", media_port=media_port()) as second, \
            state_receiver() as (url, received):
        routes = [
            Route("serial", swml=swml({"connect": {
                "serial": [{"to": busy.uri()}, {"to": answering.uri()}],
                "call_state_url": url, "call_state_events": events}})),
            Route("parallel", swml=swml({"connect": {
                "parallel": [{"to": ringing.uri()}, {"to": second.uri()}],
                "call_state_url": url}})),
        ]
        async with running_platform(tmp_path, routes) as running:
            serial = caller(running, tmp_path, "serial", seconds=3.0)
            a = await the_call(running, 0)
            assert (await callee_of(a)).to_uri == answering.uri()
            require_pass(await serial)
            for uas in (busy, answering):
                result = await uas.wait(timeout=20)
                assert result.ok, result.describe()  # the busy one got its ACK, the other BYE

            parallel = caller(running, tmp_path, "parallel", seconds=3.0)
            a2 = await the_call(running, 1)
            assert (await callee_of(a2)).to_uri == second.uri()
            for uas in (ringing, second):
                result = await uas.wait(timeout=20)
                assert result.ok, result.describe()  # the ringing one got CANCEL
            require_pass(await parallel)
            await until(lambda: len(received) >= 7, 15, "the call state events")
    assert states_of(received, busy.uri()) == [("created", None), ("ended", "busy")]
    assert states_of(received, answering.uri()) == [
        ("created", None), ("answered", None), ("ended", "hangup")]
    # the default events: ended only
    assert states_of(received, ringing.uri()) == [("ended", "cancel")]
    assert states_of(received, second.uri()) == [("ended", "hangup")]
    answered = next(e for e in received if e["params"]["call_state"] == "answered")
    assert answered["event_type"] == "calling.call.state"
    assert answered["params"]["parent"]["call_id"] == a.id
    assert answered["params"]["peer"]["call_id"] == a.id
    assert answered["params"]["direction"] == "outbound"


async def test_answer_on_bridge_answers_the_caller_when_the_callee_answers(
        tmp_path: Path) -> None:
    async with start_sipp_uas("uas_early_media", media_port=media_port(),
                              extra_args=["-d", "1500"]) as uas:
        routes = [Route("late", swml=swml(
            {"connect": {"to": uas.uri(), "answer_on_bridge": True}}))]
        async with running_platform(tmp_path, routes) as running:
            placing = caller(running, tmp_path, "late", seconds=3.0)
            a = await the_call(running)
            b = await callee_of(a)
            require_pass(await placing)
            result = await uas.wait(timeout=20)
            assert result.ok, result.describe()
    # the caller was answered only once the callee had answered (the platform's timestamps)
    assert a.answered_at is not None and b.answered_at is not None
    assert a.answered_at >= b.answered_at


async def test_a_failing_connect_sets_the_reason_and_the_script_goes_on(tmp_path: Path) -> None:
    async with start_sipp_uas("uas_busy", media_port=media_port()) as busy:
        routes = [Route("fails", swml=swml(
            {"connect": {"to": busy.uri()}},
            {"record_call": {"control_id": "${connect_result}-${connect_failed_reason}"}},
            {"connect": {"to": "+15550001"}},  # no trunk is configured for numbers
            {"record_call": {"control_id": "number-${connect_failed_reason}"}},
            {"sleep": 60_000}))]
        async with running_platform(tmp_path, routes) as running:
            placing = caller(running, tmp_path, "fails", seconds=4.0)
            a = await the_call(running)
            await until(lambda: len(a.recordings) == 2, 15, "both record_call verbs")
            assert a.is_active
            require_pass(await placing)
            result = await busy.wait(timeout=20)
            assert result.ok, result.describe()
    assert control_ids(a) == ["failed-busy", "number-error"]


@pytest.mark.parametrize(("connect", "message"), [
    ({}, "connect needs exactly one of to, serial, parallel, serial_parallel"),
    ({"serial": [{"to": "sip:x@127.0.0.1"}, {"from": "+1"}]}, "connect.serial[1].to is missing"),
])
async def test_bad_parameters_take_the_swml_error_path(tmp_path: Path, caplog, connect,
                                                       message) -> None:
    caplog.set_level(logging.WARNING, logger="callbox")
    routes = [Route("bad", swml=swml({"answer": {}}, {"connect": connect},
                                     {"record_call": {"control_id": "not-reached"}}))]
    async with running_platform(tmp_path, routes) as running:
        placing = run_sipp("uac_hangup_by_server", running.target, service="bad",
                           local_port=free_port_range(8).start, media_port=media_port(),
                           timeout=30)
        result = await placing
        seen = await running.wait_call_ended(0)
    assert result.ok, result.describe()  # the platform hung up (BYE)
    assert seen.call.end_reason == "error" and control_ids(seen.call) == []
    assert f"SWML error: {message}" in caplog.text
