"""One call's media: its RTP socket, receive timeline, outbound stream, DTMF and frame taps.

The session exposes the call's two 8 kHz streams, frame-aligned, once per media-clock tick:
`speak` (what the remote party says: received audio) and `listen` (what the remote party
hears: the audio this session sends). Frame taps (the recording engine, `--record-heard`) get
both; they must copy a frame they keep, because the arrays are reused.

Receiving is polled by the tick, not driven by the event loop: once started, each tick first
reads what waits on the socket (up to the first packet that arrived on time, everything once a
second), then plays out the frame. Packets are placed by their RTP timestamp, so reading them
up to 20 ms later changes nothing in the audio, and the loop is spared one wake-up and one
callback per packet (500 calls = 25,000 a second) and, mostly, the read that ends in EAGAIN.

Once the session latched its peer (symmetric RTP) the socket is connect()ed to it: send() and
recv() cost less than sendto() and recvfrom(), and the kernel drops datagrams from any other
source (they are then no longer counted in `MediaStats.packets_foreign`). A new address in a
re-INVITE unlatches: the socket is disconnected until the peer's packets latch it again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from callbox.server.media.dtmf import DtmfReceiver, DtmfSender
from callbox.server.media.frames import FRAME_SAMPLES, TIMESTAMP_MASK
from callbox.server.media.g711 import CODECS, G711Codec, codec_for_payload_type
from callbox.server.media.jitter import ReceiveBuffer
from callbox.server.media.playback import FINISHED, Playback
from callbox.server.media.rtp import RtpError, RtpSender, is_rtcp, parse_header_span
from callbox.server.media.udp import disconnect

RECV_BUFFER_BYTES = 2048
# A tick reads at most this many datagrams from one socket (normal: one); a flood beyond it
# stays in the kernel buffer, where the kernel drops what does not fit.
MAX_PACKETS_PER_TICK = 256
# A tick stops reading at the first *fresh* audio packet (one that arrived on time: what is
# behind it arrived later and is read by the next tick, still in time), which saves the read
# that fails with EAGAIN on every call and tick; every DRAIN_EVERY_TICKS it reads until the
# socket is empty anyway, so nothing can pile up in the kernel buffer.
DRAIN_EVERY_TICKS = 50
DTMF_GAP_FRAMES = 3
# Waits in a digit string (`send_dtmf("1w2")`): w is half a second, W a second.
DTMF_WAIT_FRAMES = {"w": 25, "W": 50}
# Symmetric RTP: we latch on the first packet from the address the SDP named. A peer behind NAT
# sends from elsewhere; packets from other hosts may latch only after this many ticks (1 s)
# without any packet from the SDP host, so a stray or hostile sender cannot grab a new call.
LATCH_ANY_SOURCE_AFTER_TICKS = 50
# The receive fast path: a plain RTP header (version 2, no padding, extension or CSRC: first
# byte 0x80) -> (marker + payload type byte, timestamp, ssrc). Anything else takes the general
# path (is_rtcp, parse_header_span).
_PLAIN_RTP_FIRST_BYTE = 0x80
_PLAIN_HEADER = struct.Struct("!xB2xII")
_PLAIN_HEADER_SIZE = 12
# c= addresses of an RFC 2543-style hold: not where the peer's media moved.
_HOLD_HOSTS = ("0.0.0.0", "::")

log = logging.getLogger(__name__)


def is_numeric_address(host: str, family: int) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == (6 if family == socket.AF_INET6 else 4)


class FrameTap(Protocol):
    def __call__(self, speak: np.ndarray, listen: np.ndarray) -> None: ...


@dataclass
class MediaStats:
    """Per-session counters. `packets_foreign` counts datagrams from other sources while the
    socket is not connected (before the latch); once it is, the kernel drops them uncounted."""

    packets_received: int = 0
    packets_sent: int = 0
    packets_foreign: int = 0
    packets_malformed: int = 0
    packets_unknown_pt: int = 0
    digits_received: int = 0


class MediaSession:
    """RTP for one call. Sans-timer: the process-wide MediaClock calls `tick()` every 20 ms."""

    def __init__(self, sock: socket.socket, advertised_host: str) -> None:
        self.sock = sock
        self.local_port: int = sock.getsockname()[1]
        self.advertised_host = advertised_host
        self.remote: tuple[str, int] | None = None
        self._sdp_address: tuple[str, int] | None = None
        self._latched = False
        self._connected = False  # the socket is connect()ed to self.remote
        self._checking_sources = False  # connected, with datagrams queued from before
        self._latch_any_source_from = LATCH_ANY_SOURCE_AFTER_TICKS  # tick number
        self._ticks = 0
        self.codec: G711Codec = CODECS["PCMU"]
        self.dtmf_payload_type: int | None = None
        self.sending = True
        self.stats = MediaStats()
        self.receive_buffer = ReceiveBuffer()
        self._dtmf_in = DtmfReceiver()
        self._dtmf_out = DtmfSender()
        # One entry per 20 ms tick: (RFC 4733 payloads, first tick of an event, on_sent).
        self._dtmf_queue: deque[tuple[list[bytes], bool, Callable[[], None] | None]] = deque()
        self._dtmf_timestamp = 0
        self._rtp = RtpSender()
        self._silence_payload = self.codec.encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
        self._timestamp = random.getrandbits(32)
        self._marker = True
        self._mix = np.zeros(FRAME_SAMPLES, dtype=np.int32)
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self.listen = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self.playbacks: list[Playback] = []
        self._taps: list[FrameTap] = []
        self._dtmf_listeners: list[Callable[[str], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    # -- set-up ---------------------------------------------------------------------------

    @property
    def ticks(self) -> int:
        """Media clock ticks this session has run."""
        return self._ticks

    def configure(
        self,
        remote_host: str,
        remote_port: int,
        payload_type: int,
        dtmf_payload_type: int | None,
        direction: str = "sendrecv",
    ) -> None:
        """Apply negotiated SDP. Until the first packet arrives we send to the SDP address;
        afterwards to where the packets come from (symmetric RTP). A new address (not a hold
        address) unlatches. `remote_host` must be a numeric address of the socket's family: a
        host name would be looked up by every `sendto` in the media tick."""
        if not is_numeric_address(remote_host, self.sock.family):
            family = "IPv6" if self.sock.family == socket.AF_INET6 else "IPv4"
            raise ValueError(f"remote RTP host must be a numeric {family} address, "
                             f"got {remote_host[:80]!r}")
        codec = codec_for_payload_type(payload_type)
        if codec is None:
            raise ValueError(f"unsupported payload type {payload_type}")
        self.codec = codec
        self._silence_payload = codec.encode(self._silence)
        self.dtmf_payload_type = dtmf_payload_type
        self.sending = direction in ("sendrecv", "sendonly")
        if remote_host not in _HOLD_HOSTS:
            address = (remote_host, remote_port)
            if self._latched and address != self._sdp_address:
                self._unlatch()
            self._sdp_address = address
        if not self._latched:
            self.remote = (remote_host, remote_port) if remote_port else None

    def start(self) -> None:
        """Start receiving: from now on every tick reads the socket first."""
        self._loop = asyncio.get_running_loop()

    @property
    def started(self) -> bool:
        """True once `start()` ran (the ticks read the socket)."""
        return self._loop is not None

    # -- subscribers ----------------------------------------------------------------------

    def add_tap(self, tap: FrameTap) -> Callable[[], None]:
        """Call `tap(speak, listen)` every tick, after the frame is sent, in the order the
        taps were added. Returns the function that removes it (safe to call twice)."""
        self._taps.append(tap)
        return lambda: _discard(self._taps, tap)

    def on_dtmf(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(digit)` for each received RFC 4733 digit, in subscription order.
        Returns the unsubscribe function (safe to call twice)."""
        self._dtmf_listeners.append(listener)
        return lambda: _discard(self._dtmf_listeners, listener)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for playback in self.playbacks:
            playback.stop()
        self.playbacks.clear()

    # -- receive path (per packet) --------------------------------------------------------

    def _on_readable(self) -> None:
        """Read the datagrams waiting on the socket, up to the first fresh audio packet (all
        of them every DRAIN_EVERY_TICKS), at most MAX_PACKETS_PER_TICK."""
        drain = self._ticks % DRAIN_EVERY_TICKS == 0
        if self._connected and not self._checking_sources:  # every datagram is from remote
            recv = self.sock.recv
            take = self._take_from_remote
            for _ in range(MAX_PACKETS_PER_TICK):
                try:
                    data = recv(RECV_BUFFER_BYTES)
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionRefusedError:  # an ICMP error, reported once: read on
                    continue
                except OSError:
                    return
                if take(data) and not drain:
                    return
            return
        recvfrom = self.sock.recvfrom
        on_datagram = self.on_datagram
        for _ in range(MAX_PACKETS_PER_TICK):
            try:
                data, addr = recvfrom(RECV_BUFFER_BYTES)
            except (BlockingIOError, InterruptedError):
                self._checking_sources = False  # what was queued before connect() is read
                return
            except OSError:  # e.g. ICMP port unreachable reported on the socket
                return
            if on_datagram(data, addr) and not drain:
                return

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Take one datagram; True when it was audio that arrived on time (see
        ReceiveBuffer.push_g711)."""
        if self._latched:
            if addr != self.remote:
                self.stats.packets_foreign += 1
                return False
            return self._take_from_remote(data)
        sdp_host = self._sdp_address[0] if self._sdp_address is not None else None
        if addr[0] != sdp_host and self._ticks < self._latch_any_source_from:
            self.stats.packets_foreign += 1
            return False
        return self._take(data, addr)

    def _take_from_remote(self, data: bytes) -> bool:
        """A datagram from the latched peer (see on_datagram)."""
        if len(data) > _PLAIN_HEADER_SIZE and data[0] == _PLAIN_RTP_FIRST_BYTE:
            second, timestamp, ssrc = _PLAIN_HEADER.unpack_from(data)
            if second & 0x7F == self.codec.payload_type:  # the common case: audio
                self.stats.packets_received += 1
                return self.receive_buffer.push_g711(
                    ssrc, timestamp, data, _PLAIN_HEADER_SIZE, len(data),
                    self.codec.decode_table)
        return self._take(data, None)

    def _take(self, data: bytes, latch_to: tuple[str, int] | None) -> bool:
        """The general receive path; a valid RTP packet latches `latch_to` (when not None)."""
        if is_rtcp(data):
            return False
        try:
            payload_type, _marker, _seq, timestamp, ssrc, start, end = parse_header_span(data)
        except RtpError:
            self.stats.packets_malformed += 1
            return False
        if latch_to is not None:
            self._latch((latch_to[0], latch_to[1]))
        self.stats.packets_received += 1
        if payload_type == self.codec.payload_type:
            return self.receive_buffer.push_g711(ssrc, timestamp, data, start, end,
                                                 self.codec.decode_table)
        if payload_type == self.dtmf_payload_type:
            digit = self._dtmf_in.feed(timestamp, data[start:end])
            if digit is not None:
                self.stats.digits_received += 1
                for listener in tuple(self._dtmf_listeners):
                    listener(digit)
            return False
        other = codec_for_payload_type(payload_type)
        if other is not None:  # the peer switched between PCMU and PCMA
            return self.receive_buffer.push_g711(ssrc, timestamp, data, start, end,
                                                 other.decode_table)
        self.stats.packets_unknown_pt += 1
        return False

    def _latch(self, address: tuple[str, int]) -> None:
        """Send to `address` from now on, and receive only from it (connect())."""
        self.remote = address
        self._latched = True
        try:
            self.sock.connect(address)
        except OSError as exc:  # stay unconnected: sendto/recvfrom and the address check
            log.debug("RTP socket not connected to %s: %s", address, exc)
            return
        self._connected = True
        # connect() filters what arrives from now on; datagrams already queued (a flood from
        # elsewhere, say) are still read with their source checked, until the queue is empty.
        self._checking_sources = True

    def _unlatch(self) -> None:
        """The peer moved (a re-INVITE): latch again, afresh, on what comes next."""
        self._latched = False
        self._latch_any_source_from = self._ticks + LATCH_ANY_SOURCE_AFTER_TICKS
        if self._connected:
            self._connected = False
            try:
                disconnect(self.sock)
            except OSError as exc:  # sendto() still reaches the new address
                log.warning("RTP socket still connected to the old peer: %s", exc)

    # -- outbound -------------------------------------------------------------------------

    def play(self, playback: Playback) -> Playback:
        self.playbacks.append(playback)
        return playback

    def send_dtmf(self, digits: str, duration_ms: int = 100,
                  on_sent: Callable[[], None] | None = None) -> None:
        """Queue RFC 4733 events; `w` in `digits` waits 0.5 s and `W` 1 s (audio goes on).
        `on_sent()` runs in the tick that sent the last of them (it never runs if the
        session closes first). Raises ValueError for characters that are neither."""
        if self.dtmf_payload_type is None:
            raise ValueError("the peer did not negotiate telephone-event")
        ticks: list[tuple[list[bytes], bool, Callable[[], None] | None]] = []
        for digit in digits:
            if digit in DTMF_WAIT_FRAMES:
                ticks.extend(([], False, None) for _ in range(DTMF_WAIT_FRAMES[digit]))
                continue
            event = self._dtmf_out.packets(digit, duration_ms)
            ticks.extend((payloads, index == 0, None) for index, payloads in enumerate(event))
            ticks.extend(([], False, None) for _ in range(DTMF_GAP_FRAMES))
        if on_sent is not None:
            if not ticks:
                raise ValueError("no digits to send")
            payloads, first, _ = ticks[-1]
            ticks[-1] = (payloads, first, on_sent)
        self._dtmf_queue.extend(ticks)

    def _mix_frame(self, heard: np.ndarray | None) -> np.ndarray:
        """What the remote party hears this tick: the plays mixed over `heard` (the other
        party of a bridge), saturated to 16 bits."""
        if not self.playbacks:
            if heard is None:
                return self._silence
            self.listen[:] = heard
            return self.listen
        mix = self._mix
        if heard is None:
            mix.fill(0)
        else:
            mix[:] = heard
        for playback in tuple(self.playbacks):
            if not playback.read_into(mix):
                self.playbacks.remove(playback)
        np.clip(mix, -32768, 32767, out=mix)
        self.listen[:] = mix
        return self.listen

    # -- the tick (per 20 ms frame) -------------------------------------------------------

    def tick(self) -> None:
        """A session on its own: receive, then send what plays."""
        if not self.closed:
            self.transmit(self.receive(), None)

    def receive(self) -> np.ndarray:
        """First half of a tick: take in what arrived and return this tick's received frame
        (`speak`; a buffer reused by the next tick). Silence once closed."""
        if self.closed:
            return self._silence
        self._ticks += 1
        if self._loop is not None:  # started: take in what arrived since the last tick
            self._on_readable()
        return self.receive_buffer.pop_frame()

    def transmit(self, speak: np.ndarray, heard: np.ndarray | None) -> None:
        """Second half of a tick: send the plays mixed over `heard` (what the other party of
        a bridge said this tick; None when not bridged), then run the taps."""
        if self.closed:
            return
        payload: bytes | memoryview | None = None
        if heard is None and len(self.playbacks) == 1:  # one prompt alone: sent as it is
            playback = self.playbacks[0]
            frame = playback.next_frame(self.codec)
            if frame is not None:
                listen, payload = frame
                if playback.state == FINISHED:
                    self.playbacks.clear()
        if payload is None:
            listen = self._mix_frame(heard) if self.playbacks or heard is not None \
                else self._silence
            if listen is self._silence:
                payload = self._silence_payload
        if self.sending and self.remote is not None:
            self._send(listen, payload)
        self._timestamp = (self._timestamp + FRAME_SAMPLES) & TIMESTAMP_MASK
        if self._taps:
            for tap in tuple(self._taps):
                tap(speak, listen)

    def _send(self, frame: np.ndarray, payload: bytes | memoryview | None) -> None:
        """Send `frame` (its `payload` when already encoded)."""
        assert self.remote is not None
        if self._dtmf_queue:
            payloads, first, on_sent = self._dtmf_queue.popleft()
            if on_sent is not None:
                on_sent()
            if payloads:  # an event tick replaces audio; gap ticks carry audio
                self._send_dtmf_tick(payloads, first)
                return
        if payload is None:
            payload = self.codec.encode(frame)
        packet = self._rtp.build(payload, self.codec.payload_type, self._timestamp, self._marker)
        self._marker = False
        self._sendto(packet)

    def _send_dtmf_tick(self, payloads: list[bytes], first: bool) -> None:
        assert self.dtmf_payload_type is not None
        if first:  # every packet of one event carries the event's start timestamp
            self._dtmf_timestamp = self._timestamp
        for index, payload in enumerate(payloads):
            marker = first and index == 0
            self._sendto(
                self._rtp.build(payload, self.dtmf_payload_type, self._dtmf_timestamp, marker)
            )
        self._marker = True  # audio after an event starts a new talkspurt

    def _sendto(self, packet: bytes) -> None:
        try:
            if self._connected:
                self.sock.send(packet)
            else:
                self.sock.sendto(packet, self.remote)  # type: ignore[arg-type]
            self.stats.packets_sent += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            log.debug("RTP send to %s failed: %s", self.remote, exc)


def _discard(items: list[Any], item: object) -> None:
    if item in items:
        items.remove(item)
