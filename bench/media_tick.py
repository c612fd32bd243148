"""The media tick in isolation: CPU per call-second of receiving, sending and recording.

N media sessions on loopback sockets, each fed one 20 ms PCMU packet per tick by a peer socket
(sent before the tick, outside the measurement). The measured part is exactly what the media
clock does every 20 ms for every call: read the socket, play out the frame, send one packet,
hand both streams to the taps (with `--record`: a real recording, WAV or MP3 writers in the
writer thread, whose CPU is counted too). The result is process CPU (all threads) per tick,
scaled to ms per call-second; the full platform adds SIP, HTTP and the event loop's own work
(`concurrent_recordings.py` measures that).

With `--prompt` every call also plays one shared 7.3 s prompt on a loop (what a caller hears
from an IVR or an agent): `shared` sends it as the platform does (one prompt alone at unity
gain: the frame's payload is a slice of the prompt encoded once), `mixed` forces the mixing
path every frame (as before the shared prompt: mix, clip, encode per call and tick).

    .venv/bin/python bench/media_tick.py --calls 300 --seconds 10
    .venv/bin/python bench/media_tick.py --calls 300 --seconds 10 --record wav-stereo
    .venv/bin/python bench/media_tick.py --calls 300 --record wav-stereo --prompt shared
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.g711 import ulaw_encode
from callbox.server.media.playback import Playback
from callbox.server.media.rtp import RtpSender
from callbox.server.media.session import MediaSession
from callbox.server.media.sound import Sound
from callbox.server.recording.engine import RecordingEngine
from callbox.wire.recording import RecordParams

VARIANTS = {
    "wav-mono": {"format": "wav", "stereo": False},
    "wav-stereo": {"format": "wav", "stereo": True},
    "mp3-mono": {"format": "mp3", "stereo": False},
    "mp3-stereo": {"format": "mp3", "stereo": True},
}


class Peer:
    """The far end of one call: sends a tone, one packet per tick, and discards what comes."""

    def __init__(self, session: MediaSession) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.target = ("127.0.0.1", session.local_port)
        self.rtp = RtpSender()
        self.timestamp = 0
        t = np.arange(FRAME_SAMPLES * 50) / 8000
        self.payloads = [bytes(ulaw_encode((8000 * np.sin(2 * np.pi * 440 * t[i:i + 160]))
                                           .astype(np.int16))) for i in range(0, 8000, 160)]

    def send(self, tick: int) -> None:
        payload = self.payloads[tick % len(self.payloads)]
        self.sock.sendto(self.rtp.build(payload, 0, self.timestamp), self.target)
        self.timestamp += FRAME_SAMPLES

    def discard(self) -> None:
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return


PROMPT_SECONDS = 7.3  # not a whole number of frames: the loop's seam takes the mixing path


def prompt_sound() -> Sound:
    t = np.arange(int(PROMPT_SECONDS * 8000)) / 8000
    return Sound((6000 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 0.7 * t))
                 .astype(np.int16))


async def run(calls: int, seconds: float, record: str | None,
              prompt: str | None = None) -> dict[str, float]:
    if prompt == "mixed":
        Playback.next_frame = lambda self, codec: None  # type: ignore[method-assign]
    shared = prompt_sound() if prompt else None
    sessions, peers = [], []
    for _ in range(calls):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        session = MediaSession(sock, "127.0.0.1")
        peer = Peer(session)
        session.configure("127.0.0.1", peer.address[1], 0, None)
        session.start()
        if shared is not None:
            session.play(Playback([shared], loop=0))
        sessions.append(session)
        peers.append(peer)
    engine = None
    if record:
        data_dir = Path(tempfile.mkdtemp(prefix="media-tick-"))
        engine = RecordingEngine(data_dir=data_dir, public_url="http://127.0.0.1",
                                 node_id="bench")
        params = RecordParams.parse(VARIANTS[record], "swml_record_call")
        for session in sessions:
            call = SimpleNamespace(id="c", media=session, is_active=True, recordings=(),
                                   peer_id=None, attach_recording=lambda _r: None,
                                   add_tap=session.add_tap, on_dtmf=lambda _fn: (lambda: None))
            await engine.start_recording(call, params)  # type: ignore[arg-type]
    ticks = int(seconds * 50)
    ticking = 0.0  # CPU of this thread inside the ticks
    process_before, thread_before = time.process_time(), time.thread_time()
    for tick in range(ticks):
        for peer in peers:
            peer.send(tick)
        started = time.thread_time()
        for session in sessions:
            session.tick()
        ticking += time.thread_time() - started
        await asyncio.sleep(0)  # let the writer jobs be submitted
        for peer in peers:
            peer.discard()
    if engine is not None:
        for session in sessions:
            session.close()
        await engine.close()  # waits for the writer thread
    other_threads = (time.process_time() - process_before) - (time.thread_time() - thread_before)
    received = sum(s.stats.packets_received for s in sessions)
    call_seconds = calls * seconds
    return {"tick_ms_per_call_second": ticking * 1000 / call_seconds,
            "writer_threads_ms_per_call_second": other_threads * 1000 / call_seconds,
            "received": received, "sent": calls * ticks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--record", choices=sorted(VARIANTS))
    parser.add_argument("--prompt", choices=["shared", "mixed"],
                        help="every call also plays a prompt (see the docstring)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.calls, args.seconds, args.record, args.prompt))
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
