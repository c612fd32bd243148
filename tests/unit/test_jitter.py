from __future__ import annotations

import numpy as np
import pytest

from callbox.server.media.jitter import ReceiveBuffer

FRAME = 160
DELAY = 3
SSRC = 0x1111


def signal(samples: int, seed: int = 0) -> np.ndarray:
    """Distinct, never-zero samples so every misplaced or missing sample shows."""
    values = (np.arange(samples, dtype=np.int64) * 7 + seed * 1000) % 30000 + 1
    return values.astype(np.int16)


def packets(sig: np.ndarray, size: int, ts0: int, ssrc: int = SSRC) -> list[tuple]:
    return [
        (ssrc, (ts0 + start) % 2**32, sig[start : start + size])
        for start in range(0, len(sig), size)
    ]


def run(buf: ReceiveBuffer, arrivals: list[list[tuple]], extra_pops: int = 6) -> np.ndarray:
    """arrivals[i] = packets pushed before the i-th pop; returns everything popped."""
    out = []
    for tick in arrivals:
        for ssrc, ts, pcm in tick:
            buf.push(ssrc, ts, pcm)
        frame = buf.pop_frame()
        assert frame.dtype == np.int16 and frame.shape == (FRAME,)
        out.append(frame.copy())
    out.extend(buf.pop_frame().copy() for _ in range(extra_pops))
    return np.concatenate(out)


def expect(lead_frames: int, sig: np.ndarray, total: int) -> np.ndarray:
    result = np.zeros(total, dtype=np.int16)
    result[lead_frames * FRAME : lead_frames * FRAME + len(sig)] = sig
    return result


def test_silence_before_first_packet() -> None:
    buf = ReceiveBuffer()
    for _ in range(5):
        assert not buf.pop_frame().any()
    assert not buf.started and buf.packets == 0


def test_in_order_stream_identical_after_delay() -> None:
    sig = signal(50 * FRAME)
    buf = ReceiveBuffer()
    out = run(buf, [[p] for p in packets(sig, FRAME, 1234)])
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))
    assert buf.started and buf.packets == 50 and buf.late == 0 and buf.resyncs == 0


@pytest.mark.parametrize("delay", [0, 1, 5])
def test_delay_frames_setting(delay: int) -> None:
    sig = signal(20 * FRAME)
    out = run(ReceiveBuffer(delay_frames=delay), [[p] for p in packets(sig, FRAME, 0)])
    np.testing.assert_array_equal(out, expect(delay, sig, len(out)))


def test_shuffled_within_two_frames_identical() -> None:
    sig = signal(60 * FRAME)
    pkts = packets(sig, FRAME, 99)
    rng = np.random.default_rng(7)
    order = [1, 0]  # the first arrival is not the first packet
    for block in range(2, 60, 3):
        order.extend(int(i) for i in rng.permutation(np.arange(block, min(block + 3, 60))))
    assert all(abs(pos - idx) <= 2 for pos, idx in enumerate(order))
    buf = ReceiveBuffer()
    out = run(buf, [[pkts[i]] for i in order])
    # packet 1 anchored the timeline: it plays after DELAY frames, so packet 0 one frame earlier
    np.testing.assert_array_equal(out, expect(DELAY - 1, sig, len(out)))
    assert buf.late == 0 and buf.resyncs == 0


def test_dropped_packets_leave_exact_silence() -> None:
    sig = signal(40 * FRAME)
    pkts = packets(sig, FRAME, 5000)
    lost = {5, 6, 20, 39}
    out = run(ReceiveBuffer(), [[p] if i not in lost else [] for i, p in enumerate(pkts)])
    expected_sig = sig.copy()
    for i in lost:
        expected_sig[i * FRAME : (i + 1) * FRAME] = 0
    np.testing.assert_array_equal(out, expect(DELAY, expected_sig, len(out)))


