"""Recordings moved to S3 object storage, against a real S3 server (SeaweedFS's `weed`).

Calls come from our own UAC (`place_call`) playing a 700 Hz tone; the platform records them
through an SWML route with `[storage] s3_*` pointing at SeaweedFS, whose identities file makes it
check every request's signature. The objects are read back with the platform's own S3 client
and decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from tests.integration.conftest import FAST_TIMERS, console_json, https, make_config, swml
from tests.peers import audio
from tests.peers.poll import until, until_async
from tests.peers.seaweedfs import SeaweedFS, fetch_object, start_seaweedfs

from callbox.caller import place_call
from callbox.server.app import Platform
from callbox.server.call import Call
from callbox.server.config import Project, Route
from callbox.server.recording.engine import Recording
from callbox.server.storage.s3 import ObjectStore
from callbox.server.storage.uploads import RecordingUploads
from callbox.server.store.recordings import RecordingRow, SqliteRecordingStore

pytestmark = pytest.mark.peers

PROJECT, TOKEN = "p1", "t1"
AUTH = {"Authorization": aiohttp.encode_basic_auth(PROJECT, TOKEN)}
CALLER_HZ = 700
ROUTES = [Route("rec", swml=swml(
    {"answer": {}},
    {"record_call": {"format": "wav", "stereo": False, "direction": "speak"}},
    {"sleep": 60_000}))]
UPLOAD_TIMEOUT = 60.0  # seconds (weed is slow to come back on a loaded machine)


@contextlib.asynccontextmanager
async def s3_platform(tmp_path: Path, s3: SeaweedFS, *,
                      secret_key: str | None = None) -> AsyncIterator[Platform]:
    """A platform on ephemeral ports whose recordings go to `s3` (data in tmp_path/data)."""
    config = make_config(tmp_path, ROUTES)
    config.projects = [Project(PROJECT, TOKEN)]
    settings = s3.settings(secret_key=secret_key)
    storage = config.storage
    storage.s3_endpoint, storage.s3_bucket = settings.endpoint, settings.bucket
    storage.s3_access_key, storage.s3_secret_key = settings.access_key, settings.secret_key
    storage.s3_retry_seconds = 0.2
    platform = Platform(config, sip_timers=FAST_TIMERS)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop()


async def record_a_call(tmp_path: Path, platform: Platform) -> Recording:
    """A 3 s call with a 2 s tone; returns its recording once ended."""
    calls: list[Call] = []
    platform.call_observers.append(calls.append)
    tone = tmp_path / "caller.wav"
    audio.write_wav(tone, audio.concat(audio.tone(CALLER_HZ, 2.0, dbfs=-12), audio.silence(2)))
    assert platform.listening is not None
    uri = f"sip:rec@127.0.0.1:{platform.listening.sip[1]}"
    result = await place_call(uri, play=str(tone), hangup_after=3.0)
    assert result.status == 200
    await until(lambda: bool(calls and calls[0].recordings), what="the recording started")
    (recording,) = calls[0].recordings
    assert isinstance(recording, Recording)
    await asyncio.wait_for(asyncio.shield(recording.done), 30)
    assert recording.state == "finished" and recording.size
    return recording


async def row_of(platform: Platform, recording_id: str) -> RecordingRow:
    assert platform.recordings is not None
    row = await platform.recordings.get(recording_id)
    assert row is not None
    return row


async def uploaded(platform: Platform, recording: Recording) -> RecordingRow:
    """The row once its upload is complete: `location` stored, then the local copy removed."""
    async def done() -> bool:
        return bool((await row_of(platform, recording.id)).location) \
            and not recording.path.exists()

    await until_async(done, UPLOAD_TIMEOUT, what=f"recording {recording.id} uploaded")
    return await row_of(platform, recording.id)


async def object_exists(s3: SeaweedFS, key: str) -> bool:
    objects = ObjectStore(s3.settings())
    await objects.open()
    try:
        return await objects.head(key) is not None
    finally:
        await objects.close()


def assert_holds_the_tone(tmp_path: Path, wav: bytes) -> None:
    path = tmp_path / f"fetched-{secrets.token_hex(4)}.wav"
    path.write_bytes(wav)
    samples, rate = audio.decode_audio(path)
    assert rate == 8000 and samples.ndim == 1
    head = samples[4000:12000]  # 0.5-1.5 s: the caller's tone
    assert audio.tone_level_dbfs(head, CALLER_HZ) > -16
    assert audio.rms_dbfs(samples[int(2.4 * 8000):int(2.8 * 8000)]) < -45  # then silence


async def console_peaks(platform: Platform, recording_id: str, bins: int) -> list[list[float]]:
    """The console's waveform peaks of a recording, signed in as the project."""
    body = await console_json(platform, f"recordings/{recording_id}/peaks?bins={bins}",
                              project=PROJECT, token=TOKEN)
    channels: list[list[float]] = body["channels"]
    return channels


