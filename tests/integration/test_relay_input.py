"""RELAY digit input end to end: a real softphone (baresip) calls the platform, presses RFC 4733
digits and receives the ones the platform sends; RELAY programs with our client and with the
official `signalwire-sdk` (from `.venv-sw`) collect them.

- ours: play_and_collect with a TTS prompt; the first digit stops the prompt (barge-in,
  checked on the platform's play events) and counts; "1 2 #" gives digits "12", terminator "#";
  bad params get 400 naming the field; commands on an ended call get 410.
- the official client: collect max 2 -> the digits; prompt_tts (play_and_collect) -> the digit
  pressed during the prompt; collect with nobody pressing -> no_input
  after the initial timeout; send_digits("123") while recording -> baresip receives 1, 2, 3 and
  the recording finishes; bad params -> 400; collect on an ended call -> 410.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_relay import (
    NO_TIMEOUTS,
    PROJECT,
    TOKEN,
    cert,
    relay_client,
    relay_platform,
    stop_program,
    wait_for_session,
    wss_host,
)
from tests.peers.baresip import Baresip
from tests.peers.official_sdk import official_sdk_python
from tests.peers.poll import until

from callbox.relay import Call, RelayError
from callbox.relay.actions import CollectAction
from callbox.server.media.sources import render_tts
from callbox.server.recording.engine import Recording
from callbox.server.relay.input import MAX_COLLECTS_PER_CALL, MAX_DIGIT_SENDS_PER_CALL

pytestmark = pytest.mark.peers

PROMPT = ("Thank you for calling. This call may be recorded for quality and training. "
          "Press one to agree to the recording, or press two to speak to us without it.")
# The prompt goes on for this long after the digit at least, if the digit did not stop it.
MIN_CUT_SECONDS = 2.0


async def test_play_and_collect_with_our_client_barges_in_and_collects(tmp_path: Path,
                                                                        peer_env: Any) -> None:
    prompt_seconds = len(await render_tts(PROMPT)) / 8000
    assert prompt_seconds > MIN_CUT_SECONDS + 2  # long enough to see it cut
    started: asyncio.Future[tuple[Call, CollectAction]] = \
        asyncio.get_running_loop().create_future()

    async def handle(call: Call) -> None:
        await call.answer()
        action = await call.play_and_collect(
            [{"type": "tts", "params": {"text": PROMPT}}],
            {"digits": {"max": 5, "terminators": "#", "digit_timeout": 5},
             "initial_timeout": 10, "partial_results": True})
        started.set_result((call, action))

    def prompt_playing(action: CollectAction) -> bool:
        return any(e.event_type == "calling.call.play" and e.state == "playing"
                   for e in action.events)

    async with relay_platform(tmp_path) as running, relay_client(running, handle), \
            Baresip() as phone:
        await phone.dial(running.uri("voicemail"))
        await phone.wait_established(timeout=10)
        call, action = await asyncio.wait_for(started, 15)
        await until(lambda: prompt_playing(action), 10, "the prompt plays")
        await phone.send_dtmf("12#")
        event = await action.wait(timeout=15)

        # bad params: 400 naming the field; nothing starts
        with pytest.raises(RelayError) as bad_max:
            await call.play_and_collect([{"type": "tts", "text": "again"}],
                                        {"digits": {"max": 0}})
        assert bad_max.value.code == 400
        assert "collect.digits.max must be a positive integer" in bad_max.value.message
        with pytest.raises(RelayError) as speech_only:
            await call.collect(speech={"end_silence_timeout": 1})
        assert speech_only.value.code == 400
        assert "speech input is not supported" in speech_only.value.message
        with pytest.raises(RelayError) as bad_digits:
            await call.send_digits("12x")
        assert bad_digits.value.code == 400 and "digits must be" in bad_digits.value.message
        # digit sends queue up on the call, up to a limit; the hangup fails those left
        send_states: list[str] = []
        call.on("calling.call.send_digits", lambda e: send_states.append(e.state))
        for _ in range(MAX_DIGIT_SENDS_PER_CALL):
            await call.execute("calling.send_digits", {"digits": "1WWWWW"})  # 5 s each
        with pytest.raises(RelayError) as too_many_sends:
            await call.execute("calling.send_digits", {"digits": "1"})
        assert too_many_sends.value.code == 400
        assert "at most 10 send_digits" in too_many_sends.value.message

        await call.hangup()
        await call.wait_for_ended(timeout=10)
        await phone.wait_call_closed(timeout=10)
        # on an ended call: 410
        for late in (call.collect(digits={"max": 1}), call.send_digits("1")):
            with pytest.raises(RelayError) as gone:
                await late
            assert gone.value.code == 410
        seen = await running.wait_call_ended(0)
        await until(lambda: len(send_states) == MAX_DIGIT_SENDS_PER_CALL, 5, "send events")

    assert send_states == ["error"] * MAX_DIGIT_SENDS_PER_CALL
    assert seen.digits == ["1", "2", "#"]
    assert event.event_type == "calling.call.collect" and event.final
    assert event.result == {"type": "digit", "params": {"digits": "12", "terminator": "#"}}
    assert (event.digits, event.terminator) == ("12", "#")
    assert action.is_done and action.result is event
    partial = [e for e in action.events if e.event_type == "calling.call.collect" and not e.final]
    assert [(e.digits, e.params["state"]) for e in partial] == [("1", "collecting"),
                                                                 ("12", "collecting")]
    plays = [e for e in action.events if e.event_type == "calling.call.play"]
    assert [e.state for e in plays] == ["playing", "finished"]
    # barge-in, timed by the platform: the prompt stopped as the first digit arrived ...
    first_digit_at = seen.digit_times[0]
    assert 0 <= plays[1].timestamp - first_digit_at < 0.2
    # ... well before its end, and before the collect's result
    assert plays[1].timestamp - plays[0].timestamp < prompt_seconds - MIN_CUT_SECONDS
    assert plays[1].timestamp <= event.timestamp


async def test_no_input_after_the_prompt_stop_and_the_call_ending_mid_collect(
        tmp_path: Path, peer_env: Any) -> None:
    """Nobody presses anything: the initial timeout starts when the prompt is over; a stopped
    collect reports no_input; a collect cut by the hangup reports error."""
    short_prompt = "Press one to agree to the recording, or two to decline."
    prompt_seconds = len(await render_tts(short_prompt)) / 8000
    got: dict[str, Any] = {}
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(call: Call) -> None:
        await call.answer()
        prompt = await call.play_and_collect(
            [{"type": "tts", "params": {"text": short_prompt}}],
            {"digits": {"max": 1}, "initial_timeout": 1})
        got["prompt"] = prompt
        got["no_input"] = await prompt.wait(timeout=15)
        stopped = await call.collect(digits={"max": 3}, initial_timeout=0)
        await stopped.stop()
        got["stopped"] = await stopped.wait(timeout=5)
        running = [await call.collect(digits={"max": 1}, initial_timeout=0)
                   for _ in range(MAX_COLLECTS_PER_CALL)]
        try:
            await call.collect(digits={"max": 1})
        except RelayError as exc:
            got["too_many"] = exc
        for action in running:
            await action.stop()
            await action.wait(timeout=5)
        cut = await call.collect(digits={"max": 3}, start_input_timers=False)
        await call.hangup()
        got["cut"] = await cut.wait(timeout=10)
        done.set_result(None)

    async with relay_platform(tmp_path) as running, relay_client(running, handle), \
            Baresip() as phone:
        await phone.dial(running.uri("voicemail"))
        await phone.wait_established(timeout=10)
        await asyncio.wait_for(done, 30)
        await phone.wait_call_closed(timeout=10)
        seen = await running.wait_call_ended(0)

    assert seen.digits == []
    plays = [e for e in got["prompt"].events if e.event_type == "calling.call.play"]
    assert [e.state for e in plays] == ["playing", "finished"]
    # the prompt played to its end (a timeout counted from the command would have cut it) ...
    assert prompt_seconds > 2
    assert plays[1].timestamp - plays[0].timestamp > prompt_seconds - 0.5
    # ... and only then the initial timeout ran
    no_input = got["no_input"]
    assert no_input.result == {"type": "no_input"} and no_input.final
    assert no_input.timestamp > plays[1].timestamp
    assert got["stopped"].result == {"type": "no_input"}
    assert got["too_many"].code == 400 and "at most 10 collects" in got["too_many"].message
    assert got["cut"].result == {"type": "error"} and got["cut"].params["state"] == "error"


OFFICIAL_PROGRAM = '''\
import asyncio, json
from signalwire.relay import RelayClient

client = RelayClient(project=PROJECT, token=TOKEN, host=HOST, contexts=["default"])


def say(step, value=None):
    print(step, json.dumps(value), flush=True)


@client.on_call
async def handle_call(call):
    await call.answer()
    try:
        await call.collect(digits={"max": 0})
    except Exception as exc:
        say("BAD", {"code": getattr(exc, "code", None), "message": str(exc)})
    sent = asyncio.get_running_loop().create_future()
    call.on("calling.call.send_digits",
            lambda event: sent.done() or sent.set_result(event.params))

    first = await call.collect(digits={"max": 2, "digit_timeout": 5}, initial_timeout=15)
    say("COLLECTING")
    say("DIGITS", (await first.wait(timeout=20)).params)
    prompt = await call.prompt_tts("Press one to be recorded.",
                                   {"digits": {"max": 1}, "initial_timeout": 15})
    say("PROMPTING")
    say("PROMPT", (await prompt.wait(timeout=20)).params)
    silent = await call.collect(digits={"max": 2}, initial_timeout=1)
    say("NO_INPUT", (await silent.wait(timeout=20)).params)

    record = await call.record(audio=RECORD)
    say("SEND", await call.send_digits("123"))
    say("SENT", await asyncio.wait_for(sent, 20))
    await record.stop()
    say("RECORDED", (await record.wait(timeout=20)).params)
    await call.hangup()
    await call.wait_for_ended(timeout=10)
    try:
        await client.execute("calling.collect", {"node_id": call.node_id,
                                                 "call_id": call.call_id,
                                                 "digits": {"max": 1}})
    except Exception as exc:
        say("GONE", {"code": getattr(exc, "code", None), "message": str(exc)})


client.run()
'''


async def read_step(proc: asyncio.subprocess.Process, step: str, timeout: float = 30.0
                    ) -> Any:
    """The value of the program's next `STEP json` line, which must be `step`."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    name, _, value = line.decode().strip().partition(" ")
    if name != step:
        _, _, err = await stop_program(proc)
        raise AssertionError(f"expected {step}, got {line!r}\n{err[-3000:]}")
    return json.loads(value)


