"""The receive timeline: decoded RTP audio placed by timestamp, played out by the media clock.

A fixed-delay playout buffer, sans-I/O. :meth:`ReceiveBuffer.push` writes each packet's decoded
samples into a ring at the position its RTP timestamp gives; :meth:`ReceiveBuffer.pop_frame`
(called every 20 ms by the media clock) reads the next frame and clears it. Because positions
come from timestamps, reordering within the delay is undone for free, losses become exact
stretches of silence, and any packet size works. The ring covers ``capacity_frames`` frames
ahead of the playout point; everything is relative to that point, so RTP timestamp
wraparound at 2**32 needs no special case.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from callbox.server.media.frames import FRAME_SAMPLES, TIMESTAMP_MASK

HALF_TIMESTAMP_RANGE: Final = 1 << 31
LATE_PACKETS_BEFORE_RESYNC: Final = 3


class ReceiveBuffer:
    """Fixed-delay receive buffer for one call leg.

    * The first packet anchors the timeline so that the first ``delay_frames`` pops after it
      return silence; that delay absorbs jitter and reordering.
    * Packets land at their timestamp; gaps (losses) stay silent; duplicates rewrite the same
      samples. A packet partly behind the playout point keeps its part still ahead.
    * Packets entirely behind the playout point are dropped (``late``). After
      ``LATE_PACKETS_BEFORE_RESYNC`` consecutive late packets, on a timestamp jump of more than
      the capacity in either direction, or on an SSRC change, the timeline re-anchors so the
      new packet plays after the playout delay (``resyncs``). Audio already queued for the next
      ``delay_frames`` frames still plays; anything queued beyond that is discarded.

    Stats: ``packets`` (pushed), ``late`` (dropped as late), ``resyncs``, ``started``.
    """

    __slots__ = (
        "_delay_samples",
        "_frame",
        "_late_run",
        "_out",
        "_read_index",
        "_read_ts",
        "_ring",
        "_size",
        "_ssrc",
        "late",
        "packets",
        "resyncs",
        "started",
    )

    def __init__(
        self, delay_frames: int = 3, frame_samples: int = FRAME_SAMPLES,
        capacity_frames: int = 100,
    ) -> None:
        if frame_samples <= 0 or delay_frames < 0 or capacity_frames <= delay_frames:
            raise ValueError("need frame_samples > 0 and 0 <= delay_frames < capacity_frames")
        self._frame = frame_samples
        self._size = capacity_frames * frame_samples
        self._delay_samples = delay_frames * frame_samples
        self._ring = np.zeros(self._size, dtype=np.int16)
        self._out = np.zeros(frame_samples, dtype=np.int16)
        self._read_index = 0  # ring index of the next sample to play; a multiple of _frame
        self._read_ts = 0  # RTP timestamp of that sample
        self._ssrc: int | None = None
        self._late_run = 0
        self.packets = 0
        self.late = 0
        self.resyncs = 0
        self.started = False

    @property
    def delay_frames(self) -> int:
        """Frames a packet waits before it plays (what is still to play when the sender stops)."""
        return self._delay_samples // self._frame

    @property
    def frame_samples(self) -> int:
        return self._frame

    @property
    def capacity_samples(self) -> int:
        return self._size

    def push(self, ssrc: int, timestamp: int, pcm: npt.NDArray[np.int16]) -> None:
        """Place one packet's decoded samples (int16) at its RTP timestamp."""
        span = self._place(ssrc, timestamp, len(pcm))
        if span is None:
            return
        start, skip, count, _delta = span
        first = min(count, self._size - start)
        self._ring[start : start + first] = pcm[skip : skip + first]
        if first < count:
            self._ring[: count - first] = pcm[skip + first : skip + count]

    def push_g711(
        self,
        ssrc: int,
        timestamp: int,
        data: bytes,
        offset: int,
        end: int,
        table: npt.NDArray[np.int16],
    ) -> bool:
        """:meth:`push` for a G.711 payload still inside its datagram (``data[offset:end]``):
        decoded with the 256-entry ``table`` straight into the ring, with no copy of the
        payload and no intermediate array (the receive hot path).

        Returns True when the packet is *fresh*: it starts at least the playout delay ahead of
        the playout point, as a packet arriving on time does. A packet that is not fresh was
        queued for a while (or is late), so more may be waiting behind it.
        """
        count = end - offset
        if self.started and ssrc == self._ssrc and count > 0:
            # the steady state, inlined: on time, within the ring, no wrap (same result as
            # the general path below, without its calls)
            delta = ((timestamp - self._read_ts + HALF_TIMESTAMP_RANGE) & TIMESTAMP_MASK) - (
                HALF_TIMESTAMP_RANGE
            )
            start = self._read_index + delta
            if delta >= 0 and start + count <= self._size:
                self.packets += 1
                self._late_run = 0
                table.take(np.frombuffer(data, np.uint8, count, offset),
                           out=self._ring[start : start + count])
                return delta >= self._delay_samples
        span = self._place(ssrc, timestamp, count)
        if span is None:
            return False
        start, skip, count, delta = span
        codes = np.frombuffer(data, np.uint8, count, offset + skip)
        first = min(count, self._size - start)
        if first == count:
            table.take(codes, out=self._ring[start : start + count])
        else:
            table.take(codes[:first], out=self._ring[start : start + first])
            table.take(codes[first:], out=self._ring[: count - first])
        return delta >= self._delay_samples

    def _place(
        self, ssrc: int, timestamp: int, count: int
    ) -> tuple[int, int, int, int] | None:
        """Where a packet of ``count`` samples goes: (ring index, samples to skip at its head,
        samples to write, offset from the playout point), or None when nothing of it is kept."""
        self.packets += 1
        skip = 0
        if not self.started:
            self.started = True
            self._anchor(ssrc, timestamp)
            delta = self._delay_samples
        elif ssrc != self._ssrc:
            delta = self._resync(ssrc, timestamp)
        else:
            # signed distance in samples from the playout point, modulo 2**32
            delta = ((timestamp - self._read_ts + HALF_TIMESTAMP_RANGE) & TIMESTAMP_MASK) - (
                HALF_TIMESTAMP_RANGE
            )
            if delta + count > self._size or delta < -self._size:
                delta = self._resync(ssrc, timestamp)
            elif delta + count <= 0:
                self.late += 1
                self._late_run += 1
                if self._late_run < LATE_PACKETS_BEFORE_RESYNC:
                    return None
                delta = self._resync(ssrc, timestamp)
            else:
                self._late_run = 0
                if delta < 0:  # partly played out already: keep the part still ahead
                    skip = -delta
                    count += delta
                    delta = 0
        count = min(count, self._size - delta)
        if count <= 0:
            return None
        return (self._read_index + delta) % self._size, skip, count, delta

    def pop_frame(self) -> npt.NDArray[np.int16]:
        """The next ``frame_samples`` samples; that part of the ring is cleared.

        Returns a buffer owned by this object and overwritten by the next call: copy it if you
        keep it. Silence before the first packet.
        """
        out = self._out
        if not self.started:
            out.fill(0)
            return out
        index = self._read_index
        frame = self._ring[index : index + self._frame]
        out[:] = frame
        frame.fill(0)
        self._read_index = (index + self._frame) % self._size
        self._read_ts = (self._read_ts + self._frame) & TIMESTAMP_MASK
        return out

    def reset(self) -> None:
        """Forget everything (stats included): the next packet anchors a fresh timeline."""
        self._ring.fill(0)
        self._read_index = 0
        self._read_ts = 0
        self._ssrc = None
        self._late_run = 0
        self.packets = self.late = self.resyncs = 0
        self.started = False

    def _anchor(self, ssrc: int, timestamp: int) -> None:
        self._ssrc = ssrc
        self._late_run = 0
        self._read_ts = (timestamp - self._delay_samples) & TIMESTAMP_MASK

    def _resync(self, ssrc: int, timestamp: int) -> int:
        """Re-anchor on this packet; returns its offset from the playout point."""
        self.resyncs += 1
        self._anchor(ssrc, timestamp)
        # keep what is due within the playout delay, drop the rest of the old timeline
        start = (self._read_index + self._delay_samples) % self._size
        count = self._size - self._delay_samples
        first = min(count, self._size - start)
        self._ring[start : start + first] = 0
        self._ring[: count - first] = 0
        return self._delay_samples
