"""Console sign-in: server-side sessions behind an opaque cookie, and a failed-attempt limiter.

A session is 256 random bits in a cookie (HttpOnly, Secure, SameSite=Strict, path /console);
the server keeps what it means (project, CSRF token, expiry), so signing out or a restart ends
it at once. Sessions expire `lifetime` seconds after sign-in.

Failed sign-ins are counted per client address and per project id: after `max_failures`
within `window` seconds, further attempts for that key are refused until the window has
passed, whatever the credentials (so a token cannot be guessed faster than that, and one
address cannot lock everyone out of other projects).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

COOKIE_NAME: Final = "callbox_console"
COOKIE_PATH: Final = "/console"
SESSION_SECONDS: Final = 8 * 3600.0
MAX_SESSIONS: Final = 10_000  # the oldest session is ended to make room
MAX_FAILURES: Final = 5
FAILURE_WINDOW_SECONDS: Final = 300.0
MAX_LIMITER_KEYS: Final = 10_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class Session:
    id: str  # the cookie's value
    project_id: str
    csrf_token: str  # required on every change this session makes (see `csrf`)
    expires_at: float  # on the store's clock


class SessionStore:
    """The console's sessions, in memory (bounded; the oldest goes first)."""

    def __init__(self, *, lifetime: float = SESSION_SECONDS, max_sessions: int = MAX_SESSIONS,
                 clock: Clock = time.monotonic) -> None:
        self.lifetime = lifetime
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, project_id: str) -> Session:
        session = Session(id=secrets.token_urlsafe(32), project_id=project_id,
                          csrf_token=secrets.token_urlsafe(32),
                          expires_at=self._clock() + self.lifetime)
        self._sessions[session.id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, else None (an expired one is ended)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class AttemptLimiter:
    """At most `max_failures` failed attempts per key within `window` seconds."""

    def __init__(self, *, max_failures: int = MAX_FAILURES,
                 window: float = FAILURE_WINDOW_SECONDS, max_keys: int = MAX_LIMITER_KEYS,
                 clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, *keys: str) -> float:
        """Seconds until an attempt for all `keys` is allowed (0: allowed now)."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times
