"""Host-name lookups off the event loop, bounded in number and time."""

from __future__ import annotations

import asyncio
import socket

import pytest

from callbox.server.sip.resolve import MAX_LOOKUPS_IN_FLIGHT, numeric_host


async def test_numeric_addresses_pass_and_names_resolve() -> None:
    assert await numeric_host("192.0.2.1") == "192.0.2.1"
    assert await numeric_host("::1") == "::1"
    assert await numeric_host("localhost", family=socket.AF_INET) == "127.0.0.1"


async def test_a_name_that_does_not_resolve_raises_oserror() -> None:
    with pytest.raises(OSError):
        await numeric_host("no-such-host.invalid")


async def test_lookups_in_flight_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def slow_getaddrinfo(*args: object, **kwargs: object) -> list[object]:
        await release.wait()
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(loop, "getaddrinfo", slow_getaddrinfo)
    pending = [asyncio.create_task(numeric_host(f"h{i}.example"))
               for i in range(MAX_LOOKUPS_IN_FLIGHT)]
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="already in progress"):
        await numeric_host("one-more.example")
    release.set()
    assert await asyncio.gather(*pending) == ["127.0.0.1"] * MAX_LOOKUPS_IN_FLIGHT
    again = [numeric_host(f"again{i}.example") for i in range(MAX_LOOKUPS_IN_FLIGHT)]
    assert await asyncio.gather(*again) == ["127.0.0.1"] * MAX_LOOKUPS_IN_FLIGHT  # all freed
