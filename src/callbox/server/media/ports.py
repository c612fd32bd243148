"""RTP port allocation: one non-blocking UDP socket per call, on an even port of the range."""

from __future__ import annotations

import errno
import socket


class NoPortsAvailable(RuntimeError):
    """Every port in the configured RTP range is in use."""


class RtpPortPool:
    """Hands out bound sockets on even ports in [first, last], round-robin."""

    def __init__(self, host: str, first: int, last: int) -> None:
        self.host = host
        self._ports = list(range(first + (first % 2), last + 1, 2))
        self._next = 0
        self._in_use: set[int] = set()

    def open(self) -> socket.socket:
        """Bind a socket on the next free even port; skips ports other programs hold."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port in self._in_use:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            self._in_use.add(port)
            return sock
        raise NoPortsAvailable(f"no free RTP port in {self._ports[0]}-{self._ports[-1] + 1}")

    def release(self, sock: socket.socket) -> None:
        try:
            port = sock.getsockname()[1]
        except OSError:
            port = None
        sock.close()
        if port is not None:
            self._in_use.discard(port)

    def release_port(self, port: int) -> None:
        """The port's socket was handed over (to a media host) and is closed there."""
        self._in_use.discard(port)

    @property
    def in_use(self) -> int:
        return len(self._in_use)
