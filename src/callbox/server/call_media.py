"""Media for calls both ways: a session on a media host, our SDP for it.

Inbound calls (answering an offer) and outbound calls (making one) get their media here, so the
port pool, the host, the address we advertise, the RTP family and the SDP origin rules live in
one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from callbox.server.sip.negotiation import LocalSdp
from callbox.server.sip.sdp import NegotiatedMedia
from callbox.server.worker.handle import MediaHandle
from callbox.server.worker.pool import MediaHosts


@dataclass
class CallMedia:
    """One call's media session and our side of its SDP."""

    session: MediaHandle
    sdp: LocalSdp

    def configure(self, negotiated: NegotiatedMedia) -> None:
        """Apply a negotiation (its remote host already numeric) to the session."""
        self.session.configure(negotiated.remote_host, negotiated.remote_port,
                               negotiated.payload_type, negotiated.dtmf_payload_type,
                               negotiated.local_direction)


class CallMediaFactory:
    def __init__(self, hosts: MediaHosts) -> None:
        self.hosts = hosts
        self.advertised_host = hosts.advertised_host
        self.family = hosts.family

    def open(self, near: MediaHandle | None = None) -> CallMedia:
        """A session on a free RTP port (on the host of `near` when given: a bridge's legs
        share one); raises NoPortsAvailable."""
        session = self.hosts.open(near)
        return CallMedia(session, LocalSdp(self.advertised_host, session.local_port,
                                           self.family))

    def release(self, media: CallMedia) -> None:
        """For a call that never came to be: stop the session and free its port."""
        media.session.close()