async def test_official_client_collects_times_out_and_sends_digits(tmp_path: Path,
                                                                   peer_env: Any) -> None:
    python = str(official_sdk_python())
    async with relay_platform(tmp_path) as running, Baresip() as phone:
        program = tmp_path / "input_program.py"
        program.write_text(
            f"PROJECT, TOKEN, HOST = {PROJECT!r}, {TOKEN!r}, {wss_host(running)!r}\n"
            f"RECORD = {dict(format='wav', direction='both', stereo=True, **NO_TIMEOUTS)!r}\n"
            + OFFICIAL_PROGRAM)
        env = dict(os.environ, SIGNALWIRE_RELAY_CA_FILE=str(cert(running)))
        proc = await asyncio.create_subprocess_exec(
            python, "-u", str(program), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await wait_for_session(running, proc)
            await phone.dial(running.uri("voicemail"))
            await phone.wait_established(timeout=10)
            bad = await read_step(proc, "BAD")
            await read_step(proc, "COLLECTING")
            await phone.send_dtmf("47")
            digits = await read_step(proc, "DIGITS")
            await read_step(proc, "PROMPTING")
            await phone.send_dtmf("1")
            prompted = await read_step(proc, "PROMPT")
            no_input = await read_step(proc, "NO_INPUT")
            send = await read_step(proc, "SEND")
            sent = await read_step(proc, "SENT")
            await until(lambda: len(phone.received_dtmf()) >= 3, 10, "baresip gets 3 digits")
            received = phone.received_dtmf()
            recorded = await read_step(proc, "RECORDED")
            gone = await read_step(proc, "GONE")
            seen = await running.wait_call_ended(0)
        finally:
            await stop_program(proc)

    assert bad["code"] == 400 and "digits.max must be a positive integer" in bad["message"]
    assert digits["result"] == {"type": "digit", "params": {"digits": "47", "terminator": ""}}
    assert digits["final"] is True and digits["state"] == "finished"
    assert no_input["result"] == {"type": "no_input"} and no_input["final"] is True
    # prompt_tts (play_and_collect): the digit pressed during the prompt
    assert prompted["result"] == {"type": "digit", "params": {"digits": "1", "terminator": ""}}
    assert seen.digits == ["4", "7", "1"]  # nothing pressed during the silent collect
    assert send["code"] == "200" and send["control_id"]
    assert sent == {"call_id": seen.call.id, "node_id": sent["node_id"],
                    "control_id": send["control_id"], "state": "finished"}
    assert received == "123"  # the RFC 4733 digits arrived at the caller
    (recording,) = seen.call.recordings
    assert isinstance(recording, Recording)
    assert recorded["state"] == "finished" and recording.state == "finished"
    assert recorded["record"]["url"] == recording.url
    assert recording.duration is not None and recording.duration > 0
    assert gone["code"] == 410
