"""The channel between the main process and a media worker: order, size, descriptors, EOF."""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

import numpy as np

from callbox.server.worker.framing import FramedSocket


class End:
    """One end of a socketpair with what it received."""

    def __init__(self, sock: socket.socket) -> None:
        self.messages: list[Any] = []
        self.fds: list[int] = []
        self.closed = asyncio.Event()
        self.channel = FramedSocket(sock, self.on_message, self.closed.set)

    def on_message(self, message: Any, fds: collections.deque[int]) -> None:
        self.messages.append(message)
        if message == "with-socket":
            self.fds.append(fds.popleft())


def pair() -> tuple[End, End]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return End(a), End(b)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_messages_arrive_in_order_and_whole_even_past_the_socket_buffer():
    left, right = pair()
    big = np.arange(4_000_000, dtype=np.int16)  # 8 MB: many times the socket's buffer
    sent = [("n", i) for i in range(2000)]
    for message in sent[:1000]:
        left.channel.send(message)
    left.channel.send(big)
    for message in sent[1000:]:
        left.channel.send(message)
    await until(lambda: len(right.messages) == 2001)
    assert right.messages[:1000] == sent[:1000]
    assert np.array_equal(right.messages[1000], big)
    assert right.messages[1001:] == sent[1000:]
    left.channel.close()
    right.channel.close()


async def test_a_socket_travels_with_its_message_and_the_senders_copy_is_closed():
    left, right = pair()
    carried, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.channel.send("before")
    left.channel.send("with-socket", [carried])
    left.channel.send("after")
    await until(lambda: len(right.messages) == 3)
    assert right.messages == ["before", "with-socket", "after"]
    assert carried.fileno() == -1  # ours is closed once it went out
    received = socket.socket(fileno=right.fds[0])
    kept.send(b"ping")
    assert received.recv(16) == b"ping"  # the very socket, not a copy of its name
    received.close()
    kept.close()
    left.channel.close()
    right.channel.close()


def bound_udp_socket() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def received_ports(end: End) -> list[int]:
    """The ports of the sockets `end` received, in order (each closed after)."""
    ports = []
    for fd in end.fds:
        with socket.socket(fileno=fd) as sock:
            ports.append(sock.getsockname()[1])
    return ports


class CountingSocket(socket.socket):
    """A socket that counts the writes (system calls) made on it."""

    writes = 0

    def send(self, *args: Any) -> int:
        self.writes += 1
        return super().send(*args)

    def sendmsg(self, *args: Any) -> int:
        self.writes += 1
        return super().sendmsg(*args)


async def test_a_turns_messages_go_out_in_one_write_descriptors_included():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    counting = CountingSocket(fileno=a.detach())
    left, right = End(counting), End(b)
    left.channel.send("before")
    ports = []
    for _ in range(3):
        sock, port = bound_udp_socket()
        ports.append(port)
        left.channel.send("with-socket", [sock])
        left.channel.send("after")
    await until(lambda: len(right.messages) == 7)
    assert counting.writes == 1
    assert right.messages == ["before"] + ["with-socket", "after"] * 3
    assert received_ports(right) == ports
    left.channel.close()
    right.channel.close()


async def test_more_descriptors_than_one_read_takes_arrive_each_with_its_message():
    left, right = pair()
    carried = []
    for number in range(100):  # a read takes at most MAX_FDS_PER_READ (64) descriptors
        sock, port = bound_udp_socket()
        carried.append(port)
        left.channel.send("with-socket", [sock])
        left.channel.send(("number", number))
    await until(lambda: len(right.messages) == 200)
    assert received_ports(right) == carried  # each its own, in order
    left.channel.close()
    right.channel.close()


async def test_eof_is_reported_once_to_the_other_end():
    left, right = pair()
    left.channel.close()
    await asyncio.wait_for(right.closed.wait(), 5)
    assert left.closed.is_set()
    right.channel.send("into the void")  # no error after the other end went away
    await asyncio.sleep(0)
    assert right.channel.closed
