"""Wait for a condition with a deadline, instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["until", "until_async"]

POLL_INTERVAL = 0.01  # seconds


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Return once `predicate()` is true; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"not reached within {timeout:g} s: {what or predicate}"
        await asyncio.sleep(POLL_INTERVAL)


async def until_async(probe: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                      what: str = "") -> None:
    """`until` for a condition that must be asked for (a media worker's counters, say)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        assert loop.time() < deadline, f"not reached within {timeout:g} s: {what or probe}"
        await asyncio.sleep(POLL_INTERVAL)
