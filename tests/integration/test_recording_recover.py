"""Start-up repair: what a crash or a full disk left in the data directory.

The engine is started on a data directory prepared like the one a crash leaves: real rows in its
SQLite store, real files written by the real writers, and a real webhook receiver.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path

import numpy as np
from tests.integration.test_recording_faults import webhook_receiver

from callbox.server.recording.engine import RecordingEngine
from callbox.server.recording.writers import WavWriter, part_path, wav_header
from callbox.server.store import RecordingRow
from callbox.wire.recording import RecordParams


def row_for(engine: RecordingEngine, status_url: str = "") -> RecordingRow:
    rec_id = secrets.token_hex(16)
    params = RecordParams.parse({"format": "wav", "status_url": status_url}, "swml_record_call")
    return RecordingRow(
        id=rec_id, project_id="p1", call_id="c1", control_id="ctl", state="recording",
        format="wav", channels=1, direction="both", duration=None, size=None,
        url=f"https://h/recordings/{rec_id}.wav",
        path=str(engine.recordings_dir / f"{rec_id}.wav"), created_at=time.time(),
        start_time=time.time(), end_time=None, reason=None, status_url=status_url,
        params=params.as_run(),
    )


def write_wav(path: Path, seconds: float) -> None:
    """A finished WAV, written by the real writer."""
    writer = WavWriter(path, 1)
    writer.write(np.full(int(seconds * 8000), 1000, np.int16))
    writer.close()


def write_crashed_part(path: Path, seconds: float) -> None:
    """A .part as a crash leaves it: audio after a header that still says 0 bytes."""
    path.write_bytes(wav_header(1, 0) + np.full(int(seconds * 8000), 1000, "<i2").tobytes())


async def test_a_complete_file_whose_end_was_not_stored_is_reported_with_its_audio(tmp_path):
    """A full disk let the file finish but not its row: after a restart the row said
    "lost in a crash before any audio" while a 7 s file was there to download."""
    async with webhook_receiver(fail_first=0) as (hook_url, received):
        engine = RecordingEngine(data_dir=tmp_path, public_url="https://h", node_id="n")
        row = row_for(engine, hook_url)
        await engine.store.add(row)
        write_wav(Path(row.path), 7.0)
        recovered = await engine.start()
        try:
            stored = await engine.store.get(row.id)
            assert stored is not None
            assert stored.state == "error"
            assert stored.duration == 7.0 and stored.size == 44 + 7 * 16000
            assert stored.reason is not None and "could not be stored" in stored.reason
            assert "before any audio" not in stored.reason
            assert [r.id for r in recovered] == [row.id]
            assert await engine.webhooks.queue.flush(timeout=10)
        finally:
            await engine.close()
    (body, _headers), = received
    params = json.loads(body)["params"]
    assert params["state"] == "error" and params["duration"] == 7.0
    assert params["url"] == row.url and params["reason"] == stored.reason
    assert Path(row.path).stat().st_size == 44 + 7 * 16000  # the audio is kept


async def test_an_unrepairable_part_is_removed_with_a_log_line(tmp_path, caplog):
    """A 0-byte .part (a start that failed after creating its file) failed to repair at
    every start-up and was never removed."""
    engine = RecordingEngine(data_dir=tmp_path, public_url="https://h", node_id="n")
    row = row_for(engine)
    await engine.store.add(row)
    part = part_path(Path(row.path))
    part.write_bytes(b"")
    stray = engine.recordings_dir / f"{secrets.token_hex(16)}.wav.part"
    stray.write_bytes(b"not a wav header")
    with caplog.at_level(logging.WARNING):
        await engine.start()
    try:
        assert not part.exists() and not stray.exists()
        assert f"removed {part}" in caplog.text and f"removed {stray}" in caplog.text
        stored = await engine.store.get(row.id)
        assert stored is not None and stored.state == "error"
        assert stored.reason is not None and "could not be repaired" in stored.reason
        assert await engine.store.unfinished() == []
    finally:
        await engine.close()
    again = RecordingEngine(data_dir=tmp_path, public_url="https://h", node_id="n")
    try:
        assert await again.start() == []  # nothing left to repair at the next start
    finally:
        await again.close()


async def test_a_crashed_part_is_still_repaired_and_finished(tmp_path):
    engine = RecordingEngine(data_dir=tmp_path, public_url="https://h", node_id="n")
    row = row_for(engine)
    await engine.store.add(row)
    write_crashed_part(part_path(Path(row.path)), 3.0)
    (recovered,) = await engine.start()
    try:
        assert (recovered.id, recovered.state, recovered.duration) == (row.id, "finished", 3.0)
        assert Path(row.path).exists() and not part_path(Path(row.path)).exists()
    finally:
        await engine.close()
