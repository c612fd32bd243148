"""The rules every entry point gets from the call and the recording engine alike: the order of
notification at the end of a call, a beep that waits for the prompt, bad numbers refused with
nothing leaked, a start that fails leaving nothing open."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import numpy as np
import pytest
from tests.integration.conftest import running_platform
from tests.integration.test_relay import NO_TIMEOUTS, relay_client, relay_platform
from tests.peers import audio

from callbox.caller import place_call
from callbox.relay import Call as RelayCall
from callbox.relay import RelayError
from callbox.server.call import Call, CallState
from callbox.server.config import Route

pytestmark = pytest.mark.peers


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


def tone_spans(heard: np.ndarray, freq: float) -> list[tuple[float, float]]:
    """Where a tone of `freq` Hz is heard, in 20 ms windows (gaps < 50 ms are bridged)."""
    window = 160
    spans: list[tuple[float, float]] = []
    for index in range(len(heard) // window):
        if audio.tone_level_dbfs(heard[index * window:(index + 1) * window], freq) <= -20:
            continue
        at = index * window / 8000
        if spans and at - spans[-1][1] < 0.05:
            spans[-1] = (spans[-1][0], at + 0.02)
        else:
            spans.append((at, at + 0.02))
    return spans


def open_paths() -> list[str]:
    """What this process has open (the platform runs in it)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return paths


async def test_swml_observer_sees_every_recording_end_before_the_call_ended(tmp_path):
    """An observer subscribed before the recordings (as RELAY, SWML and the AI are) used to
    get `ended` while the recordings were still finishing."""
    routes = [Route("rec", swml=swml(
        {"answer": {}}, {"record_call": {"control_id": "a", "format": "mp3"}},
        {"record_call": {"control_id": "b", "stereo": True}}, {"sleep": 60_000}))]
    seen_at_ended: list[list[str | None]] = []

    def observe(call: Call) -> None:
        def on_state(c: Call) -> None:
            if c.state is CallState.ENDED:
                seen_at_ended.append([r.events[-1]["state"] if r.events else None
                                      for r in c.recordings])
        call.on_state(on_state)

    async with running_platform(tmp_path, routes) as running:
        running.platform.call_observers.insert(0, observe)
        tone = tmp_path / "tone.wav"
        audio.write_wav(tone, audio.tone(700, 3.0, dbfs=-12))
        await place_call(running.uri("rec"), play=str(tone), hangup_after=2)
        seen = await running.wait_call_ended()
    assert seen_at_ended == [["finished", "finished"]]
    assert [r.is_done for r in seen.call.recordings] == [True, True]


async def test_relay_client_gets_record_finished_before_call_ended(tmp_path):
    order: list[str] = []
    answered: asyncio.Future[RelayCall] = asyncio.get_running_loop().create_future()

    async def handle(call: RelayCall) -> None:
        call.on("calling.call.record",
                lambda event: order.append(f"record {event.params['state']}"))
        call.on("calling.call.state",
                lambda event: order.append(f"call {event.params['call_state']}"))
        await call.answer()
        await call.record(audio={"format": "wav", **NO_TIMEOUTS})
        await call.record(audio={"format": "mp3", **NO_TIMEOUTS})
        answered.set_result(call)

    async with relay_platform(tmp_path) as running, relay_client(running, handle):
        await place_call(running.uri("voicemail"), hangup_after=2)
        call = await asyncio.wait_for(answered, 10)
        await call.wait_for_ended(timeout=15)
    ended = order.index("call ended")
    assert order.count("record finished") == 2
    assert all(order.index(e) < ended for e in order if e.startswith("record"))


async def test_swml_beep_waits_for_the_prompt_playing_on_the_call(tmp_path):
    """The rule lived in the RELAY layer: an SWML `record_call` with a beep beeped over a
    prompt another command was playing on the call."""
    routes = [Route("beep", swml=swml(
        {"answer": {}},
        {"record_call": {"beep": True, "direction": "speak", "control_id": "vm"}},
        {"sleep": 60_000}))]
    prompt = audio.tone(500, 1.5, dbfs=-12)

    def play_prompt_on_answer(call: Call) -> None:
        def on_state(c: Call) -> None:
            if c.state is CallState.ANSWERED:  # as a REST or RELAY command would
                c.play_samples([prompt.astype(np.int16)])
        call.on_state(on_state)

    async with running_platform(tmp_path, routes) as running:
        running.platform.call_observers.append(play_prompt_on_answer)
        heard = tmp_path / "heard.wav"
        await place_call(running.uri("beep"), hangup_after=3.5, record_heard=heard)
        seen = await running.wait_call_ended()
    samples, _ = audio.read_wav(heard)
    (prompt_start, prompt_end), = tone_spans(samples, 500)
    (beep_start, beep_end), = tone_spans(samples, 1000)
    assert prompt_end - prompt_start == pytest.approx(1.5, abs=0.1)
    assert beep_start >= prompt_end - 0.02  # the beep comes after the prompt, not over it
    assert 0.2 <= beep_end - beep_start <= 0.32
    (recording,) = seen.call.recordings
    assert recording.events[0]["state"] == "recording"
    assert recording.events[-1]["state"] == "finished"