def test_timestamp_gap_follows_rtp_timeline() -> None:
    buf = ReceiveBuffer()
    a, b = signal(FRAME, 1), signal(FRAME, 2)
    buf.push(SSRC, 1000, a)
    buf.push(SSRC, 1000 + 480, b)  # two 20 ms packets lost in between
    out = np.concatenate([buf.pop_frame().copy() for _ in range(8)])
    np.testing.assert_array_equal(out[480:640], a)
    assert not out[640:960].any()  # exactly 320 zero samples
    np.testing.assert_array_equal(out[960:1120], b)


def test_30ms_packets() -> None:
    sig = signal(40 * 240)
    pkts = packets(sig, 240, 777)
    # packet k arrives at 30*k ms; a pop happens every 20 ms
    arrivals: list[list[tuple]] = [[] for _ in range(61)]
    for k, pkt in enumerate(pkts):
        arrivals[-(-30 * k // 20)].append(pkt)
    buf = ReceiveBuffer()
    out = run(buf, arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))
    assert buf.late == 0


def test_10ms_packets() -> None:
    sig = signal(20 * FRAME)
    pkts = packets(sig, 80, 0)
    out = run(ReceiveBuffer(), [pkts[i : i + 2] for i in range(0, len(pkts), 2)])
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))


def test_duplicates_are_harmless() -> None:
    sig = signal(20 * FRAME)
    pkts = packets(sig, FRAME, 0)
    arrivals = [[p, p] for p in pkts]
    arrivals[5].append(pkts[3])  # a reordered duplicate, still ahead of the playout point
    out = run(ReceiveBuffer(), arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))


def test_ssrc_change_mid_stream_continues_seamlessly() -> None:
    first, second = signal(20 * FRAME, 1), signal(20 * FRAME, 2)
    arrivals = [[p] for p in packets(first, FRAME, 1000, ssrc=1)]
    arrivals += [[p] for p in packets(second, FRAME, 3_000_000_000, ssrc=2)]
    buf = ReceiveBuffer()
    out = run(buf, arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, np.concatenate([first, second]), len(out)))
    assert buf.resyncs == 1


def test_timestamp_wraparound() -> None:
    sig = signal(40 * FRAME)
    ts0 = 2**32 - 10 * FRAME
    buf = ReceiveBuffer()
    out = run(buf, [[p] for p in packets(sig, FRAME, ts0)])
    assert any(p[1] < 2 * FRAME for p in packets(sig, FRAME, ts0))  # it did wrap
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))
    assert buf.resyncs == 0 and buf.late == 0


def test_wraparound_with_reordering_across_the_wrap() -> None:
    sig = signal(10 * FRAME)
    pkts = packets(sig, FRAME, 2**32 - 4 * FRAME)
    order = [0, 1, 2, 4, 3, 5, 7, 6, 8, 9]
    out = run(ReceiveBuffer(), [[pkts[i]] for i in order])
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))


def test_single_late_packet_dropped_without_resync() -> None:
    sig = signal(20 * FRAME)
    pkts = packets(sig, FRAME, 0)
    arrivals = [[p] for p in pkts]
    arrivals[10].append(pkts[2])  # packet 2 played out at pop 5
    buf = ReceiveBuffer()
    out = run(buf, arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))
    assert buf.late == 1 and buf.resyncs == 0


def test_late_burst_resyncs_after_three() -> None:
    sig = signal(40 * FRAME)
    pkts = packets(sig, FRAME, 0)
    # packets 0-19 in time; then nothing for 10 ticks; then 20-29 arrive at once; then in time
    arrivals: list[list[tuple]] = [[p] for p in pkts[:20]] + [[] for _ in range(10)]
    arrivals.append(pkts[20:30])
    arrivals += [[p] for p in pkts[30:]]
    buf = ReceiveBuffer()
    out = run(buf, arrivals, extra_pops=12)
    # at the burst, the playout point is at packet 30 - DELAY = 27: 20, 21, 22 are late,
    # the third late packet (22) re-anchors the timeline DELAY frames ahead
    assert buf.late == 3 and buf.resyncs == 1
    head = (DELAY + 20) * FRAME
    np.testing.assert_array_equal(out[:head], expect(DELAY, sig[: 20 * FRAME], head))
    burst_pop = 30  # index of the pop right after the burst was pushed
    start = (burst_pop + DELAY) * FRAME
    np.testing.assert_array_equal(out[start : start + 18 * FRAME], sig[22 * FRAME :])
    assert not out[head:start].any()
    assert not out[start + 18 * FRAME :].any()


