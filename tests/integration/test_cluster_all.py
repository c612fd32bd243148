"""The whole cluster: Kamailio in front of two `callbox serve` nodes sharing PostgreSQL (the
recording rows), SeaweedFS (a real S3 server: the recordings' audio) and NATS (RELAY across
nodes), every engine real and started by the test (tests/peers).

- Calls spread over both nodes; every recording is listed and served by BOTH nodes, its object
  is in the bucket and holds the caller's tone.
- A RELAY client on node A handles a call Kamailio sent to node B.
- kill -9 of a node mid-call: the other node's recordings have no gap; the killed node repairs
  and uploads its recordings when it starts again.
- S3 down for a minute: recordings are kept on disk and uploaded once it is back. PostgreSQL
  restarted while calls record: every row ends finished with its object.
- `scripts/cluster.sh` itself: run as an operator would, calls through its Kamailio recorded
  in its S3, and at Ctrl-C (SIGINT) every process it started is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from tests.integration.conftest import write_serve_config
from tests.integration.served_node import PROJECT, TOKEN, Node, start_node
from tests.integration.test_cluster_kamailio import (
    LATE_PROVISIONALS_IGNORED,
    ROUTES,
    TONE_HZ,
    call_through,
    sipp_call_ids,
    tone_stream,
)
from tests.integration.test_relay_cluster import NO_TIMEOUTS
from tests.peers import audio
from tests.peers.kamailio_dispatcher import Dispatcher, start_dispatcher
from tests.peers.nats import NatsServer, running_nats
from tests.peers.poll import until_async as until_reached
from tests.peers.ports import free_port_range, free_udp_port, port_is_free
from tests.peers.postgres import PostgresCluster
from tests.peers.seaweedfs import SeaweedFS, fetch_object, start_seaweedfs
from tests.peers.sipp import run_sipp

from callbox.relay.call import Call
from callbox.relay.client import RelayClient
from callbox.server.storage.s3 import S3Settings

pytestmark = [pytest.mark.peers, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SETTLE_TIMEOUT = 90.0  # seconds for every recording to be finished and uploaded (loaded machine)
PCM_BYTES_PER_SECOND = 16000  # a WAV recording's growth: 16-bit mono at 8 kHz
OUTAGE_SECONDS = 60.0  # S3 down this long (from its stop to its start)
# The call goes to the RELAY clients of context "default", on whichever node they are.
RELAY_ROUTE = ["[[routes]]", 'number = "relay"', 'context = "default"']


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@dataclass
class Services:
    database_url: str
    s3: SeaweedFS
    nats: NatsServer

    def env(self) -> dict[str, str]:
        """What a node needs to use them, as CALLBOX_* variables (as scripts/cluster.sh)."""
        settings = self.s3.settings()
        return {
            "CALLBOX_DATABASE_URL": self.database_url,
            "CALLBOX_STORAGE_S3_ENDPOINT": settings.endpoint,
            "CALLBOX_STORAGE_S3_BUCKET": settings.bucket,
            "CALLBOX_STORAGE_S3_ACCESS_KEY": settings.access_key,
            "CALLBOX_STORAGE_S3_SECRET_KEY": settings.secret_key,
            "CALLBOX_STORAGE_S3_RETRY_SECONDS": "0.5",
            "CALLBOX_CLUSTER_BUS_URL": self.nats.url,
        }


@contextlib.asynccontextmanager
async def services(postgres: PostgresCluster, nats: NatsServer) -> AsyncIterator[Services]:
    """A fresh database and S3 server for one test (PostgreSQL and NATS are shared)."""
    async with start_seaweedfs() as s3:
        yield Services(postgres.create_database(), s3, nats)


def node_of(tmp_path: Path, name: str, shared: Services, *, like: Node | None = None,
            ) -> contextlib.AbstractAsyncContextManager[Node]:
    """Node `name` (its data dir under `tmp_path`) using the shared services; `like`: the
    same node before, started again on its ports."""
    return start_node(tmp_path / name, name, ROUTES, sections=RELAY_ROUTE, env=shared.env(),
                      ports=None if like is None else (like.sip_port, like.http_port))


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, shared: Services,
                  ) -> AsyncIterator[tuple[Dispatcher, list[Node]]]:
    async with (node_of(tmp_path, "node-a", shared) as a,
                node_of(tmp_path, "node-b", shared) as b,
                start_dispatcher([a.target, b.target]) as kamailio):
        yield kamailio, [a, b]


async def object_keys(settings: S3Settings) -> set[str]:
    """The keys the bucket holds, listed with a plain S3 client (aiobotocore)."""
    keys: set[str] = set()
    async with get_session().create_client(
            "s3", endpoint_url=settings.endpoint, region_name=settings.region,
            aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"})) as client:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket)
        async for page in pages:
            keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


async def download(node: Node, url: str) -> bytes:
    """A recording's capability url, asked of `node` (whichever node recorded it)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    async with aiohttp.ClientSession() as session, session.get(
            node.base + path, ssl=False) as response:
        assert response.status == 200, (node.node_id, url, response.status)
        return await response.read()


