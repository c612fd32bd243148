"""A real NATS server (Debian ``nats-server``) on a free loopback port.

:func:`running_nats` runs ``nats-server -a 127.0.0.1 -p PORT`` until the ``with`` block ends
(a test module starts one and shares it) and returns once it listens. :meth:`NatsServer.stop`
kills it (a crash of the bus) and :meth:`NatsServer.start` brings it back on the same port, for
tests of an outage. Both block for a moment only: in async code, run them in a thread.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import missing_peer, new_workdir
from .ports import LOOPBACK, free_tcp_port, tcp_port_listening

__all__ = ["NatsServer", "running_nats"]

START_TIMEOUT = 20.0  # seconds until it listens (slow on a loaded machine)


def nats_binary() -> str:
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if found is None:
        missing_peer("nats-server is not installed (apt-get install nats-server)")
    return found


@dataclass
class NatsServer:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [nats_binary(), "-a", LOOPBACK, "-p", str(self.port)], stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not tcp_port_listening(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (no goodbye to its clients), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_nats() -> Iterator[NatsServer]:
    server = NatsServer(new_workdir("nats"), free_tcp_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
