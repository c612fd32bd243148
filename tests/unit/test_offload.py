"""Thread jobs whose results come back on the media tick (`media.offload`)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from callbox.server.media.offload import ThreadJobs


async def wait_done(jobs: ThreadJobs, future: asyncio.Future[Any]) -> None:
    """Tick until `future` is resolved (the thread may still be running the job)."""
    deadline = time.monotonic() + 10
    while not future.done():
        assert time.monotonic() < deadline, "the job never came back"
        await asyncio.sleep(0.001)
        jobs.tick()


async def test_a_result_comes_back_on_the_tick_not_before() -> None:
    jobs = ThreadJobs(2, "test")
    ran = threading.Event()

    def job(a: int, b: int) -> tuple[int, str]:
        ran.set()
        return a + b, threading.current_thread().name

    try:
        future = jobs.submit(job, 2, 3)
        assert await asyncio.to_thread(ran.wait, 10)
        await asyncio.sleep(0.05)  # the job is done: only a tick may resolve its future
        assert not future.done()
        await wait_done(jobs, future)
        value, thread = future.result()
        assert value == 5 and thread.startswith("test-")
        assert thread != threading.current_thread().name
    finally:
        jobs.close()


async def test_an_exception_reaches_the_awaiting_task() -> None:
    jobs = ThreadJobs(1, "test")

    def fails() -> None:
        raise OSError(28, "No space left on device")

    try:
        future = jobs.submit(fails)
        await wait_done(jobs, future)
        with pytest.raises(OSError, match="No space left"):
            future.result()
    finally:
        jobs.close()


async def test_a_job_raising_stop_iteration_fails_its_future_only() -> None:
    jobs = ThreadJobs(1, "test")
    try:
        bad = jobs.submit(next, iter(()))
        good = jobs.submit(lambda: "after")
        await wait_done(jobs, good)
        with pytest.raises(RuntimeError, match="StopIteration"):
            bad.result()
        assert good.result() == "after"
    finally:
        jobs.close()


async def test_one_thread_runs_jobs_in_order_and_close_runs_what_is_queued() -> None:
    jobs = ThreadJobs(1, "test")
    seen: list[int] = []
    futures = [jobs.submit(seen.append, n) for n in range(200)]
    jobs.close()  # blocks until the queue is done
    assert seen == list(range(200))
    jobs.tick()
    assert all(f.done() and f.result() is None for f in futures)


async def test_a_cancelled_waiter_does_not_break_the_tick() -> None:
    jobs = ThreadJobs(1, "test")
    try:
        first = jobs.submit(time.sleep, 0)
        first.cancel()
        second = jobs.submit(lambda: "second")
        await wait_done(jobs, second)
        assert second.result() == "second" and first.cancelled()
    finally:
        jobs.close()
