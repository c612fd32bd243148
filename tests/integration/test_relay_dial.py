"""RELAY two-party calls end to end: `calling.dial`, `calling.connect`, `calling.disconnect`.

Real peers: sipp callers into a RELAY context, sipp callees (answer, busy, ring), the official
`signalwire-sdk` (from `.venv-sw`) and our client as RELAY programs. Audio is checked by tone:
the caller streams CALLER_HZ, the callee CALLEE_HZ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from tests.integration.conftest import RunningPlatform, running_platform
from tests.integration.test_relay import (
    PROJECT,
    TOKEN,
    cert,
    fetch_recording,
    raw_connect,
    relay_client,
    relay_platform,
    stop_program,
    wait_for_session,
    ws_url,
    wss_host,
)
from tests.integration.test_relay import ROUTES as RELAY_ROUTES
from tests.peers import audio
from tests.peers.baresip import Baresip
from tests.peers.official_sdk import official_sdk_python
from tests.peers.poll import until
from tests.peers.ports import free_port_range
from tests.peers.sipp import (
    SippResult,
    SippUas,
    g711_stream,
    require_pass,
    run_sipp,
    start_sipp_uas,
)

from callbox.relay import Call, DialError, RelayError, RelayEvent
from callbox.server.config import Project, Trunk

pytestmark = pytest.mark.peers

CALLER_HZ = 1000
CALLEE_HZ = 700
FROM = "sip:relay@callbox.test"
STEREO = {"format": "wav", "direction": "both", "stereo": True,
          "initial_timeout": 0, "end_silence_timeout": 0}


def sip(uri: str, **params: Any) -> dict[str, Any]:
    return {"type": "sip", "params": {"to": uri, "from": FROM, **params}}


def tone_stream(tmp_path: Path, hz: int) -> str:
    return g711_stream(audio.tone(hz, 1.0, -12), tmp_path / f"tone{hz}.ulaw", loops=-1)


@contextlib.asynccontextmanager
async def callee(tmp_path: Path, scenario: str = "uas_answer") -> AsyncIterator[SippUas]:
    """A sipp UAS; an answering one streams CALLEE_HZ."""
    keys = {"stream": tone_stream(tmp_path, CALLEE_HZ)} if scenario == "uas_answer" else {}
    async with start_sipp_uas(scenario, media_port=free_port_range(4).start, keys=keys) as uas:
        yield uas


def caller(running: RunningPlatform, tmp_path: Path, seconds: float) -> Awaitable[SippResult]:
    """A sipp caller into the `default` context streaming CALLER_HZ, hanging up after
    `seconds`."""
    block = free_port_range(8)
    return asyncio.ensure_future(run_sipp(
        "uac_stream_bye", running.target, service="voicemail", local_port=block.start,
        media_port=block.start + 4, keys={"stream": tone_stream(tmp_path, CALLER_HZ)},
        extra_args=["-d", str(int(seconds * 1000))], timeout=40))


def tail(samples: np.ndarray, seconds: float, margin: float = 0.3) -> np.ndarray:
    end = len(samples) - int(margin * 8000)
    return samples[end - int(seconds * 8000):end]


async def run_program(running: RunningPlatform, path: Path, python: str, *args: str
                      ) -> asyncio.subprocess.Process:
    env = dict(os.environ, SIGNALWIRE_RELAY_CA_FILE=str(cert(running)))
    return await asyncio.create_subprocess_exec(
        python, "-u", str(path), *args, env=env, cwd=path.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def program_lines(out: str) -> list[list[Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("[")]


# -- the official SDK: answer, record stereo, connect ----------------------------------------

CONNECT_PROGRAM = '''\
import json, sys
from signalwire.relay import RelayClient

client = RelayClient(project=PROJECT, token=TOKEN, host=HOST, contexts=["default"])

def log(*items):
    print(json.dumps(items), flush=True)

@client.on_call
async def handle(call):
    call.on("calling.call.connect", lambda e: log("connect", e.params.get("connect_state"),
                                                  e.params.get("peer", {}).get("call_id")))
    call.on("calling.call.record", lambda e: log("record", e.params.get("state")))
    call.on("calling.call.state", lambda e: log("state", e.params.get("call_state")))
    await call.answer()
    await call.record(audio=json.loads(sys.argv[2]))
    result = await call.connect([[{"type": "sip", "params": {"to": sys.argv[1]}}]],
                                ringback=[{"type": "ringtone", "params": {"name": "us"}}])
    log("connect-result", result.get("code"))

client.run()
'''


def fill(code: str, running: RunningPlatform) -> str:
    return (code.replace("PROJECT", repr(PROJECT)).replace("TOKEN", repr(TOKEN))
            .replace("HOST", repr(wss_host(running))))


async def test_official_sdk_connects_a_caller_recorded_in_stereo(tmp_path: Path) -> None:
    program = tmp_path / "connect.py"
    async with callee(tmp_path) as uas, relay_platform(tmp_path) as running:
        program.write_text(fill(CONNECT_PROGRAM, running))
        proc = await run_program(running, program, str(official_sdk_python()), uas.uri(),
                                 json.dumps(STEREO))
        try:
            await wait_for_session(running, proc)
            placing = caller(running, tmp_path, seconds=6.0)
            require_pass(await placing)
            seen = await running.wait_call_ended(0, timeout=10)
            callee_result = await uas.wait(timeout=20)
            await until(lambda: any(r.is_done for r in seen.call.recordings), 10,
                        "the recording's end")
        finally:
            _, out, err = await stop_program(proc)
    assert callee_result.ok, callee_result.describe()  # the caller's BYE ended the callee
    lines = program_lines(out)
    connects = [line[1] for line in lines if line[0] == "connect"]
    assert connects[:2] == ["connecting", "connected"], (lines, err[-3000:])
    peer_ids = {line[2] for line in lines if line[0] == "connect" and line[1] == "connected"}
    assert all(peer_ids) and len(peer_ids) == 1
    assert ["connect-result", "200"] in lines
    order = [tuple(line[:2]) for line in lines]
    assert order.index(("record", "finished")) < order.index(("state", "ended"))
    (recording,) = seen.call.recordings
    samples, rate = audio.decode_audio(recording.path)  # type: ignore[attr-defined]
    assert rate == 8000 and samples.ndim == 2 and samples.shape[1] == 2
    left, right = tail(samples[:, 0], 2.0), tail(samples[:, 1], 2.0)
    assert audio.tone_level_dbfs(left, CALLER_HZ) > -16
    assert audio.tone_level_dbfs(right, CALLEE_HZ) > -16
    assert audio.tone_level_dbfs(left, CALLEE_HZ) < audio.tone_level_dbfs(left, CALLER_HZ) - 40
    assert audio.tone_level_dbfs(right, CALLER_HZ) < audio.tone_level_dbfs(right, CALLEE_HZ) - 40


# -- client.dial with the official client and ours -------------------------------------------

DIAL_PROGRAM = '''\
import asyncio, json, sys
from signalwire.relay import RelayClient

async def main():
    async with RelayClient(project=PROJECT, token=TOKEN, host=HOST, contexts=[]) as client:
        call = await client.dial([[{"type": "sip", "params": {"to": sys.argv[1]}}]])
        print(json.dumps(["answered", call.call_id, call.direction]), flush=True)
        action = await call.record(audio={"format": "wav", "initial_timeout": 0,
                                          "end_silence_timeout": 0})
        await asyncio.sleep(2)
        await action.stop()
        event = await action.wait()
        record = event.params.get("record", {})
        print(json.dumps(["recorded", event.params.get("state"), record.get("url")]),
              flush=True)
        await call.hangup()

asyncio.run(main())
'''


async def dial_and_record(running: RunningPlatform, tmp_path: Path, kind: str, uri: str
                          ) -> tuple[list[Any], Path]:
    """Run DIAL_PROGRAM with our client or the official one: it dials `uri`, records the
    answered call for 2 s and hangs up. Its output lines and the fetched recording."""
    code = DIAL_PROGRAM
    python = str(official_sdk_python())
    if kind == "callbox":
        code = code.replace("from signalwire.relay", "from callbox.relay")
        python = sys.executable
    program = tmp_path / "dial.py"
    program.write_text(fill(code, running))
    proc = await run_program(running, program, python, uri)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        await stop_program(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = program_lines(out.decode())
    (recorded,) = [line for line in lines if line[0] == "recorded"]
    assert recorded[1] == "finished"
    return lines, await fetch_recording(running, recorded[2], tmp_path / "callee.wav")


@pytest.mark.parametrize("kind", ["callbox", "signalwire-sdk"])
async def test_client_dial_returns_the_answered_call_and_records_the_callee(
        tmp_path: Path, kind: str) -> None:
    async with callee(tmp_path) as uas, relay_platform(tmp_path) as running:
        lines, path = await dial_and_record(running, tmp_path, kind, uas.uri())
        (answered,) = [line for line in lines if line[0] == "answered"]
        assert answered[1] and answered[2] == "outbound"
        result = await uas.wait(timeout=20)
    assert result.ok, result.describe()  # the program's hangup reached the callee as a BYE
    samples, rate = audio.decode_audio(path)
    assert rate == 8000 and len(samples) > 8000
    assert audio.tone_level_dbfs(samples[800:-800], CALLEE_HZ) > -16


@pytest.mark.parametrize("kind", ["callbox", "signalwire-sdk"])
async def test_client_dial_reaches_a_softphone_that_answers_by_itself(
        tmp_path: Path, kind: str, peer_env: Any) -> None:
    async with Baresip(source=audio.tone(CALLEE_HZ, 5.0, -12), auto_answer=True) as phone, \
            relay_platform(tmp_path) as running:
        _, path = await dial_and_record(running, tmp_path, kind, phone.uri)
        await phone.wait_call_closed(timeout=10)  # the program's hangup reached baresip
    samples, _ = audio.decode_audio(path)
    assert audio.tone_level_dbfs(samples[800:-800], CALLEE_HZ) > -16


# -- dial plans with our client --------------------------------------------------------------


async def raw_dial_frames(running: RunningPlatform, params: dict[str, Any]
                         ) -> list[dict[str, Any]]:
    """`calling.dial` over a bare WebSocket: every frame after it (events acknowledged) up to
    the dial's final `calling.call.dial` event."""
    frames: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(running)) as ws:
        await raw_connect(ws)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": "d", "method": "calling.dial",
                                      "params": params}))
        while True:
            frame = await ws.receive_json(timeout=20)
            frames.append(frame)
            if frame.get("method") != "signalwire.event":
                continue
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": frame["id"], "result": {}}))
            event = frame["params"]
            if event["event_type"] == "calling.call.dial" and \
                    event["params"]["dial_state"] != "dialing":
                return frames


