"""Limits and faults: call limits, RTP and SIP floods, recordings per call, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
from pathlib import Path

import pytest
from tests.integration.conftest import running_platform, write_serve_config
from tests.integration.test_recording_faults import (
    start_serve,
    wait_for_part_seconds,
    webhook_receiver,
)
from tests.peers import audio
from tests.peers.ports import free_tcp_port, free_udp_port
from tests.peers.rawsip import SDP_PCMU, RawSip

from callbox.caller import place_call
from callbox.server.config import Route

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


LISTEN = Route("listen", swml=swml({"answer": {}}, {"sleep": 60_000}))
RECORD = Route("rec", swml=swml({"answer": {}}, {"record_call": {"direction": "speak"}},
                                {"sleep": 60_000}))


async def test_over_max_calls_gets_503_with_retry_after(tmp_path):
    async with running_platform(tmp_path, [LISTEN], sip__max_calls=1) as running:
        first = asyncio.create_task(place_call(running.uri("listen"), hangup_after=2))
        while not running.observed:
            await asyncio.sleep(0.02)
        raw = RawSip()
        try:
            await raw.send(raw.request("INVITE", running.uri("listen"), body=SDP_PCMU),
                           running.sip_port)
            response = await raw.final()
        finally:
            raw.close()
        assert response is not None and response.status == 503
        assert response.headers.get("Retry-After") == "5"
        assert (await first).status == 200  # the call in progress was not disturbed
        assert len(running.observed) == 1


def rtp_noise_packet(sequence: int) -> bytes:
    # PCMU 0x00 decodes to about -32000: a full-scale buzz if it ever reached a call
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 0xBAD) + b"\x00" * 160


async def test_rtp_flood_from_an_unknown_source_does_not_reach_the_call(tmp_path):
    async with running_platform(tmp_path, [RECORD]) as running:
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.2", 0))  # another host than the caller's SDP address
        attacker.setblocking(False)
        stop = asyncio.Event()

        flooded = [0]

        async def flood(port: int) -> None:
            sequence = 0
            while not stop.is_set():
                for _ in range(10):
                    sequence += 1
                    attacker.sendto(rtp_noise_packet(sequence), ("127.0.0.1", port))
                    flooded[0] += 1
                await asyncio.sleep(0.005)

        def start_flood(call) -> None:  # as soon as the call exists, before its media
            asyncio.get_running_loop().create_task(flood(call.media.local_port))

        running.platform.call_observers.append(start_flood)
        tone = tmp_path / "tone.wav"
        audio.write_wav(tone, audio.tone(700, 2.0, dbfs=-12))
        try:
            caller = await place_call(running.uri("rec"), play=str(tone), hangup_after=2.5)
            seen = await running.wait_call_ended()
            (recording,) = seen.call.recordings
            await recording.done
        finally:
            stop.set()
            attacker.close()
    # Before the caller's first packet latched the call, the flood was counted and dropped;
    # after it, the socket is connected to the caller and the kernel drops the rest unseen.
    assert flooded[0] > 500
    assert (await seen.call.media.snapshot()).counters["packets_received"] <= caller.packets_sent
    samples, _ = audio.decode_audio(recording.path)
    spans = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    assert len(spans) == 1 and spans[0][1] - spans[0][0] == pytest.approx(2.0, abs=0.05)
    assert audio.tone_level_dbfs(samples[800:15000], 700) == pytest.approx(-12, abs=0.5)


async def test_sip_flood_does_not_starve_live_media(tmp_path):
    async with running_platform(tmp_path, [RECORD]) as running:
        tone = tmp_path / "tone.wav"
        audio.write_wav(tone, audio.tone(700, 4.0, dbfs=-12))
        # the caller in its own process: the flood must not starve its media either
        caller = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbox.cli", "call", running.uri("rec"), "--play", str(tone),
            "--hangup-after", "4.5", stdout=asyncio.subprocess.DEVNULL)
        while not running.observed or running.observed[0].call.state != "answered":
            await asyncio.sleep(0.01)
        raw = RawSip()
        try:
            for index in range(4000):  # OPTIONS and garbage as fast as we can send them
                data = (raw.request("OPTIONS", running.uri("x")) if index % 2
                        else b"\x13\x37garbage" * 40)
                await raw.send(data, running.sip_port)
                if index % 200 == 0:
                    await asyncio.sleep(0.05)
        finally:
            raw.close()
        assert await asyncio.wait_for(caller.wait(), 30) == 0  # answered
        seen = await running.wait_call_ended()
        (recording,) = seen.call.recordings
        await recording.done
    samples, _ = audio.decode_audio(recording.path)
    spans = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    assert len(spans) == 1, spans  # no hole in the caller's audio
    assert spans[0][1] - spans[0][0] == pytest.approx(4.0, abs=0.05)
    assert (await seen.call.media.snapshot()).counters["packets_late"] == 0


async def test_recordings_per_call_are_capped(tmp_path, caplog):
    verbs = [{"record_call": {"control_id": f"r{i}"}} for i in range(11)]
    routes = [Route("many", swml=swml({"answer": {}}, *verbs, {"sleep": 500}, {"hangup": {}}))]
    async with running_platform(tmp_path, routes) as running:
        await place_call(running.uri("many"), hangup_after=10)
        seen = await running.wait_call_ended()
    assert len(seen.call.recordings) == 10
    assert "at most 10 recordings per call" in caplog.text


async def test_sigterm_finishes_recordings_hangs_up_and_flushes_webhooks(tmp_path):
    sip_port, http_port = free_udp_port(), free_tcp_port()
    recordings = tmp_path / "data" / "recordings"
    async with webhook_receiver(fail_first=0) as (hook_url, received):
        route = swml({"answer": {}}, {"record_call": {"status_url": hook_url}},
                     {"sleep": 60_000})
        config = write_serve_config(tmp_path, sip_port=sip_port, http_port=http_port,
                                    routes={"rec": route})
        server = await start_serve(config)
        tone = tmp_path / "tone.wav"
        audio.write_wav(tone, audio.tone(700, 20.0, dbfs=-12))
        caller = await asyncio.create_subprocess_exec(
            CALLBOX, "call", f"sip:rec@127.0.0.1:{sip_port}", "--play", str(tone),
            "--hangup-after", "30", stdout=asyncio.subprocess.PIPE,
        )
        on_disk = await wait_for_part_seconds(recordings, "wav", 1.0, timeout=20)
        server.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(caller.communicate(), 15)
        assert b"hung up by remote" in out  # the platform sent BYE
        assert await asyncio.wait_for(server.wait(), 15) == 0
        bodies = [json.loads(body)["params"] for body, _ in received]
    assert [b["state"] for b in bodies] == ["recording", "finished"]  # sent before the exit
    (recording,) = recordings.glob("*.wav")
    assert not list(recording.parent.glob("*.part"))
    samples, _ = audio.decode_audio(recording)
    finished = bodies[1]
    # the file is what the platform reported: at least what was on disk at SIGTERM, no more
    # than the recording lasted by its own start and end times
    assert len(samples) / 8000 == pytest.approx(finished["duration"], abs=0.02)
    assert on_disk <= finished["duration"] <= finished["end_time"] - finished["start_time"] + 0.1
    # the caller's tone up to the very end: nothing buffered was lost when the process stopped
    spans = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    assert len(spans) == 1 and spans[0][1] >= len(samples) / 8000 - 0.05, spans


async def test_swml_fetch_does_not_follow_redirects_and_the_caller_hears_an_error(tmp_path):
    from aiohttp import web

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere")  # credentials must not follow

    app = web.Application()
    app.router.add_post("/agent", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    heard = tmp_path / "heard.wav"
    try:
        routes = [Route("agent", swml_url=f"http://user:pass@127.0.0.1:{port}/agent")]
        async with running_platform(tmp_path, routes) as running:
            result = await place_call(running.uri("agent"), hangup_after=20,
                                      record_heard=heard)
            seen = await running.wait_call_ended()
    finally:
        await runner.cleanup()
    assert hits == ["/agent"]
    assert result.hung_up_by == "remote" and seen.call.end_reason == "error"
    samples, _ = audio.read_wav(heard)
    assert audio.active_spans(samples, 8000, threshold_dbfs=-40)  # the spoken error prompt


async def test_an_oversized_relay_frame_closes_only_that_connection(tmp_path):
    import aiohttp

    from callbox.server.config import Project

    async with running_platform(tmp_path, [LISTEN], http__plain_listen="127.0.0.1:0") as running:
        running.platform.config.projects.append(Project("p1", "t1"))
        url = f"ws://127.0.0.1:{running.platform.listening.plain[1]}/"
        ping = json.dumps({"jsonrpc": "2.0", "id": "1", "method": "signalwire.ping",
                           "params": {}})
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, max_msg_size=0) as big:
                await big.send_str("x" * (2 * 1024 * 1024))
                message = await big.receive(timeout=5)
                assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                        aiohttp.WSMsgType.CLOSING)
            async with session.ws_connect(url) as other:  # the server still serves others
                await other.send_str(ping)
                reply = await other.receive_json(timeout=5)
                assert reply["id"] == "1"  # answered (an error: not connected yet)
