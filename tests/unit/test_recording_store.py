"""The SQLite recording metadata store."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from callbox.server.store import RecordingRow, RecordingStore, SqliteRecordingStore
from callbox.server.store.recordings import SCHEMA_VERSION, decode_cursor, encode_cursor

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRecordingStore]:
    s = SqliteRecordingStore(tmp_path / "db" / "recordings.db")
    yield s
    s.close()


def test_add_get_roundtrip(store: SqliteRecordingStore) -> None:
    row = make_row(status_url="https://hooks.example/rec")
    store.add(row)
    assert store.get(row.id) == row
    assert store.get(secrets.token_hex(16)) is None
    with pytest.raises(sqlite3.IntegrityError):
        store.add(row)


def test_update(store: SqliteRecordingStore) -> None:
    row = make_row()
    store.add(row)
    assert store.update(row.id, state="paused")
    assert store.update(row.id, state="finished", duration=18.2, size=298284,
                        end_time=T0 + 19, params={"format": "wav", "stereo": True})
    got = store.get(row.id)
    assert got is not None
    assert (got.state, got.duration, got.size, got.end_time) == ("finished", 18.2, 298284, T0 + 19)
    assert got.params == {"format": "wav", "stereo": True}
    assert not store.update(secrets.token_hex(16), state="finished")
    with pytest.raises(ValueError, match="colour"):
        store.update(row.id, colour="blue")
    with pytest.raises(ValueError, match="id"):
        store.update(row.id, id="x")


def test_list_pages_newest_first(store: SqliteRecordingStore) -> None:
    rows = [make_row(created_at=T0 + i) for i in range(7)]
    # Two rows with the same created_at: ordered by id, none lost or repeated across pages.
    rows += [make_row(created_at=T0 + 3), make_row(created_at=T0 + 3)]
    for row in rows:
        store.add(row)
    store.add(make_row(project_id="p2", created_at=T0 + 100))
    expected = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)

    seen: list[RecordingRow] = []
    sizes = []
    cursor = None
    while True:
        page, cursor = store.list("p1", page_size=4, cursor=cursor)
        seen += page
        sizes.append(len(page))
        if cursor is None:
            break
    assert sizes == [4, 4, 1]
    assert [r.id for r in seen] == [r.id for r in expected]
    assert store.list("nobody", page_size=10) == ([], None)
    page, cursor = store.list("p1", page_size=9)
    assert len(page) == 9 and cursor is None  # an exact fit has no next page


def test_list_rejects_bad_arguments(store: SqliteRecordingStore) -> None:
    with pytest.raises(ValueError):
        store.list("p1", page_size=0)
    for bad in ("garbage!", "e30", encode_cursor(T0, "x")[:-3], "WyJ4IiwxXQ"):
        with pytest.raises(ValueError):
            store.list("p1", page_size=5, cursor=bad)


def test_cursor_roundtrip() -> None:
    token = encode_cursor(T0, "ab" * 16)
    assert decode_cursor(token) == (T0, "ab" * 16)
    assert "=" not in token and "/" not in token and "+" not in token


def test_delete(store: SqliteRecordingStore) -> None:
    row = make_row()
    store.add(row)
    assert store.delete(row.id)
    assert store.get(row.id) is None
    assert not store.delete(row.id)


def test_unfinished(store: SqliteRecordingStore) -> None:
    states = ["recording", "paused", "finished", "no_input", "error", "recording"]
    rows = [make_row(created_at=T0 + i, state=s) for i, s in enumerate(states)]
    for row in rows:
        store.add(row)
    assert [r.id for r in store.unfinished()] == [rows[0].id, rows[1].id, rows[5].id]


def test_persists_with_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "recordings.db"
    first = SqliteRecordingStore(path)
    row = make_row()
    first.add(row)
    first.close()
    again: RecordingStore = SqliteRecordingStore(path)
    assert again.get(row.id) == row
    again.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        SqliteRecordingStore(path)


def test_concurrent_use_from_threads(store: SqliteRecordingStore) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(40):
            row = make_row(created_at=T0 + n * 1000 + i)
            store.add(row)
            store.update(row.id, state="finished", size=i)
            assert store.get(row.id) is not None
            with lock:
                ids.append(row.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    page, cursor = store.list("p1", page_size=1000)
    assert cursor is None and sorted(r.id for r in page) == sorted(ids)
    assert all(r.state == "finished" for r in page)


def test_to_api() -> None:
    row = make_row(state="finished", duration=18.2, size=298284, end_time=T0 + 19.3)
    api = row.to_api()
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


def test_a_version_1_database_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "recordings.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    conn.execute(
        "INSERT INTO recordings (id, project_id, call_id, control_id, state, format, channels,"
        " direction, duration, size, url, path, created_at) VALUES"
        " ('a' || hex(randomblob(15)), 'p1', 'c1', 'ctl', 'finished', 'wav', 1, 'speak', 1.5,"
        " 24044, 'https://h/recordings/x.wav', '/data/recordings/x.wav', 1.0)")
    conn.commit()
    conn.close()

    store = SqliteRecordingStore(path)
    try:
        (old,), _ = store.list("p1", page_size=10)
        assert (old.state, old.size, old.location) == ("finished", 24044, "")  # still local
        assert store.update(old.id, location=f"{old.id}.wav")
        assert store.get(old.id).location == f"{old.id}.wav"  # type: ignore[union-attr]
        row = make_row(location="0123.wav")
        store.add(row)
        assert store.get(row.id) == row
    finally:
        store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
