"""Real-peer test harness: run sipp and baresip against the platform (or each other).

Modules:

- :mod:`tests.peers.ports`    free UDP/TCP ports and RTP ranges on 127.0.0.1
- :mod:`tests.peers.audio`    tones, speech (espeak-ng), WAV/G.711 files, level/frequency/
  cross-correlation/activity analysis
- :mod:`tests.peers.sipp`     run sipp scenarios (``tests/peers/scenarios/*.xml``)
- :mod:`tests.peers.baresip`  a scripted softphone that records what it heard
- :mod:`tests.peers.nats`     a real NATS server (the bus of the RELAY-across-nodes tests)

The quirks found while building the harness are in the docstrings of :mod:`tests.peers.sipp`
and :mod:`tests.peers.baresip`.  The harness's own tests, which double as usage examples, are
``tests/integration/test_peer_harness.py``.

Working directories (sipp traces, baresip config/logs/dumps) are created by
:func:`new_workdir` under :func:`set_workdir_root`'s directory (``tests/conftest.py`` points it
at pytest's temp dir, which keeps only the last few runs), else ``$CALLBOX_PEER_WORKDIR``, else
the system temp dir.  They are kept after the peer stops so a failing test can be inspected.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NoReturn

__all__ = ["new_workdir", "set_workdir_root"]

_workdir_root: Path | None = None


def set_workdir_root(path: str | Path | None) -> None:
    """Create future peer working directories under ``path`` (None: back to the default)."""
    global _workdir_root
    _workdir_root = Path(path) if path is not None else None


def new_workdir(prefix: str) -> Path:
    """A new, empty directory for one peer process."""
    root = _workdir_root
    if root is None and os.environ.get("CALLBOX_PEER_WORKDIR"):
        root = Path(os.environ["CALLBOX_PEER_WORKDIR"])
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def missing_peer(message: str) -> NoReturn:
    """A real peer the test needs is not here: fail (never skip: a skipped test proves
    nothing). `bash scripts/setup.sh --test` installs every peer."""
    import pytest

    pytest.fail(f"{message} (bash scripts/setup.sh --test installs every peer)", pytrace=False)
