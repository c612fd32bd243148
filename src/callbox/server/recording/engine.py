"""The recording engine: runs every recording of the platform.

A `Recording` taps its call's two streams (`speak`, `listen`) once per media tick, feeds the
sans-I/O `RecorderMachine`, and hands the frames it returns to ONE writer thread in batches, so
encoding and disk writes never block the event loop. The batches of every recording that
filled one during a tick go to the thread as one job (one hand-over and one completion
callback per tick, not one per recording). Opening and finishing files (fsync, rename) run on a
small separate pool: an fsync can take 100-200 ms on a busy disk (ext4 commits the journal with
everyone's dirty data), and behind it in the writer's queue every other recording's writes and
every other `finished` event would wait. Each state change becomes a
`calling.call.record` event for the call's listeners (SWML, RELAY) and, with `status_url`, a
signed webhook. The engine knows nothing of SIP, RELAY or SWML.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from callbox.server.call import Call, CallState
from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.sources import beep
from callbox.server.recording.machine import RecorderMachine, RecState
from callbox.server.recording.writers import AudioWriter, RecordingFull, open_writer, repair_partial
from callbox.server.store.recordings import RecordingRow, RecordingStore
from callbox.server.tasks import spawn
from callbox.server.webhooks import WebhookQueue
from callbox.wire.recording import (
    RECORD_EVENT,
    TERMINAL_STATES,
    RecordParams,
    record_event_params,
)

log = logging.getLogger(__name__)

# The tap stages STAGE_FRAMES ticks of both streams before the state machine sees them, so
# numpy and the machine work on 200 ms blocks instead of 20 ms frames (a command, a digit or
# the hangup feeds what is staged first; a timer's state change is noticed <= 180 ms late).
STAGE_FRAMES = 10
BATCH_SAMPLES = 25 * FRAME_SAMPLES  # hand audio to the writer thread every 0.5 s
FILE_THREADS = 4  # open / close (fsync) / abort, concurrently with the writer thread
MAX_RECORDINGS_PER_CALL = 10
EventListener = Callable[[dict[str, Any]], None]


class RecordingError(RuntimeError):
    """A recording could not start (the message says why)."""


class Recording:
    """One recording on one call, from start (after the beep) to a terminal state."""

    def __init__(self, engine: RecordingEngine, call: Call, params: RecordParams,
                 control_id: str, project_id: str) -> None:
        self.engine = engine
        self.call = call
        self.params = params
        self.control_id = control_id
        self.project_id = project_id
        self.id = secrets.token_hex(16)
        self.url = f"{engine.public_url}/recordings/{self.id}.{params.format}"
        self.path = engine.recordings_dir / f"{self.id}.{params.format}"
        self.state = "new"
        self.reason: str | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.size: int | None = None
        self.duration: float | None = None
        self.listeners: list[EventListener] = []
        self.events: list[dict[str, Any]] = []
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._machine: RecorderMachine | None = None
        self._writer: AudioWriter | None = None
        self._stage_speak = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._stage_listen = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._staged = 0  # samples staged
        self._batch: list[np.ndarray] = []
        self._batch_samples = 0
        self._write_error: BaseException | None = None
        self._last_job: asyncio.Future[None] | None = None  # the writer job with our last block
        self._unsubscribe_dtmf: Callable[[], None] | None = None
        self._finishing = False

    def __repr__(self) -> str:
        return f"<Recording {self.id} {self.control_id} {self.state}>"

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL_STATES

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file, play the beep if asked, then start recording (timers start now)."""
        loop = asyncio.get_running_loop()
        try:
            self._writer = await loop.run_in_executor(
                self.engine.file_executor, open_writer, self.params.format, self.path,
                self.params.channels,
            )
        except OSError as exc:
            self._fail_early(f"cannot create the recording file: {exc.strerror or exc}")
            return
        self.engine.store.add(self._row("recording"))
        if self.params.beep and self.call.is_active:
            operation = self.call.play_samples([beep()])
            await operation.wait()
        if not self.call.is_active:
            await self._finish(RecState.FINISHED)
            return
        self._machine = RecorderMachine(self.params)
        self.start_time = time.time()
        self.call.media.taps.append(self._on_frame)
        self._unsubscribe_dtmf = self.call.on_dtmf(self._on_digit)
        self.call.state_listeners.append(self._on_call_state)
        self._drain()

    def _fail_early(self, reason: str) -> None:
        self.reason = reason
        self.state = "error"
        self.end_time = time.time()
        self.engine.store.add(self._row("error"))
        self._emit()
        self.done.set_result(self.events[-1])

    # -- per frame (on the loop, from the media tick) --------------------------------------

    def _on_frame(self, speak: np.ndarray, listen: np.ndarray) -> None:
        start = self._staged
        end = start + FRAME_SAMPLES
        self._stage_speak[start:end] = speak
        self._stage_listen[start:end] = listen
        self._staged = end
        if end == len(self._stage_speak) or self._write_error is not None:
            self._feed_staged()

    def _feed_staged(self) -> None:
        """Give the staged frames to the machine, queue what it returns, act on its changes."""
        machine = self._machine
        staged, self._staged = self._staged, 0
        if machine is None or machine.done:
            return
        if staged:
            self._collect(machine.feed(self._stage_speak[:staged], self._stage_listen[:staged]))
            if self._batch_samples >= BATCH_SAMPLES:
                self._flush_batch()
        if machine.has_transitions or self._write_error is not None:
            self._drain()

    def _on_digit(self, digit: str) -> None:
        if self._machine is not None and not self._machine.done:
            self._feed_staged()  # the digit comes after the audio before it
            self._collect(self._machine.digit(digit))
            self._drain()

    def _on_call_state(self, call: Call) -> None:
        if call.state in (CallState.ENDING, CallState.ENDED):
            self.stop()

    # -- commands ---------------------------------------------------------------------------

    def pause(self, behavior: str = "silence") -> None:
        if self._machine is not None:
            self._feed_staged()
            self._machine.pause(behavior)
            self._drain()

    def resume(self) -> None:
        if self._machine is not None:
            self._feed_staged()
            self._machine.resume()
            self._drain()

    def stop(self) -> None:
        if self._machine is not None and not self._machine.done:
            self._feed_staged()
            if not self._machine.done:
                self._collect(self._machine.stop())
            self._drain()

    # -- state changes ----------------------------------------------------------------------

    def _collect(self, blocks: list[np.ndarray]) -> None:
        for block in blocks:
            self._batch.append(block)
            self._batch_samples += len(block)

    def _drain(self) -> None:
        """Act on the machine's state changes."""
        assert self._machine is not None
        if self._write_error is not None and not self._machine.done:
            self._collect(self._machine.fail(self._error_reason(self._write_error)))
        for state in self._machine.pop_transitions():
            if state.value in TERMINAL_STATES:
                if not self._finishing:
                    self._finishing = True
                    spawn(self._finish(state), name=f"recording-finish-{self.id}")
            else:
                self.state = state.value
                self.engine.store.update(self.id, state=self.state)
                self._emit()

    def _flush_batch(self) -> None:
        if not self._batch or self._writer is None:
            return
        block = self._batch[0] if len(self._batch) == 1 else np.concatenate(self._batch)
        self._batch = []
        self._batch_samples = 0
        self.engine.queue_write(self, block)

    def _write(self, block: np.ndarray) -> None:
        """In the writer thread. A failure is remembered and ends the recording in `error`."""
        if self._write_error is not None or self._writer is None:
            return
        try:
            self._writer.write(block)
        except (OSError, RecordingFull) as exc:
            self._write_error = exc

    @staticmethod
    def _error_reason(exc: BaseException) -> str:
        if isinstance(exc, RecordingFull):
            return "recording reached the largest size a WAV file can have"
        if isinstance(exc, OSError):
            return f"write failed: {exc.strerror or exc}"
        return str(exc)

    async def _finish(self, state: RecState) -> None:
        """Detach, write what is left, close (or discard) the file, report the end."""
        self._detach()
        self._flush_batch()
        self.engine.submit_writes()  # now: the close below must queue behind our last block
        if self._last_job is not None:  # our last block is written: the file is ours alone
            await asyncio.gather(self._last_job, return_exceptions=True)
        loop = asyncio.get_running_loop()
        files = self.engine.file_executor
        final_state = state.value
        if isinstance(self._write_error, RecordingFull):
            final_state = "finished"  # the cap is a clean end, not a failure
        elif self._write_error is not None:
            final_state = "error"
            self.reason = self._error_reason(self._write_error)
        writer = self._writer
        if writer is not None:
            try:
                if final_state == "no_input":
                    await loop.run_in_executor(files, writer.abort)
                else:
                    self.size = await loop.run_in_executor(files, writer.close)
                    self.duration = round(writer.duration, 3)
            except OSError as exc:
                final_state = "error"
                self.reason = f"could not finish the file: {exc.strerror or exc}"
                await loop.run_in_executor(files, writer.abort)
        if final_state == "error" and self.reason is None and self._machine is not None:
            self.reason = self._machine.reason
        self.state = final_state
        self.end_time = time.time()
        self.engine.store.update(
            self.id, state=self.state, duration=self.duration, size=self.size,
            start_time=self.start_time, end_time=self.end_time, reason=self.reason,
        )
        self._emit()
        log.info("recording %s (%s) on call %s: %s, %.2f s, %s bytes%s", self.id,
                 self.control_id, self.call.id, self.state, self.duration or 0.0, self.size,
                 f" ({self.reason})" if self.reason else "")
        if not self.done.done():
            self.done.set_result(self.events[-1])

    def _detach(self) -> None:
        if self._on_frame in self.call.media.taps:
            self.call.media.taps.remove(self._on_frame)
        if self._on_call_state in self.call.state_listeners:
            self.call.state_listeners.remove(self._on_call_state)
        if self._unsubscribe_dtmf is not None:
            self._unsubscribe_dtmf()
            self._unsubscribe_dtmf = None

    # -- events -----------------------------------------------------------------------------

    def event_params(self) -> dict[str, Any]:
        terminal = self.is_done
        return record_event_params(
            call_id=self.call.id, node_id=self.engine.node_id, control_id=self.control_id,
            recording_id=self.id, state=self.state,
            url=self.url if self.state != "no_input" else "",
            params=self.params,
            duration=self.duration if terminal else None,
            size=self.size if terminal else None,
            start_time=self.start_time, end_time=self.end_time if terminal else None,
            reason=self.reason if self.state == "error" else None,
            pause_behavior=(self._machine.pause_behavior
                            if self.state == "paused" and self._machine else None),
        )

    def _emit(self) -> None:
        params = self.event_params()
        self.events.append(params)
        for listener in tuple(self.listeners):
            try:
                listener(params)
            except Exception:
                log.exception("recording event listener failed")
        if self.params.status_url:
            self.engine.send_webhook(self, params)

    def _row(self, state: str) -> RecordingRow:
        return RecordingRow(
            id=self.id, project_id=self.project_id, call_id=self.call.id,
            control_id=self.control_id, state=state, format=self.params.format,
            channels=self.params.channels, direction=self.params.direction, duration=None,
            size=None, url=self.url, path=str(self.path), created_at=time.time(),
            start_time=None, end_time=None, reason=self.reason,
            status_url=self.params.status_url, params=self.params.as_run(),
        )


