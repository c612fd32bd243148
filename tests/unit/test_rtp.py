from __future__ import annotations

import struct

import pytest

from callbox.server.media.rtp import (
    RtpError,
    RtpPacket,
    RtpSender,
    is_rtcp,
    parse_header,
    parse_header_span,
    payload_end,
)

# A PCMU packet as seen on the wire: V=2, M=1, PT=0, seq=0x1234, ts=0xdeadbeef, ssrc=0x01020304.
WIRE = bytes.fromhex("80801234deadbeef01020304") + b"\xff" * 160


def test_parse_known_packet() -> None:
    packet = RtpPacket.parse(WIRE)
    assert packet == RtpPacket(
        payload_type=0,
        sequence=0x1234,
        timestamp=0xDEADBEEF,
        ssrc=0x01020304,
        payload=b"\xff" * 160,
        marker=True,
    )
    assert packet.serialize() == WIRE


def test_parse_header_fast_path() -> None:
    assert parse_header(WIRE) == (0, True, 0x1234, 0xDEADBEEF, 0x01020304, 12)
    assert parse_header_span(WIRE) == (0, True, 0x1234, 0xDEADBEEF, 0x01020304, 12, len(WIRE))
    assert payload_end(WIRE) == len(WIRE)


def test_roundtrip_with_csrc_extension_padding() -> None:
    packet = RtpPacket(
        payload_type=101,
        sequence=65535,
        timestamp=2**32 - 1,
        ssrc=7,
        payload=b"\x01\x02\x03",
        marker=False,
        csrc=(1, 2, 0xFFFFFFFF),
        extension=(0xBEDE, b"\x10\xaa\x00\x00"),
        padding=5,
    )
    data = packet.serialize()
    assert len(data) == 12 + 3 * 4 + 4 + 4 + 3 + 5
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-1] == 5
    assert RtpPacket.parse(data) == packet
    pt, marker, seq, ts, ssrc, offset, end = parse_header_span(data)
    assert (pt, marker, seq, ts, ssrc) == (101, False, 65535, 2**32 - 1, 7)
    assert data[offset:end] == b"\x01\x02\x03"
    assert parse_header(data)[5] == offset
    assert payload_end(data) == end


def test_empty_payload_is_valid() -> None:
    data = RtpPacket(payload_type=13, sequence=1, timestamp=2, ssrc=3, payload=b"").serialize()
    assert len(data) == 12
    assert RtpPacket.parse(data).payload == b""
    assert parse_header(data)[5] == 12


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (WIRE[:11], "too short"),
        (bytes([0x40]) + WIRE[1:], "version"),
        (bytes([0x00]) + WIRE[1:], "version"),
        (bytes([0xC0]) + WIRE[1:], "version"),
        (bytes([0x81]) + WIRE[1:12], "CSRC"),  # claims one CSRC, has none
        (bytes([0x8F]) + WIRE[1:12] + b"\x00" * 56, "CSRC"),  # 15 CSRCs need 60 bytes
        (bytes([0x90]) + WIRE[1:12] + b"\xbe\xde", "extension"),  # truncated extension header
        (bytes([0x90]) + WIRE[1:12] + b"\xbe\xde\x00\x02" + b"\x00" * 7, "extension"),
        (bytes([0xA0]) + WIRE[1:12], "padding"),  # P set but nothing to pad
        (bytes([0xA0]) + WIRE[1:-1] + b"\x00", "padding"),  # count 0
        (bytes([0xA0]) + WIRE[1:-1] + bytes([161]), "padding"),  # larger than the payload
    ],
)
def test_malformed_packets_raise(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        RtpPacket.parse(data)
    with pytest.raises(RtpError, match=reason):
        parse_header(data)
    with pytest.raises(RtpError, match=reason):
        parse_header_span(data)


def test_rtp_error_is_value_error() -> None:
    assert issubclass(RtpError, ValueError)


def test_padding_may_fill_the_whole_payload() -> None:
    data = bytes([0xA0]) + WIRE[1:12] + b"\x00\x00\x03"
    assert RtpPacket.parse(data).payload == b""
    assert RtpPacket.parse(data).padding == 3


@pytest.mark.parametrize(
    "field",
    [
        {"payload_type": 128},
        {"sequence": 65536},
        {"timestamp": 2**32},
        {"ssrc": -1},
        {"csrc": tuple(range(16))},
        {"padding": 256},
        {"extension": (1, b"abc")},
    ],
)
def test_serialize_rejects_out_of_range(field: dict[str, object]) -> None:
    base: dict[str, object] = {
        "payload_type": 0,
        "sequence": 0,
        "timestamp": 0,
        "ssrc": 0,
        "payload": b"",
    }
    base.update(field)
    with pytest.raises(RtpError):
        RtpPacket(**base).serialize()  # type: ignore[arg-type]


def test_sender_builds_and_increments() -> None:
    sender = RtpSender(ssrc=0xCAFEBABE, sequence=65534)
    first = sender.build(b"\x01" * 160, 0, 1000, marker=True)
    second = sender.build(b"\x02" * 160, 0, 1160)
    third = sender.build(b"\x03" * 160, 8, 1320)
    assert parse_header(first) == (0, True, 65534, 1000, 0xCAFEBABE, 12)
    assert parse_header(second) == (0, False, 65535, 1160, 0xCAFEBABE, 12)
    assert parse_header(third) == (8, False, 0, 1320, 0xCAFEBABE, 12)
    assert first[12:] == b"\x01" * 160 and third[12:] == b"\x03" * 160
    assert sender.sequence == 1
    assert sender.packets_sent == 3 and sender.octets_sent == 480
    assert isinstance(first, bytes)


def test_sender_handles_size_changes_and_timestamp_wrap() -> None:
    sender = RtpSender(ssrc=1, sequence=0)
    a = sender.build(b"\x00" * 4, 101, 2**32 + 5)
    b = sender.build(b"\x00" * 160, 0, 7)
    c = sender.build(b"", 0, 8)
    assert RtpPacket.parse(a).timestamp == 5
    assert RtpPacket.parse(a).payload == b"\x00" * 4
    assert RtpPacket.parse(b).payload == b"\x00" * 160
    assert RtpPacket.parse(c).payload == b""
    assert a != b  # each call returns its own bytes, not the reused buffer


def test_sender_random_defaults() -> None:
    senders = [RtpSender() for _ in range(8)]
    assert all(0 <= s.ssrc < 2**32 and 0 <= s.sequence < 2**16 for s in senders)
    assert len({s.ssrc for s in senders}) > 1


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 205, 206, 207])
def test_is_rtcp(packet_type: int) -> None:
    report = struct.pack("!BBHI", 0x80, packet_type, 1, 0x1234)
    assert is_rtcp(report)


def test_is_not_rtcp() -> None:
    assert not is_rtcp(WIRE)
    assert not is_rtcp(RtpSender().build(b"x", 101, 0, marker=True))
    assert not is_rtcp(RtpSender().build(b"x", 8, 0, marker=True))
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"")
    assert not is_rtcp(bytes([0x00, 200]))  # not version 2
