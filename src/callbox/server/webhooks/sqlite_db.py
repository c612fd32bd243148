"""The webhook queue in this node's own SQLite file (WAL, autocommit: an entry is on disk
when `add` returns). Statements are short and local: they run inline."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from callbox.server.webhooks.queue_db import Delivery, Entry, NewEntry

DB_BUSY_TIMEOUT: Final = 1.0  # seconds; the database is this process's own, never busy long

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS webhooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ordering_key TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    signing_key  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    created_at   REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhooks_by_key ON webhooks (ordering_key, id);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id  TEXT    PRIMARY KEY,
    ordering_key TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    label        TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    last_time    REAL,
    created_at   REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_key ON deliveries (ordering_key, created_at);
"""


class SqliteQueueDb:
    """One node's queue file (it holds signing keys: created owner-only). Opened on first use,
    so a full disk surfaces as an error of the call that needed it."""

    shared = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(self.path, timeout=DB_BUSY_TIMEOUT, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def add(self, new: NewEntry) -> None:
        db = self._conn()
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT INTO deliveries (delivery_id, ordering_key, url, label, status,"
                " last_error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new.delivery_id, new.ordering_key, new.shown_url, new.label, new.status,
                 new.error, new.created_at))
            if new.status == "pending":
                db.execute(
                    "INSERT INTO webhooks (ordering_key, url, event, body, signing_key,"
                    " delivery_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (new.ordering_key, new.url, new.event, new.body, new.signing_key,
                     new.delivery_id, new.created_at))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM webhooks").fetchone()[0])

    async def keys(self) -> list[str]:
        rows = self._conn().execute(
            "SELECT ordering_key FROM webhooks GROUP BY ordering_key ORDER BY MIN(id)"
        ).fetchall()
        return [key for (key,) in rows]

    async def claim_head(self, key: str, lease: float) -> Entry | None:
        row = self._conn().execute(
            "SELECT id, url, event, body, signing_key, delivery_id, created_at, attempts"
            " FROM webhooks WHERE ordering_key = ? ORDER BY id LIMIT 1", (key,)
        ).fetchone()
        return None if row is None else Entry(*row)

    async def retry_later(self, entry: Entry, attempts: int, lease: float) -> None:
        self._conn().execute("UPDATE webhooks SET attempts = ? WHERE id = ?",
                             (attempts, entry.id))

    async def remove(self, entry: Entry) -> bool:
        cursor = self._conn().execute("DELETE FROM webhooks WHERE id = ?", (entry.id,))
        return cursor.rowcount > 0

    async def log_delivery(self, delivery_id: str, status: str, attempts: int,
                           error: str | None, when: float) -> None:
        self._conn().execute(
            "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, last_time = ?"
            " WHERE delivery_id = ?", (status, attempts, error, when, delivery_id))

    async def deliveries(self, ordering_key: str) -> list[Delivery]:
        rows = self._conn().execute(
            "SELECT delivery_id, url, label, status, attempts, last_error, last_time,"
            " created_at FROM deliveries WHERE ordering_key = ? ORDER BY created_at, rowid",
            (ordering_key,)).fetchall()
        return [Delivery(*row) for row in rows]

    async def forget(self, ordering_key: str) -> None:
        self._conn().execute("DELETE FROM deliveries WHERE ordering_key = ?", (ordering_key,))

    async def release(self) -> None:
        """Nothing is claimed in a node's own file."""

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