async def download(platform: Platform, url: str,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, \
            http.get(url, ssl=https(platform), headers=headers or {}) as response:
        return response.status, dict(response.headers), await response.read()


def upload_errors(caplog: pytest.LogCaptureFixture, recording_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "callbox.server.storage.uploads" and r.levelno >= logging.ERROR
            and recording_id in r.getMessage()]


# -- the normal path ------------------------------------------------------------------------

async def test_a_recording_moves_to_the_bucket_and_is_still_served(tmp_path: Path) -> None:
    async with start_seaweedfs() as s3, s3_platform(tmp_path, s3) as platform:
        recording = await record_a_call(tmp_path, platform)
        row = await uploaded(platform, recording)
        assert row.location == f"{recording.id}.wav"
        assert not recording.path.exists()  # the local copy is gone once verified

        stored = await fetch_object(s3.settings(), row.location)
        assert len(stored) == row.size
        assert_holds_the_tone(tmp_path, stored)

        # the console draws its waveform from the object: the tone, then the silence
        (peaks,) = await console_peaks(platform, recording.id, bins=30)
        assert min(peaks[2:18]) > 0.15 and max(peaks[-4:]) < 0.01, peaks

        # the capability url still serves it (proxied), whole and by range
        status, headers, body = await download(platform, recording.url)
        assert status == 200 and body == stored
        assert headers["Content-Type"] == "audio/wav" and headers["Accept-Ranges"] == "bytes"
        status, headers, body = await download(platform, recording.url,
                                               {"Range": "bytes=1000-1999"})
        assert status == 206 and body == stored[1000:2000]
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(stored)}"
        status, headers, body = await download(platform, recording.url, {"Range": "bytes=-100"})
        assert status == 206 and body == stored[-100:]
        status, headers, _ = await download(platform, recording.url,
                                            {"Range": f"bytes={len(stored) + 10}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(stored)}"
        async with aiohttp.ClientSession() as http, \
                http.head(recording.url, ssl=https(platform)) as response:
            assert response.status == 200 and response.content_length == len(stored)

        # REST DELETE removes the object and the row
        api = f"{platform.config.http.public_url}/api/relay/rest/recordings/{recording.id}"
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.delete(api, ssl=https(platform)) as response:
                assert response.status == 204
            async with http.get(api, ssl=https(platform)) as response:
                assert response.status == 404
        assert not await object_exists(s3, row.location)
        status, _, _ = await download(platform, recording.url)
        assert status == 404


# -- failures: nothing is lost --------------------------------------------------------------

async def test_s3_down_keeps_the_recording_local_until_it_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="callbox.server.storage.uploads")
    async with start_seaweedfs() as s3, s3_platform(tmp_path, s3) as platform:
        call = asyncio.create_task(record_a_call(tmp_path, platform))
        assert platform.recorder is not None
        await until(lambda: bool(platform.recorder.active), 20,  # type: ignore[union-attr]
                    what="recording")
        await s3.stop()  # down while the recording runs and finishes
        recording = await call
        await until(lambda: bool(upload_errors(caplog, recording.id)), 30,
                    what="the failed upload logged")
        assert "unreachable" in upload_errors(caplog, recording.id)[0]
        assert recording.path.exists() and (await row_of(platform, recording.id)).location == ""
        local = recording.path.read_bytes()
        status, _, body = await download(platform, recording.url)  # served from disk
        assert status == 200 and body == local

        await s3.start()  # back, objects and all: the retries get it there
        row = await uploaded(platform, recording)
        assert not recording.path.exists()
        assert await fetch_object(s3.settings(), row.location) == local
        assert platform.uploads is not None
        uploads = platform.uploads  # it forgets the upload once that returned (a turn later)
        await until(lambda: recording.id not in uploads.pending, 10, what="the upload forgotten")


async def test_refused_credentials_keep_it_local_and_a_restart_uploads_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="callbox.server.storage.uploads")
    async with start_seaweedfs() as s3:
        async with s3_platform(tmp_path, s3, secret_key="not-the-secret") as platform:
            recording = await record_a_call(tmp_path, platform)
            await until(lambda: bool(upload_errors(caplog, recording.id)), 30,
                        what="the refused upload logged")
            error = upload_errors(caplog, recording.id)[0]
            assert "refused the credentials (SignatureDoesNotMatch)" in error
            assert "storage.s3_secret_key" in error
            assert recording.path.exists() and (await row_of(platform, recording.id)).location == ""
            local = recording.path.read_bytes()
            status, _, body = await download(platform, recording.url)
            assert status == 200 and body == local
        assert recording.path.exists()  # stopped with the upload not done: still on disk

        # the same node restarted with the right secret uploads what it left behind
        async with s3_platform(tmp_path, s3) as platform:
            row = await uploaded(platform, recording)
            assert not recording.path.exists()
            stored = await fetch_object(s3.settings(), row.location)
            assert stored == local
            assert_holds_the_tone(tmp_path, stored)
            url = f"{platform.config.http.public_url}/recordings/{recording.id}.wav"
            status, _, body = await download(platform, url)  # this node's url: another port
            assert status == 200 and body == local


