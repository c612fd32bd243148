"""Recording files, streamed to disk: WAV and MP3 writers, and crash repair.

Everything here does blocking file I/O and CPU work (MP3 encoding): call it from the recording
writer thread, never from the event loop.

A writer writes to ``<final name>.part`` and renames it to the final name on :meth:`close`, so a
file under its final name is always complete. Audio in is int16 numpy, 8000 Hz: mono ``(n,)`` or
stereo ``(n, 2)`` (written interleaved L/R). Each ``write()`` goes straight to the OS (no Python
buffer), so what was written survives a crash of the process; callers batch frames (the engine
writes every 0.5 s) to keep the syscall count low.

* WAV: RIFF PCM 16-bit. The header's sizes are rewritten every ``header_interval`` seconds of
  audio, so a crashed recording is playable up to the last rewrite (and :func:`repair_partial`
  recovers it all). RIFF cannot describe more than 4 GiB: a write that would pass that raises
  :class:`RecordingFull` after writing what fits; the header stays right.
* MP3: lameenc (LAME), constant bitrate, MPEG-2.5 layer III at 8000 Hz.

After a failed write (ENOSPC, EIO ...) further writes are refused; :meth:`AudioWriter.close`
still finishes the file with what reached the disk (a trailing partial sample frame or MP3 frame
is cut), and :meth:`AudioWriter.abort` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import lameenc  # type: ignore[import-not-found]
import numpy as np

from callbox.server.media.frames import SAMPLE_RATE

SAMPLE_WIDTH: Final = 2  # bytes, int16
PART_SUFFIX: Final = ".part"
FORMATS: Final = ("wav", "mp3")

WAV_HEADER_SIZE: Final = 44
# The RIFF chunk size (a uint32) counts 36 header bytes plus the data.
WAV_MAX_DATA_BYTES: Final = 0xFFFFFFFF - 36
_WAV_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")
_WAV_PCM: Final = 1

# LAME's algorithm quality (0 best/slowest .. 9 worst/fastest). Measured with lameenc on 8 kHz
# mono in 20 ms chunks (docs testing-with-real-peers.md): ~500x real time per CPU-second at q=2,
# ~1,700x at q=5, ~2,300x at q=7. q=5 keeps 1,000 concurrent mono MP3 recordings under one core
# while sounding the same as q=2 on narrow-band telephone speech; q=7 saves little and is audibly
# worse.
MP3_QUALITY: Final = 5
MP3_DEFAULT_KBPS: Final = {1: 32, 2: 64}
# Bitrates MPEG-2/2.5 layer III allows (kbit/s); 8000 Hz is MPEG-2.5.
MP3_BITRATES_KBPS: Final = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


class RecordingFull(OSError):
    """The file reached the largest size its format can describe (4 GiB for WAV)."""


@dataclass(frozen=True)
class RepairedFile:
    """A recording that :func:`repair_partial` finished after a crash."""

    final_path: Path
    format: str
    channels: int
    duration: float
    size: int


class AudioWriter(Protocol):
    final_path: Path
    temp_path: Path
    channels: int
    frames_written: int  # sample frames (one sample per channel)
    bytes_written: int  # bytes in the file so far, header included

    def write(self, pcm: np.ndarray) -> None: ...

    def close(self) -> int:
        """Finish the file, fsync, rename temp -> final; returns the final size in bytes."""
        ...

    def abort(self) -> None:
        """Close and remove the temporary file (nothing is kept)."""
        ...

    @property
    def duration(self) -> float: ...


def part_path(final_path: Path) -> Path:
    """``abc.wav`` -> ``abc.wav.part``."""
    return final_path.with_name(final_path.name + PART_SUFFIX)


def open_writer(fmt: str, final_path: Path, channels: int) -> AudioWriter:
    """A writer for `fmt` ("wav" or "mp3") with its defaults."""
    if fmt == "wav":
        return WavWriter(final_path, channels)
    if fmt == "mp3":
        return Mp3Writer(final_path, channels)
    raise ValueError(f"format must be 'wav' or 'mp3', got {fmt!r}")


# -- the common part: one file descriptor, temp name, atomic rename ---------------------------


class _StreamedFile:
    def __init__(self, final_path: Path, channels: int) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        self.final_path = Path(final_path)
        self.temp_path = part_path(self.final_path)
        self.channels = channels
        self.frames_written = 0
        self.bytes_written = 0
        self._failed: OSError | None = None
        self._fd: int | None = os.open(
            self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
        )

    @property
    def duration(self) -> float:
        return self.frames_written / SAMPLE_RATE

    def _samples(self, pcm: np.ndarray) -> bytes:
        """Validate the block's shape and return it as little-endian interleaved bytes."""
        mono_ok = pcm.ndim == 1 and self.channels == 1
        stereo_ok = pcm.ndim == 2 and pcm.shape[1] == self.channels == 2
        if not (mono_ok or stereo_ok):
            want = "(n,)" if self.channels == 1 else "(n, 2)"
            raise ValueError(f"expected audio of shape {want}, got {pcm.shape}")
        if pcm.dtype.kind != "i" or pcm.dtype.itemsize != SAMPLE_WIDTH:
            raise ValueError(f"expected int16 audio, got {pcm.dtype}")
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()

    def _check_writable(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.temp_path} is closed")
        if self._failed is not None:
            raise OSError(
                self._failed.errno,
                f"an earlier write failed ({self._failed.strerror}); close() or abort()",
                str(self.temp_path),
            )
        return self._fd

    def _append(self, data: bytes) -> None:
        """Write all of `data` at the end; `bytes_written` counts what reached the OS."""
        fd = self._check_writable()
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view)
                if n == 0:  # pragma: no cover - regular files do not do this
                    raise OSError(errno.EIO, "write returned 0", str(self.temp_path))
                self.bytes_written += n
                view = view[n:]
        except OSError as exc:
            self._failed = exc
            raise

    def _commit(self) -> int:
        """fsync, close, rename temp -> final (and fsync the directory). Returns the size."""
        fd = self._fd
        assert fd is not None
        os.fsync(fd)
        self._fd = None
        os.close(fd)
        os.replace(self.temp_path, self.final_path)
        _fsync_dir(self.final_path.parent)
        return self.bytes_written

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.temp_path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable. Best effort: some file systems refuse fsync on directories."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- WAV ------------------------------------------------------------------------------------


