"""RTP packets (RFC 3550 section 5.1), sans-I/O.

Three ways in, from general to fast:

* :class:`RtpPacket` - a full dataclass with :meth:`RtpPacket.parse` / :meth:`RtpPacket.serialize`,
  for tests, tools and anything that needs CSRCs, header extensions or padding.
* :func:`parse_header` / :func:`parse_header_span` - the receive hot path: validate the header
  and return plain ints, no objects, so the payload can be decoded straight from the datagram.
* :class:`RtpSender` - the send hot path: writes the fixed header into a reused buffer.

:func:`is_rtcp` tells RTCP from RTP when both share one port (RFC 5761).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Final

from callbox.server.media.frames import FRAME_SAMPLES, TIMESTAMP_MASK, TIMESTAMP_MOD

RTP_VERSION: Final = 2
HEADER_SIZE: Final = 12
MAX_PAYLOAD_TYPE: Final = 0x7F
SEQUENCE_MOD: Final = 1 << 16

_VERSION_SHIFT: Final = 6
_PADDING_BIT: Final = 0x20
_EXTENSION_BIT: Final = 0x10
_CSRC_COUNT_MASK: Final = 0x0F
_MARKER_BIT: Final = 0x80
_PT_MASK: Final = 0x7F
_MAX_CSRC: Final = 15
_EXTENSION_HEADER_SIZE: Final = 4

# RFC 5761 section 4: RTCP packet types 192-223 occupy the second byte where RTP has
# marker + payload type, i.e. payload types 64-95 once the marker bit is masked off. This covers
# SR/RR/SDES/BYE/APP (200-204) as well as the feedback (205, 206) and XR (207) types.
_RTCP_PT_MIN: Final = 192 & _PT_MASK
_RTCP_PT_MAX: Final = 223 & _PT_MASK

_HEADER: Final = struct.Struct("!BBHII")
_EXTENSION_HEADER: Final = struct.Struct("!HH")
_U32: Final = struct.Struct("!I")


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


def _payload_bounds(data: bytes, first: int) -> tuple[int, int]:
    """Validate the variable part of the header; return (payload_offset, payload_end)."""
    length = len(data)
    offset = HEADER_SIZE + 4 * (first & _CSRC_COUNT_MASK)
    if offset > length:
        raise RtpError("RTP CSRC list runs past the end of the packet")
    if first & _EXTENSION_BIT:
        if offset + _EXTENSION_HEADER_SIZE > length:
            raise RtpError("RTP header extension runs past the end of the packet")
        words = (data[offset + 2] << 8) | data[offset + 3]
        offset += _EXTENSION_HEADER_SIZE + 4 * words
        if offset > length:
            raise RtpError("RTP header extension runs past the end of the packet")
    end = length
    if first & _PADDING_BIT:
        pad = data[-1] if length > offset else 0
        if pad == 0 or pad > length - offset:
            raise RtpError(f"bad RTP padding count {pad}")
        end -= pad
    return offset, end


def parse_header(data: bytes) -> tuple[int, bool, int, int, int, int]:
    """Validate an RTP datagram and return its fixed header fields.

    Returns ``(payload_type, marker, sequence, timestamp, ssrc, payload_offset)``; the payload
    is ``data[payload_offset:]`` for unpadded packets. Padded packets (P bit set, rare for audio)
    are validated too; use :func:`parse_header_span` or :func:`payload_end` to strip their padding.
    Raises :class:`RtpError` on short packets, a version other than 2, a CSRC list or header
    extension running past the end, or a padding count of 0 or larger than the payload.
    """
    if len(data) < HEADER_SIZE:
        raise RtpError(f"RTP packet too short ({len(data)} bytes)")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> _VERSION_SHIFT != RTP_VERSION:
        raise RtpError(f"RTP version {first >> _VERSION_SHIFT}, expected 2")
    offset = _payload_bounds(data, first)[0]
    return second & _PT_MASK, bool(second & _MARKER_BIT), sequence, timestamp, ssrc, offset


def parse_header_span(data: bytes) -> tuple[int, bool, int, int, int, int, int]:
    """Like :func:`parse_header` plus the payload end: the payload is ``data[offset:end]``.

    Returns ``(payload_type, marker, sequence, timestamp, ssrc, payload_offset, payload_end)``,
    with padding (if any) excluded by ``payload_end``.
    """
    if len(data) < HEADER_SIZE:
        raise RtpError(f"RTP packet too short ({len(data)} bytes)")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> _VERSION_SHIFT != RTP_VERSION:
        raise RtpError(f"RTP version {first >> _VERSION_SHIFT}, expected 2")
    offset, end = _payload_bounds(data, first)
    return second & _PT_MASK, bool(second & _MARKER_BIT), sequence, timestamp, ssrc, offset, end


def payload_end(data: bytes) -> int:
    """End offset of the payload of an RTP packet already validated by :func:`parse_header`."""
    return len(data) - data[-1] if data[0] & _PADDING_BIT else len(data)


def is_rtcp(data: bytes) -> bool:
    """True if a datagram on an rtcp-mux port is RTCP (RFC 5761 section 4).

    Checks the version bits and the packet type byte: 192-223 (which includes SR/RR/SDES/BYE/APP,
    200-204), i.e. an RTP "payload type" of 64-95 after masking the marker bit.
    """
    return (
        len(data) >= 2
        and data[0] >> _VERSION_SHIFT == RTP_VERSION
        and _RTCP_PT_MIN <= (data[1] & _PT_MASK) <= _RTCP_PT_MAX
    )


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet.

    ``extension`` is ``(profile, data)`` with ``len(data)`` a multiple of 4 (RFC 3550 5.3.1);
    ``padding`` is the number of padding octets including the final count octet (0 = none).
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse a datagram; raises :class:`RtpError` if it is not valid RTP."""
        if len(data) < HEADER_SIZE:
            raise RtpError(f"RTP packet too short ({len(data)} bytes)")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if first >> _VERSION_SHIFT != RTP_VERSION:
            raise RtpError(f"RTP version {first >> _VERSION_SHIFT}, expected 2")
        offset, end = _payload_bounds(data, first)
        csrc_count = first & _CSRC_COUNT_MASK
        csrc = struct.unpack_from(f"!{csrc_count}I", data, HEADER_SIZE) if csrc_count else ()
        extension = None
        if first & _EXTENSION_BIT:
            ext_at = HEADER_SIZE + 4 * csrc_count
            profile, _words = _EXTENSION_HEADER.unpack_from(data, ext_at)
            extension = (profile, bytes(data[ext_at + _EXTENSION_HEADER_SIZE : offset]))
        return cls(
            payload_type=second & _PT_MASK,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & _MARKER_BIT),
            csrc=tuple(csrc),
            extension=extension,
            padding=len(data) - end,
        )

    def serialize(self) -> bytes:
        """The packet as bytes; raises :class:`RtpError` for out-of-range fields."""
        if not 0 <= self.payload_type <= MAX_PAYLOAD_TYPE:
            raise RtpError(f"payload type {self.payload_type} out of range")
        if not 0 <= self.sequence < SEQUENCE_MOD:
            raise RtpError(f"sequence {self.sequence} out of range")
        if not 0 <= self.timestamp < TIMESTAMP_MOD or not 0 <= self.ssrc < TIMESTAMP_MOD:
            raise RtpError("timestamp or SSRC out of range")
        if len(self.csrc) > _MAX_CSRC or any(not 0 <= c < TIMESTAMP_MOD for c in self.csrc):
            raise RtpError("at most 15 CSRCs, each 32 bits")
        if not 0 <= self.padding <= 0xFF:
            raise RtpError(f"padding {self.padding} out of range")
        first = (RTP_VERSION << _VERSION_SHIFT) | len(self.csrc)
        if self.padding:
            first |= _PADDING_BIT
        if self.extension is not None:
            first |= _EXTENSION_BIT
        second = self.payload_type | (_MARKER_BIT if self.marker else 0)
        parts = [_HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc)]
        parts.extend(_U32.pack(c) for c in self.csrc)
        if self.extension is not None:
            profile, ext_data = self.extension
            if len(ext_data) % 4 or len(ext_data) > 4 * 0xFFFF or not 0 <= profile <= 0xFFFF:
                raise RtpError("header extension data must be 32-bit words, profile 16 bits")
            parts.append(_EXTENSION_HEADER.pack(profile, len(ext_data) // 4))
            parts.append(bytes(ext_data))
        parts.append(bytes(self.payload))
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


class RtpSender:
    """Builds outgoing RTP packets for one stream (one SSRC).

    ``sequence`` is the sequence number the next :meth:`build` will use; it advances by one per
    packet, modulo 2**16. Both it and ``ssrc`` start random unless given (RFC 3550 5.1).
    Timestamps are the caller's business: pass them to :meth:`build` (they are masked to 32 bits,
    so a plain growing int works).
    """

    __slots__ = ("_buffer", "octets_sent", "packets_sent", "sequence", "ssrc")

    def __init__(self, ssrc: int | None = None, sequence: int | None = None) -> None:
        self.ssrc: int = secrets.randbits(32) if ssrc is None else ssrc & TIMESTAMP_MASK
        self.sequence: int = secrets.randbits(16) if sequence is None else sequence % SEQUENCE_MOD
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets, as RTCP sender reports count them
        self._buffer = bytearray(HEADER_SIZE + FRAME_SAMPLES)  # one G.711 frame

    def build(
        self, payload: bytes | memoryview, payload_type: int, timestamp: int,
        marker: bool = False
    ) -> bytes:
        """One RTP packet (fixed 12-byte header, no CSRC/extension/padding) with the payload."""
        size = HEADER_SIZE + len(payload)
        buffer = self._buffer
        if len(buffer) != size:  # packet size changed (rare): resize once, reuse from then on
            buffer = self._buffer = bytearray(size)
        _HEADER.pack_into(
            buffer,
            0,
            RTP_VERSION << _VERSION_SHIFT,
            (payload_type & _PT_MASK) | (_MARKER_BIT if marker else 0),
            self.sequence,
            timestamp & TIMESTAMP_MASK,
            self.ssrc,
        )
        buffer[HEADER_SIZE:] = payload
        self.sequence = (self.sequence + 1) % SEQUENCE_MOD
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return bytes(buffer)