async def test_relay_record_with_a_huge_number_is_a_400_and_leaks_nothing(tmp_path):
    """max_length 1e308 (or a 4000-digit number) was a 500 that left an open file, a 0-byte
    .part, a row stuck at `recording` and a slot of the per-call limit; "10" was taken."""
    answered: asyncio.Future[RelayCall] = asyncio.get_running_loop().create_future()

    async def handle(call: RelayCall) -> None:
        await call.answer()
        answered.set_result(call)

    async with relay_platform(tmp_path) as running, relay_client(running, handle):
        caller = asyncio.ensure_future(place_call(running.uri("voicemail"), hangup_after=20))
        call = await asyncio.wait_for(answered, 10)
        for field, value in [("max_length", 1e308), ("max_length", 10**4000 - 1),
                             ("max_length", "10"), ("initial_timeout", 1e308),
                             ("end_silence_timeout", -(10**4000 - 1)),
                             ("input_sensitivity", 1e308)]:
            with pytest.raises(RelayError) as bad:
                await call.record(audio={"format": "wav", field: value})
            assert bad.value.code == 400, (field, value, bad.value.message)
            assert field in bad.value.message and len(bad.value.message) < 200
        platform_call = running.observed[0].call
        recordings_dir = tmp_path / "data" / "recordings"
        assert platform_call.recordings == ()
        assert list(recordings_dir.iterdir()) == []
        assert running.platform.recordings is not None
        assert (await running.platform.recordings.list("p1", page_size=10))[0] == []
        action = await call.record(audio={"format": "wav", "max_length": 1.0, **NO_TIMEOUTS})
        event = await asyncio.wait_for(action.wait(), 10)
        assert event.params["state"] == "finished"
        assert event.params["duration"] == pytest.approx(1.0, abs=0.03)
        await call.hangup()
        await asyncio.wait_for(caller, 10)


async def test_a_start_that_fails_ends_in_error_and_leaves_nothing_open(tmp_path):
    """The store refuses the new row: the start used to raise out of the engine, leaving the
    file open, a .part behind and the recording (and its `done`) hanging."""
    routes = [Route("rec", swml=swml({"answer": {}}, {"record_call": {"control_id": "x"}},
                                     {"sleep": 60_000}))]
    async with running_platform(tmp_path, routes) as running:
        assert running.platform.recordings is not None
        await running.platform.recordings.close()  # any store failure: closed, locked, I/O error
        task = asyncio.ensure_future(place_call(running.uri("rec"), hangup_after=3))
        while not running.observed or not running.observed[0].call.recordings:
            await asyncio.sleep(0.02)
        (recording,) = running.observed[0].call.recordings
        event = await asyncio.wait_for(asyncio.shield(recording.done), 10)
        assert event["state"] == "error"
        assert "could not start" in event["reason"]
        recordings_dir = tmp_path / "data" / "recordings"
        assert list(recordings_dir.iterdir()) == []  # no .part, no file
        assert not [p for p in open_paths() if p.startswith(str(recordings_dir))]
        assert running.observed[0].call.is_active  # the call goes on
        await task
        await running.wait_call_ended()


async def test_relay_stop_before_the_prompt_ended_gives_no_input_and_no_file(tmp_path):
    """The engine keeps a stop that arrives while a beep waits for the prompt (the RELAY layer
    used to keep it): nothing was recorded, so `no_input` and no file, and no beep."""
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def handle(call: RelayCall) -> None:
        await call.answer()
        await call.play_silence(7.0)  # a long prompt: the record reply comes before its end
        action = await call.record(audio={"format": "wav", "beep": True, **NO_TIMEOUTS})
        await action.stop()
        result.set_result(await asyncio.wait_for(action.wait(), 10))

    async with relay_platform(tmp_path) as running, relay_client(running, handle):
        heard = tmp_path / "heard.wav"
        caller = asyncio.ensure_future(place_call(running.uri("voicemail"), hangup_after=9,
                                                  record_heard=heard))
        event = await asyncio.wait_for(result, 15)
        assert event.params["state"] == "no_input"
        assert "url" not in event.params
        assert list((tmp_path / "data" / "recordings").iterdir()) == []
        await asyncio.wait_for(caller, 15)
    samples, _ = audio.read_wav(heard)
    assert tone_spans(samples, 1000) == []  # no beep
