"""The RELAY two-party commands: `calling.dial`, `calling.connect`, `calling.disconnect`.

`calling.dial` has no call: it answers "Dialing" at once, then rings the plan (see
callbox.server.dialing) and tells the session `calling.call.dial` - `dialing`, then `answered`
with the winning leg or `failed` with the reason. Every leg rung reports `calling.call.state`
(created, ringing, answered, ended) with the dial's tag; the answered call becomes a call the
session commands like any other (its later states come from its `CallEntry`).

`calling.connect` bridges a call to a dialled party (callbox.server.bridge): it answers
"Connecting" at once, then `calling.call.connect` says connecting, connected (with the peer) or
failed, and disconnected when the bridge ends. RELAY leaves the call to the program when the
callee hangs up, while the caller hanging up ends the callee. `calling.disconnect` splits the
bridge; both calls go on. Sent while the connect still rings, it gives the attempt up (the
legs get CANCEL; the connect event says failed, reason `cancel`) and the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callbox.server.bridge import Bridge, connect
from callbox.server.call import Call, CallGone
from callbox.server.dialing import Device, DialFailed, DialLeg, dial
from callbox.server.outbound import (
    DEFAULT_RING_TIMEOUT,
    OutboundCalls,
    OutboundError,
    route_outbound,
)
from callbox.server.relay.calls import CallEntry
from callbox.server.relay.commands import CallDirectory
from callbox.server.relay.results import CommandError, Handler, Result, ok
from callbox.server.tasks import spawn
from callbox.wire import dial as shapes
from callbox.wire import relay as wire

if TYPE_CHECKING:
    from callbox.server.relay.session import Session

log = logging.getLogger(__name__)
CANCEL_WAIT = 5.0  # s: calling.disconnect answers once the ringing legs are given up


@dataclass(frozen=True)
class DialRequest:
    """A checked plan: the platform's devices beside their wire shapes (echoed in events)."""

    plan: list[list[Device]]
    devices: dict[Device, dict[str, Any]]
    tag: str
    max_duration: float | None  # seconds

    def device_of(self, leg: DialLeg) -> dict[str, Any]:
        return self.devices.get(leg.device, {})


class LegReporter:
    """`calling.call.state` for each state of each leg rung, with the request's tag; keeps
    each leg's device by its call id (the answered `Call` has its leg's id)."""

    def __init__(self, session: Session, request: DialRequest, node_id: str) -> None:
        self.session = session
        self.request = request
        self.node_id = node_id
        self.devices: dict[str, dict[str, Any]] = {}

    def report(self, leg: DialLeg) -> None:
        device = self.devices.setdefault(leg.id, self.request.device_of(leg))
        self.session.emit(wire.CALL_STATE, wire.state_params(
            call_id=leg.id, node_id=self.node_id, tag=self.request.tag, state=leg.state,
            direction="outbound", device=device, end_reason=leg.end_reason))


