"""`callbox call SIP_URI`: a command-line SIP caller built on the platform's own SIP and RTP.

It streams a file or a media URL (`say:...`), sends RFC 4733 digits at given times, hangs up
after N seconds (or when the other side does) and can save what it heard to a WAV file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callbox.server.media.clock import MediaClock
from callbox.server.media.frames import FRAME_SECONDS
from callbox.server.media.playback import Playback
from callbox.server.media.session import MediaSession
from callbox.server.media.sources import render_media_url
from callbox.server.sip.endpoint import CallFailed, SipEndpoint
from callbox.server.sip.headers import SipParseError, SipUri
from callbox.server.sip.message import SipRequest
from callbox.server.sip.negotiation import LocalSdp
from callbox.server.sip.resolve import numeric_host
from callbox.server.sip.sdp import (
    NegotiatedMedia,
)
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)

DTMF_SPEC = re.compile(r"^([0-9A-D*#]+)@(\d+(?:\.\d+)?)$")
URI_EXAMPLE = "sip:USER@HOST[:PORT], e.g. sip:prompt@127.0.0.1:5060"


@dataclass
class CallResult:
    status: int
    reason: str
    answered_seconds: float = 0.0
    hung_up_by: str = ""  # "us" or "remote"
    packets_sent: int = 0
    packets_received: int = 0
    digits_sent: list[str] = field(default_factory=list)
    heard_seconds: float = 0.0


def parse_dtmf_schedule(spec: str) -> list[tuple[str, float]]:
    """'#@3.5' -> [('#', 3.5)]; '123@1,#@4' -> [('123', 1.0), ('#', 4.0)]."""
    schedule = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = DTMF_SPEC.match(item)
        if match is None:
            raise ValueError(f"--dtmf items are DIGITS@SECONDS (digits 0-9 A-D * #), got {item!r}")
        schedule.append((match.group(1), float(match.group(2))))
    return sorted(schedule, key=lambda entry: entry[1])


def parse_call_target(uri: str) -> SipUri:
    """The SIP URI to call, checked: sip:/sips:, a host, a port in 1-65535 (ValueError else)."""
    try:
        target = SipUri.parse(uri)
    except SipParseError as exc:
        raise ValueError(f"bad SIP URI {uri!r} ({exc}); expected {URI_EXAMPLE}") from None
    if target.scheme not in ("sip", "sips") or not target.host:
        raise ValueError(f"cannot call {uri!r}: expected {URI_EXAMPLE}")
    if target.port is not None and not 1 <= target.port <= 65535:
        raise ValueError(f"bad port {target.port} in {uri!r}: it must be 1-65535")
    return target


def parse_local_host(text: str) -> str:
    """--local-host: an IP address (it goes into the SDP offer as it is)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"--local-host must be an IP address of this machine, got {text!r}"
                         ) from None


class WavTap:
    """Streams one side of a call to a 16-bit 8 kHz mono WAV file as frames arrive."""

    def __init__(self, path: Path) -> None:
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(8000)
        self.frames = 0

    def __call__(self, speak: np.ndarray, listen: np.ndarray) -> None:
        self._wav.writeframes(speak.astype("<i2", copy=False).tobytes())
        self.frames += 1

    def close(self) -> None:
        self._wav.close()


async def play_out_received(media: MediaSession, limit: float = 1.0) -> None:
    """Let the media clock play out what the receive buffer still holds (its delay's worth of
    frames) after the other side hung up, so `--record-heard` keeps the end of what it sent."""
    last_tick = media.ticks + media.receive_buffer.delay_frames + 1
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    while media.ticks < last_tick and loop.time() < give_up:
        await asyncio.sleep(FRAME_SECONDS)


async def place_call(
    uri: str,
    *,
    play: str | None = None,
    dtmf: list[tuple[str, float]] | None = None,
    hangup_after: float | None = None,
    record_heard: Path | None = None,
    local_host: str = "127.0.0.1",
    from_user: str = "callbox",
    ring_timeout: float | None = None,
) -> CallResult:
    """Call `uri`; early media (a 183 with SDP) is heard and recorded before the answer."""
    endpoint = SipEndpoint(user_agent="callbox-call")
    await endpoint.start(local_host, 0)
    family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((local_host, 0))
    sock.setblocking(False)
    media = MediaSession(sock, local_host)
    clock = MediaClock()
    sdp = LocalSdp(local_host, media.local_port, family)
    offer = sdp.offer()
    tap = WavTap(record_heard) if record_heard is not None else None
    media_lock = asyncio.Lock()  # early media and the answer configure the session in order

    async def use_media(negotiated: NegotiatedMedia) -> None:
        async with media_lock:
            remote_host = await numeric_host(negotiated.remote_host, family=family)
            media.configure(remote_host, negotiated.remote_port, negotiated.payload_type,
                            negotiated.dtmf_payload_type, negotiated.local_direction)
            if not media.started:
                if tap is not None:
                    media.add_tap(tap)
                media.start()
                clock.add(media)
                clock.start()

    async def reoffer(request: SipRequest) -> bytes:
        """A re-INVITE from the callee (hold, resume, a new address): answer it on our port."""
        negotiation = await sdp.answer(request)
        await use_media(negotiation.media)
        return negotiation.answer

    def early_media(negotiated: NegotiatedMedia) -> None:
        spawn(use_media(negotiated), name="early-media")

    try:
        prompt = await render_media_url(play) if play else None
        try:
            leg = await endpoint.call(
                uri, offer, from_uri=endpoint.local_uri(from_user), ring_timeout=ring_timeout,
                on_early_media=early_media, on_reoffer=reoffer)
        except CallFailed as exc:
            return CallResult(exc.status, exc.reason)
        assert leg.media is not None and leg.response is not None
        await use_media(leg.media)
        ended = asyncio.Event()
        result = CallResult(leg.response.status, leg.response.reason)
        leg.on_terminated = lambda why: ended.set()
        answered_at = time.monotonic()
        if prompt is not None:
            media.play(Playback([prompt]))
        loop = asyncio.get_running_loop()
        for digits, at in dtmf or []:
            def send(digits: str = digits) -> None:
                media.send_dtmf(digits)
                result.digits_sent.append(digits)
            loop.call_later(at, send)
        try:
            await asyncio.wait_for(ended.wait(), timeout=hangup_after)
            result.hung_up_by = "remote"
            await play_out_received(media)
        except TimeoutError:
            result.hung_up_by = "us"
            await leg.bye()
        result.answered_seconds = time.monotonic() - answered_at
        result.packets_sent = media.stats.packets_sent
        result.packets_received = media.stats.packets_received
        result.heard_seconds = tap.frames * FRAME_SECONDS if tap else 0.0
        return result
    finally:
        await clock.stop()
        media.close()
        sock.close()
        if tap is not None:
            tap.close()
        endpoint.close()
