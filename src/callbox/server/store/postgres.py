"""Recording metadata in PostgreSQL: the table every node of a cluster reads and writes.

The same `RecordingStore` contract as the SQLite store (same rows, order, cursors); the schema
is the `database` package's migrations. A database that cannot be reached raises
`DatabaseUnavailable`.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from callbox.server.database import Database
from callbox.server.store.recordings import (
    ACTIVE_STATES,
    COLUMNS,
    Parties,
    RecordingFilter,
    RecordingRow,
    Rows,
    check_updatable,
    next_cursor,
    page_query,
)

_INSERT = sql.SQL("INSERT INTO recordings ({}) VALUES ({})").format(
    sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
    sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)))


def _to_db(name: str, value: Any) -> Any:
    if name == "params":
        return Jsonb(value)
    if name == "parties":
        return None if value is None else Jsonb(value.as_json())
    return value


def _from_db(record: dict[str, Any]) -> RecordingRow:
    values = {name: record[name] for name in COLUMNS}
    values["parties"] = Parties.parse(values["parties"])
    return RecordingRow(**values)


class PostgresRecordingStore:
    """Recording metadata in the shared database (its pool is the caller's to close)."""

    remote = True

    def __init__(self, database: Database) -> None:
        self.database = database

    @property
    def reachable(self) -> bool:
        return self.database.reachable

    async def add(self, row: RecordingRow) -> None:
        async with self.database.connection() as conn:
            await conn.execute(_INSERT, [_to_db(name, value) for name, value
                                         in zip(COLUMNS, row.column_values(), strict=True)])

    async def update(self, id: str, /, **fields: Any) -> bool:
        check_updatable(fields)
        if not fields:
            return await self.get(id) is not None
        statement = sql.SQL("UPDATE recordings SET {} WHERE id = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name))
                               for name in fields))
        async with self.database.connection() as conn:
            cursor = await conn.execute(
                statement, [*(_to_db(name, value) for name, value in fields.items()), id])
            return cursor.rowcount > 0

    async def get(self, id: str) -> RecordingRow | None:
        async with self.database.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT * FROM recordings WHERE id = %s", (id,))
            record = await cursor.fetchone()
        return None if record is None else _from_db(record)

    async def list(self, project_id: str, *, page_size: int, cursor: str | None = None,
                   where: RecordingFilter | None = None) -> tuple[Rows, str | None]:
        query, args = page_query(project_id, page_size, cursor, where, "%s")
        async with self.database.connection() as conn:
            rows = conn.cursor(row_factory=dict_row)
            await rows.execute(query.encode(), args)
            records = await rows.fetchall()
        return next_cursor([_from_db(r) for r in records], page_size)

    async def delete(self, id: str) -> bool:
        async with self.database.connection() as conn:
            cursor = await conn.execute("DELETE FROM recordings WHERE id = %s", (id,))
            return cursor.rowcount > 0

    async def unfinished(self) -> Rows:
        async with self.database.connection() as conn:
            rows = conn.cursor(row_factory=dict_row)
            await rows.execute("SELECT * FROM recordings WHERE state = ANY(%s)"
                               " ORDER BY created_at", (list(ACTIVE_STATES),))
            records = await rows.fetchall()
        return [_from_db(r) for r in records]

    async def close(self) -> None:
        """Nothing of its own to close: the pool is the platform's."""
