"""Messages over a local stream socket: length-prefixed pickles, file descriptors alongside.

Both ends are this process's own code (the main process and the media workers it started over
a socketpair), so pickle is safe here; nothing else can connect. Writes are coalesced: what is
sent during one turn of the event loop goes out in one system call at the end of it. A message
may carry file descriptors (an RTP socket handed to a worker): they travel as SCM_RIGHTS with
the first byte of the write that holds the message, which the kernel delivers no later than the
message itself, so the receiver's queue of descriptors is in the order of their messages; the
sender's sockets are closed once they went out (the receiver has its own descriptors then).
"""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
READ_BYTES = 256 * 1024
MAX_FDS_PER_READ = 64
MessageHandler = Callable[[Any, "collections.deque[int]"], None]


@dataclass(slots=True)
class _Batch:
    """Messages that go out in one system call, with the descriptors they carry (at most
    MAX_FDS_PER_READ, so the receiver gets them all); `offset`: how much of it went out."""

    data: bytearray = field(default_factory=bytearray)
    socks: list[socket.socket] = field(default_factory=list)
    offset: int = 0


class FramedSocket:
    """One end of the channel. `on_message(message, fds)` gets each message with the queue of
    received descriptors (a message that carries some takes them from its front);
    `on_closed()` runs once when the other end is gone."""

    def __init__(self, sock: socket.socket, on_message: MessageHandler,
                 on_closed: Callable[[], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._on_message = on_message
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        self._out: collections.deque[_Batch] = collections.deque()
        self._flush_scheduled = False
        self._writing = False  # waiting for the socket to become writable
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._read)

    # -- sending ----------------------------------------------------------------------------

    def send(self, message: Any, socks: Sequence[socket.socket] = ()) -> None:
        """Queue `message` (with `socks`, which this object closes once they are sent)."""
        if self.closed:
            for sock in socks:
                sock.close()
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        out = self._out
        if (not out or out[-1].offset
                or (socks and len(out[-1].socks) + len(socks) > MAX_FDS_PER_READ)):
            out.append(_Batch())
        batch = out[-1]
        batch.data += _LENGTH.pack(len(data))
        batch.data += data
        batch.socks.extend(socks)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed:
            return
        while self._out:
            batch = self._out[0]
            try:
                with memoryview(batch.data) as whole, whole[batch.offset:] as rest:
                    if batch.socks:
                        fds = array.array("i", [s.fileno() for s in batch.socks])
                        sent = self.sock.sendmsg(
                            [rest], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    else:
                        sent = self.sock.send(rest)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close()
                return
            if sent and batch.socks:  # they went with the first byte: ours can go
                for sock in batch.socks:
                    sock.close()
                batch.socks.clear()
            batch.offset += sent
            if batch.offset < len(batch.data):
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self.sock.fileno(), self._writable)
                return
            self._out.popleft()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.sock.fileno())

    def _writable(self) -> None:
        self._flush()

    # -- receiving --------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(
                READ_BYTES, socket.CMSG_SPACE(MAX_FDS_PER_READ * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self._close()
            return
        buffer = self._in
        buffer += data
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            end = offset + _LENGTH.size + length
            if end > len(buffer):
                break
            message = pickle.loads(buffer[offset + _LENGTH.size:end])
            offset = end
            try:
                self._on_message(message, self._fds)
            except Exception:
                log.exception("handling %s failed", type(message).__name__)
            if self.closed:
                return
        del buffer[:offset]

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.sock.fileno())
        if self._writing:
            self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        for fd in self._fds:
            socket.close(fd)
        self._fds.clear()
        for batch in self._out:
            for sock in batch.socks:
                sock.close()
        self._out.clear()
        self._on_closed()

    def close(self) -> None:
        """Close our end (the other end sees EOF); `on_closed` runs."""
        self._close()