async def recordings_of(node: Node) -> dict[str, dict[str, Any]]:
    """Recording id -> REST row, every recording `node` lists."""
    return {row["id"]: row for row in await node.recordings()}


async def settled(node: Node, settings: S3Settings, count: int) -> dict[str, dict[str, Any]]:
    """`node`'s list once it holds `count` recordings, all finished, each object in the
    bucket (the upload's last step removes the local copy: waited for too)."""
    rows: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        nonlocal rows
        rows = await recordings_of(node)
        if len(rows) < count or any(row["state"] != "finished" for row in rows.values()):
            return False
        return {f"{id_}.wav" for id_ in rows} <= await object_keys(settings)

    await until_async(done, SETTLE_TIMEOUT, what=f"{count} recordings finished and uploaded")
    assert len(rows) == count, rows
    return rows


def decoded(tmp_path: Path, data: bytes) -> npt.NDArray[np.float64]:
    path = tmp_path / f"decoded-{random.getrandbits(32):08x}.wav"
    path.write_bytes(data)
    samples, rate = audio.decode_audio(path)
    assert rate == 8000 and samples.ndim == 1
    return samples


def assert_holds_the_tone(samples: npt.NDArray[np.float64], *, without_gap: bool = False) -> None:
    """The caller's tone; with `without_gap`, in every 100 ms of the recording (its first
    300 ms and last 200 ms aside: the stream starts after the ACK, ends before the BYE)."""
    assert len(samples) >= 1600, len(samples)
    assert abs(audio.dominant_frequency(samples) - TONE_HZ) < 10
    assert audio.tone_level_dbfs(samples, TONE_HZ) > -30
    if without_gap:
        blocks = [samples[start:start + 800] for start in range(2400, len(samples) - 2400, 800)]
        assert blocks, len(samples)
        levels = [audio.tone_level_dbfs(block, TONE_HZ) for block in blocks]
        assert min(levels) > -30, levels


