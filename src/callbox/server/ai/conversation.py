"""The `ai` verb's conversation: caller speech -> text -> the model (SWAIG functions as tools)
-> speech, with tool calls sent to the agent's webhooks and their actions run on the call.

The loop:

1. First turn: right after answer, the model is asked for a reply with only the system prompt
   (`prompt.text`, or `prompt.pom` rendered as text), so an agent can greet or act at once.
2. Listen: the caller's frames go to the speech-to-text engine; each utterance becomes a user
   message and the model is asked again.
3. A reply's text is spoken (espeak-ng). Its tool calls are SWAIG requests (`swaig_client`);
   each SWAIG reply's `response` is spoken and its `action` list run (`actions`). The model
   gets the response as the tool's result; it is asked again at once only when a tool failed,
   spoke nothing, or asked for it (`post_process`).
4. It ends when the call ends, an action hangs up or stops it, or the model keeps failing;
   the SWML script then goes on with the verb after `ai`.

A running conversation is registered by call id, so that the HTTP API (`callbox swaig`) can
list its functions and invoke one by hand (`Conversation.invoke`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import numpy as np

from callbox.server.ai.actions import ReplyOutcome, execute_reply, response_text
from callbox.server.ai.llm import AssistantTurn, LlmClient, LlmError, ToolCall, tool_definition
from callbox.server.ai.stt import SpeechToText, SttError, check_engine, make_stt
from callbox.server.ai.swaig_client import SwaigCallError, post_swaig, shown_url, swaig_request
from callbox.server.call import Call, CallGone, PlayOperation
from callbox.server.media.sources import MediaError, render_tts
from callbox.server.swml.runner import StopScript
from callbox.wire.json_depth import loads_bounded

if TYPE_CHECKING:
    from callbox.server.config import AiConfig
    from callbox.server.swml.runner import SwmlRunner

log = logging.getLogger(__name__)

FUNCTION_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_TOOL_ROUNDS: Final = 4  # model -> tools -> model ... within one turn
MAX_LLM_FAILURES: Final = 3  # consecutive failures before the conversation gives up
NO_LLM_PROMPT: Final = (
    "Sorry, this AI agent cannot talk yet: no language model is configured on this "
    "platform. Please ask its administrator to set the A I base URL and model. Goodbye."
)
NO_STT_PROMPT: Final = (
    "Sorry, this AI agent cannot listen: speech recognition is not available on this "
    "platform. Goodbye."
)
LLM_TROUBLE_PROMPT: Final = "Sorry, I am having trouble thinking right now. Please say that again."
LLM_GIVE_UP_PROMPT: Final = "Sorry, I cannot continue this conversation right now. Goodbye."

_ACTIVE: dict[str, Conversation] = {}


def active_conversation(call_id: str) -> Conversation | None:
    """The `ai` conversation running on the call, if any."""
    conversation = _ACTIVE.get(call_id)
    return conversation if conversation is not None and conversation.active else None


class ConversationEnded(RuntimeError):
    """The conversation is over; nothing more can run in it."""


@dataclass
class SwaigFunction:
    """A SWAIG function of the `ai` verb, as the model is offered it."""

    name: str
    description: str
    parameters: dict[str, Any]
    web_hook_url: str
    active: bool = True

    def tool(self) -> dict[str, Any]:
        return tool_definition(self.name, self.description, self.parameters)

    def describe(self) -> dict[str, Any]:
        return {"function": self.name, "description": self.description,
                "parameters": self.parameters, "active": self.active,
                "web_hook_url": shown_url(self.web_hook_url)}


@dataclass
class InvokeResult:
    """One SWAIG function call and what it did."""

    function: str
    args: dict[str, Any]
    reply: dict[str, Any] | None = None
    error: str | None = None
    outcome: ReplyOutcome = field(default_factory=ReplyOutcome)

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "args": self.args, "reply": self.reply,
                "error": self.error, "spoken": self.outcome.spoken,
                "executed": self.outcome.executed}

    def model_content(self) -> str:
        """The tool's result as the model sees it."""
        if self.error is not None:
            return f"The function {self.function} failed: {self.error}"
        assert self.reply is not None
        response = self.reply.get("response")
        if isinstance(response, str):
            return response
        if response is not None:
            return json.dumps(response)
        return "Action completed."


