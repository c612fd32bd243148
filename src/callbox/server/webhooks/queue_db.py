"""Where the webhook queue keeps its entries and its deliveries log: the `QueueDb` interface.

`SqliteQueueDb` (`sqlite_db`) is this node's own file; `PostgresQueueDb` (`postgres_db`) is a
table every node of a cluster delivers from, so an entry must be *claimed* before it is sent:
`claim_head` gives the oldest entry of a key to one node for a lease, and a node whose lease
runs (it died) loses the claim to the next node that asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook's delivery as it went, kept after it was delivered or given up.

    `status`: pending (not tried yet), retrying, delivered or failed (given up); `label` is
    what the sender called the event (a recording event's state); `url` is shown without
    credentials or query string."""

    delivery_id: str
    url: str
    label: str
    status: str
    attempts: int
    last_error: str | None
    last_time: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A webhook to queue; `entry` False: only its (failed) line in the deliveries log."""

    ordering_key: str
    url: str  # the real url (it may hold credentials)
    shown_url: str  # for the deliveries log
    label: str
    event: str
    body: bytes
    signing_key: str
    delivery_id: str
    created_at: float
    status: str  # of its deliveries line: pending, or failed (refused at once)
    error: str | None


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued webhook, as its sender reads it back."""

    id: int
    url: str
    event: str
    body: bytes
    signing_key: str
    delivery_id: str
    created_at: float
    attempts: int


class QueueDb(Protocol):
    """Storage of the queue. Errors of a database that cannot be reached are
    `DatabaseUnavailable` (transient)."""

    # True when other nodes deliver from it too (the queue then polls for their keys).
    shared: bool

    async def add(self, new: NewEntry) -> None:
        """Log the delivery and, when its status is pending, queue the entry (atomically)."""
        ...

    async def count(self) -> int:
        """Entries queued (of every node, for a shared database)."""
        ...

    async def keys(self) -> list[str]:
        """Ordering keys with entries, oldest first."""
        ...

    async def claim_head(self, key: str, lease: float) -> Entry | None:
        """The oldest entry of `key`, claimed for `lease` seconds; None when the key has none
        or another node holds its head."""
        ...

    async def retry_later(self, entry: Entry, attempts: int, lease: float) -> None:
        """Record a failed attempt; keep the claim `lease` more seconds (the wait included)."""
        ...

    async def remove(self, entry: Entry) -> bool:
        """Drop a delivered (or given up) entry; False when it was already gone."""
        ...

    async def log_delivery(self, delivery_id: str, status: str, attempts: int,
                           error: str | None, when: float) -> None: ...

    async def deliveries(self, ordering_key: str) -> list[Delivery]:
        """The deliveries log of `ordering_key`, oldest first."""
        ...

    async def forget(self, ordering_key: str) -> None: ...

    async def release(self) -> None:
        """Give up this node's claims (it stops: another node, or its next run, takes over
        at once instead of after the lease)."""
        ...

    async def close(self) -> None: ...
