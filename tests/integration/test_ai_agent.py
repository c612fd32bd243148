"""The `ai` verb end to end: real calls, real agents (ours and the official package's), real
speech-to-text (pocketsphinx) and TTS (espeak-ng); only the LLM is a test double, and it speaks
the OpenAI chat-completions protocol over a real socket.

- The seed's continuous-recording agent: the model's first turn calls `start_recording`; the
  stereo MP3 has the caller on the left and the agent's "Recording started." on the right; a
  `stop_recording` tool invoked with `callbox swaig invoke` ends it.
- The seed's voicemail agent: the caller hears the prompt then the beep; the recording ends
  3 s after the caller stops speaking; a variant agent's small max_length caps it.
- The continuous-recording agent with a tool returning `FunctionResult.connect(sip uri)`: the
  caller is connected to a sipp callee, and the agent's recording holds the caller left and the
  callee right.
- The official package's AgentBase serving the same continuous agent (its `?__token=` URLs).
- No LLM configured; SWML fetch failures; a SWAIG reply that is not JSON; unknown actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from tests.integration.conftest import RunningPlatform, running_platform, swml
from tests.integration.test_agent_server import (
    PASSWORD,
    SEED_CONTINUOUS,
    SEED_VOICEMAIL,
    USER,
    AgentProcess,
    start_agent,
    stop_agent,
    wait_ready,
)
from tests.peers import audio
from tests.peers.official_sdk import official_sdk_python
from tests.peers.ports import free_port_range
from tests.peers.sipp import g711_stream, run_sipp, start_sipp_uas

from callbox.caller import CallResult, place_call
from callbox.server.ai.conversation import active_conversation
from callbox.server.config import Project, Route
from callbox.server.media.sources import render_tts
from callbox.wire.basic_auth import basic_auth_header

pytestmark = pytest.mark.peers

PROJECT, TOKEN = "proj-ai", "tok-ai-secret"
API_KEY = "sk-test-key"
MODEL = "test-model"

STOP_TOOL = '''
@agent.tool(name="stop_recording", description="Stop the call recording")
def stop_recording(args, raw_data):
    return FunctionResult("Stopped.").stop_record_call("main_recording")

'''
CONTINUOUS_WITH_STOP = SEED_CONTINUOUS.replace("agent.serve()\n", STOP_TOOL + "agent.serve()\n")
VOICEMAIL_SHORT = SEED_VOICEMAIL.replace("max_length=120.0", "max_length=3.0")
assert VOICEMAIL_SHORT != SEED_VOICEMAIL

CALLER_TEXT = ("Hello, this is a test call for the recording agent. I am speaking for about ten "
               "seconds, so that the recording has something to hold. My voice belongs on the "
               "left channel.")
MESSAGE_TEXT = "Hi, this is Alice. Please call me back tomorrow about the invoice."
LONG_TEXT = "This message goes on and on, well past the limit of the recording, because it is long."


# -- the LLM test double ----------------------------------------------------------------------

Responder = Callable[[dict[str, Any]], dict[str, Any]]


def tool_calls(*names: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{index}_{name}", "type": "function",
         "function": {"name": name, "arguments": "{}"}} for index, name in enumerate(names)]}


def text(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def first_turn(*names: str, later: str = "Sure.") -> Responder:
    """The first request (system prompt only) calls `names`; later ones answer `later`."""
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return tool_calls(*names) if len(body["messages"]) == 1 else text(later)
    return answer


class FakeLlm:
    """An OpenAI-compatible /v1/chat/completions server on loopback."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _complete(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        self.requests.append(body)
        message = self.responder(body)
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def __aenter__(self) -> FakeLlm:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def web_server(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A plain aiohttp server on loopback; yields its base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# -- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def agents(workdir: Path, *specs: tuple[str, str]) -> Iterator[list[AgentProcess]]:
    """Agent scripts (impl, source) served in subprocesses on route /agent."""
    started = [start_agent(impl, source, "/agent", workdir) for impl, source in specs]
    try:
        deadline = time.monotonic() + 60
        for agent in started:
            wait_ready(agent, deadline)
        yield started
    finally:
        for agent in started:
            stop_agent(agent)


def agent_route(number: str, agent: AgentProcess) -> Route:
    return Route(number, swml_url=f"http://{USER}:{PASSWORD}@127.0.0.1:{agent.port}/agent")


@contextlib.asynccontextmanager
async def platform_with_llm(tmp_path: Path, routes: list[Route],
                            llm: FakeLlm | None) -> AsyncIterator[RunningPlatform]:
    settings = {"ai__base_url": llm.url, "ai__model": MODEL, "ai__api_key": API_KEY} if llm else {}
    async with running_platform(tmp_path, routes, **settings) as running:
        running.platform.config.projects = [Project(PROJECT, TOKEN)]
        yield running


def caller_wav(path: Path, *parts: np.ndarray) -> str:
    audio.write_wav(path, audio.concat(*parts))
    return str(path)


# Speech-to-text runs pocketsphinx in a worker process started on first use: on a busy machine
# the caller's words may take a while to reach the model. A deadline, not a measurement.
STT_DEADLINE = 60.0


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def callbox_swaig(running: RunningPlatform, *args: str,
                        token: str = TOKEN) -> tuple[int, str, str]:
    """Run `callbox swaig ...` (a real subprocess) against the running platform."""
    listening = running.platform.listening
    assert listening is not None
    env = {**os.environ, "CALLBOX_TOKEN": token,
           "CALLBOX_URL": f"https://127.0.0.1:{listening.https[1]}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callbox.cli", "swaig", *args, "--project", PROJECT,
        "--ca-file", str(listening.cert), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def post_swaig(running: RunningPlatform, call_id: str, body: bytes) -> tuple[int, Any]:
    """POST a raw body to the platform's SWAIG endpoint for a live call."""
    listening = running.platform.listening
    assert listening is not None
    context = ssl.create_default_context(cafile=str(listening.cert))
    url = f"https://127.0.0.1:{listening.https[1]}/api/callbox/calls/{call_id}/swaig"
    headers = {"Content-Type": "application/json",
               "Authorization": basic_auth_header(PROJECT, TOKEN)}
    async with aiohttp.ClientSession() as session, \
            session.post(url, data=body, ssl=context, headers=headers) as response:
        return response.status, await response.json()


async def finished(recording: Any, timeout: float = 15) -> None:
    await asyncio.wait_for(asyncio.shield(recording.done), timeout)


def correlation(haystack: np.ndarray, needle: np.ndarray) -> float:
    peak, _lag = audio.max_normalized_xcorr(haystack, needle, len(haystack), min_overlap=0.9)
    return peak


# -- the seed's continuous recording ------------------------------------------------------------


async def test_continuous_recording_agent_end_to_end(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="callbox")
    speech = audio.speech(CALLER_TEXT)
    # the caller speaks once the recording runs: the model's first turn and the agent's SWAIG
    # reply start it, which takes a while on a busy machine
    lead = 4.0
    wav = caller_wav(tmp_path / "caller.wav", audio.silence(lead), speech, audio.silence(8.0))
    with agents(tmp_path, ("callbox", CONTINUOUS_WITH_STOP)) as (agent,):
        async with FakeLlm(first_turn("start_recording")) as llm, \
                platform_with_llm(tmp_path, [agent_route("agent", agent)], llm) as running:
            caller = asyncio.create_task(
                place_call(running.uri("agent"), play=wav, hangup_after=40 + STT_DEADLINE))
            seen = (await wait_until(lambda: running.observed, 10, "the call"))[0]
            call = seen.call
            (recording,) = await wait_until(lambda: call.recordings, 10, "the recording")

            code, out, err = await callbox_swaig(running, "list", "--call", call.id)
            assert code == 0, err
            listed = json.loads(out)
            assert [f["function"] for f in listed["functions"]] == [
                "start_recording", "stop_recording"]
            assert all(f["active"] for f in listed["functions"])
            assert USER not in out and PASSWORD not in out  # credentials are not shown
            code, _, err = await callbox_swaig(running, "list", "--call", call.id, token="wrong")
            assert code == 1 and "HTTP 401" in err
            code, _, err = await callbox_swaig(running, "invoke", "--call", call.id,
                                               "--function", "nope")
            assert code == 1 and "HTTP 404" in err and "has no function 'nope'" in err
            # request body limits: an oversized or malformed body is refused, the call goes on
            status, body = await post_swaig(running, call.id, b"{" + b" " * (2 * 1024 * 1024))
            assert status == 413 and "at most 65536 bytes" in body["errors"][0]["message"]
            status, body = await post_swaig(running, call.id, b'{"function": ')
            assert status == 400 and body["errors"][0]["code"] == "invalid_json"
            assert call.is_active and recording.state == "recording"

            # the caller has finished speaking (1 s + the speech) well before this
            await asyncio.sleep(max(0.0, call.answered_at + lead + len(speech) / 8000 + 1.0
                                    - time.time()))
            asked_at = time.time()
            code, out, err = await callbox_swaig(
                running, "invoke", "--call", call.id, "--function", "stop_recording",
                "--args", "{}")
            assert code == 0, err
            invoked = json.loads(out)
            assert invoked["reply"]["response"] == "Stopped."
            assert invoked["executed"] == [
                {"action": "SWML", "status": "ok", "detail": "stop_record_call"}]
            assert invoked["spoken"] == ["Stopped."]
            await finished(recording)
            # the caller's speech reaches the model as text (pocketsphinx, in its own process)
            await wait_until(lambda: any(m["role"] == "user" for m in llm.requests[-1][
                "messages"]), STT_DEADLINE, "the caller's words at the model")
            assert call.is_active  # stopping the recording did not end the call
            await call.hangup()
            result: CallResult = await caller
    assert result.status == 200 and result.hung_up_by == "remote"

    # the first chat-completions request: the system prompt and the seed's tools
    first = llm.requests[0]
    assert first["model"] == MODEL
    assert first["messages"] == [{"role": "system", "content": "You are a helpful assistant."}]
    assert [t["function"]["name"] for t in first["tools"]] == ["start_recording", "stop_recording"]
    assert first["tools"][0] == {"type": "function", "function": {
        "name": "start_recording", "description": "Start recording the call",
        "parameters": {"type": "object", "properties": {}}}}
    # the tool's result went back to the model
    later = llm.requests[-1]["messages"]
    assert {"role": "tool", "tool_call_id": "call_0_start_recording",
            "content": "Recording started."} in later

    assert recording.state == "finished" and recording.control_id == "main_recording"
    assert recording.params.format == "mp3" and recording.params.stereo
    assert recording.path.suffix == ".mp3" and recording.path.exists()
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and samples.ndim == 2 and samples.shape[1] == 2
    # duration: the file, and the platform's start and end times (end_time is taken once the
    # file is closed, in a thread: on a busy machine a while after the last frame)
    assert abs(len(samples) / 8000 - recording.duration) < 0.3  # MP3 encoder padding
    lasted = recording.end_time - recording.start_time
    assert lasted - 0.5 <= recording.duration <= lasted + 0.1
    assert recording.end_time > asked_at  # stopped by the invoke, while the call was up
    assert recording.duration > len(speech) / 8000

    left, right = samples[:, 0], samples[:, 1]
    agent_voice = np.asarray(await render_tts("Recording started."))
    assert correlation(left, speech) > 0.7  # the caller, on the left
    assert correlation(right, speech) < 0.3
    head = right[: 4 * 8000]
    assert correlation(head, agent_voice) > 0.7  # the agent's spoken response, on the right
    assert correlation(left[: 4 * 8000], agent_voice) < 0.3
    assert "start_recording" in caplog.text and "stop_recording invoked by hand" in caplog.text


# -- the seed's voicemail -----------------------------------------------------------------------


def beep_spans(heard: np.ndarray) -> list[tuple[float, float]]:
    """Where the 1000 Hz beep is, in 20 ms windows."""
    window = 160
    hits = [index * window / 8000 for index in range(len(heard) // window)
            if audio.tone_level_dbfs(heard[index * window:(index + 1) * window], 1000) > -20]
    spans: list[tuple[float, float]] = []
    for at in hits:
        if spans and at - spans[-1][1] < 0.05:
            spans[-1] = (spans[-1][0], at + 0.02)
        else:
            spans.append((at, at + 0.02))
    return spans


async def test_voicemail_agent_beep_end_silence_and_max_length(tmp_path):
    message = audio.speech(MESSAGE_TEXT)
    long_message = audio.concat(audio.speech(LONG_TEXT), audio.speech(LONG_TEXT))
    # the prompt (~2.2 s) and the beep come first; the caller speaks from 5 s on
    short_wav = caller_wav(tmp_path / "message.wav", audio.silence(5.0), message)
    long_wav = caller_wav(tmp_path / "long.wav", audio.silence(5.0), long_message)
    with agents(tmp_path, ("callbox", SEED_VOICEMAIL), ("callbox", VOICEMAIL_SHORT)) as (
            voicemail, capped):
        routes = [agent_route("vm", voicemail), agent_route("capped", capped)]
        # later turns: the model says nothing (so the recording holds only the caller)
        async with FakeLlm(first_turn("record_voicemail", later="")) as llm, \
                platform_with_llm(tmp_path, routes, llm) as running:
            heard = tmp_path / "heard.wav"
            results = await asyncio.gather(
                place_call(running.uri("vm"), play=short_wav, hangup_after=13.5,
                           record_heard=heard),
                place_call(running.uri("capped"), play=long_wav, hangup_after=13.5))
            by_route = {seen.call.to_user: seen.call for seen in running.observed}
            for call in by_route.values():
                await wait_until(lambda c=call: c.recordings, 5, "a recording")
                await finished(call.recordings[-1])
    assert all(r.status == 200 and r.hung_up_by == "us" for r in results)

    # the caller heard the prompt, then the beep
    heard_audio, _ = audio.read_wav(heard)
    spans = beep_spans(heard_audio)
    assert len(spans) == 1, spans
    beep_start, beep_end = spans[0]
    assert 0.2 <= beep_end - beep_start <= 0.32
    prompt_spans = audio.active_spans(heard_audio[: int(beep_start * 8000)], min_gap_ms=300)
    assert prompt_spans and prompt_spans[-1][1] - prompt_spans[0][0] > 1.5  # spoken first

    (recording,) = by_route["vm"].recordings
    assert recording.state == "finished" and recording.control_id == "voicemail"
    assert recording.params.format == "wav" and not recording.params.stereo
    assert recording.params.beep
    samples, _ = audio.decode_audio(recording.path)
    assert samples.ndim == 1
    speech_spans = audio.active_spans(samples, min_gap_ms=300)
    last_speech = speech_spans[-1][1]
    assert correlation(samples, message) > 0.8  # the whole message is in the file
    assert len(samples) / 8000 - last_speech <= 0.5  # trailing silence trimmed
    # it ended 3 s after the caller stopped speaking (end_silence_timeout), not at hangup
    wall_after_speech = recording.end_time - recording.start_time - last_speech
    assert 2.7 <= wall_after_speech <= 3.4, wall_after_speech
    assert audio.tone_level_dbfs(samples[:1600], 1000) < -40  # the beep is not recorded

    (capped_recording,) = by_route["capped"].recordings
    assert capped_recording.state == "finished"
    assert capped_recording.duration == pytest.approx(3.0, abs=0.05)
    capped_samples, _ = audio.decode_audio(capped_recording.path)
    assert len(capped_samples) / 8000 == pytest.approx(3.0, abs=0.05)


# -- FunctionResult.connect on a live AI call --------------------------------------------------

CONNECT_TOOL = '''
@agent.tool(name="connect_human", description="Connect the caller to a person")
def connect_human(args, raw_data):
    return FunctionResult("Connecting you now.").connect("CALLEE_URI")

'''
CALLER_HZ, CALLEE_HZ = 1000, 700


def call_the_agent(running: Any, stream: str) -> asyncio.Future[Any]:
    """A sipp caller streaming `stream` to the `agent` route until the platform hangs up."""
    block = free_port_range(8)
    return asyncio.ensure_future(run_sipp(
        "uac_hangup_by_server", running.target, service="agent", local_port=block.start,
        media_port=block.start + 4, keys={"stream": stream}, timeout=60 + STT_DEADLINE))


async def test_agent_connects_the_caller_and_its_recording_keeps_both_people(tmp_path):
    """The model's first turn starts the recording, then calls `connect_human`: the agent says
    its response, the AI session ends, the caller is bridged to a sipp callee (a tone) for the
    rest of the call; the same recording holds the caller left and the callee right."""
    callee_stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, -12), tmp_path / "callee.ulaw",
                                loops=-1)
    caller_stream = g711_stream(audio.tone(CALLER_HZ, 1.0, -12), tmp_path / "caller.ulaw",
                                loops=-1)
    async with start_sipp_uas("uas_answer_bye", media_port=free_port_range(4).start,
                              keys={"stream": callee_stream}, extra_args=["-d", "4000"]) as uas:
        source = SEED_CONTINUOUS.replace(
            "agent.serve()\n", CONNECT_TOOL.replace("CALLEE_URI", uas.uri()) + "agent.serve()\n")
        with agents(tmp_path, ("callbox", source)) as (agent,):
            async with FakeLlm(first_turn("start_recording", "connect_human")) as llm, \
                    platform_with_llm(tmp_path, [agent_route("agent", agent)], llm) as running:
                placing = call_the_agent(running, caller_stream)
                call = (await wait_until(lambda: running.observed, 10, "the call"))[0].call
                callee = await wait_until(lambda: call.peer, 30, "the caller connected")
                # the AI session is over; the call goes on, bridged
                assert active_conversation(call.id) is None and call.is_active
                assert callee.to_uri == uas.uri() and callee.direction == "outbound"
                caller = await placing  # the platform hangs up after the callee's BYE
                answered = await uas.wait(timeout=20)
                seen = await running.wait_call_ended(0)
                (recording,) = seen.call.recordings
                await finished(recording)
    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()  # its BYE was answered
    assert [r["messages"][-1]["role"] for r in llm.requests] == ["system"]  # one turn only
    assert recording.control_id == "main_recording" and recording.state == "finished"
    samples, _ = audio.decode_audio(recording.path)
    assert samples.ndim == 2
    bridged = int((callee.answered_at - recording.start_time) * 8000)
    window = slice(bridged + 4000, bridged + 20000)  # 0.5 s into the bridge, 2 s long
    left, right = samples[window, 0], samples[window, 1]
    assert audio.tone_level_dbfs(left, CALLER_HZ) > -16  # the caller, on the left
    assert audio.tone_level_dbfs(right, CALLEE_HZ) > -16  # the person, on the right
    assert audio.tone_level_dbfs(left, CALLEE_HZ) < audio.tone_level_dbfs(left, CALLER_HZ) - 40
    assert audio.tone_level_dbfs(right, CALLER_HZ) < audio.tone_level_dbfs(right, CALLEE_HZ) - 40
    # the agent's last words are in the same file, spoken before the bridge
    last_words = np.asarray(await render_tts("Connecting you now."))
    peak, lag = audio.max_normalized_xcorr(samples[:, 1], last_words, len(samples),
                                           min_overlap=0.9)
    spoken_until = audio.active_spans(last_words, 8000, threshold_dbfs=-40)[-1][1]
    assert peak > 0.7 and lag + spoken_until * 8000 <= bridged


async def test_agent_connect_not_final_resumes_and_does_not_listen_while_connected(tmp_path):
    """`connect(dest, final=False)`: the conversation goes on after the person hung up; while
    the caller talks to the person, nothing reaches the agent's speech-to-text."""
    caller_stream = g711_stream(audio.tone(CALLER_HZ, 1.0, -12), tmp_path / "caller.ulaw",
                                loops=-1)
    async with start_sipp_uas("uas_answer_bye", media_port=free_port_range(4).start,
                              extra_args=["-d", "3000"]) as uas:
        tool = CONNECT_TOOL.replace("CALLEE_URI", uas.uri()).replace(
            ".connect(\"" + uas.uri() + "\")", ".connect(\"" + uas.uri() + "\", final=False)")
        assert "final=False" in tool
        source = SEED_CONTINUOUS.replace("agent.serve()\n", tool + "agent.serve()\n")
        with agents(tmp_path, ("callbox", source)) as (agent,):
            async with FakeLlm(first_turn("connect_human")) as llm, \
                    platform_with_llm(tmp_path, [agent_route("agent", agent)], llm) as running:
                placing = call_the_agent(running, caller_stream)
                call = (await wait_until(lambda: running.observed, 10, "the call"))[0].call
                conversation = await wait_until(
                    lambda: (c := active_conversation(call.id)) and c.stt and c, 20,
                    "the conversation listening")
                assert call.peer is None  # before the model's first turn connected the call
                stt = conversation.stt
                fed_while_connected: list[bool] = []
                feed = stt.feed

                def spy(frame: np.ndarray) -> None:
                    fed_while_connected.append(call.peer is not None)
                    feed(frame)

                stt.feed = spy  # type: ignore[method-assign]
                callee = await wait_until(lambda: call.peer, 30, "the caller connected")
                assert active_conversation(call.id) is conversation  # not final: it waits
                await asyncio.wait_for(callee.wait_ended(), 20)  # the person hung up
                fed_before = len(fed_while_connected)
                await wait_until(lambda: len(fed_while_connected) > fed_before + 50, 10,
                                 "the agent listening again")
                assert active_conversation(call.id) is conversation and call.is_active
                await call.hangup()
                caller = await placing
                answered = await uas.wait(timeout=20)
    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert callee.answered_at is not None and not any(fed_while_connected)


# -- the official package's agent ---------------------------------------------------------------


async def test_official_agent_drives_the_platform(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="callbox")
    await asyncio.to_thread(official_sdk_python)  # fails at once when it is not installed
    speech = audio.speech("Hello, I am calling the agent.")
    lead = 4.0  # the caller speaks once the recording runs (see the test above)
    wav = caller_wav(tmp_path / "caller.wav", audio.silence(lead), speech, audio.silence(2.0))
    with agents(tmp_path, ("official", SEED_CONTINUOUS)) as (agent,):
        async with FakeLlm(first_turn("start_recording")) as llm, \
                platform_with_llm(tmp_path, [agent_route("agent", agent)], llm) as running:
            result = await place_call(running.uri("agent"), play=wav,
                                      hangup_after=lead + len(speech) / 8000 + 1.5)
            seen = await running.wait_call_ended(0)
            (recording,) = seen.call.recordings
            await finished(recording)
    assert result.status == 200
    # the official server accepted the platform's SWAIG call (its URL carries ?__token=)
    assert "SWAIG start_recording replied 'Recording started.' with 1 action(s)" in caplog.text
    assert llm.requests[0]["tools"][0]["function"]["name"] == "start_recording"
    assert recording.state == "finished" and recording.control_id == "main_recording"
    samples, _ = audio.decode_audio(recording.path)
    assert samples.ndim == 2
    # it holds the caller's speech (below), and no more than the platform's start..end
    assert len(speech) / 8000 < recording.duration
    assert recording.duration <= recording.end_time - recording.start_time + 0.1
    assert correlation(samples[:, 0], speech) > 0.7


# -- no LLM -------------------------------------------------------------------------------------


async def test_no_llm_configured_caller_hears_an_explanation(tmp_path, caplog):
    routes = [Route("ai", swml=swml({"answer": {}}, {"ai": {"prompt": {"text": "Hi."}}}))]
    heard = tmp_path / "heard.wav"
    async with platform_with_llm(tmp_path, routes, None) as running:
        result = await asyncio.wait_for(
            place_call(running.uri("ai"), hangup_after=30, record_heard=heard), 30)
    assert result.status == 200 and result.hung_up_by == "remote"  # the script went on
    samples, _ = audio.read_wav(heard)
    spoken = audio.active_spans(samples, min_gap_ms=400)
    assert spoken and spoken[-1][1] - spoken[0][0] > 4.0  # a sentence or two, not a blip
    assert "no LLM configured; set [ai] base_url and model" in caplog.text


# -- bad input ----------------------------------------------------------------------------------


async def test_swml_fetch_failures_are_logged_and_the_call_ends(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("callbox.server.swml.fetch.FETCH_TIMEOUT_SECONDS", 1.0)
    seen_auth: list[str] = []

    async def unauthorized(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization", ""))
        return web.Response(status=401, text="who are you?")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>this is not SWML</html>", content_type="text/html")

    async with web_server([web.post("/401", unauthorized), web.post("/500", broken),
                           web.post("/slow", slow), web.post("/html", not_json)]) as base:
        host = base.removeprefix("http://")
        routes = [Route("r401", swml_url=f"http://bob:wrong@{host}/401"),
                  Route("r500", swml_url=f"{base}/500"),
                  Route("rslow", swml_url=f"{base}/slow"),
                  Route("rhtml", swml_url=f"{base}/html")]
        async with platform_with_llm(tmp_path, routes, None) as running:
            names = ["r401", "r500", "rslow", "rhtml"]
            results = await asyncio.wait_for(asyncio.gather(*[
                place_call(running.uri(name), hangup_after=30,
                           record_heard=tmp_path / f"{name}.wav") for name in names]), 30)
    for name, result in zip(names, results, strict=True):
        assert result.status == 200 and result.hung_up_by == "remote", name
        heard, _ = audio.read_wav(tmp_path / f"{name}.wav")
        assert audio.active_spans(heard), f"{name}: no error prompt heard"
    assert seen_auth == ["Basic Ym9iOndyb25n"]  # bob:wrong, from the URL's userinfo
    for expected in (f"route 'r401': SWML fetch from {base}/401 answered HTTP 401",
                     f"route 'r500': SWML fetch from {base}/500 answered HTTP 500",
                     f"route 'rslow': SWML fetch from {base}/slow timed out after 1 s",
                     f"route 'rhtml': SWML from {base}/html: SWML is not valid JSON"):
        assert expected in caplog.text


async def test_bad_swaig_replies_are_logged_and_the_call_goes_on(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="callbox")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def weird(request: web.Request) -> web.Response:
        return web.json_response({"response": "Done.",
                                  "action": [{"frobnicate": {"x": 1}}, {"hold": 30}]})

    speech = audio.speech("Hello, I am calling the agent.")
    wav = caller_wav(tmp_path / "caller.wav", audio.silence(3.0), speech, audio.silence(4.0))
    async with web_server([web.post("/broken", broken), web.post("/weird", weird)]) as base:
        functions = [{"function": "broken", "description": "Breaks",
                      "web_hook_url": f"{base}/broken"},
                     {"function": "weird", "description": "Odd actions"}]
        ai = {"prompt": {"text": "Test."},
              "SWAIG": {"functions": functions, "defaults": {"web_hook_url": f"{base}/weird"}}}
        routes = [Route("ai", swml=swml({"answer": {}}, {"ai": ai}))]
        async with FakeLlm(first_turn("broken", "weird", later="Okay.")) as llm, \
                platform_with_llm(tmp_path, routes, llm) as running:
            caller = asyncio.create_task(place_call(running.uri("ai"), play=wav,
                                                    hangup_after=STT_DEADLINE + 10))
            call = (await wait_until(lambda: running.observed, 10, "the call"))[0].call
            # the caller's words reach the model after the bad replies: the call went on
            await wait_until(lambda: llm.requests and any(
                m["role"] == "user" for m in llm.requests[-1]["messages"]), STT_DEADLINE,
                "the caller's words at the model")
            assert call.is_active
            await call.hangup()
            result = await caller
            seen = await running.wait_call_ended(0)
    assert result.status == 200 and result.hung_up_by == "remote"
    assert seen.call.end_reason == "hangup"
    follow_up = llm.requests[1]["messages"]
    tool_results = {m["tool_call_id"]: m["content"] for m in follow_up if m["role"] == "tool"}
    assert tool_results["call_1_weird"] == "Done."
    failure = tool_results["call_0_broken"]
    assert failure.startswith("The function broken failed:") and "not JSON" in failure
    # after the caller spoke, the model was asked again: the conversation went on
    assert any(m["role"] == "user" for m in llm.requests[-1]["messages"])
    assert len(llm.requests) >= 2
    assert f"SWAIG function broken failed: {base}/broken answered something that is not JSON" \
        in caplog.text
    assert "action 'frobnicate' is not supported by callbox; ignored" in caplog.text
    assert "action 'hold' is not supported by callbox; ignored" in caplog.text
