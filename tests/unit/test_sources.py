from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from callbox.server.media import sources
from callbox.server.media.sources import (
    MediaError,
    beep,
    load_audio,
    render_media_url,
    render_tts,
    ringtone,
    silence,
    tone,
)

RATE = 8000
needs_espeak = pytest.mark.usefixtures("peer_env")  # fails when a peer tool is missing
needs_sox = needs_espeak
needs_ffmpeg = needs_espeak


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level relative to a full-scale sine (AES17), as the module defines dBFS."""
    rms = math.sqrt(float(np.mean(pcm.astype(np.float64) ** 2)))
    return 20 * math.log10(rms / (32767 / math.sqrt(2))) if rms else -math.inf


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[int(np.argmax(spectrum))])


@pytest.fixture(autouse=True)
def _fresh_tts_cache() -> Iterator[None]:
    sources.clear_tts_cache()
    yield
    sources.clear_tts_cache()


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    files: dict[str, Path] = {}
    if shutil.which("sox"):
        files["wav"] = folder / "stereo16k.wav"
        subprocess.run(["sox", "-n", "-r", "16000", "-c", "2", str(files["wav"]),
                        "synth", "1.5", "sine", "440"], check=True)  # fmt: skip
        files["flac"] = folder / "mono44k.flac"
        subprocess.run(["sox", "-n", "-r", "44100", "-c", "1", str(files["flac"]),
                        "synth", "1.0", "sine", "1000"], check=True)  # fmt: skip
    if shutil.which("ffmpeg"):
        files["mp3"] = folder / "tone.mp3"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                        "-i", "sine=frequency=440:duration=2", "-ar", "22050", "-ac", "1",
                        str(files["mp3"])], check=True)  # fmt: skip
    files["garbage"] = folder / "garbage.wav"
    files["garbage"].write_bytes(b"this is not audio" * 100)
    return files


# --- generated signals -------------------------------------------------------------------------


def test_silence_is_zeros() -> None:
    pcm = silence(1.5)
    assert pcm.dtype == np.int16 and len(pcm) == 12000 and not pcm.any()
    assert len(silence(0)) == 0


@pytest.mark.parametrize("level", [-12.0, -3.0, -30.0])
def test_tone_frequency_and_level(level: float) -> None:
    pcm = tone([1000], 1.0, level)
    assert pcm.dtype == np.int16 and len(pcm) == RATE
    assert dominant_hz(pcm) == 1000.0
    assert rms_dbfs(pcm) == pytest.approx(level, abs=0.02)


def test_dual_tone_level_and_peaks() -> None:
    pcm = tone([440, 480], 2.0, -12.0)
    assert rms_dbfs(pcm) == pytest.approx(-12.0, abs=0.02)
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    top_two = sorted(float(f) for f in freqs[np.argsort(spectrum)[-2:]])
    assert top_two == [440.0, 480.0]


def test_beep() -> None:
    pcm = beep()
    assert len(pcm) == 2000
    assert dominant_hz(pcm) == 1000.0
    assert rms_dbfs(pcm) == pytest.approx(-10.0, abs=0.05)


@pytest.mark.parametrize(
    ("freqs", "seconds", "level"),
    [([5000], 1, -12), ([0], 1, -12), ([1000], -1, -12), ([1000], 1, 3), ([1, 2, 3, 4, 5], 1, -12)],
)
def test_tone_rejects(freqs: list[float], seconds: float, level: float) -> None:
    with pytest.raises(ValueError):
        tone(freqs, seconds, level)


def test_ringtone_us_cadence() -> None:
    pcm = ringtone("us", 12.0)
    assert len(pcm) == 12 * RATE
    for start in (0, 6):
        on = pcm[start * RATE : (start + 2) * RATE]
        off = pcm[(start + 2) * RATE : (start + 6) * RATE]
        assert np.count_nonzero(on) > 0.98 * len(on)  # the 40 Hz beat has zeros
        assert not off.any()
    assert dominant_hz(pcm[: 2 * RATE]) in (440.0, 480.0)


def test_ringtone_uk_cadence() -> None:
    pcm = ringtone("uk", None)
    assert len(pcm) == int(3.0 * RATE)
    bounds = np.cumsum([0, 0.4, 0.2, 0.4, 2.0]) * RATE
    segments = [pcm[int(a) : int(b)] for a, b in itertools.pairwise(bounds)]
    assert [bool(s[1:].any()) for s in segments] == [True, False, True, False]


def test_ringtone_unknown() -> None:
    with pytest.raises(ValueError):
        ringtone("xx")


# --- TTS ---------------------------------------------------------------------------------------


@needs_espeak
async def test_tts_hello_is_speech_and_cached() -> None:
    runs = sources.tts_stats.runs
    pcm = await render_tts("Hello from callbox")
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert 0.8 <= len(pcm) / RATE <= 3.0
    assert rms_dbfs(pcm) > -40.0
    assert sources.tts_stats.runs == runs + 1
    again = await render_tts("Hello from callbox")  # from the cache: espeak-ng not run again
    assert again is pcm
    assert sources.tts_stats.runs == runs + 1
    assert not pcm.flags.writeable  # shared: nobody may modify it


@needs_espeak
async def test_tts_concurrent_requests_share_one_render() -> None:
    runs = sources.tts_stats.runs
    results = await asyncio.gather(*(render_tts("shared render test") for _ in range(5)))
    assert sources.tts_stats.runs == runs + 1
    assert all(r is results[0] for r in results)


@needs_espeak
async def test_tts_voice_is_part_of_the_key() -> None:
    runs = sources.tts_stats.runs
    us = await render_tts("tomato", "en-us")
    uk = await render_tts("tomato", "en-gb")
    assert sources.tts_stats.runs == runs + 2
    assert us is not uk


@needs_espeak
async def test_tts_text_is_not_an_option(tmp_path: Path) -> None:
    target = tmp_path / "owned.wav"
    pcm = await render_tts(f"-w {target} hello")
    assert len(pcm) > 0 and not target.exists()


@needs_espeak
async def test_tts_bad_voice() -> None:
    with pytest.raises(MediaError, match="exit"):
        await render_tts("hello", "nosuchvoice")
    with pytest.raises(MediaError, match="voice"):
        await render_tts("hello", "--help")


async def test_tts_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "ESPEAK_BINARY", "espeak-ng-does-not-exist")
    with pytest.raises(MediaError, match="not installed"):
        await render_tts("hello")


def _fake_espeak(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-espeak"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_tts_failure_reports_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "ESPEAK_BINARY", _fake_espeak(tmp_path, "echo broken >&2; exit 3"))
    with pytest.raises(MediaError, match=r"exit 3.*broken"):
        await render_tts("hello")
    # a failure is neither cached nor left in flight: the next render runs espeak-ng again
    monkeypatch.setattr(sources, "ESPEAK_BINARY", _fake_espeak(tmp_path, "echo other >&2; exit 4"))
    with pytest.raises(MediaError, match=r"exit 4.*other"):
        await render_tts("hello")


async def test_tts_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "ESPEAK_BINARY", _fake_espeak(tmp_path, "exec sleep 10"))
    monkeypatch.setattr(sources, "TTS_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(MediaError, match="timed out"):
        await render_tts("hello")


@needs_espeak
async def test_tts_cancelled_waiter_does_not_cancel_the_render() -> None:
    first = asyncio.ensure_future(render_tts("cancel me not"))
    second = asyncio.ensure_future(render_tts("cancel me not"))
    await asyncio.sleep(0)
    first.cancel()
    pcm = await second
    assert len(pcm) > 0
    assert await render_tts("cancel me not") is pcm


async def test_tts_empty_text_is_empty_audio() -> None:
    assert len(await render_tts("   ")) == 0


# --- files and URLs ----------------------------------------------------------------------------


@needs_sox
async def test_load_wav_16k_stereo(audio_files: dict[str, Path]) -> None:
    pcm = await load_audio(str(audio_files["wav"]))
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert len(pcm) == pytest.approx(1.5 * RATE, abs=2)
    assert dominant_hz(pcm) == pytest.approx(440, abs=1)


@needs_sox
async def test_load_flac_and_file_url(audio_files: dict[str, Path]) -> None:
    pcm = await load_audio(audio_files["flac"].as_uri())
    assert len(pcm) == pytest.approx(RATE, abs=2)
    assert dominant_hz(pcm) == pytest.approx(1000, abs=1)


@needs_ffmpeg
async def test_load_mp3(audio_files: dict[str, Path]) -> None:
    pcm = await load_audio(str(audio_files["mp3"]))
    assert len(pcm) / RATE == pytest.approx(2.0, abs=0.06)
    assert dominant_hz(pcm) == pytest.approx(440, abs=1)


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot read"):
        await load_audio(str(tmp_path / "nope.wav"))
    with pytest.raises(MediaError):
        await load_audio((tmp_path / "nope.wav").as_uri())


async def test_undecodable_file(audio_files: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="decode"):
        await load_audio(str(audio_files["garbage"]))


async def test_unsupported_scheme() -> None:
    with pytest.raises(MediaError, match="scheme"):
        await load_audio("ftp://example.com/a.wav")


@pytest.fixture
async def http_server(audio_files: dict[str, Path]) -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in audio_files:
            raise web.HTTPNotFound()
        return web.Response(body=audio_files[name].read_bytes(), content_type="audio/x-any")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@needs_sox
async def test_http_url(http_server: str) -> None:
    pcm = await load_audio(f"{http_server}/wav")
    assert len(pcm) == pytest.approx(1.5 * RATE, abs=2)
    via_render = await render_media_url(f"{http_server}/wav")
    np.testing.assert_array_equal(pcm, via_render)


async def test_http_404(http_server: str) -> None:
    with pytest.raises(MediaError, match="404"):
        await load_audio(f"{http_server}/missing")


@needs_sox
async def test_http_size_limit(http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_AUDIO_BYTES", 1000)
    with pytest.raises(MediaError, match=r"too large|more than"):
        await load_audio(f"{http_server}/wav")


async def test_http_connection_refused_and_credentials_redacted() -> None:
    with pytest.raises(MediaError) as info:
        await load_audio("http://user:secret@127.0.0.1:9/a.wav")
    assert "secret" not in str(info.value)


# --- render_media_url --------------------------------------------------------------------------


async def test_render_silence_tone_ring() -> None:
    assert len(await render_media_url("silence:1.5")) == 12000
    assert len(await render_media_url("silence: 2")) == 16000
    short = await render_media_url("tone:1000:0.25")
    assert len(short) == 2000 and dominant_hz(short) == 1000.0
    dual = await render_media_url("tone:350+440:1")
    assert rms_dbfs(dual) == pytest.approx(-12.0, abs=0.05)
    assert len(await render_media_url("ring:us")) == 6 * RATE  # one cadence
    assert len(await render_media_url("ring:3.2:uk")) == int(3.2 * RATE)
    assert len(await render_media_url("ring:uk:1")) == RATE
    assert len(await render_media_url("ring:2")) == 2 * RATE
    assert len(await render_media_url("ringtone:uk")) == 3 * RATE
    assert len(await render_media_url("RING:1:US")) == RATE


@needs_espeak
async def test_render_say() -> None:
    pcm = await render_media_url("say:Hello from callbox")
    assert pcm is await render_tts("Hello from callbox")
    voiced = await render_media_url("say:voice=en-gb:Hello there")
    assert voiced is await render_tts("Hello there", "en-gb")


@pytest.mark.parametrize(
    "url",
    ["silence:abc", "silence:-1", "silence:1e9", "silence:nan", "tone:abc:1", "tone:9000:1",
     "tone:1000:x", "ring:zz", "ring:1:xx", "gopher://x"],
)  # fmt: skip
async def test_render_rejects(url: str) -> None:
    with pytest.raises(MediaError):
        await render_media_url(url)
