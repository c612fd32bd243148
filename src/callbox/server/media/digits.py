"""Digit collection as a sans-I/O state machine: fed received digits and media-clock frames,
it says when the input is complete and what it was.

Rules (SignalWire's `collect`):

- input ends with `max_digits` digits, or with a terminator (reported apart, not in the
  digits), or when `digit_timeout` passes after a digit without another one;
- nothing before `initial_timeout` (counted from `start_timers()`) is `no_input`;
- `fail()` (the call ended) is `error`; `stop()` reports what came so far.

Timeouts count 20 ms frames, not wall-clock time, so they are exact and testable without
waiting; 0 disables a timeout. Transitions (state, input) -> state::

    waiting    + digit       -> collecting (or done: max digits / terminator)
    waiting    + initial t/o -> done (no_input)        (only once the timers started)
    collecting + digit       -> collecting (or done)
    collecting + digit t/o   -> done (digit)
    any        + stop / fail -> done
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from callbox.server.media.frames import FRAMES_PER_SECOND

NO_TIMEOUT: Final = 0


class Outcome(StrEnum):
    DIGIT = "digit"
    NO_INPUT = "no_input"
    ERROR = "error"


class Phase(StrEnum):
    WAITING = "waiting"  # for the first digit
    COLLECTING = "collecting"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class DigitRules:
    """What to collect; timeouts in seconds (0: none)."""

    max_digits: int
    terminators: str = ""
    digit_timeout: float = 5.0
    initial_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {self.max_digits}")
        if self.digit_timeout < 0 or self.initial_timeout < 0:
            raise ValueError("timeouts must be >= 0 seconds")


@dataclass(frozen=True, slots=True)
class CollectResult:
    outcome: Outcome
    digits: str = ""
    terminator: str = ""


def frames_for(seconds: float) -> int:
    """A timeout in frames (at least one unless it is 0: no timeout)."""
    if seconds <= 0:
        return NO_TIMEOUT
    return max(1, round(seconds * FRAMES_PER_SECOND))


class DigitCollector:
    """One collect. Feed it `digit()` for each received digit and `tick()` once per 20 ms
    frame; each returns the `CollectResult` when that input completed the collect (once),
    else None. `result` keeps it."""

    def __init__(self, rules: DigitRules, *, timers_started: bool = True) -> None:
        self.rules = rules
        self.phase = Phase.WAITING
        self.digits = ""
        self.result: CollectResult | None = None
        self._initial_frames = frames_for(rules.initial_timeout)
        self._digit_frames = frames_for(rules.digit_timeout)
        self._frames_left: int | None = None  # frames until the running timeout fires
        if timers_started:
            self.start_timers()

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def start_timers(self) -> None:
        """Start the initial timeout (no effect once a digit came or after the end)."""
        if self.phase is Phase.WAITING and self._frames_left is None:
            self._frames_left = self._initial_frames or None

    def digit(self, digit: str) -> CollectResult | None:
        if self.done:
            return None
        if digit in self.rules.terminators:
            return self._finish(CollectResult(Outcome.DIGIT, self.digits, digit))
        self.digits += digit
        if len(self.digits) >= self.rules.max_digits:
            return self._finish(CollectResult(Outcome.DIGIT, self.digits))
        self.phase = Phase.COLLECTING
        self._frames_left = self._digit_frames or None
        return None

    def tick(self) -> CollectResult | None:
        if self._frames_left is None:  # done, or no timeout running
            return None
        self._frames_left -= 1
        if self._frames_left > 0:
            return None
        if self.phase is Phase.WAITING:
            return self._finish(CollectResult(Outcome.NO_INPUT))
        return self._finish(CollectResult(Outcome.DIGIT, self.digits))

    def stop(self) -> CollectResult:
        """End now: the digits so far (`no_input` if none)."""
        if self.result is not None:
            return self.result
        if self.digits:
            return self._finish(CollectResult(Outcome.DIGIT, self.digits))
        return self._finish(CollectResult(Outcome.NO_INPUT))

    def fail(self) -> CollectResult:
        """End with `error` (the call ended mid-collect)."""
        if self.result is not None:
            return self.result
        return self._finish(CollectResult(Outcome.ERROR, self.digits))

    def _finish(self, result: CollectResult) -> CollectResult:
        self.phase = Phase.DONE
        self._frames_left = None
        self.result = result
        return result
