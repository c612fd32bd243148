"""WAV/MP3 recording writers and crash repair, checked with real decoders (wave, sox, ffprobe,
miniaudio)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import miniaudio
import numpy as np
import pytest
from tests.peers import missing_peer

from callbox.server.recording.writers import (
    Mp3Writer,
    RecordingFull,
    WavWriter,
    open_writer,
    parse_mp3_frame_header,
    repair_partial,
    scan_mp3,
    wav_header,
)

RATE = 8000
CHUNK = 160  # 20 ms


def noise(seconds: float, channels: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (round(seconds * RATE),) if channels == 1 else (round(seconds * RATE), channels)
    return rng.integers(-20000, 20000, size=shape, dtype=np.int16)


def tone(seconds: float, freq: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16)


def write_chunks(writer: WavWriter | Mp3Writer, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), CHUNK):
        writer.write(pcm[start:start + CHUNK])


def read_wav(path: Path) -> tuple[Any, np.ndarray]:  # (wave's params namedtuple, samples)
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), dtype="<i2")
    if params.nchannels == 2:
        data = data.reshape(-1, 2)
    return params, data


def ffprobe(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_name,channels,sample_rate,duration_ts,duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["streams"][0]


def soxi(path: Path, flag: str) -> str:
    return subprocess.run(["sox", "--i", flag, str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def dominant_hz(samples: np.ndarray) -> float:
    window = samples[RATE:2 * RATE].astype(np.float64)  # one second from the middle
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    return float(np.argmax(spectrum)) * RATE / len(window)


needs_tools = pytest.mark.usefixtures("peer_env")  # sox, ffmpeg/ffprobe: fails when missing


# -- WAV ------------------------------------------------------------------------------------


@needs_tools
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_ten_seconds_decodes_exactly(tmp_path: Path, channels: int) -> None:
    final = tmp_path / "rec.wav"
    pcm = noise(10, channels)
    writer = WavWriter(final, channels)
    assert writer.temp_path == tmp_path / "rec.wav.part"
    assert writer.temp_path.exists() and not final.exists()
    write_chunks(writer, pcm)
    assert writer.frames_written == 80000 and writer.duration == 10.0
    size = writer.close()

    assert final.exists() and not writer.temp_path.exists()
    assert size == final.stat().st_size == 44 + 80000 * 2 * channels
    params, data = read_wav(final)
    assert (params.nchannels, params.sampwidth, params.framerate, params.nframes) == (
        channels, 2, RATE, 80000)
    assert np.array_equal(data, pcm)
    assert soxi(final, "-s") == "80000"
    assert soxi(final, "-c") == str(channels)
    probe = ffprobe(final)
    assert probe["codec_name"] == "pcm_s16le"
    assert int(probe["channels"]) == channels
    assert int(probe["duration_ts"]) == 80000


def test_wav_header_is_valid_while_recording(tmp_path: Path) -> None:
    pcm = noise(3, 2)
    writer = WavWriter(tmp_path / "live.wav", 2)
    write_chunks(writer, pcm)
    copy = tmp_path / "copy.wav"
    shutil.copyfile(writer.temp_path, copy)  # what a crash right now would leave

    raw = copy.read_bytes()
    riff_size, = struct.unpack_from("<I", raw, 4)
    data_size, = struct.unpack_from("<I", raw, 40)
    assert riff_size == 36 + data_size
    assert data_size % 4 == 0 and data_size <= len(raw) - 44
    params, data = read_wav(copy)
    assert params.nframes >= RATE  # at least one second is playable
    assert np.array_equal(data, pcm[:params.nframes])
    writer.abort()
    assert not writer.temp_path.exists()


def test_wav_header_rewritten_on_interval(tmp_path: Path) -> None:
    writer = WavWriter(tmp_path / "a.wav", 1, header_interval=0.5)
    writer.write(noise(0.4, 1))
    assert struct.unpack_from("<I", writer.temp_path.read_bytes(), 40)[0] == 0
    writer.write(noise(0.2, 1))
    assert struct.unpack_from("<I", writer.temp_path.read_bytes(), 40)[0] == 0.6 * RATE * 2
    writer.abort()


def test_wav_header_bytes() -> None:
    header = wav_header(2, 1000)
    assert len(header) == 44
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack_from("<HHIIHH", header, 20) == (1, 2, 8000, 32000, 4, 16)


def test_recording_full_caps_wav_with_a_right_header(tmp_path: Path) -> None:
    final = tmp_path / "full.wav"
    writer = WavWriter(final, 1, max_data_bytes=1001)  # 500 whole frames fit
    writer.write(noise(0.05, 1))  # 400 frames
    with pytest.raises(RecordingFull) as info:
        writer.write(noise(0.05, 1, seed=2))
    assert isinstance(info.value, OSError) and info.value.errno == errno.EFBIG
    assert writer.frames_written == 500
    with pytest.raises(RecordingFull):
        writer.write(noise(0.01, 1))
    assert writer.close() == 44 + 1000
    params, data = read_wav(final)
    assert params.nframes == 500
    assert np.array_equal(data[:400], noise(0.05, 1))


def test_wav_repair_after_crash_cut_at_odd_byte(tmp_path: Path) -> None:
    for channels in (1, 2):
        final = tmp_path / f"crash{channels}.wav"
        pcm = noise(3.3, channels)
        writer = WavWriter(final, channels)
        write_chunks(writer, pcm)
        frames = 12345
        cut = 44 + frames * 2 * channels + 1  # odd: a partial sample at the end
        os.truncate(writer.temp_path, cut)  # the crash: never closed

        repaired = repair_partial(writer.temp_path)
        assert repaired.final_path == final and final.exists()
        assert not writer.temp_path.exists()
        assert (repaired.format, repaired.channels) == ("wav", channels)
        assert repaired.duration == frames / RATE
        assert repaired.size == final.stat().st_size == 44 + frames * 2 * channels
        params, data = read_wav(final)
        assert params.nframes == frames and params.nchannels == channels
        assert np.array_equal(data, pcm[:frames])
        writer.abort()  # the dead writer's fd; the repaired file stays
        assert final.exists()


def test_repair_rejects_what_is_not_a_recording(tmp_path: Path) -> None:
    cases = {
        "junk.wav.part": os.urandom(200),
        "short.wav.part": b"RIFF",
        "rate.wav.part": wav_header(1, 0).replace(struct.pack("<I", 8000), struct.pack(
            "<I", 16000), 1),
        "junk.mp3.part": os.urandom(200).replace(b"\xff", b"\x00"),
        "empty.mp3.part": b"",
        "tone.ogg.part": b"OggS" + bytes(100),
        "nopart.wav": wav_header(1, 0),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError):
            repair_partial(path)
        assert path.exists()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be 'wav' or 'mp3', got 'ogg'"):
        open_writer("ogg", tmp_path / "a.ogg", 1)
    with pytest.raises(ValueError, match="channels"):
        WavWriter(tmp_path / "a.wav", 3)
    with pytest.raises(ValueError, match="bitrate"):
        Mp3Writer(tmp_path / "a.mp3", 1, bitrate=33)
    assert list(tmp_path.iterdir()) == []
    writer = open_writer("wav", tmp_path / "b.wav", 1)
    with pytest.raises(ValueError, match="shape"):
        writer.write(noise(0.02, 2))
    with pytest.raises(ValueError, match="int16"):
        writer.write(np.zeros(160, dtype=np.float32))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(noise(0.02, 1))
    with pytest.raises(ValueError, match="closed"):
        writer.close()
    writer.abort()  # after close: a no-op that keeps the finished file
    assert (tmp_path / "b.wav").exists()


# -- MP3 ------------------------------------------------------------------------------------


@needs_tools
@pytest.mark.parametrize("channels", [1, 2])
def test_mp3_ten_seconds(tmp_path: Path, channels: int) -> None:
    final = tmp_path / "rec.mp3"
    left, right = tone(10, 1000), tone(10, 500)
    pcm = left if channels == 1 else np.stack([left, right], axis=1)
    writer = open_writer("mp3", final, channels)
    assert writer.temp_path.name == "rec.mp3.part"
    write_chunks(writer, pcm)  # type: ignore[arg-type]
    assert writer.bytes_written > 0  # streamed, not held until close
    size = writer.close()
    assert writer.duration == 10.0
    assert size == final.stat().st_size and not writer.temp_path.exists()
    # Constant bitrate: 32 kbit/s mono, 64 kbit/s stereo (+ encoder padding).
    assert abs(size - (4000 if channels == 1 else 8000) * 10) < 2000

    decoded = miniaudio.mp3_read_file_s16(str(final))
    assert decoded.nchannels == channels and decoded.sample_rate == RATE
    assert abs(decoded.num_frames / RATE - 10) <= 0.2
    samples = np.frombuffer(decoded.samples, dtype=np.int16).reshape(-1, channels)
    assert abs(dominant_hz(samples[:, 0]) - 1000) < 20
    if channels == 2:
        assert abs(dominant_hz(samples[:, 1]) - 500) < 20
    probe = ffprobe(final)
    assert probe["codec_name"] == "mp3"
    assert int(probe["channels"]) == channels and probe["sample_rate"] == "8000"
    assert abs(float(probe["duration"]) - 10) <= 0.2


def test_mp3_frame_header_parse() -> None:
    header = parse_mp3_frame_header(bytes([0xFF, 0xE3, 0x48, 0xC4]))  # lameenc, 8 kHz 32k mono
    assert header is not None
    assert (header.version, header.sample_rate, header.bitrate, header.channels) == (
        25, 8000, 32000, 1)
    assert (header.length, header.samples) == (288, 576)
    assert parse_mp3_frame_header(b"RIFF") is None
    assert parse_mp3_frame_header(bytes([0xFF, 0xFB, 0x90, 0x64])).length == 417  # 44.1k 128k


def test_mp3_repair_after_crash_cut_mid_frame(tmp_path: Path) -> None:
    final = tmp_path / "crash.mp3"
    writer = Mp3Writer(final, 1)
    write_chunks(writer, tone(3, 1000))
    size = writer.temp_path.stat().st_size
    cut = size // 288 * 288 - 100  # inside the last whole frame
    os.truncate(writer.temp_path, cut)

    repaired = repair_partial(writer.temp_path)
    writer.abort()
    assert repaired.final_path == final and final.exists()
    assert (repaired.format, repaired.channels) == ("mp3", 1)
    frames = cut // 288
    assert repaired.size == final.stat().st_size == frames * 288
    assert repaired.duration == frames * 576 / RATE
    decoded = miniaudio.mp3_read_file_s16(str(final))
    assert decoded.num_frames == frames * 576
    samples = np.frombuffer(decoded.samples, dtype=np.int16)
    assert abs(dominant_hz(samples) - 1000) < 20
    assert scan_mp3(final).end == repaired.size


# -- the disk fails -------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), so that writes really fail with ENOSPC."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing_peer("mounting a tmpfs needs root")
    mountpoint = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        missing_peer(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def fill_until_enospc(writer: WavWriter | Mp3Writer, pcm: np.ndarray) -> OSError:
    for start in range(0, len(pcm), 4000):
        try:
            writer.write(pcm[start:start + 4000])
        except OSError as exc:
            return exc
    raise AssertionError("the disk never filled")


def test_wav_enospc_then_close_keeps_what_was_written(tiny_disk: Path) -> None:
    pcm = noise(30, 1)
    writer = WavWriter(tiny_disk / "a.wav", 1)
    exc = fill_until_enospc(writer, pcm)
    assert exc.errno == errno.ENOSPC and not isinstance(exc, RecordingFull)
    with pytest.raises(OSError):  # the writer refuses more after a failure
        writer.write(pcm[:160])
    frames = writer.frames_written
    assert frames > RATE
    size = writer.close()
    params, data = read_wav(tiny_disk / "a.wav")
    assert params.nframes == frames and size == 44 + 2 * frames
    assert np.array_equal(data, pcm[:frames])


def test_wav_enospc_then_abort_removes_the_file(tiny_disk: Path) -> None:
    writer = WavWriter(tiny_disk / "b.wav", 2)
    fill_until_enospc(writer, noise(30, 2))
    writer.abort()
    assert list(tiny_disk.iterdir()) == []
    # The space is back: a new recording works.
    again = WavWriter(tiny_disk / "c.wav", 2)
    again.write(noise(1, 2))
    assert again.close() == 44 + 4 * RATE


def test_mp3_enospc_then_close_keeps_whole_frames(tiny_disk: Path) -> None:
    writer = Mp3Writer(tiny_disk / "a.mp3", 1, bitrate=160)
    exc = fill_until_enospc(writer, tone(60, 1000))
    assert exc.errno == errno.ENOSPC
    size = writer.close()
    decoded = miniaudio.mp3_read_file_s16(str(tiny_disk / "a.mp3"))
    assert decoded.num_frames > RATE
    assert size == scan_mp3(tiny_disk / "a.mp3").end
    assert writer.duration <= decoded.num_frames / RATE