async def no_calls(call: Call) -> None:
    raise AssertionError(f"no call should be offered, got {call}")


async def test_serial_busy_then_parallel_ring_where_one_answers(tmp_path: Path) -> None:
    async with callee(tmp_path, "uas_busy") as busy, callee(tmp_path, "uas_ring") as ring1, \
            callee(tmp_path, "uas_ring") as ring2, callee(tmp_path) as answering, \
            relay_platform(tmp_path) as running, relay_client(running, no_calls) as client:
        plan = [[sip(busy.uri())], [sip(ring1.uri()), sip(answering.uri()), sip(ring2.uri())]]
        call = await client.dial(plan, tag="serial-parallel")
        assert call.direction == "outbound" and call.state == "answered"
        assert call.device["params"]["to"] == answering.uri()
        require_pass(await ring1.wait(timeout=20))  # each loser got CANCEL and answered 487
        require_pass(await ring2.wait(timeout=20))
        require_pass(await busy.wait(timeout=20))
        await call.hangup()
        await call.wait_for_ended(10)
        require_pass(await answering.wait(timeout=20))


async def test_dial_events_legs_and_failures(tmp_path: Path) -> None:
    async with callee(tmp_path, "uas_busy") as busy, callee(tmp_path, "uas_ring") as ring, \
            relay_platform(tmp_path) as running, relay_client(running, no_calls) as client:
        frames = await raw_dial_frames(running, {"tag": "t1", "devices": [[sip(busy.uri())]]})
        assert frames[0] == {"jsonrpc": "2.0", "id": "d",
                             "result": {"code": "200", "message": "Dialing"}}
        events = [(f["params"]["event_type"], f["params"]["params"]) for f in frames[1:]]
        assert [(kind, p.get("dial_state") or p.get("call_state")) for kind, p in events] == [
            ("calling.call.dial", "dialing"), ("calling.call.state", "created"),
            ("calling.call.state", "ended"), ("calling.call.dial", "failed")]
        assert all(p["tag"] == "t1" for _, p in events)
        assert events[2][1]["end_reason"] == "busy" and events[2][1]["direction"] == "outbound"
        assert events[2][1]["device"] == sip(busy.uri())
        assert (events[3][1]["reason"], events[3][1]["sip_code"]) == ("busy", 486)
        require_pass(await busy.wait(timeout=20))

        with pytest.raises(DialError) as unanswered:  # rings out: CANCEL
            await client.dial([[sip(ring.uri(), timeout=1)]], dial_timeout=20)
        assert unanswered.value.reason == "noAnswer"
        require_pass(await ring.wait(timeout=20))  # it got CANCEL

        with pytest.raises(DialError) as unknown:  # the platform's own 404
            await client.dial([[sip(running.uri("nobody-here"))]], dial_timeout=20)
        assert (unknown.value.reason, unknown.value.sip_code) == ("error", 404)


