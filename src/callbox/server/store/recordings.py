"""Recording metadata: the `RecordingStore` interface and its SQLite implementation.

The store holds metadata only (ids, call, control_id, state, format, sizes, times, url, the file's
path, where the audio lives now, who its channels hold); the audio files are the recording
engine's. The interface is async so that a network database (`store.postgres`) never blocks the
event loop; the SQLite store runs its short local statements inline.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from callbox.wire.recording import STATES, TERMINAL_STATES

# States of a recording still running (to repair after a crash; not deletable).
ACTIVE_STATES: Final = tuple(s for s in STATES if s not in TERMINAL_STATES)
SCHEMA_VERSION: Final = 3


@dataclass(frozen=True)
class Parties:
    """Who a recording's channels hold (see `recording.parties`, which derives it from the live
    call): `speaker` is the recorded leg's party (left, `speak`), `hearer` what that party hears
    (right, `listen`), `peer_call_id` the call it was bridged to. Stored with the recording's
    end, so the console shows it after a restart and on every node."""

    speaker: str
    hearer: str
    peer_call_id: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"speaker": self.speaker, "hearer": self.hearer,
                "peer_call_id": self.peer_call_id}

    @classmethod
    def parse(cls, value: Any) -> Parties | None:
        """The stored JSON object back (None for NULL, or for an object this version cannot
        read: the console then shows its generic labels)."""
        if not isinstance(value, dict):
            return None
        speaker, hearer, peer = value.get("speaker"), value.get("hearer"), \
            value.get("peer_call_id")
        if not (isinstance(speaker, str) and isinstance(hearer, str)
                and (peer is None or isinstance(peer, str))):
            return None
        return cls(speaker, hearer, peer)


@dataclass
class RecordingRow:
    """One recording. Times are unix seconds (float); `params` is the "audio as run" dict."""

    id: str  # secrets.token_hex(16): 128 random bits, the download capability
    project_id: str
    call_id: str
    control_id: str
    state: str
    format: str
    channels: int
    direction: str
    duration: float | None
    size: int | None
    url: str
    path: str
    created_at: float
    start_time: float | None
    end_time: float | None
    reason: str | None
    status_url: str
    params: dict[str, Any] = field(default_factory=dict)
    # Where the audio is: "" = the local file at `path`; else its key in the object storage.
    location: str = ""
    # Who its channels hold, stored with its end (None while it runs, or repaired after a crash).
    parties: Parties | None = None

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    def column_values(self) -> list[Any]:
        """The values in `COLUMNS` order (as they are: a store encodes `params` and `parties`
        itself)."""
        return [getattr(self, name) for name in COLUMNS]

    def to_api(self) -> dict[str, Any]:
        """The REST object. Times are ISO 8601 UTC strings (``2026-03-01T12:00:00.217Z``), as
        SignalWire's REST API gives them; RELAY events and webhooks keep unix floats."""
        body: dict[str, Any] = {
            "id": self.id,
            "call_id": self.call_id,
            "control_id": self.control_id,
            "state": self.state,
            "format": self.format,
            "channels": self.channels,
            "direction": self.direction,
            "duration": self.duration,
            "size": self.size,
            "url": self.url,
            "created_at": iso_time(self.created_at),
            "start_time": iso_time(self.start_time),
            "end_time": iso_time(self.end_time),
        }
        if self.reason:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True)
class RecordingFilter:
    """Which recordings `list` keeps: every field that is set must match (None: any)."""

    state: str | None = None
    format: str | None = None
    channels: int | None = None
    since: float | None = None  # created_at >= since (unix seconds)
    until: float | None = None  # created_at < until
    search: str | None = None  # the exact call id, control id or recording id

    def sql(self, mark: str = "?") -> tuple[str, builtins.list[Any]]:
        """`" AND ..."` conditions and their arguments; `mark` is the driver's placeholder."""
        conditions: builtins.list[str] = []
        args: builtins.list[Any] = []
        for column in ("state", "format", "channels"):
            value = getattr(self, column)
            if value is not None:
                conditions.append(f"{column} = {mark}")
                args.append(value)
        if self.since is not None:
            conditions.append(f"created_at >= {mark}")
            args.append(self.since)
        if self.until is not None:
            conditions.append(f"created_at < {mark}")
            args.append(self.until)
        if self.search:
            conditions.append(f"(call_id = {mark} OR control_id = {mark} OR id = {mark})")
            args += [self.search] * 3
        return "".join(f" AND {c}" for c in conditions), args


# `list` is a method of the stores: annotations inside them use this name instead.
Rows = builtins.list[RecordingRow]


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RecordingStore(Protocol):
    """Recording metadata. A network store raises `DatabaseUnavailable` (callbox.server.database)
    when it cannot be reached: a transient error, the same call may succeed later."""

    remote: bool  # its calls wait on the network (False: they complete without suspending)

    @property
    def reachable(self) -> bool:
        """False while its database is known to be unreachable (its last attempt failed)."""
        ...

    async def add(self, row: RecordingRow) -> None: ...

    async def update(self, id: str, /, **fields: Any) -> bool:
        """Change some fields of a row; False when there is no such row."""
        ...

    async def get(self, id: str) -> RecordingRow | None: ...

    async def list(self, project_id: str, *, page_size: int, cursor: str | None = None,
                   where: RecordingFilter | None = None) -> tuple[Rows, str | None]:
        """One page of a project's recordings (those `where` keeps), newest first (created_at,
        then id), and the opaque cursor of the next page (None on the last). A bad cursor
        raises ValueError."""
        ...

    async def delete(self, id: str) -> bool: ...

    async def unfinished(self) -> Rows:
        """Rows still `recording` or `paused` (after a crash: to repair)."""
        ...

    async def close(self) -> None: ...