# -- a big file ---------------------------------------------------------------------------

async def test_a_big_file_goes_up_in_parts_and_is_verified(tmp_path: Path) -> None:
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    store = SqliteRecordingStore(tmp_path / "recordings.db")
    async with start_seaweedfs() as s3:
        objects = ObjectStore(s3.settings())
        await objects.open()
        uploads = RecordingUploads(objects, store, rec_dir, retry_seconds=0.2)
        await uploads.start()
        try:
            rec_id = secrets.token_hex(16)
            path = rec_dir / f"{rec_id}.wav"
            samples = np.random.default_rng(7).integers(-9000, 9000, 10_000_000, dtype=np.int16)
            audio.write_wav(path, samples)  # 20 MB: over the multipart threshold
            local = path.read_bytes()
            assert len(local) > uploads.multipart_threshold
            await store.add(RecordingRow(
                id=rec_id, project_id=PROJECT, call_id="c1", control_id="ctl",
                state="finished", format="wav", channels=1, direction="speak", duration=1250.0,
                size=len(local), url=f"https://h/recordings/{rec_id}.wav", path=str(path),
                created_at=1.0, start_time=1.0, end_time=1251.0, reason=None, status_url=""))

            uploads.submit(rec_id)
            async def uploaded() -> bool:
                row = await store.get(rec_id)
                return row is not None and bool(row.location) and not path.exists()

            await until_async(uploaded, UPLOAD_TIMEOUT, what="the big file uploaded")
            assert not path.exists()
            info = await objects.head(f"{rec_id}.wav")
            assert info is not None and info.size == len(local)
            parts = -(-len(local) // uploads.part_bytes)
            assert parts == 3 and info.etag.endswith(f"-{parts}")  # a multipart object
            stored = await fetch_object(s3.settings(), f"{rec_id}.wav")
            assert hashlib.sha256(stored).digest() == hashlib.sha256(local).digest()
        finally:
            await uploads.close()
            await store.close()
