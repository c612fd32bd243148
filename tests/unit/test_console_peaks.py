"""Waveform peaks of recordings: per channel, the requested number of bins, WAV and MP3."""

from __future__ import annotations

import asyncio
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from tests.peers import audio

from callbox.server.http.console.peaks import (
    MAX_BINS,
    PeaksCache,
    PeaksError,
    compute_peaks,
    peaks_of_blocks,
)

RATE = 8000


def write_stereo(path: Path, left: np.ndarray, right: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(np.column_stack((left, right)).astype("<i2").tobytes())
    return path


def test_stereo_wav_left_tone_right_silence(tmp_path: Path) -> None:
    tone = audio.tone(700, 3.0, dbfs=-6)
    path = write_stereo(tmp_path / "call.wav", tone, np.zeros_like(tone))
    peaks = compute_peaks(path, "wav", 2, 300)
    assert peaks.shape == (2, 300)
    left, right = peaks
    assert left.min() > 0.45  # -6 dBFS: every bin holds a peak near 0.5
    assert left.max() <= 1.0
    assert right.max() == 0.0


def test_peaks_follow_the_audio_in_time(tmp_path: Path) -> None:
    """Tone, silence, tone: the bins of the silent middle are ~0, the others are not."""
    loud = audio.tone(500, 1.0, dbfs=-3)
    mono = np.concatenate((loud, np.zeros(RATE, np.int16), loud))
    path = tmp_path / "mono.wav"
    audio.write_wav(path, mono)
    (peaks,) = compute_peaks(path, "wav", 1, 30)
    assert peaks[:9].min() > 0.6 and peaks[21:].min() > 0.6
    assert peaks[11:19].max() == 0.0


def test_full_scale_negative_sample_is_one() -> None:
    block = np.array([[-32768], [0], [100]], np.int16)
    peaks = peaks_of_blocks(iter((block,)), 3, 1, 16)
    assert peaks[0, 0] == 1.0  # no int16 overflow in |x|


def test_bins_fill_whatever_the_block_boundaries() -> None:
    samples = (np.arange(10_007) % 2000).astype(np.int16).reshape(-1, 1)
    whole = peaks_of_blocks(iter((samples,)), len(samples), 1, 64)
    blocks = iter(np.array_split(samples, 13))
    assert np.array_equal(whole, peaks_of_blocks(blocks, len(samples), 1, 64))
    assert whole.shape == (1, 64)


def test_mp3_via_ffmpeg(tmp_path: Path) -> None:
    tone = audio.tone(700, 2.0, dbfs=-6)
    wav = write_stereo(tmp_path / "call.wav", tone, np.zeros_like(tone))
    mp3 = tmp_path / "call.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-b:a", "32k",
                    str(mp3)], check=True)
    left, right = compute_peaks(mp3, "mp3", 2, 100)
    assert len(left) == len(right) == 100
    assert np.median(left) > 0.4
    assert right.max() < 0.05


def test_hour_long_stereo_wav(tmp_path: Path) -> None:
    """An hour of stereo (58 MB) is read in blocks: a quiet tone, then one loud burst."""
    path = tmp_path / "hour.wav"
    second = (np.sin(np.arange(RATE) * 0.3) * 1000).astype(np.int16)
    block = np.column_stack((second, second // 2)).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for minute in range(60):
            out.writeframes(block * 60 if minute != 30 else
                            np.full((60 * RATE, 2), 30000, np.int16).tobytes())
    left, right = compute_peaks(path, "wav", 2, MAX_BINS)
    assert len(left) == MAX_BINS
    loud = left > 0.9
    assert loud.sum() == pytest.approx(MAX_BINS / 60, abs=2)  # the one loud minute
    assert np.flatnonzero(loud)[0] == pytest.approx(MAX_BINS / 2, abs=2)
    assert right[~loud].max() == pytest.approx(500 / 32768, abs=0.002)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    not_wav = tmp_path / "x.wav"
    not_wav.write_bytes(b"hello")
    with pytest.raises(PeaksError, match="not a readable WAV"):
        compute_peaks(not_wav, "wav", 1, 100)
    with pytest.raises(PeaksError, match="bins must be"):
        compute_peaks(not_wav, "wav", 1, 5)
    with pytest.raises(PeaksError, match="format must be"):
        compute_peaks(not_wav, "ogg", 1, 100)


async def test_cache_computes_once_and_sees_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    audio.write_wav(path, audio.tone(700, 1.0, dbfs=-6))
    cache = PeaksCache(entries=2)
    first, second = await asyncio.gather(cache.peaks(path, "wav", 1, 50),
                                         cache.peaks(path, "wav", 1, 50))
    assert first is second  # concurrent requests shared one computation
    assert await cache.peaks(path, "wav", 1, 50) is first  # and it was kept
    audio.write_wav(path, audio.silence(2.0))
    changed = await cache.peaks(path, "wav", 1, 50)
    assert changed.max() == 0.0
