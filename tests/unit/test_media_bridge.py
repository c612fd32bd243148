"""Two media sessions bridged in the media clock: each sends what the other received, in the same
tick, with its own plays mixed over; taps see both sides; split and closed sessions.

Received audio is fed in as datagrams; what each session sends is read from a loopback socket
standing for its remote party.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from callbox.server.media.bridge import MediaBridge
from callbox.server.media.clock import MediaClock
from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.g711 import CODECS
from callbox.server.media.playback import Playback
from callbox.server.media.session import MediaSession

PCMU = CODECS["PCMU"]
RATE = 8000


def tone(freq: float, frames: int, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(frames * FRAME_SAMPLES) / RATE
    return (amplitude * np.cos(2 * np.pi * freq * t)).astype(np.int16)  # first sample: peak


def g711(samples: np.ndarray) -> np.ndarray:
    """`samples` as they come out of a G.711 round trip."""
    return PCMU.decode(PCMU.encode(samples))


class Party:
    """A remote party: a loopback socket the session sends to, and a session it feeds."""

    def __init__(self, ssrc: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        own.bind(("127.0.0.1", 0))
        own.setblocking(False)
        self.session = MediaSession(own, "127.0.0.1")
        self.session.configure("127.0.0.1", self.sock.getsockname()[1], 0, 101)
        self.ssrc = ssrc
        self.sequence = 0

    def say(self, samples: np.ndarray) -> None:
        for start in range(0, len(samples), FRAME_SAMPLES):
            frame = samples[start:start + FRAME_SAMPLES]
            header = struct.pack("!BBHII", 0x80, 0, self.sequence, self.sequence * 160,
                                 self.ssrc)
            self.session.on_datagram(header + PCMU.encode(frame), self.sock.getsockname())
            self.sequence += 1

    def heard(self) -> np.ndarray:
        """Everything the session sent, decoded, in arrival order."""
        frames = []
        while True:
            try:
                data = self.sock.recv(2048)
            except BlockingIOError:
                break
            frames.append(PCMU.decode(data[12:]))
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def close(self) -> None:
        self.sock.close()
        self.session.sock.close()


@pytest.fixture
def parties() -> Iterator[tuple[Party, Party]]:
    a, b = Party(1), Party(2)
    yield a, b
    a.close()
    b.close()


async def test_each_party_hears_the_other_in_the_same_tick(parties: tuple[Party, Party]) -> None:
    a, b = parties
    clock = MediaClock()
    clock.add(a.session)
    clock.add(b.session)
    bridge = MediaBridge(a.session, b.session, clock)
    bridge.join()
    assert bridge in clock and a.session not in clock and b.session not in clock
    said_by_a, said_by_b = tone(1000, 20), tone(700, 20)
    a.say(said_by_a)
    b.say(said_by_b)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    a.session.add_tap(lambda speak, listen: seen.append((speak.copy(), listen.copy())))
    for _ in range(30):
        clock.tick_all()
    speak = np.concatenate([s for s, _ in seen])
    listen = np.concatenate([heard for _, heard in seen])
    start = int(np.flatnonzero(speak)[0])  # after the receive delay
    n = len(said_by_a)
    assert np.array_equal(speak[start:start + n], g711(said_by_a))
    assert np.array_equal(listen[start:start + n], g711(said_by_b))  # same tick, no lag
    sent_to_b = b.heard()
    sent_to_a = a.heard()
    assert np.array_equal(sent_to_b[start:start + n], g711(g711(said_by_a)))
    assert np.array_equal(sent_to_a[start:start + n], g711(g711(said_by_b)))


async def test_a_prompt_is_mixed_over_the_other_party(parties: tuple[Party, Party]) -> None:
    a, b = parties
    clock = MediaClock()
    MediaBridge(a.session, b.session, clock).join()
    a.say(tone(1000, 20, amplitude=4000))
    prompt = tone(400, 40, amplitude=4000)
    b.session.play(Playback([prompt]))
    for _ in range(30):
        clock.tick_all()
    heard = b.heard().astype(np.float64)
    spectrum = np.abs(np.fft.rfft(heard[-4000:]))
    freqs = np.fft.rfftfreq(4000, 1 / RATE)
    peaks = {round(float(f)) for f in freqs[np.argsort(spectrum)[-2:]]}
    assert peaks == {400, 1000}  # the prompt over the caller, both at full level
    assert not a.heard()[-4000:].any()  # b's party said nothing; the prompt is b's alone


async def test_split_and_closed_sessions(parties: tuple[Party, Party]) -> None:
    a, b = parties
    clock = MediaClock()
    bridge = MediaBridge(a.session, b.session, clock)
    a.session.start()  # started sessions tick on their own again after a split
    b.session.start()
    bridge.join()
    bridge.split()
    assert bridge not in clock and a.session in clock and b.session in clock
    a.say(tone(1000, 10))
    for _ in range(20):
        clock.tick_all()
    assert not b.heard().any()  # no longer bridged: b's party hears silence
    bridge.join()
    a.session.close()
    a.say(tone(1000, 10))
    for _ in range(20):
        clock.tick_all()  # a closed session is silence, not an error
    assert not b.heard().any()
    bridge.split()
    assert a.session not in clock and b.session in clock


async def test_a_session_cannot_be_bridged_to_itself(parties: tuple[Party, Party]) -> None:
    with pytest.raises(ValueError, match="itself"):
        MediaBridge(parties[0].session, parties[0].session, MediaClock())
