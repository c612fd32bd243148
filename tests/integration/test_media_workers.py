"""Media in worker processes: a worker killed mid-call loses only its calls, whose recordings
are repaired and reported; new calls keep being served; media in the main process still works.

Callers are our own UAC (`place_call`) streaming a tone each (700 Hz for the call whose worker
is killed, 1200 Hz for the other); the recordings are decoded and checked.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from tests.integration.conftest import running_platform
from tests.integration.test_recording import decode, route, wav_file
from tests.peers import audio

from callbox.caller import place_call
from callbox.server.media.priority import MEDIA_NICE
from callbox.server.recording.machine import RecState
from callbox.server.recording.writers import WAV_HEADER_SIZE, part_path

pytestmark = pytest.mark.peers

KILLED_HZ, SURVIVOR_HZ, LATER_HZ = 700, 1200, 900
ROUTES = [route("rec", {"answer": {}}, {"record_call": {"format": "wav", "stereo": True}},
                {"sleep": 60_000})]
BYTES_PER_SECOND = 8000 * 2 * 2  # stereo 16-bit


async def until(condition, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def recording_of(seen):
    (recording,) = seen.call.recordings
    return recording


def tone_blocks(samples: np.ndarray, hz: float, block: float = 0.1) -> list[float]:
    """The tone's level in each `block` seconds of `samples`."""
    step = int(8000 * block)
    return [audio.tone_level_dbfs(samples[i:i + step], hz)
            for i in range(0, len(samples) - step + 1, step)]


async def test_a_killed_worker_ends_only_its_calls_and_its_recording_is_repaired(tmp_path):
    killed_wav = wav_file(tmp_path, "killed.wav", audio.tone(KILLED_HZ, 30.0, dbfs=-12))
    survivor_wav = wav_file(tmp_path, "survivor.wav", audio.tone(SURVIVOR_HZ, 30.0, dbfs=-12))
    later_wav = wav_file(tmp_path, "later.wav", audio.tone(LATER_HZ, 30.0, dbfs=-12))
    async with running_platform(tmp_path, ROUTES, server__workers=2) as running:
        hosts = running.platform.media
        killed_call = asyncio.create_task(
            place_call(running.uri("rec"), play=killed_wav, hangup_after=30))
        await until(lambda: running.observed and running.observed[0].call.recordings
                    and recording_of(running.observed[0]).state == RecState.RECORDING,
                    20, "the first call's recording")
        survivor_call = asyncio.create_task(
            place_call(running.uri("rec"), play=survivor_wav, hangup_after=6))
        await until(lambda: len(running.observed) > 1 and running.observed[1].call.recordings
                    and recording_of(running.observed[1]).state == RecState.RECORDING,
                    20, "the second call's recording")
        killed, survivor = running.observed[0].call, running.observed[1].call
        assert killed.media.view is not survivor.media.view  # one call per worker
        doomed = recording_of(running.observed[0])
        part = part_path(doomed.path)
        # a second of audio written by the worker before it dies (its writes go every 0.5 s)
        await until(lambda: part.exists()
                    and part.stat().st_size >= WAV_HEADER_SIZE + BYTES_PER_SECOND,
                    20, "a second of the first recording on disk")
        pid = killed.media.view.link.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)

        result = await asyncio.wait_for(killed_call, 20)
        assert result.status == 200  # answered, then the platform hung up (BYE)
        await asyncio.wait_for(asyncio.shield(doomed.done), 20)
        assert killed.end_reason == "error"
        assert doomed.state == RecState.FINISHED
        assert doomed.events[-1]["state"] == "finished"
        assert doomed.events[-1]["duration"] == doomed.duration >= 1.0
        row = await running.platform.recordings.get(doomed.id)
        assert row is not None and row.state == "finished" and row.duration == doomed.duration
        assert not part.exists() and doomed.path.exists()
        repaired = decode(doomed)
        assert repaired.shape[1] == 2
        assert abs(len(repaired) / 8000 - doomed.duration) < 0.02
        assert audio.dominant_frequency(repaired[4000:, 0]) == pytest.approx(KILLED_HZ, abs=15)

        # the other worker's call goes on: it ends when its caller hangs up, nothing missing
        assert survivor.is_active
        await until(lambda: hosts.restarts == 1 and all(v.link.alive for v in hosts.views),
                    30, "the dead worker restarted")
        assert killed.media.view not in hosts.views
        later_call = asyncio.create_task(
            place_call(running.uri("rec"), play=later_wav, hangup_after=2))
        survivor_result = await asyncio.wait_for(survivor_call, 30)
        assert survivor_result.status == 200
        survivor_recording = recording_of(running.observed[1])
        await asyncio.wait_for(asyncio.shield(survivor_recording.done), 20)
        assert survivor.end_reason == "hangup"
        assert survivor_recording.state == RecState.FINISHED
        kept = decode(survivor_recording)
        # no longer than the platform's own start..end, and the tone in every 100 ms of it
        platform_span = survivor_recording.end_time - survivor_recording.start_time
        assert 1.0 <= survivor_recording.duration <= platform_span + 0.1
        assert abs(len(kept) / 8000 - survivor_recording.duration) < 0.02
        levels = tone_blocks(kept[:, 0], SURVIVOR_HZ)
        assert min(levels[2:-2]) > -20, "a gap in the surviving call's recording"

        # new calls are served after the death (by the live worker or the restarted one)
        assert (await asyncio.wait_for(later_call, 30)).status == 200
        await running.wait_call_ended(2, timeout=20)
        later = recording_of(running.observed[2])
        await asyncio.wait_for(asyncio.shield(later.done), 20)
        assert later.state == RecState.FINISHED and later.duration >= 1.5
        assert audio.dominant_frequency(decode(later)[800:, 0]) == pytest.approx(LATER_HZ,
                                                                                   abs=15)


