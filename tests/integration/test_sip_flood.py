"""A flood of large, valid SIP messages must not cost a live call any recorded audio.

sipp streams 8 s of tone into a recorded call while another thread sends 52 KB OPTIONS with
1000 Via headers, 20 a second, at the same SIP port. Parsing one such message takes 20-60 ms on
the event loop the media clock runs on; the platform must refuse them before parsing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import numpy as np
import pytest
from tests.integration.conftest import running_platform
from tests.peers import audio
from tests.peers.ports import free_port_range
from tests.peers.sipp import g711_stream, run_sipp

from callbox.server.config import Route

pytestmark = pytest.mark.peers

TONE_SECONDS = 8.0
FLOOD_PER_SECOND = 20
FLOOD_VIAS = 1000


def flood_message(sip_port: int, index: int) -> bytes:
    vias = "".join(f"Via: SIP/2.0/UDP 127.0.0.1:{5000 + i};branch=z9hG4bKflood{index}x{i}\r\n"
                   for i in range(FLOOD_VIAS))
    return (f"OPTIONS sip:flood@127.0.0.1:{sip_port} SIP/2.0\r\n{vias}"
            f"From: <sip:flood@127.0.0.1>;tag=f{index}\r\nTo: <sip:flood@127.0.0.1>\r\n"
            f"Call-ID: flood-{index}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def flood(sip_port: int, stop: threading.Event, sent: list[int]) -> None:
    """Paced by its own thread's clock, so a busy event loop does not slow the flood down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    try:
        index = 0
        while not stop.wait(1 / FLOOD_PER_SECOND):
            message = flood_message(sip_port, index)
            sock.sendto(message, ("127.0.0.1", sip_port))
            sent.append(len(message))
            index += 1
    finally:
        sock.close()


async def test_flood_of_large_messages_loses_no_recorded_audio(tmp_path, peer_env):
    document = {"version": "1.0.0", "sections": {"main": [
        {"answer": {}},
        {"record_call": {"direction": "speak", "format": "wav", "end_silence_timeout": 0,
                         "initial_timeout": 0}},
        {"sleep": 60_000},
    ]}}
    routes = [Route("rec", swml=json.dumps(document))]
    tone = audio.tone(700, TONE_SECONDS, dbfs=-12)
    stream = g711_stream(tone, tmp_path / "tone.ulaw")
    block = free_port_range(8)
    async with running_platform(tmp_path, routes) as running:
        stop = threading.Event()
        sent: list[int] = []
        flooder = threading.Thread(target=flood, args=(running.sip_port, stop, sent),
                                   daemon=True)
        flooder.start()
        try:
            result = await run_sipp(
                "uac_stream_bye", running.target, service="rec", local_port=block.start,
                media_port=block.start + 4, keys={"stream": stream},
                extra_args=["-d", str(int((TONE_SECONDS + 1) * 1000))], timeout=60,
            )
        finally:
            stop.set()
            await asyncio.to_thread(flooder.join)
        assert result.ok, result.describe()
        seen = await running.wait_call_ended(0, timeout=30)
        (recording,) = seen.call.recordings
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
        assert running.platform.sip.oversized >= len(sent) // 2  # refused, not parsed
    assert len(sent) >= FLOOD_PER_SECOND * TONE_SECONDS / 2 and min(sent) > 50_000
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160).astype(np.float64)
    loud = np.sqrt((frames * frames).mean(axis=1)) > 32768 * 10 ** (-30 / 20)
    tone_seconds = int(np.count_nonzero(loud)) * 0.02
    # every 20 ms of the caller's tone is in the file (a skipped media tick loses its frame)
    assert tone_seconds >= TONE_SECONDS - 0.1, tone_seconds
