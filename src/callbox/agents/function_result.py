"""FunctionResult: what a SWAIG function returns to the AI (a response and actions).

A tool handler builds one by chaining: `FunctionResult("Recording started.").record_call(...)`.
`to_dict()` renders the SWAIG reply the platform consumes:

- `"response"`: what the AI is told (a string, or `{"tool_result", "tool_prompt"}`);
- `"action"`: a list of actions, executed on the live call in order. Each action is a one-key
  object (`{"say": "..."}`, `{"hangup": true}`...) or an `{"SWML": document}` object that runs
  a SWML document on the call (`record_call`, `connect`, `send_sms`...);
- `"post_process": true` when set and there are actions (the AI speaks once more after them).

The JSON is the same, key order included, as the official SignalWire package's for the same
calls (the unit tests compare both); record parameters come from `callbox.wire.recording`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from callbox.agents.swml import swml_document
from callbox.wire.recording import DIRECTIONS, FORMATS

DEFAULT_RESPONSE: Final = "Action completed."
HOLD_MAX_SECONDS: Final = 900
PAY_AI_RESPONSE: Final = (
    "The payment status is ${pay_result}, do not mention anything else about collecting "
    "payment if successful."
)
TAP_DIRECTIONS: Final = ["speak", "listen", "both"]
TAP_CODECS: Final = ["PCMU", "PCMA"]
CONFERENCE_BEEPS: Final = ["true", "false", "onEnter", "onExit"]
CONFERENCE_RECORD: Final = ["do-not-record", "record-from-start"]
CONFERENCE_TRIM: Final = ["trim-silence", "do-not-trim"]
HTTP_METHODS: Final = ["GET", "POST"]

_SWML_VARIABLE = re.compile(r"^[$%]\{.*\}$")
_INTEGER_TEXT = re.compile(r"^-?[0-9]+$")


def _choices(values: Sequence[str]) -> str:
    """`'a' or 'b'` / `'a', 'b', or 'c'`."""
    quoted = [repr(v) for v in values]
    if len(quoted) <= 2:
        return " or ".join(quoted)
    return ", ".join(quoted[:-1]) + ", or " + quoted[-1]


def _swml_integer(name: str, value: Any, minimum: int | None = None) -> int | str:
    """An integer parameter of a SWML verb: an int, an integral float, digits in a string, or a
    `${variable}` left for the platform to substitute. Anything else is a ValueError."""
    number: int | None = None
    if isinstance(value, str):
        text = value.strip()
        if _SWML_VARIABLE.match(text):
            return text
        if text.isascii() and _INTEGER_TEXT.match(text):
            number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or (minimum is not None and number < minimum):
        expected = "an integer" if minimum is None else f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _swml_boolean(name: str, value: Any) -> bool | str:
    """A boolean SWML parameter: a bool, "true"/"false" in any case, or a `${variable}`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if _SWML_VARIABLE.match(text):
            return text
    raise ValueError(f"{name} must be a boolean, got {value!r}")


