"""Moving finished recordings to the object storage: a queue, retries, verified uploads.

A recording streams to local disk while it runs (crash repair works as without S3); once it has
ended with its file kept, `RecordingUploads.submit` queues it. Each upload:

1. reads the file off the event loop: whole, or in parts when it is bigger than the multipart
   threshold (one part in memory at a time);
2. stores the object, every body checked by S3 against its Content-MD5;
3. verifies it with HEAD: the size, and the ETag (the file's MD5 for a single-part upload;
   for a multipart one, the MD5 of the parts' MD5s followed by "-<number of parts>");
4. stores the object key as the row's `location`, then removes the local copy.

A failure (S3 unreachable, credentials refused) keeps the local file and tries again later: the
delay doubles from `retry_seconds` up to `MAX_BACKOFF_FACTOR` times it. At start, every ended
recording still on local disk is queued: a node that restarts uploads what it left behind.
`close()` stops at once; what was not uploaded yet stays on disk for the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

from callbox.server.storage.s3 import ObjectStore, ObjectStoreError, S3Settings
from callbox.server.store.recordings import RecordingRow, RecordingStore

log = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
MULTIPART_THRESHOLD: Final = 16 * MIB  # bigger files go up in parts
PART_BYTES: Final = 8 * MIB  # S3 wants parts of at least 5 MiB (but the last)
MAX_BACKOFF_FACTOR: Final = 30
WORKERS: Final = 2  # uploads at once

_FILE_NAME: Final = re.compile(r"([0-9a-f]{32})\.(wav|mp3)")
T = TypeVar("T")


def object_key(row: RecordingRow) -> str:
    """The key a recording's audio has in the bucket."""
    return f"{row.id}.{row.format}"


def local_file(row: RecordingRow, recordings_dir: Path) -> Path | None:
    """The recording's local file, only when the stored path is `<id>.<format>` in
    `recordings_dir` (a row never points the uploader at another file)."""
    path = Path(row.path)
    if path.name != object_key(row) or _FILE_NAME.fullmatch(path.name) is None:
        return None
    if path.parent.resolve() != recordings_dir.resolve():
        return None
    return path