def wav_header(channels: int, data_bytes: int) -> bytes:
    """The canonical 44-byte RIFF/WAVE header for 16-bit PCM at 8000 Hz."""
    block_align = channels * SAMPLE_WIDTH
    return _WAV_HEADER.pack(
        b"RIFF", 36 + data_bytes, b"WAVE",
        b"fmt ", 16, _WAV_PCM, channels, SAMPLE_RATE, SAMPLE_RATE * block_align, block_align,
        8 * SAMPLE_WIDTH,
        b"data", data_bytes,
    )


class WavWriter(_StreamedFile):
    """RIFF PCM 16-bit 8 kHz, header sizes rewritten every `header_interval` s of audio.

    `max_data_bytes` is the RIFF limit; tests lower it.
    """

    def __init__(self, final_path: Path, channels: int, header_interval: float = 2.0, *,
                 max_data_bytes: int = WAV_MAX_DATA_BYTES) -> None:
        super().__init__(final_path, channels)
        self._block_align = channels * SAMPLE_WIDTH
        self._header_every = max(1, round(header_interval * SAMPLE_RATE))
        self._frames_in_header = 0
        limit = min(max_data_bytes, WAV_MAX_DATA_BYTES)
        self._max_data_bytes = limit - limit % self._block_align
        try:
            self._append(wav_header(channels, 0))
        except OSError:
            self.abort()
            raise

    @property
    def data_bytes(self) -> int:
        return max(0, self.bytes_written - WAV_HEADER_SIZE)

    def write(self, pcm: np.ndarray) -> None:
        data = self._samples(pcm)
        self._check_writable()
        room = self._max_data_bytes - self.data_bytes
        full = len(data) > room
        if full:
            data = data[:room]
        try:
            if data:
                self._append(data)
        finally:
            self.frames_written = self.data_bytes // self._block_align
        if full:
            self._write_header()
            raise RecordingFull(
                errno.EFBIG,
                f"a WAV file holds at most {self._max_data_bytes} bytes of audio",
                str(self.temp_path),
            )
        if self.frames_written - self._frames_in_header >= self._header_every:
            self._write_header()

    def _write_header(self) -> None:
        """Rewrite the RIFF and data sizes in place (pwrite: the append position is kept)."""
        assert self._fd is not None
        os.pwrite(self._fd, wav_header(self.channels, self.frames_written * self._block_align), 0)
        self._frames_in_header = self.frames_written

    def close(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.temp_path} is closed")
        whole = WAV_HEADER_SIZE + self.frames_written * self._block_align
        if self.bytes_written != whole:  # a failed write left part of a sample frame
            os.ftruncate(self._fd, whole)
            self.bytes_written = whole
        self._write_header()
        return self._commit()


# -- MP3 ------------------------------------------------------------------------------------


