"""Blocking work run by threads, its results handed back on the media tick.

`loop.run_in_executor` costs a media worker ~0.1 ms per job on the loop's side (a
`concurrent.futures.Future` chained to an asyncio one, locks, and a write to the loop's wake-up
pipe so that the loop runs once more just to resolve it). A recording hands a job to a thread
when its file is opened, for every half second of audio and when it is closed. Here a job is one
`SimpleQueue.put` and its result waits in a deque until the media clock's next tick (<= 20 ms:
the loop is awake for it anyway) resolves the job's future.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]
_STOP = None


class ThreadJobs:
    """`threads` threads that run jobs in the order given (one thread: strictly in order).
    A member of the media clock: `tick()` resolves the futures of the jobs done."""

    def __init__(self, threads: int, name: str) -> None:
        self.size = threads
        self.name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = \
            collections.deque()
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `job(*args)` on a thread; the future is resolved on the tick after it ends."""
        if not self._threads:
            self._start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((future, job, args))
        return future

    def tick(self) -> None:
        done = self._done
        while done:
            future, ok, value = done.popleft()
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, StopIteration):  # a future refuses it (TypeError)
                future.set_exception(RuntimeError(f"the job raised {value!r}"))
            else:
                future.set_exception(value)

    def close(self) -> None:
        """Run what is queued, then end the threads (blocks)."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _start(self) -> None:
        for number in range(self.size):
            thread = threading.Thread(target=self._serve, name=f"{self.name}-{number}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        get, done = self._queue.get, self._done
        while (item := get()) is not _STOP:
            future, job, args = item
            try:
                done.append((future, True, job(*args)))
            except BaseException as exc:  # handed to the awaiting task, as an executor does
                done.append((future, False, exc))
            del item, future, job, args  # the idle thread holds no finished job (its audio)
