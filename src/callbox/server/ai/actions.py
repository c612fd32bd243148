"""Executing a SWAIG reply on the live call: speak its `response`, run its `action` list.

Supported actions:

- `{"SWML": document}` (also `{"raw_swml": text}` inside, and `"transfer": "true"` beside it):
  the document's `main` verbs run with the call's own SWML runner - `record_call`,
  `stop_record_call`, `play`, `hangup`, `set`, `connect` ... exactly as in a script. With
  transfer the reply's response is spoken, the conversation ends (it stops listening), then the
  document runs and the script ends with it: `FunctionResult.connect(dest)` bridges the caller
  to `dest` for the rest of the call. Without transfer the conversation goes on after the
  document (after a `connect`, once the connected party hung up).
- `say` (speak text), `hangup`, `stop` (end the conversation; the script goes on),
  `set_global_data` / `unset_global_data` (sent with later SWAIG requests), `set_meta_data` /
  `unset_meta_data`, `toggle_functions` (tools offered to the model), `playback_bg` /
  `stop_playback_bg`.
- Anything else (`hold`, `change_voice`, `context_switch`, ...): logged as unsupported and
  skipped; the conversation goes on.

Order: the reply's `response` is spoken after the actions that start silently (a `record_call`
without beep, data changes...) and before the first action the caller would hear (a beep, a
`play`, `say`, `hangup`...). So "Recording started." is in the recording it announces, and
"Please leave your message after the beep." comes before the beep.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from callbox.server.swml.runner import StopScript, SwmlError, parse_document

if TYPE_CHECKING:
    from callbox.server.swml.runner import SwmlRunner

log = logging.getLogger(__name__)

# SWML verbs that make no sound for the caller (the response may be spoken after them).
SILENT_VERBS = frozenset({"stop_record_call", "set", "unset", "stop_tap", "tap"})
# Actions that are part of the SWAIG vocabulary but not implemented here.
UNSUPPORTED_NOTE = "not supported by callbox; ignored"


class ActionHost(Protocol):
    """What actions act on: the conversation running on the call."""

    runner: SwmlRunner
    global_data: dict[str, Any]
    meta_data: dict[str, Any]

    @property
    def active(self) -> bool: ...

    async def speak(self, text: str) -> None: ...

    def set_function_active(self, name: str, active: bool) -> bool: ...

    def end(self, why: str) -> None: ...

    async def play_background(self, url: str, wait: bool) -> None: ...

    def stop_background(self) -> None: ...


@dataclass
class ReplyOutcome:
    """What executing one SWAIG reply did."""

    spoken: list[str] = field(default_factory=list)
    executed: list[dict[str, Any]] = field(default_factory=list)

    def note(self, action: str, status: str, detail: str = "") -> None:
        entry = {"action": action, "status": status}
        if detail:
            entry["detail"] = detail
        self.executed.append(entry)


def response_text(reply: Mapping[str, Any]) -> str:
    """The reply's `response` when it is text to speak ("" for none or an object)."""
    response = reply.get("response")
    return response.strip() if isinstance(response, str) else ""


