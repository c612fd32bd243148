"""Our UAC (`SipEndpoint.call`, `callbox call`) against sipp as the callee: answers and the
audio heard, early media, refusals, redirects not followed, CANCEL on a ring timeout or when the
caller gives up, unusable answers, re-ACKs, a challenged BYE, re-INVITEs both ways, timer B.

sipp checks the SIP side (exit 0 = every message it expected came, in order); what the caller
heard is checked in the WAV it recorded.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.peers import audio
from tests.peers.poll import until
from tests.peers.ports import LOOPBACK, free_port_range, free_udp_port
from tests.peers.sipp import SippUas, g711_stream, received_transactions, start_sipp_uas

from callbox.caller import place_call
from callbox.server.sip.endpoint import CallFailed, OutboundLeg, SipEndpoint
from callbox.server.sip.message import SipRequest, SipResponse
from callbox.server.sip.sdp import SessionDescription, answer_offer, make_offer, parse_sdp
from callbox.server.sip.transaction import Timers
from callbox.server.sip.uac import UacState

pytestmark = pytest.mark.peers


def media_port() -> int:
    """Start of a free RTP range for sipp ``-mp`` (it uses mp..mp+3 per call)."""
    return free_port_range(4).start


def offer() -> SessionDescription:
    return make_offer(local_host=LOOPBACK, local_port=40000, session_id=1, session_version=1)


@pytest.fixture
async def endpoint() -> AsyncIterator[SipEndpoint]:
    sip = SipEndpoint(user_agent="callbox-test")
    await sip.start(LOOPBACK, 0)
    try:
        yield sip
    finally:
        sip.close()


async def finished(uas: SippUas) -> str:
    """sipp's message trace once it ran its scenario through (assert it passed)."""
    result = await uas.wait(timeout=20)
    assert result.ok, result.describe()
    return result.messages


async def test_an_answered_call_hears_the_callee(peer_env: object, tmp_path: Path) -> None:
    stream = g711_stream(audio.tone(440, 1.0, -12), tmp_path / "uas.ulaw", loops=-1)
    heard_path = tmp_path / "heard.wav"
    async with start_sipp_uas("uas_answer", media_port=media_port(),
                              keys={"stream": stream}) as uas:
        result = await place_call(uas.uri(), hangup_after=2.0, record_heard=heard_path)
        messages = await finished(uas)
    assert (result.status, result.hung_up_by) == (200, "us")
    assert "BYE sip:sipp@" in messages
    heard, _ = audio.read_wav(heard_path)
    spans = audio.active_spans(heard, 8000, threshold_dbfs=-30)
    assert spans, "nothing heard from the callee"
    start, end = spans[0]
    tone = heard[int(start * 8000) + 400:int(end * 8000) - 400]
    assert abs(audio.dominant_frequency(tone) - 440) < 5
    assert abs(audio.tone_level_dbfs(tone, 440) - (-12)) < 1


async def test_early_media_is_heard_and_recorded_before_the_answer(
        peer_env: object, tmp_path: Path) -> None:
    # 1 s of 600 Hz from the 183 on; the 200 comes 2.5 s later and nothing is streamed after it.
    stream = g711_stream(audio.tone(600, 1.0, -12), tmp_path / "early.ulaw")
    heard_path = tmp_path / "heard.wav"
    async with start_sipp_uas("uas_early_media", media_port=media_port(),
                              keys={"stream": stream}, extra_args=["-d", "2500"]) as uas:
        result = await place_call(uas.uri(), hangup_after=0.5, record_heard=heard_path)
        messages = await finished(uas)
    assert result.status == 200, result
    assert "183 Session Progress" in messages
    heard, _ = audio.read_wav(heard_path)
    spans = audio.active_spans(heard, 8000, threshold_dbfs=-30)
    assert len(spans) == 1, spans
    start, end = spans[0]
    assert 0.8 <= end - start <= 1.1  # the early tone (sipp streams nothing after the 200)
    tone = heard[int(start * 8000) + 400:int(end * 8000) - 400]
    assert abs(audio.dominant_frequency(tone) - 600) < 5
    # Recorded as it came, not from a backlog read at the answer: the rest of the 2.5 s before
    # the 200 (silence) and the answered 0.5 s follow the tone in the recording.
    assert len(heard) / 8000 - end >= 1.0


