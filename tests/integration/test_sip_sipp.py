"""The platform against sipp: calls, audio, DTMF, CANCEL, timers, OPTIONS.

sipp does not check what it receives, so the assertions are on the platform side: every packet
and digit sipp sent arrived, and the audio the platform decoded is exactly what sipp streamed.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.peers import audio
from tests.peers.ports import free_port_range
from tests.peers.sipp import dtmf_pcap, g711_stream, run_sipp, traced_messages

from callbox.server.media.g711 import ulaw_decode
from callbox.server.sip.endpoint import PROVISIONAL_AFTER

pytestmark = pytest.mark.peers

SPEECH = "The quick brown fox jumps over the lazy dog. One two three four five."


def ports() -> tuple[int, int]:
    block = free_port_range(8)
    return block.start, block.start + 4


def assert_same_audio(received: np.ndarray, sent: np.ndarray) -> None:
    """`received` holds `sent` sample for sample (after a playout delay), silence around."""
    score, lag = audio.max_normalized_xcorr(received, sent, max_lag_samples=8000)
    assert score > 0.999, f"received audio does not match what was sent (xcorr {score:.3f})"
    assert lag >= 0
    segment = received[lag:lag + len(sent)]
    assert np.array_equal(segment, sent), "decoded samples differ from the stream"
    assert not received[:lag].any(), "noise before the stream started"


async def test_sipp_stream_and_rfc4733_digits_arrive_complete(platform, peer_env, tmp_path):
    peer_env.require_root()
    speech = audio.speech(SPEECH)
    speech = np.concatenate([speech, np.zeros(-len(speech) % 160, dtype=np.int16)])
    stream = g711_stream(speech, tmp_path / "speech.ulaw")
    sent = ulaw_decode((tmp_path / "speech.ulaw").read_bytes())
    sip_port, media_port = ports()
    stream_ms = int(len(sent) / 8) + 500
    result = await run_sipp(
        "uac_audio_dtmf", platform.target, service="listen", local_port=sip_port,
        media_port=media_port, keys={"stream": stream, "digits": "123#"},
        extra_args=["-d", str(stream_ms)], timeout=60,
    )
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "hangup"  # sipp's BYE
    # every audio packet arrived and was placed on the timeline
    media = await seen.call.media.snapshot()
    assert media.buffered == len(sent) // 160
    assert media.counters["packets_late"] == 0
    assert seen.digits == ["1", "2", "3", "#"]  # once per key press, end packets deduplicated
    assert_same_audio(seen.speak, sent)


async def test_sipp_pcap_digits_with_payload_type_101(platform, peer_env):
    peer_env.require_root()
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_pcap_dtmf", platform.target, service="listen", local_port=sip_port,
        media_port=media_port, keys={"pcap1": str(dtmf_pcap("5")), "pcap2": str(dtmf_pcap("#"))},
        timeout=30,
    )
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    assert seen.digits == ["5", "#"]
    assert (await seen.call.media.snapshot()).counters["digits_received"] == 2


async def test_prompt_route_plays_and_hangs_up_cleanly(platform, tmp_path):
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_hangup_by_server", platform.target, service="prompt", local_port=sip_port,
        media_port=media_port, timeout=40,
    )
    assert result.ok, result.describe()  # sipp got our BYE and we got its 200
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "hangup"
    # at least a second of prompt was sent
    assert (await seen.call.media.snapshot()).counters["packets_sent"] > 50
    assert "BYE sip:" in result.messages


async def test_cancel_before_answer_gets_200_and_487(platform):
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_cancel", platform.target, service="ring", local_port=sip_port,
        media_port=media_port, timeout=20,
    )
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "cancel"
    assert seen.call.answered_at is None
    assert "SIP/2.0 487" in result.messages
    # a route that rings: a 180 once PROVISIONAL_AFTER passed unanswered (no 100 before it)
    received = received_statuses(result.messages)
    assert [status for status, _ in received][:1] == [180] and 100 not in dict(received)
    assert received[0][1] - invite_sent(result.messages) >= PROVISIONAL_AFTER - 0.01


async def test_a_call_answered_at_once_gets_no_provisional_response(platform):
    """No 100 Trying or 180 Ringing before PROVISIONAL_AFTER (RFC 3261 17.2.1): a route that
    answers at once sends its 200 alone, nothing a proxy could relay out of order after it.
    (On a machine too loaded to answer within 200 ms, a provisional response comes then.)"""
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_hangup_by_server", platform.target, service="prompt", local_port=sip_port,
        media_port=media_port, timeout=40,
    )
    assert result.ok, result.describe()
    await platform.wait_call_ended()
    sent = invite_sent(result.messages)
    received = received_statuses(result.messages)
    assert 200 in dict(received)
    early = [(status, round(when - sent, 3)) for status, when in received
             if status < 200 and when - sent < PROVISIONAL_AFTER - 0.01]
    assert not early, early


def invite_sent(messages: str) -> float:
    """When sipp sent its INVITE (its own clock)."""
    return next(m.when for m in traced_messages(messages)
                if not m.received and m.text.startswith("INVITE "))


def received_statuses(messages: str) -> list[tuple[int, float]]:
    """(status, when) of every response sipp received, in order (sipp's clock)."""
    return [(int(m.text.split()[1]), m.when) for m in traced_messages(messages)
            if m.received and m.text.startswith("SIP/2.0 ")]


async def test_missing_ack_ends_the_call_with_bye(platform):
    """The 200 OK is retransmitted until timer 64*T1 (3.2 s with the test timers), then BYE."""
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_no_ack", platform.target, service="listen", local_port=sip_port,
        media_port=media_port, timeout=30,
    )
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "error"
    assert result.messages.count("SIP/2.0 200 OK") >= 4  # the 2xx was retransmitted


async def test_options_gets_200(platform):
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_options", platform.target, service="prompt", local_port=sip_port,
        media_port=media_port, timeout=15,
    )
    assert result.ok, result.describe()
    assert "Allow: INVITE" in result.messages


async def test_hold_reinvite_and_route_set_behind_a_proxy(platform):
    """PCMA is chosen from the offer; the hold re-INVITE is answered recvonly and our RTP stops;
    the platform's BYE carries the Record-Route as Route (checked by sipp's regexps)."""
    sip_port, media_port = ports()
    result = await run_sipp(
        "uac_hold_behind_proxy", platform.target, service="prompt", local_port=sip_port,
        media_port=media_port, timeout=40,
    )
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    media = await seen.call.media.snapshot()
    assert media.codec == "PCMA"
    assert media.sending is False  # on hold: recvonly, nothing sent
    assert seen.call.end_reason == "hangup"
