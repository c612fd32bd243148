"""What RELAY keeps per call: who gets its events, and its plays and recordings by control_id.

A `CallEntry` subscribes to its `Call`'s state changes and turns them into
`calling.call.state` events for every session bound to the call (the one it was offered to, and
any other session of the project that sent it a command). Plays and recordings report to the
session that started them. The call tells `ended` only after its recordings reported their
terminal event (see `callbox.server.call`), so a client that forgets a call once it has ended
still gets its recordings' results.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callbox.server.call import Call, CallState, PlayOperation
from callbox.wire import relay as wire
from callbox.wire.recording import TERMINAL_STATES

if TYPE_CHECKING:
    from callbox.server.recording.engine import Recording
    from callbox.server.relay.session import Session

log = logging.getLogger(__name__)



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
    """A `calling.record` by control_id: its recording (the engine applies commands that
    arrive before it records) and the task starting it."""

    session: Session
    recording: Recording
    task: asyncio.Task[Any] | None = None

    @property
    def control_id(self) -> str:
        return self.recording.control_id


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
    unsubscribe_state: Callable[[], None] | None = None
    dialled_device: dict[str, Any] | None = None  # as a RELAY dial/connect named the callee

    def __post_init__(self) -> None:
        self.unsubscribe_state = self.call.on_state(self._on_state)

    # -- shapes ---------------------------------------------------------------------------

    @property
    def device(self) -> dict[str, Any]:
        if self.dialled_device is not None:
            return self.dialled_device
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
        self.emit(wire.CALL_STATE, self.state_params(state.value))
        if state is CallState.ENDED:
            if self.unsubscribe_state is not None:
                self.unsubscribe_state()
            if self.max_duration_timer is not None:
                self.max_duration_timer.cancel()
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

    def recording_created(self, session: Session, recording: Recording) -> RecordControl:
        """Track `recording` by its control_id; its events go to `session` as they happen."""
        control = RecordControl(session, recording)
        self.records[recording.control_id] = control

        def forward(params: dict[str, Any]) -> None:
            session.emit(wire.CALL_RECORD, params)
            if params.get("state") in TERMINAL_STATES and \
                    self.records.get(control.control_id) is control:
                del self.records[control.control_id]

        recording.listeners.append(forward)
        return control
