"""The TCP connection pool on loopback: framing, reuse by address, idle close, the limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from tests.unit.test_sip_stream import request

from callbox.server.sip.stream import StreamError
from callbox.server.sip.tcp import IDLE_TIMEOUT, MAX_CONNECTIONS, MESSAGES_PER_TURN, TcpTransport

Address = tuple[str, int]


class Peer:
    """A TcpTransport listening on loopback that records what it receives."""

    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 in_use: Callable[[], Collection[Address]] = frozenset) -> None:
        self.messages: list[tuple[bytes, Address]] = []
        self.loop_turn = 0  # advanced by a test that counts event-loop turns
        self.turns: list[int] = []  # the turn each message was handled in
        self.errors: list[StreamError] = []
        self.arrived = asyncio.Event()
        self.transport = TcpTransport(self.on_message, self.on_error, idle_timeout=idle_timeout,
                                      max_connections=max_connections, in_use=in_use)

    def on_message(self, data: bytes, addr: Address) -> None:
        self.messages.append((data, addr))
        self.turns.append(self.loop_turn)
        self.arrived.set()

    def on_error(self, error: StreamError, addr: Address) -> bytes | None:
        self.errors.append(error)
        return f"SIP/2.0 {error.status} {error.phrase}\r\nContent-Length: 0\r\n\r\n".encode()

    async def start(self) -> int:
        await self.transport.start("127.0.0.1", 0)
        return self.port

    @property
    def port(self) -> int:
        server = self.transport.listening
        assert server is not None
        return server[1]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_messages_in_any_chunks_arrive_whole_and_replies_reuse_the_connection():
    server = Peer()
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = request("a") + request("b", b"hello")
    for i in range(0, len(data), 7):
        writer.write(data[i:i + 7])
        await writer.drain()
    await server.wait_for(2)
    assert [m for m, _ in server.messages] == [request("a"), request("b", b"hello")]
    peer = server.messages[0][1]
    assert peer == writer.get_extra_info("sockname")[:2]
    server.transport.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", peer)
    assert await reader.readuntil(b"\r\n\r\n") == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert len(server.transport.connections) == 1  # the accepted connection was reused
    writer.close()
    server.transport.close()


async def test_sending_to_a_new_address_opens_one_connection_and_reuses_it():
    server, client = Peer(), Peer()
    await server.start()
    await client.start()
    dest = ("127.0.0.1", server.port)
    client.transport.send(request("a"), dest)  # queued until the connection is made
    client.transport.send(request("b"), dest)
    await server.wait_for(2)
    assert [m for m, _ in server.messages] == [request("a"), request("b")]
    assert list(client.transport.connections) == [dest]
    assert len({addr for _, addr in server.messages}) == 1
    server.transport.close()
    client.transport.close()


async def test_a_stream_error_is_answered_and_closes_only_that_connection():
    server = Peer()
    await server.start()
    _, good = await asyncio.open_connection("127.0.0.1", server.port)
    bad_reader, bad = await asyncio.open_connection("127.0.0.1", server.port)
    bad.write(request("x").replace(b"Content-Length: 0\r\n", b""))
    assert (await bad_reader.read()).startswith(b"SIP/2.0 400 Bad Request")  # then EOF
    assert server.errors[0].status == 400
    good.write(request("g"))
    await server.wait_for(1)
    assert server.messages[0][0] == request("g")
    assert server.transport.stream_errors == 1
    good.close()
    bad.close()
    server.transport.close()


async def test_idle_connections_are_closed():
    server = Peer(idle_timeout=0.2)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request("a"))
    await server.wait_for(1)
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # EOF: the platform closed it
    assert server.transport.connections == {}
    writer.close()
    server.transport.close()


async def test_connections_beyond_the_limit_are_refused():
    server = Peer(max_connections=2)
    await server.start()
    opened = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    for _, writer in opened:
        writer.write(request("a"))
    await server.wait_for(2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert server.transport.refused == 1
    assert len(server.transport.connections) == 2
    for _, w in [*opened, (reader, writer)]:
        w.close()
    server.transport.close()


async def test_an_idle_connection_a_dialog_still_uses_stays_open():
    dialog_peers: set[Address] = set()
    server = Peer(idle_timeout=0.2, in_use=lambda: dialog_peers)
    await server.start()
    _, in_dialog = await asyncio.open_connection("127.0.0.1", server.port)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.port)
    dialog_peers.add(in_dialog.get_extra_info("sockname")[:2])
    in_dialog.write(request("a"))
    idle.write(request("b"))
    await server.wait_for(2)
    async with asyncio.timeout(5):
        assert await idle_reader.read() == b""  # the idle one was closed by a sweep ...
    assert list(server.transport.connections) == list(dialog_peers)  # ... not the other
    in_dialog.close()
    idle.close()
    server.transport.close()


async def test_a_burst_of_messages_is_handled_a_few_per_event_loop_turn():
    server = Peer()
    await server.start()

    async def count_turns() -> None:
        while True:
            server.loop_turn += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(count_turns())
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    burst = [request(f"m{i}") for i in range(200)]
    writer.write(b"".join(burst))
    await server.wait_for(200)
    ticker.cancel()
    assert [m for m, _ in server.messages] == burst  # all of them, in order
    per_turn = max(server.turns.count(t) for t in set(server.turns))
    assert per_turn <= MESSAGES_PER_TURN
    writer.close()
    server.transport.close()
