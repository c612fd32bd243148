"""CPU per call spent on setting it up and tearing it down, per platform process.

`concurrent_recordings.py --variants short-wav-stereo` reports setup + teardown as the whole
run's CPU per 10 s call minus 10 s of another step's steady media cost: two measurements, each
noisy, and their difference small. Here every process is measured on its own over calls of two
lengths (same count, same number at a time): each process's CPU per call is `setup + L x media`
for calls of length L, so two lengths give both terms, with no steady window to pick:

    setup = (L2 x cost(L1) - L1 x cost(L2)) / (L2 - L1)

Each call is answered and recorded WAV stereo by a SWML route (`record_call`, then `sleep`), the
caller (sipp) streams speech and hangs up; a run counts when every recording of it is
`finished`. `--routes recorded,unrecorded` also measures calls whose route only answers (no
recording): what the call itself costs, and so what the recording adds. CPU is utime + stime
from /proc, read before the first call and after the last call (and recording) ended, for the
main process (SIP, the route, the recordings' metadata) and for each media worker (RTP, the
recording's file); stime alone gives the part of setup + teardown spent in the kernel (system
calls).

`--rates R1,R2` measures at fixed call rates instead (calls begun per second, the same for both
lengths: `R x L` calls at a time): a call's setup + teardown depends on the rate, because at a
low one every SIP message and worker event wakes a process whose caches the other processes
have emptied since its last wake-up, and at a high one a wake-up serves several calls.

`--compare-with DIR` runs a second copy of the platform (a `src` directory, e.g. a worktree of
another commit) in turn with this one, round after round, so that the two are compared on the
same machine minutes apart (this machine's speed varies by 2x between days).

    .venv/bin/python bench/call_setup_cost.py                        # 600 calls of 2 s and 6 s
    .venv/bin/python bench/call_setup_cost.py --rounds 3 --compare-with /tmp/base/src
    .venv/bin/python bench/call_setup_cost.py --rounds 3 --routes recorded,unrecorded
    .venv/bin/python bench/call_setup_cost.py --rounds 3 --rates 15,50,100 --lengths 2,4
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import concurrent_recordings as cr  # puts the repository on the path for tests.peers
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.sipp import run_sipp

ROUTES = {
    "recorded": cr.VARIANTS["wav-stereo"],
    "unrecorded": dataclasses.replace(cr.VARIANTS["wav-stereo"], name="unrecorded",
                                      recorded=False),
}


@dataclass
class Run:
    """CPU ms per call of each process for calls of one length (`*_sys_ms`: the part spent in
    the kernel, system calls)."""

    code: str
    seconds: float
    main_ms: float
    worker_ms: float
    main_sys_ms: float
    worker_sys_ms: float
    finished: int


@contextmanager
def python_path(src: str | None) -> Iterator[None]:
    """Start the platform from `src` (its processes import callbox from there)."""
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = src
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


async def run_calls(code: str, src: str | None, seconds: float, calls: int, at_once: int,
                    workers: int, workdir: Path, route: str = "recorded") -> Run:
    """`calls` calls of `seconds`, `at_once` at a time, on a fresh platform whose route
    records them (or, `unrecorded`, only answers)."""
    variant = ROUTES[route]
    source = cr.make_source(seconds, workdir)
    directory = workdir / f"{code}-{seconds:g}s-{time.monotonic_ns()}"
    platform = cr.ServedPlatform(directory, variant, at_once, "uvloop", workers=workers)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        with python_path(src):
            await platform.start(session)
        try:
            await asyncio.sleep(1.0)  # start-up's own work done
            pids = [platform.pid, *cr.process_children(platform.pid)]
            before = [cr.proc_cpu_split(pid) for pid in pids]
            media = free_port_range(4 * at_once + 8)
            result = await run_sipp(
                "uac_stream_bye", platform.sip_target, service=cr.SERVICE,
                local_port=free_udp_port(), media_port=media.start,
                keys={"stream": source.stream}, calls=calls, rate=at_once / seconds,
                limit=at_once, timeout=seconds * calls / at_once + 120, trace_messages=False,
                workdir=directory / "sipp", extra_args=["-d", str(int(seconds * 1000))])
            if not result.ok:
                raise RuntimeError(f"sipp: {result.describe()}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                metrics = await platform.metrics(session)
                if metrics["recordings"] == 0 and metrics["calls"] == 0:
                    break
                await asyncio.sleep(0.2)
            after = [cr.proc_cpu_split(pid) for pid in pids]
            rows = await platform.recordings(session)
        finally:
            platform.stop()
    spent = [sum(a) - sum(b) for a, b in zip(after, before, strict=True)]
    in_kernel = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    finished = sum(1 for row in rows if row["state"] == "finished")
    per_call = 1000 / calls
    return Run(code, seconds, spent[0] * per_call, sum(spent[1:]) * per_call,
               in_kernel[0] * per_call, sum(in_kernel[1:]) * per_call, finished)


def setup_term(l1: float, cost1: float, l2: float, cost2: float) -> float:
    """The part of a per-call cost that does not grow with the call's length."""
    return (l2 * cost1 - l1 * cost2) / (l2 - l1)