async def until_async(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """`until_async` asking every quarter second (each probe asks the REST API or S3)."""
    async def paced() -> bool:
        await asyncio.sleep(0.25)
        return await probe()

    await until_reached(paced, timeout, what)


def calls_per_node(nodes: Sequence[Node]) -> dict[str, set[str]]:
    """node_id -> the platform call ids it took (its log)."""
    return {node.node_id: set(node.sip_call_ids().values()) for node in nodes}


# -- 1. calls spread, recordings shared ------------------------------------------------------

async def test_every_recording_is_listed_and_served_by_both_nodes_and_is_in_the_bucket(
        tmp_path: Path, postgres: PostgresCluster, nats: NatsServer, peer_env: object) -> None:
    calls = 40
    async with services(postgres, nats) as shared, cluster(tmp_path, shared) as (kamailio, nodes):
        result = await call_through(kamailio, tmp_path, calls=calls, seconds=2.0)
        assert result.ok, result.describe()
        assert result.stat("SuccessfulCall") == calls, result.describe()
        taken = calls_per_node(nodes)
        assert all(len(ids) >= 5 for ids in taken.values()), taken  # both nodes used

        settings = shared.s3.settings()
        listed = [await settled(node, settings, calls) for node in nodes]
        assert listed[0].keys() == listed[1].keys()  # one shared database
        assert {row["call_id"] for row in listed[0].values()} == taken["node-a"] | taken["node-b"]
        assert len(sipp_call_ids(result)) == calls

        stored = await object_keys(settings)
        for recording_id, row in listed[0].items():
            data = await fetch_object(settings, f"{recording_id}.wav")
            assert f"{recording_id}.wav" in stored
            for node in nodes:  # any node proxies it from S3
                assert await download(node, row["url"]) == data, (node.node_id, recording_id)
            assert_holds_the_tone(decoded(tmp_path, data))


# -- 2. RELAY across nodes -------------------------------------------------------------------

async def test_a_relay_client_on_node_a_handles_a_call_kamailio_sent_to_node_b(
        tmp_path: Path, postgres: PostgresCluster, nats: NatsServer, peer_env: object) -> None:
    handled: dict[str, dict[str, Any]] = {}  # node_id -> what the client saw of its call

    async def handle(call: Call) -> None:
        seen: dict[str, Any] = {"states": []}
        call.on("calling.call.state", lambda event: seen["states"].append(event.state))
        await call.answer()
        action = await call.record(audio={"format": "wav", "stereo": False, **NO_TIMEOUTS})
        await asyncio.sleep(1.5)  # let the caller's tone be recorded
        await action.stop()
        seen["record"] = await action.wait(timeout=15)
        await call.hangup()
        handled.setdefault(call.node_id, seen)

    async with services(postgres, nats) as shared, cluster(tmp_path, shared) as (kamailio, nodes):
        a, b = nodes
        client = RelayClient(PROJECT, TOKEN, f"wss://127.0.0.1:{a.http_port}/", ["default"],
                             ca_file=str(a.directory / "data" / "tls" / "cert.pem"))
        client.on_call(handle)
        await client.connect()
        try:
            # Kamailio alternates between the nodes; B offers its call to A's client once it
            # has heard of it (heartbeats): call until B's call was handled.
            attempt = 0

            async def call_once() -> bool:
                nonlocal attempt
                attempt += 1
                await run_sipp(
                    "uac_hangup_by_server_via_proxy", kamailio.target, service="relay",
                    local_port=free_udp_port(), media_port=free_port_range(4).start,
                    keys={"stream": tone_stream(tmp_path)}, timeout=60,
                    workdir=tmp_path / f"relay-{attempt}", extra_args=LATE_PROVISIONALS_IGNORED)
                return "node-b" in handled

            await until_async(call_once, 120, what="a call on node B handled by the client")
        finally:
            await client.disconnect()

        seen = handled["node-b"]
        assert "answered" in seen["states"] and "ended" in seen["states"], seen
        settings = shared.s3.settings()
        taken_by_b = calls_per_node([b])["node-b"]
        rows = [await recordings_of(node) for node in nodes]
        on_b = [row for row in rows[0].values() if row["call_id"] in taken_by_b]
        assert on_b, rows[0]
        row = on_b[0]
        await settled(a, settings, len(rows[0]))
        for node in nodes:  # listed and served by both
            assert row["id"] in await recordings_of(node)
            data = await download(node, row["url"])
            assert_holds_the_tone(decoded(tmp_path, data))


# -- 3. a node killed mid-call ---------------------------------------------------------------

async def test_a_node_killed_mid_call_leaves_the_other_unaffected_and_recovers_its_own(
        tmp_path: Path, postgres: PostgresCluster, nats: NatsServer, peer_env: object) -> None:
    calls = 6
    async with services(postgres, nats) as shared:
        settings = shared.s3.settings()
        async with node_of(tmp_path, "node-b", shared) as b:
            async with (node_of(tmp_path, "node-a", shared) as a,
                        start_dispatcher([a.target, b.target]) as kamailio):
                caller = asyncio.create_task(
                    call_through(kamailio, tmp_path, calls=calls, seconds=4.0))

                async def both_recording() -> bool:
                    """Node B records calls, and node A has written 1 s of each of its
                    recordings (its `.part` files, 16-bit mono at 8 kHz)."""
                    rows = (await recordings_of(b)).values()
                    on_b = calls_per_node([b])["node-b"]
                    sizes = [part.stat().st_size for part in a.recordings_dir.glob("*.part")]
                    return len(sizes) >= 2 and min(sizes) >= PCM_BYTES_PER_SECOND and any(
                        row["call_id"] in on_b and row["state"] == "recording" for row in rows)

                await until_async(both_recording, 60, what="both nodes recording")
                a.process.kill()  # kill -9: no BYE, no upload, no row update
                await a.exited()
                killed_calls = calls_per_node([a])["node-a"]
                result = await caller
                assert result.stat("SuccessfulCall") < calls, result.describe()

            # node B's calls completed, recordings without a gap
            rows = await recordings_of(b)
            b_rows = [row for row in rows.values() if row["call_id"] not in killed_calls]
            assert b_rows and len(b_rows) == len(calls_per_node([b])["node-b"])

            async def b_uploaded() -> bool:
                current = await recordings_of(b)
                keys = await object_keys(settings)
                return all(current[row["id"]]["state"] == "finished"
                           and f"{row['id']}.wav" in keys for row in b_rows)

            await until_async(b_uploaded, SETTLE_TIMEOUT, what="node B's recordings uploaded")
            for row in b_rows:
                samples = decoded(tmp_path, await fetch_object(settings, f"{row['id']}.wav"))
                assert len(samples) >= 3 * 8000  # the whole 4 s call
                assert_holds_the_tone(samples, without_gap=True)

            # node A's recordings stay unfinished until it starts again on its data dir
            a_rows = [row for row in (await recordings_of(b)).values()
                      if row["call_id"] in killed_calls]
            assert a_rows and all(row["state"] == "recording" for row in a_rows), a_rows
            async with node_of(tmp_path, "node-a", shared, like=a):
                repaired = await settled(b, settings, len(rows))
            for row in a_rows:
                assert repaired[row["id"]]["state"] == "finished"
                samples = decoded(tmp_path, await fetch_object(settings, f"{row['id']}.wav"))
                assert len(samples) >= 8000, len(samples)  # at least the second before the kill
                assert_holds_the_tone(samples, without_gap=True)  # the tone up to the kill


# -- 4. S3 down, PostgreSQL restarted --------------------------------------------------------

async def test_recordings_survive_an_s3_outage_and_a_postgres_restart(
        tmp_path: Path, postgres: PostgresCluster, nats: NatsServer, peer_env: object) -> None:
    calls = 6
    async with services(postgres, nats) as shared, cluster(tmp_path, shared) as (kamailio, nodes):
        settings = shared.s3.settings()
        a = nodes[0]

        # S3 down: the calls' recordings finish, are kept on the nodes' disks
        await shared.s3.stop()
        back_at = asyncio.get_running_loop().time() + OUTAGE_SECONDS
        result = await call_through(kamailio, tmp_path, calls=calls, seconds=2.0, name="s3")
        assert result.stat("SuccessfulCall") == calls, result.describe()

        async def finished_locally() -> bool:
            rows = await recordings_of(a)
            return len(rows) == calls and all(
                row["state"] == "finished" and any(
                    (node.recordings_dir / f"{id_}.wav").exists() for node in nodes)
                for id_, row in rows.items())

        await until_async(finished_locally, SETTLE_TIMEOUT, what="recordings kept on disk")
        # the uploads fail meanwhile, retried (every 0.5 s doubling, at most 15 s apart)
        await asyncio.sleep(back_at - asyncio.get_running_loop().time())
        await shared.s3.start()
        await settled(a, settings, calls)

        async def local_copies_removed() -> bool:
            return not any(list(node.recordings_dir.glob("*.wav")) for node in nodes)

        await until_async(local_copies_removed, 30, what="local copies removed once uploaded")

        # PostgreSQL restarted while calls record: every row ends finished with its object
        caller = asyncio.create_task(
            call_through(kamailio, tmp_path, calls=calls, seconds=4.0, name="pg"))

        async def recording_now() -> bool:
            return any(row["state"] == "recording" for row in (await recordings_of(a)).values())

        await until_async(recording_now, 60, what="calls recording")
        await asyncio.to_thread(postgres.restart)
        result = await caller
        assert result.stat("SuccessfulCall") == calls, result.describe()
        rows = await settled(a, settings, 2 * calls)
        for recording_id in rows:
            assert_holds_the_tone(
                decoded(tmp_path, await fetch_object(settings, f"{recording_id}.wav")))


# -- scripts/cluster.sh ----------------------------------------------------------------------

SCRIPT_PORTS = {  # the script's ports before PORT_OFFSET: (first, count, udp, tcp)
    "kamailio": (5060, 1, True, False), "node-a sip": (5070, 1, True, True),
    "node-b sip": (5080, 1, True, True), "https": (8443, 2, False, True),
    "rtp": (20000, 1000, True, False), "postgres": (5432, 1, False, True),
    "nats": (4222, 1, False, True), "weed master": (9333, 1, False, True),
    "weed volume": (8080, 1, False, True), "weed filer": (8888, 1, False, True),
    "weed s3": (8333, 1, False, True), "weed master grpc": (19333, 1, False, True),
    "weed volume grpc": (18080, 1, False, True), "weed filer grpc": (18888, 1, False, True),
    "weed s3 grpc": (18333, 1, False, True),
}


def free_port_offset() -> int:
    """A PORT_OFFSET at which every port of scripts/cluster.sh is free (all below 32000)."""
    rng = random.Random()
    for _ in range(200):
        offset = rng.randrange(1000, 10900)
        if all(port_is_free(port + offset, udp=udp, tcp=tcp)
               for first, count, udp, tcp in SCRIPT_PORTS.values()
               for port in range(first, first + count)):
            return offset
    raise RuntimeError("no free PORT_OFFSET for scripts/cluster.sh")


def running_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (not zombie) process."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # /proc/PID/stat: "pid (name) state ppid ...", the name may hold spaces
            state, parent = (proc / "stat").read_text().rpartition(")")[2].split()[:2]
        except (OSError, ValueError):
            continue
        if state != "Z":
            found[int(proc.name)] = (int(parent), cmdline)
    return found


def processes_mentioning(text: str) -> set[tuple[int, str]]:
    """(pid, command line) of the live processes whose command line contains `text`."""
    return {(pid, cmdline) for pid, (_, cmdline) in running_processes().items()
            if text in cmdline}


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, command line) of the live processes below `root`."""
    processes = running_processes()
    found: set[tuple[int, str]] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (parent, _) in processes.items() if parent in frontier}
        found |= {(pid, processes[pid][1]) for pid in frontier}
    return found


def alive(started: set[tuple[int, str]]) -> list[str]:
    """Those of `started` still running (same pid and command line)."""
    processes = running_processes()
    return [f"{pid}: {cmdline}" for pid, cmdline in started
            if pid in processes and processes[pid][1] == cmdline]


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """The script's DIR: reachable by the postgres user (pytest's temp dirs are private to
    their owner, root), removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="callbox-cluster-sh-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.serial  # the script's fixed port layout (moved by PORT_OFFSET) needs the machine
