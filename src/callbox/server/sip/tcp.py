"""SIP over TCP (RFC 3261 §18): a listening socket and a pool of connections keyed by address.

Each connection frames its bytes with `StreamFramer` and hands whole messages to the owner.
A connection, accepted or opened by us, is reused for every message to the same peer address
(responses go back on the connection their request came on). Nothing here blocks or grows
without bound, since signalling shares the event loop with the media clock: reads are framed
into bounded messages, a peer that stops reading is dropped once its write buffer is full,
idle connections are closed by a periodic sweep (unless a dialog still uses them), and
connections beyond the limit are refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection

from callbox.server.sip.stream import StreamError, StreamFramer
from callbox.server.tasks import spawn

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_PENDING_BYTES",
    "Address",
    "SipConnection",
    "TcpTransport",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
MessageHandler = Callable[[bytes, Address], None]
# Returns the bytes to write (a best-effort error response) before the connection is closed.
StreamErrorHandler = Callable[[StreamError, Address], bytes | None]
# The peer addresses whose connections must stay open however idle (their dialogs are active).
InUse = Callable[[], Collection[Address]]

IDLE_TIMEOUT = 120.0  # seconds without traffic before a connection is closed
MAX_CONNECTIONS = 1024
# Bytes queued for a peer (not yet connected, or not reading) before we give up on it.
MAX_PENDING_BYTES = 256 * 1024
CONNECT_TIMEOUT = 5.0
# Messages handled per event-loop turn: one read can hold hundreds of small messages, and
# handling them all at once would delay the media clock; the rest wait a turn, reading paused.
MESSAGES_PER_TURN = 16


class SipConnection(asyncio.Protocol):
    """One TCP connection carrying SIP: framing in, queued writes out."""

    def __init__(self, owner: TcpTransport, peer: Address | None = None) -> None:
        self.owner = owner
        self.peer = peer
        self.framer = StreamFramer()
        self.last_active = owner.now()
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []  # written before the connection was made
        self._backlog: deque[bytes] = deque()  # framed, not yet handled
        self._paused = False
        # Run when the connection we opened could not be made (its queued writes are lost).
        self.on_unreachable: list[Callable[[], None]] = []

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.closed:  # given up (endpoint closed) while connecting
            transport.abort()
            return
        self._transport = transport
        transport.set_write_buffer_limits(high=MAX_PENDING_BYTES)
        if self.peer is None:
            peer = transport.get_extra_info("peername")
            self.peer = (str(peer[0]), int(peer[1]))
            if not self.owner.adopt(self):
                transport.abort()
                return
        for data in self._pending:
            self.write(data)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.owner.now()
        self._backlog.extend(self.framer.feed(data))
        self._handle_backlog()

    def _handle_backlog(self) -> None:
        assert self.peer is not None and self._transport is not None
        for _ in range(MESSAGES_PER_TURN):
            if self.closed or not self._backlog:
                break
            self.owner.on_message(self._backlog.popleft(), self.peer)
        if self.closed:
            return
        if self._backlog:
            if not self._paused:
                self._paused = True
                self._transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._handle_backlog)
            return
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        error = self.framer.error
        if error is not None:
            log.info("SIP over TCP from %s:%s: %s; closing", *self.peer, error.reason)
            self.owner.stream_errors += 1
            reply = self.owner.on_stream_error(error, self.peer)
            if reply is not None:
                self.write(reply)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.forget(self)

    # -- ours -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = self.owner.now()
        if self._transport is None:
            if sum(map(len, self._pending)) + len(data) > MAX_PENDING_BYTES:
                log.info("SIP over TCP to %s: connection not made yet, queue full", self.peer)
                return
            self._pending.append(data)
            return
        if self._transport.get_write_buffer_size() + len(data) > MAX_PENDING_BYTES:
            log.info("SIP over TCP to %s:%s does not read; closing", *(self.peer or ("?", 0)))
            self.abort()
            return
        self._transport.write(data)

    def close(self) -> None:
        """Close after the queued bytes are written."""
        self.closed = True
        self.owner.forget(self)
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.closed = True
        self.owner.forget(self)
        if self._transport is not None:
            self._transport.abort()


class TcpTransport:
    """The TCP side of the SIP endpoint: `start` listens, `send` writes to a peer address."""

    def __init__(
        self,
        on_message: MessageHandler,
        on_stream_error: StreamErrorHandler,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        in_use: InUse = frozenset,
    ) -> None:
        self.on_message = on_message
        self.on_stream_error = on_stream_error
        self.in_use = in_use
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: dict[Address, SipConnection] = {}
        self.refused = 0  # connections turned away at the limit
        self.stream_errors = 0  # connections closed for a stream that could not be framed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: SipConnection(self), host, port)
        self._schedule_sweep()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            connection.abort()

    @property
    def listening(self) -> Address | None:
        """The bound address of the listening socket."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def send(self, data: bytes, dest: Address,
             on_unreachable: Callable[[], None] | None = None) -> None:
        """Write on the connection to `dest`, opening one when there is none.
        `on_unreachable` runs if that connection is being opened and cannot be made."""
        connection = self.connections.get(dest)
        if connection is None:
            if self._loop is None or len(self.connections) >= self.max_connections:
                log.info("SIP over TCP to %s:%s not sent: no room for a connection", *dest)
                return
            connection = SipConnection(self, dest)
            self.connections[dest] = connection
            spawn(self._connect(connection, dest), name="sip-tcp-connect")
        if on_unreachable is not None and not connection.connected:
            connection.on_unreachable.append(on_unreachable)
        connection.write(data)

    async def _connect(self, connection: SipConnection, dest: Address) -> None:
        assert self._loop is not None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: connection, dest[0], dest[1]),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            log.info("SIP over TCP: cannot connect to %s:%s: %s", *dest, exc)
            connection.abort()
            for callback in connection.on_unreachable:
                try:
                    callback()
                except Exception:
                    log.exception("after the failed connection to %s:%s", *dest)
        connection.on_unreachable.clear()

    # -- bookkeeping used by the connections ------------------------------------------------

    def adopt(self, connection: SipConnection) -> bool:
        """Register an accepted connection; False when over the limit (then it is refused)."""
        assert connection.peer is not None
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            log.warning("SIP over TCP from %s:%s refused: %d connections open",
                        *connection.peer, len(self.connections))
            return False
        old = self.connections.get(connection.peer)
        if old is not None:
            old.abort()
        self.connections[connection.peer] = connection
        return True

    def forget(self, connection: SipConnection) -> None:
        if connection.peer is not None and self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(self.idle_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        cutoff = self.now() - self.idle_timeout
        idle = [c for c in self.connections.values() if c.last_active < cutoff]
        kept = self.in_use() if idle else frozenset()
        for connection in [c for c in idle if c.peer not in kept]:
            log.debug("SIP over TCP to %s idle; closing", connection.peer)
            connection.close()
        self._schedule_sweep()
