"""The call: the centre of the platform.

A `Call` owns its SIP leg, its media session and its running operations (plays, recordings).
SWML scripts, RELAY sessions and REST requests are different ways of commanding it; none of them
owns audio. What others attach to a call goes through methods that return an unsubscribe
function: `add_tap` (both streams, every 20 ms tick), `on_state`, `on_dtmf`, and
`attach_recording` for the recording engine. The call tells each recording who it holds
(`recording.parties`) when it is attached and whenever the bridge sets or clears `peer`
(`set_peer`).

Order of notification when the call ends (hangup from either side):
1. `ending`: the call stops its own operations first - its recordings (oldest first), then its
   plays - and only then tells the state listeners `ending`, in subscription order.
2. `ended`: once every recording of the call has reported its terminal event (`finished`,
   `no_input`, `error`; waited for at most ENDED_WAITS_FOR_RECORDINGS), the state listeners are
   told `ended`, in subscription order. So observers (RELAY, SWML, the AI) always see a
   recording's end before the call's `ended`, as SignalWire clients expect.
Digits queued by `send_digits` and not yet sent report their failure at `ending`, before the
state listeners are told.
Other state changes (`ringing`, `answered`) go to the state listeners in subscription order.
Taps run every tick in the order they were added, after the frame was sent; DTMF listeners get
each received digit in subscription order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import numpy as np

from callbox.server.media.playback import PLAYING, REASON_DONE
from callbox.server.media.session import FrameTap
from callbox.server.media.sound import SHARED_SOUNDS, Sound, SoundCache
from callbox.server.recording.parties import parties_of
from callbox.server.recording.runtime import RuntimeReports
from callbox.server.recording.target import AttachedRecording, RecordingMedia, Unsubscribe
from callbox.server.sip.endpoint import InboundInvite, Leg
from callbox.server.tasks import spawn
from callbox.server.worker.handle import MediaHandle, RemotePlayback

log = logging.getLogger(__name__)

# Final responses for a call hung up before it was answered.
REJECT_STATUS = {"busy": 486, "decline": 603, "hangup": 480, "error": 500}
# `ended` waits this long (seconds) for the call's recordings to report their end.
ENDED_WAITS_FOR_RECORDINGS = 10.0



class CallState(StrEnum):
    CREATED = "created"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDING = "ending"
    ENDED = "ended"


class CallGone(RuntimeError):
    """The call has ended; commands on it fail with this."""


class PlayOperation:
    """A playback on a call, with a future that completes when it finishes."""

    def __init__(self, playback: RemotePlayback, loop: asyncio.AbstractEventLoop) -> None:
        self.playback = playback
        self.done: asyncio.Future[str] = loop.create_future()
        self.listeners: list[Callable[[str], None]] = []
        playback.on_state = self._on_state
        if playback.state == "finished":  # on a session that had closed
            self.done.set_result(playback.finished_reason or REASON_DONE)

    def _on_state(self, state: str) -> None:
        for listener in tuple(self.listeners):
            listener(state)
        if state == "finished" and not self.done.done():
            self.done.set_result(self.playback.finished_reason or REASON_DONE)

    async def wait(self) -> str:
        return await asyncio.shield(self.done)


class Call:
    def __init__(
        self,
        *,
        leg: Leg,
        media: MediaHandle,
        sdp_answer: bytes,
        from_uri: str,
        to_uri: str,
        from_user: str,
        to_user: str,
        on_ended: Callable[[Call], None] | None = None,
        call_id: str | None = None,
    ) -> None:
        self.id = call_id or str(uuid.uuid4())
        self.leg = leg
        self.media = media
        self.sdp_answer = sdp_answer
        self.from_uri, self.to_uri = from_uri, to_uri
        self.from_user, self.to_user = from_user, to_user
        self.direction = "inbound"
        self.state = CallState.CREATED
        self.end_reason: str | None = None
        self._peer: Call | None = None  # the other party while bridged (set by the bridge)
        self.sounds: SoundCache = SHARED_SOUNDS  # where `play` gets its rendered prompts
        self.created_at = time.time()
        self.answered_at: float | None = None
        self._state_listeners: list[Callable[[Call], None]] = []
        self.plays: list[PlayOperation] = []
        self._starting_plays: set[asyncio.Future[None]] = set()  # plays rendering their audio
        self._recordings: list[AttachedRecording] = []  # newest last
        self._digit_sends: list[Callable[[bool], None]] = []  # their on_done, oldest first
        self.project_id = ""
        self._loop = asyncio.get_running_loop()
        self.ended = asyncio.Event()
        self._on_ended = on_ended
        leg.on_terminated = self._on_leg_terminated
        media.on_lost(self._on_media_lost)

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.from_user}->{self.to_user} {self.state}>"

    @property
    def is_active(self) -> bool:
        return self.state not in (CallState.ENDING, CallState.ENDED)

    @property
    def peer(self) -> Call | None:
        """The call this one is bridged to, None when not bridged."""
        return self._peer

    def set_peer(self, peer: Call | None) -> None:
        """Bridged to `peer` now (None: no longer bridged; the bridge calls it); the running
        recordings are told who they hold now."""
        self._peer = peer
        parties = parties_of(self)
        for recording in tuple(self._recordings):
            if not recording.is_done:
                recording.note_parties(parties)

    @property
    def peer_id(self) -> str | None:
        """The id of the call this one is bridged to, None when not bridged."""
        return self.peer.id if self.peer is not None else None

    @property
    def recordings(self) -> tuple[AttachedRecording, ...]:
        """Every recording started on the call, oldest first (running and ended)."""
        return tuple(self._recordings)

    def on_state(self, listener: Callable[[Call], None]) -> Unsubscribe:
        """Call `listener(call)` after each state change (order: see the module docstring).
        Returns the unsubscribe function (safe to call twice)."""
        self._state_listeners.append(listener)
        return lambda: _discard(self._state_listeners, listener)

    def add_tap(self, tap: FrameTap) -> Unsubscribe:
        """Call `tap(speak, listen)` every tick while the media runs (arrays are reused: copy
        what you keep). Returns the function that removes it."""
        return self.media.add_tap(tap)

    def on_dtmf(self, listener: Callable[[str], None]) -> Unsubscribe:
        """Subscribe to received digits; returns the unsubscribe function."""
        return self.media.on_dtmf(listener)

    def record_media(self, recording_id: str, reports: RuntimeReports) -> RecordingMedia:
        """The media half of a new recording on this call (where the call's media runs)."""
        return self.media.record_media(recording_id, reports)

    def attach_recording(self, recording: AttachedRecording) -> None:
        """Make `recording` one of the call's operations: it is stopped first when the call
        ends, and `ended` waits for its terminal event; it is told who it holds now and at each
        `set_peer`. Raises CallGone after the end."""
        self._require_active()
        self._recordings.append(recording)
        recording.note_parties(parties_of(self))

    def _set_state(self, state: CallState) -> None:
        self.state = state
        for listener in tuple(self._state_listeners):
            try:
                listener(self)
            except Exception:
                log.exception("call state listener failed")

    def _require_active(self) -> None:
        if not self.is_active:
            raise CallGone(f"call {self.id} has ended")

    # -- control --------------------------------------------------------------------------

    def ring(self) -> None:
        if self.state is CallState.CREATED and isinstance(self.leg, InboundInvite):
            self.leg.ringing()
            self._set_state(CallState.RINGING)

    def answer(self) -> None:
        """Answer (idempotent): 200 OK with our SDP, and media starts flowing."""
        self._require_active()
        if self.state is CallState.ANSWERED:
            return
        if isinstance(self.leg, InboundInvite):
            self.leg.accept(self.sdp_answer)
        self.start_media()
        self.answered_at = time.time()
        self._set_state(CallState.ANSWERED)
        log.info("call %s answered (%s -> %s)", self.id, self.from_user, self.to_user)

    def start_media(self) -> None:
        self.media.start()

    async def hangup(self, reason: str = "hangup") -> None:
        """End the call from our side: BYE when answered, a final error response before."""
        if not self.is_active:
            return
        answered = self.state is CallState.ANSWERED
        self._begin_ending()
        if not answered and isinstance(self.leg, InboundInvite):
            self.leg.reject(REJECT_STATUS.get(reason, 480))
        self._finish(reason)
        if answered:  # the call is over for us now; the BYE retransmits until answered
            await self.leg.bye()

    def _on_media_lost(self) -> None:
        """The media worker died: the call cannot go on (its recordings are repaired)."""
        if self.is_active:
            log.error("call %s: its media worker died; hanging up", self.id)
            spawn(self.hangup("error"), name=f"call-media-lost-{self.id}")

    def _on_leg_terminated(self, why: str) -> None:
        if not self.is_active:
            return
        reason = {"hangup": "hangup", "cancel": "cancel", "timeout": "error"}.get(why, why)
        self._begin_ending()
        self._finish(reason)

    def _begin_ending(self) -> None:
        """`ending`: no more frames; our own operations stop before anyone is told."""
        self.state = CallState.ENDING
        self.media.close()
        for recording in tuple(self._recordings):
            if not recording.is_done:
                try:
                    recording.stop()
                except Exception:
                    log.exception("call %s: stopping recording %s failed", self.id,
                                  recording.control_id)
        for play in tuple(self.plays):
            play.playback.stop()
        unsent, self._digit_sends = self._digit_sends, []
        for on_done in unsent:
            _report(on_done, False)
        self._set_state(CallState.ENDING)

    def _finish(self, reason: str) -> None:
        self.end_reason = reason
        pending = [r.done for r in self._recordings if not r.done.done()]
        if pending:
            spawn(self._end_after(pending), name=f"call-ended-{self.id}")
        else:
            self._end()

    async def _end_after(self, recordings: list[asyncio.Future[Any]]) -> None:
        _done, late = await asyncio.wait(recordings, timeout=ENDED_WAITS_FOR_RECORDINGS)
        if late:
            log.warning("call %s: %d recording(s) did not end within %.0f s", self.id,
                        len(late), ENDED_WAITS_FOR_RECORDINGS)
        self._end()

    def _end(self) -> None:
        self._set_state(CallState.ENDED)
        self.ended.set()
        duration = time.time() - self.answered_at if self.answered_at else 0.0
        log.info("call %s ended: %s (%.1f s answered)", self.id, self.end_reason, duration)
        if self._on_ended is not None:
            self._on_ended(self)

    async def wait_ended(self) -> None:
        await self.ended.wait()

    # -- media ----------------------------------------------------------------------------

    async def play(
        self,
        urls: Sequence[str],
        *,
        volume_db: float = 0.0,
        loop: int = 1,
        control_id: str = "",
    ) -> PlayOperation:
        """Render `urls` (say:, silence:, tone:, http(s), files) and start playing them."""
        self._require_active()
        starting: asyncio.Future[None] = self._loop.create_future()
        self._starting_plays.add(starting)
        try:
            segments = [await self.sounds.get(url) for url in urls]
        finally:  # waiters resume after play_samples below ran: they see the play
            self._starting_plays.discard(starting)
            starting.set_result(None)
        return self.play_samples(segments, volume_db=volume_db, loop=loop, control_id=control_id)

    async def prompts_played(self) -> None:
        """Wait for the plays running or starting now to finish (plays looping forever and
        paused plays are not waited for). A recording's beep waits for this."""
        starting = tuple(self._starting_plays)
        if starting:
            await asyncio.wait(starting)
        running = [op.done for op in self.plays
                   if op.playback.state == PLAYING and op.playback.loop != 0]
        if running:
            await asyncio.wait(running)

    def send_digits(self, digits: str, on_done: Callable[[bool], None]) -> None:
        """Send RFC 4733 digits on the call's media (`w` waits 0.5 s, `W` 1 s);
        `on_done(True)` runs in the media tick that sent the last of them, `on_done(False)`
        when the call ends first (before `ending` is told). Raises CallGone after the end,
        ValueError for a bad digit or a peer without telephone-event."""
        self._require_active()

        def sent() -> None:
            if on_done in self._digit_sends:
                self._digit_sends.remove(on_done)
                _report(on_done, True)

        self.media.send_dtmf(digits, on_sent=sent)
        self._digit_sends.append(on_done)

    def play_samples(
        self,
        segments: Sequence[np.ndarray | Sound],
        *,
        volume_db: float = 0.0,
        loop: int = 1,
        control_id: str = "",
    ) -> PlayOperation:
        self._require_active()
        playback = self.media.play(segments, volume_db=volume_db, loop=loop,
                                   control_id=control_id)
        operation = PlayOperation(playback, self._loop)
        self.plays.append(operation)
        operation.done.add_done_callback(lambda _: self.plays.remove(operation))
        return operation


def _report(on_done: Callable[[bool], None], sent: bool) -> None:
    try:
        on_done(sent)
    except Exception:
        log.exception("digits on_done callback failed")


def _discard(items: list[Any], item: object) -> None:
    if item in items:
        items.remove(item)
