"""The numeric RTP address for an SDP `c=` line, inbound and outbound alike.

A host name is resolved once, off the event loop, so a media session only ever holds a numeric
address of its own family; hold (`0.0.0.0`, `::`) stays hold. What cannot be used is an
`OfferRejected` 488 naming the problem.
"""

from __future__ import annotations

import ipaddress
import socket

from callbox.server.sip.endpoint import OfferRejected
from callbox.server.sip.resolve import numeric_host
from callbox.server.sip.sdp import HOLD_ADDRESSES, SdpError, check_media_address


async def media_host(host: str, family: int) -> str:
    """`host` from an offer or answer as a numeric address of `family` (AF_INET/AF_INET6)."""
    if host in HOLD_ADDRESSES:
        return "::" if family == socket.AF_INET6 else "0.0.0.0"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            host = await numeric_host(host, family=family)
        except OSError as exc:
            raise OfferRejected(
                488, f"media host {host[:80]!r} does not resolve: {exc}") from None
        address = ipaddress.ip_address(host)
    version = 6 if family == socket.AF_INET6 else 4
    if address.version != version:
        raise OfferRejected(488, f"media address {host} is IPv{address.version}; "
                                 f"callbox RTP listens on IPv{version}")
    try:
        check_media_address(host)
    except SdpError as exc:
        raise OfferRejected(488, str(exc)) from None
    return host
