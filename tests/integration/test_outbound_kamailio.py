"""Outbound calls through a trunk (`OutboundCalls.dial`) against a real carrier.

Kamailio demands proxy digest auth for the INVITE (407 -> our authenticated retry) and relays
the test number to a sipp UAS; the callee's tone is found in a recording the recording engine
made on the outbound `Call`, over UDP and over TCP between callbox and Kamailio. A sip: URI goes
straight to sipp (no trunk, no credentials), with its early media flowing before the answer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.integration.conftest import running_platform
from tests.peers import audio
from tests.peers.kamailio import start_kamailio
from tests.peers.poll import until_async
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.sipp import g711_stream, received_transactions, start_sipp_uas

from callbox.server.config import Trunk
from callbox.server.outbound import OutboundError
from callbox.server.recording.engine import Recording
from callbox.server.sip.endpoint import CallFailed
from callbox.wire.recording import RecordParams

pytestmark = pytest.mark.peers

PASSWORD = "s3cret-carrier"
NUMBER = "+15550199"
FROM_NUMBER = "+15550100"
CALLEE_HZ = 900
RECORD = {"format": "wav", "direction": "speak", "stereo": False,
          "initial_timeout": 0.0, "end_silence_timeout": 0.0}


def trunk(proxy: str, transport: str = "udp") -> Trunk:
    return Trunk(name="carrier", proxy=proxy, transport=transport, username="callbox",
                 password=PASSWORD, from_number=FROM_NUMBER)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_number_is_called_through_the_trunk_and_the_callee_is_recorded(
        tmp_path: Path, transport: str) -> None:
    stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, dbfs=-12), tmp_path / "callee.ulaw",
                         loops=-1)
    uas_port = free_udp_port()
    async with start_sipp_uas("uas_answer_behind_proxy", local_port=uas_port,
                              media_port=free_port_range(4).start,
                              keys={"stream": stream}) as uas, \
            start_kamailio(password=PASSWORD,
                           routes={NUMBER: f"127.0.0.1:{uas_port}"}) as kamailio, \
            running_platform(tmp_path, trunks=[trunk(kamailio.target, transport)]) as running:
        platform = running.platform
        call = await platform.outbound.dial(NUMBER, ring_timeout=20)
        assert call.direction == "outbound" and call.state == "answered"
        assert platform.calls[call.id] is call
        assert call.to_user == NUMBER and call.from_user == FROM_NUMBER
        assert platform.recorder is not None
        recording = await platform.recorder.start_recording(
            call, RecordParams.parse(RECORD, "relay"))
        assert isinstance(recording, Recording)
        async def heard_two_seconds() -> bool:
            return (await call.media.snapshot()).counters["packets_received"] >= 100

        await until_async(heard_two_seconds, 20, "2 s of the callee")
        await call.hangup()
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        result = await uas.wait(timeout=20)
        assert result.ok, result.describe()
        assert call.id not in platform.calls
        invites = kamailio.requests("INVITE")
        assert [r.authorized for r in invites] == [False, True]  # 407, then our credentials
        assert invites[0].uri.startswith(f"sip:{NUMBER}@{kamailio.target}")
        assert (";transport=tcp" in invites[0].uri) == (transport == "tcp")
    invite = result.messages.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    from_line = next(line for line in invite.splitlines() if line.lower().startswith("from:"))
    assert f"sip:{FROM_NUMBER}@{kamailio.target}" in from_line
    vias = ",".join(line.split(":", 1)[1] for line in invite.splitlines()
                    if line.lower().startswith("via:")).split(",")
    ours = [v.strip() for v in vias if "SIP/2.0/" in v][-1]  # below Kamailio's UDP one
    assert ours.startswith(f"SIP/2.0/{transport.upper()} "), ours
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and len(samples) > 8000
    heard = samples[1600:]
    assert audio.tone_level_dbfs(heard, CALLEE_HZ) > -18
    assert abs(audio.dominant_frequency(heard) - CALLEE_HZ) < 10


async def test_a_busy_callee_fails_the_dial_with_486_and_frees_the_port(tmp_path: Path) -> None:
    uas_port = free_udp_port()
    rtp = free_port_range(2)  # one even port: a port kept after the failure would be missed
    async with start_sipp_uas("uas_busy", local_port=uas_port,
                              media_port=free_port_range(4).start) as uas, \
            start_kamailio(password=PASSWORD,
                           routes={NUMBER: f"127.0.0.1:{uas_port}"}) as kamailio, \
            running_platform(tmp_path, trunks=[trunk(kamailio.target)],
                             sip__rtp_ports=f"{rtp.start}-{rtp.start + 1}") as running:
        with pytest.raises(CallFailed) as failed:
            await running.platform.outbound.dial(NUMBER, ring_timeout=20)
        assert failed.value.status == 486
        result = await uas.wait(timeout=20)
        assert result.ok, result.describe()
        assert running.platform.calls == {}
        sock = running.platform.ports.open()  # the only port is free again
        running.platform.ports.release(sock)


async def test_a_number_without_a_trunk_is_a_clear_error(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as running:
        with pytest.raises(OutboundError, match=r"no trunk is configured.*\[\[trunks\]\]"):
            await running.platform.outbound.dial("15550001")
        with pytest.raises(OutboundError, match="no trunk named 'other'"):
            await running.platform.outbound.dial("15550001", trunk="other")
        with pytest.raises(OutboundError, match="give a number"):
            await running.platform.outbound.dial("not a number")
        assert running.platform.calls == {}


async def test_a_sip_uri_is_called_directly_and_early_media_flows_before_the_answer(
        tmp_path: Path) -> None:
    # 1 s of tone from the 183 on; the 200 comes 2.5 s later and nothing is streamed after it.
    stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, dbfs=-12), tmp_path / "early.ulaw")
    early: list[int] = []
    async with start_sipp_uas("uas_early_media", media_port=free_port_range(4).start,
                              keys={"stream": stream}, extra_args=["-d", "2500"]) as uas, \
            running_platform(tmp_path, trunks=[trunk("127.0.0.1:9")]) as running:
        call = await running.platform.outbound.dial(
            uas.uri(), from_="+15557777", on_early_media=lambda m: early.append(m.local_port))
        received_before_answer = (await call.media.snapshot()).counters["packets_received"]
        assert call.from_user == "+15557777" and call.state == "answered"
        await call.hangup()
        result = await uas.wait(timeout=20)
        assert result.ok, result.describe()
    assert early == [call.media.local_port]  # the session the answered call goes on with
    assert received_before_answer >= 40  # most of the second of early media
    invite = result.messages.split("INVITE sip:", 1)[1].split("\n\n", 1)[0]
    assert "Proxy-Authorization" not in invite and "sip:+15557777@127.0.0.1" in invite


async def test_a_hold_from_the_callee_is_answered_on_the_outbound_call(tmp_path: Path) -> None:
    async with start_sipp_uas("uas_hold", media_port=free_port_range(4).start) as uas, \
            running_platform(tmp_path) as running:
        call = await running.platform.outbound.dial(uas.uri())
        assert (await call.media.snapshot()).sending

        async def on_hold() -> bool:
            return not (await call.media.snapshot()).sending

        # the callee's re-INVITE (a=sendonly) is answered a=recvonly: we stop sending
        await until_async(on_hold, 10, "the hold applied to our media")
        await call.hangup()
        result = await uas.wait(timeout=20)
        assert result.ok, result.describe()
    assert "a=recvonly" in result.messages


async def test_a_dial_beyond_max_calls_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async with start_sipp_uas("uas_answer", media_port=free_port_range(4).start) as uas, \
            running_platform(tmp_path, sip__max_calls=1) as running:
        outbound = running.platform.outbound
        call = await outbound.dial(uas.uri())
        with pytest.raises(OutboundError, match=r"1 calls are up \(sip.max_calls\)"):
            await outbound.dial(uas.uri())
        await call.hangup()
        result = await uas.wait(timeout=20)
        assert result.ok, result.describe()
    assert len(received_transactions(result.messages, "INVITE")) == 1  # the refused one: none