class Mp3Writer(_StreamedFile):
    """Constant-bitrate MP3 (MPEG-2.5 layer III, 8000 Hz), encoded as it is written.

    Default bitrate: 32 kbit/s mono, 64 kbit/s stereo. `duration` counts the audio written in;
    decoders report about 0.15 s more (encoder delay and padding of the last frame).
    """

    def __init__(self, final_path: Path, channels: int, bitrate: int | None = None, *,
                 quality: int = MP3_QUALITY) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels!r}")
        kbps = MP3_DEFAULT_KBPS[channels] if bitrate is None else bitrate
        if kbps not in MP3_BITRATES_KBPS:
            raise ValueError(f"MP3 bitrate at 8000 Hz must be one of {MP3_BITRATES_KBPS} "
                             f"kbit/s, got {bitrate!r}")
        super().__init__(final_path, channels)
        self.bitrate = kbps
        encoder = lameenc.Encoder()
        encoder.set_in_sample_rate(SAMPLE_RATE)
        encoder.set_out_sample_rate(SAMPLE_RATE)
        encoder.set_channels(channels)
        encoder.set_bit_rate(kbps)
        encoder.set_quality(quality)
        self._encoder = encoder

    def write(self, pcm: np.ndarray) -> None:
        data = self._samples(pcm)
        self._check_writable()
        if not data:
            return
        encoded = self._encoder.encode(data)
        self.frames_written += len(data) // (self.channels * SAMPLE_WIDTH)
        if encoded:
            self._append(bytes(encoded))

    def close(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.temp_path} is closed")
        if self._failed is None:
            tail = self._encoder.flush()
            if tail:
                self._append(bytes(tail))
        else:  # keep what reached the disk, up to the last whole MP3 frame
            try:
                scan = scan_mp3(self.temp_path)
            except ValueError:
                raise OSError(self._failed.errno, "no complete MP3 frame reached the disk "
                              f"({self._failed.strerror})", str(self.temp_path)) from None
            os.ftruncate(self._fd, scan.end)
            self.bytes_written = scan.end
            self.frames_written = min(self.frames_written, scan.samples)
        return self._commit()


@dataclass(frozen=True)
class Mp3FrameHeader:
    """The fields of a layer III frame header that locate the next frame."""

    version: int  # 10 = MPEG-1, 20 = MPEG-2, 25 = MPEG-2.5
    sample_rate: int
    bitrate: int  # bit/s
    channels: int
    length: int  # bytes, header included
    samples: int  # sample frames decoded from this frame


_MP3_VERSIONS: Final = {0: 25, 2: 20, 3: 10}  # header bits -> version; 1 is reserved
_MP3_RATES: Final = {10: (44100, 48000, 32000), 20: (22050, 24000, 16000),
                     25: (11025, 12000, 8000)}
_L3_KBPS_V1: Final = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_L3_KBPS_V2: Final = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def parse_mp3_frame_header(header: bytes) -> Mp3FrameHeader | None:
    """Parse 4 bytes as an MPEG layer III frame header; None when they are not one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = _MP3_VERSIONS.get((header[1] >> 3) & 3)
    layer = (header[1] >> 1) & 3
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 3
    if version is None or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    kbps = (_L3_KBPS_V1 if version == 10 else _L3_KBPS_V2)[bitrate_index]
    sample_rate = _MP3_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    channels = 1 if header[3] >> 6 == 3 else 2
    per_frame = 1152 if version == 10 else 576
    length = per_frame // 8 * kbps * 1000 // sample_rate + padding
    return Mp3FrameHeader(version, sample_rate, kbps * 1000, channels, length, per_frame)


@dataclass(frozen=True)
class Mp3Scan:
    first: Mp3FrameHeader
    frames: int
    samples: int  # sample frames the whole frames decode to
    end: int  # offset just after the last whole frame


def scan_mp3(path: Path) -> Mp3Scan:
    """Walk the frames of an MP3 file; stops at a partial or inconsistent frame.

    Raises ValueError when the file does not start with an MPEG layer III frame (an ID3v2 tag
    before it is skipped).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4:
            raise ValueError(f"{path} is not an MP3 recording: {size} bytes")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            pos = 0
            if data[:3] == b"ID3" and size >= 10:
                tag = data[6:10]
                pos = 10 + (tag[0] << 21 | tag[1] << 14 | tag[2] << 7 | tag[3])
            first = parse_mp3_frame_header(data[pos:pos + 4])
            if first is None:
                raise ValueError(f"{path} is not an MP3 recording: no MPEG layer III frame")
            frames = samples = 0
            header: Mp3FrameHeader | None = first
            while header is not None and pos + header.length <= size:
                frames += 1
                samples += header.samples
                pos += header.length
                header = parse_mp3_frame_header(data[pos:pos + 4])
                if header is not None and (header.version, header.sample_rate,
                                           header.channels) != (first.version,
                                                                first.sample_rate,
                                                                first.channels):
                    header = None
    if frames == 0:
        raise ValueError(f"{path} holds no complete MP3 frame")
    return Mp3Scan(first, frames, samples, pos)


