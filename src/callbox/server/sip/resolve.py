"""Host names to numeric addresses, looked up off the event loop.

A host name handed to `sendto` is resolved by a blocking lookup inside the call (or refused:
uvloop takes numeric addresses only), so SIP destinations and SDP connection addresses are
resolved once, here, before anything sends to them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

RESOLVE_TIMEOUT_SECONDS = 5.0
# Lookups run in a thread pool shared with other work (file decoding, TTS); callers sending
# names that resolve slowly or never must not occupy all of it.
MAX_LOOKUPS_IN_FLIGHT = 4

_in_flight = 0


async def numeric_host(host: str, *, family: int = socket.AF_UNSPEC,
                       timeout: float = RESOLVE_TIMEOUT_SECONDS) -> str:
    """`host` itself when it is an IP address, else its first address of `family`.
    Raises OSError when it does not resolve in `timeout` seconds."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    global _in_flight
    if _in_flight >= MAX_LOOKUPS_IN_FLIGHT:
        raise OSError(f"{MAX_LOOKUPS_IN_FLIGHT} host name lookups already in progress")
    loop = asyncio.get_running_loop()
    _in_flight += 1
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM), timeout)
    except TimeoutError:
        raise OSError(f"{host[:80]!r} did not resolve in {timeout:g} s") from None
    finally:
        _in_flight -= 1
    if not infos:
        raise OSError(f"{host[:80]!r} does not resolve")
    return str(infos[0][4][0])
