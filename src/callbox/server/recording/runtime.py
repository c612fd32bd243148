"""The half of a recording that runs where the media is: frames in, a file out.

A `RecordingRuntime` taps one media session's two streams (`speak`, `listen`) once per media
tick, feeds the sans-I/O `RecorderMachine`, and hands the frames it returns to ONE writer thread
in batches (`RecordingWriters`), so encoding and disk writes never block the event loop. The
batches of every recording that filled one during a tick go to the thread as one job (one
hand-over and one completion callback per tick, not one per recording). Opening and finishing
files (fsync, rename) run on a small separate pool: an fsync can take 100-200 ms on a busy disk,
and behind it in the writer's queue every other recording's writes would wait. Both hand their
results back on the media clock's next tick (`media.offload`), which costs the loop less than
an executor's wake-up per job.

It reports its state changes and, once the file is closed, its end to `RuntimeReports`; the
recording engine (`engine.Recording`) turns those into events, metadata and webhooks. The two
halves run in one process or talk across a process boundary (`callbox.server.worker`): nothing
here knows which.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.offload import ThreadJobs
from callbox.server.media.session import MediaSession
from callbox.server.recording.machine import TERMINAL, RecorderMachine, RecState
from callbox.server.recording.writers import AudioWriter, RecordingFull, open_writer
from callbox.server.tasks import spawn
from callbox.wire.recording import RecordParams

log = logging.getLogger(__name__)
T = TypeVar("T")

# The tap stages STAGE_FRAMES ticks of both streams before the state machine sees them, so
# numpy and the machine work on 200 ms blocks instead of 20 ms frames (a command, a digit or
# the hangup feeds what is staged first; a timer's state change is noticed <= 180 ms late).
STAGE_FRAMES = 10
BATCH_SAMPLES = 25 * FRAME_SAMPLES  # hand audio to the writer thread every 0.5 s
FILE_THREADS = 4  # open / close (fsync) / abort, concurrently with the writer thread


@dataclass(frozen=True, slots=True)
class RuntimeEnd:
    """How a recording's file ended: its terminal state and what the file holds."""

    state: RecState
    reason: str | None
    size: int | None
    duration: float | None


class RuntimeReports(Protocol):
    """Where a runtime reports (called on the loop)."""

    def transition(self, recording_id: str, state: RecState, pause_behavior: str | None) -> None:
        """A non-terminal state change (`recording`, `paused`)."""

    def ended(self, recording_id: str, end: RuntimeEnd) -> None:
        """The terminal state, after the file was closed (or removed)."""

    def lost(self, recording_id: str) -> None:
        """The runtime is gone without an end: the process holding it died (its `.part`
        file is what is left)."""


class RecordingWriters:
    """The writer thread and the file pool every recording of one process shares. A member of
    the media clock: its tick hands back the results of the jobs done (`offload`)."""

    def __init__(self) -> None:
        self.writer = ThreadJobs(1, "recording-writer")
        self.files = ThreadJobs(FILE_THREADS, "recording-files")
        self._queued: list[tuple[RecordingRuntime, np.ndarray]] = []  # blocks for the next job

    def queue_write(self, runtime: RecordingRuntime, block: np.ndarray) -> None:
        """Hand `block` to the writer thread with the other blocks of this tick (one job,
        submitted when the loop gets to it, i.e. after the media tick)."""
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.submit_writes)
        self._queued.append((runtime, block))

    def submit_writes(self) -> None:
        """Submit the queued blocks as one job now (the thread runs jobs in order)."""
        if not self._queued:
            return
        items, self._queued = self._queued, []
        job = self.writer.submit(_write_blocks, items)
        for runtime, _block in items:
            runtime.writes_submitted(job)

    async def run_file_job(self, job: Callable[..., T], *args: object) -> T:
        """Run a file operation (open, close, abort) on the file pool."""
        return await self.files.submit(job, *args)

    def tick(self) -> None:
        self.writer.tick()
        self.files.tick()

    def close(self) -> None:
        self.writer.close()
        self.files.close()


def _write_blocks(items: list[tuple[RecordingRuntime, np.ndarray]]) -> None:
    """In the writer thread: one job = the blocks of one tick, in order."""
    for runtime, block in items:
        try:
            runtime.write_block(block)
        except Exception:  # one recording's bug must not lose the others' audio
            log.exception("recording %s: write failed", runtime.id)


