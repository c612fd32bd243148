"""A trunk's registration as a sans-I/O state machine: when to send REGISTER, and what state
the trunk is in. The runner (`registration_runner`) does the sending and the waiting.

    idle -> registering -> registered -> (at 80 % of the granted time) registering ...
                        -> failed -> (after the backoff) registering ...
    any -> stopping (a binding may exist: unregister) -> stopped

The backoff after a failure doubles from `MIN_BACKOFF_SECONDS` up to `MAX_BACKOFF_SECONDS` and
restarts after a success, so a wrong password costs one REGISTER exchange per backoff step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MIN_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 300.0
REFRESH_FRACTION = 0.8


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class RegistrationEvent(enum.Enum):
    START = "start"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DUE = "due"  # the refresh or retry time came
    STOP = "stop"
    UNREGISTERED = "unregistered"


S, E = RegistrationState, RegistrationEvent
TRANSITIONS: dict[RegistrationState, dict[RegistrationEvent, RegistrationState]] = {
    S.IDLE: {E.START: S.REGISTERING, E.STOP: S.STOPPED},
    S.REGISTERING: {E.SUCCEEDED: S.REGISTERED, E.FAILED: S.FAILED, E.STOP: S.STOPPING},
    S.REGISTERED: {E.DUE: S.REGISTERING, E.STOP: S.STOPPING},
    S.FAILED: {E.DUE: S.REGISTERING, E.STOP: S.STOPPED},
    S.STOPPING: {E.UNREGISTERED: S.STOPPED, E.SUCCEEDED: S.STOPPING, E.FAILED: S.STOPPING},
    S.STOPPED: {E.STOP: S.STOPPED, E.SUCCEEDED: S.STOPPED, E.FAILED: S.STOPPED},
}


class RegistrationProtocolError(RuntimeError):
    """An event that is not allowed in the current state (a bug in the runner)."""


@dataclass
class Registration:
    """One trunk's registration. Times are the caller's clock (seconds, monotonic)."""

    expires: int  # what we ask for
    min_backoff: float = MIN_BACKOFF_SECONDS
    max_backoff: float = MAX_BACKOFF_SECONDS
    state: RegistrationState = RegistrationState.IDLE
    reason: str = ""  # why it failed (empty otherwise)
    deadline: float | None = None  # when DUE fires (registered: refresh; failed: retry)
    granted: int = 0  # seconds the registrar granted last time
    failures: int = 0  # consecutive failures (sets the backoff)

    def _fire(self, event: RegistrationEvent) -> bool:
        """Move along the table; returns whether the state changed."""
        try:
            new = TRANSITIONS[self.state][event]
        except KeyError:
            raise RegistrationProtocolError(
                f"registration event {event.value} in state {self.state.value}") from None
        changed = new is not self.state
        self.state = new
        return changed

    def start(self) -> bool:
        return self._fire(RegistrationEvent.START)

    def succeeded(self, now: float, granted: int) -> bool:
        """The registrar answered 2xx and grants `granted` seconds."""
        changed = self._fire(RegistrationEvent.SUCCEEDED)
        if self.state is RegistrationState.REGISTERED:
            self.reason, self.failures, self.granted = "", 0, granted
            self.deadline = now + max(1.0, granted * REFRESH_FRACTION)
        return changed

    def failed(self, now: float, reason: str) -> bool:
        changed = self._fire(RegistrationEvent.FAILED)
        if self.state is RegistrationState.FAILED:
            self.reason = reason
            self.deadline = now + self.backoff(self.failures)
            self.failures += 1
        return changed

    def backoff(self, failures: int) -> float:
        """The wait after `failures` earlier consecutive failures (capped doubling)."""
        return min(self.max_backoff, self.min_backoff * 2.0 ** min(failures, 32))

    def due(self, now: float) -> bool:
        """True (and registering) when the refresh or retry time has come."""
        if self.deadline is None or now < self.deadline or self.state not in (
                RegistrationState.REGISTERED, RegistrationState.FAILED):
            return False
        self.deadline = None
        self._fire(RegistrationEvent.DUE)
        return True

    def stop(self) -> bool:
        """Returns True when a binding may exist and an unregister (Expires: 0) should go."""
        self.deadline = None
        self._fire(RegistrationEvent.STOP)
        return self.state is RegistrationState.STOPPING

    def unregistered(self) -> None:
        self._fire(RegistrationEvent.UNREGISTERED)

    @property
    def summary(self) -> str:
        """'registered', 'failed: <reason>', ... for logs."""
        name: str = self.state.value
        return f"{name}: {self.reason}" if self.state is RegistrationState.FAILED else name
