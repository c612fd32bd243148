"""`callbox serve` as a subprocess: one node of a cluster, as an operator runs it.

:func:`start_node` writes the node's config (its own data dir, SIP and HTTPS ports,
``[cluster] node_id`` and ``drain_seconds``, more config lines and ``CALLBOX_*`` variables when
given), starts it, waits until it has printed its banner and answers ``/health``,
and at the end stops it (SIGTERM, then SIGKILL) unless the test already did (``kill -9``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.conftest import write_serve_config
from tests.peers.ports import free_port, free_tcp_port

from callbox.wire.basic_auth import basic_auth_header

CALLBOX = str(Path(sys.executable).parent / "callbox")
PROJECT, TOKEN = "p1", "t1"  # the project write_serve_config configures
START_TIMEOUT = 30.0
_BANNER = re.compile(r"^callbox \S+ is running$", re.MULTILINE)
_CALL_LINE = re.compile(r"call (\S+) from .* \(SIP (\S+)\)$", re.MULTILINE)


@dataclass
class Node:
    node_id: str
    sip_port: int
    http_port: int
    directory: Path
    process: asyncio.subprocess.Process

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def recordings_dir(self) -> Path:
        return self.directory / "data" / "recordings"

    def log(self) -> str:
        return (self.directory / "node.log").read_text(errors="replace")

    def sip_call_ids(self) -> dict[str, str]:
        """SIP Call-ID -> platform call id, for every call this node took (its log)."""
        return {match[2]: match[1] for match in _CALL_LINE.finditer(self.log())}

    async def get(self, path: str) -> Any:
        """GET a REST path with the project's credentials (the node's self-signed HTTPS)."""
        async with aiohttp.ClientSession() as session, session.get(
                self.base + path, ssl=False,
                headers={"Authorization": basic_auth_header(PROJECT, TOKEN)}) as response:
            response.raise_for_status()
            return await response.json()

    async def recordings(self) -> list[dict[str, Any]]:
        body = await self.get("/api/relay/rest/recordings?page_size=1000")
        rows: list[dict[str, Any]] = body["data"]
        assert body["links"]["next"] is None, "more than one page of recordings"
        return rows

    async def calls(self) -> list[dict[str, Any]]:
        body = await self.get("/api/callbox/calls")
        calls: list[dict[str, Any]] = body["data"]
        return calls

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def exited(self, timeout: float = 30.0) -> int:
        """The exit status, once the process has ended (within `timeout`)."""
        return await asyncio.wait_for(self.process.wait(), timeout)


async def _wait_started(node: Node) -> None:
    """Until the node has printed its banner and answers /health with 200 (both once SIP
    listens and the media workers are up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            if node.process.returncode is not None:
                raise RuntimeError(f"callbox serve exited ({node.process.returncode}):\n"
                                   + node.log()[-3000:])
            with contextlib.suppress(aiohttp.ClientError, OSError):
                if _BANNER.search(node.log()):
                    async with session.get(node.base + "/health", ssl=False) as response:
                        if response.status == 200:
                            return
            if loop.time() > deadline:
                raise RuntimeError(f"callbox serve did not start:\n{node.log()[-3000:]}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def start_node(directory: Path, node_id: str, routes: dict[str, str], *,
                     drain_seconds: int = 0, sections: Sequence[str] = (),
                     env: Mapping[str, str] | None = None,
                     ports: tuple[int, int] | None = None) -> AsyncIterator[Node]:
    """`callbox serve` with `routes` (number -> SWML) in `directory`, named `node_id`;
    `sections`: more TOML lines after ``[cluster]``; `env`: more environment (``CALLBOX_*``
    overrides, as an operator's service manager would set them); `ports`: its SIP and HTTPS
    ports (a node started again as it was: same ports, same public url), else free ones."""
    directory.mkdir(parents=True, exist_ok=True)
    sip_port, http_port = ports or (free_port(), free_tcp_port())
    config = write_serve_config(
        directory, sip_port=sip_port, http_port=http_port, routes=routes,
        sections=["[cluster]", f'node_id = "{node_id}"', f"drain_seconds = {drain_seconds}",
                  *sections])
    with (directory / "node.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            CALLBOX, "serve", "--config", str(config), "--log-level", "info",
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})})
    node = Node(node_id, sip_port, http_port, directory, process)
    try:
        await _wait_started(node)
        yield node
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
