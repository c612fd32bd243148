"""The recording metadata stores: the protocol's behaviour on SQLite and on PostgreSQL (a real
server, tests/peers/postgres.py), then what is SQLite's own (its file, schema version, threads)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from callbox.server.database import Database, migrations, open_database
from callbox.server.store import RecordingRow, RecordingStore, SqliteRecordingStore
from callbox.server.store.postgres import PostgresRecordingStore
from callbox.server.store.recordings import (
    SCHEMA_VERSION,
    Parties,
    RecordingFilter,
    decode_cursor,
    encode_cursor,
)

T0 = 1_789_651_036.217


def make_row(project_id: str = "p1", created_at: float = T0, **fields: object) -> RecordingRow:
    rec_id = secrets.token_hex(16)
    values: dict[str, object] = {
        "id": rec_id, "project_id": project_id, "call_id": "call-1", "control_id": "ctl-1",
        "state": "recording", "format": "wav", "channels": 1, "direction": "speak",
        "duration": None, "size": None, "url": f"https://h:8443/recordings/{rec_id}.wav",
        "path": f"/data/recordings/{rec_id}.wav", "created_at": created_at,
        "start_time": created_at + 0.25, "end_time": None, "reason": None, "status_url": "",
        "params": {"format": "wav", "direction": "speak", "stereo": False, "beep": False},
    }
    values.update(fields)
    return RecordingRow(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordingStore]:
    """Each protocol test runs on both stores."""
    if request.param == "sqlite":
        sqlite = SqliteRecordingStore(tmp_path / "db" / "recordings.db")
        yield sqlite
        await sqlite.close()
        return
    database = await open_database(request.getfixturevalue("postgres_url"))
    try:
        yield PostgresRecordingStore(database)
    finally:
        await database.close()


async def test_add_get_roundtrip(store: RecordingStore) -> None:
    row = make_row(status_url="https://hooks.example/rec")
    await store.add(row)
    assert await store.get(row.id) == row
    assert await store.get(secrets.token_hex(16)) is None
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        await store.add(row)


async def test_update(store: RecordingStore) -> None:
    row = make_row()
    await store.add(row)
    assert await store.update(row.id, state="paused")
    assert await store.update(row.id, state="finished", duration=18.2, size=298284,
                              end_time=T0 + 19, params={"format": "wav", "stereo": True})
    got = await store.get(row.id)
    assert got is not None
    assert (got.state, got.duration, got.size, got.end_time) == ("finished", 18.2, 298284, T0 + 19)
    assert got.params == {"format": "wav", "stereo": True}
    assert not await store.update(secrets.token_hex(16), state="finished")
    assert await store.update(row.id) and not await store.update(secrets.token_hex(16))
    with pytest.raises(ValueError, match="colour"):
        await store.update(row.id, colour="blue")
    with pytest.raises(ValueError, match="id"):
        await store.update(row.id, id="x")


BRIDGED = Parties("the caller (alice)", "the callee (bob)", "call-2")


async def test_parties_roundtrip(store: RecordingStore) -> None:
    """Who the channels hold: stored with a row or with its end, read back by get and list;
    a row without them reads None."""
    ended = make_row(state="finished", parties=BRIDGED)
    await store.add(ended)
    assert (await store.get(ended.id)) == ended
    running = make_row(created_at=T0 + 1)
    await store.add(running)
    assert (await store.get(running.id)).parties is None  # type: ignore[union-attr]
    unbridged = Parties("the called party (bob)", "what the platform plays")
    assert await store.update(running.id, state="finished", parties=unbridged)
    page, _ = await store.list("p1", page_size=10)
    assert [(r.id, r.parties) for r in page] == [(running.id, unbridged), (ended.id, BRIDGED)]
    assert await store.update(ended.id, parties=None)
    assert (await store.get(ended.id)).parties is None  # type: ignore[union-attr]


async def test_list_pages_newest_first(store: RecordingStore) -> None:
    rows = [make_row(created_at=T0 + i) for i in range(7)]
    # Two rows with the same created_at: ordered by id, none lost or repeated across pages.
    rows += [make_row(created_at=T0 + 3), make_row(created_at=T0 + 3)]
    for row in rows:
        await store.add(row)
    await store.add(make_row(project_id="p2", created_at=T0 + 100))
    expected = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)

    seen: list[RecordingRow] = []
    sizes = []
    cursor = None
    while True:
        page, cursor = await store.list("p1", page_size=4, cursor=cursor)
        seen += page
        sizes.append(len(page))
        if cursor is None:
            break
    assert sizes == [4, 4, 1]
    assert [r.id for r in seen] == [r.id for r in expected]
    assert await store.list("nobody", page_size=10) == ([], None)
    page, cursor = await store.list("p1", page_size=9)
    assert len(page) == 9 and cursor is None  # an exact fit has no next page
    assert page == expected  # every field read back as written


async def test_list_filters(store: RecordingStore) -> None:
    kept = make_row(state="finished", format="mp3", channels=2, created_at=T0 + 5,
                    call_id="call-x")
    await store.add(kept)
    await store.add(make_row(state="finished", format="wav", created_at=T0 + 5))
    await store.add(make_row(state="recording", format="mp3", channels=2, created_at=T0 + 6))
    await store.add(make_row(state="finished", format="mp3", channels=2, created_at=T0 + 9))
    where = RecordingFilter(state="finished", format="mp3", channels=2, since=T0 + 5,
                            until=T0 + 6)
    assert await store.list("p1", page_size=10, where=where) == ([kept], None)
    assert (await store.list("p1", page_size=10, where=RecordingFilter(search="call-x")))[0] \
        == [kept]


async def test_list_rejects_bad_arguments(store: RecordingStore) -> None:
    with pytest.raises(ValueError):
        await store.list("p1", page_size=0)
    for bad in ("garbage!", "e30", encode_cursor(T0, "x")[:-3], "WyJ4IiwxXQ"):
        with pytest.raises(ValueError):
            await store.list("p1", page_size=5, cursor=bad)


def test_cursor_roundtrip() -> None:
    token = encode_cursor(T0, "ab" * 16)
    assert decode_cursor(token) == (T0, "ab" * 16)
    assert "=" not in token and "/" not in token and "+" not in token


async def test_delete(store: RecordingStore) -> None:
    row = make_row()
    await store.add(row)
    assert await store.delete(row.id)
    assert await store.get(row.id) is None
    assert not await store.delete(row.id)


async def test_unfinished(store: RecordingStore) -> None:
    states = ["recording", "paused", "finished", "no_input", "error", "recording"]
    rows = [make_row(created_at=T0 + i, state=s) for i, s in enumerate(states)]
    for row in rows:
        await store.add(row)
    assert [r.id for r in await store.unfinished()] == [rows[0].id, rows[1].id, rows[5].id]


async def test_postgres_migrations_apply_once_and_refuse_a_newer_schema(
        postgres_url: str) -> None:
    first = await open_database(postgres_url)  # an empty database: every migration
    try:
        async with first.connection() as conn:
            cursor = await conn.execute("SELECT version FROM schema_version ORDER BY version")
            assert [v for (v,) in await cursor.fetchall()] == \
                [m.version for m in migrations()] == [1, 2, 3]
    finally:
        await first.close()
    second: Database = await open_database(postgres_url)  # nothing left to apply
    try:
        async with second.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM schema_version")
            assert (await cursor.fetchone()) == (3,)
            await conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'x')")
    finally:
        await second.close()
    with pytest.raises(RuntimeError, match="newer"):
        await open_database(postgres_url)


async def test_persists_with_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "recordings.db"
    first = SqliteRecordingStore(path)
    row = make_row()
    await first.add(row)
    await first.close()
    again: RecordingStore = SqliteRecordingStore(path)
    assert await again.get(row.id) == row
    await again.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteRecordingStore(path)


async def test_sqlite_concurrent_use_from_threads(tmp_path: Path) -> None:
    store = SqliteRecordingStore(tmp_path / "recordings.db")
    ids: list[str] = []
    lock = threading.Lock()

    async def steps(n: int, i: int) -> str:
        row = make_row(created_at=T0 + n * 1000 + i)
        await store.add(row)
        await store.update(row.id, state="finished", size=i)
        assert await store.get(row.id) is not None
        return row.id

    def work(n: int) -> None:
        for i in range(40):
            rec_id = asyncio.run(steps(n, i))
            with lock:
                ids.append(rec_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    page, cursor = await store.list("p1", page_size=1000)
    assert cursor is None and sorted(r.id for r in page) == sorted(ids)
    assert all(r.state == "finished" for r in page)
    await store.close()


def test_to_api() -> None:
    row = make_row(state="finished", duration=18.2, size=298284, end_time=T0 + 19.3,
                   parties=BRIDGED)
    api = row.to_api()  # SignalWire's REST shape: who the channels hold is the console's
    assert set(api) == {"id", "call_id", "control_id", "state", "format", "channels",
                        "direction", "duration", "size", "url", "created_at", "start_time",
                        "end_time"}
    assert api["created_at"] == "2026-09-17T13:17:16.217Z"
    assert api["start_time"] == "2026-09-17T13:17:16.467Z"
    assert api["end_time"] == "2026-09-17T13:17:35.517Z"
    assert (api["duration"], api["size"]) == (18.2, 298284)
    failed = make_row(state="error", reason="write failed: No space left on device")
    assert failed.to_api()["reason"] == "write failed: No space left on device"
    assert failed.to_api()["end_time"] is None


def test_ids_are_unguessable() -> None:
    ids = {make_row().id for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


# The schema a version-1 callbox wrote (before recordings could move to object storage).
SCHEMA_V1 = """
CREATE TABLE recordings (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL, call_id TEXT NOT NULL,
    control_id TEXT NOT NULL, state TEXT NOT NULL, format TEXT NOT NULL,
    channels INTEGER NOT NULL, direction TEXT NOT NULL, duration REAL, size INTEGER,
    url TEXT NOT NULL, path TEXT NOT NULL, created_at REAL NOT NULL, start_time REAL,
    end_time REAL, reason TEXT, status_url TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX recordings_by_project ON recordings (project_id, created_at DESC, id DESC);
CREATE INDEX recordings_by_state ON recordings (state);
PRAGMA user_version = 1;
"""


def write_old_database(path: Path, schema: str, insert: str) -> None:
    """A database as an older callbox left it: its schema and one row."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute(insert)
    conn.commit()
    conn.close()


async def test_a_version_1_database_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "recordings.db"
    write_old_database(path, SCHEMA_V1,
        "INSERT INTO recordings (id, project_id, call_id, control_id, state, format, channels,"
        " direction, duration, size, url, path, created_at) VALUES"
        " ('a' || hex(randomblob(15)), 'p1', 'c1', 'ctl', 'finished', 'wav', 1, 'speak', 1.5,"
        " 24044, 'https://h/recordings/x.wav', '/data/recordings/x.wav', 1.0)")

    store = SqliteRecordingStore(path)
    try:
        (old,), _ = await store.list("p1", page_size=10)
        assert (old.state, old.size, old.location) == ("finished", 24044, "")  # still local
        assert await store.update(old.id, location=f"{old.id}.wav")
        assert (await store.get(old.id)).location == f"{old.id}.wav"  # type: ignore[union-attr]
        row = make_row(location="0123.wav")
        await store.add(row)
        assert await store.get(row.id) == row
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    conn.close()


# The schema a version-2 callbox wrote (before it stored who a recording's channels hold).
SCHEMA_V2 = SCHEMA_V1.replace("PRAGMA user_version = 1;", """
ALTER TABLE recordings ADD COLUMN location TEXT NOT NULL DEFAULT '';
PRAGMA user_version = 2;""")


async def test_a_version_2_database_migrates_in_place_and_stores_parties(
        tmp_path: Path) -> None:
    path = tmp_path / "recordings.db"
    write_old_database(path, SCHEMA_V2,
        "INSERT INTO recordings (id, project_id, call_id, control_id, state, format, channels,"
        " direction, duration, size, url, path, created_at, location) VALUES"
        " ('old', 'p1', 'c1', 'ctl', 'finished', 'wav', 2, 'both', 1.5, 48044,"
        " 'https://h/recordings/old.wav', '/data/recordings/old.wav', 1.0, 'old.wav')")

    store = SqliteRecordingStore(path)
    try:
        old = await store.get("old")
        assert old is not None and (old.size, old.location, old.parties) == \
            (48044, "old.wav", None)  # kept; nobody noted who it holds
        assert await store.update("old", parties=BRIDGED)
        assert (await store.get("old")).parties == BRIDGED  # type: ignore[union-attr]
        row = make_row(state="finished", parties=BRIDGED)
        await store.add(row)
        assert await store.get(row.id) == row
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT parties FROM recordings WHERE id = 'old'").fetchone()[0] \
        is not None
    conn.close()
    again = SqliteRecordingStore(path)  # opened again: nothing left to migrate
    try:
        assert (await again.get("old")).parties == BRIDGED  # type: ignore[union-attr]
    finally:
        await again.close()