def test_big_forward_jump_resyncs_immediately() -> None:
    first, second = signal(10 * FRAME, 1), signal(10 * FRAME, 2)
    arrivals = [[p] for p in packets(first, FRAME, 0)]
    arrivals += [[p] for p in packets(second, FRAME, 10 * FRAME + 500_000)]
    buf = ReceiveBuffer()
    out = run(buf, arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, np.concatenate([first, second]), len(out)))
    assert buf.resyncs == 1 and buf.late == 0


def test_big_backward_jump_resyncs_immediately() -> None:
    first, second = signal(10 * FRAME, 1), signal(10 * FRAME, 2)
    arrivals = [[p] for p in packets(first, FRAME, 1_000_000)]
    arrivals += [[p] for p in packets(second, FRAME, 5)]
    buf = ReceiveBuffer()
    out = run(buf, arrivals)
    np.testing.assert_array_equal(out, expect(DELAY, np.concatenate([first, second]), len(out)))
    assert buf.resyncs == 1 and buf.late == 0


def test_jump_within_capacity_is_silence_not_resync() -> None:
    buf = ReceiveBuffer(capacity_frames=100)
    a, b = signal(FRAME, 1), signal(FRAME, 2)
    buf.push(SSRC, 0, a)
    buf.push(SSRC, 50 * FRAME, b)
    out = np.concatenate([buf.pop_frame().copy() for _ in range(60)])
    np.testing.assert_array_equal(out[DELAY * FRAME : (DELAY + 1) * FRAME], a)
    np.testing.assert_array_equal(out[(DELAY + 50) * FRAME : (DELAY + 51) * FRAME], b)
    assert np.count_nonzero(out) == np.count_nonzero(a) + np.count_nonzero(b)
    assert buf.resyncs == 0


def test_partly_late_packet_keeps_its_future_part() -> None:
    buf = ReceiveBuffer()
    buf.push(SSRC, 0, signal(FRAME, 1))
    for _ in range(DELAY + 1):
        buf.pop_frame()  # playout point is now at timestamp 160
    late = signal(3 * FRAME, 2)
    buf.push(SSRC, 0, late)
    np.testing.assert_array_equal(buf.pop_frame(), late[FRAME : 2 * FRAME])
    np.testing.assert_array_equal(buf.pop_frame(), late[2 * FRAME :])
    assert buf.late == 0


def test_stale_audio_never_replays() -> None:
    buf = ReceiveBuffer(capacity_frames=10)
    sig = signal(5 * FRAME)
    out = run(buf, [[p] for p in packets(sig, FRAME, 0)], extra_pops=50)
    np.testing.assert_array_equal(out, expect(DELAY, sig, len(out)))


def test_oversized_packet_is_truncated_not_fatal() -> None:
    buf = ReceiveBuffer(capacity_frames=4, delay_frames=1)
    big = signal(10 * FRAME)
    buf.push(SSRC, 0, big)
    out = np.concatenate([buf.pop_frame().copy() for _ in range(6)])
    np.testing.assert_array_equal(out[FRAME : 4 * FRAME], big[: 3 * FRAME])
    assert not out[4 * FRAME :].any()


def test_reset() -> None:
    buf = ReceiveBuffer()
    buf.push(SSRC, 0, signal(FRAME))
    buf.reset()
    assert not buf.started and buf.packets == 0
    assert not buf.pop_frame().any()


def test_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError):
        ReceiveBuffer(delay_frames=10, capacity_frames=10)
    with pytest.raises(ValueError):
        ReceiveBuffer(frame_samples=0)
