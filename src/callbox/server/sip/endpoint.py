"""The SIP endpoint: UDP and TCP transports around the sans-I/O message, transaction and dialog
layers (TCP connections live in `tcp.py`, the choice of transport per message in `transport.py`).

It owns the socket, matches messages to transactions and dialogs, runs transaction timers on the
event loop, and hands new INVITEs to the application as `InboundInvite` legs. Our own calls
(`call()`) are `OutboundLeg`s driving the sans-I/O `OutboundCall` of sip/uac.py. Everything
protocol-shaped lives in the sans-I/O modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from callbox.server.sip.dialog import Dialog, DialogKey, dialog_key_from_request
from callbox.server.sip.digest import (
    AuthenticationFailed,
    Authenticator,
    AuthExchange,
    credentials_of,
)
from callbox.server.sip.headers import NameAddr, SipUri, Via
from callbox.server.sip.message import (
    MAX_MESSAGE_BYTES,
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    oversize_reason,
    parse_message,
    unsupported_version,
)
from callbox.server.sip.resolve import numeric_host
from callbox.server.sip.sdp import NegotiatedMedia, SessionDescription
from callbox.server.sip.stream import StreamError
from callbox.server.sip.tcp import TcpTransport
from callbox.server.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    Timeout,
    Timers,
    cancel_target_key,
    server_key,
)
from callbox.server.sip.transport import TCP, UDP, Transports, retransmissions_needed
from callbox.server.sip.uac import (
    Answered,
    EarlyMedia,
    Failed,
    Hangup,
    OutboundCall,
    SendCancel,
    SendMessage,
    UacAction,
    UacError,
    UacState,
)
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)

Address = tuple[str, int]
TransactionKey = tuple[object, ...]
ServerTransaction = ServerInviteTransaction | ServerNonInviteTransaction
ClientTransaction = ClientInviteTransaction | ClientNonInviteTransaction

ALLOWED_METHODS = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
DRAINING_RETRY_AFTER_SECONDS = "5"
# Methods we know but do not serve get 405 with Allow; anything else gets 501.
KNOWN_METHODS = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PUBLISH", "REFER", "PRACK", "UPDATE"}
)
URI_SCHEMES = frozenset({"sip", "sips", "tel"})
# Binding port 0: UDP picks the port, and TCP may find it taken; then both try again.
EPHEMERAL_PORT_ATTEMPTS = 5
# RFC 3261 §17.2.1: a UAS sends 100 Trying unless its TU answers within 200 ms. A call a route
# answers at once gets its 200 alone (no 100, no 180: as a PBX whose dialplan answers at once);
# one still unanswered then gets its 180 (a route that rings) or a 100.
PROVISIONAL_AFTER = 0.2
# RFC 3261 §14.2: a re-INVITE that arrives while another is answered gets 500 with a random
# Retry-After of 0 to 10 s.
REINVITE_RETRY_MAX_SECONDS = 10
# RFC 3261 §14.1: a re-INVITE answered 491 (both sides offered at once) is sent again after a
# random wait in 10 ms units: 2.1-4 s by the side that chose the Call-ID, 0-2 s by the other.
GLARE_ATTEMPTS = 3


def glare_wait(owns_call_id: bool) -> float:
    """How long to wait before sending a re-INVITE again after a 491 (RFC 3261 §14.1)."""
    if owns_call_id:
        return 2.1 + secrets.randbelow(191) / 100
    return secrets.randbelow(201) / 100


# Extra headers a caller may put on an outgoing INVITE: tokens, nothing that splits a line.
EXTRA_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")
# Option tags we implement (RFC 3261 §8.2.2.3): none, so any Require gets 420.
SUPPORTED_OPTIONS: frozenset[str] = frozenset()


class OfferRejected(Exception):
    """An SDP offer (INVITE or re-INVITE) we refuse: the status and headers to answer with."""

    def __init__(self, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = [*headers, ("Warning", f'399 callbox "{_quote(reason)}"')]


def _quote(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable()).replace("\\", "").replace('"', "'")[:200]


class CallFailed(RuntimeError):
    """An outgoing INVITE got a final non-2xx response, or no answer at all."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"call failed: {status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class _ClientEntry:
    txn: ClientTransaction
    dest: Address
    future: asyncio.Future[SipResponse]
    on_provisional: Callable[[SipResponse], None] | None
    on_late_2xx: Callable[[SipResponse], None] | None = None


def uri_address(uri: str) -> Address:
    """Where to send a request for `uri` (no DNS SRV: host and port, default 5060)."""
    parsed = SipUri.parse(uri)
    return parsed.host.strip("[]"), parsed.port or 5060


def response_address(message: SipMessage) -> Address:
    """Where a response goes (a request's response has its Via lines): RFC 3261 18.2.2 with
    RFC 3581, received/rport win over sent-by."""
    via = message.top_via
    host = via.received or via.host
    rport = via.params.get("rport")
    port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
    return host, port


def best_effort_response(data: bytes, status: int, phrase: str, reason: str) -> bytes | None:
    """A response to a request we do not parse (bad, too large, another SIP version), when its
    headers are there to copy and the response stays small."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head, _, _ = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    if not lines or lines[0].startswith("SIP/") or " SIP/" not in lines[0]:
        return None
    wanted = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")
    copied = [ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() in wanted]
    names = {ln.split(":", 1)[0].strip().lower() for ln in copied}
    if not ({"via", "v"} & names and "cseq" in names):
        return None
    safe_reason = "".join(ch for ch in reason if ch.isprintable())[:120]
    lines_out = [f"SIP/2.0 {status} {phrase}", *copied, f'Warning: 399 callbox "{safe_reason}"']
    reply = ("\r\n".join([*lines_out, "Content-Length: 0", "", ""])).encode()
    return reply if len(reply) <= MAX_MESSAGE_BYTES else None


class SipEndpoint(asyncio.DatagramProtocol):
    def __init__(
        self,
        *,
        advertised_host: str | None = None,
        user_agent: str = "callbox",
        timers: Timers | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.timers = timers or Timers()
        self.on_invite: Callable[[InboundInvite], None] | None = None
        # False while the node drains: an OPTIONS outside a dialog (a load balancer's health
        # check) gets 503, so the balancer sends new calls elsewhere.
        self.accepting_calls = True
        self.host = ""
        self.port = 0
        self._advertised = advertised_host
        self._transport: asyncio.DatagramTransport | None = None
        self.tcp = TcpTransport(self._on_stream_message, self._on_stream_error,
                                in_use=self._tcp_peers_in_use)
        self.transports = Transports(self.tcp)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: dict[TransactionKey, tuple[ServerTransaction, Address]] = {}
        self._client: dict[tuple[str | None, str], _ClientEntry] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._invites: dict[TransactionKey, InboundInvite] = {}
        self.legs: dict[DialogKey, Leg] = {}
        # Registrars we are registered with over TCP: calls to our contact come back on these
        # connections, so they stay open however idle.
        self.registrar_tcp_peers: set[Address] = set()
        self.malformed = 0
        self.oversized = 0  # datagrams refused unparsed for their size or header count

    # -- life cycle -----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP and TCP at host:port (an ephemeral port free for both when 0)."""
        self._loop = asyncio.get_running_loop()
        for attempt in range(EPHEMERAL_PORT_ATTEMPTS):
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self, local_addr=(host, port)
            )
            self.host, self.port = transport.get_extra_info("sockname")[:2]
            try:
                await self.tcp.start(host, self.port)
            except OSError:
                transport.close()
                if port != 0 or attempt == EPHEMERAL_PORT_ATTEMPTS - 1:
                    raise
                continue
            self._transport = self.transports.udp = transport
            return

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for entry in self._client.values():
            if not entry.future.done():
                entry.future.set_exception(CallFailed(503, "endpoint closed"))
        if self._transport is not None:
            self._transport.close()
        self.tcp.close()

    @property
    def advertised_host(self) -> str:
        return self._advertised or self.host

    @property
    def contact(self) -> str:
        return self.contact_for(UDP)

    def contact_for(self, transport: str) -> str:
        """Our Contact for a dialog on `transport` (`;transport=tcp` on TCP)."""
        suffix = ";transport=tcp" if transport == TCP else ""
        return f"<sip:callbox@{self._hostport()}{suffix}>"

    def via_value(self, transport: str = UDP) -> str:
        return f"SIP/2.0/{transport} {self._hostport()};rport"

    def _hostport(self) -> str:
        host = self.advertised_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # -- transport ------------------------------------------------------------------------

    def send(self, message: SipMessage, dest: Address) -> None:
        self.transports.send(message, dest)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            self._on_datagram(data, (addr[0], addr[1]))
        except Exception:  # a bad message must never take the endpoint down
            log.exception("error handling SIP datagram from %s:%s", *addr[:2])

    def _on_stream_message(self, data: bytes, addr: Address) -> None:
        """One framed message from a TCP connection (`addr` is the connection's peer)."""
        try:
            self._on_datagram(data, addr, TCP)
        except Exception:  # a bad message must never take the endpoint down
            log.exception("error handling SIP over TCP from %s:%s", *addr)

    def _tcp_peers_in_use(self) -> set[Address]:
        """Where the TCP dialogs' in-dialog requests go, and our TCP registrars: their
        connections stay open."""
        dialogs = {leg._known_dest() for leg in self.legs.values() if leg.transport == TCP}
        return dialogs | self.registrar_tcp_peers

    def _on_stream_error(self, error: StreamError, addr: Address) -> bytes | None:
        """The reply written before a TCP connection that cannot be framed is closed."""
        if error.status == 513:
            self.oversized += 1
        else:
            self.malformed += 1
        return best_effort_response(error.head, error.status, error.phrase, error.reason)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    def _on_datagram(self, data: bytes, addr: Address, transport: str = UDP) -> None:
        too_large = oversize_reason(data)
        if too_large is not None:
            self.oversized += 1
            log.info("SIP from %s:%s too large: %s", addr[0], addr[1], too_large)
            self._reply_unparsed(data, 513, "Message Too Large", too_large, addr, transport)
            return
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive
        try:
            message = parse_message(data)
        except SipParseError as exc:
            version = unsupported_version(data)  # only SIP/2.0 parses: was it another?
            if version is not None:
                self._reply_unparsed(data, 505, "Version Not Supported",
                                     f"{version} is not supported; use SIP/2.0", addr, transport)
                return
            self.malformed += 1
            log.info("malformed SIP from %s:%s: %s", addr[0], addr[1], exc.reason)
            self._reply_unparsed(data, 400, "Bad Request", exc.reason, addr, transport)
            return
        if isinstance(message, SipRequest):
            self._stamp_via(message, addr)
            self._on_request(message, addr, transport)
        else:
            self._on_response(message)

    def _reply_unparsed(self, data: bytes, status: int, phrase: str, reason: str,
                        addr: Address, transport: str) -> None:
        reply = best_effort_response(data, status, phrase, reason)
        if reply is not None:
            self.transports.send_bytes(reply, addr, transport)

    @staticmethod
    def _stamp_via(request: SipRequest, addr: Address) -> None:
        """Record where the request really came from (RFC 3261 18.2.1, RFC 3581)."""
        top = request.top_via
        params = {**top.params, "received": addr[0]}
        if "rport" in params:
            params["rport"] = str(addr[1])
        request.replace_top_via(Via(top.transport, top.host, top.port, params))

    # -- transactions ---------------------------------------------------------------------

    def _run(self, txn: ServerTransaction | ClientTransaction, actions: Iterable[object],
             dest: Address) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.send(action.message, dest)
            elif isinstance(action, Deliver):
                self._deliver(txn, action.message)
            elif isinstance(action, Timeout):
                self._timed_out(txn, action.reason)
            elif isinstance(action, Terminated):
                self._forget(txn)
        self._schedule(txn, dest)

    def _schedule(self, txn: ServerTransaction | ClientTransaction, dest: Address) -> None:
        handle = self._timers.pop(id(txn), None)
        if handle is not None:
            handle.cancel()
        if txn.terminated or txn.deadline is None:
            return
        assert self._loop is not None

        def fire() -> None:
            self._timers.pop(id(txn), None)
            self._run(txn, retransmissions_needed(txn.request, txn.on_timer(self.now())), dest)

        self._timers[id(txn)] = self._loop.call_at(txn.deadline, fire)

    def _forget(self, txn: ServerTransaction | ClientTransaction) -> None:
        handle = self._timers.pop(id(txn), None)
        if handle is not None:
            handle.cancel()
        if isinstance(txn, ServerInviteTransaction | ServerNonInviteTransaction):
            key = server_key(txn.request)
            if key in self._server and self._server[key][0] is txn:
                del self._server[key]
            self._invites.pop(key, None)
        else:
            self._client.pop((txn.request.branch, txn.request.cseq.method), None)

    def _deliver(self, txn: ServerTransaction | ClientTransaction, message: SipMessage) -> None:
        if not isinstance(message, SipResponse):
            # Server transactions deliver requests; we dispatch those ourselves, except an ACK
            # for our 2xx that reused the INVITE's branch: it confirms the dialog.
            if message.method == "ACK" and isinstance(txn, ServerInviteTransaction):
                invite = self._invites.get(server_key(txn.request))
                if invite is not None:
                    invite._confirmed(message)
            return
        entry = self._client.get((message.branch, message.cseq.method))
        if entry is None:
            return
        if message.status < 200:
            if entry.on_provisional is not None:
                entry.on_provisional(message)
        elif not entry.future.done():
            entry.future.set_result(message)
        elif 200 <= message.status < 300 and entry.on_late_2xx is not None:
            entry.on_late_2xx(message)  # a retransmitted 2xx: the UAC ACKs again

    def _timed_out(self, txn: ServerTransaction | ClientTransaction, reason: str) -> None:
        if isinstance(txn, ServerInviteTransaction):
            invite = self._invites.get(server_key(txn.request))
            if invite is not None:
                invite.ack_timeout(reason)
            return
        entry = self._client.get((txn.request.branch, txn.request.cseq.method))
        if entry is not None and not entry.future.done():
            entry.future.set_exception(CallFailed(408, f"Request Timeout ({reason})"))

    def respond(self, request: SipRequest, status: int, reason: str | None = None, *,
                to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                body: bytes = b"", content_type: str | None = None) -> None:
        """Answer `request` through its server transaction."""
        key = server_key(request)
        found = self._server.get(key)
        if found is None:
            return
        txn, dest = found
        extra = [("Server", self.user_agent), *headers]
        response = make_response(request, status, reason, to_tag=to_tag, headers=extra,
                                 body=body, content_type=content_type)
        self._run(txn, txn.send_response(response, self.now()), dest)

    async def request(
        self,
        request: SipRequest,
        dest: Address,
        *,
        on_provisional: Callable[[SipResponse], None] | None = None,
        on_late_2xx: Callable[[SipResponse], None] | None = None,
    ) -> SipResponse:
        """Send `request` in a client transaction; return its final response."""
        assert self._loop is not None
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = ClientInviteTransaction(request, self.now(), self.timers)
        else:
            txn = ClientNonInviteTransaction(request, self.now(), self.timers)
        future: asyncio.Future[SipResponse] = self._loop.create_future()
        self._client[(request.branch, request.cseq.method)] = _ClientEntry(
            txn, dest, future, on_provisional, on_late_2xx
        )
        self._run(txn, txn.start(), dest)
        return await future

    async def request_authenticated(
        self,
        request: SipRequest,
        dest: Address,
        exchange: AuthExchange | None,
        *,
        on_provisional: Callable[[SipResponse], None] | None = None,
        on_late_2xx: Callable[[SipResponse], None] | None = None,
    ) -> tuple[SipRequest, SipResponse]:
        """`request()`, re-sent with credentials after a 401/407 while `exchange` allows (once
        per challenge). Returns the last request sent and its final response."""
        while True:
            response = await self.request(request, dest, on_provisional=on_provisional,
                                          on_late_2xx=on_late_2xx)
            if exchange is None or response.status not in (401, 407):
                return request, response
            try:
                request = exchange.retry(request, response)
            except AuthenticationFailed as exc:
                log.warning("%s %s (Call-ID %s): %s", request.method, request.uri,
                            request.call_id, exc)
                return request, response

    def _on_response(self, response: SipResponse) -> None:
        entry = self._client.get((response.branch, response.cseq.method))
        if entry is None:
            log.debug("stray response %s for %s", response.status, response.call_id)
            return
        self._run(entry.txn, entry.txn.receive(response, self.now()), entry.dest)

    # -- requests -------------------------------------------------------------------------

    def _on_request(self, request: SipRequest, addr: Address, transport: str = UDP) -> None:
        key = server_key(request)
        if request.method == "ACK":
            self._on_ack(request, key)
            return
        found = self._server.get(key)
        if found is not None:  # a retransmission: the transaction answers it again
            txn, dest = found
            self._run(txn, txn.receive(request, self.now()), dest)
            return
        txn = (ServerInviteTransaction if request.method == "INVITE"
               else ServerNonInviteTransaction)(request, self.now(), self.timers)
        # Over TCP the response goes back on the request's connection (RFC 3261 18.2.2).
        reply_to = addr if transport == TCP else response_address(request)
        self._server[key] = (txn, reply_to)
        if request.method == "CANCEL":
            self._on_cancel(request)
            return
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and max_forwards.strip() == "0" and request.method != "OPTIONS":
            self.respond(request, 483)
            return
        unsupported = self._unsupported(request)
        if unsupported is not None:
            status, headers = unsupported
            self.respond(request, status, headers=headers)
            return
        if request.to_tag:
            leg = self.legs.get(dialog_key_from_request(request, uas=True))
            if leg is None:
                self.respond(request, 481)
            else:
                leg.on_request(request)
            return
        if request.method == "INVITE":
            self._on_new_invite(request, key)
        elif request.method == "OPTIONS" and not self.accepting_calls:
            self.respond(request, 503, "Draining",
                         headers=[("Retry-After", DRAINING_RETRY_AFTER_SECONDS)])
        elif request.method == "OPTIONS":
            self.respond(request, 200, headers=[
                ("Allow", ALLOWED_METHODS), ("Accept", "application/sdp"),
            ])
        elif request.method in ("BYE", "INFO"):
            self.respond(request, 481)
        elif request.method in KNOWN_METHODS:
            self.respond(request, 405, headers=[("Allow", ALLOWED_METHODS)])
        else:
            self.respond(request, 501)

    def _on_ack(self, ack: SipRequest, key: TransactionKey) -> None:
        found = self._server.get(key)
        if found is not None:  # ACK for a non-2xx final: same transaction
            txn, dest = found
            self._run(txn, txn.receive(ack, self.now()), dest)
            return
        leg = self.legs.get(dialog_key_from_request(ack, uas=True))
        if leg is not None:
            leg.on_ack(ack)

    def _on_cancel(self, cancel: SipRequest) -> None:
        invite = self._invites.get(cancel_target_key(cancel))
        if invite is None or invite.answered:
            self.respond(cancel, 481)
            return
        self.respond(cancel, 200)
        invite.cancelled()

    @staticmethod
    def _unsupported(request: SipRequest) -> tuple[int, list[tuple[str, str]]] | None:
        """416 for a request-URI scheme we do not serve, 420 for a Require we do not
        implement (RFC 3261 §8.2.2.1, §8.2.2.3)."""
        scheme = request.uri.split(":", 1)[0].lower()
        if scheme not in URI_SCHEMES:
            return 416, []
        required = [tag.strip() for tag in request.headers.get_all("Require")]
        unknown = [tag for tag in required if tag and tag.lower() not in SUPPORTED_OPTIONS]
        if unknown:
            return 420, [("Unsupported", ", ".join(unknown))]
        return None

    def _on_new_invite(self, request: SipRequest, key: TransactionKey) -> None:
        invite = InboundInvite(self, request)
        self._invites[key] = invite
        if self.on_invite is None:
            invite.reject(480)
            return
        self.on_invite(invite)

    # -- UAC ------------------------------------------------------------------------------

    def local_uri(self, user: str) -> str:
        """A SIP URI naming `user` at this endpoint (a default From for our calls)."""
        return f"sip:{user}@{self._hostport()}"

    async def call(
        self,
        uri: str,
        sdp_offer: SessionDescription,
        *,
        from_uri: str | None = None,
        ring_timeout: float | None = None,
        on_progress: Callable[[UacState, SipResponse], None] | None = None,
        on_early_media: Callable[[NegotiatedMedia], None] | None = None,
        on_reoffer: Callable[[SipRequest], Awaitable[bytes]] | None = None,
        authenticator: Authenticator | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> OutboundLeg:
        """Place a call to `uri` with our SDP offer; return the answered leg (ACK sent).

        Raises CallFailed with the callee's status (3xx-6xx, none followed), 408 when nothing
        answered, 487 when `ring_timeout` seconds passed without an answer (CANCEL sent) and 488
        when the 2xx had no usable SDP answer (ACK and BYE sent). Cancelling the awaiting task
        sends CANCEL too. `on_progress` sees every provisional response with the state it led
        to; `on_early_media` the media of a provisional response with SDP (183);
        `on_reoffer` answers re-INVITEs from the moment the call is answered. `headers` are
        extra headers for the INVITE (a bad name or a value with CR/LF: ValueError).
        """
        for name, value in headers:
            if not EXTRA_HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
                raise ValueError(f"bad extra header {name[:40]!r}")
        target = SipUri.parse(uri)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        dest = (await numeric_host(target.host.strip("[]"), family=family), target.port or 5060)
        transport = TCP if (target.params.get("transport") or "").upper() == TCP else UDP
        sender = from_uri or self.local_uri("callbox")
        request = SipRequest("INVITE", str(target), _headers([
            ("Via", f"{self.via_value(transport)};branch={new_branch()}"),
            ("Max-Forwards", "70"),
            ("From", f"{sender if '<' in sender else f'<{sender}>'};tag={new_tag()}"),
            ("To", f"<{target}>"),
            ("Call-ID", new_call_id(self.advertised_host)),
            ("CSeq", "1 INVITE"),
            ("Contact", self.contact_for(transport)),
            ("Allow", ALLOWED_METHODS),
            ("User-Agent", self.user_agent),
            *headers,
            ("Content-Type", "application/sdp"),
        ]), sdp_offer.serialize())
        leg = OutboundLeg(self, OutboundCall(request, sdp_offer), dest)
        leg.on_progress = on_progress
        leg.on_early_media = on_early_media
        leg.on_reoffer = on_reoffer
        leg.authenticator = authenticator
        await leg.place(ring_timeout)
        return leg


def _consume_outcome(outcome: asyncio.Future[None]) -> None:
    if not outcome.cancelled():
        outcome.exception()


def _headers(pairs: Iterable[tuple[str, str]]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.add(name, value)
    return headers


class Leg:
    """Our side of one dialog: in-dialog requests both ways, termination callbacks."""

    owns_call_id = False  # we sent the dialog's INVITE (RFC 3261 §14.1's glare waits)

    def __init__(self, endpoint: SipEndpoint, dialog: Dialog | None) -> None:
        self.endpoint = endpoint
        self.dialog = dialog
        self.terminated = False
        self.on_terminated: Callable[[str], None] | None = None
        # Called with a re-INVITE carrying an offer; returns our answer or raises OfferRejected.
        self.on_reoffer: Callable[[SipRequest], Awaitable[bytes]] | None = None
        self.on_info: Callable[[SipRequest], None] | None = None
        self._reinvites: dict[int, ServerInviteTransaction] = {}
        self._no_reinvite_answering = asyncio.Event()  # clear while a re-INVITE's answer is made
        self._no_reinvite_answering.set()
        self._offering = False  # a re-INVITE of ours awaits its final response
        # The dialog's transport: in-dialog requests we send use it (Via, Contact, socket).
        self.transport = UDP
        self._numeric_dest: tuple[Address, Address] | None = None  # (dest, resolved)
        # Credentials of the trunk this call belongs to: our requests answer its challenges.
        self.authenticator: Authenticator | None = None

    @property
    def contact(self) -> str:
        return self.endpoint.contact_for(self.transport)

    def _register(self) -> None:
        assert self.dialog is not None
        self.endpoint.legs[self.dialog.key] = self

    def _unregister(self) -> None:
        if self.dialog is not None:
            self.endpoint.legs.pop(self.dialog.key, None)

    def _terminate(self, reason: str) -> None:
        if self.terminated:
            return
        self.terminated = True
        self._unregister()
        if self.on_terminated is not None:
            self.on_terminated(reason)

    def _dest(self) -> Address:
        assert self.dialog is not None
        if self.dialog.route_set:
            first = NameAddr.parse(self.dialog.route_set[0]).uri
            return first.host.strip("[]"), first.port or 5060
        return uri_address(self.dialog.remote_target)

    async def _resolve_dest(self) -> Address:
        """Where in-dialog requests go, with a host name looked up (off the loop, once per
        target)."""
        dest = self._dest()
        if self._numeric_dest is None or self._numeric_dest[0] != dest:
            self._numeric_dest = (dest, (await numeric_host(dest[0]), dest[1]))
        return self._numeric_dest[1]

    def _known_dest(self) -> Address:
        """The resolved destination when `_resolve_dest` ran for the current target."""
        dest = self._dest()
        if self._numeric_dest is not None and self._numeric_dest[0] == dest:
            return self._numeric_dest[1]
        return dest

    def on_request(self, request: SipRequest) -> None:
        assert self.dialog is not None
        if request.method != "ACK" and not self.dialog.accept_remote_request(request):
            self.endpoint.respond(request, 500, "Out of order CSeq")
            return
        if request.method == "BYE":
            self.endpoint.respond(request, 200)
            self._terminate("hangup")
        elif request.method == "INVITE":
            self._on_reinvite(request)
        elif request.method in ("OPTIONS", "INFO"):
            self.endpoint.respond(request, 200)
            if request.method == "INFO" and self.on_info is not None:
                self.on_info(request)
        elif request.method in KNOWN_METHODS:
            self.endpoint.respond(request, 405, headers=[("Allow", ALLOWED_METHODS)])
        else:
            self.endpoint.respond(request, 501)

    def _on_reinvite(self, request: SipRequest) -> None:
        if self._offering:  # RFC 3261 14.2: both sides offered at once (glare)
            self.endpoint.respond(request, 491)
            return
        if not self._no_reinvite_answering.is_set():  # RFC 3261 14.2: one re-INVITE at a time
            self.endpoint.respond(request, 500, "Previous re-INVITE pending", headers=[
                ("Retry-After", str(secrets.randbelow(REINVITE_RETRY_MAX_SECONDS + 1)))])
            return
        if self.on_reoffer is None or not request.body:
            self.endpoint.respond(request, 488, headers=[
                ("Warning", '399 callbox "re-INVITE without a usable SDP offer"')])
            return
        self._no_reinvite_answering.clear()
        spawn(self._answer_reinvite(request, self.on_reoffer), name="sip-reinvite")

    async def _answer_reinvite(self, request: SipRequest,
                               on_reoffer: Callable[[SipRequest], Awaitable[bytes]]) -> None:
        try:
            answer = await on_reoffer(request)
        except OfferRejected as exc:
            self.endpoint.respond(request, exc.status, headers=exc.headers)
            return
        finally:
            self._no_reinvite_answering.set()
        found = self.endpoint._server.get(server_key(request))
        if found is not None and isinstance(found[0], ServerInviteTransaction):
            self._reinvites[request.cseq.seq] = found[0]
        self.endpoint.respond(request, 200, headers=[("Contact", self.contact)],
                              body=answer, content_type="application/sdp")

    def on_ack(self, ack: SipRequest) -> None:
        txn = self._reinvites.pop(ack.cseq.seq, None)
        if txn is not None:
            key = server_key(txn.request)
            dest = self.endpoint._server.get(key, (txn, ("", 0)))[1]
            self.endpoint._run(txn, txn.ack_received(self.endpoint.now()), dest)

    async def bye(self) -> None:
        """Hang up: BYE in a client transaction (retransmitted until answered or timer F)."""
        if self.terminated or self.dialog is None:
            return
        self._terminate("local")
        await self._send_bye()

    async def reinvite(self, sdp_offer: bytes) -> SipResponse:
        """Send a re-INVITE with a new SDP offer (hold, resume, a new address); return its final
        response. A 2xx refreshes the remote target and is ACKed, again on each retransmission;
        a 491 (the peer offered at the same time) is tried again after `glare_wait`, up to
        GLARE_ATTEMPTS times in all. Each attempt waits while a re-INVITE of the peer is being
        answered (RFC 3261 14.1: one INVITE transaction at a time). Raises CallFailed when
        nothing answers."""
        await self._wait_confirmed()
        attempt = 1
        try:
            while True:
                while not self._no_reinvite_answering.is_set():
                    await self._no_reinvite_answering.wait()
                self._offering = True
                response = await self._offer(sdp_offer)
                if response.status != 491 or attempt == GLARE_ATTEMPTS or self.terminated:
                    return response
                attempt += 1
                self._offering = False  # meanwhile the peer's offer is answered, not refused
                await asyncio.sleep(glare_wait(self.owns_call_id))
        finally:
            self._offering = False

    async def _offer(self, sdp_offer: bytes) -> SipResponse:
        """One re-INVITE transaction with `sdp_offer`."""
        assert self.dialog is not None
        dialog = self.dialog
        request = dialog.create_request(
            "INVITE", via=self.endpoint.via_value(self.transport), contact=self.contact,
            body=sdp_offer, content_type="application/sdp",
            extra_headers=[("User-Agent", self.endpoint.user_agent)],
        )

        sent = request  # the INVITE last sent: re-sent with credentials after a challenge

        def ack(response: SipResponse) -> None:
            # The ACK for a 2xx carries the INVITE's CSeq number and credentials (RFC 3261
            # 13.2.2.4, 22.1).
            self.endpoint.send(dialog.create_request(
                "ACK", via=self.endpoint.via_value(self.transport), contact=None,
                cseq=response.cseq.seq, extra_headers=credentials_of(sent),
            ), self._known_dest())

        exchange = self.authenticator.exchange() if self.authenticator is not None else None
        sent, response = await self.endpoint.request_authenticated(
            request, await self._resolve_dest(), exchange, on_late_2xx=ack)
        dialog.local_seq = max(dialog.local_seq, sent.cseq.seq)
        if 200 <= response.status < 300:
            dialog.refresh_target(response)
            try:
                await self._resolve_dest()
            except OSError as exc:
                log.warning("call %s: the new Contact does not resolve: %s", dialog.call_id, exc)
            ack(response)
        return response

    async def _wait_confirmed(self) -> None:
        """Our side may send BYE only once the dialog is confirmed (RFC 3261 15.1.1)."""

    async def _send_bye(self) -> None:
        assert self.dialog is not None
        await self._wait_confirmed()
        request = self.dialog.create_request(
            "BYE", via=self.endpoint.via_value(self.transport), contact=self.contact,
            extra_headers=[("User-Agent", self.endpoint.user_agent)],
        )
        try:
            dest = await self._resolve_dest()
        except OSError as exc:
            log.warning("BYE for %s not sent: %s", self.dialog.call_id, exc)
            return
        exchange = self.authenticator.exchange() if self.authenticator is not None else None
        try:
            sent, response = await self.endpoint.request_authenticated(request, dest, exchange)
        except CallFailed as exc:
            log.info("BYE for %s not answered: %s", self.dialog.call_id, exc)
            return
        self.dialog.local_seq = max(self.dialog.local_seq, sent.cseq.seq)
        if response.status >= 300:
            log.info("BYE for %s refused: %s %s", self.dialog.call_id, response.status,
                     response.reason)


class InboundInvite(Leg):
    """A call someone placed to us: ring, answer or reject it, then the dialog."""

    def __init__(self, endpoint: SipEndpoint, request: SipRequest) -> None:
        super().__init__(endpoint, None)
        self.request = request
        self.transport = TCP if request.top_via.transport == TCP else UDP
        self.local_tag = new_tag()
        self.answered = False
        self.finished = False  # a final response was sent
        self.acked = asyncio.Event()  # the ACK for our 2xx came (or will never come)
        # Delayed offer (an INVITE without SDP): our 200 carried the offer; the ACK carries the
        # answer, handed here as (body, Content-Type).
        self.on_ack_body: Callable[[bytes, str | None], None] | None = None
        self._ringing = False  # the TU rings: the provisional response is a 180
        assert endpoint._loop is not None, "INVITEs arrive on a started endpoint"
        self._provisional_timer: asyncio.TimerHandle | None = endpoint._loop.call_later(
            PROVISIONAL_AFTER, self._send_provisional)

    @property
    def call_id(self) -> str:
        return self.request.call_id

    def ringing(self) -> None:
        """The callee is alerted: a 180, once PROVISIONAL_AFTER has passed unanswered."""
        self._ringing = True
        if self._provisional_timer is None:  # a 100 went out already: the 180 follows now
            self._send_provisional()

    def _send_provisional(self) -> None:
        self._provisional_timer = None
        if self.finished:
            return
        if self._ringing:
            self.endpoint.respond(self.request, 180, to_tag=self.local_tag,
                                  headers=[("Contact", self.contact)])
        else:
            self.endpoint.respond(self.request, 100)

    def _final(self) -> None:
        """A final response goes out: no provisional one after it."""
        self.finished = True
        if self._provisional_timer is not None:
            self._provisional_timer.cancel()
            self._provisional_timer = None

    def accept(self, sdp_answer: bytes) -> None:
        """200 OK with our SDP; the transaction retransmits it until the ACK comes."""
        if self.finished:
            return
        self._final()
        self.answered = True
        self.dialog = Dialog.as_uas(self.request, self.local_tag)
        self._register()
        self.endpoint.respond(self.request, 200, to_tag=self.local_tag, headers=[
            ("Contact", self.contact), ("Allow", ALLOWED_METHODS),
        ], body=sdp_answer, content_type="application/sdp")

    def reject(self, status: int, reason: str | None = None, *,
               headers: Iterable[tuple[str, str]] = ()) -> None:
        if self.finished:
            return
        self._final()
        self.endpoint.respond(self.request, status, reason, to_tag=self.local_tag,
                              headers=headers)
        self.terminated = True

    async def _wait_confirmed(self) -> None:
        """A UAS must not send BYE before the ACK of its 2xx (or the end of waiting for it),
        or the BYE can overtake the 200 OK and reach a caller with no dialog yet."""
        if self.answered and not self.acked.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acked.wait(), self.endpoint.timers.timeout)

    def _confirmed(self, ack: SipRequest) -> None:
        """The ACK of our final response: the dialog is confirmed."""
        if self.acked.is_set():
            return
        self.acked.set()
        if self.answered and self.on_ack_body is not None:
            self.on_ack_body(ack.body, ack.content_type)

    def on_ack(self, ack: SipRequest) -> None:
        if ack.cseq.seq == self.request.cseq.seq:
            self._confirmed(ack)
            key = server_key(self.request)
            found = self.endpoint._server.get(key)
            if found is not None:
                txn, dest = found
                if isinstance(txn, ServerInviteTransaction):
                    self.endpoint._run(txn, txn.ack_received(self.endpoint.now()), dest)
            return
        super().on_ack(ack)

    def cancelled(self) -> None:
        self.reject(487)
        if self.on_terminated is not None:
            self.on_terminated("cancel")

    def ack_timeout(self, reason: str) -> None:
        """Our 2xx was never ACKed (or a non-2xx never ACKed): end the call."""
        self.acked.set()  # stop waiting for it
        if self.answered and not self.terminated:
            log.info("call %s: %s; sending BYE", self.call_id, reason)
            self._terminate("timeout")
            spawn(self._send_bye(), name="sip-bye")


class OutboundLeg(Leg):
    """A call we placed: the I/O around the sans-I/O `OutboundCall` (sip/uac.py), then the
    dialog like any leg (BYE and re-INVITE both ways)."""

    owns_call_id = True

    def __init__(self, endpoint: SipEndpoint, call: OutboundCall, invite_dest: Address) -> None:
        super().__init__(endpoint, None)
        self.call = call
        self.invite = call.invite
        self.invite_dest = invite_dest
        self.transport = TCP if self.invite.top_via.transport == TCP else UDP  # as it was sent
        self.response: SipResponse | None = None  # the 2xx, once answered
        self.media: NegotiatedMedia | None = None  # negotiated from the 2xx
        self.on_progress: Callable[[UacState, SipResponse], None] | None = None
        self.on_early_media: Callable[[NegotiatedMedia], None] | None = None
        self._outcome: asyncio.Future[None] | None = None
        self._give_up_timer: asyncio.TimerHandle | None = None

    async def place(self, ring_timeout: float | None) -> None:
        """Send the INVITE; return once answered, raise CallFailed otherwise."""
        loop = asyncio.get_running_loop()
        self._outcome = loop.create_future()
        spawn(self._run_invite(), name="sip-invite")
        if ring_timeout is not None:
            self._give_up_timer = loop.call_later(
                ring_timeout, self.abandon, f"no answer within {ring_timeout:g} s")
        try:
            await asyncio.shield(self._outcome)
        except asyncio.CancelledError:
            # Nobody awaits the outcome any more (487 after our CANCEL): consume it.
            self._outcome.add_done_callback(_consume_outcome)
            self.abandon("the caller gave up")
            raise
        finally:
            if self._give_up_timer is not None:
                self._give_up_timer.cancel()

    def abandon(self, reason: str) -> None:
        """Give up before the answer: CANCEL (once a provisional response came)."""
        if self.call.state in (UacState.CALLING, UacState.PROCEEDING, UacState.EARLY):
            self._apply(self.call.cancel(reason), None)

    async def _run_invite(self) -> None:
        exchange = self.authenticator.exchange() if self.authenticator is not None else None
        while True:
            try:
                final = await self.endpoint.request(
                    self.invite, self.invite_dest, on_provisional=self._on_provisional,
                    on_late_2xx=self._on_late_2xx)
            except CallFailed as exc:  # timer B, or the endpoint closed
                self._feed(functools.partial(self.call.no_response, exc.reason), None)
                return
            if self.call.finished:  # we stopped waiting after our CANCEL
                log.debug("call %s: %s after it ended", self.invite.call_id, final.status)
                return
            if not self._resend_with_credentials(exchange, final):
                break
        actions = self.call.receive(final)
        self.dialog = self.call.dialog
        if self.dialog is not None:
            try:
                await self._resolve_dest()
            except OSError as exc:
                log.warning("call %s: the callee's Contact does not resolve: %s",
                            self.invite.call_id, exc)
        self._apply(actions, final)

    def _resend_with_credentials(self, exchange: AuthExchange | None,
                                 final: SipResponse) -> bool:
        """After a 401/407: the INVITE again with credentials (once per challenge), unless the
        caller gave up meanwhile. False: `final` is the outcome."""
        if exchange is None or final.status not in (401, 407) or self.call.cancel_requested:
            return False
        try:
            invite = exchange.retry(self.invite, final)
        except AuthenticationFailed as exc:
            log.warning("call %s: %s", self.invite.call_id, exc)
            return False
        self.call.resent(invite)
        self.invite = invite
        return True

    def _on_provisional(self, response: SipResponse) -> None:
        self._feed(lambda: self.call.receive(response), response)

    def _on_late_2xx(self, response: SipResponse) -> None:
        if self.call.dialog is not None:
            self._feed(lambda: self.call.receive(response), response)

    def _feed(self, event: Callable[[], list[UacAction]], response: SipResponse | None) -> None:
        try:
            actions = event()
        except UacError as exc:
            log.info("call %s: ignored: %s", self.invite.call_id, exc)
            return
        self._apply(actions, response)

    def _apply(self, actions: list[UacAction], response: SipResponse | None) -> None:
        for action in actions:
            if isinstance(action, SendMessage):
                self.endpoint.send(action.message, self._known_dest())
            elif isinstance(action, SendCancel):
                spawn(self._cancel(action.cancel), name="sip-cancel")
            elif isinstance(action, Hangup):
                log.info("call %s: %s; sending BYE", self.invite.call_id, action.reason)
                self.dialog = self.call.dialog
                self.terminated = True
                spawn(self._send_bye(), name="sip-bye")
            elif isinstance(action, EarlyMedia):
                if self.on_early_media is not None:
                    self.on_early_media(action.media)
            elif isinstance(action, Answered):
                self.response, self.media = action.response, action.media
                self._register()
                self._settle(None)
            elif isinstance(action, Failed):
                self._settle(CallFailed(action.status, action.reason))
        if response is not None and response.status < 200 and self.on_progress is not None:
            self.on_progress(self.call.state, response)

    def _settle(self, error: CallFailed | None) -> None:
        if self._outcome is None or self._outcome.done():
            return
        if error is None:
            self._outcome.set_result(None)
        else:
            self._outcome.set_exception(error)

    async def _cancel(self, cancel: SipRequest) -> None:
        """CANCEL in its own transaction; if the INVITE still has no final response 64*T1
        later, the call counts as cancelled (RFC 3261 §9.1)."""
        loop = asyncio.get_running_loop()
        waited = loop.call_later(self.endpoint.timers.timeout, self._cancel_unanswered)
        try:
            await self.endpoint.request(cancel, self.invite_dest)
        except CallFailed as exc:
            log.info("CANCEL for %s not answered: %s", self.invite.call_id, exc)
        if self.call.finished:
            waited.cancel()  # the 487 (or a 2xx) came with the CANCEL's 200

    def _cancel_unanswered(self) -> None:
        if self.call.finished:
            return
        reason = "no final response after CANCEL"
        entry = self.endpoint._client.get((self.invite.branch, "INVITE"))
        if entry is None or entry.future.done():
            self._feed(lambda: self.call.no_response(reason), None)
            return
        self.endpoint._forget(entry.txn)
        entry.future.set_exception(CallFailed(408, reason))  # _run_invite reports it
