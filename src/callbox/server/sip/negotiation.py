"""Answering an SDP offer that came in a request (INVITE or re-INVITE, inbound or outbound call).

One place reads the offer (SDP, or the SDP part of multipart/mixed), answers it and turns the
offer's `c=` into a numeric address of our RTP family; every refusal is an `OfferRejected` with
the status to answer (415 for a body that is not SDP, 488 for SDP we cannot use).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from callbox.server.sip.endpoint import OfferRejected
from callbox.server.sip.media_address import media_host
from callbox.server.sip.message import SipRequest
from callbox.server.sip.sdp import (
    SDP_CONTENT_TYPE,
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    UnsupportedContentType,
    accept_answer,
    answer_offer,
    make_offer,
    parse_sdp,
    sdp_body,
)


@dataclass
class Negotiation:
    """Our SDP answer and what it settled for the media session."""

    answer: bytes
    media: NegotiatedMedia


@dataclass
class LocalSdp:
    """Our side of one call's SDP: the RTP address we offer and answer with, and an origin
    whose session id stays the same for the whole call while its version grows with each new
    offer or answer (RFC 3264 section 5)."""

    host: str
    port: int
    family: int
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    version: int = field(default_factory=lambda: secrets.randbelow(2**30))

    def _next_version(self) -> int:
        self.version += 1
        return self.version

    def offer(self) -> SessionDescription:
        return make_offer(local_host=self.host, local_port=self.port,
                          session_id=self.session_id, session_version=self._next_version())

    async def answer(self, request: SipRequest) -> Negotiation:
        """Answer the SDP offer in `request` (INVITE or re-INVITE); raises OfferRejected (415,
        488)."""
        try:
            offer = parse_sdp(sdp_body(request.body, request.content_type))
        except UnsupportedContentType as exc:
            raise OfferRejected(415, str(exc), [("Accept", SDP_CONTENT_TYPE)]) from None
        except SdpError as exc:
            raise OfferRejected(488, f"bad SDP: {exc}") from None
        try:
            answer, negotiated = answer_offer(
                offer, local_host=self.host, local_port=self.port,
                session_id=self.session_id, session_version=self._next_version())
        except SdpError as exc:
            raise OfferRejected(488, str(exc)) from None
        negotiated.remote_host = await media_host(negotiated.remote_host, self.family)
        return Negotiation(answer.serialize(), negotiated)

    async def take_answer(self, offer: SessionDescription, body: bytes,
                          content_type: str | None) -> NegotiatedMedia:
        """The answer to our `offer` (delayed offer: in the ACK); raises OfferRejected 488."""
        try:
            negotiated = accept_answer(offer, parse_sdp(sdp_body(body, content_type)))
        except (SdpError, UnsupportedContentType) as exc:
            raise OfferRejected(488, str(exc)) from None
        negotiated.remote_host = await media_host(negotiated.remote_host, self.family)
        return negotiated
