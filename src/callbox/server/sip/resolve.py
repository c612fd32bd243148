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


async def numeric_host(host: str, *, family: int = socket.AF_UNSPEC,
                       timeout: float = RESOLVE_TIMEOUT_SECONDS) -> str:
    """`host` itself when it is an IP address, else its first address of `family`.
    Raises OSError when it does not resolve in `timeout` seconds."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM), timeout)
    except TimeoutError:
        raise OSError(f"{host[:80]!r} did not resolve in {timeout:g} s") from None
    if not infos:
        raise OSError(f"{host[:80]!r} does not resolve")
    return str(infos[0][4][0])
