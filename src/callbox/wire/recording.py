"""Record parameters and the `calling.call.record` event payload.

One module for the shapes that the SDK (RELAY client, `FunctionResult.record_call`) and the
platform (RELAY server, SWML verbs, recording engine) share, so that neither copies the other.
It imports nothing from `callbox.server`.

- `RecordParams.parse(data, entry)` validates a record request (RELAY `record.audio`, the SWML
  `record` / `record_call` verb object) and fills in the defaults of its entry point.
- `record_event_params(...)` builds the params of one `calling.call.record` event, the same
  dict for RELAY (`signalwire.event` -> `params.params`) and for `status_url` webhooks.

Direction is always seen from the recorded call leg: `speak` = what the remote party says (audio
received from it), `listen` = what it hears (audio the platform sends), `both` = both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

FORMATS: Final = ("wav", "mp3")
DIRECTIONS: Final = ("speak", "listen", "both")
PAUSE_BEHAVIORS: Final = ("silence", "skip")
TERMINAL_STATES: Final = ("finished", "no_input", "error")
STATES: Final = ("recording", "paused", *TERMINAL_STATES)
RECORD_EVENT: Final = "calling.call.record"
TERMINATOR_DIGITS: Final = "0123456789*#ABCD"
MAX_INPUT_SENSITIVITY: Final = 100.0
# The longest timeout or max_length accepted: a day (no call is that long; 1e308 is refused).
MAX_SECONDS: Final = 86_400.0
SHOWN_CHARS: Final = 40  # of a wrong value, in an error message

EntryPoint = Literal["relay", "swml_record", "swml_record_call"]

# Per entry point, from SignalWire's published defaults (see spec/recording.md).
# 0.0 turns a timeout / max_length off; "" means no terminators / no status_url.
DEFAULTS: Final[dict[EntryPoint, dict[str, Any]]] = {
    "relay": {
        "format": "mp3",
        "direction": "speak",
        "stereo": False,
        "beep": False,
        "terminators": "#*",
        "initial_timeout": 5.0,
        "end_silence_timeout": 1.0,
        "input_sensitivity": 44.0,
        "max_length": 0.0,
        "status_url": "",
    },
    "swml_record": {
        "format": "wav",
        "direction": "speak",
        "stereo": False,
        "beep": False,
        "terminators": "#",
        "initial_timeout": 4.0,
        "end_silence_timeout": 5.0,
        "input_sensitivity": 44.0,
        "max_length": 0.0,
        "status_url": "",
    },
    "swml_record_call": {
        "format": "wav",
        "direction": "both",
        "stereo": False,
        "beep": False,
        "terminators": "",
        "initial_timeout": 0.0,
        "end_silence_timeout": 0.0,
        "input_sensitivity": 44.0,
        "max_length": 0.0,
        "status_url": "",
    },
}

_BOOL_FIELDS: Final = ("stereo", "beep")
_IGNORED_KEYS: Final = frozenset({"control_id"})  # sits beside the audio keys in SWML
_KNOWN_KEYS: Final = frozenset(DEFAULTS["relay"]) | _IGNORED_KEYS


class RecordParamError(ValueError):
    """A record parameter is wrong; the message names it and says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _parse_choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    if isinstance(value, str) and value in allowed:
        return value
    if len(allowed) == 2:
        expected = f"{allowed[0]!r} or {allowed[1]!r}"
    else:
        expected = f"one of {_quoted(allowed)}"
    raise RecordParamError(field, f"{field} must be {expected}, got {value!r}")


def _parse_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RecordParamError(field, f"{field} must be true or false, got {value!r}")