@pytest.mark.parametrize(("scenario", "code", "reason"), [
    ("uas_busy", 486, "Busy Here"), ("uas_decline", 603, "Decline"),
    ("uas_redirect", 302, "Moved Temporarily")])
async def test_a_refusal_fails_with_its_code_and_a_redirect_is_not_followed(
        peer_env: object, endpoint: SipEndpoint, scenario: str, code: int, reason: str) -> None:
    async with start_sipp_uas(scenario, media_port=media_port()) as uas:
        with pytest.raises(CallFailed) as failed:
            await endpoint.call(uas.uri(), offer())
        messages = await finished(uas)  # it got the ACK, and no second INVITE
    assert (failed.value.status, failed.value.reason) == (code, reason)
    assert len(received_transactions(messages, "INVITE")) == 1  # a redirect would be a second
    assert "ACK sip:" in messages


async def test_no_answer_within_the_ring_timeout_sends_cancel(
        peer_env: object, endpoint: SipEndpoint) -> None:
    progress: list[tuple[UacState, int]] = []
    async with start_sipp_uas("uas_ring", media_port=media_port()) as uas:
        began = endpoint.now()
        with pytest.raises(CallFailed) as failed:
            await endpoint.call(uas.uri(), offer(), ring_timeout=1.0,
                                on_progress=lambda state, r: progress.append((state, r.status)))
        waited = endpoint.now() - began
        messages = await finished(uas)  # CANCEL came, the 487 was ACKed
    assert failed.value.status == 487
    assert failed.value.reason == "no answer within 1 s"
    assert waited >= 1.0
    assert progress == [(UacState.PROCEEDING, 180)]  # the callee's one provisional
    assert messages.count("CANCEL sip:sipp@") == 1


async def test_a_cancel_never_answered_ends_the_call_after_64_t1(peer_env: object) -> None:
    timers = Timers(t1=0.05, t2=0.4, t4=0.5, d=1.0)
    sip = SipEndpoint(timers=timers)
    await sip.start(LOOPBACK, 0)
    try:
        async with start_sipp_uas("uas_ring_deaf", media_port=media_port()) as uas:
            began = sip.now()
            with pytest.raises(CallFailed) as failed:
                await asyncio.wait_for(sip.call(uas.uri(), offer(), ring_timeout=0.5), 30)
            waited = sip.now() - began
            result = await uas.stop()
    finally:
        sip.close()
    assert (failed.value.status, failed.value.reason) == (487, "no answer within 0.5 s")
    assert waited >= 0.5 + timers.timeout
    assert "CANCEL sip:sipp@" in result.messages


