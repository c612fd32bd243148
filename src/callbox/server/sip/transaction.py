"""The four SIP transactions of RFC 3261 §17 (unreliable transport), as sans-I/O state machines.

Each transaction is fed messages and the current time and returns actions for its owner (the
transaction user, TU) to carry out. `deadline` says when `on_timer(now)` must next be called.
INVITE server and client transactions include RFC 6026's Accepted state: the server one also
retransmits its 2xx itself (RFC 3261 gives that job to the TU core) until the TU reports the ACK.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from callbox.server.sip.headers import MAGIC_COOKIE
from callbox.server.sip.message import Headers, SipMessage, SipRequest, SipResponse

T1 = 0.5  # RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum time a message remains in the network
TIMER_D = 32.0  # RFC 3261 §17.1.1.2: at least 32 s for unreliable transports
TIMEOUT_MULTIPLIER = 64  # timers B, F, H, J, L, M are 64*T1


@dataclass(frozen=True)
class Timers:
    t1: float = T1
    t2: float = T2
    t4: float = T4
    d: float = TIMER_D

    @property
    def timeout(self) -> float:
        return TIMEOUT_MULTIPLIER * self.t1


@dataclass(frozen=True)
class Send:
    message: SipMessage


@dataclass(frozen=True)
class Deliver:
    message: SipMessage


@dataclass(frozen=True)
class Timeout:
    reason: str


@dataclass(frozen=True)
class Terminated:
    pass


Action = Send | Deliver | Timeout | Terminated


class TransactionState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class TransactionError(RuntimeError):
    """The TU asked for something the transaction's state does not allow."""


class _Transaction:
    """Timer bookkeeping shared by all transactions.

    Timers are named; retransmission timers carry an interval. When `on_timer` is called late, a
    retransmission timer fires once and is rescheduled from `now`, so a stall causes no burst.
    """

    # Timers that end the transaction win a tie with a retransmission timer.
    _FINAL_TIMERS: frozenset[str] = frozenset("BDFHIJKLM")

    def __init__(self, request: SipRequest, now: float, timers: Timers) -> None:
        self.request = request
        self.timers = timers
        self.created = now
        self.state = TransactionState.TERMINATED  # set by subclasses
        self._due: dict[str, float] = {}
        self._intervals: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state is TransactionState.TERMINATED

    @property
    def deadline(self) -> float | None:
        if self.terminated or not self._due:
            return None
        return min(self._due.values())

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while not self.terminated:
            due = [
                (at, name not in self._FINAL_TIMERS, name)
                for name, at in self._due.items()
                if at <= now
            ]
            if not due:
                break
            at, _, name = min(due)
            del self._due[name]
            actions += self._fire(name, at, now)
        return actions

    def _fire(self, name: str, at: float, now: float) -> list[Action]:
        raise NotImplementedError

    def _schedule(self, name: str, at: float) -> None:
        self._due[name] = at

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._due.pop(name, None)

    def _start_retransmit(self, name: str, now: float, interval: float) -> None:
        self._intervals[name] = interval
        self._schedule(name, now + interval)

    def _next_retransmit(self, name: str, at: float, now: float, cap: float | None) -> None:
        interval = self._intervals[name] * 2
        if cap is not None:
            interval = min(interval, cap)
        self._intervals[name] = interval
        nxt = at + interval
        self._schedule(name, nxt if nxt > now else now + interval)

    def _terminate(self) -> list[Action]:
        self.state = TransactionState.TERMINATED
        self._due.clear()
        return [Terminated()]


