"""Voice detection for recordings: an energy gate on 20 ms frames, sans-I/O.

A frame counts as speech when its RMS level is above `-input_sensitivity` dBFS. The reference
is full scale = 32768: a full-scale square wave (every sample at +-32768) is 0 dBFS, so a sine
of amplitude A is at 20*log10(A / sqrt(2) / 32768) dBFS. Speech *starts* after
`ONSET_FRAMES` consecutive speech frames (60 ms); once it has started, any speech frame counts
as "in speech" again (no new onset needed).

Cost per frame: one int16 -> float64 copy into a reused buffer and one dot product, compared
with a threshold on the sum of squares computed once (no sqrt or log per frame).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from callbox.server.media.frames import FRAME_SAMPLES

FULL_SCALE: Final = 32768.0  # 0 dBFS: RMS of a full-scale square wave
ONSET_FRAMES: Final = 3  # 60 ms of consecutive speech frames start speech


def mean_square_threshold(input_sensitivity: float) -> float:
    """Mean of squared samples at `-input_sensitivity` dBFS (RMS threshold squared)."""
    return float(FULL_SCALE * FULL_SCALE * 10.0 ** (-input_sensitivity / 10.0))


class VoiceDetector:
    """Energy-based speech detector for one stream of int16 frames."""

    __slots__ = ("_buf", "_mean_square", "_run", "_sum_threshold", "speech_started")

    def __init__(self, input_sensitivity: float) -> None:
        if not 0.0 <= input_sensitivity <= 100.0:
            raise ValueError(f"input_sensitivity must be from 0 to 100, got {input_sensitivity!r}")
        self._mean_square = mean_square_threshold(input_sensitivity)
        self._sum_threshold = self._mean_square * FRAME_SAMPLES
        self._buf = np.empty(FRAME_SAMPLES, dtype=np.float64)
        self._run = 0  # consecutive speech frames before the onset
        self.speech_started = False

    def frame_is_speech(self, frame: np.ndarray) -> bool:
        """True when the frame's RMS is above the threshold (strictly)."""
        if frame.shape == self._buf.shape:
            np.copyto(self._buf, frame, casting="safe")
            return float(np.dot(self._buf, self._buf)) > self._sum_threshold
        samples = np.asarray(frame, dtype=np.float64).ravel()
        if samples.size == 0:
            return False
        return float(np.dot(samples, samples)) > self._mean_square * samples.size

    def feed_frames(self, block: np.ndarray) -> tuple[list[bool], int]:
        """:meth:`feed` for a block of whole frames (one vectorised energy pass): each frame's
        result, and the index of the frame from which speech has started (0 when it had
        already started; the number of frames when it has not started yet)."""
        frames = block.reshape(-1, FRAME_SAMPLES).astype(np.float64)
        speech: list[bool] = (np.einsum("ij,ij->i", frames, frames)
                              > self._sum_threshold).tolist()
        if self.speech_started:
            return speech, 0
        for index, is_speech in enumerate(speech):
            if not is_speech:
                self._run = 0
                continue
            self._run += 1
            if self._run >= ONSET_FRAMES:
                self.speech_started = True
                return speech, index
            speech[index] = False  # not speech until the onset is complete
        return speech, len(speech)

    def feed(self, frame: np.ndarray) -> bool:
        """Feed the next frame; True when speech has started and this frame is speech."""
        speech = self.frame_is_speech(frame)
        if self.speech_started:
            return speech
        if not speech:
            self._run = 0
            return False
        self._run += 1
        if self._run >= ONSET_FRAMES:
            self.speech_started = True
            return True
        return False
