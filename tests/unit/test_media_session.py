"""Symmetric RTP latching of a media session (no network traffic: datagrams are fed in)."""

import socket
import struct

import pytest

from callbox.server.media.session import LATCH_ANY_SOURCE_AFTER_TICKS, MediaSession


def packet(sequence: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 1234) + b"\xff" * 160


@pytest.fixture
def session():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    media = MediaSession(sock, "127.0.0.1")
    media.configure("192.0.2.10", 4000, 0, 101, "recvonly")  # we never send: recvonly
    yield media
    sock.close()


def test_packets_from_the_sdp_host_latch_at_once(session):
    session.on_datagram(packet(1), ("192.0.2.10", 5555))
    assert session.remote == ("192.0.2.10", 5555)  # the port it really uses
    session.on_datagram(packet(2), ("198.51.100.7", 4000))
    assert session.stats.packets_foreign == 1
    assert session.stats.packets_received == 1


def test_another_source_latches_only_after_a_second_without_the_sdp_host(session):
    session.on_datagram(packet(1), ("198.51.100.7", 6000))  # e.g. behind NAT
    assert session.stats.packets_foreign == 1 and session.remote == ("192.0.2.10", 4000)
    for _ in range(LATCH_ANY_SOURCE_AFTER_TICKS):
        session.tick()
    session.on_datagram(packet(2), ("198.51.100.7", 6000))
    assert session.remote == ("198.51.100.7", 6000)
    assert session.stats.packets_received == 1


@pytest.mark.parametrize("host", ["localhost", "media.example", "::1"])
def test_only_a_numeric_address_of_the_sockets_family_is_accepted(session, host):
    """A host name would be looked up by every sendto in the media tick; an IPv6 address
    cannot be reached from an IPv4 socket."""
    with pytest.raises(ValueError, match="numeric IPv4 address"):
        session.configure(host, 4000, 0, 101)
    assert session.remote == ("192.0.2.10", 4000)
