"""Outbound calls: routing a destination to a request-URI, placing the call, creating the `Call`.

Routing (`route_outbound`): a number (`+15550001`, `15550001`) goes through the trunk named by
`trunk`, else the first trunk: request-URI `sip:NUMBER@<trunk proxy>` (`;transport=tcp` for a TCP
trunk) and the trunk's credentials answer 401/407. A SIP URI goes direct, without credentials.
From: the caller id given, else the trunk's `from_number`, else its username.

`OutboundCalls.dial` allocates an RTP port, offers our SDP, places the call with the SIP endpoint
and, once answered, returns a platform `Call` (direction "outbound", in the call registry,
answered, media running) that can be recorded and commanded exactly like an inbound call. A
failure releases the port. Host names (the proxy's, the answer's `c=`) are resolved off the media
path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from callbox.server.call import Call
from callbox.server.call_media import CallMedia, CallMediaFactory
from callbox.server.config import Trunk
from callbox.server.sip.digest import Authenticator
from callbox.server.sip.endpoint import CallFailed, OfferRejected, SipEndpoint
from callbox.server.sip.media_address import media_host
from callbox.server.sip.message import SipRequest, SipResponse
from callbox.server.sip.registration_runner import trunk_authenticator
from callbox.server.sip.sdp import (
    NegotiatedMedia,
)
from callbox.server.sip.uac import UacState
from callbox.server.tasks import spawn
from callbox.server.worker.handle import MediaHandle

log = logging.getLogger(__name__)

DEFAULT_RING_TIMEOUT = 30.0
DEFAULT_CALLER = "callbox"  # our From user for a direct call without a caller id
NUMBER = re.compile(r"\+?[0-9]{1,20}")


class OutboundError(ValueError):
    """A destination, caller id or trunk that cannot be dialled, or a call the platform cannot
    take now (at `sip.max_calls`, shutting down); nothing was sent."""


@dataclass(frozen=True)
class OutboundRoute:
    """Where an outbound call goes: the request-URI, our From, and the trunk (None = direct)."""

    uri: str
    from_uri: str | None  # None: the endpoint's own URI for `from_user`
    from_user: str
    trunk: Trunk | None


def route_outbound(to: str, trunks: list[Trunk], *, from_: str | None = None,
                   trunk: str | None = None) -> OutboundRoute:
    """Route `to` (a number or a sip: URI); raises OutboundError with what to fix."""
    to = to.strip()
    if to.lower().startswith("sip:"):
        if trunk:
            raise OutboundError(f"trunk {trunk!r} is for numbers; {to!r} is a SIP URI "
                                "(it is called directly)")
        user = from_ or DEFAULT_CALLER
        return OutboundRoute(to, _from_uri(from_, None), _user_of(user), None)
    if not NUMBER.fullmatch(to):
        raise OutboundError(f"cannot dial {to!r}: give a number (+15550001) or a sip: URI")
    chosen = _pick_trunk(to, trunks, trunk)
    params = ";transport=tcp" if chosen.transport.lower() == "tcp" else ""
    caller = from_ or chosen.from_number or chosen.username or DEFAULT_CALLER
    return OutboundRoute(f"sip:{to}@{chosen.proxy}{params}", _from_uri(caller, chosen),
                         _user_of(caller), chosen)


def _pick_trunk(number: str, trunks: list[Trunk], name: str | None) -> Trunk:
    if name:
        for candidate in trunks:
            if candidate.name == name:
                return candidate
        known = ", ".join(repr(t.name) for t in trunks) or "none"
        raise OutboundError(f"no trunk named {name!r} to call {number} (configured: {known})")
    if not trunks:
        raise OutboundError(f"cannot call {number}: no trunk is configured; add a [[trunks]] "
                            "section (or dial a sip: URI)")
    return trunks[0]


def _from_uri(caller: str | None, trunk: Trunk | None) -> str | None:
    """A caller id as a From URI: a sip: URI as given; a number or name at the trunk's domain
    (carriers check it), or at our own address for a direct call."""
    if caller is None:
        return None
    if caller.lower().startswith("sip:"):
        return caller
    if not re.fullmatch(r"\+?[A-Za-z0-9._~-]{1,64}", caller):
        raise OutboundError(f"caller id {caller!r} must be a number, a user name or a sip: URI")
    if trunk is None:
        return None
    return f"sip:{caller}@{trunk.proxy}"


def _user_of(caller: str) -> str:
    if caller.lower().startswith("sip:"):
        return caller[4:].split("@", 1)[0].split(";", 1)[0]
    return caller


class OutboundCalls:
    """Places calls for the platform (RELAY dial/connect, SWML connect) and registers them."""

    def __init__(
        self,
        *,
        trunks: list[Trunk],
        sip: SipEndpoint,
        media: CallMediaFactory,
        calls: dict[str, Call],
        on_call_ended: Callable[[Call], None],
        max_calls: int,
    ) -> None:
        self.trunks = trunks
        self.max_calls = max_calls  # inbound and outbound calls together
        self.accepting = True  # False once the platform is stopping
        self._dialling = 0
        self.sip = sip
        self.media = media
        self.calls = calls
        self.on_call_ended = on_call_ended

    async def dial(
        self,
        to: str,
        *,
        from_: str | None = None,
        trunk: str | None = None,
        ring_timeout: float = DEFAULT_RING_TIMEOUT,
        on_progress: Callable[[UacState, SipResponse], None] | None = None,
        on_early_media: Callable[[MediaHandle], None] | None = None,
        project_id: str = "",
        call_id: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        near: MediaHandle | None = None,
    ) -> Call:
        """Call `to` and return the answered `Call` (with id `call_id` when given). Raises
        OutboundError (bad destination or no trunk), NoPortsAvailable, and CallFailed with the
        SIP status (486, 408, 487 ...). `on_early_media` gets the call's media session once
        early media (a 183 with SDP) flows, before the answer: it is the same session the
        answered call then uses. `headers` are added to the INVITE (custom X- headers).
        `near`: the media of the call this one will be bridged to (they share a media host).
        Cancelling the awaiting task sends CANCEL."""
        route = route_outbound(to, self.trunks, from_=from_, trunk=trunk)
        if not self.accepting:
            raise OutboundError("the platform is stopping: no new calls")
        if len(self.calls) + self._dialling >= self.max_calls:
            raise OutboundError(f"{self.max_calls} calls are up (sip.max_calls): no new call")
        self._dialling += 1
        try:
            return await self._dial(route, to, ring_timeout=ring_timeout,
                                    on_progress=on_progress, on_early_media=on_early_media,
                                    project_id=project_id, call_id=call_id, headers=headers,
                                    near=near)
        finally:
            self._dialling -= 1

    async def _dial(
        self,
        route: OutboundRoute,
        to: str,
        *,
        ring_timeout: float,
        on_progress: Callable[[UacState, SipResponse], None] | None,
        on_early_media: Callable[[MediaHandle], None] | None,
        project_id: str,
        call_id: str | None,
        headers: Sequence[tuple[str, str]],
        near: MediaHandle | None,
    ) -> Call:
        authenticator: Authenticator | None = None
        if route.trunk is not None:
            authenticator = trunk_authenticator(route.trunk)
        media = self.media.open(near)
        placed = _MediaSetup(media)
        offer = media.sdp.offer()

        def early_media(negotiated: NegotiatedMedia) -> None:
            spawn(placed.use_early(negotiated, on_early_media), name="outbound-early-media")

        from_uri = route.from_uri or self.sip.local_uri(route.from_user)
        try:
            leg = await self.sip.call(
                route.uri, offer, from_uri=from_uri,
                ring_timeout=ring_timeout, on_progress=on_progress, on_early_media=early_media,
                on_reoffer=placed.reoffer, authenticator=authenticator, headers=headers)
        except BaseException:
            self.media.release(media)
            raise
        assert leg.media is not None
        call = Call(
            leg=leg, media=media.session, sdp_answer=offer.serialize(),  # our SDP
            from_uri=from_uri, to_uri=route.uri,
            from_user=route.from_user, to_user=to.strip(), on_ended=self.on_call_ended,
            call_id=call_id,
        )
        call.direction = "outbound"
        call.project_id = project_id
        self.calls[call.id] = call
        log.info("call %s to %s%s (SIP %s)", call.id, route.uri,
                 f" via trunk {route.trunk.name}" if route.trunk else "", leg.invite.call_id)
        try:
            await placed.use(leg.media)
        except OfferRejected as exc:
            log.warning("call %s: unusable answer: %s; hanging up", call.id, exc)
            await call.hangup("error")
            raise CallFailed(exc.status, str(exc)) from None
        if call.is_active:
            call.answer()
        return call


class _MediaSetup:
    """Configures one outbound call's media session, in order: early media, the answer, then
    re-INVITEs from the callee."""

    def __init__(self, media: CallMedia) -> None:
        self.media = media
        self.session = media.session
        self.lock = asyncio.Lock()
        self.early_reported = False

    async def use(self, negotiated: NegotiatedMedia) -> None:
        async with self.lock:
            negotiated.remote_host = await media_host(negotiated.remote_host,
                                                      self.media.sdp.family)
            if self.session.closed:
                return
            self.media.configure(negotiated)
            self.session.start()  # early media flows before the answer

    async def use_early(self, negotiated: NegotiatedMedia,
                        then: Callable[[MediaHandle], None] | None) -> None:
        """Early media (a 183 with SDP); an unusable address only means nothing is heard yet.
        `then(session)` once it flows (once per call, even if several 183s come)."""
        try:
            await self.use(negotiated)
        except OfferRejected as exc:
            log.info("early media not used: %s", exc)
            return
        if then is not None and not self.early_reported and not self.session.closed:
            self.early_reported = True
            then(self.session)

    async def reoffer(self, request: SipRequest) -> bytes:
        """A re-INVITE from the callee (hold, resume, a new address): answered on our port."""
        negotiation = await self.media.sdp.answer(request)
        await self.use(negotiation.media)
        return negotiation.answer
