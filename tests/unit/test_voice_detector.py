"""Voice detection: the dBFS threshold and the 60 ms onset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.server.recording.detector import (
    FRAME_SAMPLES,
    FULL_SCALE,
    ONSET_FRAMES,
    VoiceDetector,
)

RATE = 8000


def tone(dbfs: float, frames: int = 1, freq: float = 400.0) -> np.ndarray:
    """A sine whose RMS is `dbfs` (amplitude = RMS * sqrt(2)), `frames` 20 ms frames long."""
    amplitude = FULL_SCALE * 10 ** (dbfs / 20) * np.sqrt(2)
    t = np.arange(frames * FRAME_SAMPLES) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def frames_of(signal: np.ndarray) -> list[np.ndarray]:
    return [signal[i : i + FRAME_SAMPLES] for i in range(0, len(signal), FRAME_SAMPLES)]


SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)


def test_threshold_separates_hum_from_speech_at_44():
    det = VoiceDetector(44.0)
    assert not det.frame_is_speech(tone(-50.0))
    assert det.frame_is_speech(tone(-20.0))
    assert not det.frame_is_speech(SILENCE)


def test_higher_sensitivity_hears_the_hum():
    assert VoiceDetector(60.0).frame_is_speech(tone(-50.0))
    assert not VoiceDetector(30.0).frame_is_speech(tone(-40.0))


@pytest.mark.parametrize("sensitivity", [20.0, 44.0, 60.0])
def test_threshold_is_at_minus_sensitivity_dbfs(sensitivity):
    det = VoiceDetector(sensitivity)
    assert det.frame_is_speech(tone(-sensitivity + 1.0))
    assert not det.frame_is_speech(tone(-sensitivity - 1.0))


def test_full_scale_square_is_zero_dbfs():
    square = np.full(FRAME_SAMPLES, -32768, dtype=np.int16)
    assert VoiceDetector(0.5).frame_is_speech(square)  # 0 dBFS > -0.5 dBFS
    assert not VoiceDetector(0.0).frame_is_speech(square)  # not strictly above 0 dBFS


def test_no_int16_overflow_in_the_energy():
    loud = np.full(FRAME_SAMPLES, 32767, dtype=np.int16)
    assert VoiceDetector(44.0).frame_is_speech(loud)


def test_two_frames_of_tone_do_not_start_speech():
    det = VoiceDetector(44.0)
    burst = frames_of(tone(-20.0, 2))
    assert [det.feed(f) for f in burst] == [False, False]
    assert det.feed(SILENCE) is False
    assert not det.speech_started
    # the run was broken: two more frames still do not start it, the third does
    again = frames_of(tone(-20.0, 3))
    assert [det.feed(f) for f in again] == [False, False, True]
    assert det.speech_started
    assert ONSET_FRAMES == 3


def test_after_onset_any_speech_frame_is_speech():
    det = VoiceDetector(44.0)
    for f in frames_of(tone(-20.0, 3)):
        det.feed(f)
    assert det.feed(SILENCE) is False
    assert det.speech_started  # stays started
    assert det.feed(tone(-20.0)) is True  # one frame is enough now


def test_other_frame_lengths_scale_the_threshold():
    det = VoiceDetector(44.0)
    assert det.frame_is_speech(tone(-20.0, 2))  # 320 samples
    assert not det.frame_is_speech(tone(-50.0, 2))
    assert not det.frame_is_speech(np.zeros(0, dtype=np.int16))


def test_rejects_out_of_range_sensitivity():
    with pytest.raises(ValueError, match="input_sensitivity"):
        VoiceDetector(101.0)


@settings(max_examples=60, deadline=None)
@given(
    sensitivity=st.floats(min_value=5.0, max_value=90.0),
    level=st.floats(min_value=-95.0, max_value=-3.0),
)
def test_matches_a_float_rms_reference(sensitivity, level):
    frame = tone(level)
    rms = np.sqrt(np.mean(frame.astype(np.float64) ** 2))
    if rms == 0:
        expected = False
    else:
        measured = 20 * np.log10(rms / FULL_SCALE)
        if abs(measured + sensitivity) < 1e-6:
            return  # on the edge: float rounding decides
        expected = measured > -sensitivity
    assert VoiceDetector(sensitivity).frame_is_speech(frame) is bool(expected)
