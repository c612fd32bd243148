"""Twenty concurrent recorded calls against `callbox serve`: every recording complete.

The small, CI-sized run of `bench/concurrent_recordings.py` (same functions): sipp places 20
calls that each stream 9.5 s of known speech and hang up after 10 s; the platform records each
one (SWML `record_call`, WAV stereo); every file is decoded and compared with the source, 20 ms
frame by 20 ms frame. Nothing about speed is asserted here (the bench measures it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.concurrent_recordings import DURATION_TOLERANCE, VARIANTS, run_step, table_row

pytestmark = pytest.mark.peers

CALLS = 20
SECONDS = 10.0


async def test_twenty_concurrent_recorded_calls_are_all_complete(tmp_path: Path,
                                                                peer_env: object) -> None:
    result = await run_step(VARIANTS["wav-stereo"], CALLS, seconds=SECONDS, rate=20, loop="auto",
                            workdir=tmp_path / "step", analysis_workers=1)
    summary = table_row(result)
    assert not result.problems, summary
    assert result.calls_ok == CALLS and result.calls_failed == 0, summary
    assert result.recordings == CALLS and len(result.checks) == CALLS, summary
    for check in result.checks:
        assert not check.error, check
        assert check.channels == 2, check
        assert check.lost == 0, check  # every 20 ms frame of the source is in the file
        # from the recording's start to the BYE, and that is the whole call
        assert abs(check.duration - check.expected_duration) <= DURATION_TOLERANCE, check
        assert check.duration >= SECONDS - 0.25, check  # sipp hangs up 10 s (or later) in
        assert check.skipped == 0, check  # record_call started before the caller's audio
        assert check.score > 0.99, check
    assert result.complete == CALLS, summary
    assert result.rtp_received == result.rtp_sent, summary  # the platform's /metrics counters
