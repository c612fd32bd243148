"""Dialling a plan of devices: serial groups of parallel devices, the first answer wins.

A `DialPlan` is a list of groups tried one after the other; the devices of one group ring at the
same time. The first device of a group to answer wins: the others are cancelled (CANCEL before
an answer, BYE for one that answered in the same instant). When every device of a group failed,
the next group rings; when every group failed, `DialFailed` carries the most telling failure
(busy and decline before no answer before an error).

Each device is one `DialLeg` with its call id fixed from the start, so observers (RELAY's
per-leg `calling.call.state` events) can name the leg before it is answered; the answered
`Call` carries the same id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from callbox.server.call import Call
from callbox.server.media.ports import NoPortsAvailable
from callbox.server.outbound import (
    DEFAULT_RING_TIMEOUT,
    OutboundCalls,
    OutboundError,
    route_outbound,
)
from callbox.server.sip.endpoint import CallFailed
from callbox.server.sip.message import SipResponse
from callbox.server.sip.uac import UacState
from callbox.server.worker.handle import MediaHandle

log = logging.getLogger(__name__)

CANCELLED_STATUS = 487  # a leg we gave up on
NO_RESPONSE_STATUS = 408  # nothing answered in time: unreachable when not even a 100 came
# SIP status of a failed attempt -> the end reason SignalWire reports.
END_REASONS = {486: "busy", 600: "busy", 603: "decline", 408: "noAnswer", 480: "noAnswer",
               487: "noAnswer"}
# Which failure of several tells the most (higher first).
_TELLING = {"busy": 3, "decline": 2, "noAnswer": 1, "error": 0}


def end_reason_for(status: int) -> str:
    return END_REASONS.get(status, "error")


@dataclass(frozen=True)
class Device:
    """One destination: a number (through a trunk) or a sip: URI."""

    to: str
    from_: str | None = None
    timeout: float = DEFAULT_RING_TIMEOUT  # seconds of ringing before CANCEL
    trunk: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # custom (X-) headers for the INVITE


DialPlan = Sequence[Sequence[Device]]  # serial groups of parallel devices


class DialFailed(RuntimeError):
    """No device answered. `status` is the SIP status (486, 487, 404 ...; 0 when nothing was
    sent), `end_reason` SignalWire's name for it (busy, noAnswer, decline, error)."""

    def __init__(self, status: int, reason: str, end_reason: str | None = None) -> None:
        super().__init__(f"dial failed: {status} {reason}".strip())
        self.status = status
        self.reason = reason
        self.end_reason = end_reason or end_reason_for(status)


@dataclass
class DialLeg:
    """One device being called. `state`: "" (not yet rung), created, ringing, answered,
    ended."""

    device: Device
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = ""
    end_reason: str | None = None
    status: int | None = None  # the final SIP status of a failed leg
    call: Call | None = None  # once answered


LegListener = Callable[[DialLeg], None]
EarlyMediaListener = Callable[[DialLeg, MediaHandle], None]


def validate_plan(plan: DialPlan) -> None:
    if not plan or any(not group for group in plan):
        raise OutboundError("give at least one device to dial (no empty group)")


async def dial(
    outbound: OutboundCalls,
    plan: DialPlan,
    *,
    project_id: str = "",
    on_leg: LegListener | None = None,
    on_early_media: EarlyMediaListener | None = None,
    near: MediaHandle | None = None,
) -> Call:
    """Ring the plan and return the answered `Call`. `on_leg` sees every leg state change (in
    the order they happen); `on_early_media` a leg's media session when its early media flows;
    `near`: the media of the call the answered one will be bridged to (see OutboundCalls).
    Raises DialFailed, or OutboundError for a device that cannot be dialled at all (nothing
    else is rung then). Cancelling the awaiting task cancels every ringing leg."""
    validate_plan(plan)
    for device in (d for group in plan for d in group):  # a bad device fails before any rings
        route_outbound(device.to, outbound.trunks, from_=device.from_, trunk=device.trunk)
    failures: list[DialLeg] = []
    for group in plan:
        legs = [DialLeg(device) for device in group]
        winner = await _ring_group(outbound, legs, project_id, on_leg, on_early_media, near)
        if winner is not None:
            return winner
        failures.extend(legs)
    worst = max(failures, key=lambda leg: _TELLING.get(leg.end_reason or "error", 0))
    status = worst.status or 0
    raise DialFailed(status, _reason_text(status), worst.end_reason)


def _reason_text(status: int) -> str:
    return {486: "Busy Here", 487: "Request Terminated", 408: "Request Timeout",
            603: "Decline", 404: "Not Found", 480: "Temporarily Unavailable",
            503: "Service Unavailable"}.get(status, "")


async def _ring_group(
    outbound: OutboundCalls,
    legs: list[DialLeg],
    project_id: str,
    on_leg: LegListener | None,
    on_early_media: EarlyMediaListener | None,
    near: MediaHandle | None,
) -> Call | None:
    winner: asyncio.Future[Call] = asyncio.get_running_loop().create_future()

    def report(leg: DialLeg, state: str) -> None:
        if leg.state == state:
            return
        leg.state = state
        if on_leg is not None:
            try:
                on_leg(leg)
            except Exception:
                log.exception("dial leg listener failed")

    def failed(leg: DialLeg, status: int, end_reason: str) -> None:
        leg.status, leg.end_reason = status, end_reason
        report(leg, "ended")

    async def ring(leg: DialLeg) -> None:
        report(leg, "created")
        heard_from = False  # any response at all: the destination is there

        def progress(state: UacState, response: SipResponse) -> None:
            nonlocal heard_from
            heard_from = True
            if response.status in (180, 183) or state is UacState.EARLY:
                report(leg, "ringing")

        def early(media: MediaHandle) -> None:
            if on_early_media is not None and not winner.done():
                on_early_media(leg, media)

        device = leg.device
        try:
            call = await outbound.dial(
                device.to, from_=device.from_, trunk=device.trunk, ring_timeout=device.timeout,
                on_progress=progress, on_early_media=early, project_id=project_id,
                call_id=leg.id, headers=device.headers, near=near)
        except CallFailed as exc:
            unreachable = exc.status == NO_RESPONSE_STATUS and not heard_from
            failed(leg, exc.status, "error" if unreachable else end_reason_for(exc.status))
            return
        except (NoPortsAvailable, OutboundError) as exc:  # no port, at max_calls, stopping
            log.warning("dial %s: %s", device.to, exc)
            failed(leg, 503, "error")
            return
        except asyncio.CancelledError:
            failed(leg, CANCELLED_STATUS, "cancel")
            raise
        if winner.done():  # answered in the same instant as the leg that won
            failed(leg, CANCELLED_STATUS, "cancel")
            await call.hangup("cancel")
            return
        leg.call = call
        winner.set_result(call)
        report(leg, "answered")

    tasks = [asyncio.ensure_future(ring(leg)) for leg in legs]
    everyone = asyncio.gather(*tasks, return_exceptions=True)
    outcomes: list[asyncio.Future[Any]] = [winner, everyone]
    try:
        await asyncio.wait(outcomes, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        if winner.done():  # we gave up in the instant it answered
            await winner.result().hangup("cancel")
        raise
    finally:
        for task in tasks:  # the losers still ringing get CANCEL
            task.cancel()
        await everyone
    return winner.result() if winner.done() else None