def _as_text(value: Any) -> str:
    """SWML `pay` takes its numbers and booleans as strings: True -> "true", 5 -> "5"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# How a join_conference option compares with its default (see `_option_state`).
_FLAG, _CHOICE, _TEXT, _GIVEN = "flag", "choice", "text", "given"


def _option_state(kind: str, value: Any, default: Any) -> tuple[bool, bool]:
    """(is the default, is sent) for one join_conference option: a flag or a choice is sent
    when it differs from its default; optional text when non-empty; other optional values when
    given. The bare-name form is used only when every option is its default (text: None)."""
    if kind == _FLAG:
        is_default = bool(value) == default
        return is_default, not is_default
    if kind == _CHOICE:
        return value == default, value != default
    if kind == _TEXT:
        return value is None, bool(value)
    return value is None, value is not None


def _flag(value: Any) -> str:
    """The `transfer` flag of an SWML action: "true" / "false"."""
    return str(value).lower()


class FunctionResult:
    """The reply of a SWAIG function: a response for the AI plus actions for the call.

    Every mutator returns `self`, so results are built by chaining::

        FunctionResult("Transferring you now.").say("One moment").connect("+15551234567")

    `response` may be a string or a `{"tool_result": ..., "tool_prompt": ...}` object
    (`tool_result` / `tool_prompt` arguments, or `set_tool_response()`). `post_process=True`
    lets the AI take one more turn after the actions run.
    """

    def __init__(
        self,
        response: str | dict[str, Any] | None = None,
        post_process: bool = False,
        tool_result: str | None = None,
        tool_prompt: str | None = None,
    ) -> None:
        self.response: str | dict[str, Any] = "" if response is None else response
        self.action: list[Any] = []
        self.post_process = post_process
        if tool_result is not None or tool_prompt is not None:
            self.set_tool_response(tool_result=tool_result, tool_prompt=tool_prompt)

    def __repr__(self) -> str:
        return f"FunctionResult({json.dumps(self.to_dict())})"

    # -- response and rendering -------------------------------------------------------------

    def set_response(self, response: str) -> FunctionResult:
        """Replace the text the AI is given."""
        self.response = response
        return self

    def set_tool_response(
        self, tool_result: str | None = None, tool_prompt: str | None = None
    ) -> FunctionResult:
        """Make `response` an object: `{"tool_result": ..., "tool_prompt": ...}` (each if given)."""
        payload: dict[str, Any] = {}
        if tool_result is not None:
            payload["tool_result"] = tool_result
        if tool_prompt is not None:
            payload["tool_prompt"] = tool_prompt
        self.response = payload
        return self

    def set_post_process(self, post_process: bool) -> FunctionResult:
        """Let the AI take one more turn after the actions run (only sent with actions)."""
        self.post_process = post_process
        return self

    def to_dict(self) -> dict[str, Any]:
        """The SWAIG reply: `response` if set, `action` if any, `post_process` if set with
        actions; `{"response": "Action completed."}` when there is neither."""
        reply: dict[str, Any] = {}
        if self.response:
            reply["response"] = self.response
        if self.action:
            reply["action"] = list(self.action)
            if self.post_process:
                reply["post_process"] = True
        if not reply:
            reply["response"] = DEFAULT_RESPONSE
        return reply

    # -- generic actions --------------------------------------------------------------------

    def add_action(self, name: str, data: Any) -> FunctionResult:
        """Append the action `{name: data}`."""
        self.action.append({name: data})
        return self

    def add_actions(self, actions: list[dict[str, Any]]) -> FunctionResult:
        """Append ready-made actions, each a `{name: data}` object."""
        self.action.extend(actions)
        return self

    def execute_swml(self, swml_content: Any, transfer: bool = False) -> FunctionResult:
        """Run a SWML document on the call: `{"SWML": doc}` (+ `"transfer": "true"`).

        `swml_content` is a dict, a JSON string (text that is not JSON is sent as
        `{"raw_swml": text}`), or any object with `to_dict()`. With `transfer`, the call leaves
        the AI session for the document.
        """
        document: Any
        if isinstance(swml_content, str):
            try:
                document = json.loads(swml_content)
            except ValueError:
                document = {"raw_swml": swml_content}
        elif hasattr(swml_content, "to_dict"):
            document = swml_content.to_dict()
        elif isinstance(swml_content, dict):
            document = dict(swml_content)
        else:
            raise TypeError("swml_content must be string, dict, or SWML object")
        action: dict[str, Any] = {"SWML": document}
        if transfer:
            action["transfer"] = "true"
        self.action.append(action)
        return self

    def _run_verb(self, verb: str, params: Any) -> FunctionResult:
        """Run one SWML verb on the call, as a one-verb document."""
        return self.execute_swml(swml_document({verb: params}))

    # -- speech and call control ------------------------------------------------------------

    def say(self, text: str) -> FunctionResult:
        """Speak `text` to the caller."""
        return self.add_action("say", text)

    def hangup(self) -> FunctionResult:
        """End the call."""
        return self.add_action("hangup", True)

    def hold(
        self,
        prompt: str | int | None = None,
        timeout: int = 300,
        step: str | None = None,
        timeout_step: str | None = None,
    ) -> FunctionResult:
        """Put the caller on hold for up to `timeout` seconds (0-900, clamped).

        An int `prompt` is taken as the timeout (`hold(60)`). A text `prompt` tells the AI what
        to say (the response becomes `{"tool_result": "status: on hold", "tool_prompt": ...}`
        and post-processing is turned on). `step` / `timeout_step` name the context steps to
        go to on hold and when the hold times out.
        """
        if isinstance(prompt, bool):
            prompt = None
        elif isinstance(prompt, int):
            timeout, prompt = prompt, None
        if prompt is not None:
            self.set_tool_response(tool_result="status: on hold", tool_prompt=prompt)
            self.post_process = True
        timeout = max(0, min(timeout, HOLD_MAX_SECONDS))
        if step is None and timeout_step is None:
            return self.add_action("hold", timeout)
        config: dict[str, Any] = {"timeout": timeout}
        if step is not None:
            config["step"] = step
        if timeout_step is not None:
            config["timeout_step"] = timeout_step
        return self.add_action("hold", config)

    def stop(self) -> FunctionResult:
        """Stop the AI session (the SWML script goes on after the `ai` verb)."""
        return self.add_action("stop", True)

    def wait_for_user(
        self, enabled: bool | None = None, timeout: int | None = None, answer_first: bool = False
    ) -> FunctionResult:
        """Wait for the caller to speak first: `"answer_first"`, a timeout in seconds, or
        on/off (default on)."""
        value: Any
        if answer_first:
            value = "answer_first"
        elif timeout is not None:
            value = timeout
        elif enabled is not None:
            value = enabled
        else:
            value = True
        return self.add_action("wait_for_user", value)

    def play_background_file(self, filename: str, wait: bool = False) -> FunctionResult:
        """Play an audio file under the conversation (`playback_bg`); `wait` holds the AI's
        speech until it ends."""
        if wait:
            return self.add_action("playback_bg", {"file": filename, "wait": True})
        return self.add_action("playback_bg", filename)

    def stop_background_file(self) -> FunctionResult:
        """Stop the background file."""
        return self.add_action("stop_playback_bg", True)

    def simulate_user_input(self, text: str) -> FunctionResult:
        """Feed `text` to the AI as if the caller had said it."""
        return self.add_action("user_input", text)

    def add_dynamic_hints(self, hints: list[str | dict[str, Any]]) -> FunctionResult:
        """Add speech-recognition hints (words, or `{"pattern", "replace"}` objects)."""
        return self.add_action("add_dynamic_hints", hints)

    def clear_dynamic_hints(self) -> FunctionResult:
        """Remove the hints added with `add_dynamic_hints`."""
        return self.add_action("clear_dynamic_hints", {})

    def set_end_of_speech_timeout(self, milliseconds: int) -> FunctionResult:
        """Silence (ms) that ends the caller's turn."""
        return self.add_action("end_of_speech_timeout", milliseconds)

    def set_speech_event_timeout(self, milliseconds: int) -> FunctionResult:
        """Time (ms) without speech events that ends the caller's turn."""
        return self.add_action("speech_event_timeout", milliseconds)

    def change_voice(self, voice: str) -> FunctionResult:
        """Switch the AI's TTS voice."""
        if not isinstance(voice, str) or not voice.strip():
            raise ValueError("voice must be a non-empty string")
        return self.add_action("change_voice", voice)

    # -- conversation state -----------------------------------------------------------------

    def update_global_data(self, data: dict[str, Any]) -> FunctionResult:
        """Merge `data` into the call's global data (`set_global_data` action)."""
        return self.add_action("set_global_data", data)

    def set_global_data(self, data: dict[str, Any]) -> FunctionResult:
        """Same as `update_global_data` (the action is named `set_global_data`)."""
        return self.update_global_data(data)

    def remove_global_data(self, keys: str | list[str]) -> FunctionResult:
        """Remove keys from the global data (`unset_global_data`)."""
        return self.add_action("unset_global_data", keys)

    def set_semantic_state(self, state: dict[str, Any]) -> FunctionResult:
        """Store `state` under the global data's `semantic_state` key."""
        return self.update_global_data({"semantic_state": state})

    def set_metadata(self, data: dict[str, Any]) -> FunctionResult:
        """Set this function's metadata (`set_meta_data`)."""
        return self.add_action("set_meta_data", data)

    def remove_metadata(self, keys: str | list[str]) -> FunctionResult:
        """Remove keys from the metadata (`unset_meta_data`)."""
        return self.add_action("unset_meta_data", keys)

    def toggle_functions(self, function_toggles: list[dict[str, Any]]) -> FunctionResult:
        """Enable/disable functions: `[{"function": name, "active": bool}, ...]`."""
        return self.add_action("toggle_functions", function_toggles)

    def enable_functions_on_timeout(self, enabled: bool = True) -> FunctionResult:
        """Let the AI call functions when the caller stays silent."""
        return self.add_action("functions_on_speaker_timeout", enabled)

    def enable_extensive_data(self, enabled: bool = True) -> FunctionResult:
        """Send the full data of this function call to the model."""
        return self.add_action("extensive_data", enabled)

    def replace_in_history(self, text: str | bool = True) -> FunctionResult:
        """Replace this tool call in the conversation history (True: remove it; text: say this
        instead)."""
        return self.add_action("replace_in_history", text)

    def update_settings(self, settings: dict[str, Any]) -> FunctionResult:
        """Change AI settings (temperature, top_p, ...) for the rest of the call."""
        return self.add_action("settings", settings)

    def switch_context(
        self,
        system_prompt: str | None = None,
        user_prompt: str | None = None,
        consolidate: bool = False,
        full_reset: bool = False,
    ) -> FunctionResult:
        """Switch the AI to a new system prompt (`context_switch`).

        A lone system prompt is sent as a string; otherwise an object with the set fields.
        """
        if system_prompt and not (user_prompt or consolidate or full_reset):
            return self.add_action("context_switch", system_prompt)
        context: dict[str, Any] = {}
        if system_prompt:
            context["system_prompt"] = system_prompt
        if user_prompt:
            context["user_prompt"] = user_prompt
        if consolidate:
            context["consolidate"] = True
        if full_reset:
            context["full_reset"] = True
        return self.add_action("context_switch", context)

    def swml_change_step(self, step_name: str) -> FunctionResult:
        """Go to another step of the current context (`change_step`)."""
        return self.add_action("change_step", step_name)

    def swml_change_context(self, context_name: str) -> FunctionResult:
        """Go to another context (`change_context`)."""
        return self.add_action("change_context", context_name)

    # -- SWML actions: recording, transfer, messaging ---------------------------------------

    def record_call(
        self,
        control_id: str | None = None,
        stereo: bool = False,
        format: str = "wav",
        direction: str = "both",
        terminators: str | None = None,
        beep: bool = False,
        input_sensitivity: float = 44.0,
        initial_timeout: float | None = None,
        end_silence_timeout: float | None = None,
        max_length: float | None = None,
        status_url: str | None = None,
    ) -> FunctionResult:
        """Start recording the call in the background (SWML `record_call`); the conversation
        goes on while it records. Stop it with `stop_record_call(control_id)`.

        `direction` is seen from the recorded call leg, the definition SWML and RELAY use and
        the one callbox uses everywhere:

        - `"speak"`: what the remote party (the caller) says, i.e. the audio received from it;
        - `"listen"`: what the caller hears (prompts, TTS, the agent's voice);
        - `"both"`: both sides (with `stereo`, `speak` on the left channel, `listen` on the
          right).

        Note: SignalWire's AI-agent page for this method words it from the agent's side
        ("speak: what the agent says, listen: what the caller says"); its SWML/RELAY pages, and
        callbox, use the definition above.

        Other parameters: `control_id` names the recording (omitted: the platform makes one);
        `format` `"wav"` or `"mp3"`; `terminators` DTMF digits that end it; `beep` before it
        starts; `input_sensitivity` (0-100) the voice-detection threshold;
        `initial_timeout` / `end_silence_timeout` (seconds) end voicemail-style recordings on
        silence (omit both for a continuous recording); `max_length` (seconds); `status_url`
        receives the recording's state changes.

        Raises ValueError if `format` is not "wav"/"mp3" or `direction` not "speak"/"listen"/
        "both". (The official package also accepts "mp4"; callbox records wav and mp3 only.)

        JSON: `stereo, format, direction, beep, input_sensitivity` always, in that order, then
        each of `control_id, terminators, initial_timeout, end_silence_timeout, max_length,
        status_url` that is set (empty strings count as unset; a 0 timeout is kept).
        """
        if format not in FORMATS:
            raise ValueError(f"format must be {_choices(FORMATS)}, got {format!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be {_choices(DIRECTIONS)}, got {direction!r}")
        params: dict[str, Any] = {
            "stereo": stereo,
            "format": format,
            "direction": direction,
            "beep": beep,
            "input_sensitivity": input_sensitivity,
        }
        if control_id:
            params["control_id"] = control_id
        if terminators:
            params["terminators"] = terminators
        for key, seconds in (
            ("initial_timeout", initial_timeout),
            ("end_silence_timeout", end_silence_timeout),
            ("max_length", max_length),
        ):
            if seconds is not None:
                params[key] = seconds
        if status_url:
            params["status_url"] = status_url
        return self._run_verb("record_call", params)

    def stop_record_call(self, control_id: str | None = None) -> FunctionResult:
        """Stop a background recording: the one named `control_id`, else the most recent."""
        return self._run_verb("stop_record_call", {"control_id": control_id} if control_id else {})

    def connect(
        self, destination: str, final: bool = True, from_addr: str | None = None
    ) -> FunctionResult:
        """Connect the caller to `destination` (a number or SIP URI). `final` (default) hands
        the call over for good; otherwise the AI resumes when the connected call ends."""
        params: dict[str, Any] = {"to": destination}
        if from_addr is not None:
            params["from"] = from_addr
        document = swml_document({"connect": params}, sections_first=True)
        self.action.append({"SWML": document, "transfer": _flag(final)})
        return self

    def swml_transfer(self, dest: str, ai_response: str, final: bool = True) -> FunctionResult:
        """Transfer to another SWML script at `dest`; `ai_response` is what the AI is told if
        the call comes back."""
        document = swml_document(
            {"set": {"ai_response": ai_response}}, {"transfer": {"dest": dest}}
        )
        self.action.append({"SWML": document, "transfer": _flag(final)})
        return self

    def send_sms(
        self,
        to_number: str,
        from_number: str,
        body: str | None = None,
        media: list[str] | None = None,
        tags: list[str] | None = None,
        region: str | None = None,
    ) -> FunctionResult:
        """Send an SMS/MMS (`body` and/or `media` URLs) from the call."""
        if not body and not media:
            raise ValueError("Either body or media must be provided")
        params: dict[str, Any] = {"to_number": to_number, "from_number": from_number}
        for key, value in (("body", body), ("media", media), ("tags", tags), ("region", region)):
            if value:
                params[key] = value
        return self._run_verb("send_sms", params)

    def pay(
        self,
        payment_connector_url: str,
        input_method: str = "dtmf",
        status_url: str | None = None,
        payment_method: str = "credit-card",
        timeout: int = 5,
        max_attempts: int = 1,
        security_code: bool = True,
        postal_code: bool | str = True,
        min_postal_code_length: int = 0,
        token_type: str = "reusable",
        charge_amount: str | None = None,
        currency: str = "usd",
        language: str = "en-US",
        voice: str = "woman",
        description: str | None = None,
        valid_card_types: str = "visa mastercard amex",
        parameters: list[dict[str, str]] | None = None,
        prompts: list[dict[str, Any]] | None = None,
        ai_response: str | None = PAY_AI_RESPONSE,
    ) -> FunctionResult:
        """Collect a card payment (SWML `pay`), then set `ai_response` for the AI."""
        params: dict[str, Any] = {
            "payment_connector_url": payment_connector_url,
            "input": input_method,
            "payment_method": payment_method,
            "timeout": _as_text(_swml_integer("timeout", timeout)),
            "max_attempts": _as_text(_swml_integer("max_attempts", max_attempts)),
            "security_code": _as_text(_swml_boolean("security_code", security_code)),
            "min_postal_code_length": _as_text(
                _swml_integer("min_postal_code_length", min_postal_code_length)
            ),
            "token_type": token_type,
            "currency": currency,
            "language": language,
            "voice": voice,
            "valid_card_types": valid_card_types,
            "postal_code": _as_text(postal_code) if isinstance(postal_code, bool) else postal_code,
        }
        for key, value in (
            ("status_url", status_url),
            ("charge_amount", charge_amount),
            ("description", description),
            ("parameters", parameters),
            ("prompts", prompts),
        ):
            if value:
                params[key] = value
        return self.execute_swml(
            swml_document({"set": {"ai_response": ai_response}}, {"pay": params})
        )

    @staticmethod
    def create_payment_prompt(
        for_situation: str,
        actions: list[dict[str, str]],
        card_type: str | None = None,
        error_type: str | None = None,
    ) -> dict[str, Any]:
        """A `prompts` entry for `pay()`."""
        prompt: dict[str, Any] = {"for": for_situation, "actions": actions}
        if card_type:
            prompt["card_type"] = card_type
        if error_type:
            prompt["error_type"] = error_type
        return prompt

    @staticmethod
    def create_payment_action(action_type: str, phrase: str) -> dict[str, str]:
        """An `actions` entry of a payment prompt."""
        return {"type": action_type, "phrase": phrase}

    @staticmethod
    def create_payment_parameter(name: str, value: str) -> dict[str, str]:
        """A `parameters` entry for `pay()`."""
        return {"name": name, "value": value}

    def join_room(self, name: str) -> FunctionResult:
        """Join a video/audio room."""
        return self._run_verb("join_room", {"name": name})

    def sip_refer(self, to_uri: str) -> FunctionResult:
        """Transfer a SIP call with REFER."""
        return self._run_verb("sip_refer", {"to_uri": to_uri})

    def join_conference(
        self,
        name: str,
        muted: bool = False,
        beep: str = "true",
        start_on_enter: bool = True,
        end_on_exit: bool = False,
        wait_url: str | None = None,
        max_participants: int | None = None,
        record: str = "do-not-record",
        region: str | None = None,
        trim: str = "trim-silence",
        coach: str | None = None,
        status_callback_event: str | None = None,
        status_callback: str | None = None,
        status_callback_method: str = "POST",
        recording_status_callback: str | None = None,
        recording_status_callback_method: str = "POST",
        recording_status_callback_event: str = "completed",
        result: Any | None = None,
    ) -> FunctionResult:
        """Join a conference: just its name when every option is the default, else an object
        with the name and each option that differs from its default."""
        if beep not in CONFERENCE_BEEPS:
            raise ValueError(f"beep must be one of {CONFERENCE_BEEPS}")
        if max_participants is not None:
            max_participants = _swml_integer("max_participants", max_participants, minimum=2)  # type: ignore[assignment]
        if record not in CONFERENCE_RECORD:
            raise ValueError(f"record must be one of {CONFERENCE_RECORD}")
        if trim not in CONFERENCE_TRIM:
            raise ValueError(f"trim must be one of {CONFERENCE_TRIM}")
        if status_callback_method not in HTTP_METHODS:
            raise ValueError(f"status_callback_method must be one of {HTTP_METHODS}")
        if recording_status_callback_method not in HTTP_METHODS:
            raise ValueError(f"recording_status_callback_method must be one of {HTTP_METHODS}")
        if isinstance(name, str) and not name.strip():
            raise ValueError("name cannot be empty")
        options = [
            ("muted", muted, _FLAG, False),
            ("beep", beep, _CHOICE, "true"),
            ("start_on_enter", start_on_enter, _FLAG, True),
            ("end_on_exit", end_on_exit, _FLAG, False),
            ("wait_url", wait_url, _TEXT, None),
            ("max_participants", max_participants, _GIVEN, None),
            ("record", record, _CHOICE, "do-not-record"),
            ("region", region, _TEXT, None),
            ("trim", trim, _CHOICE, "trim-silence"),
            ("coach", coach, _TEXT, None),
            ("status_callback_event", status_callback_event, _TEXT, None),
            ("status_callback", status_callback, _TEXT, None),
            ("status_callback_method", status_callback_method, _CHOICE, "POST"),
            ("recording_status_callback", recording_status_callback, _TEXT, None),
            ("recording_status_callback_method", recording_status_callback_method, _CHOICE, "POST"),
            (
                "recording_status_callback_event",
                recording_status_callback_event,
                _CHOICE,
                "completed",
            ),
            ("result", result, _GIVEN, None),
        ]
        states = [
            (key, value, *_option_state(kind, value, default))
            for key, value, kind, default in options
        ]
        params: str | dict[str, Any]
        if all(is_default for _, _, is_default, _ in states):
            params = name
        else:
            params = {"name": name}
            params.update({key: value for key, value, _, sent in states if sent})
        return self._run_verb("join_conference", params)

    def tap(
        self,
        uri: str,
        control_id: str | None = None,
        direction: str = "both",
        codec: str = "PCMU",
        rtp_ptime: int = 20,
        status_url: str | None = None,
    ) -> FunctionResult:
        """Stream the call's audio to `uri` (rtp://, ws://, wss://). `direction` as in
        `record_call` (speak = what the caller says, listen = what it hears)."""
        if direction not in TAP_DIRECTIONS:
            raise ValueError(f"direction must be one of {TAP_DIRECTIONS}")
        if codec not in TAP_CODECS:
            raise ValueError(f"codec must be one of {TAP_CODECS}")
        if rtp_ptime <= 0:
            raise ValueError("rtp_ptime must be a positive integer")
        params: dict[str, Any] = {"uri": uri}
        if control_id:
            params["control_id"] = control_id
        params["direction"] = direction
        if codec != "PCMU":
            params["codec"] = codec
        if rtp_ptime != 20:
            params["rtp_ptime"] = rtp_ptime
        if status_url:
            params["status_url"] = status_url
        return self._run_verb("tap", params)

    def stop_tap(self, control_id: str | None = None) -> FunctionResult:
        """Stop a tap: the one named `control_id`, else the most recent."""
        return self._run_verb("stop_tap", {"control_id": control_id} if control_id else {})

    def swml_user_event(self, event_data: dict[str, Any]) -> FunctionResult:
        """Send a user event to the client app (SWML `user_event`)."""
        document = swml_document({"user_event": {"event": event_data}}, sections_first=True)
        return self.add_action("SWML", document)

    # -- RPC --------------------------------------------------------------------------------

    def execute_rpc(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        call_id: str | None = None,
        node_id: str | None = None,
    ) -> FunctionResult:
        """Run an RPC method on the platform (SWML `execute_rpc`), optionally on another call."""
        rpc: dict[str, Any] = {"method": method}
        if call_id:
            rpc["call_id"] = call_id
        if node_id:
            rpc["node_id"] = node_id
        if params:
            rpc["params"] = params
        return self._run_verb("execute_rpc", rpc)

    def rpc_dial(
        self, to_number: str, from_number: str, dest_swml: str, device_type: str = "phone"
    ) -> FunctionResult:
        """Dial out and run the SWML at `dest_swml` on the new call."""
        devices = {
            "type": device_type,
            "params": {"to_number": to_number, "from_number": from_number},
        }
        return self.execute_rpc(method="dial", params={"devices": devices, "dest_swml": dest_swml})

    def rpc_ai_message(
        self,
        call_id: str,
        message_text: str | None = None,
        role: str = "system",
        global_data: dict[str, Any] | None = None,
    ) -> FunctionResult:
        """Inject a message and/or global data into the AI session of another call."""
        params: dict[str, Any] = {}
        if message_text is not None:
            params["role"] = role
            params["message_text"] = message_text
        if global_data is not None:
            params["global_data"] = global_data
        if not params:
            raise ValueError("rpc_ai_message needs message_text, global_data, or both")
        return self.execute_rpc(method="ai_message", call_id=call_id, params=params)

    def rpc_ai_global_data(self, call_id: str, data: dict[str, Any]) -> FunctionResult:
        """Update the global data of another call's AI session."""
        return self.rpc_ai_message(call_id=call_id, global_data=data)

    def rpc_ai_unhold(self, call_id: str) -> FunctionResult:
        """Take another call's AI session off hold."""
        return self.execute_rpc(method="ai_unhold", call_id=call_id, params={})


SwaigFunctionResult = FunctionResult
"""The name older SignalWire releases used."""


def as_reply(result: Any) -> dict[str, Any]:
    """A handler's return value as a SWAIG reply: a FunctionResult is rendered, a dict is sent
    as is, None means success, anything else becomes the response text."""
    if result is None:
        return FunctionResult("Function executed successfully").to_dict()
    if isinstance(result, FunctionResult):
        return result.to_dict()
    if isinstance(result, Mapping):
        return dict(result)
    return {"response": str(result)}
