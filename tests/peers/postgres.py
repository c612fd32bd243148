"""PostgreSQL 15 as a real peer: a throwaway cluster per test session, a fresh database per test.

:class:`PostgresCluster` runs ``initdb`` (trust authentication, loopback only) in a new
directory under the system temp dir (as root, the cluster belongs to the ``postgres`` user: the
server refuses to run as root, and pytest's own temp dirs are private to root), then
``pg_ctl start`` on a free port with its Unix socket in the cluster directory.
:meth:`PostgresCluster.stop` / :meth:`PostgresCluster.start` take it down and back on the same
port and data (for outage tests); :meth:`PostgresCluster.frozen` stops its processes (SIGSTOP)
for a while: connections stay open and nothing is answered, as when a database host hangs;
:meth:`PostgresCluster.create_database` gives each test its own
empty database (``CREATE DATABASE`` with a unique name) and returns its URL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from . import missing_peer
from .ports import LOOPBACK, free_tcp_port

__all__ = ["PostgresCluster"]

BIN_DIR = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15
USER = "postgres"
START_TIMEOUT = 60  # seconds for pg_ctl -w (slow on a loaded machine)


class PostgresCluster:
    def __init__(self) -> None:
        if not (BIN_DIR / "initdb").exists():
            missing_peer("PostgreSQL 15 is not installed (apt-get install postgresql)")
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="callbox-pg-"))
        self.data = self.root / "data"
        self.port = free_tcp_port()
        self.log = self.root / "server.log"
        if self.as_root:
            shutil.chown(self.root, USER, USER)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={LOOPBACK}"
                   " -c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_TIMEOUT), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and every backend stopped (SIGSTOP) inside the block, continued after."""
        pids = self._processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def _processes(self) -> list[int]:
        """The postmaster and its children (the backends, the background workers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children: list[int] = []
        for listing in Path(f"/proc/{postmaster}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in listing.read_text().split()]
        return [postmaster, *children]

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(BIN_DIR / program), *args]
        if self.as_root:
            command = ["runuser", "-u", USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root,
                              timeout=START_TIMEOUT + 30, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}\n{log}")
