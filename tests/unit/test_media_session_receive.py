"""The tick-driven receive path: each tick reads the socket before playing out a frame, stops at
the first packet that arrived on time, and empties the socket every DRAIN_EVERY_TICKS. Real UDP
sockets on 127.0.0.1; the event loop only marks the session started."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from callbox.server.media.g711 import PCMU
from callbox.server.media.session import DRAIN_EVERY_TICKS, MediaSession

FRAME = 160


def rtp(sequence: int, samples: np.ndarray) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, sequence, 5000 + sequence * FRAME, 77) + PCMU.encode(
        samples)


@pytest.fixture
async def pair():
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    ours.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    media = MediaSession(ours, "127.0.0.1")
    media.configure("127.0.0.1", peer.getsockname()[1], 0, None, "recvonly")
    media.start()
    heard: list[np.ndarray] = []
    media.add_tap(lambda speak, listen: heard.append(speak.copy()))
    yield media, peer, ours.getsockname(), heard
    media.close()
    ours.close()
    peer.close()


def signal(frames: int) -> np.ndarray:
    """Distinct, loud, G.711-exact samples (decoded codes), so any loss or shift shows."""
    rng = np.random.default_rng(7)
    return PCMU.decode(rng.integers(0, 0x70, frames * FRAME, dtype=np.uint8).tobytes())


async def test_every_packet_of_a_steady_stream_is_played_out(pair):
    media, peer, address, heard = pair
    audio = signal(120)
    for k in range(120):
        peer.sendto(rtp(k, audio[k * FRAME:(k + 1) * FRAME]), address)
        media.tick()
    for _ in range(5):
        media.tick()
    out = np.concatenate(heard)
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start:start + len(audio)], audio)
    assert media.receive_buffer.late == 0


async def test_bursts_are_read_in_time_and_the_drain_empties_the_socket(pair):
    media, peer, address, heard = pair
    audio = signal(40)
    # 2 packets per tick for the first 20 ticks (a sender running ahead), then nothing
    for tick in range(20):
        for k in (2 * tick, 2 * tick + 1):
            peer.sendto(rtp(k, audio[k * FRAME:(k + 1) * FRAME]), address)
        media.tick()
    assert media.stats.packets_received < 40  # one fresh packet per tick...
    while media.ticks % DRAIN_EVERY_TICKS:
        media.tick()
    media.tick()
    assert media.stats.packets_received == 40  # ...and the drain tick took the rest
    for _ in range(120):
        media.tick()
    out = np.concatenate(heard)
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start:start + len(audio)], audio)
    assert media.receive_buffer.late == 0 and media.receive_buffer.resyncs == 0


async def test_a_closed_session_no_longer_reads(pair):
    media, peer, address, _heard = pair
    media.close()
    peer.sendto(rtp(0, signal(1)), address)
    media.tick()
    assert media.stats.packets_received == 0