class RecordingUploads:
    """The upload queue of one node: `start()`, `submit(id)` for each ended recording,
    `close()`."""

    def __init__(self, objects: ObjectStore, store: RecordingStore, recordings_dir: Path, *,
                 retry_seconds: float, multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_bytes: int = PART_BYTES) -> None:
        self.objects = objects
        self.store = store
        self.recordings_dir = recordings_dir
        self.retry_seconds = retry_seconds
        self.multipart_threshold = multipart_threshold
        self.part_bytes = part_bytes
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()  # queued, uploading or waiting to be retried
        self._failures: dict[str, tuple[int, str]] = {}  # id -> (failures, last message)
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._workers: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> frozenset[str]:
        """Recordings not uploaded yet (queued, uploading or waiting to be retried)."""
        return frozenset(self._pending)

    async def start(self) -> int:
        """Queue what is left on local disk, start the workers; returns how many were
        queued."""
        names = await _run_blocking(_file_names, self.recordings_dir)
        queued = 0
        for name in names:
            match = _FILE_NAME.fullmatch(name)
            row = await self.store.get(match[1]) if match else None
            if row is not None and not row.is_active and object_key(row) == name:
                self.submit(row.id)
                queued += 1
        if queued:
            log.info("%d recording(s) left on local disk are queued for upload", queued)
        self._workers = [asyncio.create_task(self._work(), name=f"recording-upload-{n}")
                         for n in range(WORKERS)]
        return queued

    def submit(self, recording_id: str) -> None:
        """Upload this ended recording (again, when it is already queued: nothing)."""
        if recording_id in self._pending:
            return
        self._pending.add(recording_id)
        self._queue.put_nowait(recording_id)

    async def close(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self.objects.close()

    # -- the workers ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            recording_id = await self._queue.get()
            try:
                await self.upload(recording_id)
            except (ObjectStoreError, OSError) as exc:
                self._retry_later(recording_id, str(exc))
            except Exception as exc:
                log.exception("recording %s: upload failed", recording_id)
                self._retry_later(recording_id, repr(exc))
            else:
                self._done(recording_id)

    def _done(self, recording_id: str) -> None:
        self._pending.discard(recording_id)
        failures = self._failures.pop(recording_id, None)
        if failures is not None:
            log.info("recording %s: uploaded after %d failed attempt(s)", recording_id,
                     failures[0])

    def _retry_later(self, recording_id: str, message: str) -> None:
        count, last = self._failures.get(recording_id, (0, ""))
        count += 1
        self._failures[recording_id] = (count, message)
        delay = self.retry_delay(count)
        level = logging.ERROR if message != last else logging.DEBUG  # no flood while S3 is down
        log.log(level, "recording %s: upload failed, its file stays on local disk; "
                "trying again in %.1f s: %s", recording_id, delay, message)
        self._retries[recording_id] = asyncio.get_running_loop().call_later(
            delay, self._requeue, recording_id)

    def retry_delay(self, failures: int) -> float:
        """Seconds before the next try after `failures` failed ones (1, 2, ...)."""
        return min(self.retry_seconds * 2.0 ** (failures - 1),
                   self.retry_seconds * MAX_BACKOFF_FACTOR)

    def _requeue(self, recording_id: str) -> None:
        self._retries.pop(recording_id, None)
        self._queue.put_nowait(recording_id)

    # -- one upload -------------------------------------------------------------------------

    async def upload(self, recording_id: str) -> bool:
        """Upload, verify, record the location, remove the local copy. False when there is
        nothing to upload (no row, still running, no local file). Raises on failure."""
        row = await self.store.get(recording_id)
        if row is None or row.is_active:  # deleted; or its end is not stored (recover() will)
            return False
        path = local_file(row, self.recordings_dir)
        if path is None:
            return False
        key = object_key(row)
        try:
            size = (await _run_blocking(path.stat)).st_size
            if size > self.multipart_threshold:
                part_md5s: list[bytes] = []
                await self.objects.put_multipart(key, self._parts(path, part_md5s))
                combined = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
                etag = f"{combined}-{len(part_md5s)}"
            else:
                data, md5 = await _run_blocking(_read_with_md5, path)
                await self.objects.put(key, data, md5)
                etag = md5.hex()
        except FileNotFoundError:  # deleted (REST) while we were at it
            return False
        await self._verify(key, size, etag)
        if not await self.store.update(row.id, location=key):  # deleted while it was uploading
            await self.objects.delete(key)
            return False
        await _run_blocking(path.unlink, True)
        log.debug("recording %s: moved to bucket %r as %s (%d bytes)", row.id,
                 self.objects.bucket, key, size)
        return True

    async def _verify(self, key: str, size: int, etag: str) -> None:
        """HEAD the object: it must have the file's size and the ETag its MD5s imply."""
        info = await self.objects.head(key)
        if info is None:
            raise ObjectStoreError(f"uploaded {key}, but it is not in the bucket")
        if info.size != size or info.etag != etag:
            raise ObjectStoreError(f"uploaded {key}, but the bucket holds {info.size} bytes "
                                   f"with ETag {info.etag!r}, not {size} bytes with {etag!r}")

    async def _parts(self, path: Path, md5s: list[bytes]) -> AsyncIterator[tuple[bytes, bytes]]:
        """The file in parts of `part_bytes`, each with its MD5 (also appended to `md5s`)."""
        file = await _run_blocking(path.open, "rb")
        try:
            while True:
                data, md5 = await _run_blocking(_read_part, file, self.part_bytes)
                if not data:
                    return
                md5s.append(md5)
                yield data, md5
        finally:
            await _run_blocking(file.close)


async def open_uploads(settings: S3Settings | None, store: RecordingStore,
                       recordings_dir: Path, *, retry_seconds: float) -> RecordingUploads | None:
    """The upload queue for `settings`, started (None when no S3 endpoint is configured)."""
    if settings is None:
        return None
    objects = ObjectStore(settings)
    await objects.open()
    uploads = RecordingUploads(objects, store, recordings_dir, retry_seconds=retry_seconds)
    await uploads.start()
    return uploads


async def _run_blocking(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _file_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.is_file())


def _read_with_md5(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def _read_part(file: BinaryIO, size: int) -> tuple[bytes, bytes]:
    data = file.read(size)
    return data, hashlib.md5(data, usedforsecurity=False).digest()