def check_updatable(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}; "
                         f"fields: {', '.join(sorted(UPDATABLE))}")


def page_query(project_id: str, page_size: int, cursor: str | None,
               where: RecordingFilter | None, mark: str) -> tuple[str, list[Any]]:
    """The SELECT of one page of a project's recordings, newest first (one row more than
    the page, see `next_cursor`); `mark` is the driver's parameter placeholder."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    conditions, args = (where or RecordingFilter()).sql(mark)
    query = f"SELECT * FROM recordings WHERE project_id = {mark}" + conditions
    args.insert(0, project_id)
    if cursor is not None:
        created_at, rec_id = decode_cursor(cursor)
        query += f" AND (created_at < {mark} OR (created_at = {mark} AND id < {mark}))"
        args += [created_at, created_at, rec_id]
    query += f" ORDER BY created_at DESC, id DESC LIMIT {mark}"
    args.append(page_size + 1)
    return query, args


def next_cursor(rows: Rows, page_size: int) -> tuple[Rows, str | None]:
    """The page (`rows` holds up to page_size + 1 rows) and the cursor of the next one."""
    page = rows[:page_size]
    more = len(rows) > page_size
    return page, encode_cursor(page[-1].created_at, page[-1].id) if more else None


COLUMNS: Final = tuple(f.name for f in fields(RecordingRow))
UPDATABLE: Final = frozenset(COLUMNS) - {"id"}

# Migration N takes the database from user_version N to N + 1.
_MIGRATIONS: Final = (
    """
    CREATE TABLE recordings (
        id          TEXT PRIMARY KEY,
        project_id  TEXT NOT NULL,
        call_id     TEXT NOT NULL,
        control_id  TEXT NOT NULL,
        state       TEXT NOT NULL,
        format      TEXT NOT NULL,
        channels    INTEGER NOT NULL,
        direction   TEXT NOT NULL,
        duration    REAL,
        size        INTEGER,
        url         TEXT NOT NULL,
        path        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        start_time  REAL,
        end_time    REAL,
        reason      TEXT,
        status_url  TEXT NOT NULL DEFAULT '',
        params      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX recordings_by_project ON recordings (project_id, created_at DESC, id DESC);
    CREATE INDEX recordings_by_state ON recordings (state);
    """,
    """
    ALTER TABLE recordings ADD COLUMN location TEXT NOT NULL DEFAULT '';
    """,
    """
    ALTER TABLE recordings ADD COLUMN parties TEXT;
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def encode_cursor(created_at: float, rec_id: str) -> str:
    raw = json.dumps([created_at, rec_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, rec_id = json.loads(raw)
        if isinstance(created_at, bool) or not isinstance(created_at, int | float) \
                or not isinstance(rec_id, str):
            raise TypeError
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise ValueError(f"not a valid page cursor: {cursor!r}") from None
    return float(created_at), rec_id


class SqliteRecordingStore:
    """The embedded default: one SQLite file in WAL mode, one connection behind a lock."""

    remote = False
    reachable = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit: every statement is its own transaction; migrations open their own.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}; this callbox "
                                   f"knows up to {SCHEMA_VERSION} (a newer release wrote it)")
            for number in range(version, SCHEMA_VERSION):
                script = f"BEGIN;\n{_MIGRATIONS[number]}\nPRAGMA user_version = {number + 1};"
                try:
                    self._conn.executescript(script + "\nCOMMIT;")
                except sqlite3.Error:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise

    @staticmethod
    def _to_db(name: str, value: Any) -> Any:
        if name == "params":
            return json.dumps(value)
        if name == "parties":
            return None if value is None else json.dumps(value.as_json())
        return value

    @staticmethod
    def _from_db(record: sqlite3.Row) -> RecordingRow:
        values = {name: record[name] for name in COLUMNS}
        values["params"] = json.loads(values["params"] or "{}")
        values["parties"] = Parties.parse(json.loads(values["parties"] or "null"))
        return RecordingRow(**values)

    async def add(self, row: RecordingRow) -> None:
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._lock:
            self._conn.execute(
                f"INSERT INTO recordings ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                [self._to_db(name, value)
                 for name, value in zip(COLUMNS, row.column_values(), strict=True)],
            )

    async def update(self, id: str, /, **fields: Any) -> bool:
        check_updatable(fields)
        if not fields:
            return await self.get(id) is not None
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            cursor = self._conn.execute(
                f"UPDATE recordings SET {assignments} WHERE id = ?",
                [*(self._to_db(name, value) for name, value in fields.items()), id],
            )
        return cursor.rowcount > 0

    async def get(self, id: str) -> RecordingRow | None:
        with self._lock:
            record = self._conn.execute("SELECT * FROM recordings WHERE id = ?", (id,)).fetchone()
        return None if record is None else self._from_db(record)

    async def list(self, project_id: str, *, page_size: int, cursor: str | None = None,
                   where: RecordingFilter | None = None) -> tuple[Rows, str | None]:
        sql, args = page_query(project_id, page_size, cursor, where, "?")
        with self._lock:
            records = self._conn.execute(sql, args).fetchall()
        return next_cursor([self._from_db(r) for r in records], page_size)

    async def delete(self, id: str) -> bool:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM recordings WHERE id = ?", (id,))
        return cursor.rowcount > 0

    async def unfinished(self) -> Rows:
        marks = ", ".join("?" for _ in ACTIVE_STATES)
        with self._lock:
            records = self._conn.execute(
                f"SELECT * FROM recordings WHERE state IN ({marks}) ORDER BY created_at",
                ACTIVE_STATES,
            ).fetchall()
        return [self._from_db(r) for r in records]

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
