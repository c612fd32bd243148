"""What a call is playing: a list of audio segments read frame by frame into a mix (sans-I/O).

The media clock calls :meth:`Playback.read_into` once per 20 ms frame with the call's mix
accumulator; several playbacks add into the same accumulator, which the caller clips to int16
once. A call playing just one playback at unity gain takes :meth:`Playback.next_frame` instead:
the frame's samples and G.711 payload as slices of the shared `Sound`, with nothing computed.
State changes (pause, resume, finish) are reported through the ``on_state`` callback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.g711 import G711Codec
from callbox.server.media.sound import Sound

INT16_MIN: Final = -32768
INT16_MAX: Final = 32767

PLAYING: Final = "playing"
PAUSED: Final = "paused"
FINISHED: Final = "finished"
REASON_DONE: Final = "done"
REASON_STOPPED: Final = "stopped"

PlaybackState = Literal["playing", "paused", "finished"]

log = logging.getLogger(__name__)


class Playback:
    """Plays ``segments`` (8 kHz mono int16 arrays) back to back, ``loop`` times (0 = forever).

    The segments are not copied or modified (read-only arrays are fine); play position, pause
    and volume can change between frames. ``position_samples`` counts samples played in the
    current pass over the segments (it stays at the total once finished); ``played_samples``
    counts all samples played, across loops.
    """

    __slots__ = (
        "_gain",
        "_offset",
        "_scratch",
        "_segment",
        "_segments",
        "control_id",
        "finished_reason",
        "loop",
        "loops_completed",
        "on_state",
        "played_samples",
        "position_samples",
        "state",
        "total_samples",
        "volume_db",
    )

    def __init__(
        self,
        segments: Sequence[npt.NDArray[np.int16] | Sound],
        *,
        volume_db: float = 0.0,
        loop: int = 1,
        control_id: str = "",
    ) -> None:
        if loop < 0:
            raise ValueError(f"loop must be >= 0 (0 = forever), got {loop}")
        sounds = (s if isinstance(s, Sound) else Sound(s) for s in segments)
        self._segments: list[Sound] = [s for s in sounds if len(s)]
        self.total_samples = sum(len(s) for s in self._segments)
        self.loop = loop
        self.control_id = control_id
        self.on_state: Callable[[str], None] | None = None
        self.state: PlaybackState = PLAYING
        self.finished_reason: str | None = None
        self.position_samples = 0
        self.played_samples = 0
        self.loops_completed = 0
        self._segment = 0
        self._offset = 0
        self._scratch = np.empty(FRAME_SAMPLES, dtype=np.float32)
        self.volume_db = 0.0
        self._gain = 1.0
        self.set_volume(volume_db)

    # -- control ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop contributing audio, keeping the position. No-op unless playing."""
        if self.state == PLAYING:
            self._set_state(PAUSED)

    def resume(self) -> None:
        """Continue from where :meth:`pause` left off. No-op unless paused."""
        if self.state == PAUSED:
            self._set_state(PLAYING)

    def stop(self) -> None:
        """Finish now (``finished_reason`` "stopped"). No-op once finished."""
        if self.state != FINISHED:
            self._finish(REASON_STOPPED)

    def set_volume(self, db: float) -> None:
        """Gain in dB relative to the source (0 = unchanged, -6 = about half amplitude)."""
        if not math.isfinite(db):
            raise ValueError(f"volume {db!r} dB is not finite")
        self.volume_db = float(db)
        self._gain = 10.0 ** (db / 20.0)

    # -- the frame ----------------------------------------------------------------------------

    def read_into(self, out: npt.NDArray[np.int32]) -> bool:
        """Add the next ``len(out)`` samples, scaled by the volume, into ``out``.

        ``out`` is the caller's mix accumulator: int32 (recommended) or float. This playback's
        scaled samples are saturated to the int16 range before being added; the caller clips the
        sum of all playbacks once. A paused playback adds nothing. The final partial frame is
        added as far as it goes (the rest is silence).

        Returns False once the playback is finished - including on the call that added its last
        samples - so the caller can drop it; True while it is playing or paused.
        """
        if self.state != PLAYING:
            return self.state == PAUSED
        if not self.total_samples:
            self._finish(REASON_DONE)
            return False
        need = len(out)
        filled = 0
        while filled < need:
            samples = self._segments[self._segment].samples
            start = self._offset
            take = min(need - filled, len(samples) - start)
            self._add(out[filled : filled + take], samples[start : start + take])
            filled += take
            if not self._advance(take):
                return False
        return True

    def next_frame(self, codec: G711Codec) -> tuple[npt.NDArray[np.int16], memoryview] | None:
        """The next whole frame as it is: (samples, `codec` payload), read-only views of the
        shared sound, when this playback is playing at unity gain and the frame lies within
        one segment; None otherwise (then `read_into` mixes it). The playback may be finished
        after it (check `state`)."""
        if self.state != PLAYING or self._gain != 1.0 or not self.total_samples:
            return None
        sound = self._segments[self._segment]
        start = self._offset
        end = start + FRAME_SAMPLES
        if end > len(sound):
            return None
        frame = sound.samples[start:end], sound.encoded(codec)[start:end]
        self._advance(FRAME_SAMPLES)
        return frame

    def _advance(self, taken: int) -> bool:
        """Move on by `taken` samples of the current segment; False once finished."""
        self._offset += taken
        self.position_samples += taken
        self.played_samples += taken
        if self._offset == len(self._segments[self._segment]):
            self._offset = 0
            self._segment += 1
            if self._segment == len(self._segments):
                self._segment = 0
                self.loops_completed += 1
                if self.loop and self.loops_completed >= self.loop:
                    self._finish(REASON_DONE)
                    return False
                self.position_samples = 0
        return True

    def _add(self, dst: npt.NDArray[np.int32], src: npt.NDArray[np.int16]) -> None:
        gain = self._gain
        if gain == 1.0:
            np.add(dst, src, out=dst, casting="unsafe")
            return
        if len(src) > len(self._scratch):
            self._scratch = np.empty(len(src), dtype=np.float32)
        scratch = self._scratch[: len(src)]
        np.multiply(src, gain, out=scratch, casting="unsafe")
        np.rint(scratch, out=scratch)
        np.clip(scratch, INT16_MIN, INT16_MAX, out=scratch)
        np.add(dst, scratch, out=dst, casting="unsafe")

    # -- state --------------------------------------------------------------------------------

    def _finish(self, reason: str) -> None:
        self.finished_reason = reason
        self._set_state(FINISHED)

    def _set_state(self, state: PlaybackState) -> None:
        self.state = state
        callback = self.on_state
        if callback is not None:
            try:
                callback(state)
            except Exception:  # an event consumer's bug must not break the call's media
                log.exception("playback %r on_state(%r) callback failed", self.control_id, state)

    def __repr__(self) -> str:
        return (
            f"Playback({self.control_id!r}, {self.state}, {self.position_samples}"
            f"/{self.total_samples} samples, loop={self.loop}, {self.volume_db:+.1f} dB)"
        )