# -- connect / disconnect with our client ------------------------------------------------------


async def test_disconnect_parts_the_calls_and_both_go_on(tmp_path: Path) -> None:
    connected: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()
    disconnected: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()
    results: dict[str, Any] = {}

    async def handle(call: Call) -> None:
        def on_connect(event: RelayEvent) -> None:
            target = {"connected": connected, "disconnected": disconnected}.get(
                event.connect_state)
            if target is not None and not target.done():
                target.set_result(event)

        call.on("calling.call.connect", on_connect)
        await call.answer()
        await call.connect([[sip(uas.uri())]])
        await asyncio.wait_for(asyncio.shield(connected), 10)
        with pytest.raises(RelayError) as twice:
            await call.connect([[sip(uas.uri())]])
        results["twice"] = twice.value
        results["disconnect"] = await call.disconnect()

    async with callee(tmp_path) as uas, relay_platform(tmp_path) as running, \
            relay_client(running, handle) as client:
        placing = caller(running, tmp_path, seconds=8.0)
        peer_id = (await asyncio.wait_for(connected, 20)).peer["call_id"]
        await asyncio.wait_for(disconnected, 10)
        assert results["disconnect"]["code"] == "200"
        assert results["twice"].code == 409
        a = running.observed[0].call
        b = running.platform.services.calls[peer_id]
        assert a.is_active and b.is_active and a.peer is None and b.peer is None
        heard: dict[str, list[np.ndarray]] = {"a": [], "b": []}
        stops = [a.add_tap(lambda speak, listen: heard["a"].append(listen.copy())),
                 b.add_tap(lambda speak, listen: heard["b"].append(listen.copy()))]
        await until(lambda: min(len(heard["a"]), len(heard["b"])) >= 50, 10,
                    "a second of media on each call after the split")
        for stop in stops:
            stop()
        with pytest.raises(RelayError) as not_connected:
            await client.execute("calling.disconnect", {"call_id": a.id, "node_id": ""})
        assert not_connected.value.code == 409
        await b.hangup()
        require_pass(await placing)
        require_pass(await uas.wait(timeout=20))
    heard_a, heard_b = np.concatenate(heard["a"]), np.concatenate(heard["b"])
    assert audio.tone_level_dbfs(heard_a, CALLEE_HZ) < -50  # no callee for the caller
    assert audio.tone_level_dbfs(heard_b, CALLER_HZ) < -50  # nor the caller for the callee