async def test_a_caller_giving_up_sends_cancel(peer_env: object, endpoint: SipEndpoint) -> None:
    rang = asyncio.Event()

    def progress(state: UacState, response: SipResponse) -> None:
        if response.status == 180:
            rang.set()

    async with start_sipp_uas("uas_ring", media_port=media_port()) as uas:
        task = asyncio.create_task(endpoint.call(uas.uri(), offer(), on_progress=progress))
        await asyncio.wait_for(rang.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        messages = await finished(uas)
    assert "CANCEL sip:sipp@" in messages


async def test_a_200_without_sdp_is_acked_hung_up_and_fails(
        peer_env: object, endpoint: SipEndpoint) -> None:
    async with start_sipp_uas("uas_answer_no_sdp", media_port=media_port()) as uas:
        with pytest.raises(CallFailed) as failed:
            await endpoint.call(uas.uri(), offer())
        messages = await finished(uas)  # ACK, then BYE
    assert failed.value.status == 488
    assert failed.value.reason == "no SDP answer in the 200 OK"
    assert "BYE sip:sipp@" in messages


async def test_a_200_naming_a_codec_we_did_not_offer_is_hung_up_and_fails(
        peer_env: object, endpoint: SipEndpoint) -> None:
    async with start_sipp_uas("uas_answer_other_codec", media_port=media_port()) as uas:
        with pytest.raises(CallFailed) as failed:
            await endpoint.call(uas.uri(), offer())
        messages = await finished(uas)
    assert failed.value.status == 488
    assert "G729" in failed.value.reason
    assert "BYE sip:sipp@" in messages


async def test_every_copy_of_the_200_is_acked(peer_env: object, endpoint: SipEndpoint) -> None:
    async with start_sipp_uas("uas_answer_twice", media_port=media_port()) as uas:
        leg = await endpoint.call(uas.uri(), offer())
        ended: list[str] = []
        leg.on_terminated = ended.append
        messages = await finished(uas)  # it sent the 200 again after our ACK, then BYE
    assert messages.count("ACK sip:sipp@") == 2
    assert ended == ["hangup"]


async def test_a_bye_challenged_with_401_fails_cleanly(peer_env: object) -> None:
    async with start_sipp_uas("uas_bye_401_no_retry", media_port=media_port()) as uas:
        result = await place_call(uas.uri(), hangup_after=0.5)
        messages = await finished(uas)
    assert (result.status, result.hung_up_by) == (200, "us")
    assert "401 Unauthorized" in messages
    assert messages.count("BYE sip:sipp@") == 1  # no retry loop without credentials


async def test_reinvites_both_ways_on_an_outbound_leg(
        peer_env: object, endpoint: SipEndpoint) -> None:
    ours = offer()
    reoffers: list[SipRequest] = []

    async def answer(request: SipRequest) -> bytes:
        reoffers.append(request)
        sdp, _ = answer_offer(parse_sdp(request.body), local_host=LOOPBACK, local_port=40000,
                              session_id=1, session_version=3)
        return sdp.serialize()

    async with start_sipp_uas("uas_reinvite", media_port=media_port()) as uas:
        leg: OutboundLeg = await endpoint.call(uas.uri(), ours)
        leg.on_reoffer = answer
        held = make_offer(local_host=LOOPBACK, local_port=40000, session_id=1,
                          session_version=2, direction="sendonly")
        response = await leg.reinvite(held.serialize())
        assert response.status == 200
        assert b"m=audio" in response.body
        await until(lambda: bool(reoffers), timeout=10, what="sipp's re-INVITE")
        await leg.bye()
        messages = await finished(uas)  # its 200 had a=recvonly, our ACK came, then BYE
    assert b"a=sendonly" in reoffers[0].body
    assert "INVITE sip:sipp@" in messages and "BYE sip:sipp@" in messages


async def test_callbox_call_answers_a_hold_from_the_callee(peer_env: object) -> None:
    async with start_sipp_uas("uas_hold", media_port=media_port()) as uas:
        result = await place_call(uas.uri(), hangup_after=1.0)
        messages = await finished(uas)  # our 200 answered its a=sendonly with a=recvonly
    assert (result.status, result.hung_up_by) == (200, "us")
    assert "a=recvonly" in messages


async def test_no_response_at_all_fails_after_timer_b() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((LOOPBACK, free_udp_port()))
    silent.setblocking(False)
    sip = SipEndpoint(timers=Timers(t1=0.02, t2=0.2, t4=0.2, d=0.2))
    await sip.start(LOOPBACK, 0)
    try:
        began = sip.now()
        with pytest.raises(CallFailed) as failed:
            await sip.call(f"sip:nobody@{LOOPBACK}:{silent.getsockname()[1]}", offer())
        waited = sip.now() - began
        invites = 0
        while True:
            try:
                invites += silent.recv(65535).startswith(b"INVITE ")
            except BlockingIOError:
                break
    finally:
        sip.close()
        silent.close()
    assert invites >= 3  # timer A retransmitted it (at 0.02, 0.06, 0.14, 0.3 s ...)
    assert failed.value.status == 408
    assert "no response to INVITE" in failed.value.reason
    assert waited >= 64 * 0.02  # timer B
