"""A real HAProxy (Debian ``haproxy``) in TCP mode: the load balancer in front of RELAY nodes.

:func:`running_haproxy` listens on a free loopback port and sends each new connection to the
first of its backends that is in service (the others are HAProxy ``backup`` servers), until the
``with`` block ends; with health checks, a backend whose ``/health`` does not answer 200 is out
of service. :meth:`Haproxy.take_out` is what an operator does to take a node out for
maintenance: the server goes to ``maint`` and its open connections are cut, so the clients
reconnect, to the next backend. It talks to HAProxy's admin socket, and blocks for a moment.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import missing_peer, new_workdir
from .ports import LOOPBACK, free_tcp_port, tcp_port_listening

__all__ = ["Haproxy", "running_haproxy"]

START_TIMEOUT = 20.0  # seconds until it listens (slow on a loaded machine)
BACKEND = "nodes"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        missing_peer("haproxy is not installed (apt-get install haproxy)")
    return found


def config_text(port: int, backends: Mapping[str, int], admin_socket: Path, *,
                health_checks: bool) -> str:
    checks = ("    option httpchk GET /health\n"
              "    http-check expect status 200\n"
              "    default-server check check-ssl verify none inter 100ms fall 1 rise 1\n"
              if health_checks else "")
    servers = "\n".join(
        f"    server {name} {LOOPBACK}:{backend_port}{' backup' if i else ''}"
        for i, (name, backend_port) in enumerate(backends.items()))
    return f"""\
global
    stats socket {admin_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend relay
    bind {LOOPBACK}:{port}
    default_backend {BACKEND}

backend {BACKEND}
{checks}{servers}
"""


@dataclass
class Haproxy:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        try:
            return (self.workdir / "haproxy.log").read_text(errors="replace")
        except OSError:
            return ""

    def admin(self, command: str) -> str:
        """One command on the admin socket (several: separated by ';'); HAProxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.workdir / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        return answer.decode(errors="replace")

    def take_out(self, server: str) -> None:
        """Maintenance for `server`: no new connection goes there, and its open ones are cut."""
        answer = self.admin(f"set server {BACKEND}/{server} state maint; "
                            f"shutdown sessions server {BACKEND}/{server}")
        if answer.strip():
            raise RuntimeError(f"haproxy refused to take {server} out: {answer.strip()}")


@contextlib.contextmanager
def running_haproxy(backends: Mapping[str, int], *, health_checks: bool = False
                    ) -> Iterator[Haproxy]:
    """HAProxy in front of `backends` (server name -> loopback port, the first in service).
    `health_checks`: a backend is in service while its `/health` (HTTPS) answers 200, checked
    every 100 ms."""
    workdir = new_workdir("haproxy")
    port = free_tcp_port()
    config = workdir / "haproxy.cfg"
    config.write_text(config_text(port, backends, workdir / "admin.sock",
                                  health_checks=health_checks))
    with (workdir / "haproxy.log").open("ab") as log:
        process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=log,
                                   stderr=log, start_new_session=True)
    proxy = Haproxy(workdir, port, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not tcp_port_listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{proxy.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not listen:\n{proxy.log()[-3000:]}")
            time.sleep(0.02)
        yield proxy
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