class ServerInviteTransaction(_Transaction):
    """RFC 3261 §17.2.1 with RFC 6026 (Accepted state)."""

    def __init__(self, request: SipRequest, now: float, timers: Timers = Timers()) -> None:
        super().__init__(request, now, timers)
        self.state = TransactionState.PROCEEDING
        self.last_response: SipResponse | None = None

    def receive(self, request: SipRequest, now: float) -> list[Action]:
        """A retransmitted INVITE, or an ACK matched to this transaction by branch."""
        if request.method == "ACK":
            if self.state is TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._cancel("G", "H")
                self._schedule("I", now + self.timers.t4)
            elif self.state is TransactionState.ACCEPTED:
                # A peer reusing the INVITE branch for its 2xx ACK: hand it up and finish.
                return [Deliver(request), *self.ack_received(now)]
            return []
        if request.method != "INVITE" or self.last_response is None:
            return []
        if self.state in (
            TransactionState.PROCEEDING,
            TransactionState.COMPLETED,
            TransactionState.ACCEPTED,
        ):
            return [Send(self.last_response)]
        return []

    def send_response(self, response: SipResponse, now: float) -> list[Action]:
        status = response.status
        if self.state is TransactionState.ACCEPTED and 200 <= status < 300:
            self.last_response = response  # RFC 6026 §8.5: pass further 2xx to the transport
            return [Send(response)]
        if self.state is not TransactionState.PROCEEDING:
            raise TransactionError(f"cannot send {status} in state {self.state.value}")
        self.last_response = response
        if status < 200:
            return [Send(response)]
        if status < 300:
            self.state = TransactionState.ACCEPTED
            self._start_retransmit("G2xx", now, self.timers.t1)
            self._schedule("L", now + self.timers.timeout)
        else:
            self.state = TransactionState.COMPLETED
            self._start_retransmit("G", now, self.timers.t1)
            self._schedule("H", now + self.timers.timeout)
        return [Send(response)]

    def ack_received(self, now: float) -> list[Action]:
        """The TU matched the ACK for our 2xx (it has its own branch): stop retransmitting."""
        if self.state is not TransactionState.ACCEPTED:
            return []
        return self._terminate()

    def _fire(self, name: str, at: float, now: float) -> list[Action]:
        if name in ("G", "G2xx") and self.last_response is not None:
            self._next_retransmit(name, at, now, self.timers.t2)
            return [Send(self.last_response)]
        if name == "H":
            return [Timeout("no ACK"), *self._terminate()]
        if name == "L":
            return [Timeout("no ACK for 2xx"), *self._terminate()]
        if name == "I":
            return self._terminate()
        return []


