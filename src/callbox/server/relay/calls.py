"""What RELAY keeps per call: who gets its events, and its plays and recordings by control_id.

A `CallEntry` subscribes to its `Call`'s state changes and turns them into
`calling.call.state` events for every session bound to the call (the one it was offered to, and
any other session of the project that sent it a command). Plays and recordings report to the
session that started them. The `ended` state event waits (a little) for the call's recordings
to report their terminal event first, so a client that forgets a call once it has ended still
gets its recordings' results.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callbox.server.call import Call, CallState, PlayOperation
from callbox.server.tasks import spawn
from callbox.wire import relay as wire
from callbox.wire.recording import TERMINAL_STATES, RecordParams, record_event_params

if TYPE_CHECKING:
    from callbox.server.recording.engine import Recording
    from callbox.server.relay.session import Session

log = logging.getLogger(__name__)

ENDED_WAITS_FOR_RECORDINGS = 10.0  # seconds


@dataclass
class PlayControl:
    """A `calling.play` by control_id: pending while its media renders, then running."""

    session: Session
    control_id: str
    op: PlayOperation | None = None
    task: asyncio.Task[Any] | None = None
    replied: bool = False
    # commands that arrived while the media was still rendering
    stop_requested: bool = False
    pause_requested: bool = False
    volume_requested: float | None = None


@dataclass
class RecordControl:
    """A `calling.record` by control_id: pending until the engine started it."""

    session: Session
    control_id: str
    params: RecordParams
    recording: Recording | None = None
    task: asyncio.Task[Any] | None = None
    replied: bool = False
    stop_requested: bool = False
    pause_requested: str | None = None  # behavior


@dataclass
class CallEntry:
    call: Call
    node_id: str
    tag: str = field(default_factory=lambda: str(uuid.uuid4()))
    segment_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sessions: list[Session] = field(default_factory=list)
    plays: dict[str, PlayControl] = field(default_factory=dict)
    records: dict[str, RecordControl] = field(default_factory=dict)
    on_ended: Callable[[CallEntry], None] | None = None
    max_duration_timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.call.state_listeners.append(self._on_state)

    # -- shapes ---------------------------------------------------------------------------

    @property
    def device(self) -> dict[str, Any]:
        call = self.call
        return wire.sip_device(from_uri=call.from_uri, to_uri=call.to_uri,
                               from_number=call.from_user, to_number=call.to_user)

    def receive_params(self, context: str) -> dict[str, Any]:
        return wire.receive_params(
            call_id=self.call.id, node_id=self.node_id, project_id=self.call.project_id,
            context=context, tag=self.tag, device=self.device, segment_id=self.segment_id)

    def state_params(self, state: str) -> dict[str, Any]:
        return wire.state_params(
            call_id=self.call.id, node_id=self.node_id, tag=self.tag, state=state,
            direction=self.call.direction, device=self.device, end_reason=self.call.end_reason)

    # -- sessions -------------------------------------------------------------------------

    def bind(self, session: Session) -> None:
        if session not in self.sessions:
            self.sessions.append(session)

    def unbind(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def emit(self, event_type: str, params: dict[str, Any]) -> None:
        for session in tuple(self.sessions):
            session.emit(event_type, params)

    # -- call state -----------------------------------------------------------------------

    def _on_state(self, call: Call) -> None:
        state = call.state
        if state is CallState.ENDED:
            call.state_listeners.remove(self._on_state)
            if self.max_duration_timer is not None:
                self.max_duration_timer.cancel()
            spawn(self._report_ended(), name=f"relay-ended-{call.id}")
            return
        self.emit(wire.CALL_STATE, self.state_params(state.value))

    async def _report_ended(self) -> None:
        """`ended` after the call's recordings reported their terminal event."""
        pending: list[asyncio.Future[Any]] = []
        for control in list(self.records.values()):
            if control.recording is not None and not control.recording.is_done:
                pending.append(control.recording.done)
            elif control.task is not None and not control.task.done():
                pending.append(control.task)
        if pending:
            await asyncio.wait(pending, timeout=ENDED_WAITS_FOR_RECORDINGS)
        self.emit(wire.CALL_STATE, self.state_params(CallState.ENDED.value))
        if self.on_ended is not None:
            self.on_ended(self)

    # -- plays ----------------------------------------------------------------------------

    def play_started(self, control: PlayControl, op: PlayOperation) -> None:
        control.op = op
        self._play_event(control, "playing")
        op.listeners.append(lambda state: self._play_event(control, state))
        if control.volume_requested is not None:
            op.playback.set_volume(control.volume_requested)
        if control.stop_requested:
            op.playback.stop()
        elif control.pause_requested:
            op.playback.pause()

    def play_failed(self, control: PlayControl, reason: str) -> None:
        """A play that never started, after its command was answered: report an error."""
        self._play_event(control, "error", reason)

    def _play_event(self, control: PlayControl, state: str, reason: str | None = None) -> None:
        control.session.emit(wire.CALL_PLAY, wire.play_params(
            call_id=self.call.id, node_id=self.node_id, control_id=control.control_id,
            state=state, reason=reason))
        if state in wire.PLAY_TERMINAL_STATES and self.plays.get(control.control_id) is control:
            del self.plays[control.control_id]

    # -- recordings -----------------------------------------------------------------------

    def recording_started(self, control: RecordControl, recording: Recording) -> None:
        """Forward the engine's events (those already emitted too) to the session."""
        control.recording = recording

        def forward(params: dict[str, Any]) -> None:
            control.session.emit(wire.CALL_RECORD, params)
            if params.get("state") in TERMINAL_STATES and \
                    self.records.get(control.control_id) is control:
                del self.records[control.control_id]

        for params in list(recording.events):
            forward(params)
        recording.listeners.append(forward)
        if not recording.is_done:
            if control.stop_requested:
                recording.stop()
            elif control.pause_requested:
                recording.pause(control.pause_requested)

    def recording_failed(self, control: RecordControl, reason: str, state: str = "error"
                         ) -> None:
        """A recording that never started, after its command was answered: report its end."""
        if self.records.get(control.control_id) is control:
            del self.records[control.control_id]
        control.session.emit(wire.CALL_RECORD, record_event_params(
            call_id=self.call.id, node_id=self.node_id, control_id=control.control_id,
            recording_id="", state=state, url="", params=control.params,
            reason=reason if state == "error" else None))
