"""CPU cost of recording, per recorded call-second, without the network.

Feeds 20 ms frames of caller and platform audio straight into the recording path the platform
uses: the sans-I/O RecorderMachine (voice detection, mixing, timers), batches of 25 frames
(0.5 s) concatenated as the engine does, and the streaming WAV/MP3 writers. Reports CPU time
(process-wide, so the writer work counts wherever it runs) per recorded call-second for WAV
mono, WAV stereo, MP3 mono and MP3 stereo.

    .venv/bin/python bench/record_engine.py [--recordings 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from callbox.server.recording.machine import RecorderMachine
from callbox.server.recording.writers import open_writer
from callbox.wire.recording import RecordParams

FRAME = 160
BATCH_FRAMES = 25
VARIANTS = [("wav", False), ("wav", True), ("mp3", False), ("mp3", True)]


def test_signal(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like caller audio (bursts of tone + noise) and a platform prompt tone."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000
    envelope = (np.sin(2 * np.pi * 0.3 * t) > -0.2).astype(np.float64)
    speak = (3000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 800, n)) * envelope
    listen = 2000 * np.sin(2 * np.pi * 440 * t) * (1 - envelope)
    return speak.astype(np.int16), listen.astype(np.int16)


def run_variant(fmt: str, stereo: bool, recordings: int, seconds: float, directory: Path) -> dict:
    params = RecordParams.parse({"format": fmt, "stereo": stereo, "direction": "both"},
                                "swml_record_call")
    speak, listen = test_signal(seconds, seed=1)
    frames = len(speak) // FRAME
    machines = [RecorderMachine(params) for _ in range(recordings)]
    writers = [open_writer(fmt, directory / f"{fmt}-{stereo}-{i}.{fmt}", params.channels)
               for i in range(recordings)]
    batches: list[list[np.ndarray]] = [[] for _ in range(recordings)]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for index in range(frames):
        s = speak[index * FRAME:(index + 1) * FRAME]
        l = listen[index * FRAME:(index + 1) * FRAME]  # noqa: E741 - speak/listen pair
        for machine, writer, batch in zip(machines, writers, batches, strict=True):
            batch.extend(machine.feed(s, l))
            if len(batch) >= BATCH_FRAMES:
                writer.write(np.concatenate(batch))
                batch.clear()
    for machine, writer, batch in zip(machines, writers, batches, strict=True):
        batch.extend(machine.stop())
        if batch:
            writer.write(np.concatenate(batch))
        writer.close()
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    call_seconds = recordings * frames / 50
    return {
        "variant": f"{fmt} {'stereo' if stereo else 'mono'}",
        "ms_per_call_second": cpu * 1000 / call_seconds,
        "realtime_factor": call_seconds / wall,
        "call_seconds": call_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"# record_engine: {args.recordings} recordings x {args.seconds:g} s, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| variant | CPU ms per recorded call-second | recorded call-seconds per wall second |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, stereo in VARIANTS:
            result = run_variant(fmt, stereo, args.recordings, args.seconds, Path(tmp))
            print(f"| {result['variant']} | {result['ms_per_call_second']:.3f} | "
                  f"{result['realtime_factor']:.0f} |")


if __name__ == "__main__":
    main()
