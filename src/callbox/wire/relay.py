"""RELAY wire shapes: the JSON-RPC envelope, method and event names, codes, play media.

One module for what the RELAY client (`callbox.relay`) and the RELAY server
(`callbox.server.relay`) exchange, so that neither copies the other. Pure functions and
dataclasses, no I/O; it imports nothing from `callbox.server`.

Frames are JSON-RPC 2.0 text messages over a WebSocket (see spec/relay-protocol.md):

- a request ``{"jsonrpc":"2.0","id":ID,"method":M,"params":{...}}`` (client commands, and the
  server's ``signalwire.event`` / ``signalwire.ping`` / ``signalwire.disconnect``);
- a reply ``{"jsonrpc":"2.0","id":ID,"result":{...}}`` or ``{..., "error":{"code","message"}}``.

Calling commands always get a ``result``; their outcome is its ``code`` (``"200"`` ok, ``"400"``
bad params, ``"404"`` unknown call or control, ``"410"`` call gone) with a ``message``. A JSON-RPC
``error`` is for frames that are not commands at all: bad JSON, an unknown method, bad
credentials.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from callbox.wire.json_depth import loads_bounded
from callbox.wire.recording import RECORD_EVENT

JSONRPC: Final = "2.0"
PROTOCOL_VERSION: Final = {"major": 2, "minor": 0, "revision": 0}

# -- methods ---------------------------------------------------------------------------------

CONNECT: Final = "signalwire.connect"
EVENT: Final = "signalwire.event"
PING: Final = "signalwire.ping"
DISCONNECT: Final = "signalwire.disconnect"
RECEIVE: Final = "signalwire.receive"
UNRECEIVE: Final = "signalwire.unreceive"

ANSWER: Final = "calling.answer"
END: Final = "calling.end"
PLAY: Final = "calling.play"
PLAY_STOP: Final = "calling.play.stop"
PLAY_PAUSE: Final = "calling.play.pause"
PLAY_RESUME: Final = "calling.play.resume"
PLAY_VOLUME: Final = "calling.play.volume"
RECORD: Final = "calling.record"
RECORD_STOP: Final = "calling.record.stop"
RECORD_PAUSE: Final = "calling.record.pause"
RECORD_RESUME: Final = "calling.record.resume"

CALLING_METHODS: Final = (
    ANSWER, END, PLAY, PLAY_STOP, PLAY_PAUSE, PLAY_RESUME, PLAY_VOLUME,
    RECORD, RECORD_STOP, RECORD_PAUSE, RECORD_RESUME,
)

# -- events ----------------------------------------------------------------------------------

CALL_RECEIVE: Final = "calling.call.receive"
CALL_STATE: Final = "calling.call.state"
CALL_PLAY: Final = "calling.call.play"
CALL_RECORD: Final = RECORD_EVENT  # "calling.call.record"; payload in callbox.wire.recording
# The server's opaque re-authorization blob (`params.authorization_state`): a client sends the
# last one back in `signalwire.connect` when it reconnects.
AUTHORIZATION_STATE: Final = "signalwire.authorization.state"

CALL_STATES: Final = ("created", "ringing", "answered", "ending", "ended")
END_REASONS: Final = (
    "hangup", "cancel", "busy", "noAnswer", "decline", "error", "abandoned", "max_duration",
    "not_found",
)
# What a client may ask for in `calling.end`.
HANGUP_REASONS: Final = ("hangup", "cancel", "busy", "decline", "error")

PLAY_STATES: Final = ("playing", "paused", "finished", "error")
PLAY_TERMINAL_STATES: Final = ("finished", "error")
PLAY_DIRECTIONS: Final = ("listen", "both")  # what the caller hears; "speak" needs a 2nd leg
MAX_PLAY_VOLUME_DB: Final = 40.0
MAX_PLAY_ITEMS: Final = 50
MAX_TTS_CHARS: Final = 4000

# -- codes -----------------------------------------------------------------------------------

CODE_OK: Final = "200"
CODE_BAD_REQUEST: Final = "400"
CODE_NOT_FOUND: Final = "404"
CODE_GONE: Final = "410"
CODE_SERVER_ERROR: Final = "500"

# JSON-RPC 2.0 error codes (the -32000..-32099 range is ours).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
AUTH_FAILED: Final = -32002
NOT_CONNECTED: Final = -32003
TOO_BUSY: Final = -32004

# Arrays and objects one frame may nest (RELAY frames use fewer than 10): deeper JSON is a
# parse error, so that decoding never recurses without bound.
MAX_JSON_DEPTH: Final = 64


def is_success(code: Any) -> bool:
    """A calling result code of the form 2xx (as a string or an int)."""
    text = str(code)
    return len(text) == 3 and text.startswith("2") and text.isdigit()


# -- envelopes -------------------------------------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def request(method: str, params: Mapping[str, Any], request_id: str | None = None
            ) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id or new_id(), "method": method,
            "params": dict(params)}


def result(request_id: Any, value: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": dict(value or {})}


def error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "error": {"code": code, "message": message}}


def command_result(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The `result` of a calling command: ``{"code": "200", "message": ..., **extra}``."""
    return {"code": code, "message": message, **extra}


