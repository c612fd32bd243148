"""Audio fixtures and analysis for tests that exchange media with real peers.

Conventions used by every function here:

- Sample arrays are ``numpy`` arrays.  Integer arrays are in int16 full scale (32768 = 1.0);
  float arrays are taken as already normalised to [-1.0, 1.0].  Generators return ``int16``.
- Levels are RMS levels in dB relative to full scale: ``20*log10(rms / 1.0)`` on the normalised
  signal.  A full-scale sine therefore measures -3.01 dBFS, and ``tone(f, s, dbfs=-20)`` measures
  -20 dBFS with both :func:`rms_dbfs` and :func:`tone_level_dbfs`.
- Default rate is 8000 Hz mono (what G.711 carries).

Files:

- :func:`write_wav` / :func:`read_wav` use the stdlib ``wave`` module for 16-bit PCM and fall back
  to ``sox`` for anything else (float, 24-bit, u-law WAV, WAVE_FORMAT_EXTENSIBLE headers ...).
- :func:`write_raw_ulaw` / :func:`write_raw_alaw` write headerless G.711 for sipp's
  ``<exec rtp_stream="FILE,LOOPS,PT"/>`` (a WAV header would be streamed as audio).
- :func:`decode_audio` decodes mp3/wav/flac/ogg with ``miniaudio``, anything else with ffmpeg.
- :func:`speech` renders text with espeak-ng and caches the 8 kHz result on disk.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "active_spans",
    "cache_dir",
    "concat",
    "decode_audio",
    "dominant_frequency",
    "max_normalized_xcorr",
    "piece_offsets",
    "read_wav",
    "rms_dbfs",
    "silence",
    "speech",
    "tone",
    "tone_level_dbfs",
    "write_raw_alaw",
    "write_raw_ulaw",
    "write_wav",
]

RATE = 8000
_FULL_SCALE = 32768.0
# Level reported for digital silence (log of zero).
SILENCE_DBFS = -200.0


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------


def tone(freq: float, seconds: float, dbfs: float = -20.0, rate: int = RATE) -> np.ndarray:
    """A sine of ``freq`` Hz lasting ``seconds``, with RMS level ``dbfs`` (int16, mono).

    The highest level a sine can have without clipping is -3.01 dBFS.
    """
    n = round(seconds * rate)
    amplitude = math.sqrt(2.0) * 10 ** (dbfs / 20.0) * _FULL_SCALE
    t = np.arange(n, dtype=np.float64) / rate
    wave_ = amplitude * np.sin(2.0 * np.pi * freq * t)
    return np.clip(np.round(wave_), -32768, 32767).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    """``seconds`` of digital silence (int16, mono)."""
    return np.zeros(round(seconds * rate), dtype=np.int16)


def concat(*parts: np.ndarray) -> np.ndarray:
    """Join mono int16 signals end to end."""
    if not parts:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.asarray(p, dtype=np.int16).reshape(-1) for p in parts])


# --------------------------------------------------------------------------------------------
# External tools
# --------------------------------------------------------------------------------------------


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed (bash scripts/setup.sh --test installs it)")
    return path


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"
        )


def cache_dir() -> Path:
    """Directory for cached rendered fixtures (``$CALLBOX_TEST_CACHE`` or a temp subdir)."""
    root = os.environ.get("CALLBOX_TEST_CACHE")
    path = Path(root) if root else Path(tempfile.gettempdir()) / "callbox-test-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_target(path: Path) -> Path:
    """A temp path next to ``path`` (same filesystem, so ``os.replace`` is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.wav")
    os.close(fd)
    return Path(tmp)


# --------------------------------------------------------------------------------------------
# WAV and raw G.711 files
# --------------------------------------------------------------------------------------------


def write_wav(path: str | Path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    """Write 16-bit PCM WAV.  ``samples`` is 1-D (mono) or frames x channels."""
    path = Path(path)
    data = np.asarray(samples)
    if data.dtype.kind == "f":
        data = np.clip(np.round(data * _FULL_SCALE), -32768, 32767)
    data = data.astype("<i2")
    if data.ndim == 2:
        if data.shape[1] != channels:
            raise ValueError(f"samples have {data.shape[1]} channels, expected {channels}")
    elif data.ndim != 1 or (channels != 1 and data.size % channels):
        raise ValueError("samples must be 1-D or frames x channels")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def _read_pcm16_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
            raise wave.Error("not 16-bit PCM")
        channels = w.getnchannels()
        rate = w.getframerate()
        raw = w.readframes(w.getnframes())
    data = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if channels > 1:
        data = data[: data.size - data.size % channels].reshape(-1, channels)
    return data, rate


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as int16: ``(samples, rate)``.

    ``samples`` is 1-D for mono and frames x channels otherwise.  16-bit PCM is read directly;
    other encodings are converted to 16-bit PCM with sox first (rate and channels kept).
    """
    path = Path(path)
    try:
        return _read_pcm16_wav(path)
    except (wave.Error, EOFError):
        pass
    sox = _require("sox")
    with tempfile.TemporaryDirectory(prefix="callbox-wav-") as tmp:
        out = Path(tmp) / "pcm16.wav"
        _run([sox, str(path), "-b", "16", "-e", "signed-integer", str(out)])
        return _read_pcm16_wav(out)


def _write_raw_g711(path: str | Path, samples: np.ndarray, rate: int, sox_type: str) -> Path:
    path = Path(path)
    sox = _require("sox")
    with tempfile.TemporaryDirectory(prefix="callbox-g711-") as tmp:
        src = write_wav(Path(tmp) / "in.wav", np.asarray(samples).reshape(-1), rate=rate)
        _run([sox, str(src), "-r", "8000", "-c", "1", "-t", sox_type, str(path)])
    return path


def write_raw_ulaw(path: str | Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """Headerless G.711 u-law (PCMU) at 8 kHz, for sipp ``rtp_stream="FILE,LOOPS,0"``."""
    return _write_raw_g711(path, samples, rate, "ul")


def write_raw_alaw(path: str | Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """Headerless G.711 A-law (PCMA) at 8 kHz, for sipp ``rtp_stream="FILE,LOOPS,8"``."""
    return _write_raw_g711(path, samples, rate, "al")


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode mp3/wav/flac/ogg (miniaudio) or anything ffmpeg reads, at the file's own rate.

    Returns ``(int16 samples, rate)``; 1-D for mono, frames x channels otherwise.
    """
    import miniaudio

    path = Path(path)
    try:
        info = miniaudio.get_file_info(str(path))
        decoded = miniaudio.decode_file(
            str(path),
            output_format=miniaudio.SampleFormat.SIGNED16,
            nchannels=info.nchannels,
            sample_rate=info.sample_rate,
        )
    except miniaudio.DecodeError:
        ffmpeg = _require("ffmpeg")
        with tempfile.TemporaryDirectory(prefix="callbox-decode-") as tmp:
            out = Path(tmp) / "decoded.wav"
            _run(
                [
                    ffmpeg,
                    "-nostdin",
                    "-loglevel",
                    "error",
                    "-y",
                    "-i",
                    str(path),
                    "-acodec",
                    "pcm_s16le",
                    str(out),
                ]
            )
            return _read_pcm16_wav(out)
    data = np.frombuffer(decoded.samples, dtype=np.int16).copy()
    if decoded.nchannels > 1:
        data = data.reshape(-1, decoded.nchannels)
    return data, decoded.sample_rate


def speech(text: str, path: str | Path | None = None, *, voice: str = "en") -> np.ndarray:
    """``text`` spoken by espeak-ng, as 8 kHz mono int16.

    The rendering is cached in :func:`cache_dir` keyed by (voice, text), so repeated calls are
    cheap and deterministic.  When ``path`` is given, the 8 kHz WAV is also copied there.
    """
    key = hashlib.sha256(f"{voice}\0{text}".encode()).hexdigest()[:24]
    cached = cache_dir() / f"speech-{key}.wav"
    if not cached.exists():
        espeak = _require("espeak-ng")
        sox = _require("sox")
        with tempfile.TemporaryDirectory(prefix="callbox-speech-") as tmp:
            raw = Path(tmp) / "espeak.wav"
            _run([espeak, "-v", voice, "-w", str(raw), text])
            tmp_out = _atomic_target(cached)
            try:
                _run([sox, str(raw), "-r", "8000", "-c", "1", "-b", "16", str(tmp_out)])
                os.replace(tmp_out, cached)
            finally:
                tmp_out.unlink(missing_ok=True)
    if path is not None:
        shutil.copyfile(cached, path)
    samples, _rate = _read_pcm16_wav(cached)
    return samples


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def _as_float(x: np.ndarray) -> np.ndarray:
    """Mono float64 in [-1, 1] (multi-channel input is averaged)."""
    arr = np.asarray(x)
    out = arr.astype(np.float64) / _FULL_SCALE if arr.dtype.kind in "iu" else arr.astype(np.float64)
    if out.ndim == 2:
        out = out.mean(axis=1)
    return out.reshape(-1)


def _db(power_ratio_amplitude: float) -> float:
    if power_ratio_amplitude <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(power_ratio_amplitude))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS (-200.0 for empty or all-zero input)."""
    f = _as_float(x)
    if f.size == 0:
        return SILENCE_DBFS
    return _db(math.sqrt(float(np.mean(f * f))))


def tone_level_dbfs(x: np.ndarray, freq: float, rate: int = RATE) -> float:
    """RMS level (dBFS) of the ``freq`` component of ``x``, averaged over all of ``x``.

    Single-bin DFT evaluated exactly at ``freq`` (the generalised Goertzel result, computed as a
    vectorised dot product): a pure tone at ``freq`` measures its own level to within a few
    hundredths of a dB, whatever the length of ``x``.  Pass only the span that should contain
    the tone (silence around it lowers the average).
    """
    f = _as_float(x)
    n = f.size
    if n == 0:
        return SILENCE_DBFS
    phase = np.exp(-2j * np.pi * freq / rate * np.arange(n))
    amplitude = 2.0 * abs(np.dot(f, phase)) / n
    return _db(amplitude / math.sqrt(2.0))


def dominant_frequency(x: np.ndarray, rate: int = RATE) -> float:
    """Frequency (Hz) of the strongest spectral peak (Hann window, parabolic interpolation).

    DC is ignored.  Returns 0.0 for silence or input shorter than 4 samples.
    """
    f = _as_float(x)
    if f.size < 4 or not np.any(f):
        return 0.0
    f = f - f.mean()
    spectrum = np.abs(np.fft.rfft(f * np.hanning(f.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = (math.log(max(v, 1e-300)) for v in spectrum[k - 1 : k + 2])
        denom = a - 2.0 * b + c
        if denom != 0.0:
            offset = 0.5 * (a - c) / denom
    return (k + offset) * rate / f.size


def max_normalized_xcorr(
    a: np.ndarray,
    b: np.ndarray,
    max_lag_samples: int,
    *,
    min_overlap: float = 0.5,
) -> tuple[float, int]:
    """Best normalised cross-correlation of ``b`` inside ``a`` and its lag: ``(peak, lag)``.

    For every lag ``L`` in ``[-max_lag_samples, max_lag_samples]``::

        c(L) = sum_n a[n+L] * b[n] / sqrt(sum a[n+L]^2 * sum b[n]^2)

    where all sums run only over the samples where ``a`` and ``b`` overlap.  Normalising by the
    *matching span* of ``a`` (not all of ``a``) means extra leading/trailing audio or silence in
    ``a`` does not reduce the score: a recording that contains ``b`` exactly, after 0.3 s of
    silence, scores 1.0 at ``lag = +0.3*rate``.  Positive lag = ``b`` appears later in ``a``.

    Lags where the overlap is shorter than ``min_overlap * min(len(a), len(b))`` samples, or
    where either side is digital silence, are skipped (tiny overlaps correlate perfectly by
    accident).  Returns ``(0.0, 0)`` when no lag qualifies.  Computed with FFTs and cumulative
    sums: O((len(a)+len(b)) log) whatever the lag range.
    """
    fa = _as_float(a)
    fb = _as_float(b)
    na, nb = fa.size, fb.size
    if na == 0 or nb == 0:
        return 0.0, 0
    lags = np.arange(max(-max_lag_samples, -(nb - 1)), min(max_lag_samples, na - 1) + 1)
    if lags.size == 0:
        return 0.0, 0

    nfft = 1 << math.ceil(math.log2(na + nb))
    spec = np.fft.rfft(fa, nfft) * np.conj(np.fft.rfft(fb, nfft))
    full = np.fft.irfft(spec, nfft)
    numerator = full[lags % nfft]  # r[L] = sum_n a[n+L] b[n]; negative L wraps to the end.

    # Overlap for lag L: n in [n0, n1) with n0 = max(0, -L), n1 = min(nb, na - L).
    n0 = np.maximum(0, -lags)
    n1 = np.minimum(nb, na - lags)
    overlap = n1 - n0
    ca = np.concatenate(([0.0], np.cumsum(fa * fa)))
    cb = np.concatenate(([0.0], np.cumsum(fb * fb)))
    energy_a = ca[np.clip(n1 + lags, 0, na)] - ca[np.clip(n0 + lags, 0, na)]
    energy_b = cb[np.clip(n1, 0, nb)] - cb[np.clip(n0, 0, nb)]

    min_len = max(1, int(min_overlap * min(na, nb)))
    tiny = 1e-12
    valid = (overlap >= min_len) & (energy_a > tiny) & (energy_b > tiny)
    if not np.any(valid):
        return 0.0, 0
    denom = np.sqrt(np.where(valid, energy_a * energy_b, 1.0))
    score = np.where(valid, numerator / denom, -np.inf)
    best = int(np.argmax(score))
    return float(min(1.0, score[best])), int(lags[best])


def piece_offsets(
    haystack: np.ndarray,
    needle: np.ndarray,
    max_lag_samples: int,
    piece_seconds: float = 0.25,
    drift_seconds: float = 0.3,
    rate: int = RATE,
    voiced_dbfs: float = -40.0,
) -> list[tuple[float, int]]:
    """``(score, offset)`` of each voiced piece of ``needle`` in ``haystack``: where the whole
    ``needle`` would start (in samples) if that piece is where it was found.

    A recording made live may hold a short gap a starved moment inserted (the audio after it
    arrives late, and later in the file): one correlation of the whole ``needle`` then scores
    low although every word is there, in order. Pieces show it: the whole ``needle`` gives the
    anchor (its best lag within ``max_lag_samples``), then each piece is looked for within
    ``drift_seconds`` of the anchor (so a phrase said twice is not found at its repetition).
    """
    _, anchor = max_normalized_xcorr(haystack, needle, max_lag_samples)
    size = round(piece_seconds * rate)
    drift = round(drift_seconds * rate)
    out = []
    for start in range(0, len(needle) - size + 1, size):
        piece = needle[start:start + size]
        if rms_dbfs(piece) <= voiced_dbfs:
            continue  # silence between words matches anything quiet
        low = max(0, anchor + start - drift)
        window = haystack[low:anchor + start + size + drift]
        score, lag = max_normalized_xcorr(window, piece, max_lag_samples=len(window),
                                          min_overlap=1.0)
        out.append((score, low + lag - start))
    return out


def active_spans(
    x: np.ndarray,
    rate: int = RATE,
    threshold_dbfs: float = -40.0,
    frame_ms: float = 20.0,
    *,
    min_gap_ms: float = 0.0,
) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of regions whose per-frame RMS level exceeds ``threshold_dbfs``.

    The signal is cut into ``frame_ms`` frames (a last partial frame counts).  Active frames that
    touch are merged; so are spans separated by gaps shorter than ``min_gap_ms`` (useful for
    speech, which has short pauses between words).
    """
    f = _as_float(x)
    frame = max(1, round(rate * frame_ms / 1000.0))
    if f.size == 0:
        return []
    nframes = -(-f.size // frame)
    padded = np.zeros(nframes * frame)
    padded[: f.size] = f
    frames = padded.reshape(nframes, frame)
    lengths = np.full(nframes, frame, dtype=np.float64)
    lengths[-1] = f.size - (nframes - 1) * frame
    rms = np.sqrt((frames * frames).sum(axis=1) / lengths)
    threshold = 10 ** (threshold_dbfs / 20.0)
    active = rms > threshold

    spans: list[tuple[float, float]] = []
    i = 0
    while i < nframes:
        if not active[i]:
            i += 1
            continue
        j = i
        while j < nframes and active[j]:
            j += 1
        start = i * frame / rate
        end = min(j * frame, f.size) / rate
        if spans and (start - spans[-1][1]) * 1000.0 < min_gap_ms:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        i = j
    return spans