async def test_cluster_script_runs_every_service_and_ctrl_c_stops_them_all(
        tmp_path: Path, cluster_dir: Path, peer_env: object) -> None:
    calls = 10
    offset = free_port_offset()
    config = write_serve_config(tmp_path, sip_port=0, http_port=0, routes=ROUTES)
    log = (tmp_path / "cluster.out").open("wb")
    script = await asyncio.create_subprocess_exec(
        "bash", str(ROOT / "scripts" / "cluster.sh"), str(cluster_dir / "run"),
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PORT_OFFSET": str(offset), "CONFIG": str(config),
             "DRAIN_SECONDS": "5", "CALLBOX": str(Path(sys.executable).parent / "callbox"),
             "S3_ACCESS_KEY": "callbox", "S3_SECRET_KEY": "callbox-secret"},
        # as from a terminal: a shell started in the background (`cmd &` without job control,
        # as CI may run the suite) inherits SIGINT ignored, and bash cannot trap an ignored one
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = cluster_dir / "run"
    try:
        def output() -> str:
            return (tmp_path / "cluster.out").read_text(errors="replace")

        async def running() -> bool:
            assert script.returncode is None, output()
            return "callbox cluster is running" in output()

        await until_async(running, 180, what="scripts/cluster.sh started")
        kamailio = Dispatcher("127.0.0.1", 5060 + offset, run / "kamailio", script)
        nodes = [Node(name, sip, https, run / name, script)
                 for name, sip, https in (("node-a", 5070 + offset, 8443 + offset),
                                          ("node-b", 5080 + offset, 8444 + offset))]
        settings = S3Settings(f"http://127.0.0.1:{8333 + offset}", "recordings", "callbox",
                              "callbox-secret", "us-east-1")

        result = await call_through(kamailio, tmp_path, calls=calls, seconds=2.0)
        assert result.ok, result.describe()
        taken = calls_per_node(nodes)
        assert all(taken.values()), taken  # both nodes took calls
        listed = [await settled(node, settings, calls) for node in nodes]
        assert listed[0].keys() == listed[1].keys()  # the script's PostgreSQL, shared
        for recording_id in listed[0]:
            assert_holds_the_tone(
                decoded(tmp_path, await fetch_object(settings, f"{recording_id}.wav")))
        assert "cluster: node node-b joined" in nodes[0].log()  # over the script's NATS

        started = descendants(script.pid) | set(processes_mentioning(str(run)))
        assert len(started) >= 8, started  # its services, nodes and their media workers
        script.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(script.wait(), 90) == 0, output()

        async def all_gone() -> bool:
            return not alive(started)

        with contextlib.suppress(AssertionError):
            await until_async(all_gone, 10, what="every process gone")
        assert not alive(started), alive(started)
        # nor the Unix sockets weed puts in /tmp beside its gRPC ports
        sockets = [Path(f"/tmp/seaweedfs-{kind}-grpc-{port + offset + 10000}.sock")
                   for kind, port in (("master", 9333), ("volume", 8080), ("filer", 8888),
                                      ("s3", 8333))]
        assert not [path for path in sockets if path.exists()], sockets
    finally:
        # whatever is left of it after a failure: the script, then what it started
        leftovers = descendants(script.pid) | processes_mentioning(str(run))
        if script.returncode is None:
            script.kill()
            await script.wait()
        for pid, _ in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        log.close()