def solve(short: Run, long: Run) -> tuple[float, float, float, float]:
    """(main setup, workers setup, main media, workers media) in ms per call / per call-s."""
    l1, l2 = short.seconds, long.seconds
    main = setup_term(l1, short.main_ms, l2, long.main_ms)
    workers = setup_term(l1, short.worker_ms, l2, long.worker_ms)
    return (main, workers, (long.main_ms - short.main_ms) / (l2 - l1),
            (long.worker_ms - short.worker_ms) / (l2 - l1))


def kernel_setup(short: Run, long: Run) -> tuple[float, float]:
    """(main, workers): the setup + teardown spent in the kernel, ms per call."""
    l1, l2 = short.seconds, long.seconds
    return (setup_term(l1, short.main_sys_ms, l2, long.main_sys_ms),
            setup_term(l1, short.worker_sys_ms, l2, long.worker_sys_ms))


def case_name(code: str, route: str, rate: float | None) -> str:
    return f"{code}, {route}" if rate is None else f"{code}, {route}, {rate:g} calls per s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2,6", help="two call lengths in seconds")
    parser.add_argument("--calls", type=int, default=600, help="calls of each length")
    parser.add_argument("--at-once", type=int, default=60)
    parser.add_argument("--rates", help="comma-separated calls begun per second, run in turn "
                        "(each length then has rate x length calls at a time); "
                        "replaces --at-once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--routes", default="recorded",
                        help=f"comma-separated, run in turn: {', '.join(ROUTES)}")
    parser.add_argument("--keep", action="store_true",
                        help="leave the recordings (deleting thousands of files slows this "
                        "VM's next file creates for minutes: see RESULTS.md)")
    parser.add_argument("--compare-with", metavar="SRC",
                        help="another callbox source tree, run in turn with this one")
    args = parser.parse_args(argv)
    short_s, long_s = sorted(float(v) for v in args.lengths.split(","))
    routes = args.routes.split(",")
    unknown = [route for route in routes if route not in ROUTES]
    if unknown:
        parser.error(f"unknown route {unknown[0]!r}; choose from {', '.join(ROUTES)}")
    cr.raise_open_files_limit()
    codes: list[tuple[str, str | None]] = [("this", None)]
    if args.compare_with:
        codes.append(("other", str(Path(args.compare_with).resolve())))
    rates: list[float | None] = ([float(v) for v in args.rates.split(",")] if args.rates
                                 else [None])
    cases = [(code, src, route, rate)
             for rate in rates for code, src in codes for route in routes]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"call-setup-{os.getpid()}"
    print(f"# call_setup_cost: {cr.machine_description()}; commit {cr.git_commit()}; "
          f"{args.calls} calls of {short_s:g} s and of {long_s:g} s, "
          f"{f'{args.rates} calls per second' if args.rates else f'{args.at_once} at a time'}, "
          f"{args.workers} media workers; workdir {workdir}", flush=True)
    print("| code | route | calls per s | round "
          "| setup + teardown ms per call: main / workers / all "
          "| of which in the kernel: main / workers "
          "| media ms per call-s: main / workers | recordings finished |")
    print("|---|---|---|---|---|---|---|---|")
    totals: dict[str, list[float]] = {case_name(code, route, rate): []
                                      for code, _, route, rate in cases}
    for round_number in range(1, args.rounds + 1):
        for code, src, route, rate in cases:
            runs = [asyncio.run(run_calls(
                code, src, seconds, args.calls,
                args.at_once if rate is None else max(1, round(rate * seconds)),
                args.workers, workdir, route)) for seconds in (short_s, long_s)]
            main_setup, worker_setup, main_media, worker_media = solve(*runs)
            main_kernel, worker_kernel = kernel_setup(*runs)
            totals[case_name(code, route, rate)].append(main_setup + worker_setup)
            finished = "/".join(str(r.finished) for r in runs)
            shown_rate = "-" if rate is None else f"{rate:g}"
            print(f"| {code}{'' if src is None else f' ({src})'} | {route} | {shown_rate} "
                  f"| {round_number} "
                  f"| {main_setup:.2f} / {worker_setup:.2f} / {main_setup + worker_setup:.2f} "
                  f"| {main_kernel:.2f} / {worker_kernel:.2f} "
                  f"| {main_media:.3f} / {worker_media:.3f} | {finished} of {args.calls} each |",
                  flush=True)
    for code, values in totals.items():
        print(f"- {code}: setup + teardown {statistics.median(values):.2f} ms per call "
              f"(median of {len(values)})")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
