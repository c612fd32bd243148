"""The webhook queue in the shared PostgreSQL database: every node delivers from it, each entry
by one node at a time.

A node sends an entry only after claiming it: `claim_head` locks the oldest entry of the key
(`SELECT ... FOR UPDATE`, so two nodes asking at once queue up on the row), and takes it when it
is unclaimed, already ours, or its lease ran out (its node died), setting `claimed_by` and
`claimed_until` (the database's clock, so nodes' clocks need not agree). Only the head of a key
is ever claimed, so its entries are sent in order whichever node sends them.
"""

from __future__ import annotations

from callbox.server.database import Database
from callbox.server.webhooks.queue_db import Delivery, Entry, NewEntry


class PostgresQueueDb:
    shared = True

    def __init__(self, database: Database, node_id: str) -> None:
        self.database = database
        self.node_id = node_id

    async def add(self, new: NewEntry) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                "INSERT INTO deliveries (delivery_id, ordering_key, url, label, status,"
                " last_error, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (new.delivery_id, new.ordering_key, new.shown_url, new.label, new.status,
                 new.error, new.created_at))
            if new.status == "pending":
                await conn.execute(
                    "INSERT INTO webhooks (ordering_key, url, event, body, signing_key,"
                    " delivery_id, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (new.ordering_key, new.url, new.event, new.body, new.signing_key,
                     new.delivery_id, new.created_at))

    async def count(self) -> int:
        async with self.database.connection() as conn:
            cursor = await conn.execute("SELECT COUNT(*) FROM webhooks")
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def keys(self) -> list[str]:
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "SELECT ordering_key FROM webhooks GROUP BY ordering_key ORDER BY MIN(id)")
            rows = await cursor.fetchall()
        return [str(key) for (key,) in rows]

    async def claim_head(self, key: str, lease: float) -> Entry | None:
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, url, event, body, signing_key, delivery_id, created_at, attempts,"
                " claimed_by IS NULL OR claimed_by = %s OR claimed_until < clock_timestamp()"
                " FROM webhooks WHERE ordering_key = %s ORDER BY id LIMIT 1 FOR UPDATE",
                (self.node_id, key))
            row = await cursor.fetchone()
            if row is None or not row[8]:
                return None
            await conn.execute(
                "UPDATE webhooks SET claimed_by = %s,"
                " claimed_until = clock_timestamp() + make_interval(secs => %s) WHERE id = %s",
                (self.node_id, lease, row[0]))
        return Entry(int(row[0]), row[1], row[2], bytes(row[3]), row[4], row[5],
                     float(row[6]), int(row[7]))

    async def retry_later(self, entry: Entry, attempts: int, lease: float) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                "UPDATE webhooks SET attempts = %s,"
                " claimed_until = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND claimed_by = %s",
                (attempts, lease, entry.id, self.node_id))

    async def remove(self, entry: Entry) -> bool:
        async with self.database.connection() as conn:
            cursor = await conn.execute("DELETE FROM webhooks WHERE id = %s", (entry.id,))
            return cursor.rowcount > 0

    async def log_delivery(self, delivery_id: str, status: str, attempts: int,
                           error: str | None, when: float) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET status = %s, attempts = %s, last_error = %s,"
                " last_time = %s WHERE delivery_id = %s",
                (status, attempts, error, when, delivery_id))

    async def deliveries(self, ordering_key: str) -> list[Delivery]:
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                "SELECT delivery_id, url, label, status, attempts, last_error, last_time,"
                " created_at FROM deliveries WHERE ordering_key = %s"
                " ORDER BY created_at, seq", (ordering_key,))
            rows = await cursor.fetchall()
        return [Delivery(*row) for row in rows]

    async def forget(self, ordering_key: str) -> None:
        async with self.database.connection() as conn:
            await conn.execute("DELETE FROM deliveries WHERE ordering_key = %s",
                               (ordering_key,))

    async def release(self) -> None:
        async with self.database.connection() as conn:
            await conn.execute("UPDATE webhooks SET claimed_by = NULL, claimed_until = NULL"
                               " WHERE claimed_by = %s", (self.node_id,))

    async def close(self) -> None:
        """Nothing of its own: the pool is the platform's."""
