"""`bench/media_tick.py` keeps running (a short step of each prompt mode, recorded): every packet
sent by the peers is received and every tick sends one packet per call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("prompt", [[], ["--prompt", "shared"], ["--prompt", "mixed"]])
def test_media_tick_runs(prompt: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "media_tick.py"), "--calls", "5", "--seconds",
         "0.4", "--record", "wav-stereo", *prompt],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = dict(item.split("=") for item in done.stdout.split())
    assert fields["received"] == fields["sent"] == str(5 * 20)
    assert float(fields["tick_ms_per_call_second"]) > 0