def render_prompt(prompt: Any) -> str:
    """`prompt.text`, or a POM (sections of title/body/bullets/subsections) as plain text."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, Mapping):
        return ""
    text = prompt.get("text")
    if isinstance(text, str):
        return text
    lines: list[str] = []

    def section(entry: Any, depth: int) -> None:
        if not isinstance(entry, Mapping):
            return
        if entry.get("title"):
            lines.append("#" * depth + " " + str(entry["title"]))
        if entry.get("body"):
            lines.append(str(entry["body"]))
        for bullet in entry.get("bullets") or []:
            lines.append(f"- {bullet}")
        for sub in entry.get("subsections") or []:
            section(sub, depth + 1)

    for entry in prompt.get("pom") or []:
        section(entry, 2)
    return "\n".join(lines)


def parse_functions(call_id: str, params: Mapping[str, Any]) -> dict[str, SwaigFunction]:
    """The usable SWAIG functions of an `ai` verb; the others are logged and left out."""
    swaig = params.get("SWAIG") or {}
    if not isinstance(swaig, Mapping):
        log.warning("call %s: ai: SWAIG is not an object; no functions", call_id)
        return {}
    defaults = swaig.get("defaults") if isinstance(swaig.get("defaults"), Mapping) else {}
    default_url = defaults.get("web_hook_url") if isinstance(defaults, Mapping) else None
    for unsupported in ("includes", "native_functions", "internal_fillers"):
        if swaig.get(unsupported):
            log.info("call %s: ai: SWAIG.%s is not supported by callbox; ignored", call_id,
                     unsupported)
    functions: dict[str, SwaigFunction] = {}
    for index, entry in enumerate(swaig.get("functions") or []):
        name = entry.get("function") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
            log.warning("call %s: ai: SWAIG.functions[%d] has no valid `function` name; "
                        "skipped", call_id, index)
            continue
        assert isinstance(entry, Mapping)
        url = entry.get("web_hook_url") or default_url
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            what = "data_map functions are not supported" if "data_map" in entry else \
                "it has no web_hook_url (and SWAIG.defaults has none)"
            log.warning("call %s: ai: SWAIG function %s skipped: %s", call_id, name, what)
            continue
        parameters = entry.get("parameters")
        functions[name] = SwaigFunction(
            name, str(entry.get("description") or name),
            dict(parameters) if isinstance(parameters, Mapping) else {}, url,
            active=entry.get("active", True) not in (False, "false"),
        )
    return functions


class Conversation:
    """One `ai` verb running on one call."""

    def __init__(self, runner: SwmlRunner, params: Mapping[str, Any],
                 config: AiConfig | None) -> None:
        self.runner = runner
        self.call: Call = runner.call
        self.config = config
        self.prompt = render_prompt(params.get("prompt"))
        self.functions = parse_functions(self.call.id, params)
        global_data = params.get("global_data")
        self.global_data: dict[str, Any] = dict(global_data) if isinstance(
            global_data, Mapping) else {}
        self.meta_data: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": self.prompt}]
        self.stt: SpeechToText | None = None
        self.session: aiohttp.ClientSession | None = None
        self.llm: LlmClient | None = None
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._stop_script = False
        self._lock = asyncio.Lock()
        self._failures = 0
        self._manual_calls = 0
        self._background: PlayOperation | None = None
        self._remove_tap: Callable[[], None] | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._ended.is_set() and self.call.is_active

    def end(self, why: str) -> None:
        """End the conversation: it stops listening and its background audio at once (the
        call may go on, e.g. connected to a person by a transfer)."""
        if not self._ended.is_set():
            self._end_reason = why
            self._ended.set()
            self._stop_listening()
            self.stop_background()

    def _stop_listening(self) -> None:
        if self._remove_tap is not None:
            self._remove_tap()
            self._remove_tap = None

    def _on_call_state(self, call: Call) -> None:
        if not call.is_active:
            self.end("call ended")

    def _tap(self, speak: np.ndarray, listen: np.ndarray) -> None:
        # While the call is connected to someone (a `connect` without transfer) the caller
        # talks to them, not to the agent.
        if self.stt is not None and self.call.peer is None:
            self.stt.feed(speak)  # the segmenter copies what it keeps

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        call = self.call
        call.answer()
        _ACTIVE[call.id] = self
        unsubscribe_state = call.on_state(self._on_call_state)
        try:
            await self._run()
        except CallGone:
            self.end("call ended")
        finally:
            self.end(self._end_reason or "done")
            self._stop_listening()
            unsubscribe_state()
            if self.stt is not None:
                self.stt.close()
            self.stop_background()
            if self.session is not None:
                await self.session.close()
            if _ACTIVE.get(call.id) is self:
                del _ACTIVE[call.id]
            log.info("call %s: ai conversation ended (%s)", call.id, self._end_reason)
        if self._stop_script:
            raise StopScript

    async def _run(self) -> None:
        call = self.call
        config = self.config
        if config is None or not config.base_url or not config.model:
            log.warning("call %s: ai verb: no LLM configured; set [ai] base_url and model "
                        "(an OpenAI-compatible chat-completions endpoint) to talk to agents; "
                        "the caller is told and the script goes on", call.id)
            self._end_reason = "no LLM configured"
            await self.speak(NO_LLM_PROMPT)
            return
        try:
            await check_engine(config.stt)
            self.stt = make_stt(config.stt)
        except SttError as exc:
            log.warning("call %s: ai verb: speech-to-text %r cannot run: %s", call.id,
                        config.stt, exc)
            self._end_reason = "no speech-to-text"
            await self.speak(NO_STT_PROMPT)
            return
        self.session = aiohttp.ClientSession()
        self.llm = LlmClient(self.session, config.base_url, config.model, config.api_key)
        log.info("call %s: ai conversation started (model %s at %s; functions: %s)", call.id,
                 config.model, shown_url(self.llm.url), ", ".join(self.functions) or "none")
        self._remove_tap = call.add_tap(self._tap)
        await self._turn(None)
        while self.active:
            text = await self._next_utterance()
            if text is None:
                break
            if not text.strip():
                continue
            log.info("call %s: caller said %r", call.id, text)
            await self._turn(text)

    async def _next_utterance(self) -> str | None:
        assert self.stt is not None
        heard = asyncio.ensure_future(self.stt.utterance())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({heard, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not heard.done():
                heard.cancel()
        if heard.cancelled() or not heard.done() or not self.active:
            return None
        return heard.result()

    def _tools(self) -> list[dict[str, Any]]:
        return [f.tool() for f in self.functions.values() if f.active]

    async def _turn(self, user_text: str | None) -> None:
        """Ask the model (after the caller said `user_text`) and act on what it answers."""
        assert self.llm is not None
        async with self._lock:
            if user_text is not None:
                self.messages.append({"role": "user", "content": user_text})
            for _ in range(MAX_TOOL_ROUNDS):
                if not self.active:
                    return
                turn = await self._ask()
                if turn is None:
                    return
                self.messages.append(turn.message)
                if turn.content.strip():
                    await self.speak(turn.content)
                if not turn.tool_calls:
                    return
                follow_up = False
                for tool_call in turn.tool_calls:
                    result = await self._tool_call(tool_call)
                    self.messages.append({"role": "tool", "tool_call_id": tool_call.id,
                                          "content": result.model_content()})
                    follow_up |= (result.error is not None or not result.outcome.spoken
                                  or bool(result.reply and result.reply.get("post_process")))
                if not follow_up:
                    return
            log.warning("call %s: ai: the model called tools %d times in a row; waiting for "
                        "the caller", self.call.id, MAX_TOOL_ROUNDS)

    async def _ask(self) -> AssistantTurn | None:
        assert self.llm is not None
        try:
            turn = await self.llm.complete(self.messages, self._tools())
        except LlmError as exc:
            self._failures += 1
            log.warning("call %s: ai: the model failed (%d in a row): %s", self.call.id,
                        self._failures, exc)
            if self._failures >= MAX_LLM_FAILURES:
                await self.speak(LLM_GIVE_UP_PROMPT)
                self.end("the model keeps failing")
            else:
                await self.speak(LLM_TROUBLE_PROMPT)
            return None
        self._failures = 0
        return turn

    async def _tool_call(self, tool_call: ToolCall) -> InvokeResult:
        function = self.functions.get(tool_call.name)
        try:
            args = loads_bounded(tool_call.arguments or "{}")
        except ValueError:
            args = None
        if function is None or not function.active:
            log.warning("call %s: ai: the model called %s, which is not an available function",
                        self.call.id, tool_call.name)
            return InvokeResult(tool_call.name, {}, error="no such function is available")
        if not isinstance(args, dict):
            log.warning("call %s: ai: the model called %s with arguments that are not a JSON "
                        "object: %r", self.call.id, tool_call.name, tool_call.arguments[:100])
            return InvokeResult(tool_call.name, {}, error="arguments must be a JSON object")
        return await self._call_function(function, args)

    async def _call_function(self, function: SwaigFunction,
                             args: dict[str, Any]) -> InvokeResult:
        """POST the SWAIG request, then speak the response and run the actions."""
        assert self.session is not None
        result = InvokeResult(function.name, args)
        body = swaig_request(
            function.name, args, call_id=self.call.id, project_id=self.call.project_id,
            global_data=self.global_data, meta_data=self.meta_data,
            caller_id_num=self.call.from_user, caller_id_name="",
        )
        log.info("call %s: SWAIG %s(%s) -> %s", self.call.id, function.name,
                 json.dumps(args)[:200], shown_url(function.web_hook_url))
        try:
            reply = await post_swaig(self.session, function.web_hook_url, body)
        except SwaigCallError as exc:
            log.warning("call %s: SWAIG function %s failed: %s; the model is told, the call "
                        "goes on", self.call.id, function.name, exc)
            result.error = str(exc)
            return result
        result.reply = reply
        if "error" in reply and "response" not in reply and "action" not in reply:
            result.error = f"the function reported an error: {reply['error']}"
            log.warning("call %s: SWAIG function %s: %s", self.call.id, function.name,
                        result.error)
            return result
        log.info("call %s: SWAIG %s replied %r with %d action(s)", self.call.id, function.name,
                 response_text(reply)[:100], len(reply.get("action") or []))
        try:
            result.outcome = await execute_reply(self, reply, function=function.name)
        except StopScript:
            self._stop_script = True
            self.end("an action ended the script")
        return result

    # -- by hand (HTTP API) ---------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.functions.values()]

    async def invoke(self, name: str, args: dict[str, Any]) -> InvokeResult:
        """Call a function as if the model had (waits for a turn in progress to finish).

        The call and its result are added to the model's history. KeyError for an unknown
        function; ConversationEnded when the conversation is over.
        """
        function = self.functions[name]
        async with self._lock:
            if not self.active or self.session is None:
                raise ConversationEnded("the conversation has ended")
            self._manual_calls += 1
            call_id = f"manual_{self._manual_calls}"
            log.info("call %s: %s invoked by hand (API)", self.call.id, name)
            try:
                result = await self._call_function(function, args)
            except CallGone:
                self.end("call ended")
                raise ConversationEnded("the call ended") from None
            self.messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}]})
            self.messages.append({"role": "tool", "tool_call_id": call_id,
                                  "content": result.model_content()})
            return result

    # -- what the actions act on ----------------------------------------------------------

    def set_function_active(self, name: str, active: bool) -> bool:
        function = self.functions.get(name)
        if function is None:
            return False
        function.active = active
        return True

    async def speak(self, text: str) -> None:
        """Say `text` to the caller (espeak-ng) and wait until it has been played."""
        if not self.call.is_active:
            return
        try:
            pcm = await render_tts(text)
            operation = self.call.play_samples([pcm])
        except MediaError as exc:
            log.warning("call %s: ai: cannot speak %r: %s", self.call.id, text[:60], exc)
            return
        except CallGone:
            return
        await operation.wait()

    async def play_background(self, url: str, wait: bool) -> None:
        self.stop_background()
        try:
            self._background = await self.call.play([url])
        except MediaError as exc:
            log.warning("call %s: ai: playback_bg %s failed: %s", self.call.id, url, exc)
            return
        if wait:
            await self._background.wait()

    def stop_background(self) -> None:
        if self._background is not None:
            self._background.playback.stop()
            self._background = None
