"""Inbound calls: admission, SDP negotiation (one `negotiate()` for INVITE and re-INVITE) and
the creation of the `Call`.

Admission answers what a route, the platform state or a missing RELAY client decide (404, 503,
480). Negotiation reads the offer (SDP, or the SDP part of multipart/mixed), answers it, and
resolves a host name in `c=` once, off the event loop, so the media session only ever holds a
numeric address. An INVITE without SDP is a delayed offer: our offer goes in the 200 and the
answer comes in the ACK.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from callbox.server.call import Call
from callbox.server.call_media import CallMedia, CallMediaFactory
from callbox.server.config import Config, Route, Trunk
from callbox.server.media.ports import NoPortsAvailable
from callbox.server.sip.endpoint import InboundInvite, OfferRejected
from callbox.server.sip.message import SipRequest
from callbox.server.sip.registration_runner import trunk_authenticator
from callbox.server.sip.sdp import SessionDescription
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


class InboundCalls:
    """Takes each new INVITE from the SIP endpoint to a ringing `Call` (or a final error)."""

    def __init__(
        self,
        *,
        config: Config,
        media: CallMediaFactory,
        calls: dict[str, Call],
        has_relay_session: Callable[[str, str], bool],
        on_new_call: Callable[[Call, Route], None],
        on_call_ended: Callable[[Call], None],
    ) -> None:
        self.config = config
        self.media = media
        self.calls = calls
        self.has_relay_session = has_relay_session
        self.on_new_call = on_new_call
        self.on_call_ended = on_call_ended
        self.accepting = True
        self._pending = 0  # INVITEs admitted, their call not yet created

    # -- admission ------------------------------------------------------------------------

    def on_invite(self, invite: InboundInvite) -> None:
        admitted = self._admit(invite)
        if admitted is not None:
            self._pending += 1
            spawn(self._answer(invite, *admitted), name=f"invite-{invite.call_id}")

    def _admit(self, invite: InboundInvite) -> tuple[Route, str] | None:
        """(route, project id) for a call we take, or None once the INVITE is rejected."""
        refused_by = trunk_refusing(invite.request, self.config)
        if refused_by is not None:
            log.warning("call %s to trunk %s's contact from %s, outside its allow list: 403",
                        invite.call_id, refused_by.name, source_host(invite.request))
            invite.reject(403)
            return None
        trunk = contact_trunk(invite.request, self.config)
        if trunk is not None:  # our BYE or re-INVITE may be challenged by the carrier
            invite.authenticator = trunk_authenticator(trunk)
        user = dialled_user(invite.request, self.config)
        route = self.config.route_for(user)
        if route is None:
            log.info("no route for %r (call %s): 404", user, invite.call_id)
            invite.reject(404)
            return None
        if not self.accepting or len(self.calls) + self._pending >= self.config.sip.max_calls:
            invite.reject(503, headers=[("Retry-After", RETRY_AFTER_SECONDS)])
            return None
        project_id = route.project or (self.config.projects[0].id if self.config.projects
                                       else "")
        if route.context and not self.has_relay_session(project_id, route.context):
            log.info("route %r: no RELAY client on context %r: 480", user, route.context)
            invite.reject(480)
            return None
        return route, project_id

    async def _answer(self, invite: InboundInvite, route: Route, project_id: str) -> None:
        try:
            media = self._open_media(invite)
            if media is None:
                return
            try:
                sdp = await self._local_sdp(invite, media)
            except OfferRejected as exc:
                self.media.release(media)
                log.info("call %s: %s: %s", invite.call_id, exc, exc.status)
                invite.reject(exc.status, headers=exc.headers)
                return
            except Exception:
                self.media.release(media)
                log.exception("call %s: answering the offer failed: 500", invite.call_id)
                invite.reject(500)
                return
            if invite.finished:  # cancelled while we resolved the offer's host
                self.media.release(media)
                return
            call = self._create_call(invite, media, sdp, route, project_id)
        finally:
            self._pending -= 1
        self.on_new_call(call, route)

    def _open_media(self, invite: InboundInvite) -> CallMedia | None:
        try:
            return self.media.open()
        except NoPortsAvailable as exc:
            log.warning("call %s: %s: 503", invite.call_id, exc)
            invite.reject(503, headers=[("Retry-After", RETRY_AFTER_SECONDS)])
            return None

    async def _local_sdp(self, invite: InboundInvite, media: CallMedia) -> bytes:
        """Our answer (media configured), or our offer for a delayed offer."""
        request = invite.request
        if not request.body:
            offer = media.sdp.offer()

            def take_answer(body: bytes, content_type: str | None) -> None:
                spawn(self._take_answer(invite, media, offer, body, content_type),
                      name=f"ack-answer-{invite.call_id}")

            invite.on_ack_body = take_answer
            return offer.serialize()
        negotiation = await media.sdp.answer(request)
        media.configure(negotiation.media)
        return negotiation.answer

    def _create_call(self, invite: InboundInvite, media: CallMedia, sdp: bytes,
                     route: Route, project_id: str) -> Call:
        request = invite.request
        from_addr = request.from_addr
        call = Call(
            leg=invite, media=media.session, sdp_answer=sdp,
            from_uri=str(from_addr.uri), to_uri=request.uri,
            from_user=from_addr.uri.user or "", to_user=dialled_user(request, self.config),
            on_ended=self.on_call_ended,
        )
        call.project_id = project_id
        invite.on_reoffer = lambda reinvite: self._reoffer(call, media, reinvite)
        self.calls[call.id] = call
        log.info("call %s from %s to %s (SIP %s)", call.id, call.from_user, call.to_user,
                 invite.call_id)
        return call

    # -- negotiation ----------------------------------------------------------------------

    async def _reoffer(self, call: Call, media: CallMedia, request: SipRequest) -> bytes:
        """A re-INVITE (hold/resume, new address): same port, new direction."""
        try:
            negotiation = await media.sdp.answer(request)
        except OfferRejected as exc:
            log.info("call %s: re-INVITE rejected: %s", call.id, exc)
            raise
        media.configure(negotiation.media)
        log.info("call %s: re-INVITE, now %s", call.id, negotiation.media.local_direction)
        return negotiation.answer

    async def _take_answer(self, invite: InboundInvite, media: CallMedia,
                           offer: SessionDescription, body: bytes,
                           content_type: str | None) -> None:
        """Delayed offer: the ACK answers the offer our 200 carried; no usable answer ends
        the call (RFC 3264 has no way to reject an answer)."""
        try:
            negotiated = await media.sdp.take_answer(offer, body, content_type)
        except OfferRejected as exc:
            log.info("call %s: unusable SDP answer in the ACK: %s; hanging up",
                     invite.call_id, exc)
            await invite.bye()
            return
        media.configure(negotiated)


def contact_trunk(request: SipRequest, config: Config) -> Trunk | None:
    """The registering trunk whose contact (user part = its username) the request targets."""
    user = request_user(request.uri)
    return next((t for t in config.trunks if t.register and t.username == user), None)


def dialled_user(request: SipRequest, config: Config) -> str:
    """The number dialled: the request-URI user, or the To user for a call a trunk sent to
    our registered contact (whose user part is the trunk's username)."""
    user = request_user(request.uri)
    if contact_trunk(request, config) is not None:
        return request.to_addr.uri.user or user
    return user


def source_host(request: SipRequest) -> str:
    """Where the request came from (the endpoint stamps `received` in the top Via)."""
    via = request.top_via
    return via.received or via.host


def trunk_refusing(request: SipRequest, config: Config) -> Trunk | None:
    """The trunk whose registered contact this INVITE targets when its `allow` networks do
    not include the sender; None when the call may proceed."""
    trunk = contact_trunk(request, config)
    if trunk is None or not trunk.allow:
        return None
    try:
        address = ipaddress.ip_address(source_host(request))
    except ValueError:
        return trunk
    networks = (ipaddress.ip_network(n, strict=False) for n in trunk.allow)
    return None if any(address in n for n in networks) else trunk


def request_user(uri: str) -> str:
    """The user part of the request-URI ("sip:prompt@host" -> "prompt")."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    user, at, _ = rest.partition("@")
    return user.split(";", 1)[0] if at else ""
