"""RELAY digit input on the wire: `calling.collect`, `calling.play_and_collect`,
`calling.send_digits`, their params and the `calling.call.collect` / `calling.call.send_digits`
events. Shared by the RELAY client (`callbox.relay`) and the platform (`callbox.server.relay`).

Collect params (top level of `calling.collect`, inside `collect` of `calling.play_and_collect`)::

    {"digits": {"max": 4, "terminators": "#", "digit_timeout": 5},
     "initial_timeout": 5, "partial_results": false, "start_input_timers": true}

The collect event (``final`` false for a partial result)::

    {"call_id", "node_id", "control_id", "state": "finished" | "error" | "collecting",
     "final": true, "result": {"type": "digit", "params": {"digits": "12", "terminator": "#"}}}

``result.type`` is ``digit``, ``no_input`` (nothing before the initial timeout) or ``error``
(the call ended mid-collect).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# -- methods and events ------------------------------------------------------------------------

COLLECT: Final = "calling.collect"
COLLECT_STOP: Final = "calling.collect.stop"
COLLECT_START_INPUT_TIMERS: Final = "calling.collect.start_input_timers"
PLAY_AND_COLLECT: Final = "calling.play_and_collect"
PLAY_AND_COLLECT_STOP: Final = "calling.play_and_collect.stop"
PLAY_AND_COLLECT_VOLUME: Final = "calling.play_and_collect.volume"
SEND_DIGITS: Final = "calling.send_digits"

CALL_COLLECT: Final = "calling.call.collect"
CALL_SEND_DIGITS: Final = "calling.call.send_digits"

RESULT_DIGIT: Final = "digit"
RESULT_NO_INPUT: Final = "no_input"
RESULT_ERROR: Final = "error"

COLLECT_FINISHED: Final = "finished"
COLLECT_ERROR: Final = "error"
COLLECT_COLLECTING: Final = "collecting"

SEND_DIGITS_FINISHED: Final = "finished"
SEND_DIGITS_ERROR: Final = "error"
SEND_DIGITS_TERMINAL_STATES: Final = (SEND_DIGITS_FINISHED, SEND_DIGITS_ERROR)

# -- limits and defaults -----------------------------------------------------------------------

DTMF_DIGITS: Final = "0123456789*#ABCD"
# In `send_digits`: w waits half a second, W a second (the dial-string convention).
DIGIT_WAITS: Final = "wW"
DEFAULT_DIGIT_TIMEOUT: Final = 5.0
DEFAULT_INITIAL_TIMEOUT: Final = 5.0
MAX_COLLECT_DIGITS: Final = 128
MAX_TIMEOUT: Final = 3600.0  # seconds, for initial_timeout and digit_timeout
MAX_SEND_DIGITS: Final = 128


class InputParamError(ValueError):
    """A collect or send_digits parameter is wrong; `field` names it (``collect.digits.max``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CollectParams:
    """What to collect: up to `max_digits` digits, ended early by one of `terminators`.

    Timeouts are seconds; 0 means none (wait until the digits come or the call ends).
    `start_input_timers` false keeps the initial timeout from running until the client sends
    `calling.collect.start_input_timers`.
    """

    max_digits: int
    terminators: str = ""
    digit_timeout: float = DEFAULT_DIGIT_TIMEOUT
    initial_timeout: float = DEFAULT_INITIAL_TIMEOUT
    partial_results: bool = False
    start_input_timers: bool = True

    @classmethod
    def parse(cls, params: Any, prefix: str = "") -> CollectParams:
        """The collect part of a command; `prefix` (``collect.``) goes before field names in
        errors. Speech alone is refused; speech asked with digits is ignored."""
        where = prefix.rstrip(".") or "params"
        if not isinstance(params, Mapping):
            raise InputParamError(where, f"{where} must be an object with digits {{max, ...}}")
        digits = params.get("digits")
        if digits is None:
            if params.get("speech") is not None:
                raise InputParamError(f"{prefix}speech", "speech input is not supported "
                                      f"({prefix}speech): ask for {prefix}digits "
                                      "{max, terminators, digit_timeout}")
            raise InputParamError(f"{prefix}digits",
                                  f"{prefix}digits {{max, terminators, digit_timeout}} is "
                                  "required")
        if not isinstance(digits, Mapping):
            raise InputParamError(f"{prefix}digits", f"{prefix}digits must be an object")
        max_field = f"{prefix}digits.max"
        max_digits = digits.get("max", digits.get("max_digits"))
        if isinstance(max_digits, bool) or not isinstance(max_digits, int) or \
                not 0 < max_digits <= MAX_COLLECT_DIGITS:
            raise InputParamError(max_field, f"{max_field} must be a positive integer (at most "
                                  f"{MAX_COLLECT_DIGITS}), got {max_digits!r}")
        terminators = digits.get("terminators") or ""
        if not isinstance(terminators, str) or len(terminators) > len(DTMF_DIGITS) or \
                any(ch not in DTMF_DIGITS for ch in terminators.upper()):
            raise InputParamError(f"{prefix}digits.terminators",
                                  f"{prefix}digits.terminators must be a string of DTMF "
                                  f"digits (0-9 * # A-D), got {terminators!r}")
        continuous = params.get("continuous")
        if continuous not in (None, False):
            raise InputParamError(f"{prefix}continuous",
                                  f"{prefix}continuous collection is not supported")
        return cls(
            max_digits=max_digits,
            terminators=terminators.upper(),
            digit_timeout=_seconds(digits.get("digit_timeout"), f"{prefix}digits.digit_timeout",
                                   DEFAULT_DIGIT_TIMEOUT),
            initial_timeout=_seconds(params.get("initial_timeout"), f"{prefix}initial_timeout",
                                     DEFAULT_INITIAL_TIMEOUT),
            partial_results=_flag(params.get("partial_results"), f"{prefix}partial_results",
                                  False),
            start_input_timers=_flag(params.get("start_input_timers"),
                                     f"{prefix}start_input_timers", True),
        )


def _seconds(value: Any, field: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
        raise InputParamError(field, f"{field} must be a number of seconds from 0 to "
                              f"{MAX_TIMEOUT:g} (0: no timeout), got {value!r}")
    return float(value)


def _flag(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputParamError(field, f"{field} must be true or false, got {value!r}")
    return value


def parse_digits_to_send(value: Any) -> str:
    """The `digits` of `calling.send_digits`: DTMF digits (0-9 * # A-D, a-d too) and waits
    (w = 0.5 s, W = 1 s). Returns them with a-d made upper case."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SEND_DIGITS or \
            any(ch not in _SENDABLE for ch in value):
        shown = value[:MAX_SEND_DIGITS + 1] if isinstance(value, str) else value
        raise InputParamError("digits", f"digits must be 1 to {MAX_SEND_DIGITS} DTMF digits "
                              f"(0-9 * # A-D) or waits (w = 0.5 s, W = 1 s), got {shown!r}")
    return "".join(ch if ch in DIGIT_WAITS else ch.upper() for ch in value)


_SENDABLE: Final = frozenset(DTMF_DIGITS + DTMF_DIGITS.lower() + DIGIT_WAITS)


# -- results and events ------------------------------------------------------------------------


def digit_result(digits: str, terminator: str = "") -> dict[str, Any]:
    return {"type": RESULT_DIGIT, "params": {"digits": digits, "terminator": terminator}}


def no_input_result() -> dict[str, Any]:
    return {"type": RESULT_NO_INPUT}


def error_result() -> dict[str, Any]:
    return {"type": RESULT_ERROR}


def collect_event_params(*, call_id: str, node_id: str, control_id: str,
                         result: Mapping[str, Any], final: bool = True) -> dict[str, Any]:
    """The params of a `calling.call.collect` event."""
    if not final:
        state = COLLECT_COLLECTING
    elif result.get("type") == RESULT_ERROR:
        state = COLLECT_ERROR
    else:
        state = COLLECT_FINISHED
    return {"call_id": call_id, "node_id": node_id, "control_id": control_id, "state": state,
            "final": final, "result": dict(result)}


def is_final_collect(params: Mapping[str, Any]) -> bool:
    """A `calling.call.collect` event that ends its collect: it carries a result and is not
    marked ``final: false`` (a partial result)."""
    result = params.get("result")
    return isinstance(result, Mapping) and bool(result) and params.get("final") is not False


def send_digits_event_params(*, call_id: str, node_id: str, control_id: str, state: str
                             ) -> dict[str, Any]:
    """The params of a `calling.call.send_digits` event."""
    return {"call_id": call_id, "node_id": node_id, "control_id": control_id, "state": state}
