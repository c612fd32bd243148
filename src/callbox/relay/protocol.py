"""The RELAY client protocol without I/O, in the manner of h11: frames in, events out.

    core = RelayProtocol(project="...", token="...", contexts=["default"])
    connect_id = core.connect()            # queues signalwire.connect
    socket.send_all(core.data_to_send())   # the shell writes what the core queued
    for event in core.receive(text):       # each text frame from the server
        ...                                # Connected, RequestSucceeded, EventReceived, ...
    socket.send_all(core.data_to_send())   # the acks and pongs that frame asked for
    core.tick(now)                         # pings, at core.next_tick_at()
    core.connection_lost("why")            # pending requests fail; connect() again resumes

The core keeps the session across connections: the server's `protocol` string and the last
`authorization_state` (both sent back by `connect()` to resume), the contexts (subscribed again
by `connect()`, kept up to date by `signalwire.receive` / `unreceive` replies), the ids of the
events already handled (a resumed session re-sends those it did not see acknowledged). It never
opens a socket, waits or reads a clock: `tick(now)` is given the time.

`receive()` never raises for what the server sends: a frame it cannot use is a `BadFrame`.
`ProtocolStateError` is its one error: the caller used it out of order (a request before the
connection is up, a frame with no connection).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from callbox.relay.events import AuthenticationError, RelayError, RelayEvent
from callbox.wire import relay as wire

PING_INTERVAL: Final = 30.0  # seconds between the client's pings
PING_TIMEOUT: Final = 10.0  # seconds for the server to answer one
PING_MAX_MISSED: Final = 3  # unanswered pings in a row before the connection counts as dead
SEEN_EVENTS: Final = 2048  # event ids remembered to drop re-deliveries


class State(Enum):
    IDLE = "idle"  # no connection
    CONNECTING = "connecting"  # signalwire.connect sent, no answer yet
    CONNECTED = "connected"


# (state, what happened) -> next state; anything else is a ProtocolStateError.
TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.IDLE, "connect"): State.CONNECTING,
    (State.CONNECTING, "accepted"): State.CONNECTED,
    (State.CONNECTING, "rejected"): State.IDLE,
    (State.CONNECTING, "lost"): State.IDLE,
    (State.CONNECTED, "lost"): State.IDLE,
    (State.IDLE, "lost"): State.IDLE,
}


class ProtocolStateError(RelayError):
    """The core was used out of order (e.g. a request sent while not connected)."""


# -- what receive(), tick() and connection_lost() return --------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """`signalwire.connect` succeeded; `resumed_from` is the protocol asked for ("" if none)."""

    request_id: str
    identity: str
    protocol: str
    session_restored: bool
    resumed_from: str


@dataclass(frozen=True, slots=True)
class RequestSucceeded:
    request_id: str
    method: str
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request's JSON-RPC error, its non-2xx calling `code`, or the connection's loss;
    `error` is an `AuthenticationError` when `signalwire.connect` was refused."""

    request_id: str
    method: str
    error: RelayError


@dataclass(frozen=True, slots=True)
class EventReceived:
    """A `signalwire.event` seen for the first time (it has been acknowledged already)."""

    event: RelayEvent


@dataclass(frozen=True, slots=True)
class DisconnectRequested:
    """The server asked the client to reconnect (`restart`: start a new session)."""

    restart: bool