def _swml_document(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and "raw_swml" in value and "sections" not in value:
        value = value["raw_swml"]
    if isinstance(value, str | bytes):
        return parse_document(value)
    if isinstance(value, Mapping):
        return parse_document(dict(value))
    raise SwmlError(f"SWML action must be a document, got {json.dumps(value)[:80]}")


def _verbs(document: Mapping[str, Any]) -> list[tuple[str, Any]]:
    verbs: list[tuple[str, Any]] = []
    for verb in document["sections"]["main"]:
        if isinstance(verb, str):
            verbs.append((verb, {}))
        elif isinstance(verb, Mapping) and len(verb) == 1:
            verbs.append(next(iter(verb.items())))
        else:
            verbs.append(("?", verb))
    return verbs


def is_audible(name: str, value: Any) -> bool:
    """Would the caller hear this action (so the response must be spoken before it)?"""
    if name in ("set_global_data", "unset_global_data", "set_meta_data", "unset_meta_data",
                "toggle_functions", "transfer"):
        return False
    if name != "SWML":
        return True
    try:
        verbs = _verbs(_swml_document(value))
    except SwmlError:
        return False
    for verb, params in verbs:
        if verb == "record_call":
            if isinstance(params, Mapping) and params.get("beep") in (True, "true"):
                return True
        elif verb not in SILENT_VERBS:
            return True
    return False


async def execute_reply(host: ActionHost, reply: Mapping[str, Any], *,
                        function: str = "") -> ReplyOutcome:
    """Speak `reply["response"]` and run `reply["action"]` (see the module's docstring).

    Raises StopScript when an action ended the script (a SWML `hangup`, a transfer).
    """
    outcome = ReplyOutcome()
    call_id = host.runner.call.id
    pending = response_text(reply)
    actions = reply.get("action") or []
    if not isinstance(actions, list):
        log.warning("call %s: SWAIG %s: `action` is not a list (%s); ignored", call_id,
                    function, type(actions).__name__)
        outcome.note("action", "error", "not a list")
        actions = []

    async def say_response() -> None:
        nonlocal pending
        if pending and host.active:
            text, pending = pending, ""
            await host.speak(text)
            outcome.spoken.append(text)

    try:
        for index, action in enumerate(actions):
            if not host.active:
                break
            if not isinstance(action, Mapping):
                log.warning("call %s: SWAIG %s: action[%d] is not an object: %s; skipped",
                            call_id, function, index, json.dumps(action)[:80])
                outcome.note("?", "error", "not an object")
                continue
            transfer = str(action.get("transfer", "")).lower() == "true"
            for name, value in action.items():
                if name == "transfer" and "SWML" in action:
                    continue
                if not host.active:
                    break
                if is_audible(name, value) or (transfer and name == "SWML"):
                    await say_response()  # a transfer leaves the AI: the response goes first
                await _execute_one(host, name, value, outcome, function, transfer=transfer)
    finally:
        if host.runner.call.is_active:
            await say_response()
    return outcome


async def _execute_one(host: ActionHost, name: str, value: Any, outcome: ReplyOutcome,
                       function: str, *, transfer: bool) -> None:
    call = host.runner.call
    if name == "SWML":
        await _run_swml(host, value, outcome, function, transfer=transfer)
    elif name == "say":
        text = str(value).strip()
        if text:
            await host.speak(text)
            outcome.spoken.append(text)
        outcome.note(name, "ok")
    elif name == "hangup":
        outcome.note(name, "ok")
        host.end("hangup action")
        await call.hangup("hangup")
    elif name == "stop":
        outcome.note(name, "ok")
        host.end("stop action")
    elif name == "set_global_data":
        if isinstance(value, Mapping):
            host.global_data.update(value)
            outcome.note(name, "ok")
        else:
            _bad(call.id, function, name, "takes an object", value, outcome)
    elif name == "unset_global_data":
        for key in [value] if isinstance(value, str) else list(value or []):
            host.global_data.pop(str(key), None)
        outcome.note(name, "ok")
    elif name == "set_meta_data":
        if isinstance(value, Mapping):
            host.meta_data.update(value)
            outcome.note(name, "ok")
        else:
            _bad(call.id, function, name, "takes an object", value, outcome)
    elif name == "unset_meta_data":
        for key in [value] if isinstance(value, str) else list(value or []):
            host.meta_data.pop(str(key), None)
        outcome.note(name, "ok")
    elif name == "toggle_functions":
        _toggle(host, value, outcome, function)
    elif name == "playback_bg":
        file, wait = (value.get("file"), bool(value.get("wait"))) if isinstance(
            value, Mapping) else (value, False)
        if isinstance(file, str) and file:
            await host.play_background(file, wait)
            outcome.note(name, "ok")
        else:
            _bad(call.id, function, name, "needs a file", value, outcome)
    elif name == "stop_playback_bg":
        host.stop_background()
        outcome.note(name, "ok")
    else:
        log.warning("call %s: SWAIG %s: action %r is %s", call.id, function, name,
                    UNSUPPORTED_NOTE)
        outcome.note(name, "unsupported", UNSUPPORTED_NOTE)


def _bad(call_id: str, function: str, name: str, what: str, value: Any,
         outcome: ReplyOutcome) -> None:
    log.warning("call %s: SWAIG %s: action %r %s, got %s; skipped", call_id, function, name,
                what, json.dumps(value)[:80])
    outcome.note(name, "error", what)


def _toggle(host: ActionHost, value: Any, outcome: ReplyOutcome, function: str) -> None:
    if not isinstance(value, list):
        _bad(host.runner.call.id, function, "toggle_functions", "takes a list", value, outcome)
        return
    unknown = []
    for entry in value:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("function"), str):
            continue
        active = entry.get("active", True) not in (False, "false", "False", 0)
        if not host.set_function_active(entry["function"], active):
            unknown.append(entry["function"])
    if unknown:
        log.warning("call %s: SWAIG %s: toggle_functions names unknown functions %s",
                    host.runner.call.id, function, ", ".join(unknown))
    outcome.note("toggle_functions", "ok", f"unknown: {', '.join(unknown)}" if unknown else "")


async def _run_swml(host: ActionHost, value: Any, outcome: ReplyOutcome, function: str, *,
                    transfer: bool) -> None:
    runner = host.runner
    call_id = runner.call.id
    try:
        document = _swml_document(value)
    except SwmlError as exc:
        log.warning("call %s: SWAIG %s: SWML action is not valid: %s; skipped", call_id,
                    function, exc)
        outcome.note("SWML", "error", str(exc))
        return
    verbs = [name for name, _ in _verbs(document)]
    if transfer:
        host.end("SWML transfer")
    for index, instruction in enumerate(document["sections"]["main"]):
        if not runner.call.is_active:
            break
        try:
            await runner.execute(instruction, f"SWAIG {function} SWML main[{index}]")
        except StopScript:
            outcome.note("SWML", "ok", " ".join(verbs))
            host.end("SWML action ended the script")
            raise
        except SwmlError as exc:
            log.warning("call %s: SWAIG %s: %s; skipped", call_id, function, exc)
            outcome.note("SWML", "error", str(exc))
            return
    outcome.note("SWML", "ok", " ".join(verbs))
    if transfer:  # the conversation ended before the document ran
        raise StopScript