class ServerNonInviteTransaction(_Transaction):
    """RFC 3261 §17.2.2."""

    def __init__(self, request: SipRequest, now: float, timers: Timers = Timers()) -> None:
        super().__init__(request, now, timers)
        self.state = TransactionState.TRYING
        self.last_response: SipResponse | None = None

    def receive(self, request: SipRequest, now: float) -> list[Action]:
        """A retransmission of the request: answer with the last response, if any."""
        if self.last_response is None or self.terminated:
            return []
        return [Send(self.last_response)]

    def send_response(self, response: SipResponse, now: float) -> list[Action]:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            raise TransactionError(f"cannot send {response.status} in state {self.state.value}")
        self.last_response = response
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
        else:
            self.state = TransactionState.COMPLETED
            self._schedule("J", now + self.timers.timeout)
        return [Send(response)]

    def _fire(self, name: str, at: float, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


class ClientInviteTransaction(_Transaction):
    """RFC 3261 §17.1.1 with RFC 6026 (Accepted state absorbs 2xx retransmissions for the TU)."""

    def __init__(self, request: SipRequest, now: float, timers: Timers = Timers()) -> None:
        super().__init__(request, now, timers)
        self.state = TransactionState.CALLING
        self.ack: SipRequest | None = None
        self._started = False

    def start(self) -> list[Action]:
        if self._started:
            raise TransactionError("transaction already started")
        self._started = True
        self._start_retransmit("A", self.created, self.timers.t1)
        self._schedule("B", self.created + self.timers.timeout)
        return [Send(self.request)]

    def receive(self, response: SipResponse, now: float) -> list[Action]:
        status = response.status
        if self.state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self._cancel("A", "B")
            if status < 200:
                self.state = TransactionState.PROCEEDING
                return [Deliver(response)]
            if status < 300:
                self.state = TransactionState.ACCEPTED
                self._schedule("M", now + self.timers.timeout)
                return [Deliver(response)]
            self.state = TransactionState.COMPLETED
            self.ack = make_ack(self.request, response)
            self._schedule("D", now + self.timers.d)
            return [Send(self.ack), Deliver(response)]
        if self.state is TransactionState.ACCEPTED and 200 <= status < 300:
            return [Deliver(response)]
        if self.state is TransactionState.COMPLETED and status >= 300 and self.ack is not None:
            return [Send(self.ack)]
        return []

    def _fire(self, name: str, at: float, now: float) -> list[Action]:
        if name == "A":
            self._next_retransmit(name, at, now, None)
            return [Send(self.request)]
        if name == "B":
            return [Timeout("no response to INVITE"), *self._terminate()]
        if name in ("D", "M"):
            return self._terminate()
        return []


class ClientNonInviteTransaction(_Transaction):
    """RFC 3261 §17.1.2."""

    def __init__(self, request: SipRequest, now: float, timers: Timers = Timers()) -> None:
        super().__init__(request, now, timers)
        self.state = TransactionState.TRYING
        self._started = False

    def start(self) -> list[Action]:
        if self._started:
            raise TransactionError("transaction already started")
        self._started = True
        self._start_retransmit("E", self.created, self.timers.t1)
        self._schedule("F", self.created + self.timers.timeout)
        return [Send(self.request)]

    def receive(self, response: SipResponse, now: float) -> list[Action]:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return []  # Completed absorbs retransmitted finals
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
            return [Deliver(response)]
        self.state = TransactionState.COMPLETED
        self._cancel("E", "F")
        self._schedule("K", now + self.timers.t4)
        return [Deliver(response)]

    def _fire(self, name: str, at: float, now: float) -> list[Action]:
        if name == "E":
            if self.state is TransactionState.PROCEEDING:
                self._intervals[name] = self.timers.t2
            self._next_retransmit(name, at, now, self.timers.t2)
            return [Send(self.request)]
        if name == "F":
            return [Timeout(f"no response to {self.request.method}"), *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


Transaction = (
    ServerInviteTransaction
    | ServerNonInviteTransaction
    | ClientInviteTransaction
    | ClientNonInviteTransaction
)


def make_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a non-2xx final response (RFC 3261 §17.1.1.3)."""
    headers = Headers()
    headers.add("Via", str(invite.top_via))
    headers.add("Max-Forwards", "70")
    for name, value in invite.headers:
        if name == "Route":
            headers.add(name, value)
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq.seq} ACK")
    return SipRequest("ACK", invite.uri, headers)


def server_key(request: SipRequest) -> tuple[object, ...]:
    """Key matching a request to its server transaction (RFC 3261 §17.2.3).

    ACK maps to the INVITE's transaction; CANCEL keeps its own method, so it gets its own
    transaction (use `cancel_target_key` to find the INVITE it cancels).
    """
    return _server_key(request, "INVITE" if request.method == "ACK" else request.method)


def cancel_target_key(cancel: SipRequest) -> tuple[object, ...]:
    """Server key of the INVITE transaction that a CANCEL refers to."""
    return _server_key(cancel, "INVITE")


def _server_key(request: SipRequest, method: str) -> tuple[object, ...]:
    via = request.top_via
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.effective_port, method)
    # RFC 2543 peers: the To tag is left out because the ACK carries one the INVITE did not.
    return (
        "rfc2543",
        request.uri,
        request.from_tag,
        request.call_id,
        request.cseq.seq,
        str(via),
        method,
    )


def client_key(message: SipMessage) -> tuple[str, str]:
    """Key matching a response (or our own request) to a client transaction (§17.1.3)."""
    method = message.cseq.method if isinstance(message, SipResponse) else message.method
    return (message.branch or "", method)
