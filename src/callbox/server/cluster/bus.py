"""The NATS connection between nodes, and every subject the cluster uses (in one place).

Messages are JSON objects. `send()` never blocks: it queues the message and one writer task
publishes the queue in order, so everything one node sends to another (events, then the reply
of the command that caused them) arrives in the order it was sent. The connection reconnects
by itself (its subscriptions too); while it is down, messages wait in the client's buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

log = logging.getLogger(__name__)

PREFIX = "callbox"
OFFER_QUEUE = "callbox-offers"  # one node of the queue group gets each offer
NODES = f"{PREFIX}.nodes.*"  # every node's heartbeats
SESSIONS_GONE = f"{PREFIX}.sessions.gone"  # a node's RELAY session will not come back
SESSIONS_WANTED = f"{PREFIX}.sessions.wanted"  # a node asks for the session its client resumes
SESSIONS_MOVED = f"{PREFIX}.sessions.moved"  # a RELAY session now lives on another node
CONNECT_TIMEOUT = 2  # seconds for one connection attempt (and a flush)
START_TIMEOUT = 5.0  # seconds for the first connection, attempts included
RECONNECT_WAIT = 1  # seconds between reconnection attempts
MAX_QUEUED = 10_000  # messages waiting for the writer before new ones are dropped
SAFE = frozenset(string.ascii_letters + string.digits + "-_")


def token(text: str) -> str:
    """`text` as one subject token: letters, digits, '-' and '_' as they are, every other byte
    as %XX (a '.' would split the token, '*' and '>' are wildcards); '' is '%'."""
    if not text:
        return "%"
    return "".join(ch if ch in SAFE else "".join(f"%{b:02X}" for b in ch.encode())
                   for ch in text)


def offer_subject(project_id: str, context: str) -> str:
    return f"{PREFIX}.offer.{token(project_id)}.{token(context)}"


def events_subject(node_id: str) -> str:
    """Events for a node's sessions, and the replies to the commands it forwarded."""
    return f"{PREFIX}.events.{token(node_id)}"


def commands_subject(node_id: str) -> str:
    """Commands forwarded to the node that owns their call."""
    return f"{PREFIX}.commands.{token(node_id)}"


def heartbeat_subject(node_id: str) -> str:
    return f"{PREFIX}.nodes.{token(node_id)}"


class BusError(ConnectionError):
    """The NATS server cannot be reached (the message says where and why)."""


@dataclass(frozen=True)
class Incoming:
    """One message from the bus: its JSON object, and where a reply goes ('' = nowhere)."""

    data: dict[str, Any]
    reply: str


Handler = Callable[[Incoming], None]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def strings(data: dict[str, Any], *keys: str) -> list[str] | None:
    """The values of `keys` in a message when each one is a string; None when one is not (a
    malformed message)."""
    values = [data.get(key) for key in keys]
    found = [value for value in values if isinstance(value, str)]
    return found if len(found) == len(keys) else None


def decode(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


class Bus:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._nc: Client | None = None
        self._out: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._last_error: Exception | None = None
        self.dropped = 0

    async def connect(self) -> None:
        """Connect, trying for START_TIMEOUT (BusError then); later it reconnects forever."""
        try:
            self._nc = await asyncio.wait_for(nats.connect(
                self.url, name=self.name, connect_timeout=CONNECT_TIMEOUT,
                reconnect_time_wait=RECONNECT_WAIT, max_reconnect_attempts=-1,
                allow_reconnect=True, error_cb=self._on_error,
                disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected),
                START_TIMEOUT)
        except (OSError, TimeoutError, NatsError) as exc:
            why = self._last_error or exc
            raise BusError(f"cannot reach the NATS server at {self.url} (cluster.bus_url) "
                           f"within {START_TIMEOUT:g} s: {why or type(why).__name__}") from None
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(),
                                                              name="cluster-bus-writer")

    @property
    def client(self) -> Client:
        if self._nc is None:
            raise BusError("the bus is not connected yet")
        return self._nc

    # -- sending ----------------------------------------------------------------------------

    def send(self, subject: str, message: dict[str, Any]) -> None:
        """Publish `message` after everything sent before it. Never blocks."""
        if self._writer is None:
            return
        if self._out.qsize() >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("cluster bus: %d messages dropped (NATS not keeping up)",
                            self.dropped)
            return
        self._out.put_nowait((subject, encode(message)))

    async def _write_loop(self) -> None:
        while True:
            item = await self._out.get()
            if item is None:
                return
            subject, payload = item
            try:
                await self.client.publish(subject, payload)
            except NatsError as exc:
                log.warning("cluster bus: publishing to %s failed: %s", subject, exc)

    async def request(self, subject: str, message: dict[str, Any], timeout: float
                      ) -> dict[str, Any] | None:
        """One request, one reply; None when nobody answered within `timeout`."""
        try:
            reply = await self.client.request(subject, encode(message), timeout=timeout)
        except (TimeoutError, NatsError) as exc:
            log.debug("cluster bus: no answer on %s: %s", subject, type(exc).__name__)
            return None
        return decode(reply.data)

    # -- receiving --------------------------------------------------------------------------

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = ""
                        ) -> Subscription:
        """Call `handler` for each message (in order); `queue`: one member gets each."""

        async def deliver(msg: Msg) -> None:
            data = decode(msg.data)
            if data is None:
                log.warning("cluster bus: a message on %s is not a JSON object; ignored",
                            msg.subject)
                return
            try:
                handler(Incoming(data, msg.reply))
            except Exception:
                log.exception("cluster bus: handling a message on %s failed", msg.subject)

        return await self.client.subscribe(subject, queue=queue, cb=deliver)

    async def flush(self) -> None:
        """Until the server has seen everything sent so far (subscriptions included)."""
        with contextlib.suppress(TimeoutError, NatsError):
            await self.client.flush(timeout=CONNECT_TIMEOUT)

    async def close(self) -> None:
        """Publish what is queued, then close the connection."""
        if self._writer is not None:
            self._out.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._writer, CONNECT_TIMEOUT)
            self._writer = None
        if self._nc is not None:
            with contextlib.suppress(TimeoutError, NatsError):
                await self._nc.flush(timeout=CONNECT_TIMEOUT)
            await self._nc.close()

    # -- connection state (logged) ------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if self._nc is None:  # still trying the first connection
            self._last_error = exc
            log.debug("cluster bus (%s): %s", self.url, exc)
        else:
            log.info("cluster bus (%s): %s", self.url, exc)

    async def _on_disconnected(self) -> None:
        log.warning("cluster bus: disconnected from %s; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        log.info("cluster bus: reconnected to %s", self.url)
