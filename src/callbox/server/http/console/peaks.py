"""Waveform peaks of a recording, per channel, computed on the server with numpy.

`compute_peaks` reads a WAV in blocks (an hour of stereo is 58 MB: never whole in memory) or
decodes an MP3 once with ffmpeg, and reduces each block with reshape + max, so the work is a
few numpy passes whatever the length. `PeaksCache` runs it in a thread, never on the event
loop, remembers a bounded number of results keyed by the file's identity (path, size,
mtime) and the bins asked, and lets concurrent requests for one file share one computation.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import wave
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final

import numpy as np

from callbox.server.storage.s3 import ObjectStore, ObjectStoreError

MIN_BINS: Final = 16
MAX_BINS: Final = 4000
BLOCK_FRAMES: Final = 1 << 20  # frames read at once from a WAV
CACHE_ENTRIES: Final = 256
FULL_SCALE: Final = 32768.0
FFMPEG_TIMEOUT: Final = 300.0


class PeaksError(ValueError):
    """The file's peaks cannot be computed (the message says why)."""


def peaks_of_blocks(blocks: Iterator[np.ndarray], total_frames: int, channels: int,
                    bins: int) -> np.ndarray:
    """`(channels, bins)` float32 in 0..1: the largest |sample| of each bin, from int16 blocks
    of shape (n, channels) that add up to `total_frames`."""
    peaks = np.zeros((channels, bins), np.float32)
    if total_frames <= 0:
        return peaks
    per_bin = -(-total_frames // bins)  # ceil: the last bin may be short, some may be empty
    carry = np.zeros((0, channels), np.int16)
    done = 0  # bins filled
    for block in blocks:
        data = np.concatenate((carry, block)) if len(carry) else block
        whole = len(data) // per_bin
        if whole:
            shaped = data[: whole * per_bin].reshape(whole, per_bin, channels)
            top = shaped.max(axis=1).astype(np.int32)
            bottom = shaped.min(axis=1).astype(np.int32)
            peaks[:, done:done + whole] = np.maximum(top, -bottom).T[:, : bins - done]
            done += whole
        carry = data[whole * per_bin:]
    if len(carry) and done < bins:
        top = carry.max(axis=0).astype(np.int32)
        bottom = carry.min(axis=0).astype(np.int32)
        peaks[:, done] = np.maximum(top, -bottom)
    return peaks / np.float32(FULL_SCALE)


def _wav_blocks(reader: wave.Wave_read, channels: int) -> Iterator[np.ndarray]:
    while raw := reader.readframes(BLOCK_FRAMES):
        yield np.frombuffer(raw, "<i2").reshape(-1, channels)


def wav_peaks(path: Path, bins: int) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as reader:
            if reader.getsampwidth() != 2:
                raise PeaksError(f"{path.name}: only 16-bit WAV is supported")
            channels = reader.getnchannels()
            return peaks_of_blocks(_wav_blocks(reader, channels), reader.getnframes(),
                                   channels, bins)
    except (wave.Error, EOFError) as exc:
        raise PeaksError(f"{path.name} is not a readable WAV file ({exc})") from None


def mp3_peaks(path: Path, bins: int, channels: int) -> np.ndarray:
    """Decode with ffmpeg (once, to 16-bit PCM in memory), then reduce."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise PeaksError("ffmpeg is needed for the waveform of an MP3 recording "
                         "(apt-get install ffmpeg)")
    done = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le",
         "-ac", str(channels), "-"],
        capture_output=True, timeout=FFMPEG_TIMEOUT, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise PeaksError(f"ffmpeg could not decode {path.name}: {detail[0]}")
    usable = len(done.stdout) - len(done.stdout) % (2 * channels)
    samples = np.frombuffer(done.stdout[:usable], "<i2").reshape(-1, channels)
    return peaks_of_blocks(iter((samples,)), len(samples), channels, bins)


def compute_peaks(path: Path, fmt: str, channels: int, bins: int) -> np.ndarray:
    """`(channels, bins)` peaks of a recording's file (blocking: run it in a thread)."""
    if not MIN_BINS <= bins <= MAX_BINS:
        raise PeaksError(f"bins must be from {MIN_BINS} to {MAX_BINS}, got {bins}")
    if fmt == "wav":
        return wav_peaks(path, bins)
    if fmt == "mp3":
        return mp3_peaks(path, bins, channels)
    raise PeaksError(f"format must be 'wav' or 'mp3', got {fmt!r}")


CacheKey = tuple[str, int, int, int]  # path, size, mtime_ns, bins


class PeaksCache:
    """Peaks computed in a thread, shared by concurrent requests, the last `entries` kept."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._done: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._running: dict[CacheKey, asyncio.Future[np.ndarray]] = {}

    async def peaks(self, path: Path, fmt: str, channels: int, bins: int) -> np.ndarray:
        try:
            stat = await asyncio.to_thread(path.stat)
        except OSError as exc:
            raise PeaksError(f"{path.name} cannot be read ({exc.strerror or exc})") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns, bins)
        return await self._shared(
            key, lambda: asyncio.to_thread(compute_peaks, path, fmt, channels, bins))

    async def object_peaks(self, objects: ObjectStore, key: str, size: int, fmt: str,
                           channels: int, bins: int) -> np.ndarray:
        """Peaks of a recording in the object storage (read once into a temporary file)."""
        return await self._shared((f"object:{key}", size, 0, bins),
                                  lambda: _object_peaks(objects, key, fmt, channels, bins))

    async def _shared(self, key: CacheKey,
                      compute: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        if (cached := self._done.get(key)) is not None:
            self._done.move_to_end(key)
            return cached
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(compute())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(running)

    def _finished(self, key: CacheKey, done: asyncio.Future[np.ndarray]) -> None:
        self._running.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._done[key] = done.result()
        while len(self._done) > self._entries:
            self._done.popitem(last=False)


async def _object_peaks(objects: ObjectStore, key: str, fmt: str, channels: int,
                        bins: int) -> np.ndarray:
    directory = await asyncio.to_thread(tempfile.mkdtemp, prefix="callbox-peaks-")
    path = Path(directory) / f"recording.{fmt}"
    try:
        body = await objects.get(key)
        try:
            out = await asyncio.to_thread(path.open, "wb")
            try:
                async for chunk in body.chunks():
                    await asyncio.to_thread(out.write, chunk)
            finally:
                await asyncio.to_thread(out.close)
        finally:
            body.close()
        return await asyncio.to_thread(compute_peaks, path, fmt, channels, bins)
    except ObjectStoreError as exc:
        raise PeaksError(f"{key} cannot be read from the object storage ({exc})") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)
