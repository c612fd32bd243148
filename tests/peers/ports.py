"""Free port allocation on the loopback interface for tests that start real peers.

Every helper here hands out ports that were bindable at the moment of the call, and does not
hand out the same port again within :data:`REUSE_AFTER` seconds in one Python process (so two
peers started by one test cannot collide, even before either has bound its port; after that
the bind probe sees ports in use, and ports released by finished tests become available
again).  Between the check and the moment the peer binds the port another process could take
it; that window is small and accepted by every test suite that starts servers.

- :func:`free_udp_port` / :func:`free_tcp_port`: one port free for that protocol.
- :func:`free_port`: one port free for UDP *and* TCP (baresip's ``sip_listen`` binds both).
- :func:`free_port_range`: ``n`` contiguous ports, e.g. an RTP range (sipp ``-mp`` uses
  ``mp`` and ``mp+1`` for RTP/RTCP and ``mp+2`` for its echo/video socket, and advertises
  ``mp + 4*(call_number-1)`` as ``[auto_media_port]`` for later calls).
- :func:`release`: ports whose user stopped may be handed out again at once.

Ports come from 10000-31999, below the Linux ephemeral range (32768-60999), so that the
kernel's own choices for ``bind(port 0)`` do not land on them, and never from 20000-20999 (the
platform's default RTP range).  Each space is handed out in turn from a random start (next
fit), so a port comes back only after all the others.  Under pytest-xdist each worker hands
out ports from its own slice of each space (tests run in parallel processes).

Readiness checks (no packets sent, nothing bound): :func:`udp_port_bound`,
:func:`tcp_port_listening`, :func:`wait_udp_bound` read ``/proc/net/{udp,tcp}``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

__all__ = [
    "LOOPBACK",
    "REUSE_AFTER",
    "forget_handed_out",
    "free_port",
    "free_port_range",
    "free_tcp_port",
    "free_udp_port",
    "port_is_free",
    "release",
    "tcp_port_listening",
    "udp_port_bound",
    "wait_udp_bound",
]

LOOPBACK = "127.0.0.1"

# A port handed out is not handed out again for this many seconds (longer than one test).
REUSE_AFTER = 180.0

_lock = threading.Lock()
_handed_out: dict[int, float] = {}  # port -> monotonic time it may be handed out again
_cursors: dict[tuple[int, int], int] = {}  # (low, high) of a space -> where to look next

# Ports are drawn from [_RANGE_LOW, _RANGE_HIGH): single ports and small ranges (a peer's few
# ports) below _SMALL_RANGES_END, large ones (a platform's RTP range) from _LARGE_RANGES_START,
# so that the many small ranges of a long run cannot fragment the space the large ones need.
# 20000-20999 is left out: the platform's default RTP range (the demo's, a default config's).
_RANGE_LOW = 10000
_SMALL_RANGES_END = 20000
_LARGE_RANGES_START = 21000
_RANGE_HIGH = 32000
_SMALL_RANGE = 20  # ports: at most this many is a small range


def _reserve(ports: range) -> bool:
    """Mark ``ports`` handed out unless one of them was handed out recently."""
    now = time.monotonic()
    with _lock:
        if any(_handed_out.get(p, 0.0) > now for p in ports):
            return False
        if len(_handed_out) > 4096:
            for p in [p for p, t in _handed_out.items() if t <= now]:
                del _handed_out[p]
        for p in ports:
            _handed_out[p] = now + REUSE_AFTER
        return True


def release(ports: range) -> None:
    """Let ``ports`` be handed out again at once: what used them has stopped (a platform's
    RTP range once the platform stopped). Without it a range waits REUSE_AFTER, and a fast
    run of many platforms in one process would use up its share of the space."""
    with _lock:
        for port in ports:
            _handed_out.pop(port, None)


def forget_handed_out() -> None:
    """Let every port be handed out again at once: for a caller that knows every process
    that used them has exited (the benchmark, between steps)."""
    with _lock:
        _handed_out.clear()


def _bind_probe(port: int, host: str, kind: int) -> socket.socket | None:
    """Bind a socket of ``kind`` to (host, port); return it (caller closes) or None if taken."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # Same flag servers use: a port in TIME_WAIT is usable by the next server.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def port_is_free(port: int, host: str = LOOPBACK, *, udp: bool = True, tcp: bool = False) -> bool:
    """True when ``port`` can be bound right now for every protocol asked for."""
    return _first_unbindable(range(port, port + 1), host, udp=udp, tcp=tcp) is None


