"""The recording engine: runs every recording of the platform.

A `Recording` is the half of a recording that keeps its state: it opens the file through its
call's `RecordingMedia` (a `runtime.RecordingRuntime` where the call's media runs: this process
or a media worker), beeps, starts it, and turns what the runtime reports into the recording's
state, its metadata row, its `calling.call.record` events for the listeners (SWML, RELAY) and,
with `status_url`, signed webhooks. The engine knows nothing of SIP, RELAY or SWML.

Its call tells a recording who its channels hold (`note_parties`) when it is attached and at
each change of the call's peer; the recording keeps a bridged note over a later unbridged one
(see `recording.parties`) and stores it with its end, so the console shows it after a restart
and from every node. Its first row has none: a recording repaired after a crash (`recover`)
has none.

The engine owns its metadata store (SQLite in the data directory, or PostgreSQL when the
platform gives it a `Database`) and its webhook queue; `start()` starts them (and repairs what a
crash left), `close()` closes them.

Store writes are async. A recording's writes run one after another in the order of its states
(each waits for the previous); while the database cannot be reached they wait and retry (see
`persist`), the recording keeps writing its file meanwhile, and its terminal event is emitted
only after its end is stored. With SQLite the first row is stored before the file is opened;
with a network database the audio does not wait for it (the call's first words are recorded
whatever the database does), its events do, ROW_WAIT at most.

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
from pathlib import Path
from typing import Any

from callbox.server.database import Database
from callbox.server.media.sources import beep
from callbox.server.recording.machine import (
    TERMINAL,
    RecorderMachine,
    RecState,
    check_pause_behavior,
)
from callbox.server.recording.notify import RecordWebhooks
from callbox.server.recording.parties import Parties, noted
from callbox.server.recording.persist import persist
from callbox.server.recording.runtime import RuntimeEnd, RuntimeReports
from callbox.server.recording.target import RecordedCall, RecordingMedia
from callbox.server.recording.writers import describe_finished, part_path, repair_partial
from callbox.server.store.postgres import PostgresRecordingStore
from callbox.server.store.recordings import RecordingRow, RecordingStore, SqliteRecordingStore
from callbox.server.tasks import spawn
from callbox.server.webhooks import PostgresQueueDb, SqliteQueueDb, WebhookQueue
from callbox.wire.recording import RecordParams, record_event_params

log = logging.getLogger(__name__)

MAX_RECORDINGS_PER_CALL = 10
# Seconds a recording's first event waits for its first row in a network database: one
# unreachable longer (a PostgreSQL restart; its pool waits 5 s for a connection) does not
# hold the events back; the audio never waits for it.
ROW_WAIT = 0.5
EventListener = Callable[[dict[str, Any]], None]
# Every recording's events, for observers of the whole engine: (project id, event params).
EngineListener = Callable[[str, dict[str, Any]], None]


class RecordingError(RuntimeError):
    """A recording could not start (the message says why)."""


class Recording:
    """One recording on one call, from start (after the beep) to a terminal state.

    `state` is None until it records, then a `RecState`. The frames and the file are its
    `RecordingMedia`'s (a `RecordingRuntime` where the call's media runs); this half keeps the
    state, the metadata, the events and the webhooks.
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
        # who its channels hold, the best its call told so far (stored with its end)
        self.parties: Parties | None = None
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._media: RecordingMedia | None = None  # once its file is open
        # its first state from the media half (`recording`, or `paused` when asked before),
        # or its end: `start()` returns then
        self._first_state: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._started = False  # the media half records
        self._pause_behavior: str | None = None  # of the last `paused`
        self._stored_state: RecState | None = None  # our row's state (or its next); None: no row
        self._writes: asyncio.Task[None] | None = None  # the last store write queued
        # a network database: its events wait (ROW_WAIT at most) for its first row meanwhile
        self._row_wait: asyncio.Task[None] | None = None
        self._held: list[dict[str, Any]] = []  # events of the states reported meanwhile
        self._row_problem: str | None = None  # why the store refused its first row
        self._concluding = False  # its end is being stored and reported
        self._stop_requested = False  # stop() before it records
        self._pause_requested: str | None = None  # pause() before it records

    def __repr__(self) -> str:
        return f"<Recording {self.id} {self.control_id} {self.state}>"

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the prompts when there is a beep, store its row, open the file, beep, then
        record (timers start now; without a beep the file is opened and recording at once).
        Never raises (but for cancellation): a failure ends it in `error`."""
        try:
            await self._start()
        except asyncio.CancelledError:
            if self._media is not None and not self._started:
                self._media.stop()  # removes the file
            spawn(self._conclude(RecState.ERROR, "the start was cancelled"),
                  name=f"recording-end-{self.id}")
            raise
        except Exception as exc:
            log.exception("recording %s on call %s failed to start", self.id, self.call.id)
            if self._media is not None and not self._started:
                self._media.stop()
            await self._conclude(RecState.ERROR, f"could not start: {exc}")

    async def _start(self) -> None:
        RecorderMachine(self.params)  # first: a bad setting fails before any file
        if self.params.beep:
            await self.call.prompts_played()
        if self._stop_requested or not self.call.is_active:
            await self._conclude(RecState.NO_INPUT, None)  # nothing recorded, no file
            return
        await self._store_first_row()  # SQLite: raises when it refuses the row, no file then
        media = self.call.record_media(self.id, self.engine.reports)
        # Without a beep between the file and the audio, the media half records as soon as
        # the file is open: one command to the worker and one answer, not two of each.
        at_once = not self.params.beep
        pause = self._pause_requested
        if at_once:
            self.start_time = time.time()
        try:
            await media.open(self.params.format, self.path, self.params.channels,
                             record=self.params if at_once else None, pause_behavior=pause)
        except OSError as exc:
            self.start_time = None
            await self._conclude(RecState.ERROR,
                                 f"cannot create the recording file: {exc.strerror or exc}")
            return
        self._media = media
        if at_once:
            self._started = True
            if self._stop_requested:  # asked while the file was being opened
                media.stop()
            elif self._pause_requested != pause:
                if self._pause_requested is None:
                    media.resume()
                else:
                    media.pause(self._pause_requested)
        else:
            if not self._stop_requested and self.call.is_active:
                operation = self.call.play_samples([beep()])
                await operation.wait()
            if self._stop_requested or not self.call.is_active:
                media.stop()  # stopped during the beep: nothing recorded, `no_input` follows
                return
            self.start_time = time.time()
            self._started = True
            media.start(self.params, self._pause_requested)
        await asyncio.shield(self._first_state)

    # -- commands ---------------------------------------------------------------------------

    def pause(self, behavior: str = "silence") -> None:
        check_pause_behavior(behavior)
        if not self._started:
            self._pause_requested = behavior
        elif self._media is not None and not self.is_done:
            self._media.pause(behavior)

    def resume(self) -> None:
        if not self._started:
            self._pause_requested = None
        elif self._media is not None and not self.is_done:
            self._media.resume()

    def stop(self) -> None:
        """End `finished` (`no_input` when it has not started recording yet)."""
        if not self._started:
            self._stop_requested = True
        elif self._media is not None and not self.is_done:
            self._media.stop()

    def note_parties(self, parties: Parties) -> None:
        """Who its channels hold now, from its call; a bridged note stays when the bridge ends.
        Notes after its end is being stored are ignored."""
        if not self._concluding:
            self.parties = noted(self.parties, parties)

    # -- what the media half reports --------------------------------------------------------

    def media_transition(self, state: RecState, pause_behavior: str | None) -> None:
        if self.is_done:
            return
        self.state = state
        self._pause_behavior = pause_behavior
        if self._stored_state not in (None, state):  # the first `recording`: the row says so
            self._stored_state = state
            self._store_later(state=state.value)
        if self._row_wait is not None and not self._row_wait.done():
            self._held.append(self.event_params())  # sent once its row is stored
            return
        self._emit()
        if not self._first_state.done():
            self._first_state.set_result(None)

    def media_ended(self, end: RuntimeEnd) -> None:
        self.size, self.duration = end.size, end.duration
        spawn(self._conclude(end.state, end.reason), name=f"recording-end-{self.id}")

    async def media_lost(self) -> None:
        """The worker that recorded died: repair what it wrote (`.part`) and end `finished`
        with that audio (`error` when nothing could be kept)."""
        part = part_path(self.path)
        if not await asyncio.to_thread(part.exists):
            await self._conclude(RecState.ERROR, "the media worker died before any audio was kept")
            return
        try:
            repaired = await asyncio.to_thread(repair_partial, part)
        except (ValueError, OSError) as exc:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            await self._conclude(RecState.ERROR, f"the media worker died and its file could "
                                                 f"not be repaired ({exc})")
            return
        log.warning("recording %s: its media worker died; %.1f s of audio repaired", self.id,
                    repaired.duration)
        self.size, self.duration = repaired.size, round(repaired.duration, 3)
        await self._conclude(RecState.FINISHED, None)

    async def _conclude(self, state: RecState, reason: str | None) -> None:
        """Enter the terminal `state`: store it (after the writes before it), report it,
        complete `done` (once)."""
        if self._concluding or self.done.done():
            return
        self._concluding = True
        self.state = state
        self.reason = reason if state is RecState.ERROR else None
        self.end_time = time.time()
        fields: dict[str, Any] = dict(
            state=state.value, duration=self.duration, size=self.size,
            start_time=self.start_time, end_time=self.end_time, reason=self.reason,
            parties=self.parties)
        if self._writes is not None:
            await self._writes  # never raises: the writes log their errors
        if self._row_wait is not None:
            await self._row_wait  # the events it held go first
        problem = await (self._store_update(**fields) if self._stored_state is not None
                         else self._store_add(state))
        if problem is not None:
            self.state = RecState.ERROR
            stored = f"its end could not be stored ({problem})"
            self.reason = f"{self.reason}; {stored}" if self.reason else stored
        self._emit()
        log.info("recording %s (%s) on call %s: %s, %.2f s, %s bytes%s", self.id,
                 self.control_id, self.call.id, self.state, self.duration or 0.0, self.size,
                 f" ({self.reason})" if self.reason else "")
        self.done.set_result(self.events[-1])
        if not self._first_state.done():
            self._first_state.set_result(None)
        if self.size is not None:  # its file is kept
            self.engine.concluded(self)

    async def _store_first_row(self) -> None:
        """Add its row (`recording`), first of its writes. SQLite answers in this turn (the
        commands that follow share its write): raises when it refuses the row. A network
        database may take long (a restart, a failover): the row is added in the background
        and the audio does not wait for it; the recording's events do (`_hold_events`)."""
        self._stored_state = RecState.RECORDING
        adding = self._add_first_row()
        if not self.engine.store.remote:
            await adding
            if self._row_problem is not None:
                raise RecordingError(self._row_problem)
            return
        self._writes = spawn(adding, name=f"recording-row-{self.id}")
        wait = ROW_WAIT if self.engine.store.reachable else 0.0  # known down: no wait
        self._row_wait = spawn(self._hold_events(self._writes, wait),
                               name=f"recording-row-wait-{self.id}")

    async def _hold_events(self, row: asyncio.Task[None], wait: float) -> None:
        """Hold the events until `row` is stored or `wait` seconds have passed, then send
        them: a listener that sees `recording` finds its row (unless the database is down).
        A refused row does not stop the audio: its end tries again and reports why not."""
        done, _ = await asyncio.wait({row}, timeout=wait)
        if not done:
            log.warning("recording %s records while its row waits for the database", self.id)
        held, self._held = self._held, []
        for params in held:
            self._emit(params)
        if held and not self._first_state.done():
            self._first_state.set_result(None)

    async def _add_first_row(self) -> None:
        self._row_problem = await self._store_add(RecState.RECORDING)
        if self._row_problem is not None:
            self._stored_state = None  # no row: its end tries again (and reports why not)

    async def _store_add(self, state: RecState) -> str | None:
        row = self._row(state)
        try:
            await persist(lambda: self.engine.store.add(row), f"recording {self.id}")
        except Exception as exc:
            log.error("recording %s: could not store it: %s", self.id, exc)
            return str(exc)
        return None

    def _store_later(self, **fields: Any) -> None:
        """Store `fields` after the writes queued before (in the background)."""
        self._writes = spawn(self._store_after(self._writes, fields),
                             name=f"recording-write-{self.id}")

    async def _store_after(self, previous: asyncio.Task[None] | None,
                           fields: dict[str, Any]) -> None:
        if previous is not None:
            await previous
        await self._store_update(**fields)

    async def _store_update(self, **fields: Any) -> str | None:
        """Store `fields` (waiting out a database outage); returns what went wrong (None when
        stored). Never raises."""
        try:
            await persist(lambda: self.engine.store.update(self.id, **fields),
                          f"recording {self.id} ({fields.get('state', 'its fields')})")
        except Exception as exc:
            log.error("recording %s: could not store %s: %s", self.id,
                      fields.get("state", "its state"), exc)
            return str(exc)
        return None

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
            pause_behavior=self._pause_behavior if state is RecState.PAUSED else None,
            peer_call_id=self.call.peer_id,
        )

    def _emit(self, params: dict[str, Any] | None = None) -> None:
        """Send `params` (by default the event of its state now) to every listener."""
        if params is None:
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
            parties=self.parties if state in TERMINAL else None,
        )


