"""CPU of one recording's life in a media worker, without SIP, the main process or sipp's noise.

A `MediaHost` (what a media worker runs) with real UDP sessions: each session is opened,
configured and started, recorded WAV stereo for `--hold` seconds (opened and started by one
command, as the platform does), then closed; `--at-once` of them at a time. The same runs
without the recording give the session's own part, so the difference is what a recording adds
to a call in its worker: the runtime, the file created on the file pool, its last block, the
fsync, rename and directory fsync, the events back. CPU is the whole process's (every thread).
It also times, in a loop, the file system calls a recording's file needs, on the data
directory's file system.

On ext4 without a journal (this VM's root file system) a new file's inode costs far more for
about 1-6 minutes after thousands of files were deleted nearby (the kernel's inode allocator
steps over every recently deleted inode: 20 us per create when none are, 400-500 us after a
run of this bench deleted its 3,000 files). `--keep` leaves the files and skips the timed
unlinks, so that runs compared in turn do not slow each other down.

    .venv/bin/python bench/recording_lifecycle.py [--recordings 1500] [--at-once 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from callbox.server.worker import messages as m
from callbox.server.worker.host import MediaHost
from callbox.wire.recording import RecordParams

STEREO = {"format": "wav", "stereo": True, "direction": "both",
          "initial_timeout": 0, "end_silence_timeout": 0}


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def lifecycles(count: int, at_once: int, hold: float, recorded: bool,
                     directory: Path) -> float:
    """CPU ms per session (and its recording, when `recorded`), after a warm-up."""
    loop = asyncio.get_running_loop()
    ends: dict[str, asyncio.Future[m.RecordingEnded]] = {}

    def emit(message: Any) -> None:
        if isinstance(message, m.RecordingEnded) and message.rid in ends:
            ends.pop(message.rid).set_result(message)

    directory = Path(tempfile.mkdtemp(dir=directory))  # this run's files
    host = MediaHost(emit)
    host.start()
    params = RecordParams.parse(STEREO, "relay")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    gate = asyncio.Semaphore(at_once)

    async def one(sid: int) -> None:
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            host.open_session(m.OpenSession(sid, "127.0.0.1"), sock)
            host.handle(m.Configure(sid, "127.0.0.1", peer.getsockname()[1], 0, 101, "sendrecv"))
            host.handle(m.StartSession(sid))
            rid = f"r{sid}"
            if recorded:
                await host.open_recording(m.OpenRecording(
                    sid, rid, "wav", directory / f"{rid}.wav", 2,
                    m.StartRecording(rid, params, None)))
                ends[rid] = loop.create_future()
            await asyncio.sleep(hold)
            ended = ends.get(rid)
            host.handle(m.CloseSession(sid))
            if ended is not None:
                end = await ended
                if end.state != "finished":
                    raise RuntimeError(f"recording {rid} ended {end.state}: {end.reason}")

    try:
        await asyncio.gather(*(one(sid) for sid in range(at_once)))  # warm-up
        before = process_cpu()
        await asyncio.gather(*(one(sid) for sid in range(at_once, at_once + count)))
        return (process_cpu() - before) * 1000 / count
    finally:
        await host.stop()
        peer.close()


def file_calls(directory: Path, count: int = 500) -> dict[str, float]:
    """CPU microseconds of each file system call a recording's file needs, `count` times."""
    header, fds = b"\0" * 44, {}

    def create(i: int) -> None:
        fds[i] = os.open(directory / f"f{i}.wav.part",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.write(fds[i], header)

    def fsync_dir(_: int) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)

    steps: list[tuple[str, Callable[[int], None]]] = [
        ("create + header", create),
        ("fsync", lambda i: os.fsync(fds[i])),
        ("close", lambda i: os.close(fds.pop(i))),
        ("rename", lambda i: os.replace(directory / f"f{i}.wav.part", directory / f"f{i}.wav")),
        ("directory fsync", fsync_dir),
        ("unlink", lambda i: os.unlink(directory / f"f{i}.wav")),
    ]
    out = {}
    for name, step in steps:
        before = time.process_time()
        for i in range(count):
            step(i)
        out[name] = (time.process_time() - before) * 1e6 / count
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=1500)
    parser.add_argument("--at-once", type=int, default=30)
    parser.add_argument("--hold", type=float, default=0.06, help="seconds each is recorded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", help="the data directory's file system (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="delete no file: no system call timings, the files stay")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="recording-lifecycle-", dir=args.dir))
    try:
        print(f"# recording_lifecycle: {args.recordings} sessions of {args.hold:g} s, "
              f"{args.at_once} at a time, in {directory}")
        for round_number in range(1, args.rounds + 1):
            costs = {recorded: uvloop.run(lifecycles(args.recordings, args.at_once, args.hold,
                                                     recorded, directory))
                     for recorded in (False, True)}
            print(f"round {round_number}: session {costs[False]:.3f} ms, recorded session "
                  f"{costs[True]:.3f} ms: the recording {costs[True] - costs[False]:.3f} ms")
        if not args.keep:
            calls = file_calls(directory)
            print("file system calls, CPU us each: "
                  + ", ".join(f"{name} {us:.1f}" for name, us in calls.items()))
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
