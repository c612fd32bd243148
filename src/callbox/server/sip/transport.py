"""Which transport a SIP message goes on (RFC 3261 §18): UDP or TCP behind one `send`.

- A response goes back the way its request came: the top Via names the transport, and over TCP
  the destination is the connection's peer address (the endpoint records it).
- A request goes over TCP when its top Via says so (a dialog or target on TCP), and also when
  it would be bigger than `UDP_SIZE_LIMIT` over UDP (§18.1.1): its Via is then rewritten to TCP
  before sending, in place, so retransmissions and a CANCEL built from it follow. When that
  connection cannot be made (a peer without TCP), the request goes over UDP after all, its Via
  back to UDP (§18.1.1's SHOULD), and that peer's big requests go over UDP for a while.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Iterable

from callbox.server.sip.message import SipMessage, SipRequest, SipResponse
from callbox.server.sip.tcp import Address, TcpTransport
from callbox.server.sip.transaction import Action, Send

__all__ = [
    "TCP",
    "UDP",
    "UDP_SIZE_LIMIT",
    "Transports",
    "retransmissions_needed",
    "set_top_via_transport",
]

log = logging.getLogger(__name__)

UDP = "UDP"
TCP = "TCP"
# RFC 3261 §18.1.1: a request within 200 bytes of a 1500-byte path MTU goes over TCP.
UDP_SIZE_LIMIT = 1300
NO_TCP_SECONDS = 300.0  # a peer whose TCP connection failed gets big requests over UDP this long
MAX_NO_TCP_PEERS = 1024


def set_top_via_transport(message: SipMessage, transport: str) -> None:
    """Rewrite the transport of the top Via (`SIP/2.0/UDP` -> `SIP/2.0/TCP`), keeping the rest."""
    top = copy.copy(message.top_via)
    top.transport = transport
    message.replace_top_via(top)


def retransmissions_needed(request: SipRequest, actions: Iterable[Action]) -> list[Action]:
    """The timer actions of a transaction on `request`, less the retransmissions a reliable
    transport makes useless: over TCP only a 2xx is still retransmitted, end to end (RFC 3261
    §17.1.1.2, §17.2.1, §13.3.1.4); the timeouts stay."""
    if request.top_via.transport != TCP:
        return list(actions)
    return [
        action for action in actions
        if not isinstance(action, Send)
        or (isinstance(action.message, SipResponse) and 200 <= action.message.status < 300)
    ]


class Transports:
    """UDP and TCP of one endpoint; `send` picks the one a message goes on."""

    def __init__(self, tcp: TcpTransport) -> None:
        self.tcp = tcp
        self.udp: asyncio.DatagramTransport | None = None
        self.switched_to_tcp = 0  # requests sent over TCP for their size
        self.fell_back_to_udp = 0  # ... and then over UDP: the TCP connection failed
        self._no_tcp: dict[Address, float] = {}  # peer -> when its TCP connection failed

    def send(self, message: SipMessage, dest: Address) -> None:
        data = message.serialize()
        transport = message.top_via.transport
        if (isinstance(message, SipRequest) and transport == UDP and len(data) > UDP_SIZE_LIMIT
                and self._takes_tcp(dest)):
            set_top_via_transport(message, TCP)
            self.switched_to_tcp += 1
            self.tcp.send(message.serialize(), dest,
                          on_unreachable=lambda: self._send_over_udp(message, dest))
            return
        self.send_bytes(data, dest, transport)

    def _takes_tcp(self, dest: Address) -> bool:
        failed = self._no_tcp.get(dest)
        if failed is None:
            return True
        if time.monotonic() - failed < NO_TCP_SECONDS:
            return False
        del self._no_tcp[dest]
        return True

    def _send_over_udp(self, request: SipRequest, dest: Address) -> None:
        """The TCP connection a request was switched to could not be made: UDP after all."""
        if len(self._no_tcp) >= MAX_NO_TCP_PEERS:
            del self._no_tcp[next(iter(self._no_tcp))]  # the oldest
        self._no_tcp[dest] = time.monotonic()
        set_top_via_transport(request, UDP)
        self.fell_back_to_udp += 1
        log.info("%s to %s:%s: no TCP there; sent over UDP", request.method, *dest)
        self.send_bytes(request.serialize(), dest, UDP)

    def send_bytes(self, data: bytes, dest: Address, transport: str) -> None:
        if transport == TCP:
            self.tcp.send(data, dest)
        elif self.udp is not None and not self.udp.is_closing():
            self.udp.sendto(data, dest)