@dataclass(frozen=True, slots=True)
class BadFrame:
    reason: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """A JSON-RPC error that answers no request of ours."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class PingsUnanswered:
    """The server has not answered `missed` pings in a row: close the connection."""

    missed: int


ProtocolEvent = (Connected | RequestSucceeded | RequestFailed | EventReceived
                 | DisconnectRequested | BadFrame | ServerError | PingsUnanswered)


@dataclass(frozen=True, slots=True)
class Pending:
    method: str
    params: Mapping[str, Any]


class RelayProtocol:
    """One RELAY client session over successive connections, as a state machine."""

    def __init__(self, project: str, token: str, contexts: Iterable[str] = (), *,
                 agent: str = "", ping_interval: float = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT,
                 max_missed_pings: int = PING_MAX_MISSED) -> None:
        self.project = project
        self.token = token
        self.agent = agent
        self.contexts = list(contexts)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_missed_pings = max_missed_pings
        self.state = State.IDLE
        self.protocol = ""  # the server's session name, sent back to resume
        self.authorization_state = ""  # the server's re-authorization blob, sent back too
        self.identity = ""
        self.session_restored = False
        self.missed_pings = 0
        self._outgoing: list[str] = []
        self._pending: dict[str, Pending] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._ping_id: str | None = None
        self._ping_sent_at = 0.0
        self._next_ping_at: float | None = None

    def __repr__(self) -> str:
        return f"<RelayProtocol {self.project} {self.state.value} {self.protocol or '-'}>"

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet (pings included)."""
        return len(self._pending)

    # -- the caller's side ----------------------------------------------------------------

    def connect(self) -> str:
        """A new connection is open: queue `signalwire.connect` (resuming the session when
        there is one); returns its request id."""
        self._move("connect")
        params = wire.ConnectParams(project=self.project, token=self.token,
                                    contexts=self.contexts, protocol=self.protocol,
                                    agent=self.agent,
                                    authorization_state=self.authorization_state)
        return self._send(wire.CONNECT, params.to_params())

    def send_request(self, method: str, params: Mapping[str, Any]) -> str:
        """Queue a request; returns its id. Its outcome comes back from `receive()` (or from
        `connection_lost()`) as `RequestSucceeded` or `RequestFailed`."""
        if self.state is not State.CONNECTED:
            raise ProtocolStateError(f"not connected ({self.state.value}): {method} not sent")
        return self._send(method, params)

    def abandon(self, request_id: str) -> None:
        """Stop waiting for a request (it timed out): a late reply is ignored."""
        self._pending.pop(request_id, None)

    def data_to_send(self) -> list[str]:
        """The frames queued for the server since the last call, in order."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def connection_lost(self, why: str) -> list[RequestFailed]:
        """The socket is gone: every pending request fails with `why`; the session (protocol,
        contexts) is kept for the next `connect()`."""
        self._move("lost")
        failed = [RequestFailed(request_id, pending.method, RelayError(why))
                  for request_id, pending in self._pending.items()
                  if request_id != self._ping_id]
        self._pending.clear()
        self._outgoing.clear()
        self._ping_id = None
        self._next_ping_at = None
        self.missed_pings = 0
        return failed

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[ProtocolEvent]:
        """Send a ping when one is due, count the ones unanswered. Call it once the
        connection is up, then again at `next_tick_at()`."""
        if self.state is not State.CONNECTED:
            return []
        if self._ping_id is not None and now >= self._ping_sent_at + self.ping_timeout:
            self._pending.pop(self._ping_id, None)
            self._ping_id = None
            self.missed_pings += 1
            if self.missed_pings >= self.max_missed_pings:
                return [PingsUnanswered(self.missed_pings)]
        if self._next_ping_at is None:
            self._next_ping_at = now + self.ping_interval
        elif now >= self._next_ping_at and self._ping_id is None:
            self._ping_id = self._send(wire.PING, {})
            self._ping_sent_at = now
            self._next_ping_at = now + self.ping_interval
        return []

    def next_tick_at(self) -> float | None:
        """When `tick()` has something to do next; None when it has nothing scheduled (not
        connected, or not ticked since the connection came up)."""
        if self.state is not State.CONNECTED or self._next_ping_at is None:
            return None
        if self._ping_id is not None:
            return min(self._next_ping_at, self._ping_sent_at + self.ping_timeout)
        return self._next_ping_at

    # -- the server's side ----------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[ProtocolEvent]:
        """One frame from the server -> what it means. Acks and answers it requires are queued
        for `data_to_send()`."""
        if self.state is State.IDLE:
            raise ProtocolStateError("no connection: call connect() before feeding frames")
        try:
            message = wire.parse_message(text)
        except wire.ProtocolError as exc:
            return [BadFrame(str(exc))]
        if isinstance(message, wire.Response):
            return self._on_result(message)
        if isinstance(message, wire.ErrorResponse):
            return self._on_error(message)
        return self._on_request(message)

    def _on_result(self, message: wire.Response) -> list[ProtocolEvent]:
        request_id, pending = self._take(message.id)
        if pending is None:
            return []
        if request_id == self._ping_id:
            self._pong()
            return []
        if pending.method == wire.CONNECT:
            return [self._accepted(request_id, message.result)]
        code = message.result.get("code")
        if code is not None and not wire.is_success(code):
            text = str(message.result.get("message") or f"{pending.method} failed")
            return [RequestFailed(request_id, pending.method, RelayError(text, _number(code)))]
        self._track_contexts(pending)
        return [RequestSucceeded(request_id, pending.method, message.result)]

    def _on_error(self, message: wire.ErrorResponse) -> list[ProtocolEvent]:
        request_id, pending = self._take(message.id)
        if pending is None:
            return [ServerError(message.code, message.message)] if message.id is None else []
        if request_id == self._ping_id:
            self._pong()  # an answer all the same: the server is there
            return []
        error: RelayError
        if pending.method == wire.CONNECT:
            self._move("rejected")
            error = AuthenticationError(f"authentication failed for project {self.project!r}: "
                                        f"{message.message}", message.code)
        else:
            error = RelayError(message.message or "error", message.code)
        return [RequestFailed(request_id, pending.method, error)]

    def _on_request(self, message: wire.Request) -> list[ProtocolEvent]:
        if message.method == wire.EVENT:
            return self._on_event(message)
        if message.method == wire.PING:
            self._answer(message.id, wire.result(message.id))
            return []
        if message.method == wire.DISCONNECT:
            self._answer(message.id, wire.result(message.id))
            restart = bool(message.params.get("restart"))
            if restart:  # start afresh next time
                self.protocol = ""
                self.authorization_state = ""
            return [DisconnectRequested(restart)]
        self._answer(message.id, wire.error(message.id, wire.METHOD_NOT_FOUND,
                                            f"unknown method {message.method!r}"))
        return []

    def _on_event(self, message: wire.Request) -> list[ProtocolEvent]:
        self._answer(message.id, wire.result(message.id))  # ack first: it was received
        event_id = "" if message.id is None else str(message.id)
        if event_id:
            if event_id in self._seen:
                return []  # re-delivered after a reconnect; handled already
            self._seen[event_id] = None
            while len(self._seen) > SEEN_EVENTS:
                self._seen.popitem(last=False)
        event = RelayEvent.from_payload(message.params, event_id)
        if event.event_type == wire.AUTHORIZATION_STATE:
            state = event.params.get("authorization_state")
            if isinstance(state, str) and state:
                self.authorization_state = state
            return []
        return [EventReceived(event)]

    # -- helpers --------------------------------------------------------------------------

    def _move(self, trigger: str) -> None:
        following = TRANSITIONS.get((self.state, trigger))
        if following is None:
            raise ProtocolStateError(f"cannot {trigger} while {self.state.value}")
        self.state = following

    def _send(self, method: str, params: Mapping[str, Any]) -> str:
        frame = wire.request(method, params)
        text = wire.dumps(frame)  # raises ValueError for what JSON cannot carry (NaN, ...)
        request_id: str = frame["id"]
        self._pending[request_id] = Pending(method, params)
        self._outgoing.append(text)
        return request_id

    def _answer(self, request_id: Any, frame: Mapping[str, Any]) -> None:
        if request_id is not None:  # a notification needs no answer
            self._outgoing.append(wire.dumps(frame))

    def _take(self, request_id: Any) -> tuple[str, Pending | None]:
        if not isinstance(request_id, str):
            return "", None
        return request_id, self._pending.pop(request_id, None)

    def _pong(self) -> None:
        self._ping_id = None
        self.missed_pings = 0

    def _accepted(self, request_id: str, result: Mapping[str, Any]) -> Connected:
        resumed_from = self.protocol
        self._move("accepted")
        self.protocol = str(result.get("protocol", ""))
        self.identity = str(result.get("identity", ""))
        self.session_restored = bool(result.get("session_restored"))
        self._next_ping_at = None
        self.missed_pings = 0
        return Connected(request_id, self.identity, self.protocol, self.session_restored,
                         resumed_from)

    def _track_contexts(self, pending: Pending) -> None:
        if pending.method not in (wire.RECEIVE, wire.UNRECEIVE):
            return
        names = pending.params.get("contexts")
        changed = [str(name) for name in names] if isinstance(names, list) else []
        if pending.method == wire.RECEIVE:
            self.contexts += [name for name in changed if name not in self.contexts]
        else:
            self.contexts = [name for name in self.contexts if name not in changed]


def _number(code: Any) -> int | None:
    try:
        return int(str(code))
    except ValueError:
        return None
