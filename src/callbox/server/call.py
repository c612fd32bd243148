"""The call: the centre of the platform.

A `Call` owns its SIP leg, its media session and its running operations (plays; recordings from
issue 2/6). SWML scripts, RELAY sessions and REST requests are different ways of commanding it;
none of them owns audio.
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

from callbox.server.media.clock import MediaClock
from callbox.server.media.playback import Playback
from callbox.server.media.session import MediaSession
from callbox.server.media.sources import render_media_url
from callbox.server.sip.endpoint import InboundInvite, Leg

log = logging.getLogger(__name__)

# Final responses for a call hung up before it was answered.
REJECT_STATUS = {"busy": 486, "decline": 603, "hangup": 480, "error": 500}


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

    def __init__(self, playback: Playback, loop: asyncio.AbstractEventLoop) -> None:
        self.playback = playback
        self.done: asyncio.Future[str] = loop.create_future()
        self.listeners: list[Callable[[str], None]] = []
        playback.on_state = self._on_state

    def _on_state(self, state: str) -> None:
        for listener in tuple(self.listeners):
            listener(state)
        if state == "finished" and not self.done.done():
            self.done.set_result(self.playback.finished_reason)

    async def wait(self) -> str:
        return await asyncio.shield(self.done)


class Call:
    def __init__(
        self,
        *,
        leg: Leg,
        media: MediaSession,
        clock: MediaClock,
        sdp_answer: bytes,
        from_uri: str,
        to_uri: str,
        from_user: str,
        to_user: str,
        on_ended: Callable[[Call], None] | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.leg = leg
        self.media = media
        self.clock = clock
        self.sdp_answer = sdp_answer
        self.from_uri, self.to_uri = from_uri, to_uri
        self.from_user, self.to_user = from_user, to_user
        self.direction = "inbound"
        self.state = CallState.CREATED
        self.end_reason: str | None = None
        self.created_at = time.time()
        self.answered_at: float | None = None
        self.state_listeners: list[Callable[[Call], None]] = []
        self.plays: list[PlayOperation] = []
        self.recordings: list[Any] = []  # Recording objects, newest last (recording engine)
        self.project_id = ""
        self._loop = asyncio.get_running_loop()
        self.ended = asyncio.Event()
        self._on_ended = on_ended
        leg.on_terminated = self._on_leg_terminated

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.from_user}->{self.to_user} {self.state}>"

    @property
    def is_active(self) -> bool:
        return self.state not in (CallState.ENDING, CallState.ENDED)

    def _set_state(self, state: CallState) -> None:
        self.state = state
        for listener in tuple(self.state_listeners):
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
        if not self.media.closed and self.media._loop is None:
            self.media.start()
            self.clock.add(self.media)

    async def hangup(self, reason: str = "hangup") -> None:
        """End the call from our side: BYE when answered, a final error response before."""
        if not self.is_active:
            return
        answered = self.state is CallState.ANSWERED
        self._set_state(CallState.ENDING)
        if not answered and isinstance(self.leg, InboundInvite):
            self.leg.reject(REJECT_STATUS.get(reason, 480))
        self._finish(reason)
        if answered:  # the call is over for us now; the BYE retransmits until answered
            await self.leg.bye()

    def _on_leg_terminated(self, why: str) -> None:
        if not self.is_active:
            return
        reason = {"hangup": "hangup", "cancel": "cancel", "timeout": "error"}.get(why, why)
        self._set_state(CallState.ENDING)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.end_reason = reason
        self.clock.remove(self.media)
        self.media.close()
        for play in self.plays:
            play.playback.stop()
        self._set_state(CallState.ENDED)
        self.ended.set()
        duration = time.time() - self.answered_at if self.answered_at else 0.0
        log.info("call %s ended: %s (%.1f s answered)", self.id, reason, duration)
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
        segments = [await render_media_url(url) for url in urls]
        return self.play_samples(segments, volume_db=volume_db, loop=loop, control_id=control_id)

    def play_samples(
        self,
        segments: Sequence[np.ndarray],
        *,
        volume_db: float = 0.0,
        loop: int = 1,
        control_id: str = "",
    ) -> PlayOperation:
        self._require_active()
        playback = Playback(segments, volume_db=volume_db, loop=loop, control_id=control_id)
        operation = PlayOperation(playback, self._loop)
        self.plays.append(operation)
        operation.done.add_done_callback(lambda _: self.plays.remove(operation))
        self.media.play(playback)
        return operation

    def on_dtmf(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Subscribe to received digits; returns the unsubscribe function."""
        self.media.dtmf_listeners.append(listener)
        return lambda: self.media.dtmf_listeners.remove(listener)