class _MediaReports:
    """Routes what the media halves report to the engine's recordings by id."""

    def __init__(self, active: dict[str, Recording]) -> None:
        self._active = active

    def transition(self, recording_id: str, state: RecState, pause_behavior: str | None) -> None:
        recording = self._active.get(recording_id)
        if recording is not None:
            recording.media_transition(state, pause_behavior)

    def ended(self, recording_id: str, end: RuntimeEnd) -> None:
        recording = self._active.get(recording_id)
        if recording is not None:
            recording.media_ended(end)

    def lost(self, recording_id: str) -> None:
        recording = self._active.get(recording_id)
        if recording is not None:
            spawn(recording.media_lost(), name=f"recording-repair-{recording_id}")


class RecordingEngine:
    """Every recording of the platform, with the pools, store and webhooks they use."""

    def __init__(self, *, data_dir: Path, public_url: str, node_id: str,
                 signing_keys: dict[str, str] | None = None,
                 database: Database | None = None) -> None:
        self.recordings_dir = data_dir / "recordings"
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self.node_id = node_id
        # A shared database holds other nodes' recordings too: `recover` leaves them alone.
        self.shared = database is not None
        self.store: RecordingStore
        if database is None:
            self.store = SqliteRecordingStore(data_dir / "recordings.db")
            queue = WebhookQueue(SqliteQueueDb(data_dir / "webhooks.db"))
        else:
            self.store = PostgresRecordingStore(database)
            queue = WebhookQueue(PostgresQueueDb(database, node_id))
        self.webhooks = RecordWebhooks(queue, signing_keys or {})
        self.active: dict[str, Recording] = {}
        self.reports: RuntimeReports = _MediaReports(self.active)
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
        return await self.recover()

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

    async def recover(self) -> list[RecordingRow]:
        """At start-up: finish the recordings a crash (or a full disk) left unfinished, store
        and report them (log, and webhook when they had a status_url).

        - A `.part` file is repaired and stored `finished`; one that cannot be repaired (a
          0-byte file, not ours) is removed, with a log line, and its row ends in `error`.
        - A row still running whose final file exists ended but could not store its end: it
          is stored `error` with the file's duration and size (the audio is kept).
        - A row with no file at all ends in `error`: nothing was written.

        With a shared database only this node's rows are repaired: those whose file (`.part`
        or final) is in this node's recordings directory, and those without a file whose url
        is this node's (a node restarted under another url still repairs what it recorded).
        """
        recovered = []
        rows = {row.id: row for row in await self.store.unfinished()}
        for part in sorted(self.recordings_dir.glob("*.part")):
            rec_id = part.name.split(".", 1)[0]
            row = rows.pop(rec_id, None)
            try:
                repaired = repair_partial(part)
            except (ValueError, OSError) as exc:
                part.unlink(missing_ok=True)
                log.warning("removed %s: it cannot be repaired (%s)", part, exc)
                if row is not None:
                    await self.store.update(
                        row.id, state=RecState.ERROR.value, end_time=time.time(),
                        reason=f"lost in a crash: its file could not be repaired ({exc})")
                continue
            if row is None:
                log.warning("repaired %s but it has no metadata; left as %s", part,
                            repaired.final_path)
                continue
            updated = await self._store_end(row, RecState.FINISHED, repaired.duration,
                                            repaired.size, "recovered after a crash")
            log.warning("recovered recording %s (%.1f s) left unfinished by a crash",
                        rec_id, repaired.duration)
            recovered.append(updated)
        for row in rows.values():
            if not self.shared or self._recorded_here(row):
                recovered += await self._recover_without_part(row)
        return recovered

    def _recorded_here(self, row: RecordingRow) -> bool:
        """One of this node's recordings (with a shared database): its file is here, or it
        has none and its url is this node's."""
        path = Path(row.path)
        if path.parent.resolve() == self.recordings_dir.resolve() and path.exists():
            return True
        return row.url.startswith(f"{self.public_url}/recordings/")

    async def _recover_without_part(self, row: RecordingRow) -> list[RecordingRow]:
        path = Path(row.path)
        if not path.exists():  # metadata without a file: nothing was written
            await self.store.update(row.id, state=RecState.ERROR.value,
                                    reason="lost in a crash before any audio")
            return []
        try:
            found = describe_finished(path)
        except (ValueError, OSError) as exc:
            log.warning("recording %s: its file %s is not readable (%s)", row.id, path, exc)
            await self.store.update(row.id, state=RecState.ERROR.value,
                                    reason=f"its end was not stored and its file is "
                                           f"unreadable ({exc})")
            return []
        log.warning("recording %s (%.1f s): its end was not stored; its file is complete",
                    row.id, found.duration)
        return [await self._store_end(row, RecState.ERROR, found.duration, found.size,
                                "its end could not be stored (was the disk full?); "
                                "the file is complete")]

    async def _store_end(self, row: RecordingRow, state: RecState, duration: float, size: int,
                   reason: str) -> RecordingRow:
        """Store a recovered recording's end and report it."""
        end_time = time.time()
        await self.store.update(row.id, state=state.value, duration=round(duration, 3),
                                size=size, end_time=end_time, reason=reason)
        updated = await self.store.get(row.id) or row
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
        await self.webhooks.close()
        await self.store.close()
