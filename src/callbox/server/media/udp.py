"""Undoing a UDP socket's connect().

A media session connects its socket to the peer it latched (send/recv are cheaper than
sendto/recvfrom, and the kernel drops datagrams from anyone else). When the peer moves, the
association must go: connect(2) with an AF_UNSPEC address dissolves it, but Python's
`socket.connect` only takes addresses of the socket's own family, hence the libc call.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)
# A sockaddr with sa_family = AF_UNSPEC (Linux layout: a 16-bit family, no length byte), as
# long as a sockaddr_in6: IPv6 sockets refuse shorter addresses.
_UNSPEC_ADDRESS = struct.pack("=H26x", socket.AF_UNSPEC)


def disconnect(sock: socket.socket) -> None:
    """Dissolve `sock`'s association: it sends with sendto() and receives from anyone again,
    on the same local address. Raises OSError if the kernel refuses."""
    bound = sock.getsockname()
    if int(_libc.connect(sock.fileno(), _UNSPEC_ADDRESS, len(_UNSPEC_ADDRESS))) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if sock.getsockname()[1] == 0:  # bound to port 0: the kernel let the ephemeral port go
        sock.bind(bound)