# -- crash repair ---------------------------------------------------------------------------


def repair_partial(temp_path: Path) -> RepairedFile:
    """Finish a ``*.wav.part`` / ``*.mp3.part`` file a crash left behind, under its final name.

    WAV: the header's sizes are recomputed from the file size (a trailing partial sample frame is
    dropped). MP3: a trailing partial frame is cut; the duration is what the frames decode to.
    Raises ValueError for a file that is not a recording of ours.
    """
    temp_path = Path(temp_path)
    name = temp_path.name
    if not name.endswith(PART_SUFFIX):
        raise ValueError(f"{temp_path} is not a partial recording (no {PART_SUFFIX} suffix)")
    final_path = temp_path.with_name(name[: -len(PART_SUFFIX)])
    fmt = final_path.suffix.lstrip(".").lower()
    if fmt == "wav":
        channels, duration, size = _repair_wav(temp_path)
    elif fmt == "mp3":
        channels, duration, size = _repair_mp3(temp_path)
    else:
        raise ValueError(f"{temp_path} is not a partial recording (format must be wav or mp3)")
    os.replace(temp_path, final_path)
    _fsync_dir(final_path.parent)
    return RepairedFile(final_path, fmt, channels, duration, size)


def describe_finished(final_path: Path) -> RepairedFile:
    """What a finished recording file holds (its format, channels, duration, size), read from
    the file itself: for a recording whose end was not stored (a full disk, a crash between the
    rename and the database). Raises ValueError for a file that is not a recording of ours."""
    final_path = Path(final_path)
    fmt = final_path.suffix.lstrip(".").lower()
    if fmt == "wav":
        with open(final_path, "rb") as f:
            header = f.read(WAV_HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        channels, block_align = _wav_layout(final_path, header)
        data_bytes = min(_WAV_HEADER.unpack(header)[-1], size - WAV_HEADER_SIZE)
        duration = data_bytes // block_align / SAMPLE_RATE
        return RepairedFile(final_path, fmt, channels, duration, size)
    if fmt == "mp3":
        scan = scan_mp3(final_path)
        return RepairedFile(final_path, fmt, scan.first.channels,
                            scan.samples / scan.first.sample_rate, final_path.stat().st_size)
    raise ValueError(f"{final_path} is not a recording (format must be wav or mp3)")


def _wav_layout(path: Path, header: bytes) -> tuple[int, int]:
    """(channels, block_align) of a WAV header of ours; ValueError for anything else."""
    if len(header) < WAV_HEADER_SIZE:
        raise ValueError(f"{path} is not a WAV recording: header incomplete")
    (riff, _, wave, fmt_id, fmt_size, audio_format, channels, rate, _, block_align, bits,
     data_id, _) = _WAV_HEADER.unpack(header)
    if (riff, wave, fmt_id, data_id) != (b"RIFF", b"WAVE", b"fmt ", b"data") or (
        fmt_size, audio_format, rate, bits) != (16, _WAV_PCM, SAMPLE_RATE, 16) or (
        channels not in (1, 2) or block_align != channels * SAMPLE_WIDTH
    ):
        raise ValueError(f"{path} is not a WAV recording of ours (16-bit PCM, 8000 Hz)")
    return channels, block_align


def _repair_wav(path: Path) -> tuple[int, float, int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        channels, block_align = _wav_layout(path, os.pread(fd, WAV_HEADER_SIZE, 0))
        size = os.fstat(fd).st_size
        data_bytes = min((size - WAV_HEADER_SIZE) // block_align * block_align,
                         WAV_MAX_DATA_BYTES - WAV_MAX_DATA_BYTES % block_align)
        if size != WAV_HEADER_SIZE + data_bytes:
            os.ftruncate(fd, WAV_HEADER_SIZE + data_bytes)
        os.pwrite(fd, wav_header(channels, data_bytes), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return channels, data_bytes // block_align / SAMPLE_RATE, WAV_HEADER_SIZE + data_bytes


def _repair_mp3(path: Path) -> tuple[int, float, int]:
    scan = scan_mp3(path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != scan.end:
            os.ftruncate(fd, scan.end)
        os.fsync(fd)
    finally:
        os.close(fd)
    return scan.first.channels, scan.samples / scan.first.sample_rate, scan.end
