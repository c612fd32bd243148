"""Store writes that wait out a database outage instead of failing the recording.

A recording's metadata lives in a database that may be restarting (PostgreSQL in a cluster).
`persist` runs one store call; when the database cannot be reached (`DatabaseUnavailable`) it
tries again after a bounded backoff, for as long as it takes, so a recording keeps writing its
file during an outage and its states are stored, in order, once the database is back. Any other
error (a full disk, a bug) is not transient and propagates at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from callbox.server.database import DatabaseUnavailable

log = logging.getLogger(__name__)

FIRST_DELAY: Final = 0.2  # seconds before the first retry, doubling ...
MAX_DELAY: Final = 5.0  # ... up to this

T = TypeVar("T")


def retry_delay(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1 = the first)."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2.0 ** min(retry - 1, 30)))


async def persist(write: Callable[[], Awaitable[T]], what: str) -> T:
    """`await write()`, again and again while the database is unavailable. `what` names the
    write in the log (one line when the outage starts, one when it ends)."""
    retry = 0
    while True:
        try:
            result = await write()
        except DatabaseUnavailable as exc:
            retry += 1
            if retry == 1:
                log.warning("%s waits for the database: %s", what, exc)
            await asyncio.sleep(retry_delay(retry))
            continue
        if retry:
            log.info("%s stored after %d retries (the database is back)", what, retry)
        return result