def event(event_type: str, params: Mapping[str, Any], *, project_id: str, channel: str,
          timestamp: float, event_id: str | None = None) -> dict[str, Any]:
    """A `signalwire.event` request frame carrying one event."""
    return request(EVENT, {
        "event_type": event_type,
        "event_channel": channel,
        "timestamp": timestamp,
        "project_id": project_id,
        "params": dict(params),
    }, event_id)


# -- parsing ---------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """A frame is not valid JSON-RPC; `code` is the JSON-RPC error code to reply with."""

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    id: Any
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    id: Any
    code: int
    message: str


Message = Request | Response | ErrorResponse


def parse_message(text: str | bytes) -> Message:
    """Parse one frame; raises `ProtocolError` (with the code to answer) when it is bad.

    JSON nested deeper than `MAX_JSON_DEPTH` is a parse error, found before decoding.
    """
    try:
        data = loads_bounded(text, MAX_JSON_DEPTH)
    except ValueError as exc:  # UnicodeDecodeError and too deep included
        raise ProtocolError(PARSE_ERROR, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_REQUEST, "a frame must be a JSON object")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str | int):
        raise ProtocolError(INVALID_REQUEST, "id must be a string or a number")
    if data.get("jsonrpc") != JSONRPC:
        raise ProtocolError(INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id)
    if "method" in data:
        method = data["method"]
        if not isinstance(method, str) or not method:
            raise ProtocolError(INVALID_REQUEST, "method must be a non-empty string", request_id)
        params = data.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ProtocolError(INVALID_PARAMS, "params must be an object", request_id)
        return Request(request_id, method, params)
    if "result" in data:
        value = data["result"]
        return Response(request_id, value if isinstance(value, dict) else {"value": value})
    if "error" in data:
        err = data["error"]
        if isinstance(err, dict):
            code = err.get("code", INTERNAL_ERROR)
            return ErrorResponse(request_id, code if isinstance(code, int) else INTERNAL_ERROR,
                                 str(err.get("message", "")))
        return ErrorResponse(request_id, INTERNAL_ERROR, str(err))
    raise ProtocolError(INVALID_REQUEST, "a frame needs method, result or error", request_id)


def dumps(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), allow_nan=False)


# -- signalwire.connect ----------------------------------------------------------------------

MAX_CONTEXTS: Final = 100
MAX_CONTEXT_LENGTH: Final = 128


class ParamError(ValueError):
    """A command parameter is wrong; `field` names it (as a path: ``play[0].params.text``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_contexts(value: Any, field: str = "contexts") -> list[str]:
    """A list of context names (duplicates dropped, order kept)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CONTEXTS:
        raise ParamError(field, f"{field} must be a list of at most {MAX_CONTEXTS} names")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_CONTEXT_LENGTH:
            raise ParamError(field, f"{field} must hold non-empty strings of at most "
                             f"{MAX_CONTEXT_LENGTH} characters, got {item!r}")
        if item not in names:
            names.append(item)
    return names


