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
import secrets
import socket
from collections.abc import Callable

from callbox.server.call import Call
from callbox.server.config import Config, Route, Trunk
from callbox.server.media.clock import MediaClock
from callbox.server.media.ports import NoPortsAvailable, RtpPortPool
from callbox.server.media.session import MediaSession
from callbox.server.sip.endpoint import InboundInvite, OfferRejected
from callbox.server.sip.headers import NameAddr
from callbox.server.sip.media_address import media_host
from callbox.server.sip.message import SipRequest
from callbox.server.sip.negotiation import Negotiation, negotiate
from callbox.server.sip.registration_runner import trunk_authenticator
from callbox.server.sip.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    UnsupportedContentType,
    accept_answer,
    make_offer,
    parse_sdp,
    sdp_body,
)
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


class InboundCalls:
    """Takes each new INVITE from the SIP endpoint to a ringing `Call` (or a final error)."""

    def __init__(
        self,
        *,
        config: Config,
        ports: RtpPortPool,
        advertised_host: str,
        clock: MediaClock,
        calls: dict[str, Call],
        has_relay_session: Callable[[str, str], bool],
        on_new_call: Callable[[Call, Route], None],
        on_call_ended: Callable[[Call], None],
    ) -> None:
        self.config = config
        self.ports = ports
        self.advertised_host = advertised_host
        self.clock = clock
        self.calls = calls
        self.has_relay_session = has_relay_session
        self.on_new_call = on_new_call
        self.on_call_ended = on_call_ended
        self.accepting = True
        self._sdp_version = secrets.randbelow(2**31)
        self._family = socket.AF_INET6 if ":" in ports.host else socket.AF_INET
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
                self.ports.release(media.sock)
                log.info("call %s: %s: %s", invite.call_id, exc, exc.status)
                invite.reject(exc.status, headers=exc.headers)
                return
            except Exception:
                self.ports.release(media.sock)
                log.exception("call %s: answering the offer failed: 500", invite.call_id)
                invite.reject(500)
                return
            if invite.finished:  # cancelled while we resolved the offer's host
                self.ports.release(media.sock)
                return
            call = self._create_call(invite, media, sdp, route, project_id)
        finally:
            self._pending -= 1
        self.on_new_call(call, route)

    def _open_media(self, invite: InboundInvite) -> MediaSession | None:
        try:
            sock = self.ports.open()
        except NoPortsAvailable as exc:
            log.warning("call %s: %s: 503", invite.call_id, exc)
            invite.reject(503, headers=[("Retry-After", RETRY_AFTER_SECONDS)])
            return None
        return MediaSession(sock, self.advertised_host)

    async def _local_sdp(self, invite: InboundInvite, media: MediaSession) -> bytes:
        """Our answer (media configured), or our offer for a delayed offer."""
        request = invite.request
        if not request.body:
            offer = self._offer(media.local_port)

            def take_answer(body: bytes, content_type: str | None) -> None:
                spawn(self._take_answer(invite, media, offer, body, content_type),
                      name=f"ack-answer-{invite.call_id}")

            invite.on_ack_body = take_answer
            return offer.serialize()
        negotiation = await self.negotiate(request, media.local_port)
        self._configure(media, negotiation.media)
        return negotiation.answer

    def _create_call(self, invite: InboundInvite, media: MediaSession, sdp: bytes,
                     route: Route, project_id: str) -> Call:
        request = invite.request
        from_addr = NameAddr.parse(request.headers.get("From") or "")
        call = Call(
            leg=invite, media=media, clock=self.clock, sdp_answer=sdp,
            from_uri=str(from_addr.uri), to_uri=request.uri,
            from_user=from_addr.uri.user or "", to_user=dialled_user(request, self.config),
            on_ended=self.on_call_ended,
        )
        call.project_id = project_id
        invite.on_reoffer = lambda reinvite: self._reoffer(call, reinvite)
        self.calls[call.id] = call
        log.info("call %s from %s to %s (SIP %s)", call.id, call.from_user, call.to_user,
                 invite.call_id)
        return call

    # -- negotiation ----------------------------------------------------------------------

    async def negotiate(self, request: SipRequest, local_port: int) -> Negotiation:
        """Answer the SDP offer in an INVITE or re-INVITE; raises OfferRejected (415, 488)."""
        self._sdp_version += 1
        return await negotiate(request, local_host=self.advertised_host, local_port=local_port,
                               version=self._sdp_version, family=self._family)

    async def _reoffer(self, call: Call, request: SipRequest) -> bytes:
        """A re-INVITE (hold/resume, new address): same port, new direction."""
        try:
            negotiation = await self.negotiate(request, call.media.local_port)
        except OfferRejected as exc:
            log.info("call %s: re-INVITE rejected: %s", call.id, exc)
            raise
        self._configure(call.media, negotiation.media)
        log.info("call %s: re-INVITE, now %s", call.id, negotiation.media.local_direction)
        return negotiation.answer

    def _offer(self, local_port: int) -> SessionDescription:
        self._sdp_version += 1
        return make_offer(local_host=self.advertised_host, local_port=local_port,
                          session_id=self._sdp_version, session_version=self._sdp_version)

    async def _take_answer(self, invite: InboundInvite, media: MediaSession,
                           offer: SessionDescription, body: bytes,
                           content_type: str | None) -> None:
        """Delayed offer: the ACK answers the offer our 200 carried; no usable answer ends
        the call (RFC 3264 has no way to reject an answer)."""
        try:
            negotiated = accept_answer(offer, parse_sdp(sdp_body(body, content_type)))
            negotiated.remote_host = await media_host(negotiated.remote_host, self._family)
        except (SdpError, UnsupportedContentType, OfferRejected) as exc:
            log.info("call %s: unusable SDP answer in the ACK: %s; hanging up",
                     invite.call_id, exc)
            await invite.bye()
            return
        self._configure(media, negotiated)

    @staticmethod
    def _configure(media: MediaSession, negotiated: NegotiatedMedia) -> None:
        media.configure(negotiated.remote_host, negotiated.remote_port, negotiated.payload_type,
                        negotiated.dtmf_payload_type, negotiated.local_direction)


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
