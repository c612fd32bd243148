"""One RELAY client: its WebSocket (`Connection`) and its logical session (`Session`).

A `Session` is what `signalwire.connect` creates: a project, a set of contexts, a `protocol`
string and an event queue. It outlives its WebSocket: when the socket goes away the session is
kept for a grace period, events for its calls queue up, and a client that reconnects with the
same `protocol` gets them (every event not acknowledged yet, in order).

In a cluster a session can also stand here for a client of another node (`relay_to`): its
events then go to that node, and the plays, recordings and calls that hold it need not know.
That is how a node's calls report to a client elsewhere, and how a session follows its client
when the client resumes on another node (callbox.server.cluster.handover).

A `Connection` is one WebSocket: a writer task that drains an outgoing queue (so events can be
sent from synchronous callbacks, in order), server-to-client requests awaiting their reply
(pings, `signalwire.disconnect`), and the ping loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSCloseCode, web

from callbox.wire import relay as wire

log = logging.getLogger(__name__)

MAX_OUTGOING = 10_000  # frames waiting for a slow client before we drop its socket
MAX_UNACKED = 10_000  # events kept per session for re-delivery

Relay = Callable[[str, Mapping[str, Any]], None]  # (event type, params) to another node


class Connection:
    """One WebSocket of a RELAY client."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.session: Session | None = None
        self.closed = False
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._pinger: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        protocol = self.session.protocol if self.session else "-"
        return f"<Connection {self.peer} {protocol}>"

    # -- sending --------------------------------------------------------------------------

    def send(self, frame: Mapping[str, Any] | str) -> None:
        """Queue one frame (a dict, or text already serialised). Never blocks."""
        if self.closed:
            return
        if self._out.qsize() >= MAX_OUTGOING:
            log.warning("RELAY client %s is not reading (%d frames queued): dropping it",
                        self.peer, self._out.qsize())
            self.abort()
            return
        self._out.put_nowait(frame if isinstance(frame, str) else wire.dumps(frame))

    def close_after_flush(self) -> None:
        """Close once everything queued so far is written (e.g. after an error reply)."""
        if not self.closed:
            self._out.put_nowait(None)

    async def _write_loop(self) -> None:
        try:
            while True:
                text = await self._out.get()
                if text is None:
                    await self.close()
                    return
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # the socket went away under us
            log.debug("RELAY %s: write failed: %s", self.peer, exc)
            self.abort()
        except asyncio.CancelledError:
            pass

    async def request(self, method: str, params: Mapping[str, Any], timeout: float
                      ) -> dict[str, Any]:
        """Send a server-to-client request and wait for its result (TimeoutError if none)."""
        frame = wire.request(method, params)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[frame["id"]] = future
        try:
            self.send(frame)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(frame["id"], None)

    def on_reply(self, request_id: Any, value: dict[str, Any] | None) -> bool:
        """A reply from the client to one of our requests; False if we were not waiting."""
        future = self._pending.get(request_id) if isinstance(request_id, str) else None
        if future is None:
            return False
        if not future.done():
            future.set_result(value or {})
        return True

    # -- pings ----------------------------------------------------------------------------

    def start_pings(self, interval: float, timeout: float, max_missed: int) -> None:
        if self._pinger is None and interval > 0:
            self._pinger = asyncio.get_running_loop().create_task(
                self._ping_loop(interval, timeout, max_missed))

    async def _ping_loop(self, interval: float, timeout: float, max_missed: int) -> None:
        missed = 0
        with contextlib.suppress(asyncio.CancelledError):
            while not self.closed:
                await asyncio.sleep(interval)
                try:
                    await self.request(wire.PING, {"timestamp": time.time()}, timeout)
                    missed = 0
                except TimeoutError:
                    missed += 1
                    log.info("RELAY %s: no answer to ping (%d/%d)", self.peer, missed,
                             max_missed)
                    if missed >= max_missed:
                        self.abort()
                        return

    # -- closing --------------------------------------------------------------------------

    async def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        self._mark_closed()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=message)

    def abort(self) -> None:
        """Close now, without waiting for anything (the reader loop then ends)."""
        if self.closed:
            return
        self._mark_closed()
        asyncio.get_running_loop().create_task(self._close_quietly())

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=WSCloseCode.GOING_AWAY)

    def _mark_closed(self) -> None:
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        if self._writer is not asyncio.current_task():
            self._writer.cancel()