@dataclass(frozen=True, slots=True)
class ConnectParams:
    """`signalwire.connect` params (what the client sends)."""

    project: str
    token: str
    contexts: list[str] = field(default_factory=list)
    protocol: str = ""
    agent: str = ""
    event_acks: bool = True
    authorization_state: str = ""

    def to_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "version": dict(PROTOCOL_VERSION),
            "agent": self.agent,
            "event_acks": self.event_acks,
            "authentication": {"project": self.project, "token": self.token},
        }
        if self.contexts:
            params["contexts"] = list(self.contexts)
        if self.protocol:
            params["protocol"] = self.protocol
        if self.authorization_state:
            params["authorization_state"] = self.authorization_state
        return params

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> ConnectParams:
        auth = params.get("authentication")
        if not isinstance(auth, Mapping):
            raise ParamError("authentication", "authentication {project, token} is required")
        project, token = auth.get("project"), auth.get("token")
        if not isinstance(project, str) or not project:
            raise ParamError("authentication.project", "authentication.project is required")
        if not isinstance(token, str) or not token:
            raise ParamError("authentication.token", "authentication.token is required")
        protocol = params.get("protocol") or ""
        if not isinstance(protocol, str):
            raise ParamError("protocol", "protocol must be a string")
        authorization_state = params.get("authorization_state") or ""
        if not isinstance(authorization_state, str):
            raise ParamError("authorization_state", "authorization_state must be a string")
        agent = params.get("agent") or ""
        return cls(project=project, token=token, contexts=parse_contexts(params.get("contexts")),
                   protocol=protocol, agent=str(agent)[:200],
                   event_acks=params.get("event_acks", True) is not False,
                   authorization_state=authorization_state)


def connect_result(*, project: str, node_id: str, protocol: str, restored: bool
                   ) -> dict[str, Any]:
    return {
        "identity": f"{project}@{node_id}",
        "nodeid": node_id,
        "master_nodeid": node_id,
        "protocol": protocol,
        "session_restored": restored,
        "authorization": {"project": project, "scopes": ["calling"]},
        "ice_servers": [],
    }


# -- event params ----------------------------------------------------------------------------


def sip_device(*, from_uri: str, to_uri: str, from_number: str, to_number: str
               ) -> dict[str, Any]:
    return {"type": "sip", "params": {
        "from": from_uri, "to": to_uri, "from_number": from_number, "to_number": to_number,
        "headers": [],
    }}


def receive_params(*, call_id: str, node_id: str, project_id: str, context: str, tag: str,
                   device: Mapping[str, Any], segment_id: str) -> dict[str, Any]:
    return {
        "call_id": call_id, "node_id": node_id, "project_id": project_id, "context": context,
        "tag": tag, "direction": "inbound", "call_state": "created", "segment_id": segment_id,
        "device": dict(device),
    }


def state_params(*, call_id: str, node_id: str, tag: str, state: str, direction: str,
                 device: Mapping[str, Any], end_reason: str | None = None
                 ) -> dict[str, Any]:
    params = {"call_id": call_id, "node_id": node_id, "tag": tag, "call_state": state,
              "direction": direction, "device": dict(device)}
    if state in ("ending", "ended") and end_reason:
        params["end_reason"] = end_reason
    return params


def play_params(*, call_id: str, node_id: str, control_id: str, state: str,
                reason: str | None = None) -> dict[str, Any]:
    params = {"call_id": call_id, "node_id": node_id, "control_id": control_id, "state": state}
    if state == "error" and reason:
        params["reason"] = reason
    return params


# -- play media ------------------------------------------------------------------------------