class RecordingRuntime:
    """One recording's frames and file. `open()`, then `start()` (or `discard()`); the end is
    reported once, whatever happens (`stop()`, a timer, a terminator digit, a failed write)."""

    def __init__(self, recording_id: str, writers: RecordingWriters,
                 reports: RuntimeReports) -> None:
        self.id = recording_id
        self.writers = writers
        self.reports = reports
        self._machine: RecorderMachine | None = None
        self._writer: AudioWriter | None = None
        self._stage_speak = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._stage_listen = np.empty(STAGE_FRAMES * FRAME_SAMPLES, np.int16)
        self._staged = 0  # samples staged
        self._batch: list[np.ndarray] = []
        self._batch_samples = 0
        self._write_error: BaseException | None = None
        self._last_job: asyncio.Future[None] | None = None  # the writer job with our last block
        self._unsubscribe: list[Callable[[], None]] = []
        self._finishing = False
        self.ended = False

    def __repr__(self) -> str:
        return f"<RecordingRuntime {self.id}>"

    # -- start ----------------------------------------------------------------------------

    async def open(self, fmt: str, path: Path, channels: int) -> None:
        """Create the file (`<path>.part`); raises OSError."""
        self._writer = await self.writers.run_file_job(open_writer, fmt, path, channels)

    def start(self, session: MediaSession, params: RecordParams,
              pause_behavior: str | None) -> None:
        """Record from the next tick on (timers start now)."""
        machine = RecorderMachine(params)
        self._machine = machine
        self._unsubscribe = [session.add_tap(self._on_frame), session.on_dtmf(self._on_digit)]
        if pause_behavior is not None:
            machine.pause(pause_behavior)
        self._drain()

    async def discard(self) -> None:
        """Never started (stopped during the beep, or the call ended): remove the file and
        report `no_input`."""
        self._detach()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                await self.writers.run_file_job(writer.abort)
            except Exception:
                log.exception("recording %s: could not remove %s", self.id, writer.temp_path)
        self._report_end(RuntimeEnd(RecState.NO_INPUT, None, None, None))

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

    def pause(self, behavior: str) -> None:
        if self._machine is not None and not self._machine.done:
            self._feed_staged()
            self._machine.pause(behavior)
            self._drain()

    def resume(self) -> None:
        if self._machine is not None and not self._machine.done:
            self._feed_staged()
            self._machine.resume()
            self._drain()

    def stop(self) -> None:
        """End `finished` with what was recorded."""
        if self._machine is None:
            if not self._finishing:
                self._finishing = True
                spawn(self.discard(), name=f"recording-discard-{self.id}")
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
        machine = self._machine
        assert machine is not None
        if self._write_error is not None and not machine.done:
            self._collect(machine.fail(_error_reason(self._write_error)))
        for state in machine.pop_transitions():
            if state in TERMINAL:
                if not self._finishing:
                    self._finishing = True
                    spawn(self._finish(state), name=f"recording-finish-{self.id}")
            else:
                self.reports.transition(self.id, state, machine.pause_behavior
                                        if state is RecState.PAUSED else None)

    def _flush_batch(self) -> None:
        if not self._batch or self._writer is None:
            return
        block = self._batch[0] if len(self._batch) == 1 else np.concatenate(self._batch)
        self._batch = []
        self._batch_samples = 0
        self.writers.queue_write(self, block)

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

    async def _finish(self, state: RecState) -> None:
        """Detach, write what is left, close (or discard) the file, report the end. Whatever
        fails, the end is reported."""
        end = RuntimeEnd(RecState.ERROR, "could not finish the recording", None, None)
        try:
            end = await self._close_file(state)
        except Exception as exc:
            log.exception("recording %s: finishing failed", self.id)
            end = RuntimeEnd(RecState.ERROR, f"could not finish the recording: {exc}",
                             None, None)
        finally:
            self._report_end(end)

    async def _close_file(self, state: RecState) -> RuntimeEnd:
        self._detach()
        self._flush_batch()
        self.writers.submit_writes()  # now: the close below must queue behind our last block
        if self._last_job is not None:  # our last block is written: the file is ours alone
            await asyncio.gather(self._last_job, return_exceptions=True)
        reason = self._machine.reason if self._machine is not None else None
        if isinstance(self._write_error, RecordingFull):
            state = RecState.FINISHED  # the cap is a clean end, not a failure
        elif self._write_error is not None:
            state, reason = RecState.ERROR, _error_reason(self._write_error)
        writer, self._writer = self._writer, None
        if writer is None:
            return RuntimeEnd(state, reason, None, None)
        try:
            if state is RecState.NO_INPUT:
                await self.writers.run_file_job(writer.abort)
                return RuntimeEnd(state, reason, None, None)
            size = await self.writers.run_file_job(writer.close)
            return RuntimeEnd(state, reason, size, round(writer.duration, 3))
        except OSError as exc:
            await self.writers.run_file_job(writer.abort)
            return RuntimeEnd(RecState.ERROR,
                              f"could not finish the file: {exc.strerror or exc}", None, None)

    def _report_end(self, end: RuntimeEnd) -> None:
        if not self.ended:
            self.ended = True
            self.reports.ended(self.id, end)

    def _detach(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, RecordingFull):
        return "recording reached the largest size a WAV file can have"
    if isinstance(exc, OSError):
        return f"write failed: {exc.strerror or exc}"
    return str(exc)

