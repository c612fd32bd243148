from __future__ import annotations

import logging

import numpy as np
import pytest

from callbox.server.media.playback import Playback

FRAME = 160


def ramp(samples: int, start: int = 1) -> np.ndarray:
    return ((np.arange(samples) + start) % 20000 + 1).astype(np.int16)


def drain(playback: Playback, max_frames: int = 10_000) -> tuple[np.ndarray, list[bool]]:
    """Read frames until finished; returns the concatenated output and each return value."""
    frames, results = [], []
    for _ in range(max_frames):
        acc = np.zeros(FRAME, dtype=np.int32)
        result = playback.read_into(acc)
        frames.append(acc)
        results.append(result)
        if not result:
            break
    return np.concatenate(frames), results


def test_two_segments_back_to_back_sample_exact() -> None:
    a, b = ramp(1000, 1), ramp(555, 5000)
    playback = Playback([a, b])
    out, results = drain(playback)
    expected = np.concatenate([a, b])
    assert len(out) == -(-len(expected) // FRAME) * FRAME
    np.testing.assert_array_equal(out[: len(expected)], expected)
    assert not out[len(expected) :].any()  # last partial frame padded with silence
    assert results[-1] is False and all(results[:-1])
    assert playback.state == "finished" and playback.finished_reason == "done"
    assert playback.position_samples == len(expected) == playback.total_samples


def test_exact_frame_multiple_finishes_on_last_frame() -> None:
    playback = Playback([ramp(3 * FRAME)])
    out, results = drain(playback)
    assert results == [True, True, False]
    np.testing.assert_array_equal(out, ramp(3 * FRAME))
    assert not playback.read_into(np.zeros(FRAME, dtype=np.int32))


def test_loop_two_doubles() -> None:
    a, b = ramp(300), ramp(170, 999)
    out, _ = drain(Playback([a, b], loop=2))
    once = np.concatenate([a, b])
    np.testing.assert_array_equal(out[: 2 * len(once)], np.concatenate([once, once]))
    assert not out[2 * len(once) :].any()


def test_loop_forever_until_stopped() -> None:
    playback = Playback([ramp(100)], loop=0)
    acc = np.zeros(FRAME, dtype=np.int32)
    for _ in range(500):
        assert playback.read_into(acc)
        acc.fill(0)
    assert playback.loops_completed == 500 * FRAME // 100
    assert playback.played_samples == 500 * FRAME
    playback.stop()
    assert not playback.read_into(acc)
    assert playback.finished_reason == "stopped"


def test_mixes_by_adding() -> None:
    acc = np.full(FRAME, 1000, dtype=np.int32)
    Playback([np.full(FRAME, 30000, dtype=np.int16)]).read_into(acc)
    Playback([np.full(FRAME, 30000, dtype=np.int16)]).read_into(acc)
    assert (acc == 61000).all()  # int32 accumulator: the caller clips once


def test_pause_keeps_position() -> None:
    sig = ramp(10 * FRAME)
    playback = Playback([sig])
    states: list[str] = []
    playback.on_state = states.append
    acc = np.zeros(FRAME, dtype=np.int32)
    playback.read_into(acc)
    playback.pause()
    assert playback.state == "paused"
    for _ in range(5):
        silent = np.zeros(FRAME, dtype=np.int32)
        assert playback.read_into(silent)
        assert not silent.any()
    assert playback.position_samples == FRAME
    playback.resume()
    rest, _ = drain(playback)
    np.testing.assert_array_equal(np.concatenate([acc, rest]), sig)
    assert states == ["paused", "playing", "finished"]
    playback.resume()  # no-op once finished
    assert states == ["paused", "playing", "finished"]


def test_volume_minus_6db_halves_amplitude() -> None:
    sig = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 20000).astype(np.int16)
    out, _ = drain(Playback([sig], volume_db=-6.0))
    ratio = np.abs(out[: len(sig)]).max() / np.abs(sig).max()
    assert ratio == pytest.approx(0.5, rel=0.01)


def test_volume_gain_saturates_each_playback() -> None:
    playback = Playback([np.full(FRAME, 20000, dtype=np.int16)], volume_db=12.0)
    acc = np.zeros(FRAME, dtype=np.int32)
    playback.read_into(acc)
    assert (acc == 32767).all()


def test_set_volume_between_frames() -> None:
    playback = Playback([np.full(4 * FRAME, 10000, dtype=np.int16)])
    acc = np.zeros(FRAME, dtype=np.int32)
    playback.read_into(acc)
    assert (acc == 10000).all()
    playback.set_volume(-20.0)
    acc.fill(0)
    playback.read_into(acc)
    assert (acc == 1000).all()
    assert playback.volume_db == -20.0
    with pytest.raises(ValueError):
        playback.set_volume(float("nan"))


def test_float_accumulator() -> None:
    acc = np.zeros(FRAME, dtype=np.float32)
    Playback([np.full(FRAME, 100, dtype=np.int16)], volume_db=-6.0206).read_into(acc)
    assert acc == pytest.approx(np.full(FRAME, 50.0))


def test_stop_calls_on_state_finished() -> None:
    playback = Playback([ramp(1000)], control_id="abc")
    events: list[str] = []
    playback.on_state = events.append
    playback.read_into(np.zeros(FRAME, dtype=np.int32))
    playback.stop()
    assert events == ["finished"]
    assert playback.state == "finished" and playback.finished_reason == "stopped"
    assert playback.control_id == "abc"
    playback.stop()  # idempotent
    assert events == ["finished"]
    assert not playback.read_into(np.zeros(FRAME, dtype=np.int32))


def test_natural_end_reports_done() -> None:
    playback = Playback([ramp(10)])
    events: list[str] = []
    playback.on_state = events.append
    drain(playback)
    assert events == ["finished"] and playback.finished_reason == "done"


def test_empty_playback_finishes_at_once_even_looping() -> None:
    for segments in ([], [np.zeros(0, dtype=np.int16)]):
        playback = Playback(segments, loop=0)
        assert not playback.read_into(np.zeros(FRAME, dtype=np.int32))
        assert playback.state == "finished" and playback.finished_reason == "done"


def test_segments_not_modified_and_read_only_ok() -> None:
    sig = ramp(500)
    sig.flags.writeable = False
    drain(Playback([sig], volume_db=3.0))
    np.testing.assert_array_equal(sig, ramp(500))


def test_callback_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    playback = Playback([ramp(10)])

    def broken(state: str) -> None:
        raise RuntimeError("boom")

    playback.on_state = broken
    with caplog.at_level(logging.ERROR):
        assert not playback.read_into(np.zeros(FRAME, dtype=np.int32))
    assert "boom" in caplog.text


def test_other_frame_sizes() -> None:
    sig = ramp(1000)
    playback = Playback([sig])
    parts = []
    for size in (7, 300, 1, 1000):
        acc = np.zeros(size, dtype=np.int32)
        playback.read_into(acc)
        parts.append(acc)
    np.testing.assert_array_equal(np.concatenate(parts)[:1000], sig)


def test_negative_loop_rejected() -> None:
    with pytest.raises(ValueError):
        Playback([ramp(10)], loop=-1)