def _write_blocks(items: list[tuple[Recording, np.ndarray]]) -> None:
    """In the writer thread: one job = the blocks of one tick, in order."""
    for recording, block in items:
        try:
            recording._write(block)
        except Exception:  # one recording's bug must not lose the others' audio
            log.exception("recording %s: write failed", recording.id)


class RecordingEngine:
    def __init__(self, *, data_dir: Path, public_url: str, store: RecordingStore,
                 webhooks: WebhookQueue | None, node_id: str,
                 signing_keys: dict[str, str] | None = None) -> None:
        self.recordings_dir = data_dir / "recordings"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self.store = store
        self.webhooks = webhooks
        self.node_id = node_id
        self.signing_keys = signing_keys or {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-writer")
        self.file_executor = ThreadPoolExecutor(max_workers=FILE_THREADS,
                                                thread_name_prefix="recording-files")
        self.active: dict[str, Recording] = {}
        self._queued: list[tuple[Recording, np.ndarray]] = []  # blocks for the next job

    # -- the writer thread ------------------------------------------------------------------

    def queue_write(self, recording: Recording, block: np.ndarray) -> None:
        """Hand `block` to the writer thread with the other blocks of this tick (one job,
        submitted when the loop gets to it, i.e. after the media tick)."""
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.submit_writes)
        self._queued.append((recording, block))

    def submit_writes(self) -> None:
        """Submit the queued blocks as one job now (the thread runs jobs in order)."""
        if not self._queued:
            return
        items, self._queued = self._queued, []
        job = asyncio.get_running_loop().run_in_executor(self.executor, _write_blocks, items)
        for recording, _block in items:
            recording._last_job = job

    async def start_recording(self, call: Call, params: RecordParams, *,
                              control_id: str | None = None,
                              project_id: str = "") -> Recording:
        """Start a recording on `call`; returns once it records (after the beep)."""
        if not call.is_active:
            raise RecordingError(f"call {call.id} has ended")
        running = [r for r in call.recordings if not r.is_done]
        if len(running) >= MAX_RECORDINGS_PER_CALL:
            raise RecordingError(f"at most {MAX_RECORDINGS_PER_CALL} recordings per call")
        control_id = control_id or secrets.token_hex(16)
        if any(r.control_id == control_id for r in running):
            raise RecordingError(f"control_id {control_id!r} is already recording on this call")
        recording = Recording(self, call, params, control_id, project_id)
        call.recordings.append(recording)
        self.active[recording.id] = recording
        recording.done.add_done_callback(lambda _: self.active.pop(recording.id, None))
        await recording.start()
        return recording

    def send_webhook(self, recording: Recording, params: dict[str, Any]) -> None:
        self._enqueue_webhook(recording.params.status_url, recording.project_id,
                              recording.call.id, recording.id, params)

    def _enqueue_webhook(self, url: str, project_id: str, call_id: str, recording_id: str,
                         params: dict[str, Any]) -> None:
        """The status_url envelope of recording.md, signed with the project's key, in order
        per recording."""
        if self.webhooks is None:
            return
        envelope = {
            "event_type": RECORD_EVENT,
            "event_channel": f"callbox.calls.{call_id}",
            "timestamp": time.time(),
            "project_id": project_id,
            "params": params,
        }
        self.webhooks.enqueue(url, envelope, self.signing_keys.get(project_id, ""),
                              ordering_key=recording_id)

    def recover(self) -> list[RecordingRow]:
        """At start-up: repair recordings a crash left behind, store them as finished and
        report them (log, and webhook when they had a status_url)."""
        recovered = []
        rows = {row.id: row for row in self.store.unfinished()}
        for part in sorted(self.recordings_dir.glob("*.part")):
            rec_id = part.name.split(".", 1)[0]
            try:
                repaired = repair_partial(part)
            except (ValueError, OSError) as exc:
                log.warning("could not repair %s: %s", part, exc)
                continue  # its row (if any) ends in the "lost in a crash" path below
            row = rows.pop(rec_id, None)
            if row is None:
                log.warning("repaired %s but it has no metadata; left as %s", part,
                            repaired.final_path)
                continue
            self.store.update(rec_id, state="finished", duration=round(repaired.duration, 3),
                              size=repaired.size, end_time=time.time(),
                              reason="recovered after a crash")
            updated = self.store.get(rec_id)
            if updated is not None:
                recovered.append(updated)
                log.warning("recovered recording %s (%.1f s) left unfinished by a crash",
                            rec_id, repaired.duration)
                self._report_recovered(updated)
        for row in rows.values():  # metadata without a file: nothing was written
            self.store.update(row.id, state="error", reason="lost in a crash before any audio")
        return recovered

    def _report_recovered(self, row: RecordingRow) -> None:
        if not row.status_url:
            return
        params = record_event_params(
            call_id=row.call_id, node_id=self.node_id, control_id=row.control_id,
            recording_id=row.id, state="finished", url=row.url,
            params=RecordParams.parse(row.params, "swml_record_call"),
            duration=row.duration, size=row.size, start_time=row.start_time,
            end_time=row.end_time,
        )
        self._enqueue_webhook(row.status_url, row.project_id, row.call_id, row.id, params)

    async def close(self) -> None:
        for recording in list(self.active.values()):
            recording.stop()
        pending = [r.done for r in self.active.values()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.executor.shutdown(wait=True)
        self.file_executor.shutdown(wait=True)
