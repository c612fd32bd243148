"""Property tests for the media primitives: arbitrary input never breaks them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from callbox.server.media import g711
from callbox.server.media.dtmf import DtmfReceiver, DtmfSender, TelephoneEvent
from callbox.server.media.jitter import ReceiveBuffer
from callbox.server.media.playback import Playback
from callbox.server.media.rtp import (
    RtpError,
    RtpPacket,
    RtpSender,
    is_rtcp,
    parse_header,
    parse_header_span,
)
from callbox.server.media.sources import MediaError, render_media_url

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
FRAME = 160
RFC_4733_DIGITS = "0123456789*#ABCD"  # RFC 4733 table 3: DTMF events 0-15

u32 = st.integers(0, 2**32 - 1)
int16_arrays = st.lists(st.integers(-32768, 32767), max_size=400).map(
    lambda values: np.array(values, dtype=np.int16)
)

# datagrams that look like RTP often enough to reach the deeper checks
rtp_like = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.integers(0x80, 0xBF), st.binary(min_size=0, max_size=80)).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
)


@FUZZ
@given(rtp_like)
def test_rtp_parse_never_crashes_and_paths_agree(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        for parse in (parse_header, parse_header_span):
            with pytest.raises(RtpError):
                parse(data)
        return
    pt, marker, seq, ts, ssrc, offset, end = parse_header_span(data)
    assert parse_header(data) == (pt, marker, seq, ts, ssrc, offset)
    assert (pt, marker, seq, ts, ssrc) == (
        packet.payload_type,
        packet.marker,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
    )
    assert data[offset:end] == packet.payload
    assert RtpPacket.parse(packet.serialize()) == packet
    is_rtcp(data)


rtp_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 65535),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    csrc=st.lists(u32, max_size=15).map(tuple),
    extension=st.none()
    | st.tuples(st.integers(0, 65535), st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])),
    padding=st.integers(0, 255),
)


@FUZZ
@given(rtp_packets)
def test_rtp_roundtrip(packet: RtpPacket) -> None:
    data = packet.serialize()
    assert RtpPacket.parse(data) == packet
    start, end = parse_header_span(data)[5:]
    assert data[start:end] == packet.payload


@FUZZ
@given(st.integers(0, 65535), u32, st.lists(st.tuples(st.binary(max_size=300), u32), max_size=5))
def test_rtp_sender_roundtrip(sequence: int, ssrc: int, sends: list[tuple[bytes, int]]) -> None:
    sender = RtpSender(ssrc=ssrc, sequence=sequence)
    for index, (payload, timestamp) in enumerate(sends):
        packet = RtpPacket.parse(sender.build(payload, 0, timestamp, marker=index == 0))
        assert packet.sequence == (sequence + index) % 65536
        assert (packet.ssrc, packet.timestamp, packet.payload) == (ssrc, timestamp, payload)
        assert packet.marker == (index == 0)


@FUZZ
@given(st.binary(max_size=8))
def test_telephone_event_parse(payload: bytes) -> None:
    try:
        event = TelephoneEvent.parse(payload)
    except ValueError:
        assert len(payload) < 4
        return
    assert event.serialize() == bytes([payload[0], payload[1] & 0xBF]) + payload[2:4]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 5), st.binary(max_size=6)), max_size=60))
def test_dtmf_receiver_reports_each_key_at_most_once(feeds: list[tuple[int, bytes]]) -> None:
    receiver = DtmfReceiver()
    reported = []
    for timestamp, payload in feeds:
        digit = receiver.feed(timestamp, payload)
        if digit is not None:
            assert payload[0] < 16 and digit == RFC_4733_DIGITS[payload[0]]
            reported.append((timestamp, payload[0]))
    assert len(reported) == len(set(reported))  # the key history outlives 6 timestamps x events
    assert receiver.malformed == sum(len(p) < 4 for _, p in feeds)


@FUZZ
@given(st.sampled_from(RFC_4733_DIGITS), st.integers(1, 2000), st.integers(0, 63))
def test_dtmf_sender_shape(digit: str, duration_ms: int, volume: int) -> None:
    ticks = DtmfSender().packets(digit, duration_ms, volume)
    events = [[TelephoneEvent.parse(p) for p in tick] for tick in ticks]
    assert len(events[-1]) == 3 and all(e.end for e in events[-1])
    assert all(len(tick) == 1 and not tick[0].end for tick in events[:-1])
    durations = [tick[0].duration for tick in events]
    assert durations == [160 * (i + 1) for i in range(len(ticks))]
    assert durations[-1] >= duration_ms * 8
    assert {e.digit for tick in events for e in tick} == {digit}


@FUZZ
@given(st.binary(max_size=300))
def test_g711_decode_encode_is_stable(payload: bytes) -> None:
    for codec in g711.CODECS.values():
        pcm = codec.decode(payload)
        assert len(pcm) == len(payload)
        np.testing.assert_array_equal(codec.decode(codec.encode(pcm)), pcm)


@FUZZ
@given(int16_arrays)
def test_g711_quantisation_error_is_bounded(pcm: np.ndarray) -> None:
    for codec in g711.CODECS.values():
        back = codec.decode(codec.encode(pcm)).astype(np.int32)
        error = np.abs(back - pcm.astype(np.int32))
        # step size grows with magnitude: at most 1/16 of it, plus the fine-segment step
        assert (error <= np.abs(pcm.astype(np.int32)) // 16 + 128).all()


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "pop"]),
            st.integers(0, 2),  # ssrc
            st.one_of(st.integers(-2000, 2000), u32),  # timestamp offset or anything
            st.integers(0, 500),  # samples
        ),
        max_size=80,
    ),
    u32,
)
def test_receive_buffer_survives_anything(ops: list[tuple[str, int, int, int]], ts0: int) -> None:
    buf = ReceiveBuffer(capacity_frames=20)
    pushes = 0
    for op, ssrc, ts, size in ops:
        if op == "push":
            buf.push(ssrc, (ts0 + ts) % 2**32, np.full(size, 1, dtype=np.int16))
            pushes += 1
        else:
            frame = buf.pop_frame()
            assert frame.shape == (FRAME,) and frame.dtype == np.int16
            assert set(np.unique(frame).tolist()) <= {0, 1}
    assert buf.packets == pushes and buf.late <= pushes and buf.resyncs <= pushes
    for _ in range(25):  # capacity + delay: everything queued drains, nothing replays
        buf.pop_frame()
    assert not buf.pop_frame().any()


@FUZZ
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1.99)), min_size=1, max_size=60),
    u32,
)
def test_receive_buffer_reorder_and_loss_within_delay(
    packets: list[tuple[bool, float]], ts0: int
) -> None:
    """Packets displaced by < 2 frames and random losses: exact output, no late, no resync."""
    kept = [(k + jitter, k) for k, (lost, jitter) in enumerate(packets) if not lost]
    assume(kept)
    arrival = [k for _, k in sorted(kept)]
    first = arrival[0]
    sig = ((np.arange(len(packets) * FRAME) % 30000) + 1).astype(np.int16)
    buf = ReceiveBuffer(delay_frames=3)
    out = []
    for k in arrival:
        buf.push(7, (ts0 + k * FRAME) % 2**32, sig[k * FRAME : (k + 1) * FRAME])
        out.append(buf.pop_frame().copy())
    out.extend(buf.pop_frame().copy() for _ in range(len(packets) + 5))
    played = np.concatenate(out)
    expected = np.zeros_like(played)
    for _, k in kept:
        at = (3 + k - first) * FRAME
        expected[at : at + FRAME] = sig[k * FRAME : (k + 1) * FRAME]
    np.testing.assert_array_equal(played, expected)
    assert buf.late == 0 and buf.resyncs == 0


@FUZZ
@given(
    st.lists(st.integers(0, 500), max_size=5),
    st.integers(1, 3),
    st.lists(st.integers(1, 400), min_size=1, max_size=8),
)
def test_playback_output_is_the_segments(lengths: list[int], loop: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(len(lengths) * 1000 + sum(lengths))
    segments = [rng.integers(-32768, 32768, n).astype(np.int16) for n in lengths]
    expected = np.tile(np.concatenate([*segments, np.zeros(0, np.int16)]), loop)
    playback = Playback(segments, loop=loop)
    out = []
    index = 0
    while True:
        acc = np.zeros(sizes[index % len(sizes)], dtype=np.int32)
        index += 1
        more = playback.read_into(acc)
        out.append(acc)
        if not more:
            break
        assert index < 10_000
    played = np.concatenate(out)
    np.testing.assert_array_equal(played[: len(expected)], expected)
    assert not played[len(expected) :].any()
    assert playback.state == "finished" and playback.finished_reason == "done"


generated_urls = st.tuples(
    st.sampled_from(["silence:", "tone:", "ring:", "ringtone:", "tone:440+", "ring:2:"]),
    st.one_of(
        (st.floats(-5, 5) | st.just(float("nan"))).map(lambda f: f"{f:.3g}"),
        st.text(alphabet="0123456789.:+-eaxusk ", max_size=8),
    ),
).map("".join)


@FUZZ
@given(generated_urls)
async def test_render_generated_urls_only_raise_media_error(url: str) -> None:
    try:
        pcm = await render_media_url(url)
    except MediaError as exc:
        assert str(exc)  # says what was wrong
        return
    assert pcm.dtype == np.int16 and pcm.ndim == 1
