"""The recorder state machine, sans-I/O: frames and digits in, state changes and frames out.

No clock, no files, no event loop. The caller (the recording engine) feeds the call's two
streams once per 20 ms media tick, writes the frames it gets back, and turns the transitions
into `calling.call.record` events. Every timer counts fed frames, so it is exact.

States: `recording` -> (`paused` <-> `recording`)* -> `finished` | `no_input` | `error`.

Frame contract: frames leave the machine ONLY as the return values of `feed()`, `digit()`,
`stop()` and `fail()`, in file order; append each returned list to the file and nothing is
lost. `pause()` and `resume()` never return frames. Returned arrays are owned by the caller
(never reused by the machine) except the shared all-zero frame of `pause("silence")`, which is
read-only. Mono frames have shape `(n,)`, stereo frames `(n, 2)` (left = speak, right =
listen), all int16.

Trailing silence: after speech has started, the first `HANGOVER_FRAMES` of each non-speech run
are output at once; the rest of the run is held back (at most `end_silence_timeout` worth). When
speech resumes the held frames are released, sample-exact; when the run reaches
`end_silence_timeout` the recording ends `finished` and the held frames are dropped, so the file
ends `HANGOVER_FRAMES` (0.24 s) after the last speech frame. Every other end (stop, terminator,
max_length, fail, and the caller's hangup -> stop) releases the held frames. A `silence` pause
releases them too (with the first paused frame), since the paused zeros come after them.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final

import numpy as np

from callbox.server.recording.detector import FRAME_SAMPLES, VoiceDetector
from callbox.wire.recording import PAUSE_BEHAVIORS, RecordParams

FRAMES_PER_SECOND: Final = 50  # 20 ms frames
FRAME_SECONDS: Final = 1.0 / FRAMES_PER_SECOND
HANGOVER_FRAMES: Final = 12  # 0.24 s of silence kept after the last speech frame


class RecState(StrEnum):
    RECORDING = "recording"
    PAUSED = "paused"
    FINISHED = "finished"
    NO_INPUT = "no_input"
    ERROR = "error"


TERMINAL: Final = frozenset({RecState.FINISHED, RecState.NO_INPUT, RecState.ERROR})


def seconds_to_frames(seconds: float) -> int:
    """Frames needed to reach `seconds` (0 = off -> 0; any positive time is >= 1 frame)."""
    if seconds <= 0:
        return 0
    return max(1, math.ceil(round(seconds * FRAMES_PER_SECOND, 6)))


def _zero_frame(channels: int) -> np.ndarray:
    shape = (FRAME_SAMPLES, 2) if channels == 2 else (FRAME_SAMPLES,)
    frame = np.zeros(shape, dtype=np.int16)
    frame.flags.writeable = False
    return frame


class RecorderMachine:
    """One recording's logic. See the module docstring for the frame contract."""

    def __init__(self, params: RecordParams) -> None:
        self.params = params
        self._state = RecState.RECORDING
        self._transitions: list[RecState] = [RecState.RECORDING]
        self._detector = VoiceDetector(params.input_sensitivity)
        self._detect_listen = params.direction == "listen"
        self._initial_frames = seconds_to_frames(params.initial_timeout)
        self._end_silence_frames = seconds_to_frames(params.end_silence_timeout)
        self._max_frames = seconds_to_frames(params.max_length)
        self._zero = _zero_frame(params.channels)
        self._mix = np.empty(FRAME_SAMPLES, dtype=np.int32)  # scratch for mono `both`
        self._held: list[np.ndarray] = []
        self._waited = 0  # recording frames fed before speech started
        self._silence_run = 0  # non-speech frames since the last speech frame
        self._frames_out = 0
        self._pause_behavior: str | None = None
        self._reason: str | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def state(self) -> RecState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state in TERMINAL

    @property
    def frames_out(self) -> int:
        """Frames returned so far (the file's length in frames)."""
        return self._frames_out

    @property
    def duration(self) -> float:
        """Seconds of audio returned so far."""
        return self._frames_out * FRAME_SECONDS

    @property
    def held_frames(self) -> int:
        """Frames of trailing silence held back, not yet returned."""
        return len(self._held)

    @property
    def speech_started(self) -> bool:
        return self._detector.speech_started

    @property
    def pause_behavior(self) -> str | None:
        """Behaviour of the current (or last) pause; None before any pause."""
        return self._pause_behavior

    @property
    def reason(self) -> str | None:
        """Why the recording failed (state `error`), else None."""
        return self._reason

    def pop_transitions(self) -> list[RecState]:
        """State changes since the last call, oldest first (the first call includes RECORDING)."""
        transitions, self._transitions = self._transitions, []
        return transitions

    # -- input ----------------------------------------------------------------------------------

    def feed(self, speak: np.ndarray, listen: np.ndarray) -> list[np.ndarray]:
        """Feed one 20 ms frame of each stream; returns the frames to append to the file now."""
        if self._state is RecState.RECORDING:
            return self._feed_recording(speak, listen)
        if self._state is RecState.PAUSED and self._pause_behavior == "silence":
            out = self._take_held()
            out.append(self._zero)
            self._frames_out += len(out)
            if self._max_frames and self._frames_out >= self._max_frames:
                self._set(RecState.FINISHED)
            return out
        return []  # paused with `skip`, or done

    def digit(self, digit: str) -> list[np.ndarray]:
        """A DTMF digit; a terminator ends the recording `finished`. Returns released frames."""
        if self.done or len(digit) != 1 or digit.upper() not in self.params.terminators:
            return []
        return self._end(RecState.FINISHED)

    # -- commands -------------------------------------------------------------------------------

    def pause(self, behavior: str = "silence") -> None:
        """Pause: `silence` records zeros (timeline kept), `skip` records nothing.

        Voice-detection timers are frozen while paused. No-op unless recording.
        """
        if behavior not in PAUSE_BEHAVIORS:
            raise ValueError(f"pause behavior must be 'silence' or 'skip', got {behavior!r}")
        if self._state is RecState.RECORDING:
            self._pause_behavior = behavior
            self._set(RecState.PAUSED)

    def resume(self) -> None:
        """Resume recording. No-op unless paused."""
        if self._state is RecState.PAUSED:
            self._set(RecState.RECORDING)

    def stop(self) -> list[np.ndarray]:
        """End `finished` (also the hangup path). Returns the held frames: write them."""
        if self.done:
            return []
        return self._end(RecState.FINISHED)

    def fail(self, reason: str) -> list[np.ndarray]:
        """End in `error` (decided by the caller, e.g. disk full). Returns the held frames."""
        if self.done:
            return []
        self._reason = reason
        return self._end(RecState.ERROR)

    # -- internals ------------------------------------------------------------------------------

    def _set(self, state: RecState) -> None:
        self._state = state
        self._transitions.append(state)

    def _take_held(self) -> list[np.ndarray]:
        held, self._held = self._held, []
        return held

    def _end(self, state: RecState) -> list[np.ndarray]:
        out = self._take_held()
        self._frames_out += len(out)
        self._set(state)
        return out

    def _frame(self, speak: np.ndarray, listen: np.ndarray) -> np.ndarray:
        """The file's frame for this tick (a new array)."""
        direction = self.params.direction
        if self.params.stereo:
            shape = (speak.shape[0], 2)
            frame = np.empty(shape, np.int16) if direction == "both" else np.zeros(shape, np.int16)
            if direction != "listen":
                frame[:, 0] = speak
            if direction != "speak":
                frame[:, 1] = listen
            return frame
        if direction == "speak":
            return speak.astype(np.int16, copy=True)
        if direction == "listen":
            return listen.astype(np.int16, copy=True)
        mix = self._mix if speak.shape == self._mix.shape else np.empty(speak.shape, np.int32)
        np.add(speak, listen, out=mix, dtype=np.int32)
        np.minimum(mix, 32767, out=mix)  # saturate (cheaper than np.clip on 160 samples)
        np.maximum(mix, -32768, out=mix)
        return mix.astype(np.int16)

    def _feed_recording(self, speak: np.ndarray, listen: np.ndarray) -> list[np.ndarray]:
        frame = self._frame(speak, listen)
        in_speech = self._detector.feed(listen if self._detect_listen else speak)
        started = self._detector.speech_started
        out: list[np.ndarray]
        if in_speech:
            out = self._take_held()
            out.append(frame)
            self._silence_run = 0
        elif started:
            self._silence_run += 1
            if self._end_silence_frames and self._silence_run > HANGOVER_FRAMES:
                self._held.append(frame)
                out = []
            else:
                out = [frame]
        else:
            self._waited += 1
            out = [frame]
        self._frames_out += len(out)

        if started and self._end_silence_frames and self._silence_run >= self._end_silence_frames:
            self._held.clear()  # trim: the file ends HANGOVER_FRAMES after the last speech
            self._set(RecState.FINISHED)
        elif self._max_frames and self._frames_out + len(self._held) >= self._max_frames:
            out.extend(self._end(RecState.FINISHED))
        elif self._initial_frames and not started and self._waited >= self._initial_frames:
            self._set(RecState.NO_INPUT)
        return out
