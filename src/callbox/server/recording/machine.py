"""The recorder state machine, sans-I/O: frames and digits in, state changes and frames out.

No clock, no files, no event loop. The caller (the recording engine) feeds the call's two
streams once per 20 ms media tick, writes the frames it gets back, and turns the transitions
into `calling.call.record` events. Every timer counts fed frames, so it is exact.

States: `recording` -> (`paused` <-> `recording`)* -> `finished` | `no_input` | `error`.

Frame contract: audio leaves the machine ONLY as the return values of `feed()`, `digit()`,
`stop()` and `fail()`, in file order; append each returned list to the file and nothing is
lost. `pause()` and `resume()` never return audio. `feed()` takes one or more whole 20 ms
frames of each stream at once (the engine stages a few ticks: numpy then works on whole
blocks); the result is the same as feeding them one by one, except that a state change is
noticed when the block is fed. Returned arrays (blocks of whole frames) are owned by the
caller (never reused by the machine) except the shared all-zero blocks of `pause("silence")`,
which are read-only. Mono audio has shape `(n,)`, stereo `(n, 2)` (left = speak, right =
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

from callbox.server.media.frames import FRAME_SAMPLES, FRAME_SECONDS, FRAMES_PER_SECOND
from callbox.server.recording.detector import VoiceDetector
from callbox.wire.recording import PAUSE_BEHAVIORS, RecordParams

HANGOVER_FRAMES: Final = 12  # 0.24 s of silence kept after the last speech frame


class RecState(StrEnum):
    RECORDING = "recording"
    PAUSED = "paused"
    FINISHED = "finished"
    NO_INPUT = "no_input"
    ERROR = "error"


TERMINAL: Final = frozenset({RecState.FINISHED, RecState.NO_INPUT, RecState.ERROR})


def check_pause_behavior(behavior: str) -> None:
    """Raise ValueError unless `behavior` is 'silence' or 'skip'."""
    if behavior not in PAUSE_BEHAVIORS:
        raise ValueError(f"pause behavior must be 'silence' or 'skip', got {behavior!r}")


def seconds_to_frames(seconds: float) -> int:
    """Frames needed to reach `seconds` (0 = off -> 0; any positive time is >= 1 frame)."""
    if seconds <= 0:
        return 0
    return max(1, math.ceil(round(seconds * FRAMES_PER_SECOND, 6)))


def _zero_frames(channels: int, frames: int) -> np.ndarray:
    shape = (FRAME_SAMPLES * frames, 2) if channels == 2 else (FRAME_SAMPLES * frames,)
    block = np.zeros(shape, dtype=np.int16)
    block.flags.writeable = False
    return block


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
        # voice detection only matters to the timers that wait for speech or silence
        self._detects = bool(self._initial_frames or self._end_silence_frames)
        self._zeros = _zero_frames(params.channels, 1)  # grown to the largest block fed
        self._held: list[np.ndarray] = []  # one array per held frame
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

    @property
    def has_transitions(self) -> bool:
        """True when pop_transitions() has something (cheap: no list is made)."""
        return bool(self._transitions)

    def pop_transitions(self) -> list[RecState]:
        """State changes since the last call, oldest first (the first call includes RECORDING)."""
        transitions, self._transitions = self._transitions, []
        return transitions

    # -- input ----------------------------------------------------------------------------------

    def feed(self, speak: np.ndarray, listen: np.ndarray) -> list[np.ndarray]:
        """Feed the same number of whole 20 ms frames of each stream; returns the audio to
        append to the file now."""
        frames = len(speak) // FRAME_SAMPLES
        if self._state is RecState.RECORDING:
            block = self._file_block(speak, listen)
            if self._detects:
                return self._feed_detecting(block, speak, listen)
            return self._feed_plain(block, frames)
        if self._state is RecState.PAUSED and self._pause_behavior == "silence":
            out = self._take_held()
            self._frames_out += len(out)
            if self._max_frames:  # the zeros up to max_length; what is held counts first
                frames = max(0, min(frames, self._max_frames - self._frames_out))
            out.append(self._zero_block(frames))
            self._frames_out += frames
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
        check_pause_behavior(behavior)
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

    def _zero_block(self, frames: int) -> np.ndarray:
        if len(self._zeros) < frames * FRAME_SAMPLES:
            self._zeros = _zero_frames(self.params.channels, frames)
        return self._zeros[: frames * FRAME_SAMPLES]

    def _file_block(self, speak: np.ndarray, listen: np.ndarray) -> np.ndarray:
        """The file's audio for these frames (a new array)."""
        direction = self.params.direction
        if self.params.stereo:
            shape = (speak.shape[0], 2)
            block = np.empty(shape, np.int16) if direction == "both" else np.zeros(shape, np.int16)
            if direction != "listen":
                block[:, 0] = speak
            if direction != "speak":
                block[:, 1] = listen
            return block
        if direction == "speak":
            return speak.astype(np.int16, copy=True)
        if direction == "listen":
            return listen.astype(np.int16, copy=True)
        mix = np.add(speak, listen, dtype=np.int32)
        np.minimum(mix, 32767, out=mix)  # saturate (cheaper than np.clip)
        np.maximum(mix, -32768, out=mix)
        saturated: np.ndarray = mix.astype(np.int16)
        return saturated

    def _feed_plain(self, block: np.ndarray, frames: int) -> list[np.ndarray]:
        """Recording without voice detection (no timer waits for speech or silence): every
        frame goes to the file; only max_length can end it."""
        if self._max_frames:
            frames = min(frames, self._max_frames - self._frames_out)
            block = block[: frames * FRAME_SAMPLES]
        self._frames_out += frames
        if self._max_frames and self._frames_out >= self._max_frames:
            self._set(RecState.FINISHED)
        return [block]

    def _feed_detecting(self, block: np.ndarray, speak: np.ndarray,
                        listen: np.ndarray) -> list[np.ndarray]:
        """Recording with the timers that need voice detection, frame by frame: speech
        releases the held silence, a long silence ends the recording (trimmed)."""
        speech, onset = self._detector.feed_frames(listen if self._detect_listen else speak)
        out: list[np.ndarray] = []
        for index, in_speech in enumerate(speech):
            frame = block[index * FRAME_SAMPLES : (index + 1) * FRAME_SAMPLES]
            started = index >= onset
            if in_speech:
                released = self._take_held()
                out += released
                out.append(frame)
                self._frames_out += len(released) + 1
                self._silence_run = 0
            elif started:
                self._silence_run += 1
                if self._end_silence_frames and self._silence_run > HANGOVER_FRAMES:
                    self._held.append(frame)
                else:
                    out.append(frame)
                    self._frames_out += 1
            else:
                self._waited += 1
                out.append(frame)
                self._frames_out += 1

            if started and self._end_silence_frames and (
                    self._silence_run >= self._end_silence_frames):
                self._held.clear()  # trim: the file ends HANGOVER_FRAMES after the last speech
                self._set(RecState.FINISHED)
                break
            if self._max_frames and self._frames_out + len(self._held) >= self._max_frames:
                out += self._end(RecState.FINISHED)
                break
            if self._initial_frames and not started and self._waited >= self._initial_frames:
                self._set(RecState.NO_INPUT)
                break
        return out
