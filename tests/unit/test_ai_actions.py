"""SWAIG replies executed on a stand-in call: the order of speech and actions, the simple
actions, unsupported ones; the chat-completions reply parser and the SWAIG request body."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from callbox.server.ai.actions import execute_reply, is_audible
from callbox.server.ai.llm import LlmError, completions_url, parse_completion, tool_definition
from callbox.server.ai.swaig_client import shown_url, swaig_request
from callbox.server.swml.runner import StopScript


class FakeCall:
    id = "call-1"
    is_active = True

    async def hangup(self, reason: str = "hangup") -> None:
        self.is_active = False


class FakeRunner:
    def __init__(self, timeline: list[tuple[str, Any]]) -> None:
        self.call = FakeCall()
        self.timeline = timeline

    async def execute(self, instruction: Any, where: str = "") -> None:
        (name, _params), = instruction.items()
        self.timeline.append(("verb", name))
        if name == "hangup":
            await self.call.hangup()
            raise StopScript


class FakeHost:
    def __init__(self) -> None:
        self.timeline: list[tuple[str, Any]] = []
        self.runner = FakeRunner(self.timeline)
        self.global_data: dict[str, Any] = {"keep": 1, "drop": 2}
        self.meta_data: dict[str, Any] = {}
        self.functions = {"a": True, "b": True}
        self.ended = ""

    @property
    def active(self) -> bool:
        return not self.ended and self.runner.call.is_active

    async def speak(self, text: str) -> None:
        self.timeline.append(("speak", text))

    def set_function_active(self, name: str, active: bool) -> bool:
        if name not in self.functions:
            return False
        self.functions[name] = active
        return True

    def end(self, why: str) -> None:
        self.ended = why

    async def play_background(self, url: str, wait: bool) -> None:
        self.timeline.append(("bg", url))

    def stop_background(self) -> None:
        self.timeline.append(("bg", None))


def swml_action(*verbs: dict[str, Any]) -> dict[str, Any]:
    return {"SWML": {"version": "1.0.0", "sections": {"main": list(verbs)}}}


RECORD = {"record_call": {"stereo": True, "format": "mp3", "beep": False}}
RECORD_BEEP = {"record_call": {"format": "wav", "beep": True}}


async def test_silent_actions_run_before_the_response_is_spoken():
    host = FakeHost()
    outcome = await execute_reply(host, {"response": "Recording started.",
                                         "action": [swml_action(RECORD)]})
    assert host.timeline == [("verb", "record_call"), ("speak", "Recording started.")]
    assert outcome.spoken == ["Recording started."]
    assert outcome.executed == [{"action": "SWML", "status": "ok", "detail": "record_call"}]


async def test_the_response_comes_before_a_beep_or_a_hangup():
    host = FakeHost()
    await execute_reply(host, {"response": "Leave a message after the beep.",
                               "action": [swml_action(RECORD_BEEP)]})
    assert host.timeline == [("speak", "Leave a message after the beep."),
                             ("verb", "record_call")]
    host = FakeHost()
    await execute_reply(host, {"response": "Bye.", "action": [{"hangup": True}]})
    assert host.timeline == [("speak", "Bye.")]
    assert not host.runner.call.is_active and host.ended == "hangup action"


async def test_swml_hangup_ends_the_script():
    host = FakeHost()
    with pytest.raises(StopScript):
        await execute_reply(host, {"response": "Bye.",
                                   "action": [swml_action({"hangup": {}})]})
    assert host.timeline == [("speak", "Bye."), ("verb", "hangup")]
    assert host.ended


async def test_a_transfer_speaks_the_response_ends_the_ai_then_runs_the_document():
    """FunctionResult("Connecting you.").connect(dest): the agent's last words, then the AI
    stops listening, then the caller is connected; the script ends after the document."""

    class EndSeen(FakeHost):
        def end(self, why: str) -> None:
            super().end(why)
            self.timeline.append(("end", why))

    host = EndSeen()
    action = {**swml_action({"set": {"x": 1}}, {"connect": {"to": "sip:a@h"}}),
              "transfer": "true"}
    with pytest.raises(StopScript):
        await execute_reply(host, {"response": "Connecting you.", "action": [action]})
    assert host.timeline == [("speak", "Connecting you."), ("end", "SWML transfer"),
                             ("verb", "set"), ("verb", "connect")]


async def test_simple_actions_and_unsupported_ones(caplog):
    caplog.set_level(logging.WARNING)
    host = FakeHost()
    outcome = await execute_reply(host, {"response": "Done.", "action": [
        {"set_global_data": {"new": 3}}, {"unset_global_data": ["drop"]},
        {"toggle_functions": [{"function": "a", "active": False}, {"function": "zz"}]},
        {"set_meta_data": {"m": 1}}, {"hold": 30}, {"frobnicate": True}, {"say": "More."},
        {"stop": True}]})
    assert host.global_data == {"keep": 1, "new": 3}
    assert host.meta_data == {"m": 1}
    assert host.functions == {"a": False, "b": True}
    assert host.timeline == [("speak", "Done."), ("speak", "More.")]
    assert host.ended == "stop action"
    statuses = [(e["action"], e["status"]) for e in outcome.executed]
    assert statuses == [("set_global_data", "ok"), ("unset_global_data", "ok"),
                        ("toggle_functions", "ok"), ("set_meta_data", "ok"),
                        ("hold", "unsupported"), ("frobnicate", "unsupported"), ("say", "ok"),
                        ("stop", "ok")]
    assert "action 'hold' is not supported by callbox; ignored" in caplog.text
    assert "toggle_functions names unknown functions zz" in caplog.text


async def test_bad_swml_action_is_skipped_and_the_response_still_spoken(caplog):
    host = FakeHost()
    outcome = await execute_reply(host, {"response": "Hm.", "action": [{"SWML": {"x": 1}}]})
    assert host.timeline == [("speak", "Hm.")]
    assert outcome.executed[0]["status"] == "error"
    assert "SWML action is not valid" in caplog.text


def test_is_audible():
    assert not is_audible("SWML", swml_action(RECORD, {"stop_record_call": {}})["SWML"])
    assert is_audible("SWML", swml_action({"play": {"url": "say:hi"}})["SWML"])
    assert is_audible("SWML", swml_action(RECORD_BEEP)["SWML"])
    assert not is_audible("set_global_data", {})
    assert is_audible("say", "x")


def test_parse_completion_text_and_tool_calls():
    turn = parse_completion({"choices": [{"message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "start_recording", "arguments": '{"a": 1}'}}]}}]})
    assert turn.content == "" and [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("c1", "start_recording", '{"a": 1}')]
    assert turn.message["tool_calls"][0]["function"]["name"] == "start_recording"
    assert parse_completion({"choices": [{"message": {"content": "Hi."}}]}).content == "Hi."
    for bad in ({}, {"choices": []}, {"error": {"message": "quota"}}, [1]):
        with pytest.raises(LlmError):
            parse_completion(bad)


def test_tools_urls_and_the_swaig_body():
    assert completions_url("https://x/v1/") == "https://x/v1/chat/completions"
    assert completions_url("https://x/v1/chat/completions") == "https://x/v1/chat/completions"
    assert tool_definition("f", "", None) == {"type": "function", "function": {
        "name": "f", "description": "f", "parameters": {"type": "object", "properties": {}}}}
    assert shown_url("http://u:p@h:3000/agent/swaig?__token=abc") == "http://h:3000/agent/swaig"
    body = swaig_request("f", {"reason": "vm"}, call_id="c", project_id="p",
                         global_data={"g": 1}, meta_data={}, caller_id_num="100",
                         caller_id_name="")
    assert list(body) == ["function", "argument", "call_id", "project_id", "content_type",
                          "version", "global_data", "meta_data", "caller_id_num",
                          "caller_id_name"]
    assert body["argument"] == {"parsed": [{"reason": "vm"}], "raw": json.dumps({"reason": "vm"})}
    assert (body["content_type"], body["version"]) == ("text/swaig", "2.0")