def _first_unbindable(ports: range, host: str, *, udp: bool, tcp: bool) -> int | None:
    """The first of `ports` that cannot be bound now for a protocol asked for; None when all
    can. All are held at once during the check, then released."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            for wanted, kind in ((udp, socket.SOCK_DGRAM), (tcp, socket.SOCK_STREAM)):
                if not wanted:
                    continue
                sock = _bind_probe(port, host, kind)
                if sock is None:
                    return port
                held.append(sock)
        return None
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()


def free_udp_port(host: str = LOOPBACK) -> int:
    """A UDP port on ``host`` that is free now and was not handed out recently."""
    return free_port_range(1, host, even=False).start


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free now and was not handed out recently."""
    return free_port_range(1, host, udp=False, tcp=True, even=False).start


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP (SIP servers that listen on both transports)."""
    return free_port_range(1, host, tcp=True, even=False).start


def _share(low: int, high: int) -> tuple[int, int]:
    """This process's share of [low, high): under pytest-xdist each worker (``gw0``, ``gw1``,
    ...) hands out ports from its own slice, so that two workers never hand out the same
    port in the moment before its peer binds it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return low, high
    size = (high - low) // count
    index = int(worker[2:]) % count
    return low + index * size, low + (index + 1) * size


def free_port_range(
    n: int,
    host: str = LOOPBACK,
    *,
    udp: bool = True,
    tcp: bool = False,
    even: bool = True,
) -> range:
    """``n`` contiguous ports, all free now (for the protocols asked for), as a ``range``.

    ``range.start`` is even when ``even`` is true (RTP convention: RTP on even, RTCP on odd).
    All ports of the range are held at once during the check, then released.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    low, high = _share(*((_RANGE_LOW, _SMALL_RANGES_END) if n <= _SMALL_RANGE
                         else (_LARGE_RANGES_START, _RANGE_HIGH)))
    if n > (high - low) * 2 // 3:  # a benchmark of 1,800 calls: ~7,200 sipp media ports
        raise ValueError(f"range of {n} ports is too large")
    # Next fit: from where the last range of this space ended, wrapping around, so that the
    # ports handed out longest ago are the first to be handed out again.
    with _lock:
        base = _cursors.setdefault((low, high), random.randrange(low, high))
    for _ in range(2 * (high - low)):
        if even:
            base += base % 2
        if base + n > high:
            base = low + low % 2 if even else low
        ports = range(base, base + n)
        taken = _first_taken(ports, host, udp=udp, tcp=tcp)
        if taken is None and _reserve(ports):
            with _lock:
                _cursors[(low, high)] = base + n
            return ports
        base = (taken if taken is not None else base) + 1
    raise RuntimeError(f"could not find {n} contiguous free ports")  # pragma: no cover


def _first_taken(ports: range, host: str, *, udp: bool, tcp: bool) -> int | None:
    """The first of `ports` handed out recently or not bindable now (for the protocols asked
    for); None when all are free."""
    now = time.monotonic()
    with _lock:
        for port in ports:
            if _handed_out.get(port, 0.0) > now:
                return port
    return _first_unbindable(ports, host, udp=udp, tcp=tcp)


# --------------------------------------------------------------------------------------------
# Is a peer listening yet?  (Linux /proc, no packets sent, nothing bound by us.)
# --------------------------------------------------------------------------------------------

_TCP_LISTEN = "0A"


def _proc_entries(kind: str) -> list[tuple[str, int, str]]:
    """(hex IPv4 address as in /proc, port, state) for /proc/net/<kind>."""
    entries: list[tuple[str, int, str]] = []
    try:
        lines = Path(f"/proc/net/{kind}").read_text().splitlines()[1:]
    except OSError:
        return entries
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        addr, _, port = fields[1].partition(":")
        entries.append((addr, int(port, 16), fields[3]))
    return entries


def _hex_ipv4(host: str) -> str:
    return f"{struct.unpack('=I', socket.inet_aton(host))[0]:08X}"


def udp_port_bound(port: int, host: str = LOOPBACK) -> bool:
    """True when some process has a UDP socket bound to ``host:port`` (or ``0.0.0.0:port``)."""
    wanted = {_hex_ipv4(host), "00000000"}
    if Path("/proc/net/udp").exists():
        return any(a in wanted and p == port for a, p, _ in _proc_entries("udp"))
    return not port_is_free(port, host, udp=True)  # pragma: no cover - non-Linux fallback


def tcp_port_listening(port: int, host: str = LOOPBACK) -> bool:
    """True when some process listens on TCP ``host:port`` (or ``0.0.0.0:port``)."""
    wanted = {_hex_ipv4(host), "00000000"}
    if Path("/proc/net/tcp").exists():
        return any(
            a in wanted and p == port and st == _TCP_LISTEN for a, p, st in _proc_entries("tcp")
        )
    return not port_is_free(port, host, udp=False, tcp=True)  # pragma: no cover


def wait_udp_bound(port: int, host: str = LOOPBACK, timeout: float = 5.0) -> bool:
    """Poll :func:`udp_port_bound` (blocking) until true or ``timeout``; return the last state.

    In async code call :func:`udp_port_bound` between ``await asyncio.sleep()`` instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        if udp_port_bound(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
