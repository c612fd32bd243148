"""The official SignalWire SDK as a test peer, in its own virtual environment.

`bash scripts/setup.sh --test` installs it into ``.venv-sw`` at the repository root
(``$CALLBOX_SW_VENV`` names another venv). Tests never install it themselves: a test run does
not touch the network, and a missing SDK fails the test with how to install it.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from tests.peers import missing_peer

__all__ = ["PACKAGE", "official_sdk_python"]

PACKAGE = "signalwire-sdk==3.7.5"
REPO = Path(__file__).resolve().parents[2]


@functools.cache
def official_sdk_python() -> Path:
    """The interpreter of the venv holding the official SDK (fails the test when missing)."""
    venv = Path(os.environ.get("CALLBOX_SW_VENV", REPO / ".venv-sw"))
    python = venv / "bin" / "python"
    if not python.exists():
        missing_peer(f"the official {PACKAGE} is not installed: no {python}")
    probe = subprocess.run([str(python), "-c", "import signalwire"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        missing_peer(f"{python} cannot import the official {PACKAGE}: "
                     f"{probe.stderr.strip()[-500:]}")
    return python
