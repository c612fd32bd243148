# Shared pytest fixtures for all callbox tests.
#
# Kept deliberately small: the lead adds shared fixtures here.  What is below was added for the
# real-peer harness (tests/peers/, used by tests/integration/): it makes `tests.peers`
# importable, puts the peers' working dirs under pytest's temp dir, and offers a fixture that
# checks the peer programs are installed.
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.peers.postgres import PostgresCluster

# `tests/` has no __init__.py, so pytest puts only `tests/` itself on sys.path.  The harness is
# imported as `tests.peers` (one module name everywhere, so module-level state such as the
# handed-out port set exists once): put the repository root on sys.path.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(scope="session", autouse=True)
def _peer_workdirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """sipp/baresip working dirs go under pytest's temp dir (old runs are pruned)."""
    from tests.peers import set_workdir_root

    set_workdir_root(tmp_path_factory.getbasetemp() / "peers")


def _missing_peer(message: str) -> None:
    from tests.peers import missing_peer

    missing_peer(message)


PEER_TOOLS = ("sipp", "baresip", "sox", "espeak-ng", "ffmpeg")


@dataclass(frozen=True)
class PeerEnv:
    """What the machine offers to real-peer tests."""

    is_root: bool  # sipp play_dtmf / play_pcap_audio need a raw socket

    def require_root(self) -> None:
        if not self.is_root:
            _missing_peer("sipp play_dtmf/play_pcap_audio need root (raw socket)")


@pytest.fixture(scope="session")
def peer_env() -> PeerEnv:
    """Fail the test unless sipp, baresip, sox, espeak-ng and ffmpeg are installed."""
    missing = [tool for tool in PEER_TOOLS if shutil.which(tool) is None]
    if missing:
        _missing_peer(f"real-peer tools not installed: {', '.join(missing)}")
    return PeerEnv(is_root=os.geteuid() == 0)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL 15 cluster for the session (see tests/peers/postgres.py)."""
    from tests.peers.postgres import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a new, empty database in the session's cluster (restarted if a test left it
    down)."""
    if not (postgres_cluster.data / "postmaster.pid").exists():
        postgres_cluster.start()
    return postgres_cluster.create_database()
