"""Calls between people: connecting a call to a dialled party, and the bridge that joins them.

`connect(a, plan, ...)` rings the plan for call `a` (see dialing.py) while `a` hears ringback -
the given media, else a ring tone - until a callee's early media (a 183 with SDP) replaces it.
Once a callee answers, the two calls are bridged: `Bridge` joins their media in the one media
clock of their media host (see media/bridge.py; the callee's media is opened on the caller's
host), relays RFC 4733 digits each way and sets `Call.peer` on both (`Call.set_peer`).

Recording keeps its rule on each leg: speak = this leg's party, listen = what that party hears
(the other party plus any prompt played to it). A stereo recording of the inbound leg so has the
caller left and the callee right; one started before `connect` records the ringback too.

Hangup: when `a` ends, the callee is hung up. When the callee ends first, `a` is hung up too
if `end_caller_with_callee` (the default), otherwise `a` goes on (SWML continues with its next
verb; RELAY reports `disconnected` and leaves the call to the program). `Bridge.split()` parts
the two without ending either. `Bridge.done` resolves with who ended it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum

from callbox.server.call import Call, CallGone, CallState, PlayOperation
from callbox.server.dialing import (
    DialLeg,
    DialPlan,
    LegListener,
    dial,
    validate_plan,
)
from callbox.server.outbound import OutboundCalls
from callbox.server.recording.target import Unsubscribe
from callbox.server.tasks import spawn
from callbox.server.worker.handle import MediaHandle

log = logging.getLogger(__name__)

DEFAULT_RINGBACK = ("ringtone:us",)


class BridgeEnd(StrEnum):
    CALLER_HUNG_UP = "caller"  # `a` ended
    CALLEE_HUNG_UP = "callee"  # `b` ended
    SPLIT = "split"  # parted by a command; both calls go on
    MAX_DURATION = "max_duration"  # both ended when the bridge's time was up


class Bridge:
    """Calls `a` (the one that connected) and `b` (the callee), talking to each other."""

    def __init__(self, a: Call, b: Call, *,
                 end_caller_with_callee: bool = True, max_duration: float | None = None
                 ) -> None:
        self.a = a
        self.b = b
        self.end_caller_with_callee = end_caller_with_callee
        self.done: asyncio.Future[BridgeEnd] = asyncio.get_running_loop().create_future()
        self._max_duration = max_duration
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: list[Unsubscribe] = []

    def __repr__(self) -> str:
        return f"<Bridge {self.a.id}<->{self.b.id}>"

    @property
    def active(self) -> bool:
        return not self.done.done()

    def start(self) -> None:
        """Join the media now; raises CallGone when either call has already ended."""
        for call in (self.a, self.b):
            if not call.is_active:
                raise CallGone(f"call {call.id} has ended")
            if call.peer is not None:
                raise ValueError(f"call {call.id} is already bridged to {call.peer.id}")
        self.a.set_peer(self.b)
        self.b.set_peer(self.a)
        self.a.media.join(self.b.media)
        self._unsubscribe = [
            self.a.on_state(lambda call: self._on_state(call, BridgeEnd.CALLER_HUNG_UP)),
            self.b.on_state(lambda call: self._on_state(call, BridgeEnd.CALLEE_HUNG_UP)),
            self.a.on_dtmf(lambda digit: _relay_digit(digit, self.b)),
            self.b.on_dtmf(lambda digit: _relay_digit(digit, self.a)),
        ]
        if self._max_duration:
            self._timer = asyncio.get_running_loop().call_later(
                self._max_duration, self._time_up)
        log.info("call %s bridged to %s", self.a.id, self.b.id)

    def split(self) -> None:
        """Part the calls; both go on, each ticking on its own."""
        self._end(BridgeEnd.SPLIT)

    def _on_state(self, call: Call, end: BridgeEnd) -> None:
        if call.is_active or not self.active:
            return
        self._end(end)
        other = self.b if call is self.a else self.a
        if end is BridgeEnd.CALLER_HUNG_UP or self.end_caller_with_callee:
            _hang_up(other, "hangup")

    def _time_up(self) -> None:
        if self.active:
            self._end(BridgeEnd.MAX_DURATION)
            _hang_up(self.b, "max_duration")
            _hang_up(self.a, "max_duration")

    def _end(self, end: BridgeEnd) -> None:
        if not self.active:
            return
        if self._timer is not None:
            self._timer.cancel()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self.a.media.split()
        if self.a.peer is self.b:
            self.a.set_peer(None)
        if self.b.peer is self.a:
            self.b.set_peer(None)
        self.done.set_result(end)
        log.info("call %s unbridged from %s (%s)", self.a.id, self.b.id, end.value)


def _relay_digit(digit: str, to: Call) -> None:
    try:
        to.media.send_dtmf(digit)
    except ValueError:  # the other party did not negotiate telephone-event
        log.debug("call %s: digit %s not relayed (no telephone-event)", to.id, digit)


def _hang_up(call: Call, reason: str) -> None:
    if call.is_active:
        asyncio.get_running_loop().create_task(call.hangup(reason))


class Ringback:
    """What `a` hears while the plan rings: the ringback media, until a callee's early media
    takes its place (and back to ringback if that callee fails)."""

    def __init__(self, a: Call, media: Sequence[str]) -> None:
        self.a = a
        self.urls = tuple(media)
        self.play: PlayOperation | None = None
        self.early: MediaHandle | None = None  # the callee's session the caller hears
        self.early_leg: DialLeg | None = None
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.a.state is CallState.CREATED:
            self.a.ring()  # 180: an unanswered caller's phone plays its own ring tone
        if self.a.state is not CallState.ANSWERED or self.early is not None:
            return
        self._starting = asyncio.get_running_loop().create_task(self._play())

    async def _play(self) -> None:
        try:
            self.play = await self.a.play(self.urls, loop=0)
        except CallGone:
            return
        except Exception:
            log.exception("call %s: ringback %s failed", self.a.id, self.urls)
            return
        if self.early is not None:  # early media came while the ringback was rendering
            self.play.playback.stop()

    def stop_playing(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.play is not None:
            self.play.playback.stop()
            self.play = None

    def early_media(self, leg: DialLeg, session: MediaHandle) -> None:
        """A callee's early media: the caller hears it instead of the ringback."""
        if self.early is not None or not self.a.is_active or self.a.state is not CallState.ANSWERED:
            return
        self.stop_playing()
        self.early = session
        self.early_leg = leg
        self.a.media.join(session)

    def leg_changed(self, leg: DialLeg) -> None:
        if leg is self.early_leg and leg.state == "ended":
            self.end_early()
            self.start()

    def end_early(self) -> None:
        if self.early is not None:
            self.a.media.split()
            self.early = None
            self.early_leg = None

    def stop(self) -> None:
        self.stop_playing()
        self.end_early()


