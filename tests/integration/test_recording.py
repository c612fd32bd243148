"""Every recording parameter on real calls, with the files decoded and checked as audio.

Callers are sipp (stream + RFC 4733 digits) and our own UAC (`place_call`, the engine of
`callbox call`); the platform records through SWML routes. Caller audio is a 700 Hz tone, the
platform's is a 1000 Hz tone, so each side is recognisable in the file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from tests.integration.conftest import running_platform
from tests.peers import audio
from tests.peers.ports import free_port_range
from tests.peers.sipp import g711_stream, run_sipp

from callbox.caller import place_call
from callbox.server.config import Route

pytestmark = pytest.mark.peers

CALLER_HZ, PLATFORM_HZ = 700, 1000
WAV_TOLERANCE = 0.02  # seconds
MP3_TOLERANCE = 0.3  # encoder delay and padding: up to 3 MPEG frames of 72 ms at 8 kHz


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


def route(number: str, *verbs: object) -> Route:
    return Route(number, swml=swml(*verbs))


def wav_file(tmp_path: Path, name: str, *parts: np.ndarray) -> str:
    path = tmp_path / name
    audio.write_wav(path, audio.concat(*parts))
    return str(path)


async def finished_recordings(running, index: int = 0) -> list:
    seen = await running.wait_call_ended(index, timeout=30)
    recordings = list(seen.call.recordings)
    for recording in recordings:
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    return recordings


def decode(recording) -> np.ndarray:
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000
    return samples


def level(x: np.ndarray, hz: float) -> float:
    return audio.tone_level_dbfs(x, hz)


# -- direction, stereo, format --------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "stereo", "direction"), [
    ("wav", True, "both"), ("wav", False, "both"), ("mp3", True, "both"),
    ("mp3", False, "speak"), ("wav", False, "listen"), ("wav", True, "speak"),
])
async def test_direction_stereo_and_format(tmp_path, fmt, stereo, direction):
    """Left = what the caller says (speak), right = what the caller hears (listen)."""
    params = {"format": fmt, "stereo": stereo, "direction": direction, "control_id": "main"}
    routes = [route("rec", {"answer": {}}, {"record_call": params},
                    {"play": {"url": f"tone:{PLATFORM_HZ}:2"}}, {"sleep": 60_000})]
    caller_audio = wav_file(tmp_path, "caller.wav", audio.tone(CALLER_HZ, 2.0, dbfs=-12))
    async with running_platform(tmp_path, routes) as running:
        result = await place_call(running.uri("rec"), play=caller_audio, hangup_after=3.0)
        assert result.status == 200
        (recording,) = await finished_recordings(running)
    assert recording.state == "finished"
    assert recording.control_id == "main"
    assert recording.path.suffix == f".{fmt}" and recording.path.exists()
    samples = decode(recording)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    assert channels == (2 if stereo else 1)
    tolerance = WAV_TOLERANCE if fmt == "wav" else MP3_TOLERANCE
    assert abs(len(samples) / 8000 - recording.duration) <= tolerance
    # the whole call after record_call started: the caller hangs up 3 s (or, when busy, later)
    # after the answer; no more than the platform's own start..end
    assert 2.8 <= recording.duration <= recording.end_time - recording.start_time + 0.1
    head = samples[4000:12000]  # 0.5-1.5 s: both tones are on
    if stereo:
        left, right = head[:, 0], head[:, 1]
        if direction in ("both", "speak"):
            assert level(left, CALLER_HZ) > -16 and level(left, PLATFORM_HZ) < -40
        if direction == "both":
            assert level(right, PLATFORM_HZ) > -16 and level(right, CALLER_HZ) < -40
        if direction == "speak":
            assert audio.rms_dbfs(right) < -60  # the other side is silence
    else:
        caller_in = level(head, CALLER_HZ) > -16
        platform_in = level(head, PLATFORM_HZ) > -16
        assert caller_in == (direction in ("both", "speak"))
        assert platform_in == (direction in ("both", "listen"))
    tail = samples[int(2.4 * 8000):int(2.8 * 8000)]  # after both tones: silence was recorded
    assert audio.rms_dbfs(tail) < -45


# -- foreground record: initial_timeout, end_silence_timeout, terminators, sensitivity -------

def record_route(then: object = "hangup", **params: object) -> list[Route]:
    return [route("vm", {"answer": {}}, {"record": params}, then)]


async def test_initial_timeout_gives_no_input_and_no_file(tmp_path):
    routes = record_route(initial_timeout=1.5, end_silence_timeout=1.0, terminators="")
    async with running_platform(tmp_path, routes) as running:
        caller = wav_file(tmp_path, "silence.wav", audio.silence(5))
        result = await place_call(running.uri("vm"), play=caller, hangup_after=10)
        assert result.hung_up_by == "remote"  # the script went on to hangup
        (recording,) = await finished_recordings(running)
    assert recording.state == "no_input"
    assert not recording.path.exists() and not list(recording.path.parent.glob("*.part"))
    # 1.5 s of frames; end_time is taken once the file is gone (in a thread): allow for a busy one
    assert 1.4 <= recording.end_time - recording.start_time <= 1.5 + 0.5
    assert "url" not in recording.events[-1] or not recording.events[-1]["url"]


@pytest.mark.parametrize(("hum_dbfs", "sensitivity", "expected"), [
    (-50, 44.0, "no_input"),  # a -50 dBFS hum is not speech at the default sensitivity
    (-20, 44.0, "finished"),  # -20 dBFS is
    (-50, 60.0, "finished"),  # a more sensitive setting hears the hum
])
async def test_input_sensitivity(tmp_path, hum_dbfs, sensitivity, expected):
    routes = record_route(initial_timeout=2.0, end_silence_timeout=1.0,
                          input_sensitivity=sensitivity, terminators="")
    async with running_platform(tmp_path, routes) as running:
        caller = wav_file(tmp_path, "hum.wav", audio.tone(120, 1.5, dbfs=hum_dbfs),
                          audio.silence(3))
        await place_call(running.uri("vm"), play=caller, hangup_after=8)
        (recording,) = await finished_recordings(running)
    assert recording.state == expected


async def test_end_silence_timeout_stops_and_trims_trailing_silence(tmp_path):
    routes = record_route(end_silence_timeout=2.0, initial_timeout=3.0, terminators="")
    async with running_platform(tmp_path, routes) as running:
        speech = audio.speech("This is a voicemail message for the end silence test.")
        caller = wav_file(tmp_path, "vm.wav", audio.silence(0.5), speech, audio.silence(6))
        result = await place_call(running.uri("vm"), play=caller, hangup_after=15)
        assert result.hung_up_by == "remote"
        (recording,) = await finished_recordings(running)
    assert recording.state == "finished"
    samples = decode(recording)
    speech_end = audio.active_spans(speech, 8000, threshold_dbfs=-40)[-1][1]
    spans = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    last_speech = spans[-1][1]
    assert len(samples) / 8000 - last_speech <= 0.5  # trailing silence trimmed
    assert abs(last_speech - (0.5 + speech_end)) < 0.15  # nothing of the speech lost
    score, _ = audio.max_normalized_xcorr(samples, speech, max_lag_samples=8000)
    assert score > 0.95


async def test_terminator_digit_from_sipp_ends_the_recording(tmp_path, peer_env):
    peer_env.require_root()
    # terminators default to '#'; sipp sends its own BYE, so the route waits after recording
    routes = record_route({"sleep": 60_000}, end_silence_timeout=0, initial_timeout=0)
    tone = audio.tone(CALLER_HZ, 2.0, dbfs=-12)
    stream = g711_stream(tone, tmp_path / "tone.ulaw")
    block = free_port_range(8)
    async with running_platform(tmp_path, routes) as running:
        result = await run_sipp(
            "uac_audio_dtmf", running.target, service="vm", local_port=block.start,
            media_port=block.start + 4, keys={"stream": stream, "digits": "#"},
            extra_args=["-d", "2500"], timeout=30,
        )
        assert result.ok, result.describe()
        (recording,) = await finished_recordings(running)
        seen = running.observed[0]
        assert seen.digits == ["#"]
    assert recording.state == "finished"
    samples = decode(recording)
    # everything up to the moment the digit arrived, and nothing after it
    until_digit = seen.digit_times[0] - recording.start_time
    assert len(samples) / 8000 == pytest.approx(until_digit, abs=0.1)
    assert len(samples) / 8000 > 2.5  # the 2 s tone and the pause before the digit
    assert level(samples[800:15000], CALLER_HZ) > -16


async def test_max_length_caps_the_recording(tmp_path):
    routes = [route("rec", {"answer": {}},
                    {"record_call": {"max_length": 2, "direction": "speak"}},
                    {"sleep": 60_000})]
    async with running_platform(tmp_path, routes) as running:
        caller = wav_file(tmp_path, "tone.wav", audio.tone(CALLER_HZ, 4.0, dbfs=-12))
        await place_call(running.uri("rec"), play=caller, hangup_after=4.5)
        (recording,) = await finished_recordings(running)
    assert recording.state == "finished"
    samples = decode(recording)
    assert abs(len(samples) / 8000 - 2.0) <= WAV_TOLERANCE
    assert recording.duration == pytest.approx(2.0, abs=WAV_TOLERANCE)


async def test_beep_is_heard_and_recording_starts_after_it(tmp_path):
    routes = [route("rec", {"answer": {}},
                    {"record_call": {"beep": True, "direction": "both", "control_id": "vm"}},
                    {"sleep": 60_000})]
    heard_path = tmp_path / "heard.wav"
    async with running_platform(tmp_path, routes) as running:
        await place_call(running.uri("rec"), hangup_after=2.0, record_heard=heard_path)
        (recording,) = await finished_recordings(running)
    heard, _ = audio.read_wav(heard_path)
    spans = audio.active_spans(heard, 8000, threshold_dbfs=-30)
    assert len(spans) == 1 and 0.2 <= spans[0][1] - spans[0][0] <= 0.3
    assert abs(audio.dominant_frequency(heard) - 1000) < 10
    samples = decode(recording)
    assert level(samples, 1000) < -40  # the beep itself is not in the recording
    call = running.observed[0].call
    assert recording.start_time - call.answered_at >= 0.2  # started once the beep was played
    assert recording.duration <= recording.end_time - recording.start_time + 0.1
    assert recording.duration > 1.0


async def test_stop_record_call_by_control_id_and_last_started(tmp_path):
    routes = [route("rec", {"answer": {}},
                    {"record_call": {"control_id": "a"}},
                    {"record_call": {"control_id": "b", "format": "mp3"}},
                    {"sleep": 1000}, {"stop_record_call": {"control_id": "a"}},
                    {"sleep": 1000}, {"stop_record_call": {}},
                    {"sleep": 500}, {"hangup": {}})]
    async with running_platform(tmp_path, routes) as running:
        await place_call(running.uri("rec"), hangup_after=10)
        first, second = await finished_recordings(running)
    assert (first.control_id, second.control_id) == ("a", "b")
    assert [first.state, second.state] == ["finished", "finished"]
    # "a" stops at the first stop_record_call, "b" (the last started) at the second, a
    # (platform-timed) second later
    assert first.end_time < second.end_time
    assert 0.9 <= first.duration <= second.duration - 0.9
    for recording in (first, second):
        assert recording.duration <= recording.end_time - recording.start_time + 0.1
    assert len(decode(first)) / 8000 == pytest.approx(first.duration, abs=WAV_TOLERANCE)
    assert len(decode(second)) / 8000 == pytest.approx(second.duration, abs=MP3_TOLERANCE)


async def test_hangup_finishes_every_active_recording_with_complete_files(tmp_path):
    routes = [route("rec", {"answer": {}},
                    {"record_call": {"control_id": "one", "stereo": True}},
                    {"record_call": {"control_id": "two", "format": "mp3"}},
                    {"sleep": 60_000})]
    async with running_platform(tmp_path, routes) as running:
        caller = wav_file(tmp_path, "tone.wav", audio.tone(CALLER_HZ, 3.0, dbfs=-12))
        await place_call(running.uri("rec"), play=caller, hangup_after=2.5)
        recordings = await finished_recordings(running)
    assert [r.state for r in recordings] == ["finished", "finished"]
    for recording, tolerance in zip(recordings, (WAV_TOLERANCE, MP3_TOLERANCE), strict=True):
        samples = decode(recording)
        assert len(samples) / 8000 == pytest.approx(recording.duration, abs=tolerance)
        assert recording.duration >= 2.0  # the caller hung up 2.5 s after the answer
        assert recording.duration <= recording.end_time - recording.start_time + 0.1
        mono = samples if samples.ndim == 1 else samples[:, 0]
        assert level(mono[4000:16000], CALLER_HZ) > -16  # audio right up to the end
        assert level(mono[-4000:-800], CALLER_HZ) > -16


async def test_pause_silence_and_skip(tmp_path):
    """pause(silence) keeps the timeline with zeros; pause(skip) leaves the time out."""
    routes = [route("rec", {"answer": {}}, {"sleep": 60_000})]
    async with running_platform(tmp_path, routes) as running:
        caller = wav_file(tmp_path, "tone.wav", audio.tone(CALLER_HZ, 5.0, dbfs=-12))
        call_task = asyncio.create_task(
            place_call(running.uri("rec"), play=caller, hangup_after=4.0))
        while not running.observed or running.observed[0].call.state != "answered":
            await asyncio.sleep(0.01)
        call = running.observed[0].call
        from callbox.wire.recording import RecordParams

        engine = running.platform.recorder
        keep = await engine.start_recording(call, RecordParams.parse({}, "swml_record_call"),
                                            control_id="keep")
        skip = await engine.start_recording(call, RecordParams.parse({}, "swml_record_call"),
                                            control_id="skip")
        await asyncio.sleep(1.0)
        keep.pause("silence")
        skip.pause("skip")
        await asyncio.sleep(1.0)
        keep.resume()
        skip.resume()
        await call_task
        await asyncio.gather(keep.done, skip.done)
    states = [e["state"] for e in keep.events]
    assert states == ["recording", "paused", "recording", "finished"]
    assert keep.events[1]["pause_behavior"] == "silence"
    kept, skipped = decode(keep), decode(skip)
    spans = audio.active_spans(kept, 8000, threshold_dbfs=-40)
    assert len(spans) == 2  # tone, paused silence, tone
    paused = spans[1][0] - spans[0][1]  # the silence the platform wrote while paused
    assert paused > 0.5
    # both were paused and resumed together: "skip" left out what "silence" filled with zeros
    assert len(kept) / 8000 - len(skipped) / 8000 == pytest.approx(paused, abs=0.06)
    assert len(audio.active_spans(skipped, 8000, threshold_dbfs=-40)) == 1