class DialCommands:
    """The handlers; `Commands` runs them (see `handlers()` and `dial`)."""

    def __init__(self, hub: CallDirectory) -> None:
        self.hub = hub
        self.connecting: dict[str, asyncio.Task[None]] = {}  # call id -> its connect ringing
        self.bridges: dict[str, Bridge] = {}  # by the id of either call

    def handlers(self) -> dict[str, Handler]:
        """The commands on a call."""
        return {shapes.CONNECT: self.connect, shapes.DISCONNECT: self.disconnect}

    # -- parsing ----------------------------------------------------------------------------

    def _outbound(self) -> OutboundCalls:
        outbound = self.hub.services.outbound
        if outbound is None:
            raise CommandError(wire.CODE_SERVER_ERROR, "dialing is not available yet")
        return outbound

    def _request(self, params: Mapping[str, Any], outbound: OutboundCalls) -> DialRequest:
        try:
            specs = shapes.parse_devices(params.get("devices"))
            tag = shapes.parse_tag(params.get("tag")) or str(uuid.uuid4())
            max_duration = shapes.parse_max_duration(params.get("max_duration"))
        except wire.ParamError as exc:
            raise CommandError(wire.CODE_BAD_REQUEST, str(exc)) from None
        devices: dict[Device, dict[str, Any]] = {}
        plan = []
        for i, group in enumerate(specs):
            row = []
            for j, spec in enumerate(group):
                device = Device(spec.to, from_=spec.from_,
                                timeout=spec.timeout or DEFAULT_RING_TIMEOUT,
                                headers=spec.headers)
                try:  # every device is checked before anything rings
                    route_outbound(device.to, outbound.trunks, from_=device.from_)
                except OutboundError as exc:
                    raise CommandError(wire.CODE_BAD_REQUEST,
                                       f"devices[{i}][{j}]: {exc}") from None
                devices.setdefault(device, spec.to_params())
                row.append(device)
            plan.append(row)
        return DialRequest(plan, devices, tag, max_duration)

    # -- calling.dial -------------------------------------------------------------------------

    async def dial(self, session: Session, params: Mapping[str, Any]) -> Result:
        outbound = self._outbound()
        request = self._request(params, outbound)
        spawn(self._dial(session, outbound, request), name=f"relay-dial-{request.tag}")
        return ok("Dialing")

    async def _dial(self, session: Session, outbound: OutboundCalls,
                    request: DialRequest) -> None:
        node_id = self.hub.services.node_id

        def tell(state: str, call: dict[str, Any] | None = None, reason: str | None = None,
                 sip_code: int | None = None) -> None:
            session.emit(shapes.CALL_DIAL, shapes.dial_params(
                tag=request.tag, node_id=node_id, state=state, call=call, reason=reason,
                sip_code=sip_code))

        legs = LegReporter(session, request, node_id)
        tell("dialing")
        try:
            call = await dial(outbound, request.plan, project_id=session.project_id,
                              on_leg=legs.report)
        except DialFailed as exc:
            tell("failed", reason=exc.end_reason, sip_code=exc.status)
            return
        except OutboundError as exc:
            log.info("RELAY dial %s: %s", request.tag, exc)
            tell("failed", reason="error")
            return
        except Exception:  # the client must hear an outcome all the same
            log.exception("RELAY dial %s failed", request.tag)
            tell("failed", reason="error")
            return
        entry = self._adopt(session, call, request.tag, legs.devices.get(call.id))
        if entry is None:  # hung up in the same instant
            tell("failed", reason="hangup")
            return
        if request.max_duration:
            entry.max_duration_timer = asyncio.get_running_loop().call_later(
                request.max_duration,
                lambda: spawn(call.hangup("max_duration"), name=f"max-dur-{call.id}"))
        tell("answered", call=shapes.leg_params(call_id=call.id, node_id=node_id,
                                                 tag=request.tag, device=entry.device,
                                                 dial_winner=True))

    def _adopt(self, session: Session, call: Call, tag: str,
               device: dict[str, Any] | None) -> CallEntry | None:
        """The answered leg as a call of `session` (None when it has ended already)."""
        entry = self.hub.entry_for(session, call.id)
        if entry is not None:
            entry.tag = tag
            entry.dialled_device = device
        return entry

    # -- calling.connect ----------------------------------------------------------------------

    async def connect(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                      ) -> Result:
        outbound = self._outbound()
        request = self._request(params, outbound)
        ringback: list[str] | None = None
        if params.get("ringback") is not None:
            try:
                ringback = wire.play_urls(params.get("ringback"))
            except wire.ParamError as exc:  # named as the play list: name it ringback
                message = str(exc).removeprefix("play")
                raise CommandError(wire.CODE_BAD_REQUEST, f"ringback{message}") from None
        call = entry.call
        if not call.is_active:
            raise CommandError(wire.CODE_GONE, f"call {call.id} has ended")
        if call.id in self.connecting or call.id in self.bridges or call.peer is not None:
            raise CommandError(shapes.CODE_CONFLICT, f"call {call.id} is already connected "
                               "(or connecting); send calling.disconnect first")
        self.connecting[call.id] = spawn(
            self._connect(session, entry, outbound, request, ringback),
            name=f"relay-connect-{call.id}")
        return ok("Connecting")

    async def _connect(self, session: Session, entry: CallEntry, outbound: OutboundCalls,
                       request: DialRequest, ringback: Sequence[str] | None) -> None:
        a = entry.call
        node_id = self.hub.services.node_id

        def tell(state: str, peer: dict[str, Any] | None = None, reason: str | None = None,
                 sip_code: int | None = None) -> None:
            session.emit(shapes.CALL_CONNECT, shapes.connect_params(
                call_id=a.id, node_id=node_id, tag=entry.tag, state=state, peer=peer,
                reason=reason, sip_code=sip_code))

        legs = LegReporter(session, request, node_id)
        tell("connecting")
        try:
            bridge = await connect(
                a, outbound, request.plan, ringback=ringback,
                on_leg=legs.report, end_caller_with_callee=False,
                max_duration=request.max_duration)
        except DialFailed as exc:
            tell("failed", reason=exc.end_reason, sip_code=exc.status)
            return
        except asyncio.CancelledError:  # calling.disconnect before anybody answered
            tell("failed", reason="cancel")
            return
        except (CallGone, OutboundError, ValueError) as exc:
            log.info("RELAY connect on call %s: %s", a.id, exc)
            tell("failed", reason="hangup" if isinstance(exc, CallGone) else "error")
            return
        except Exception:
            log.exception("RELAY connect on call %s failed", a.id)
            tell("failed", reason="error")
            return
        finally:
            self.connecting.pop(a.id, None)
        b = bridge.b
        peer_entry = self._adopt(session, b, request.tag, legs.devices.get(b.id))
        peer = shapes.leg_params(call_id=b.id, node_id=node_id, tag=request.tag,
                                 device=peer_entry.device if peer_entry else {})
        self.bridges[a.id] = self.bridges[b.id] = bridge
        try:
            tell("connected", peer=peer)
            await asyncio.shield(bridge.done)
        finally:
            for call_id in (a.id, b.id):
                if self.bridges.get(call_id) is bridge:
                    del self.bridges[call_id]
        tell("disconnected", peer=peer)

    # -- calling.disconnect -------------------------------------------------------------------

    async def disconnect(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                         ) -> Result:
        call = entry.call
        bridge = self.bridges.get(call.id)
        if bridge is None or not bridge.active:
            if not call.is_active:
                raise CommandError(wire.CODE_GONE, f"call {call.id} has ended")
            connecting = self.connecting.get(call.id)
            if connecting is None:
                raise CommandError(shapes.CODE_CONFLICT, f"call {call.id} is not connected")
            # Still ringing: the attempt is given up (its legs get CANCEL, the connect event
            # says failed, reason cancel), and the call goes on, as after a split.
            connecting.cancel()
            await asyncio.wait({connecting}, timeout=CANCEL_WAIT)
            return ok("Disconnected")
        bridge.split()
        return ok("Disconnected")
