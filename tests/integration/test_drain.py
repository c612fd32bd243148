"""Draining a node (what `callbox serve` does at SIGTERM with `[cluster] drain_seconds`): new
INVITEs and OPTIONS health checks get 503 with Retry-After, the calls in progress go on, and
the drain ends when the last of them ends, or early when asked (a second signal)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from tests.integration.conftest import RunningPlatform, running_platform
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.rawsip import SDP_PCMU, RawSip
from tests.peers.sipp import SippResult, run_sipp

pytestmark = pytest.mark.peers


def call_waiting_for_our_bye(running: RunningPlatform) -> asyncio.Task[SippResult]:
    """A sipp caller on the `listen` route that stays until the platform hangs up."""
    return asyncio.create_task(run_sipp(
        "uac_hangup_by_server", running.target, service="listen", local_port=free_udp_port(),
        media_port=free_port_range(4).start, timeout=60))


async def caller_streaming(running: RunningPlatform) -> None:
    """Until the call is up and the caller's RTP arrives: sipp has passed its ACK and waits
    for our BYE (a BYE before that would be unexpected to it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(running.platform.calls) != 1 or (
            await running.platform.media_counters()).get("packets_received", 0) == 0:
        assert loop.time() < deadline, "the call did not come up with the caller's audio"
        await asyncio.sleep(0.02)


async def answer_to(running: RunningPlatform, method: str) -> tuple[int, str | None]:
    """Status and Retry-After of the final answer to a new OPTIONS or INVITE."""
    raw = RawSip()
    try:
        body = SDP_PCMU if method == "INVITE" else ""
        await raw.send(raw.request(method, running.uri("listen"), body=body), running.sip_port)
        response = await raw.final()
        assert response is not None, f"no final answer to {method}"
        return response.status, response.headers.get("Retry-After")
    finally:
        raw.close()


async def health(running: RunningPlatform) -> tuple[int, str]:
    """`/health` over HTTPS: status and the `status` it says."""
    assert running.platform.listening is not None
    host, port = running.platform.listening.https
    async with aiohttp.ClientSession() as session, session.get(
            f"https://{host}:{port}/health", ssl=False) as response:
        return response.status, (await response.json())["status"]


async def test_a_drain_refuses_new_calls_and_ends_with_the_last_call(tmp_path: Path,
                                                                   peer_env: object) -> None:
    async with running_platform(tmp_path) as running:
        platform = running.platform
        caller = call_waiting_for_our_bye(running)
        await caller_streaming(running)
        assert (await answer_to(running, "OPTIONS"))[0] == 200
        assert await health(running) == (200, "ok")

        drain = asyncio.create_task(platform.drain(60))
        assert await answer_to(running, "OPTIONS") == (503, "5")  # health check: not me
        assert await answer_to(running, "INVITE") == (503, "5")
        assert await health(running) == (503, "unavailable")  # HTTP health checks too
        assert not drain.done() and len(platform.calls) == 1  # the call goes on

        (call,) = platform.calls.values()
        await call.hangup()  # the call's own end (its script hung up)
        await asyncio.wait_for(drain, 20)  # ...ends the drain, long before its 60 s
        assert not platform.calls
        result = await asyncio.wait_for(caller, 30)
        assert result.ok, result.describe()


async def test_a_drain_cut_short_leaves_the_calls_to_stop(tmp_path: Path,
                                                          peer_env: object) -> None:
    async with running_platform(tmp_path) as running:
        platform = running.platform
        caller = call_waiting_for_our_bye(running)
        await caller_streaming(running)
        second_signal = asyncio.Event()
        drain = asyncio.create_task(platform.drain(60, cut_short=second_signal))
        assert (await answer_to(running, "OPTIONS"))[0] == 503
        second_signal.set()
        await asyncio.wait_for(drain, 20)
        assert len(platform.calls) == 1  # still up: stop() hangs it up
        await platform.stop()
        result = await asyncio.wait_for(caller, 30)
        assert result.ok, result.describe()  # the caller got our BYE