class Session:
    """A RELAY session: project, contexts, protocol, and the events for its client."""

    def __init__(self, *, protocol: str, project_id: str, contexts: list[str],
                 event_acks: bool, agent: str = "") -> None:
        self.protocol = protocol
        self.project_id = project_id
        self.contexts = list(contexts)
        self.event_acks = event_acks
        self.agent = agent
        self.created_at = time.time()
        self.connection: Connection | None = None
        self.detached_at: float | None = None
        self.on_expired: Callable[[Session], None] | None = None
        self._unacked: OrderedDict[str, str] = OrderedDict()
        self._expiry: asyncio.TimerHandle | None = None
        self._relay: Relay | None = None
        self.dropped_events = 0

    def __repr__(self) -> str:
        state = "connected" if self.connected else "detached"
        return f"<Session {self.protocol} {self.project_id} {self.contexts} {state}>"

    @property
    def connected(self) -> bool:
        if self._relay is not None:
            return True
        return self.connection is not None and not self.connection.closed

    @property
    def relayed(self) -> bool:
        """Its client is another node's: events go there (see `relay_to`)."""
        return self._relay is not None

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    # -- events ---------------------------------------------------------------------------

    def emit(self, event_type: str, params: Mapping[str, Any]) -> None:
        """Send one event to the client now, or keep it for when it comes back."""
        if self._relay is not None:
            self._relay(event_type, params)
            return
        frame = wire.event(event_type, params, project_id=self.project_id,
                           channel=f"signalwire_{self.protocol}", timestamp=time.time())
        text = wire.dumps(frame)
        connected = self.connected
        if self.event_acks or not connected:
            self._unacked[frame["id"]] = text
            while len(self._unacked) > MAX_UNACKED:
                self._unacked.popitem(last=False)
                self.dropped_events += 1
                if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                    log.warning("RELAY session %s: %d events dropped (client not acking)",
                                self.protocol, self.dropped_events)
        if connected:
            assert self.connection is not None
            self.connection.send(text)
            if not self.event_acks:
                self._unacked.pop(frame["id"], None)

    def ack(self, event_id: Any) -> bool:
        return isinstance(event_id, str) and self._unacked.pop(event_id, None) is not None

    def pending_events(self) -> list[tuple[str, str]]:
        """(event id, frame) of what its client has not acknowledged (or not received), oldest
        first."""
        return list(self._unacked.items())

    def relay_to(self, relay: Relay) -> None:
        """From now on its client is another node's: every event goes to `relay` (nothing is
        kept here), and a socket of this node that was bound to it is closed."""
        self._let_go()
        self.detached_at = None
        self._relay = relay

    def resume_here(self, *, contexts: list[str], event_acks: bool, agent: str,
                    events: list[tuple[str, str]], grace: float) -> None:
        """Its client comes back to this node (it was another node's, or new here): keep the
        client's `events` not acknowledged yet, and wait `grace` seconds for its socket."""
        self._relay = None
        self.contexts = list(contexts)
        self.event_acks = event_acks
        self.agent = agent
        self._unacked.update(events)
        self._wait_for_client(grace)

    # -- connection life cycle --------------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        """Bind a (new) socket and re-send every event it has not acknowledged, in order."""
        old = self.connection
        if old is not None and old is not connection and not old.closed:
            old.abort()  # a half-open socket the client gave up on
        self.connection = connection
        connection.session = self
        self.detached_at = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for text in list(self._unacked.values()):
            connection.send(text)
        if not self.event_acks:
            self._unacked.clear()

    def detach(self, connection: Connection, grace: float) -> None:
        """The socket went away: keep the session `grace` seconds for a resume."""
        if self.connection is not connection:
            return
        self.connection = None
        self._wait_for_client(grace)

    def _wait_for_client(self, grace: float) -> None:
        """No socket now: expire in `grace` seconds unless the client comes back."""
        self.detached_at = time.time()
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(grace, self.expire)

    def expire(self) -> None:
        self._relay = None
        self._let_go()
        if self.on_expired is not None:
            self.on_expired(self)

    def _let_go(self) -> None:
        """No timer, no socket, no event kept."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.connection is not None and not self.connection.closed:
            self.connection.abort()
        self.connection = None
        self._unacked.clear()
