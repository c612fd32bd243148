"""The `calling.*` commands: answer, end, play (+ stop/pause/resume/volume), record (+ stop/
pause/resume).

Every command answers with a `result` whose `code` says how it went: "200", "400" with a message
naming the wrong field, "404" for an unknown call or control_id, "410" for a call that has ended.
Commands only touch the platform's `Call` and the recording engine; the events they cause are
sent by `CallEntry` (calls.py).

A `calling.record` with `beep: true` starts once the prompts playing on the call are over
(the recording engine's rule, the same for SWML and agents): the official client's `play()`
returns as soon as the play started, so `await call.play(prompt)` then `call.record(audio=
{"beep": True})` must not beep over the prompt. The reply waits for that (up to REPLY_WITHIN).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from callbox.server.call import CallGone
from callbox.server.media.sources import MediaError
from callbox.server.recording.engine import RecordingError
from callbox.server.relay.calls import CallEntry, PlayControl, RecordControl
from callbox.server.relay.input import InputCommands
from callbox.server.relay.results import (
    REPLY_WITHIN,
    CommandError,
    Handler,
    Result,
    SessionHandler,
    bad_params,
    call_gone,
    find_control,
    ok,
)
from callbox.server.tasks import spawn
from callbox.wire import relay as wire
from callbox.wire.recording import PAUSE_BEHAVIORS, RecordParamError, RecordParams

if TYPE_CHECKING:
    from callbox.server.relay.session import Session
    from callbox.server.services import Services

log = logging.getLogger(__name__)

class CallDirectory(Protocol):
    """What the commands need of the hub: the calls a session may command."""

    services: Services

    def entry_for(self, session: Session, call_id: str) -> CallEntry | None: ...

    def recently_ended(self, project_id: str, call_id: str) -> bool: ...


class Commands:
    def __init__(self, hub: CallDirectory) -> None:
        self.hub = hub
        self._handlers: dict[str, Handler] = {
            wire.ANSWER: self.answer,
            wire.END: self.end,
            wire.PLAY: self.play,
            wire.PLAY_STOP: self.play_stop,
            wire.PLAY_PAUSE: self.play_pause,
            wire.PLAY_RESUME: self.play_resume,
            wire.PLAY_VOLUME: self.play_volume,
            wire.RECORD: self.record,
            wire.RECORD_STOP: self.record_stop,
            wire.RECORD_PAUSE: self.record_pause,
            wire.RECORD_RESUME: self.record_resume,
            **InputCommands().handlers(),
        }
        self._session_handlers: dict[str, SessionHandler] = {}

    def register(self, handlers: Mapping[str, Handler],
                 session_handlers: Mapping[str, SessionHandler] | None = None) -> None:
        """Add commands kept in other modules (on a call, or with no call_id)."""
        self._handlers.update(handlers)
        self._session_handlers.update(session_handlers or {})

    def knows(self, method: str) -> bool:
        return method in self._handlers or method in self._session_handlers

    async def execute(self, session: Session, method: str, params: Mapping[str, Any]) -> Result:
        """Run one calling command; always returns a result (never raises for bad input)."""
        try:
            if method in self._session_handlers:
                return await self._session_handlers[method](session, params)
            call_id = params.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise CommandError(wire.CODE_BAD_REQUEST, "call_id is required")
            entry = self.hub.entry_for(session, call_id)
            if entry is None:
                if self.hub.recently_ended(session.project_id, call_id):
                    raise CommandError(wire.CODE_GONE, f"call {call_id} has ended")
                raise CommandError(wire.CODE_NOT_FOUND, f"no call with call_id {call_id!r}")
            return await self._handlers[method](session, entry, params)
        except CommandError as exc:
            return wire.command_result(exc.code, exc.message)
        except Exception:
            log.exception("RELAY %s failed", method)
            return wire.command_result(wire.CODE_SERVER_ERROR, f"{method} failed on the server")

    # -- call control ----------------------------------------------------------------------

    async def answer(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                     ) -> Result:
        max_duration = params.get("max_duration")
        seconds = 0.0
        if max_duration is not None:
            number = wire.to_number(max_duration)
            if number is None or number < 0:
                raise CommandError(wire.CODE_BAD_REQUEST, "max_duration must be a number of "
                                   f"seconds > 0, got {max_duration!r}")
            seconds = number
        try:
            entry.call.answer()
        except CallGone:
            raise call_gone(entry) from None
        if seconds > 0 and entry.max_duration_timer is None:
            call = entry.call
            entry.max_duration_timer = asyncio.get_running_loop().call_later(
                seconds, lambda: spawn(call.hangup("max_duration"), name=f"max-dur-{call.id}"))
        return ok("Answered")

    async def end(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                  ) -> Result:
        reason = params.get("reason", "hangup") or "hangup"
        if reason not in wire.HANGUP_REASONS:
            raise CommandError(wire.CODE_BAD_REQUEST, "reason must be one of "
                               f"{', '.join(map(repr, wire.HANGUP_REASONS))}, got {reason!r}")
        if not entry.call.is_active:
            raise call_gone(entry)
        hangup = spawn(entry.call.hangup(reason), name=f"relay-end-{entry.call.id}")
        await asyncio.wait({hangup}, timeout=REPLY_WITHIN)  # the BYE may go unanswered
        return ok("Ending")

    # -- play -----------------------------------------------------------------------------

    async def play(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                   ) -> Result:
        try:
            urls = wire.play_urls(params.get("play"))
            volume = wire.parse_volume(params.get("volume"))
            loop = wire.parse_loop(params.get("loop"))
            control_id = wire.parse_control_id(params.get("control_id"))
        except wire.ParamError as exc:
            raise bad_params(exc) from None
        direction = params.get("direction")
        if direction is not None and direction not in wire.PLAY_DIRECTIONS:
            raise CommandError(wire.CODE_BAD_REQUEST, "direction must be 'listen' or 'both' "
                               f"(what the caller hears), got {direction!r}")
        if not entry.call.is_active:
            raise call_gone(entry)
        if control_id in entry.plays:
            raise CommandError(wire.CODE_BAD_REQUEST,
                               f"control_id {control_id!r} is already playing on this call")
        control = PlayControl(session, control_id)
        entry.plays[control_id] = control
        # not `spawn`: an error before the reply is the reply, not a failure to log
        control.task = asyncio.get_running_loop().create_task(
            self._start_play(entry, control, urls, volume, loop), name=f"relay-play-{control_id}")
        await asyncio.wait({control.task}, timeout=REPLY_WITHIN)
        if not control.task.done():  # still fetching its audio: events tell the rest
            control.replied = True
            return ok("Playing", control_id=control_id)
        error = control.task.exception()
        if error is not None:
            entry.plays.pop(control_id, None)
            if isinstance(error, CallGone):
                raise call_gone(entry)
            if isinstance(error, MediaError):
                raise CommandError(wire.CODE_BAD_REQUEST, f"play: {error}")
            raise error
        return ok("Playing", control_id=control_id)

    async def _start_play(self, entry: CallEntry, control: PlayControl, urls: list[str],
                          volume: float, loop: int) -> None:
        try:
            op = await entry.call.play(urls, volume_db=volume, loop=loop,
                                       control_id=control.control_id)
        except Exception as exc:
            if not control.replied:
                raise  # the command answers with the error
            if not isinstance(exc, MediaError | CallGone):
                log.exception("play %s on call %s failed", control.control_id, entry.call.id)
            entry.play_failed(control, str(exc))
            return
        entry.play_started(control, op)

    def _play(self, entry: CallEntry, params: Mapping[str, Any]) -> PlayControl:
        return find_control(params, "play", entry.plays.get)

    async def play_stop(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                        ) -> Result:
        control = self._play(entry, params)
        if control.op is None:
            control.stop_requested = True
        else:
            control.op.playback.stop()
        return ok("Stopped", control_id=control.control_id)

    async def play_pause(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                         ) -> Result:
        control = self._play(entry, params)
        if control.op is None:
            control.pause_requested = True
        else:
            control.op.playback.pause()
        return ok("Paused", control_id=control.control_id)

    async def play_resume(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                          ) -> Result:
        control = self._play(entry, params)
        if control.op is None:
            control.pause_requested = False
        else:
            control.op.playback.resume()
        return ok("Resumed", control_id=control.control_id)

    async def play_volume(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                          ) -> Result:
        control = self._play(entry, params)
        if params.get("volume") is None:
            raise CommandError(wire.CODE_BAD_REQUEST, "volume (dB, -40 to 40) is required")
        try:
            volume = wire.parse_volume(params.get("volume"))
        except wire.ParamError as exc:
            raise bad_params(exc) from None
        if control.op is None:
            control.volume_requested = volume
        else:
            control.op.playback.set_volume(volume)
        return ok("Volume set", control_id=control.control_id, volume=volume)

    # -- record ---------------------------------------------------------------------------

    async def record(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                     ) -> Result:
        record = params.get("record")
        if record is None:
            record = {}
        if not isinstance(record, Mapping):
            raise CommandError(wire.CODE_BAD_REQUEST,
                               'record must be an object: {"audio": {...}}')
        try:
            audio = record.get("audio")
            record_params = RecordParams.parse(audio, "relay")
            control_id = wire.parse_control_id(params.get("control_id"))
        except (RecordParamError, wire.ParamError) as exc:
            raise bad_params(exc) from None
        if not entry.call.is_active:
            raise call_gone(entry)
        if control_id in entry.records:
            raise CommandError(wire.CODE_BAD_REQUEST,
                               f"control_id {control_id!r} is already recording on this call")
        recorder = self.hub.services.recorder
        if recorder is None:
            raise CommandError(wire.CODE_SERVER_ERROR, "recording is not available yet")
        try:
            recording = recorder.create_recording(
                entry.call, record_params, control_id=control_id,
                project_id=entry.call.project_id)
        except CallGone:
            raise call_gone(entry) from None
        except RecordingError as exc:
            if not entry.call.is_active:
                raise call_gone(entry) from None
            raise CommandError(wire.CODE_BAD_REQUEST, str(exc)) from None
        control = entry.recording_created(session, recording)
        # not `spawn`: start() reports its own failures as an `error` event
        control.task = asyncio.get_running_loop().create_task(
            recording.start(), name=f"relay-record-{control_id}")
        await asyncio.wait({control.task}, timeout=REPLY_WITHIN)
        if not control.task.done():
            return ok("Recording starts after the prompt", control_id=control_id)
        return ok("Recording", control_id=control_id, url=recording.url)

    def _record(self, entry: CallEntry, params: Mapping[str, Any]) -> RecordControl:
        return find_control(params, "recording", entry.records.get)

    async def record_stop(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                          ) -> Result:
        control = self._record(entry, params)
        control.recording.stop()
        return ok("Stopped", control_id=control.control_id)

    async def record_pause(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                           ) -> Result:
        control = self._record(entry, params)
        behavior = params.get("behavior") or "silence"
        if behavior not in PAUSE_BEHAVIORS:
            raise CommandError(wire.CODE_BAD_REQUEST,
                               f"behavior must be 'silence' or 'skip', got {behavior!r}")
        control.recording.pause(behavior)
        return ok("Paused", control_id=control.control_id)

    async def record_resume(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                            ) -> Result:
        control = self._record(entry, params)
        control.recording.resume()
        return ok("Resumed", control_id=control.control_id)
