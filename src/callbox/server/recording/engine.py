"""The recording engine: runs every recording of the platform.

A `Recording` taps its call's two streams (`speak`, `listen`) once per media tick, feeds the
sans-I/O `RecorderMachine`, and hands the frames it returns to ONE writer thread in batches, so
encoding and disk writes never block the event loop. The batches of every recording that
filled one during a tick go to the thread as one job (one hand-over and one completion
callback per tick, not one per recording). Opening and finishing files (fsync, rename) run on a
small separate pool: an fsync can take 100-200 ms on a busy disk (ext4 commits the journal with
everyone's dirty data), and behind it in the writer's queue every other recording's writes and
every other `finished` event would wait. Each state change becomes a
`calling.call.record` event for the recording's listeners (SWML, RELAY) and, with `status_url`,
a signed webhook. The engine knows nothing of SIP, RELAY or SWML.

The engine owns what it runs on: its two thread pools, its metadata store (SQLite in the data
directory) and its webhook queue; `start()` opens them (and repairs what a crash left),
`close()` closes them.

Rules every entry point (SWML, RELAY, agents) gets alike:
- A recording with `beep` waits for the plays running (or still starting) on the call when it
  was asked for, so the beep never sounds over a prompt (plays looping forever and paused plays
  are not waited for). `stop()` before it records ends it `no_input` with no file; `pause()`
  before it records applies when it starts.
- A start that fails for any reason ends the recording in `error` with nothing left open (no
  file descriptor, no `.part`, no row stuck at `recording`, no slot of the per-call limit).
- A failure to store metadata (a full disk) never leaves a recording or its listeners hanging:
  it ends in `error` with the reason, its audio kept and reported.
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

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.sources import beep
from callbox.server.recording.machine import (
    TERMINAL,
    RecorderMachine,
    RecState,
    check_pause_behavior,
)
from callbox.server.recording.notify import RecordWebhooks
from callbox.server.recording.target import RecordedCall
from callbox.server.recording.writers import (
    AudioWriter,
    RecordingFull,
    describe_finished,
    open_writer,
    repair_partial,
)
from callbox.server.store.recordings import RecordingRow, RecordingStore, SqliteRecordingStore
from callbox.server.tasks import spawn
from callbox.wire.recording import RecordParams, record_event_params

log = logging.getLogger(__name__)

# The tap stages STAGE_FRAMES ticks of both streams before the state machine sees them, so
# numpy and the machine work on 200 ms blocks instead of 20 ms frames (a command, a digit or
# the hangup feeds what is staged first; a timer's state change is noticed <= 180 ms late).
STAGE_FRAMES = 10
BATCH_SAMPLES = 25 * FRAME_SAMPLES  # hand audio to the writer thread every 0.5 s
FILE_THREADS = 4  # open / close (fsync) / abort, concurrently with the writer thread
MAX_RECORDINGS_PER_CALL = 10
EventListener = Callable[[dict[str, Any]], None]
# Every recording's events, for observers of the whole engine: (project id, event params).
EngineListener = Callable[[str, dict[str, Any]], None]


class RecordingError(RuntimeError):
    """A recording could not start (the message says why)."""


class Recording:
    """One recording on one call, from start (after the beep) to a terminal state.

    `state` is None until it records, then a `RecState`.
    """

    def __init__(self, engine: RecordingEngine, call: RecordedCall, params: RecordParams,
                 control_id: str, project_id: str) -> None:
        self.engine = engine
        self.call = call
        self.params = params
        self.control_id = control_id
        self.project_id = project_id
        self.id = secrets.token_hex(16)
        self.url = f"{engine.public_url}/recordings/{self.id}.{params.format}"
        self.path = engine.recordings_dir / f"{self.id}.{params.format}"
        self.state: RecState | None = None
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
        self._stored = False  # our row is in the store
        self._stage_speak = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._stage_listen = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._staged = 0  # samples staged
        self._batch: list[np.ndarray] = []
        self._batch_samples = 0
        self._write_error: BaseException | None = None
        self._last_job: asyncio.Future[None] | None = None  # the writer job with our last block
        self._unsubscribe: list[Callable[[], None]] = []
        self._finishing = False
        self._stop_requested = False  # stop() before it records
        self._pause_requested: str | None = None  # pause() before it records

    def __repr__(self) -> str:
        return f"<Recording {self.id} {self.control_id} {self.state}>"

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the prompts when there is a beep, open the file, beep, then record (timers
        start now). Never raises (but for cancellation): a failure ends it in `error`."""
        try:
            await self._start()
        except asyncio.CancelledError:
            self._detach()
            if self._writer is not None:
                self._writer.abort()  # rare; the loop cannot wait for the pool here
                self._writer = None
            self._conclude(RecState.ERROR, "the start was cancelled")
            raise
        except Exception as exc:
            log.exception("recording %s on call %s failed to start", self.id, self.call.id)
            await self._fail_start(f"could not start: {exc}")

    async def _start(self) -> None:
        machine = RecorderMachine(self.params)  # first: a bad setting fails before any file
        if self.params.beep:
            await self.call.prompts_played()
        if self._stop_requested or not self.call.is_active:
            self._conclude(RecState.NO_INPUT, None)  # nothing recorded, no file
            return
        loop = asyncio.get_running_loop()
        try:
            self._writer = await loop.run_in_executor(
                self.engine.file_executor, open_writer, self.params.format, self.path,
                self.params.channels,
            )
        except OSError as exc:
            self._conclude(RecState.ERROR,
                           f"cannot create the recording file: {exc.strerror or exc}")
            return
        self.engine.store.add(self._row(RecState.RECORDING))
        self._stored = True
        if self.params.beep and not self._stop_requested and self.call.is_active:
            operation = self.call.play_samples([beep()])
            await operation.wait()
        if self._stop_requested or not self.call.is_active:
            await self._finish(RecState.NO_INPUT)  # stopped during the beep: nothing recorded
            return
        self._machine = machine
        self.start_time = time.time()
        self._unsubscribe = [self.call.add_tap(self._on_frame), self.call.on_dtmf(self._on_digit)]
        if self._pause_requested is not None:
            machine.pause(self._pause_requested)
        self._drain()

    async def _fail_start(self, reason: str) -> None:
        """Undo a start that failed: nothing stays open or half-written."""
        self._detach()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.engine.file_executor, writer.abort)
            except Exception:
                log.exception("recording %s: could not remove %s", self.id, writer.temp_path)
        self._conclude(RecState.ERROR, reason)

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

    # -- commands ---------------------------------------------------------------------------

    def pause(self, behavior: str = "silence") -> None:
        if self._machine is None:
            check_pause_behavior(behavior)
            self._pause_requested = behavior
            return
        self._feed_staged()
        self._machine.pause(behavior)
        self._drain()

    def resume(self) -> None:
        if self._machine is None:
            self._pause_requested = None
            return
        self._feed_staged()
        self._machine.resume()
        self._drain()

    def stop(self) -> None:
        """End `finished` (`no_input` when it has not started recording yet)."""
        if self._machine is None:
            self._stop_requested = True
            return
        if not self._machine.done:
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
            if state in TERMINAL:
                if not self._finishing:
                    self._finishing = True
                    spawn(self._finish(state), name=f"recording-finish-{self.id}")
            else:
                self.state = state
                self._store_update(state=state.value)
                self._emit()

    def _flush_batch(self) -> None:
        if not self._batch or self._writer is None:
            return
        block = self._batch[0] if len(self._batch) == 1 else np.concatenate(self._batch)
        self._batch = []
        self._batch_samples = 0
        self.engine.queue_write(self, block)

    def write_block(self, block: np.ndarray) -> None:
        """In the writer thread. A failure is remembered and ends the recording in `error`."""
        if self._write_error is not None or self._writer is None:
            return
        try:
            self._writer.write(block)
        except (OSError, RecordingFull) as exc:
            self._write_error = exc

    def writes_submitted(self, job: asyncio.Future[None]) -> None:
        """The writer job that holds our latest block (finishing waits for it)."""
        self._last_job = job

    @staticmethod
    def _error_reason(exc: BaseException) -> str:
        if isinstance(exc, RecordingFull):
            return "recording reached the largest size a WAV file can have"
        if isinstance(exc, OSError):
            return f"write failed: {exc.strerror or exc}"
        return str(exc)

    async def _finish(self, state: RecState) -> None:
        """Detach, write what is left, close (or discard) the file, report the end. Whatever
        fails, the recording reaches a terminal state and `done` completes."""
        final_state = RecState.ERROR
        reason: str | None = "could not finish the recording"
        try:
            final_state, reason = await self._close_file(state)
        except Exception as exc:
            log.exception("recording %s: finishing failed", self.id)
            reason = f"could not finish the recording: {exc}"
        finally:
            self._conclude(final_state, reason)

    async def _close_file(self, state: RecState) -> tuple[RecState, str | None]:
        """The file's end: (final state, reason)."""
        self._detach()
        self._flush_batch()
        self.engine.submit_writes()  # now: the close below must queue behind our last block
        if self._last_job is not None:  # our last block is written: the file is ours alone
            await asyncio.gather(self._last_job, return_exceptions=True)
        loop = asyncio.get_running_loop()
        files = self.engine.file_executor
        reason = self._machine.reason if self._machine is not None else None
        if isinstance(self._write_error, RecordingFull):
            state = RecState.FINISHED  # the cap is a clean end, not a failure
        elif self._write_error is not None:
            state, reason = RecState.ERROR, self._error_reason(self._write_error)
        writer, self._writer = self._writer, None
        if writer is None:
            return state, reason
        try:
            if state is RecState.NO_INPUT:
                await loop.run_in_executor(files, writer.abort)
            else:
                self.size = await loop.run_in_executor(files, writer.close)
                self.duration = round(writer.duration, 3)
        except OSError as exc:
            await loop.run_in_executor(files, writer.abort)
            return RecState.ERROR, f"could not finish the file: {exc.strerror or exc}"
        return state, reason

    def _conclude(self, state: RecState, reason: str | None) -> None:
        """Enter the terminal `state`: store it, report it, complete `done` (once)."""
        if self.done.done():
            return
        self.state = state
        self.reason = reason if state is RecState.ERROR else None
        self.end_time = time.time()
        fields: dict[str, Any] = dict(
            state=state.value, duration=self.duration, size=self.size,
            start_time=self.start_time, end_time=self.end_time, reason=self.reason)
        problem = self._store_update(**fields) if self._stored else self._store_add()
        if problem is not None:
            self.state = RecState.ERROR
            stored = f"its end could not be stored ({problem})"
            self.reason = f"{self.reason}; {stored}" if self.reason else stored
        self._emit()
        log.info("recording %s (%s) on call %s: %s, %.2f s, %s bytes%s", self.id,
                 self.control_id, self.call.id, self.state, self.duration or 0.0, self.size,
                 f" ({self.reason})" if self.reason else "")
        self.done.set_result(self.events[-1])
        if self.size is not None:  # its file is kept
            self.engine.concluded(self)

    def _store_add(self) -> str | None:
        try:
            self.engine.store.add(self._row(self.state or RecState.ERROR))
        except Exception as exc:
            log.error("recording %s: could not store it: %s", self.id, exc)
            return str(exc)
        self._stored = True
        return None

    def _store_update(self, **fields: Any) -> str | None:
        """Store `fields`; returns what went wrong (None when stored). Never raises."""
        try:
            self.engine.store.update(self.id, **fields)
        except Exception as exc:
            log.error("recording %s: could not store %s: %s", self.id,
                      fields.get("state", "its state"), exc)
            return str(exc)
        return None

    def _detach(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    # -- events -----------------------------------------------------------------------------

    def event_params(self) -> dict[str, Any]:
        state = self.state
        assert state is not None, "no event before the recording has a state"
        terminal = state in TERMINAL
        return record_event_params(
            call_id=self.call.id, node_id=self.engine.node_id, control_id=self.control_id,
            recording_id=self.id, state=state.value,
            url=self.url if state is not RecState.NO_INPUT else "",
            params=self.params,
            duration=self.duration if terminal else None,
            size=self.size if terminal else None,
            start_time=self.start_time, end_time=self.end_time if terminal else None,
            reason=self.reason if state is RecState.ERROR else None,
            pause_behavior=(self._machine.pause_behavior
                            if state is RecState.PAUSED and self._machine else None),
            peer_call_id=self.call.peer_id,
        )

    def _emit(self) -> None:
        params = self.event_params()
        self.events.append(params)
        self.engine.publish(self.project_id, params)
        for listener in tuple(self.listeners):
            try:
                listener(params)
            except Exception:
                log.exception("recording event listener failed")
        if self.params.status_url:
            self.engine.webhooks.send(self.params.status_url, project_id=self.project_id,
                                      call_id=self.call.id, recording_id=self.id,
                                      params=params)

    def _row(self, state: RecState) -> RecordingRow:
        return RecordingRow(
            id=self.id, project_id=self.project_id, call_id=self.call.id,
            control_id=self.control_id, state=state.value, format=self.params.format,
            channels=self.params.channels, direction=self.params.direction,
            duration=self.duration, size=self.size, url=self.url, path=str(self.path),
            created_at=time.time(), start_time=self.start_time, end_time=self.end_time,
            reason=self.reason, status_url=self.params.status_url, params=self.params.as_run(),
        )


def _write_blocks(items: list[tuple[Recording, np.ndarray]]) -> None:
    """In the writer thread: one job = the blocks of one tick, in order."""
    for recording, block in items:
        try:
            recording.write_block(block)
        except Exception:  # one recording's bug must not lose the others' audio
            log.exception("recording %s: write failed", recording.id)


class RecordingEngine:
    """Every recording of the platform, with the pools, store and webhooks they use."""

    def __init__(self, *, data_dir: Path, public_url: str, node_id: str,
                 signing_keys: dict[str, str] | None = None) -> None:
        self.recordings_dir = data_dir / "recordings"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self.node_id = node_id
        self.store: RecordingStore = SqliteRecordingStore(data_dir / "recordings.db")
        self.webhooks = RecordWebhooks(data_dir / "webhooks.db", signing_keys or {})
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-writer")
        self.file_executor = ThreadPoolExecutor(max_workers=FILE_THREADS,
                                                thread_name_prefix="recording-files")
        self.active: dict[str, Recording] = {}
        self._queued: list[tuple[Recording, np.ndarray]] = []  # blocks for the next job
        self._observers: list[EngineListener] = []
        self._concluded: list[Callable[[Recording], None]] = []

    def on_event(self, listener: EngineListener) -> Callable[[], None]:
        """Call `listener(project_id, params)` on every recording event (and on a recovered
        end reported by webhook); returns the unsubscribe. A failing listener is logged."""
        self._observers.append(listener)
        return lambda: self._observers.remove(listener) if listener in self._observers else None

    def publish(self, project_id: str, params: dict[str, Any]) -> None:
        for listener in tuple(self._observers):
            try:
                listener(project_id, params)
            except Exception:
                log.exception("recording engine observer failed")

    def on_concluded(self, listener: Callable[[Recording], None]) -> Callable[[], None]:
        """Call `listener` with each recording that ends with its file kept, once its end is
        stored and reported; returns the unsubscribe."""
        self._concluded.append(listener)
        return lambda: self._concluded.remove(listener)

    def concluded(self, recording: Recording) -> None:
        for listener in tuple(self._concluded):
            try:
                listener(recording)
            except Exception:
                log.exception("recording concluded listener failed")

    @property
    def signing_keys(self) -> dict[str, str]:
        """Project id -> key that signs its webhooks (changes apply to the next event)."""
        return self.webhooks.signing_keys

    async def start(self) -> list[RecordingRow]:
        """Start delivering webhooks; repair what a crash left (see `recover`)."""
        await self.webhooks.start()
        return self.recover()

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
            recording.writes_submitted(job)

    # -- recordings -------------------------------------------------------------------------

    def create_recording(self, call: RecordedCall, params: RecordParams, *,
                         control_id: str | None = None, project_id: str = "") -> Recording:
        """A recording on `call`, attached to it but not started (see `Recording.start`)."""
        if not call.is_active:
            raise RecordingError(f"call {call.id} has ended")
        running = [r for r in call.recordings if not r.is_done]
        if len(running) >= MAX_RECORDINGS_PER_CALL:
            raise RecordingError(f"at most {MAX_RECORDINGS_PER_CALL} recordings per call")
        control_id = control_id or secrets.token_hex(16)
        if any(r.control_id == control_id for r in running):
            raise RecordingError(f"control_id {control_id!r} is already recording on this call")
        recording = Recording(self, call, params, control_id, project_id)
        call.attach_recording(recording)
        self.active[recording.id] = recording
        recording.done.add_done_callback(lambda _: self.active.pop(recording.id, None))
        return recording

    async def start_recording(self, call: RecordedCall, params: RecordParams, *,
                              control_id: str | None = None,
                              project_id: str = "") -> Recording:
        """Start a recording on `call`; returns once it records (after the prompts and the
        beep) or has ended (a failed start ends in `error`)."""
        recording = self.create_recording(call, params, control_id=control_id,
                                          project_id=project_id)
        await recording.start()
        return recording

    # -- start-up repair --------------------------------------------------------------------

    def recover(self) -> list[RecordingRow]:
        """At start-up: finish the recordings a crash (or a full disk) left unfinished, store
        and report them (log, and webhook when they had a status_url).

        - A `.part` file is repaired and stored `finished`; one that cannot be repaired (a
          0-byte file, not ours) is removed, with a log line, and its row ends in `error`.
        - A row still running whose final file exists ended but could not store its end: it
          is stored `error` with the file's duration and size (the audio is kept).
        - A row with no file at all ends in `error`: nothing was written.
        """
        recovered = []
        rows = {row.id: row for row in self.store.unfinished()}
        for part in sorted(self.recordings_dir.glob("*.part")):
            rec_id = part.name.split(".", 1)[0]
            row = rows.pop(rec_id, None)
            try:
                repaired = repair_partial(part)
            except (ValueError, OSError) as exc:
                part.unlink(missing_ok=True)
                log.warning("removed %s: it cannot be repaired (%s)", part, exc)
                if row is not None:
                    self.store.update(row.id, state=RecState.ERROR.value, end_time=time.time(),
                                      reason=f"lost in a crash: its file could not be "
                                             f"repaired ({exc})")
                continue
            if row is None:
                log.warning("repaired %s but it has no metadata; left as %s", part,
                            repaired.final_path)
                continue
            updated = self._store_end(row, RecState.FINISHED, repaired.duration, repaired.size,
                                      "recovered after a crash")
            log.warning("recovered recording %s (%.1f s) left unfinished by a crash",
                        rec_id, repaired.duration)
            recovered.append(updated)
        for row in rows.values():
            recovered += self._recover_without_part(row)
        return recovered

    def _recover_without_part(self, row: RecordingRow) -> list[RecordingRow]:
        path = Path(row.path)
        if not path.exists():  # metadata without a file: nothing was written
            self.store.update(row.id, state=RecState.ERROR.value,
                              reason="lost in a crash before any audio")
            return []
        try:
            found = describe_finished(path)
        except (ValueError, OSError) as exc:
            log.warning("recording %s: its file %s is not readable (%s)", row.id, path, exc)
            self.store.update(row.id, state=RecState.ERROR.value,
                              reason=f"its end was not stored and its file is unreadable "
                                     f"({exc})")
            return []
        log.warning("recording %s (%.1f s): its end was not stored; its file is complete",
                    row.id, found.duration)
        return [self._store_end(row, RecState.ERROR, found.duration, found.size,
                                "its end could not be stored (was the disk full?); "
                                "the file is complete")]

    def _store_end(self, row: RecordingRow, state: RecState, duration: float, size: int,
                   reason: str) -> RecordingRow:
        """Store a recovered recording's end and report it."""
        end_time = time.time()
        self.store.update(row.id, state=state.value, duration=round(duration, 3), size=size,
                          end_time=end_time, reason=reason)
        updated = self.store.get(row.id) or row
        if updated.status_url:
            params = record_event_params(
                call_id=updated.call_id, node_id=self.node_id, control_id=updated.control_id,
                recording_id=updated.id, state=updated.state, url=updated.url,
                params=RecordParams.parse(updated.params, "swml_record_call"),
                duration=updated.duration, size=updated.size, start_time=updated.start_time,
                end_time=updated.end_time,
                reason=updated.reason if state is RecState.ERROR else None,
            )
            self.publish(updated.project_id, params)
            self.webhooks.send(updated.status_url, project_id=updated.project_id,
                               call_id=updated.call_id, recording_id=updated.id, params=params)
        return updated

    async def close(self) -> None:
        """Stop the recordings still running, then close what the engine owns."""
        for recording in list(self.active.values()):
            recording.stop()
        pending = [r.done for r in self.active.values()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.executor.shutdown(wait=True)
        self.file_executor.shutdown(wait=True)
        await self.webhooks.close()
        self.store.close()
