"""Answering an SDP offer that came in a request (INVITE or re-INVITE, inbound or outbound call).

One place reads the offer (SDP, or the SDP part of multipart/mixed), answers it and turns the
offer's `c=` into a numeric address of our RTP family; every refusal is an `OfferRejected` with
the status to answer (415 for a body that is not SDP, 488 for SDP we cannot use).
"""

from __future__ import annotations

from dataclasses import dataclass

from callbox.server.sip.endpoint import OfferRejected
from callbox.server.sip.media_address import media_host
from callbox.server.sip.message import SipRequest
from callbox.server.sip.sdp import (
    SDP_CONTENT_TYPE,
    NegotiatedMedia,
    SdpError,
    UnsupportedContentType,
    answer_offer,
    parse_sdp,
    sdp_body,
)


@dataclass
class Negotiation:
    """Our SDP answer and what it settled for the media session."""

    answer: bytes
    media: NegotiatedMedia


async def negotiate(request: SipRequest, *, local_host: str, local_port: int, version: int,
                    family: int) -> Negotiation:
    """Answer the SDP offer in `request`; raises OfferRejected (415, 488)."""
    try:
        offer = parse_sdp(sdp_body(request.body, request.content_type))
    except UnsupportedContentType as exc:
        raise OfferRejected(415, str(exc), [("Accept", SDP_CONTENT_TYPE)]) from None
    except SdpError as exc:
        raise OfferRejected(488, f"bad SDP: {exc}") from None
    try:
        answer, negotiated = answer_offer(offer, local_host=local_host, local_port=local_port,
                                          session_id=version, session_version=version)
    except SdpError as exc:
        raise OfferRejected(488, str(exc)) from None
    negotiated.remote_host = await media_host(negotiated.remote_host, family)
    return Negotiation(answer.serialize(), negotiated)
