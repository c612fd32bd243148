"""The RELAY server: WebSocket endpoint, authentication, sessions, call offers, dispatch.

`RelayHub(services)` is what the platform talks to (it gets the platform's `Services`: calls,
project authentication, node id, recorder; never the platform itself):

- `websocket(request)` - the aiohttp handler at `GET /` (WSS on `[http] listen`, WS on
  `[http] plain_listen`);
- `has_session_for(project_id, context)` - is a client connected for this context now?
- `offer(call, context)` - send `calling.call.receive` to one connected session of the context
  (round-robin across sessions; `pick_session` + `offer_to`);
- `served_contexts()` - the (project, context) pairs its connected sessions receive;
- `send_clients_away()` - `signalwire.disconnect` to every client, then close the sockets (a
  draining node in a cluster: the clients resume on other nodes);
- `close()` - at shutdown: the same, then the sessions end (once other nodes took them over).

Frames are handled in order per socket; `calling.*` commands run as tasks so a slow one (media
to render, a recording waiting for its prompt) never holds up acks and pings behind it. A bad
frame gets a JSON-RPC error and the socket stays open. Bad credentials get an error reply, then
the socket is closed.

With a cluster (`RemoteNodes`, callbox.server.cluster), sessions may also be another node's
(a `Session` whose events travel over the bus), a command on a call of another node is run
there, and a client may resume here a session another node held (the cluster moves it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict

from aiohttp import WSCloseCode, WSMsgType, web

from callbox.server.call import Call
from callbox.server.relay.calls import CallEntry
from callbox.server.relay.commands import Commands
from callbox.server.relay.dialing import DialCommands
from callbox.server.relay.remote import RemoteNodes
from callbox.server.relay.session import Connection, Session
from callbox.server.services import Services
from callbox.server.tasks import spawn
from callbox.wire import dial as dial_wire
from callbox.wire import relay as wire

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1024 * 1024
MAX_CONNECTIONS = 1000
MAX_COMMANDS_IN_FLIGHT = 100  # per socket
CONNECT_TIMEOUT = 10.0  # seconds for a new socket to send signalwire.connect
RESUME_GRACE = 60.0  # seconds a session waits for its client to come back
PING_INTERVAL = 30.0
PING_TIMEOUT = 10.0
PING_MAX_MISSED = 3
AUTH_FAILURE_DELAY = 0.2  # seconds, to slow down guessing
ENDED_CALLS_REMEMBERED = 10_000  # for "410 call gone" instead of "404 unknown call"
SESSION_METHODS = (wire.PING, wire.RECEIVE, wire.UNRECEIVE, wire.DISCONNECT)


class RelayHub:
    def __init__(self, services: Services, cluster: RemoteNodes | None = None) -> None:
        self.services = services
        self.cluster = cluster
        self.max_connections = MAX_CONNECTIONS
        self.resume_grace = RESUME_GRACE
        self.ping_interval = PING_INTERVAL
        self.ping_timeout = PING_TIMEOUT
        self.sessions: dict[str, Session] = {}  # by protocol
        self.entries: dict[str, CallEntry] = {}  # by call id
        self.connections: set[Connection] = set()
        self.commands = Commands(self)
        self.dialing = DialCommands(self)
        self.commands.register(self.dialing.handlers(), {dial_wire.DIAL: self.dialing.dial})
        self._ended: OrderedDict[str, str] = OrderedDict()  # call id -> project id
        self._round_robin: dict[tuple[str, str], int] = {}
        self._closing = False
        self._moving: set[str] = set()  # sessions whose client close() sent away
        self._all_moved = asyncio.Event()  # ... and none of them is here any more

    # -- what the platform asks -----------------------------------------------------------

    def _candidates(self, project_id: str, context: str) -> list[Session]:
        return [s for s in self.sessions.values()
                if s.connected and s.project_id == project_id and context in s.contexts]

    def has_session_for(self, project_id: str, context: str) -> bool:
        return bool(self._candidates(project_id, context))

    def served_contexts(self) -> set[tuple[str, str]]:
        return {(s.project_id, context) for s in self.sessions.values() if s.connected
                for context in s.contexts}

    def pick_session(self, project_id: str, context: str) -> Session | None:
        """The next connected session of `context` (round-robin), if any."""
        candidates = self._candidates(project_id, context)
        if not candidates:
            return None
        key = (project_id, context)
        turn = self._round_robin.get(key, 0)
        self._round_robin[key] = turn + 1
        return candidates[turn % len(candidates)]

    def offer(self, call: Call, context: str) -> bool:
        """Offer an inbound call to one session of `context` (round-robin)."""
        session = self.pick_session(call.project_id, context)
        if session is None or not call.is_active:
            return False
        self.offer_to(session, call, context)
        return True

    def offer_to(self, session: Session, call: Call, context: str) -> None:
        """Send `calling.call.receive` (and the state, if past created) to `session`."""
        entry = self._entry(call)
        entry.bind(session)
        session.emit(wire.CALL_RECEIVE, entry.receive_params(context))
        if call.state.value != "created":
            session.emit(wire.CALL_STATE, entry.state_params(call.state.value))
        log.info("call %s offered to RELAY session %s (context %r)", call.id, session.protocol,
                 context)

    async def send_clients_away(self, why: str) -> int:
        """Ask every client to reconnect (`signalwire.disconnect` with restart false: its
        session waits for it), then close the sockets; how many there were. Behind a load
        balancer that has taken this node out, a client lands on another node, which takes its
        session over (a cluster); one that comes back here resumes here."""
        connections = list(self.connections)
        for connection in connections:
            connection.send(wire.request(wire.DISCONNECT, {"restart": False}))
        if connections:
            await asyncio.sleep(0.1)  # let the notices go out
        for connection in connections:
            await connection.close(code=WSCloseCode.GOING_AWAY, message=why.encode())
        return len(connections)

    async def close(self, wait_for_moves: float = 0.0) -> None:
        """Ask every client to reconnect elsewhere and close every socket; then wait up to
        `wait_for_moves` seconds for other nodes to take over the sessions of the clients that
        were connected (a cluster), and end the sessions left."""
        self._closing = True
        self._moving = {p for p, s in self.sessions.items() if s.connected}
        await self.send_clients_away("server shutdown")
        if wait_for_moves > 0 and self._moving:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_moved.wait(), wait_for_moves)
        for session in list(self.sessions.values()):
            session.on_expired = None
            session.expire()
        self.sessions.clear()

    # -- calls ----------------------------------------------------------------------------

    def _entry(self, call: Call) -> CallEntry:
        entry = self.entries.get(call.id)
        if entry is None:
            entry = CallEntry(call, self.services.node_id, on_ended=self._call_ended)
            self.entries[call.id] = entry
        return entry

    def entry_for(self, session: Session, call_id: str) -> CallEntry | None:
        """The call `session` may command: one of its project's calls that is still active."""
        known = self.entries.get(call_id)
        call = known.call if known is not None else self.services.calls.get(call_id)
        if call is None or call.project_id != session.project_id or not call.is_active:
            return None
        entry = self._entry(call)
        entry.bind(session)
        return entry

    def recently_ended(self, project_id: str, call_id: str) -> bool:
        if self._ended.get(call_id) == project_id:
            return True
        entry = self.entries.get(call_id)
        return entry is not None and entry.call.project_id == project_id

    def _call_ended(self, entry: CallEntry) -> None:
        self.entries.pop(entry.call.id, None)
        self._ended[entry.call.id] = entry.call.project_id
        while len(self._ended) > ENDED_CALLS_REMEMBERED:
            self._ended.popitem(last=False)

    # -- sessions -------------------------------------------------------------------------

    def _sessions_changed(self) -> None:
        if self.cluster is not None:
            self.cluster.sessions_changed()

    def session_expired(self, session: Session) -> None:
        """`session` is gone for good: its calls that were not answered yet are hung up."""
        if self.sessions.get(session.protocol) is session:
            del self.sessions[session.protocol]
            self._moved(session.protocol)
            if self.cluster is not None:
                self.cluster.session_expired(session)
                self.cluster.sessions_changed()
        log.info("RELAY session %s (project %s) expired", session.protocol, session.project_id)
        for entry in list(self.entries.values()):
            if session not in entry.sessions:
                continue
            entry.unbind(session)
            call = entry.call
            if not entry.sessions and call.is_active and call.state.value in ("created",
                                                                               "ringing"):
                log.info("call %s: its RELAY client is gone, hanging up", call.id)
                spawn(call.hangup("error"), name=f"relay-orphan-{call.id}")

    def release_session(self, protocol: str) -> Session | None:
        """Give up the session `protocol` without ending anything: its client resumes on
        another node, which it follows (the cluster relays it there); None if unknown here."""
        session = self.sessions.pop(protocol, None)
        if session is not None:
            session.on_expired = None
            self._sessions_changed()
        self._moved(protocol)
        return session

    def _moved(self, protocol: str) -> None:
        """`protocol` is no longer here: one less session `close()` waits for."""
        if protocol in self._moving:
            self._moving.discard(protocol)
            if not self._moving:
                self._all_moved.set()

    def resumed_here(self, session: Session) -> None:
        """`session`, another node's until now, waits here for its client (see
        `Session.resume_here`)."""
        session.on_expired = self.session_expired
        self.sessions[session.protocol] = session

    def drop_connections(self, project_id: str | None = None) -> int:
        """Close client sockets abruptly (their sessions wait for a resume). For tests and
        operators; returns how many were dropped."""
        dropped = 0
        for connection in list(self.connections):
            session = connection.session
            if project_id is None or (session is not None and session.project_id == project_id):
                connection.abort()
                dropped += 1
        return dropped

    # -- the WebSocket --------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None,
                                   autoping=True)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, headers={"Upgrade": "websocket"},
                                text="callbox RELAY: connect here with a WebSocket client\n")
        if self._closing:
            return web.Response(status=503, text="callbox is shutting down\n")
        if len(self.connections) >= self.max_connections:
            log.warning("RELAY: %d connections, refusing %s", len(self.connections),
                        request.remote)
            return web.Response(status=503, headers={"Retry-After": "5"},
                                text="too many RELAY connections\n")
        await ws.prepare(request)
        connection = Connection(ws, request.remote or "?")
        self.connections.add(connection)
        loop = asyncio.get_running_loop()
        connect_timer = loop.call_later(CONNECT_TIMEOUT, self._connect_timeout, connection)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_frame(connection, message.data, in_flight)
                elif message.type == WSMsgType.BINARY:
                    connection.send(wire.error(None, wire.INVALID_REQUEST,
                                               "frames must be JSON text"))
                elif message.type == WSMsgType.ERROR:
                    log.info("RELAY %s: %s", connection.peer, ws.exception())
                    break
                if connection.closed:
                    break
        finally:
            connect_timer.cancel()
            self.connections.discard(connection)
            if not connection.closed:
                await connection.close()
            session = connection.session
            if session is not None and not self._closing and session.connection is connection:
                session.detach(connection, self.resume_grace)
                log.info("RELAY session %s disconnected; kept %g s for a resume",
                         session.protocol, self.resume_grace)
                self._sessions_changed()
        return ws

    def _connect_timeout(self, connection: Connection) -> None:
        if connection.session is None and not connection.closed:
            connection.send(wire.error(None, wire.NOT_CONNECTED,
                                       "send signalwire.connect first; closing"))
            connection.close_after_flush()

    async def _on_frame(self, connection: Connection, text: str,
                        in_flight: set[asyncio.Task[None]]) -> None:
        try:
            message = wire.parse_message(text)
        except wire.ProtocolError as exc:
            connection.send(wire.error(exc.request_id, exc.code, str(exc)))
            return
        if isinstance(message, wire.Response | wire.ErrorResponse):
            value = message.result if isinstance(message, wire.Response) else None
            if connection.on_reply(message.id, value):
                return
            if connection.session is not None:
                connection.session.ack(message.id)
            return
        if message.id is None:
            connection.send(wire.error(None, wire.INVALID_REQUEST, "a request needs an id"))
            return
        method = message.method
        if method == wire.CONNECT:
            await self._connect(connection, message)
            return
        if method not in SESSION_METHODS and not self.commands.knows(method):
            connection.send(wire.error(message.id, wire.METHOD_NOT_FOUND,
                                       f"unknown method {method!r}"))
            return
        session = connection.session
        if session is None:
            connection.send(wire.error(message.id, wire.NOT_CONNECTED,
                                       "send signalwire.connect first"))
            return
        if method == wire.PING:
            connection.send(wire.result(message.id, {"timestamp": time.time()}))
        elif method in (wire.RECEIVE, wire.UNRECEIVE):
            self._receive(connection, session, message)
        elif method == wire.DISCONNECT:
            connection.send(wire.result(message.id))
            connection.close_after_flush()
        else:
            if len(in_flight) >= MAX_COMMANDS_IN_FLIGHT:
                connection.send(wire.error(message.id, wire.TOO_BUSY,
                                           f"more than {MAX_COMMANDS_IN_FLIGHT} commands in "
                                           "flight on this connection; wait for replies"))
                return
            task = spawn(self._command(connection, session, message),
                         name=f"relay-{method}-{message.id}")
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def _command(self, connection: Connection, session: Session,
                       message: wire.Request) -> None:
        outcome = None
        if self.cluster is not None:  # a call of another node?
            outcome = await self.cluster.forward(session, message.method, message.params)
        if outcome is None:
            outcome = await self.commands.execute(session, message.method, message.params)
        # the reply goes to the socket the command came on (if it is still there)
        connection.send(wire.result(message.id, outcome))

    def _receive(self, connection: Connection, session: Session, message: wire.Request) -> None:
        try:
            contexts = wire.parse_contexts(message.params.get("contexts"))
        except wire.ParamError as exc:
            connection.send(wire.error(message.id, wire.INVALID_PARAMS, str(exc)))
            return
        if message.method == wire.RECEIVE:
            session.contexts += [c for c in contexts if c not in session.contexts]
            text = "Receiving all inbound related to the requested relay contexts"
        else:
            session.contexts = [c for c in session.contexts if c not in contexts]
            text = "Unreceiving the requested relay contexts"
        connection.send(wire.result(message.id, wire.command_result(
            wire.CODE_OK, text, contexts=list(session.contexts))))
        self._sessions_changed()

    async def _connect(self, connection: Connection, message: wire.Request) -> None:
        if connection.session is not None:
            connection.send(wire.error(message.id, wire.INVALID_REQUEST,
                                       "already connected on this socket"))
            return
        try:
            params = wire.ConnectParams.parse(message.params)
        except wire.ParamError as exc:
            connection.send(wire.error(message.id, wire.INVALID_PARAMS, str(exc)))
            connection.close_after_flush()
            return
        if self.services.auth.authenticate(params.project, params.token) is None:
            log.info("RELAY %s: authentication failed for project %r", connection.peer,
                     params.project)
            await asyncio.sleep(AUTH_FAILURE_DELAY)
            connection.send(wire.error(message.id, wire.AUTH_FAILED,
                                       "unknown project or wrong token"))
            connection.close_after_flush()
            return
        session = self.sessions.get(params.protocol) if params.protocol else None
        if session is None and params.protocol and self.cluster is not None:
            session = await self.cluster.resume(params.project, params.protocol)
            if connection.closed:  # the client gave up meanwhile; the session waits for it
                return
        restored = session is not None and session.project_id == params.project
        if session is None or not restored:
            session = Session(protocol=f"signalwire_{secrets.token_hex(16)}",
                              project_id=params.project, contexts=params.contexts,
                              event_acks=params.event_acks, agent=params.agent)
            session.on_expired = self.session_expired
            self.sessions[session.protocol] = session
        elif params.contexts:
            session.contexts = list(params.contexts)
        connection.send(wire.result(message.id, wire.connect_result(
            project=params.project, node_id=self.services.node_id, protocol=session.protocol,
            restored=restored)))
        session.attach(connection)  # after the reply: queued events follow it
        connection.start_pings(self.ping_interval, self.ping_timeout, PING_MAX_MISSED)
        self._sessions_changed()
        log.info("RELAY session %s %s for project %s (contexts %s, %s)", session.protocol,
                 "resumed" if restored else "started", session.project_id, session.contexts,
                 connection.peer)
