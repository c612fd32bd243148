"""A real softphone (baresip) and our own `callbox call` CLI, against the platform and each
other. What the caller heard is checked as audio against what was played."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import pytest
from tests.integration.conftest import PROMPT_TEXT
from tests.peers import audio
from tests.peers.baresip import Baresip

from callbox.server.media.priority import MEDIA_NICE
from callbox.server.media.sources import render_tts

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")


async def callbox_call(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "call", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_baresip_hears_the_prompt(platform, peer_env):
    prompt = await render_tts(PROMPT_TEXT)
    async with Baresip() as phone:
        await phone.dial(platform.uri("prompt"))
        await phone.wait_established(timeout=10)
        closed = await phone.wait_call_closed(timeout=30)  # the platform hangs up
        heard, rate = phone.heard()
    assert rate == 8000
    assert closed["type"] == "CALL_CLOSED"
    score, _ = audio.max_normalized_xcorr(heard, prompt, max_lag_samples=16000)
    assert score > 0.9, f"baresip did not hear the prompt (xcorr {score:.2f})"
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "hangup"


async def test_callbox_call_records_what_it_heard(platform, tmp_path):
    heard_path = tmp_path / "heard.wav"
    code, out, err = await callbox_call(
        platform.uri("prompt"), "--record-heard", str(heard_path), "--hangup-after", "30"
    )
    assert code == 0, err
    assert "hung up by remote" in out
    heard, rate = audio.read_wav(heard_path)
    prompt = await render_tts(PROMPT_TEXT)
    score, _ = audio.max_normalized_xcorr(heard, prompt, max_lag_samples=16000)
    assert score > 0.9, f"callbox call did not hear the prompt (xcorr {score:.2f})"
    assert len(heard) / rate >= len(prompt) / 8000  # the whole prompt, not a part


async def test_callbox_call_plays_audio_and_sends_digits(platform, tmp_path):
    tone_path = tmp_path / "tone.wav"
    audio.write_wav(tone_path, audio.tone(700, 2.0, dbfs=-12))
    code, out, err = await callbox_call(
        platform.uri("listen"), "--play", str(tone_path), "--dtmf", "12@2.3,#@2.8",
        "--hangup-after", "3.5",
    )
    assert code == 0, err
    assert "hung up by us" in out
    seen = await platform.wait_call_ended()
    assert seen.digits == ["1", "2", "#"]
    assert seen.call.end_reason == "hangup"
    speak = seen.speak
    spans = audio.active_spans(speak, 8000, threshold_dbfs=-30)
    assert len(spans) == 1, spans  # one burst: the tone, nothing else
    start, end = spans[0]
    assert 1.9 <= end - start <= 2.1
    tone_part = speak[int(start * 8000) + 400:int(end * 8000) - 400]
    assert abs(audio.dominant_frequency(tone_part) - 700) < 5
    assert abs(audio.tone_level_dbfs(tone_part, 700) - (-12)) < 0.5


async def test_callbox_call_streams_at_the_media_priority(platform, peer_env):
    """Its audio has a deadline every 20 ms: on a loaded machine a caller at the ordinary
    priority sends late, and the far end drops what comes after its playout delay."""
    peer_env.require_root()  # raising a priority needs CAP_SYS_NICE
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "call", platform.uri("listen"), "--hangup-after", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stat = Path(f"/proc/{process.pid}/stat")
    niceness = []
    while process.returncode is None and (not niceness or niceness[-1] != MEDIA_NICE):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            niceness.append(int(stat.read_text().rpartition(")")[2].split()[16]))
        await asyncio.sleep(0.01)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert "hung up by us" in out.decode()
    assert niceness[-1] == MEDIA_NICE != os.getpriority(os.PRIO_PROCESS, 0)  # raised, not inherited


async def test_callbox_call_to_baresip_as_the_answering_side(tmp_path):
    played = tmp_path / "played.wav"
    audio.write_wav(played, audio.tone(1000, 2.0, dbfs=-12))
    heard_path = tmp_path / "heard.wav"
    async with Baresip(source=audio.tone(440, 5.0, dbfs=-12), auto_answer=True) as phone:
        code, out, err = await callbox_call(
            phone.uri, "--play", str(played), "--dtmf", "5@2.5", "--hangup-after", "3.5",
            "--record-heard", str(heard_path),
        )
        assert code == 0, err
        assert "hung up by us" in out
        await phone.wait_call_closed(timeout=10)  # our BYE
        baresip_heard, _ = phone.heard()
        digits = phone.received_dtmf()
    assert digits == "5"
    heard, _ = audio.read_wav(heard_path)
    assert abs(audio.dominant_frequency(heard[4000:]) - 440) < 5  # we heard baresip's tone
    assert audio.tone_level_dbfs(heard[4000:20000], 440) > -15
    assert abs(audio.dominant_frequency(baresip_heard[:12000]) - 1000) < 5  # it heard ours


async def test_callbox_call_reports_a_failed_call(platform):
    code, _, err = await callbox_call(platform.uri("nobody"), "--hangup-after", "2")
    assert code == 1
    assert "404" in err


async def test_a_bad_swml_verb_ends_the_call_cleanly(platform):
    code, out, err = await callbox_call(platform.uri("badswml"), "--hangup-after", "10")
    assert code == 0, err
    assert "hung up by remote" in out  # answered, then the platform hung up
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "error"
