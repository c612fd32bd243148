"""Bridging on the platform (`callbox.server.bridge.connect`): a sipp caller connected to a sipp
callee, each streaming its own tone; the inbound leg's stereo recording holds the caller left and
the callee right, each without the other, and the console still says so after a restart;
hangups end the other leg; serial and parallel dials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import numpy as np
import pytest
from tests.integration.conftest import RunningPlatform, console_json, running_platform
from tests.peers import audio
from tests.peers.kamailio import start_kamailio
from tests.peers.poll import until, until_async
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.sipp import SippResult, g711_stream, require_pass, run_sipp, start_sipp_uas

from callbox.server.bridge import BridgeEnd, connect
from callbox.server.call import Call
from callbox.server.config import Project, Trunk
from callbox.server.dialing import Device, DialFailed, DialLeg
from callbox.server.outbound import OutboundError
from callbox.server.recording.engine import Recording
from callbox.server.store.recordings import Parties
from callbox.wire.recording import RecordParams

pytestmark = pytest.mark.peers

CALLER_HZ = 1000
CALLEE_HZ = 700
STEREO = {"format": "wav", "direction": "both", "stereo": True,
          "initial_timeout": 0.0, "end_silence_timeout": 0.0}


def media_port() -> int:
    return free_port_range(4).start


def caller(running: RunningPlatform, tmp_path: Path, seconds: float) -> Awaitable[SippResult]:
    """A sipp caller on the `listen` route streaming CALLER_HZ, hanging up after `seconds`."""
    stream = g711_stream(audio.tone(CALLER_HZ, 1.0, -12), tmp_path / "caller.ulaw", loops=-1)
    block = free_port_range(8)
    return asyncio.ensure_future(run_sipp(
        "uac_stream_bye", running.target, service="listen", local_port=block.start,
        media_port=block.start + 4, keys={"stream": stream},
        extra_args=["-d", str(int(seconds * 1000))], timeout=40))


async def inbound_call(running: RunningPlatform) -> Call:
    await until(lambda: bool(running.observed) and running.observed[0].call.state == "answered",
                10, "the caller answered by the platform")
    return running.observed[0].call


async def record(running: RunningPlatform, call: Call, project_id: str = "") -> Recording:
    assert running.platform.recorder is not None
    recording = await running.platform.recorder.start_recording(
        call, RecordParams.parse(STEREO, "relay"), project_id=project_id)
    assert isinstance(recording, Recording)
    return recording


def tail(samples: np.ndarray, seconds: float, margin: float = 0.3) -> np.ndarray:
    end = len(samples) - int(margin * 8000)
    return samples[end - int(seconds * 8000):end]


async def test_caller_left_callee_right_and_the_callers_bye_ends_the_callee(
        tmp_path: Path) -> None:
    stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, -12), tmp_path / "callee.ulaw", loops=-1)
    async with start_sipp_uas("uas_answer", media_port=media_port(),
                              keys={"stream": stream}) as uas, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=4.0)
        a = await inbound_call(running)
        recording = await record(running, a)
        bridge = await connect(a, running.platform.outbound, [[Device(
            uas.uri(), headers=(("X-Account-Id", "42"),))]])
        b = bridge.b
        assert (a.peer, b.peer) == (b, a) and b.direction == "outbound"
        require_pass(await placing)
        assert await asyncio.wait_for(asyncio.shield(bridge.done), 10) is BridgeEnd.CALLER_HUNG_UP
        await asyncio.wait_for(b.wait_ended(), 10)
        callee = await uas.wait(timeout=20)
        assert callee.ok, callee.describe()  # it got our BYE
        invite = callee.messages.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
        assert "X-Account-Id: 42" in invite
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    assert a.peer is None and b.peer is None
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and samples.ndim == 2 and samples.shape[1] == 2
    left, right = tail(samples[:, 0], 2.0), tail(samples[:, 1], 2.0)
    assert audio.tone_level_dbfs(left, CALLER_HZ) > -16
    assert audio.tone_level_dbfs(right, CALLEE_HZ) > -16
    # Each party alone on its channel: the other's tone is 40 dB down or more.
    assert audio.tone_level_dbfs(left, CALLEE_HZ) < audio.tone_level_dbfs(left, CALLER_HZ) - 40
    assert audio.tone_level_dbfs(right, CALLER_HZ) < audio.tone_level_dbfs(right, CALLEE_HZ) - 40


async def test_the_callee_hears_the_caller_frame_for_frame(tmp_path: Path) -> None:
    """What the callee's leg sends is what the caller's leg received, in the same tick."""
    async with start_sipp_uas("uas_answer", media_port=media_port()) as uas, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=3.0)
        a = await inbound_call(running)
        bridge = await connect(a, running.platform.outbound, [[Device(uas.uri())]])
        said_by_a: dict[int, np.ndarray] = {}  # by the media clock's tick
        heard_by_b: dict[int, np.ndarray] = {}
        a.add_tap(lambda speak, listen: said_by_a.setdefault(a.media.frame_tick, speak.copy()))
        bridge.b.add_tap(
            lambda speak, listen: heard_by_b.setdefault(bridge.b.media.frame_tick, listen.copy()))
        await until(lambda: len(heard_by_b) >= 50, 10, "a second of bridged media")
        await placing
        await asyncio.wait_for(bridge.b.wait_ended(), 10)
    ticks = sorted(set(said_by_a) & set(heard_by_b))
    assert len(ticks) >= 50
    said = np.concatenate([said_by_a[tick] for tick in ticks])
    heard = np.concatenate([heard_by_b[tick] for tick in ticks])
    assert audio.tone_level_dbfs(said, CALLER_HZ) > -16
    assert np.array_equal(said, heard)


async def test_the_callees_bye_ends_the_caller_unless_asked_to_go_on(tmp_path: Path) -> None:
    async with start_sipp_uas("uas_answer", media_port=media_port()) as uas, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=8.0)
        a = await inbound_call(running)
        recording = await record(running, a)
        bridge = await connect(a, running.platform.outbound, [[Device(uas.uri())]],
                               end_caller_with_callee=False)
        await bridge.b.hangup()  # the callee's side ends (as its BYE would)
        assert await asyncio.wait_for(asyncio.shield(bridge.done), 10) is BridgeEnd.CALLEE_HUNG_UP
        assert a.is_active and a.peer is None
        media = await a.media.snapshot()
        assert media.ticking  # ticking on its own again
        ticks = media.ticks

        async def ticked_a_second() -> bool:
            return (await a.media.snapshot()).ticks >= ticks + 50

        await until_async(ticked_a_second, 10, "a second after the callee left")
        assert recording.state == "recording"  # the caller's recording goes on
        await a.hangup()
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        samples, _ = audio.decode_audio(recording.path)
        # The last second, after the callee left, still has the caller (left channel).
        assert audio.tone_level_dbfs(tail(samples[:, 0], 0.8, margin=0.1), CALLER_HZ) > -16
        await placing
        await uas.wait(timeout=20)


async def test_who_each_channel_holds_is_stored_and_shown_after_a_restart(
        tmp_path: Path) -> None:
    """The recording starts before the bridge and the callee hangs up first: the legend
    still names the callee on the right (noted while bridged), live, in the stored row, and
    in the console of a platform restarted on the same data, whose memory is empty."""
    async with start_sipp_uas("uas_answer", media_port=media_port()) as uas:
        async with running_platform(tmp_path) as running:
            running.platform.config.projects.append(Project("p1", "t1"))
            placing = caller(running, tmp_path, seconds=10.0)
            a = await inbound_call(running)
            recording = await record(running, a, project_id="p1")
            bridge = await connect(a, running.platform.outbound, [[Device(uas.uri())]],
                                   end_caller_with_callee=False)
            b = bridge.b
            await b.hangup()
            assert await asyncio.wait_for(asyncio.shield(bridge.done), 10) \
                is BridgeEnd.CALLEE_HUNG_UP
            assert a.peer is None and recording.state == "recording"
            parties = Parties("the caller (sipp)", f"the callee ({b.to_user})", b.id)
            legend = [f"Left: {parties.speaker}", f"Right: {parties.hearer}"]
            live = await console_json(running.platform, f"recordings/{recording.id}")
            assert (live["channel_legend"], live["peer_call_id"]) == (legend, b.id)
            await a.hangup()
            await asyncio.wait_for(asyncio.shield(recording.done), 10)
            await placing
            await uas.wait(timeout=20)
            assert running.platform.recordings is not None
            stored = await running.platform.recordings.get(recording.id)
            assert stored is not None and stored.parties == parties
        async with running_platform(tmp_path) as again:  # the same data dir
            again.platform.config.projects.append(Project("p1", "t1"))
            assert again.platform.recorder is not None and not again.platform.recorder.active
            shown = await console_json(again.platform, f"recordings/{recording.id}")
    assert shown["state"] == "finished" and b.to_user
    assert (shown["channel_legend"], shown["peer_call_id"]) == (legend, b.id)


async def test_serial_dial_busy_then_answer_and_parallel_dial_cancels_the_losers(
        tmp_path: Path) -> None:
    legs: list[tuple[str, str]] = []

    def on_leg(leg: DialLeg) -> None:
        legs.append((leg.device.to, leg.state))

    async with start_sipp_uas("uas_busy", media_port=media_port()) as busy, \
            start_sipp_uas("uas_answer", media_port=media_port()) as answering, \
            start_sipp_uas("uas_ring", media_port=media_port()) as ringing, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=6.0)
        a = await inbound_call(running)
        plan = [[Device(busy.uri())], [Device(ringing.uri()), Device(answering.uri())]]
        bridge = await connect(a, running.platform.outbound, plan, on_leg=on_leg)
        assert bridge.b.to_uri == answering.uri()
        require_pass(await ringing.wait(timeout=20))  # it got CANCEL and answered 487
        require_pass(await busy.wait(timeout=20))
        await placing
        await asyncio.wait_for(bridge.b.wait_ended(), 10)
    assert (busy.uri(), "ended") in legs and (answering.uri(), "answered") in legs
    assert (ringing.uri(), "ended") in legs
    assert legs.index((busy.uri(), "ended")) < legs.index((ringing.uri(), "created"))


async def test_nobody_answers_fails_with_the_most_telling_reason(tmp_path: Path) -> None:
    async with start_sipp_uas("uas_busy", media_port=media_port()) as busy, \
            start_sipp_uas("uas_ring", media_port=media_port()) as ringing, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=5.0)
        a = await inbound_call(running)
        with pytest.raises(DialFailed) as failed:
            await connect(a, running.platform.outbound,
                          [[Device(busy.uri()), Device(ringing.uri(), timeout=1.0)]])
        assert (failed.value.status, failed.value.end_reason) == (486, "busy")
        assert a.is_active and a.peer is None  # the caller goes on
        await a.hangup()
        await placing



def blocks(samples: np.ndarray, seconds: float = 0.1) -> list[np.ndarray]:
    size = int(seconds * 8000)
    return [samples[i:i + size] for i in range(0, len(samples) - size + 1, size)]


async def test_ringback_until_early_media_replaces_it_and_the_peer_id_while_bridged(
        tmp_path: Path) -> None:
    early_tone = g711_stream(audio.tone(600, 1.0, -12), tmp_path / "early.ulaw")
    async with start_sipp_uas("uas_ring", media_port=media_port()) as ringing, \
            start_sipp_uas("uas_early_media", media_port=media_port(), keys={"stream": early_tone},
                           extra_args=["-d", "2000"]) as early, \
            running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=8.0)
        a = await inbound_call(running)
        recording = await record(running, a)
        with pytest.raises(DialFailed) as failed:  # rings 1.5 s, nobody answers
            await connect(a, running.platform.outbound, [[Device(ringing.uri(), timeout=1.5)]])
        assert failed.value.end_reason == "noAnswer"
        bridge = await connect(a, running.platform.outbound, [[Device(early.uri())]])
        assert running.platform.recorder is not None
        second = await running.platform.recorder.start_recording(
            a, RecordParams.parse(STEREO, "relay"))
        assert isinstance(second, Recording)
        assert second.events[0]["peer_call_id"] == bridge.b.id
        await a.hangup()
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        await placing
        require_pass(await ringing.wait(timeout=20))
        require_pass(await early.wait(timeout=20))
    assert "peer_call_id" not in recording.events[-1]  # finished after the bridge ended
    samples, _ = audio.decode_audio(recording.path)
    heard = blocks(samples[:, 1])
    ringback = [i for i, b in enumerate(heard) if audio.tone_level_dbfs(b, 480) > -30]
    early_media = [i for i, b in enumerate(heard) if audio.tone_level_dbfs(b, 600) > -20]
    assert len(ringback) >= 10, "the caller heard no ringback while the first callee rang"
    assert len(early_media) >= 8, "the caller did not hear the second callee's early media"
    assert not set(ringback) & set(early_media)  # early media replaced the ringback
    assert max(ringback) < min(early_media)


async def test_digits_reach_the_callee_while_the_bridge_is_recorded(
        tmp_path: Path, peer_env: object) -> None:
    stream = g711_stream(audio.tone(CALLER_HZ, 1.0, -12), tmp_path / "caller.ulaw", loops=-1)
    block = free_port_range(8)
    async with running_platform(tmp_path) as running:
        placing = asyncio.ensure_future(run_sipp(
            "uac_audio_dtmf", running.target, service="listen", local_port=block.start,
            media_port=block.start + 4, keys={"stream": stream, "digits": "19#"},
            extra_args=["-d", "3000"], timeout=40))
        a = await inbound_call(running)
        recording = await record(running, a)
        # The callee is the platform itself, on its `listen` route (observed[1] sees its digits).
        bridge = await connect(a, running.platform.outbound, [[Device(running.uri("listen"))]])
        require_pass(await placing)
        callee = await running.wait_call_ended(1)
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    assert bridge.b.id != callee.call.id and callee.call.direction == "inbound"
    assert callee.digits == ["1", "9", "#"]
    assert recording.state == "finished"
    samples, _ = audio.decode_audio(recording.path)
    assert audio.tone_level_dbfs(tail(samples[:, 0], 1.0, margin=0.6), CALLER_HZ) > -16


async def test_a_number_is_connected_through_the_trunk(tmp_path: Path) -> None:
    number, password = "+15550123", "carrier-secret"
    stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, -12), tmp_path / "callee.ulaw", loops=-1)
    uas_port = free_udp_port()
    async with start_sipp_uas("uas_answer_behind_proxy", local_port=uas_port,
                              media_port=media_port(), keys={"stream": stream}) as uas, \
            start_kamailio(password=password,
                           routes={number: f"127.0.0.1:{uas_port}"}) as carrier, \
            running_platform(tmp_path, trunks=[Trunk(
                name="carrier", proxy=carrier.target, username="callbox", password=password,
                from_number="+15550100")]) as running:
        placing = caller(running, tmp_path, seconds=3.0)
        a = await inbound_call(running)
        recording = await record(running, a)
        bridge = await connect(a, running.platform.outbound, [[Device(number)]])
        assert bridge.b.to_user == number
        await placing
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        require_pass(await uas.wait(timeout=20))
        assert [r.authorized for r in carrier.requests("INVITE")] == [False, True]
    samples, _ = audio.decode_audio(recording.path)
    assert audio.tone_level_dbfs(tail(samples[:, 1], 1.0), CALLEE_HZ) > -16


async def test_an_unreachable_destination_fails_as_an_error_and_a_bad_one_at_once(
        tmp_path: Path) -> None:
    async with running_platform(tmp_path) as running:
        placing = caller(running, tmp_path, seconds=8.0)
        a = await inbound_call(running)
        nobody = f"sip:x@127.0.0.1:{free_udp_port()}"  # nothing listens: no response at all
        with pytest.raises(DialFailed) as failed:
            await connect(a, running.platform.outbound, [[Device(nobody)]])
        assert (failed.value.status, failed.value.end_reason) == (408, "error")
        with pytest.raises(OutboundError, match="no trunk is configured"):
            await connect(a, running.platform.outbound, [[Device("+15550001")]])
        assert running.platform.ports.in_use == 1  # only the caller's: nothing leaked
        assert a.is_active and a.peer is None
        await a.hangup()
        await placing