async def test_disconnect_while_the_callee_rings_gives_the_attempt_up(tmp_path: Path) -> None:
    """calling.disconnect before anybody answered: the ringing callee gets CANCEL, the connect
    event says failed (reason cancel), and the call goes on for the program."""
    states: list[tuple[str, str]] = []
    ringing = asyncio.Event()
    results: dict[str, Any] = {}

    async def handle(call: Call) -> None:
        call.on("calling.call.connect", lambda e: states.append((e.connect_state, e.reason)))
        await call.answer()
        await call.connect([[sip(ring.uri())]])
        await ringing.wait()
        results["disconnect"] = await call.disconnect()  # after the attempt's end
        results["states"] = list(states)
        action = await call.play_tts("still here")
        results["played"] = (await action.wait(10)).state
        await call.hangup()

    async with callee(tmp_path, "uas_ring") as ring, relay_platform(tmp_path) as running, \
            relay_client(running, handle):
        placing = caller(running, tmp_path, seconds=20.0)
        await until(lambda: any(not message.received and message.text.startswith("SIP/2.0 180")
                                for message in ring.messages_so_far()), 20, "the callee rings")
        ringing.set()
        require_pass(await ring.wait(timeout=20))  # it got CANCEL and answered 487
        await running.wait_call_ended(0, timeout=20)
        await placing  # sipp ends unhappy: the BYE came from us, not from its script
    assert results == {"disconnect": {"code": "200", "message": "Disconnected"},
                       "states": [("connecting", ""), ("failed", "cancel")],
                       "played": "finished"}


