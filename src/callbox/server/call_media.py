"""Media for calls both ways: an RTP port from the pool, a media session on it, our SDP for it.

Inbound calls (answering an offer) and outbound calls (making one) get their media here, so the
port pool, the address we advertise, the RTP family and the SDP origin rules live in one place.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from callbox.server.media.clock import MediaClock
from callbox.server.media.ports import RtpPortPool
from callbox.server.media.session import MediaSession
from callbox.server.sip.negotiation import LocalSdp
from callbox.server.sip.sdp import NegotiatedMedia


@dataclass
class CallMedia:
    """One call's media session and our side of its SDP."""

    session: MediaSession
    sdp: LocalSdp

    def configure(self, negotiated: NegotiatedMedia) -> None:
        """Apply a negotiation (its remote host already numeric) to the session."""
        self.session.configure(negotiated.remote_host, negotiated.remote_port,
                               negotiated.payload_type, negotiated.dtmf_payload_type,
                               negotiated.local_direction)


class CallMediaFactory:
    def __init__(self, ports: RtpPortPool, advertised_host: str, clock: MediaClock) -> None:
        self.ports = ports
        self.advertised_host = advertised_host
        self.clock = clock
        self.family = socket.AF_INET6 if ":" in ports.host else socket.AF_INET

    def open(self) -> CallMedia:
        """A session on a free RTP port; raises NoPortsAvailable."""
        session = MediaSession(self.ports.open(), self.advertised_host)
        return CallMedia(session, LocalSdp(self.advertised_host, session.local_port,
                                           self.family))

    def release(self, media: CallMedia) -> None:
        """For a call that never came to be: stop the session and free its port."""
        self.clock.remove(media.session)
        media.session.close()
        self.ports.release(media.session.sock)