async def test_media_in_the_main_process(tmp_path):
    """`workers = 0`: the embedded form, one process, the same recording."""
    caller = wav_file(tmp_path, "caller.wav", audio.tone(KILLED_HZ, 3.0, dbfs=-12))
    async with running_platform(tmp_path, ROUTES, server__workers=0) as running:
        assert running.platform.media.views[0].link.shares_memory
        result = await place_call(running.uri("rec"), play=caller, hangup_after=2)
        assert result.status == 200
        seen = await running.wait_call_ended(0, timeout=20)
        recording = recording_of(seen)
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    assert recording.state == RecState.FINISHED
    samples = decode(recording)
    assert samples.shape[1] == 2 and recording.duration >= 1.8
    assert audio.dominant_frequency(samples[800:, 0]) == pytest.approx(KILLED_HZ, abs=15)


def nice_of(task: Path) -> int:
    """The nice value of a process or thread (/proc/PID[/task/TID]/stat, field 19)."""
    return int((task / "stat").read_text().rpartition(")")[2].split()[16])


async def test_media_workers_and_their_threads_run_before_ordinary_processes(tmp_path, peer_env):
    """Media has a deadline every 20 ms: a worker and every thread it starts (the recording
    writer, the file pool) run at MEDIA_NICE; the main process keeps its own priority."""
    peer_env.require_root()  # raising a priority needs CAP_SYS_NICE
    caller = wav_file(tmp_path, "caller.wav", audio.tone(KILLED_HZ, 3.0, dbfs=-12))
    async with running_platform(tmp_path, ROUTES, server__workers=1) as running:
        result = await place_call(running.uri("rec"), play=caller, hangup_after=1.5)
        assert result.status == 200
        recording = recording_of(await running.wait_call_ended(0, timeout=20))
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        assert recording.state == RecState.FINISHED
        pid = running.platform.media.views[0].link.pid
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        assert len(tasks) >= 3  # the loop, the writer thread, a file thread
        assert {nice_of(task) for task in tasks} == {MEDIA_NICE}
    assert nice_of(Path("/proc/self")) == os.getpriority(os.PRIO_PROCESS, 0) != MEDIA_NICE