def to_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def media_url(item: Any, index: int = 0) -> str:
    """One play item -> the platform's media URL.

    Accepts the nested form the official client sends (``{"type": "tts", "params": {"text":
    ...}}``) and the flat form (``{"type": "tts", "text": ...}``):

    - ``tts`` (``text``, optional ``language`` e.g. ``en-US``; ``gender``/``voice`` are
      accepted and ignored) -> ``say:TEXT`` or ``say:voice=LANGUAGE:TEXT``;
    - ``audio`` (``url``, http or https) -> the URL;
    - ``silence`` (``duration`` seconds) -> ``silence:SECONDS``;
    - ``ringtone`` (``name`` country code, optional ``duration``) -> ``ring:[SECONDS:]NAME``.

    Raises `ParamError` naming the field (``play[2].params.url``).
    """
    where = f"play[{index}]"
    if not isinstance(item, Mapping):
        raise ParamError(where, f"{where} must be an object with a type, got {item!r}")
    kind = item.get("type")
    nested = item.get("params")
    if nested is not None and not isinstance(nested, Mapping):
        raise ParamError(f"{where}.params", f"{where}.params must be an object")
    values: Mapping[str, Any] = nested if nested is not None else item
    prefix = f"{where}.params" if nested is not None else where

    def get(name: str) -> Any:
        return values.get(name, item.get(name))

    if kind == "tts":
        text = get("text")
        if not isinstance(text, str) or not text.strip():
            raise ParamError(f"{prefix}.text", f"{prefix}.text must be a non-empty string")
        if len(text) > MAX_TTS_CHARS:
            raise ParamError(f"{prefix}.text",
                             f"{prefix}.text is longer than {MAX_TTS_CHARS} characters")
        text = " ".join(text.split())  # one line: the URL form has no room for newlines
        language = get("language")
        if language is not None:
            if not isinstance(language, str) or not _is_language(language):
                raise ParamError(f"{prefix}.language",
                                 f"{prefix}.language must look like 'en-US', got {language!r}")
            return f"say:voice={language.lower()}:{text}"
        # a text that starts with "voice=" must not be read as a voice choice
        return f"say: {text}" if text.startswith("voice=") else f"say:{text}"
    if kind == "audio":
        url = get("url")
        parts = None
        if isinstance(url, str):
            try:
                parts = urlsplit(url)
            except ValueError:
                parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ParamError(f"{prefix}.url",
                             f"{prefix}.url must be an http:// or https:// URL, got {url!r}")
        return str(url)
    if kind == "silence":
        seconds = to_number(get("duration"))
        if seconds is None or not 0 < seconds <= 3600:
            raise ParamError(f"{prefix}.duration", f"{prefix}.duration must be a number of "
                             f"seconds from 0 to 3600, got {get('duration')!r}")
        return f"silence:{seconds:g}"
    if kind == "ringtone":
        name = get("name") or "us"
        if not isinstance(name, str) or not name.isalpha() or len(name) > 8:
            raise ParamError(f"{prefix}.name",
                             f"{prefix}.name must be a country code such as 'us', got {name!r}")
        duration = get("duration")
        if duration is None:
            return f"ring:{name.lower()}"
        seconds = to_number(duration)
        if seconds is None or not 0 < seconds <= 3600:
            raise ParamError(f"{prefix}.duration", f"{prefix}.duration must be a number of "
                             f"seconds from 0 to 3600, got {duration!r}")
        return f"ring:{seconds:g}:{name.lower()}"
    raise ParamError(f"{where}.type", f"{where}.type must be one of 'tts', 'audio', 'silence', "
                     f"'ringtone', got {kind!r}")


def _is_language(value: str) -> bool:
    parts = value.split("-")
    return 0 < len(value) <= 16 and all(p.isalnum() and p.isascii() for p in parts)


def play_urls(media: Any) -> list[str]:
    """The `play` list of a `calling.play` command -> media URLs (see `media_url`)."""
    if not isinstance(media, list) or not media:
        raise ParamError("play", "play must be a non-empty list of media objects")
    if len(media) > MAX_PLAY_ITEMS:
        raise ParamError("play", f"play may hold at most {MAX_PLAY_ITEMS} items")
    return [media_url(item, i) for i, item in enumerate(media)]


def parse_volume(value: Any, field: str = "volume") -> float:
    """A play volume in dB (-40..+40); None means 0."""
    if value is None:
        return 0.0
    number = to_number(value)
    if number is None or abs(number) > MAX_PLAY_VOLUME_DB:
        raise ParamError(field, f"{field} must be a number of dB from -40 to 40, got {value!r}")
    return number


def parse_loop(value: Any) -> int:
    """How many times to play (0 = until stopped); None means once."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParamError("loop", f"loop must be an integer >= 0 (0 = forever), got {value!r}")
    return value


def parse_control_id(value: Any) -> str:
    """A client-chosen control_id, or a new one when absent."""
    if value is None or value == "":
        return new_id()
    if not isinstance(value, str) or len(value) > 128:
        raise ParamError("control_id", "control_id must be a string of at most 128 characters")
    return value
