"""The upload queue's rules that need no S3 server: which file it may touch, when it waits,
and what it leaves alone (the uploads themselves: tests/integration/test_recordings_s3.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callbox.server.storage.s3 import ObjectStore, S3Settings
from callbox.server.storage.uploads import RecordingUploads, local_file, object_key
from callbox.server.store.recordings import RecordingRow, SqliteRecordingStore

SETTINGS = S3Settings("http://127.0.0.1:9", "recordings", "AK", "SK", "us-east-1")


def row(path: str, *, rec_id: str | None = None, state: str = "finished",
        fmt: str = "wav") -> RecordingRow:
    return RecordingRow(
        id=rec_id or secrets.token_hex(16), project_id="p1", call_id="c1", control_id="ctl",
        state=state, format=fmt, channels=1, direction="speak", duration=1.0, size=44,
        url="https://h/recordings/x.wav", path=path, created_at=1.0, start_time=1.0,
        end_time=2.0, reason=None, status_url="")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteRecordingStore]:
    opened = SqliteRecordingStore(tmp_path / "recordings.db")
    yield opened
    await opened.close()


def test_only_the_rows_own_file_in_the_recordings_dir(tmp_path: Path) -> None:
    rec_dir = tmp_path / "recordings"
    rec_id = secrets.token_hex(16)
    good = row(str(rec_dir / f"{rec_id}.mp3"), rec_id=rec_id, fmt="mp3")
    assert object_key(good) == f"{rec_id}.mp3"
    assert local_file(good, rec_dir) == rec_dir / f"{rec_id}.mp3"
    for path in (tmp_path / f"{rec_id}.mp3",  # another directory
                 rec_dir / "sub" / ".." / ".." / f"{rec_id}.mp3",
                 rec_dir / f"{rec_id}.wav",  # not its format
                 rec_dir / f"{secrets.token_hex(16)}.mp3"):  # another recording's
        assert local_file(row(str(path), rec_id=rec_id, fmt="mp3"), rec_dir) is None


async def test_retries_back_off_doubling_up_to_30_times_the_first_delay(tmp_path: Path,
                                                                  store: SqliteRecordingStore
                                                                  ) -> None:
    uploads = RecordingUploads(ObjectStore(SETTINGS), store, tmp_path, retry_seconds=0.2)
    delays = [uploads.retry_delay(n) for n in range(1, 9)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.0, 6.0, 6.0])


async def test_nothing_to_upload_leaves_everything_alone(tmp_path: Path,
                                                        store: SqliteRecordingStore) -> None:
    """A running recording (or one whose end was not stored: recovery's), a deleted one and one
    whose file is gone are not uploaded; no S3 request is made (the client is not even open)."""
    uploads = RecordingUploads(ObjectStore(SETTINGS), store, tmp_path, retry_seconds=1.0)
    running = row("", state="recording")
    running.path = str(tmp_path / f"{running.id}.wav")
    Path(running.path).write_bytes(b"RIFF")
    await store.add(running)
    gone = row("")
    gone.path = str(tmp_path / f"{gone.id}.wav")
    await store.add(gone)
    assert not await uploads.upload(running.id)
    assert not await uploads.upload(secrets.token_hex(16))
    assert not await uploads.upload(gone.id)
    assert Path(running.path).read_bytes() == b"RIFF"
    assert (await store.get(running.id)).location == ""  # type: ignore[union-attr]
