"""The shared PostgreSQL database: a connection pool, and the schema migrations applied at start.

Migrations are the files `migrations/postgres/NNNN_name.sql` of this package, applied in order
in one transaction and recorded in the `schema_version` table; a transaction-level advisory
lock makes nodes starting together apply each one once.

A database that cannot be reached (down, restarting, the network) raises `DatabaseUnavailable`:
callers treat it as transient and try again later. Other database errors are bugs or bad data
and propagate as they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from yarl import URL

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = ("migrations", "postgres")
# pg_advisory_xact_lock key of the migrations ("callbox" in ASCII).
MIGRATION_LOCK: Final = 0x63616C6C626F78
CONNECT_TIMEOUT: Final = 5.0  # seconds to wait for a connection before DatabaseUnavailable
POOL_MAX_SIZE: Final = 8
_FILE_NAME: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class DatabaseUnavailable(ConnectionError):
    """The database cannot be reached now; the same request may succeed later."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The package's migrations, in version order (versions 1, 2, ... without gaps)."""
    folder = resources.files(__package__).joinpath(*MIGRATIONS_DIR)
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, got "
                           f"{[m.version for m in found]}")
    return found


def shown(url: str) -> str:
    """`url` without its password (for messages)."""
    try:
        return str(URL(url).with_password(None))
    except (ValueError, TypeError):
        return "<unparsable url>"


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, pool: AsyncConnectionPool[Any], url: str) -> None:
        self.pool = pool
        self.url = url
        self.reachable = True  # False from a failure to reach it until a connection works

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in a transaction (committed when the block ends without an error).
        Raises `DatabaseUnavailable` when the database cannot be reached."""
        try:
            async with self.pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                self.reachable = True
                yield conn
        except PoolClosed:
            raise  # closed by us (shutdown): nothing to wait for
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self.reachable = False
            raise DatabaseUnavailable(f"database {shown(self.url)} unavailable: {exc}") from exc

    async def close(self) -> None:
        await self.pool.close()


async def open_database(url: str) -> Database:
    """Connect to `url` (waiting up to `CONNECT_TIMEOUT` for the first connection) and apply
    the migrations it lacks."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=POOL_MAX_SIZE, open=False,
        check=AsyncConnectionPool.check_connection, name="callbox")
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    except PoolTimeout as exc:
        await pool.close()
        raise DatabaseUnavailable(f"cannot connect to database {shown(url)} within "
                                  f"{CONNECT_TIMEOUT:g} s: is it running?") from exc
    database = Database(pool, url)
    try:
        applied = await migrate(database)
    except BaseException:
        await pool.close()
        raise
    if applied:
        log.info("database %s: applied migrations %s", shown(url),
                 ", ".join(str(v) for v in applied))
    return database


async def migrate(database: Database) -> list[int]:
    """Apply the migrations the database lacks; returns their versions (empty: up to date)."""
    known = migrations()
    applied = []
    async with database.connection() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        cursor = await conn.execute("SELECT version FROM schema_version")
        present = {int(row[0]) for row in await cursor.fetchall()}
        newest = max(present, default=0)
        if newest > len(known):
            raise RuntimeError(f"database {shown(database.url)} has schema version {newest}; "
                               f"this callbox knows up to {len(known)} (a newer release "
                               "wrote it)")
        for migration in known:
            if migration.version in present:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                               (migration.version, migration.name))
            applied.append(migration.version)
    return applied
