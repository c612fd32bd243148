"""Audio sources rendered to 8000 Hz mono int16 numpy arrays.

* :func:`render_tts` - text to speech with espeak-ng (cached, concurrent requests shared);
* :func:`load_audio` - WAV/MP3/FLAC/OGG from ``http(s)://``, ``file://`` or a plain path;
* :func:`silence`, :func:`tone`, :func:`beep`, :func:`ringtone` - generated signals;
* :func:`render_media_url` - all of the above behind one SWML-style URL string.

Levels are in dBFS relative to a full-scale sine (AES17): a 0 dBFS sine peaks at 32767 and has
an RMS of 32767 / sqrt(2). Decoding and resampling run in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import miniaudio  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from callbox.server.media.frames import SAMPLE_RATE

if TYPE_CHECKING:  # imported where audio is fetched: a media worker never needs it
    import aiohttp

FULL_SCALE: Final = 32767
DEFAULT_VOICE: Final = "en-us"
ESPEAK_BINARY = "espeak-ng"  # module-level so deployments/tests can point elsewhere
TTS_TIMEOUT_SECONDS: Final = 30.0
TTS_CACHE_ENTRIES: Final = 256
HTTP_TIMEOUT_SECONDS: Final = 30.0
HTTP_CONNECT_TIMEOUT_SECONDS: Final = 10.0
MAX_AUDIO_BYTES: Final = 50 * 1024 * 1024
MAX_GENERATED_SECONDS: Final = 3600.0
MAX_TONE_FREQUENCIES: Final = 4
TONE_LEVEL_DBFS: Final = -12.0
BEEP_FREQUENCY: Final = 1000.0
BEEP_SECONDS: Final = 0.25
BEEP_LEVEL_DBFS: Final = -10.0
RINGTONE_LEVEL_DBFS: Final = -16.0
_HTTP_CHUNK: Final = 64 * 1024
_VOICE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+./-]{0,63}")

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Ringtone:
    """A country's ringback tone: frequencies summed, cadence alternating on/off seconds."""

    frequencies: tuple[float, ...]
    cadence: tuple[float, ...]

    @property
    def cycle_seconds(self) -> float:
        return sum(self.cadence)