def _to_number(value: Any) -> float | None:
    """A finite float from a JSON number (int or float, not bool, not a string); None when
    it is not one. A huge int (4000 digits) is not a number of seconds either."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _parse_seconds(field: str, value: Any) -> float:
    number = _to_number(value)
    if number is None or not 0 <= number <= MAX_SECONDS:
        raise RecordParamError(
            field, f"{field} must be a number of seconds from 0 to {MAX_SECONDS:g} (0 = off), "
            f"got {_shown(value)}"
        )
    return number


def _parse_sensitivity(value: Any) -> float:
    number = _to_number(value)
    if number is None or not 0 <= number <= MAX_INPUT_SENSITIVITY:
        raise RecordParamError(
            "input_sensitivity",
            f"input_sensitivity must be a number from 0 to 100, got {_shown(value)}",
        )
    return number


def _shown(value: Any) -> str:
    """`value` for an error message, cut short (a 4000-digit number is not echoed whole)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _parse_terminators(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `terminators: 1` in YAML
    if isinstance(value, str):
        digits = value.upper()
        if all(d in TERMINATOR_DIGITS for d in digits):
            return digits
    raise RecordParamError(
        "terminators", f"terminators may contain only 0-9 * # A-D, got {value!r}"
    )


def _parse_status_url(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if parts is not None and parts.scheme in ("http", "https") and parts.hostname:
            return value
    raise RecordParamError(
        "status_url", f"status_url must be an http:// or https:// URL, got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class RecordParams:
    """One recording's settings, validated, with the entry point's defaults filled in.

    `max_length` 0.0 = no limit; `initial_timeout` / `end_silence_timeout` 0.0 = off;
    `terminators` "" = none; `status_url` "" = none.
    """

    format: str
    direction: str
    stereo: bool
    beep: bool
    terminators: str
    initial_timeout: float
    end_silence_timeout: float
    input_sensitivity: float
    max_length: float
    status_url: str

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, entry: EntryPoint) -> RecordParams:
        """Validate `data` (caller's values) over `DEFAULTS[entry]`.

        A key set to None means "use the default". `control_id` is accepted and ignored.
        Raises `RecordParamError` (a `ValueError`) naming the first wrong field.
        """
        if entry not in DEFAULTS:
            raise ValueError(f"entry must be one of {_quoted(tuple(DEFAULTS))}, got {entry!r}")
        data = data or {}
        if not isinstance(data, Mapping):
            raise RecordParamError("audio", f"record parameters must be an object, got {data!r}")
        unknown = sorted(str(k) for k in data if k not in _KNOWN_KEYS)
        if unknown:
            raise RecordParamError(
                unknown[0],
                f"unknown record parameter {unknown[0]!r}; known: {', '.join(sorted(_KNOWN_KEYS))}",
            )
        merged = dict(DEFAULTS[entry])
        merged.update({k: v for k, v in data.items() if v is not None and k not in _IGNORED_KEYS})
        return cls(
            format=_parse_choice("format", merged["format"], FORMATS),
            direction=_parse_choice("direction", merged["direction"], DIRECTIONS),
            stereo=_parse_bool("stereo", merged["stereo"]),
            beep=_parse_bool("beep", merged["beep"]),
            terminators=_parse_terminators(merged["terminators"]),
            initial_timeout=_parse_seconds("initial_timeout", merged["initial_timeout"]),
            end_silence_timeout=_parse_seconds(
                "end_silence_timeout", merged["end_silence_timeout"]
            ),
            input_sensitivity=_parse_sensitivity(merged["input_sensitivity"]),
            max_length=_parse_seconds("max_length", merged["max_length"]),
            status_url=_parse_status_url(merged["status_url"]),
        )

    @property
    def channels(self) -> int:
        return 2 if self.stereo else 1

    def as_run(self) -> dict[str, Any]:
        """The `audio` object reported in events: every setting as run; `max_length` and
        `status_url` only when set."""
        audio: dict[str, Any] = {
            "format": self.format,
            "direction": self.direction,
            "stereo": self.stereo,
            "beep": self.beep,
            "terminators": self.terminators,
            "initial_timeout": self.initial_timeout,
            "end_silence_timeout": self.end_silence_timeout,
            "input_sensitivity": self.input_sensitivity,
        }
        if self.max_length > 0:
            audio["max_length"] = self.max_length
        if self.status_url:
            audio["status_url"] = self.status_url
        return audio


def record_event_params(
    *,
    call_id: str,
    node_id: str,
    control_id: str,
    recording_id: str,
    state: str,
    url: str,
    params: RecordParams,
    duration: float | None = None,
    size: int | None = None,
    start_time: float | None = None,
    end_time: float | None = None,
    reason: str | None = None,
    pause_behavior: str | None = None,
    peer_call_id: str | None = None,
) -> dict[str, Any]:
    """The params of one `calling.call.record` event (RELAY and webhook alike).

    Each optional field appears only with the state it belongs to, and only when known:
    - `url` at the top level and in `record`, in every state except `no_input` (no file is
      kept then); an empty `url` is left out too, never reported as "".
    - `duration` and `size` at terminal states, at the top level and in `record`.
    - `start_time`, `end_time` when given. `reason` with `error`. `pause_behavior` with `paused`.
    - `peer_call_id` while the recorded call is bridged to another call.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {_quoted(STATES)}, got {state!r}")
    has_url = bool(url) and state != "no_input"
    terminal = state in TERMINAL_STATES
    event: dict[str, Any] = {
        "call_id": call_id,
        "node_id": node_id,
        "control_id": control_id,
        "recording_id": recording_id,
        "state": state,
    }
    record: dict[str, Any] = {"audio": params.as_run()}
    if has_url:
        event["url"] = record["url"] = url
    if terminal and duration is not None:
        event["duration"] = record["duration"] = duration
    if terminal and size is not None:
        event["size"] = record["size"] = size
    if start_time is not None:
        event["start_time"] = start_time
    if end_time is not None:
        event["end_time"] = end_time
    if state == "error" and reason is not None:
        event["reason"] = reason
    if state == "paused" and pause_behavior is not None:
        event["pause_behavior"] = pause_behavior
    if peer_call_id:
        event["peer_call_id"] = peer_call_id
    event["record"] = record
    return event