async def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    offered: asyncio.Future[Call] = asyncio.get_running_loop().create_future()

    async def handle(call: Call) -> None:
        offered.set_result(call)

    async with relay_platform(tmp_path) as running, relay_client(running, handle) as client:
        with pytest.raises(RelayError) as no_to:
            await client.dial([[{"type": "sip", "params": {"from": FROM}}]])
        assert no_to.value.code == 400
        assert "devices[0][0].params.to is required" in no_to.value.message
        with pytest.raises(RelayError) as not_a_list:
            await client.dial([{"type": "sip"}])  # type: ignore[list-item]
        assert not_a_list.value.code == 400 and "devices[0]" in not_a_list.value.message
        with pytest.raises(RelayError) as no_trunk:
            await client.dial([[{"type": "phone", "params": {"to_number": "+15550001",
                                                            "from_number": "+15550002"}}]])
        assert no_trunk.value.code == 400 and "no trunk is configured" in no_trunk.value.message

        placing = caller(running, tmp_path, seconds=0.5)
        call = await asyncio.wait_for(offered, 10)
        await call.answer()
        require_pass(await placing)
        await call.wait_for_ended(10)
        with pytest.raises(RelayError) as gone:
            await call.connect([[sip("sip:nobody@127.0.0.1:9")]])
        assert gone.value.code == 410


async def test_connect_failure_is_an_event_and_the_call_goes_on(tmp_path: Path) -> None:
    outcome: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()
    checked = asyncio.Event()
    played: list[str] = []

    async def handle(call: Call) -> None:
        await call.answer()
        await call.connect([[sip(busy.uri())]],
                           ringback=[{"type": "silence", "params": {"duration": 1}}])
        outcome.set_result(await call.wait_for(
            "calling.call.connect", lambda e: e.connect_state in ("connected", "failed"), 20))
        await checked.wait()
        action = await call.play_tts("still here")
        played.append((await action.wait(10)).state)
        await call.hangup()

    async with callee(tmp_path, "uas_busy") as busy, relay_platform(tmp_path) as running, \
            relay_client(running, handle):
        placing = caller(running, tmp_path, seconds=15.0)
        event = await asyncio.wait_for(outcome, 30)
        a = running.observed[0].call
        assert a.is_active and a.peer is None  # the caller goes on for the program
        checked.set()
        await running.wait_call_ended(0, timeout=20)
        await placing  # sipp ends unhappy: the BYE came from us, not from its script
    assert played == ["finished"]
    assert event.connect_state == "failed"
    assert (event.reason, event.params["sip_code"]) == ("busy", 486)


async def test_the_callee_hanging_up_disconnects_and_leaves_the_call_to_the_program(
        tmp_path: Path) -> None:
    states: list[str] = []
    disconnected = asyncio.Event()

    async def handle(call: Call) -> None:
        def on_connect(event: RelayEvent) -> None:
            states.append(event.connect_state)
            if event.connect_state == "disconnected":
                disconnected.set()

        call.on("calling.call.connect", on_connect)
        await call.answer()
        await call.connect([[sip(uas.uri())]], tag="to-callee")

    async with callee(tmp_path) as uas, relay_platform(tmp_path) as running, \
            relay_client(running, handle) as client:
        placing = caller(running, tmp_path, seconds=15.0)
        await until(lambda: "connected" in states, 20, "connected")
        a = running.observed[0].call
        assert a.peer is not None
        b = a.peer
        await b.hangup()  # the callee's side ends (as its BYE would)
        await asyncio.wait_for(disconnected.wait(), 10)
        assert a.is_active and a.peer is None
        require_pass(await uas.wait(timeout=20))
        await client.execute("calling.end", {"call_id": a.id, "node_id": "", "reason": "hangup"})
        await running.wait_call_ended(0, timeout=10)
        await placing
    assert states == ["connecting", "connected", "disconnected"]


async def test_a_phone_device_is_dialled_through_the_trunk(tmp_path: Path) -> None:
    phone = {"type": "phone", "params": {"to_number": "+15550001", "from_number": "+15550002"}}
    async with callee(tmp_path) as carrier, \
            running_platform(tmp_path, RELAY_ROUTES, http__plain_listen="127.0.0.1:0",
                             trunks=[Trunk(name="carrier", proxy=carrier.target)]) as running:
        running.platform.config.projects[:] = [Project(PROJECT, TOKEN)]
        async with relay_client(running, no_calls) as client:
            call = await client.dial([[phone]])
            assert call.device == phone and call.direction == "outbound"
            await call.hangup()
        require_pass(await carrier.wait(timeout=20))  # the trunk's side got INVITE, then BYE