RINGTONES: Final[dict[str, Ringtone]] = {
    "us": Ringtone((440.0, 480.0), (2.0, 4.0)),
    "ca": Ringtone((440.0, 480.0), (2.0, 4.0)),
    "uk": Ringtone((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "gb": Ringtone((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "au": Ringtone((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "de": Ringtone((425.0,), (1.0, 4.0)),
    "it": Ringtone((425.0,), (1.0, 4.0)),
    "nl": Ringtone((425.0,), (1.0, 4.0)),
    "es": Ringtone((425.0,), (1.5, 3.0)),
    "fr": Ringtone((440.0,), (1.5, 3.5)),
    "jp": Ringtone((400.0,), (1.0, 2.0)),
}


class MediaError(RuntimeError):
    """Audio could not be produced: missing tool, failed fetch, undecodable file, bad URL."""


# --- generated signals -------------------------------------------------------------------------


def _sample_count(seconds: float) -> int:
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_GENERATED_SECONDS:
        raise ValueError(f"duration {seconds!r} s out of range 0-{MAX_GENERATED_SECONDS:g}")
    return round(seconds * SAMPLE_RATE)


def silence(seconds: float) -> Pcm:
    """``seconds`` of zeros."""
    return np.zeros(_sample_count(seconds), dtype=np.int16)


def tone(freqs: Sequence[float], seconds: float, level_dbfs: float = TONE_LEVEL_DBFS) -> Pcm:
    """A sum of sines (distinct frequencies, equal amplitudes) with a total RMS of ``level_dbfs``.

    Each sine starts at phase 0. Frequencies must lie in (0, 4000) Hz.
    """
    count = _sample_count(seconds)
    freqs = tuple(float(f) for f in freqs)
    if not freqs:
        return np.zeros(count, dtype=np.int16)
    if len(freqs) > MAX_TONE_FREQUENCIES:
        raise ValueError(f"at most {MAX_TONE_FREQUENCIES} frequencies")
    if any(not 0.0 < f < SAMPLE_RATE / 2 for f in freqs):
        raise ValueError(f"tone frequencies must be in (0, {SAMPLE_RATE // 2}) Hz: {freqs}")
    if not math.isfinite(level_dbfs) or level_dbfs > 0.0:
        raise ValueError(f"level {level_dbfs!r} dBFS must be <= 0")
    # sum of k sines of amplitude A has RMS A*sqrt(k/2); the target RMS is FS/sqrt(2)*10^(L/20)
    amplitude = FULL_SCALE * 10.0 ** (level_dbfs / 20.0) / math.sqrt(len(freqs))
    phase_step = np.arange(count, dtype=np.float64) * (2.0 * math.pi / SAMPLE_RATE)
    signal = np.zeros(count, dtype=np.float64)
    for freq in freqs:
        signal += np.sin(phase_step * freq)
    signal *= amplitude
    np.rint(signal, out=signal)
    np.clip(signal, -FULL_SCALE - 1, FULL_SCALE, out=signal)
    return signal.astype(np.int16)


def beep() -> Pcm:
    """The record/voicemail beep: 1000 Hz, 250 ms, -10 dBFS."""
    return tone((BEEP_FREQUENCY,), BEEP_SECONDS, BEEP_LEVEL_DBFS)


def ringtone(name: str = "us", seconds: float | None = 6.0) -> Pcm:
    """A country's ringback tone for ``seconds`` (None = exactly one cadence cycle).

    Known names: see :data:`RINGTONES` (us, ca, uk, gb, au, de, it, nl, es, fr, jp); raises
    ValueError for others.
    """
    spec = RINGTONES.get(name.strip().lower())
    if spec is None:
        raise ValueError(f"unknown ringtone {name!r}; known: {', '.join(sorted(RINGTONES))}")
    parts = [
        tone(spec.frequencies, span, RINGTONE_LEVEL_DBFS) if index % 2 == 0 else silence(span)
        for index, span in enumerate(spec.cadence)
    ]
    cycle = np.concatenate(parts)
    count = len(cycle) if seconds is None else _sample_count(seconds)
    return np.resize(cycle, count) if count else np.zeros(0, dtype=np.int16)


# --- decoding ----------------------------------------------------------------------------------


def decode_audio(data: bytes) -> Pcm:
    """WAV/MP3/FLAC/OGG-Vorbis bytes -> 8 kHz mono int16 (blocking; run it in a thread)."""
    try:
        decoded = miniaudio.decode(
            data,
            output_format=miniaudio.SampleFormat.SIGNED16,
            nchannels=1,
            sample_rate=SAMPLE_RATE,
        )
    except miniaudio.MiniaudioError as exc:
        raise MediaError(f"cannot decode audio ({len(data)} bytes): {exc}") from exc
    return np.frombuffer(decoded.samples, dtype=np.int16)


def _read_and_decode(path: Path) -> Pcm:
    try:
        size = path.stat().st_size
        if size > MAX_AUDIO_BYTES:
            raise MediaError(f"{path}: {size} bytes exceeds the {MAX_AUDIO_BYTES} byte limit")
        data = path.read_bytes()
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_audio(data)


# --- text to speech ----------------------------------------------------------------------------


@dataclass(slots=True)
class TtsStats:
    runs: int = 0  # espeak-ng processes started
    hits: int = 0  # requests answered from the cache or by joining an in-flight render


tts_stats = TtsStats()
_tts_cache: OrderedDict[tuple[str, str], Pcm] = OrderedDict()
_tts_inflight: dict[tuple[str, str], asyncio.Task[Pcm]] = {}


def clear_tts_cache() -> None:
    _tts_cache.clear()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()  # reap it, so its transport closes while the loop still runs


async def _run_espeak(text: str, voice: str) -> bytes:
    tts_stats.runs += 1
    try:
        # text goes through stdin, never argv, so it cannot be taken for an option
        proc = await asyncio.create_subprocess_exec(
            ESPEAK_BINARY,
            "--stdout",
            "-v",
            voice,
            "--stdin",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise MediaError(
            f"text-to-speech needs {ESPEAK_BINARY!r}, which is not installed or not on PATH"
        ) from None
    except OSError as exc:
        raise MediaError(f"cannot run {ESPEAK_BINARY!r}: {exc}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(
            proc.communicate(text.encode("utf-8")), TTS_TIMEOUT_SECONDS
        )
    except TimeoutError:
        await _kill(proc)
        raise MediaError(f"{ESPEAK_BINARY} timed out after {TTS_TIMEOUT_SECONDS:g} s") from None
    except BaseException:  # cancelled: do not leave the process behind
        await _kill(proc)
        raise
    if proc.returncode != 0:
        detail = stderr.decode("utf-8", "replace").strip() or "no message"
        raise MediaError(
            f"{ESPEAK_BINARY} failed (exit {proc.returncode}, voice {voice!r}): {detail}"
        )
    return stdout


async def _render_tts_uncached(key: tuple[str, str]) -> Pcm:
    text, voice = key
    wav = await _run_espeak(text, voice)
    pcm = await asyncio.to_thread(decode_audio, wav)
    pcm.flags.writeable = False  # shared by every caller through the cache
    _tts_cache[key] = pcm
    while len(_tts_cache) > TTS_CACHE_ENTRIES:
        _tts_cache.popitem(last=False)
    return pcm


def _forget_inflight(key: tuple[str, str], task: asyncio.Task[Pcm]) -> None:
    if _tts_inflight.get(key) is task:
        del _tts_inflight[key]
    if not task.cancelled():
        task.exception()  # retrieved here so an unawaited failure is not logged as lost


async def render_tts(text: str, voice: str | None = None) -> Pcm:
    """Speak ``text`` with espeak-ng (default voice ``en-us``) -> 8 kHz mono int16.

    Results are cached (LRU, by text and voice) and returned as read-only arrays shared between
    callers; concurrent requests for the same text and voice share one espeak-ng run. Raises
    MediaError if espeak-ng is missing, fails, or the voice name is malformed.
    """
    voice = (voice or DEFAULT_VOICE).strip()
    if not _VOICE_RE.fullmatch(voice):
        raise MediaError(f"bad voice name {voice!r}")
    if not text.strip():
        return np.zeros(0, dtype=np.int16)
    key = (text, voice)
    cached = _tts_cache.get(key)
    if cached is not None:
        _tts_cache.move_to_end(key)
        tts_stats.hits += 1
        return cached
    loop = asyncio.get_running_loop()
    task = _tts_inflight.get(key)
    if task is None or task.get_loop() is not loop:
        task = loop.create_task(_render_tts_uncached(key), name=f"tts:{text[:20]}")
        _tts_inflight[key] = task
        task.add_done_callback(lambda done: _forget_inflight(key, done))
    else:
        tts_stats.hits += 1
    # shield: one waiter giving up must not cancel the render the others wait for
    return await asyncio.shield(task)


# --- URLs --------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


async def _fetch(url: str, session: aiohttp.ClientSession | None) -> bytes:
    import aiohttp

    shown = _redact(url)
    timeout = aiohttp.ClientTimeout(
        total=HTTP_TIMEOUT_SECONDS, connect=HTTP_CONNECT_TIMEOUT_SECONDS
    )
    own_session = session is None
    client = aiohttp.ClientSession(timeout=timeout) if session is None else session
    try:
        async with client.get(url, timeout=timeout) as response:
            if response.status != 200:
                raise MediaError(f"GET {shown}: HTTP {response.status} {response.reason or ''}")
            if response.content_length is not None and response.content_length > MAX_AUDIO_BYTES:
                raise MediaError(f"GET {shown}: {response.content_length} bytes is too large")
            body = bytearray()
            async for chunk in response.content.iter_chunked(_HTTP_CHUNK):
                body += chunk
                if len(body) > MAX_AUDIO_BYTES:
                    raise MediaError(f"GET {shown}: more than {MAX_AUDIO_BYTES} bytes")
            return bytes(body)
    except aiohttp.ClientError as exc:
        raise MediaError(f"GET {shown} failed: {exc}") from exc
    except TimeoutError:
        raise MediaError(f"GET {shown} timed out") from None
    finally:
        if own_session:
            await client.close()


def _local_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"file URL with a remote host is not supported: {url}")
    return Path(urllib.request.url2pathname(parts.path))


async def load_audio(url: str, *, session: aiohttp.ClientSession | None = None) -> Pcm:
    """Fetch or read an audio file and decode it to 8 kHz mono int16.

    ``http://`` / ``https://`` (optionally ``user:password@`` in the URL) are fetched with aiohttp
    (``session`` if given, else a short-lived one), anything other than 200 is an error;
    ``file://`` URLs and plain paths are read from disk. Files over 50 MB are refused. All
    failures raise MediaError.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        data = await _fetch(url, session)
        return await asyncio.to_thread(decode_audio, data)
    if scheme == "file":
        path = _local_path(url)
    elif scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # path, drive letter
        path = Path(url)
    else:
        raise MediaError(f"unsupported audio URL scheme {scheme!r}: {_redact(url)}")
    return await asyncio.to_thread(_read_and_decode, path)


def _parse_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MediaError(f"bad {what} duration {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= MAX_GENERATED_SECONDS:
        raise MediaError(f"{what} duration {text!r} out of range 0-{MAX_GENERATED_SECONDS:g} s")
    return value


def _render_ring(spec: str) -> Pcm:
    country = "us"
    seconds: float | None = None
    for part in (p.strip() for p in spec.split(":")):
        if not part:
            continue
        if part[0].isdigit() or part[0] == ".":
            seconds = _parse_seconds(part, "ring")
        else:
            country = part
    try:
        return ringtone(country, seconds)
    except ValueError as exc:
        raise MediaError(str(exc)) from None


def _render_tone(spec: str) -> Pcm:
    freqs_text, _, seconds_text = spec.partition(":")
    try:
        freqs = [float(f) for f in freqs_text.split("+")]
    except ValueError:
        raise MediaError(f"bad tone frequencies {freqs_text!r}") from None
    seconds = _parse_seconds(seconds_text.strip() or "1", "tone")
    try:
        return tone(freqs, seconds)
    except ValueError as exc:
        raise MediaError(str(exc)) from None


async def render_media_url(url: str, *, session: aiohttp.ClientSession | None = None) -> Pcm:
    """Render one playable sound, SWML style, to 8 kHz mono int16.

    Supported forms (the scheme is case-insensitive, whitespace after the colon is ignored):

    * ``say:TEXT`` - espeak-ng TTS, default voice; ``say:voice=NAME:TEXT`` picks a voice;
    * ``silence:SECONDS`` - e.g. ``silence:1.5``;
    * ``tone:FREQ[+FREQ...]:SECONDS`` - sum of sines at -12 dBFS, e.g. ``tone:1000:0.25``,
      ``tone:350+440:2`` (SECONDS defaults to 1);
    * ``ring:[SECONDS:]CC`` / ``ring:CC[:SECONDS]`` / ``ring:SECONDS`` / ``ring`` and the same
      with ``ringtone:`` - country ringback (default ``us``); without SECONDS one cadence cycle
      (``ring:us`` rings once, ``ring:3.2:uk`` rings 3.2 s);
    * ``http(s)://...``, ``file://...`` or a plain path - see :func:`load_audio`.

    Raises MediaError for anything malformed or failing.
    """
    scheme, sep, rest = url.partition(":")
    kind = scheme.strip().lower() if sep else ""
    if kind == "say":
        voice = None
        text = rest
        if rest.startswith("voice="):
            voice, _, text = rest[len("voice=") :].partition(":")
        return await render_tts(text.strip(), voice or None)
    if kind == "silence":
        return silence(_parse_seconds(rest.strip(), "silence"))
    if kind == "tone":
        return _render_tone(rest.strip())
    if kind in ("ring", "ringtone"):
        return _render_ring(rest)
    if not sep and url.strip().lower() in ("ring", "ringtone"):
        return _render_ring("")
    return await load_audio(url, session=session)
