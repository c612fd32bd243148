"""Concurrent recorded calls against `callbox serve`: every recording complete.

The small, CI-sized runs of `bench/concurrent_recordings.py` (same functions): sipp places
calls that each stream 9.5 s of known speech and hang up after 10 s; the platform records each
one (SWML `record_call`, WAV stereo); every file is decoded and compared with the source, 20 ms
frame by 20 ms frame (one run places its calls through Kamailio onto two nodes). The bridged
variant connects each caller to a sipp callee streaming other speech: the left channel must be
the caller's audio and the right channel the callee's, frame for frame. The prompt variant (the
real workload) plays a prompt lasting the whole call to each caller: the right channel must be
the prompt, frame for frame. Nothing about speed is asserted here (the bench measures it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.concurrent_recordings import (
    CALLEE,
    DURATION_TOLERANCE,
    FRAME,
    LEAD_SECONDS,
    PROMPT,
    RATE,
    TAIL_SECONDS,
    VARIANTS,
    StepResult,
    run_step,
    table_row,
)

pytestmark = pytest.mark.peers

SECONDS = 10.0


def assert_every_recording_complete(result: StepResult, calls: int) -> None:
    summary = table_row(result)
    assert not result.problems, summary
    assert result.calls_ok == calls and result.calls_failed == 0, summary
    assert result.recordings == calls and len(result.checks) == calls, summary
    for check in result.checks:
        assert not check.error, check
        assert check.channels == 2, check
        assert check.caller.lost == 0, check  # every 20 ms frame of the source is in the file
        # from the recording's start to the BYE, and that is the whole call
        assert abs(check.duration - check.expected_duration) <= DURATION_TOLERANCE, check
        assert check.duration >= SECONDS - 0.25, check  # sipp hangs up 10 s (or later) in
        assert check.caller.skipped == 0, check  # record_call started before the caller's audio
        assert check.caller.score > 0.99, check
    assert result.complete == calls, summary
    assert result.rtp_received == result.rtp_sent, summary  # the platform's /metrics counters


async def test_twenty_concurrent_recorded_calls_are_all_complete(tmp_path: Path,
                                                                peer_env: object) -> None:
    calls = 20
    result = await run_step(VARIANTS["wav-stereo"], calls, seconds=SECONDS, rate=20,
                            loop="auto", workers=2, workdir=tmp_path / "step",
                            analysis_workers=1)
    assert_every_recording_complete(result, calls)
    assert all(check.callee is None for check in result.checks)


async def test_bridged_pairs_record_the_caller_left_and_the_callee_right_frame_for_frame(
        tmp_path: Path, peer_env: object) -> None:
    pairs = 5
    result = await run_step(VARIANTS["bridged-wav-stereo"], pairs, seconds=SECONDS, rate=10,
                            loop="auto", workers=2, workdir=tmp_path / "step",
                            analysis_workers=1)
    assert_every_recording_complete(result, pairs)
    summary = table_row(result)
    assert result.legs == 2 * pairs, summary
    assert result.callee_calls_ok == pairs, summary  # each callee leg ended by our BYE
    packets = {name: round((SECONDS - TAIL_SECONDS - late) * RATE) // FRAME
               for name, late in (("caller", 0.0), ("callee", CALLEE.late_seconds))}
    callee_frames = packets["callee"] - round(LEAD_SECONDS * RATE) // FRAME  # after the lead-in
    for check in result.checks:
        assert check.callee is not None, check
        assert check.callee.score > 0.99, check  # the callee's speech, not the caller's
        assert check.callee.frames == callee_frames, check  # all of it was checked...
        assert check.callee.lost == 0, check  # ...and every frame is on the right channel
        assert check.callee.skipped == 0, check
    # the platform received every packet of both parties (rtp_received == rtp_sent above)
    assert result.rtp_sent == pairs * (packets["caller"] + packets["callee"]), summary


async def test_a_prompt_lasting_the_whole_call_is_recorded_frame_for_frame_on_the_right(
        tmp_path: Path, peer_env: object) -> None:
    calls = 10
    result = await run_step(VARIANTS["prompt-wav-stereo"], calls, seconds=SECONDS, rate=10,
                            loop="auto", workdir=tmp_path / "step", analysis_workers=1)
    assert_every_recording_complete(result, calls)
    prompt_samples = round((SECONDS - TAIL_SECONDS - PROMPT.late_seconds) * RATE) // FRAME * FRAME
    prompt_frames = (prompt_samples - round(LEAD_SECONDS * RATE)) // FRAME
    for check in result.checks:
        assert check.callee is not None, check
        assert check.callee.score > 0.99, check  # the prompt, not the caller's speech
        assert check.callee.frames == prompt_frames, check  # all of the prompt was checked...
        assert check.callee.lost == 0, check  # ...and every frame of it is on the right
        assert check.callee.skipped == 0, check  # played after record_call started


async def test_calls_spread_by_kamailio_over_two_nodes_are_all_recorded_frame_for_frame(
        tmp_path: Path, peer_env: object) -> None:
    calls = 10
    result = await run_step(VARIANTS["wav-stereo"], calls, seconds=SECONDS, rate=10,
                            loop="auto", workers=1, nodes=2, workdir=tmp_path / "step",
                            analysis_workers=1)
    assert_every_recording_complete(result, calls)
    summary = table_row(result)
    assert result.nodes == 2 and f"| {result.variant} | 2 |" in summary, summary
    assert len(result.recordings_per_node) == 2, summary
    assert all(count >= 3 for count in result.recordings_per_node), result.recordings_per_node