async def connect(
    a: Call,
    outbound: OutboundCalls,
    plan: DialPlan,
    *,
    ringback: Sequence[str] | None = None,
    on_leg: LegListener | None = None,
    end_caller_with_callee: bool = True,
    max_duration: float | None = None,
) -> Bridge:
    """Dial `plan` for `a` and bridge `a` to the callee who answers; returns the started
    `Bridge`. `a` is answered at that moment if it was not (SWML `answer_on_bridge`).
    Raises DialFailed (dialing.py) when nobody answered, CallGone when `a` ended first (every
    ringing leg is then cancelled), OutboundError for a device that cannot be dialled."""
    if not a.is_active:
        raise CallGone(f"call {a.id} has ended")
    if a.peer is not None:
        raise ValueError(f"call {a.id} is already connected to {a.peer.id}")
    validate_plan(plan)
    ring = Ringback(a, ringback or DEFAULT_RINGBACK)

    def leg_changed(leg: DialLeg) -> None:
        ring.leg_changed(leg)
        if on_leg is not None:
            on_leg(leg)

    dialling = asyncio.ensure_future(dial(
        outbound, plan, project_id=a.project_id, on_leg=leg_changed,
        on_early_media=ring.early_media, near=a.media))

    def caller_changed(call: Call) -> None:
        if not call.is_active and not dialling.done():
            dialling.cancel()

    stop_watching = a.on_state(caller_changed)
    ring.start()
    try:
        b = await dialling
    except asyncio.CancelledError:
        if dialling.done() and not dialling.cancelled() and dialling.exception() is None:
            # answered in the same turn as we gave up: that callee is not left connected
            spawn(dialling.result().hangup("hangup"), name=f"hangup-{dialling.result().id}")
        if not a.is_active:
            raise CallGone(f"call {a.id} ended while dialling") from None
        raise
    finally:
        stop_watching()
        ring.stop()
    if not a.is_active:
        await b.hangup("hangup")
        raise CallGone(f"call {a.id} ended while dialling")
    if a.state is not CallState.ANSWERED:
        a.answer()
    bridge = Bridge(a, b, end_caller_with_callee=end_caller_with_callee,
                    max_duration=max_duration)
    try:
        bridge.start()
    except CallGone:
        await b.hangup("hangup")
        raise
    return bridge

