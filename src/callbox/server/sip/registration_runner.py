"""Runs a trunk's `Registration` on the event loop: builds and sends the REGISTERs through the
SIP endpoint (answering digest challenges with the trunk's credentials), waits for the refresh
or retry time, and unregisters on a graceful stop. State changes are logged, one line each."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from callbox.server.config import Trunk
from callbox.server.sip.digest import Authenticator, Credentials
from callbox.server.sip.endpoint import Address, CallFailed, SipEndpoint
from callbox.server.sip.headers import NameAddr, SipParseError
from callbox.server.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    new_branch,
    new_call_id,
    new_tag,
)
from callbox.server.sip.registration import Registration, RegistrationState
from callbox.server.sip.resolve import numeric_host
from callbox.server.sip.transport import TCP, UDP
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)

# The unregister on stop waits at most this long for the registrar (stop must not hang).
UNREGISTER_TIMEOUT_SECONDS = 5.0
# A TCP registration's connection gets a CRLF keep-alive this often (RFC 5626 §4.4.1), well
# within the idle lifetime registrars give connections (Kamailio's default: 120 s): calls for
# our contact come on that connection, so it must outlive the time between refreshes.
KEEPALIVE_SECONDS = 30.0
KEEPALIVE = b"\r\n\r\n"


def trunk_authenticator(trunk: Trunk) -> Authenticator:
    return Authenticator(Credentials(trunk.username, trunk.password, trunk.realm))


def granted_expires(response: SipResponse, contact_uri: str, asked: int) -> int:
    """Seconds granted for our binding: its Contact `expires` param, else Expires, else
    what we asked (RFC 3261 §10.2.4)."""
    for value in response.headers.get_all("Contact"):
        try:
            contact = NameAddr.parse(value)
        except SipParseError:
            continue
        if str(contact.uri) == contact_uri:
            expires = contact.params.get("expires")
            if expires is not None and expires.isdigit():
                return int(expires)
    header = (response.headers.get("Expires") or "").strip()
    return int(header) if header.isdigit() else asked


class TrunkRegistration:
    """Keeps one trunk registered while the platform runs."""

    def __init__(self, endpoint: SipEndpoint, trunk: Trunk) -> None:
        self.endpoint = endpoint
        self.trunk = trunk
        self.machine = Registration(expires=trunk.expires)
        self.authenticator = trunk_authenticator(trunk)
        self.call_id = new_call_id(endpoint.advertised_host)
        self.from_tag = new_tag()
        self.cseq = 0
        self.attempts = 0  # REGISTER exchanges started (retries with credentials included)
        self._task: asyncio.Task[None] | None = None
        self._logged = ""  # the last state logged
        self._failure = ""  # why the last challenge was not answered (digest exchange)
        self._dest: Address | None = None
        self.keepalive_interval = KEEPALIVE_SECONDS
        self._keepalive_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> RegistrationState:
        return self.machine.state

    @property
    def aor(self) -> str:
        host, port = self.trunk.host_port
        host = f"[{host}]" if ":" in host else host
        return f"sip:{self.trunk.username}@{host}" + ("" if port == 5060 else f":{port}")

    @property
    def transport(self) -> str:
        """The trunk's transport: REGISTERs (refreshes and the unregister too) go over it."""
        return TCP if self.trunk.transport.upper() == TCP else UDP

    @property
    def contact_uri(self) -> str:
        host = self.endpoint.advertised_host
        host = f"[{host}]" if ":" in host else host
        suffix = ";transport=tcp" if self.transport == TCP else ""
        return f"sip:{self.trunk.username}@{host}:{self.endpoint.port}{suffix}"

    def start(self) -> None:
        self._changed(self.machine.start())
        self._task = spawn(self._run(), name=f"register-{self.trunk.name}")
        if self.transport == TCP:
            self._keepalive_task = spawn(self._keep_alive(), name=f"keepalive-{self.trunk.name}")

    async def stop(self) -> None:
        """Graceful stop: unregister (Expires: 0) when a binding may exist."""
        for task in (self._keepalive_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not self.machine.stop():
            return
        try:
            await asyncio.wait_for(self._send(0), UNREGISTER_TIMEOUT_SECONDS)
        except (TimeoutError, CallFailed, OSError) as exc:
            log.info("trunk %s: unregister not confirmed: %s", self.trunk.name, exc)
        self._release_connection()
        self.machine.unregistered()
        self._changed(True)

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self.machine.state is RegistrationState.REGISTERING:
                await self._attempt()
                continue
            deadline = self.machine.deadline
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - self.endpoint.now()))
            self._changed(self.machine.due(self.endpoint.now()))

    async def _keep_alive(self) -> None:
        """While registered, ping the registrar's connection (never opens a new one: the
        registrar knows us by the registering connection)."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            dest = self._dest
            if (self.machine.state is RegistrationState.REGISTERED and dest is not None
                    and dest in self.endpoint.tcp.connections):
                self.endpoint.tcp.send(KEEPALIVE, dest)

    async def _attempt(self) -> None:
        try:
            response = await self._send(self.trunk.expires)
        except OSError as exc:
            self._failed(f"proxy {self.trunk.proxy!r} does not resolve: {exc}", error=True)
            return
        except CallFailed as exc:
            self._failed(f"no answer from {self.trunk.proxy} ({exc.status} {exc.reason})")
            return
        if 200 <= response.status < 300:
            granted = granted_expires(response, self.contact_uri, self.trunk.expires)
            self._changed(self.machine.succeeded(self.endpoint.now(), granted))
        else:
            self._failed(f"{response.status} {response.reason}" + (
                f": {self._failure}" if self._failure else ""))

    async def _destination(self) -> Address:
        if self._dest is None:
            host, port = self.trunk.host_port
            self._dest = (await numeric_host(host), port)
        return self._dest

    async def _send(self, expires: int) -> SipResponse:
        dest = await self._destination()
        if self.transport == TCP:  # kept open: the answer, then calls to our contact, come on it
            self.endpoint.registrar_tcp_peers.add(dest)
        exchange = self.authenticator.exchange()
        self.attempts += 1
        sent, response = await self.endpoint.request_authenticated(
            self._register_request(expires), dest, exchange)
        self.cseq = sent.cseq.seq
        self._failure = exchange.failure
        return response

    def _register_request(self, expires: int) -> SipRequest:
        self.cseq += 1
        host, port = self.trunk.host_port
        host = f"[{host}]" if ":" in host else host
        registrar = f"sip:{host}" + ("" if port == 5060 else f":{port}")
        headers = Headers()
        for name, value in (
            ("Via", f"{self.endpoint.via_value(self.transport)};branch={new_branch()}"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.contact_uri}>"),
            ("Expires", str(expires)),
            ("User-Agent", self.endpoint.user_agent),
        ):
            headers.add(name, value)
        return SipRequest("REGISTER", registrar, headers)

    # -- state changes --------------------------------------------------------------------

    def _release_connection(self) -> None:
        """The registrar's TCP connection may close when idle again."""
        if self._dest is not None:
            self.endpoint.registrar_tcp_peers.discard(self._dest)

    def _failed(self, reason: str, *, error: bool = False) -> None:
        self._release_connection()
        self._dest = None  # look the proxy up again before the retry
        self.machine.failed(self.endpoint.now(), reason)
        retry = self.machine.backoff(self.machine.failures - 1)
        if self.machine.summary != self._logged:
            self._logged = self.machine.summary
            (log.error if error else log.warning)(
                "trunk %s: registration %s (retrying in %g s, then less often)",
                self.trunk.name, self._logged, retry)

    def _changed(self, changed: bool) -> None:
        """Log a new state; a retry after a failure stays quiet until its outcome differs."""
        summary = self.machine.summary
        if not changed or summary == self._logged:
            return
        if self.machine.state is RegistrationState.REGISTERING and self._logged.startswith(
                "failed"):
            log.debug("trunk %s: registration retry %d", self.trunk.name, self.attempts + 1)
            return
        self._logged = summary
        log.info("trunk %s: registration %s", self.trunk.name, summary)
