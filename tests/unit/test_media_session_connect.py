"""Connected RTP sockets: once a session latched its peer, its socket is connect()ed to it
(send/recv, the kernel drops other sources); a new address in a re-INVITE unlatches and
disconnects, a hold address does not. Real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest

from callbox.server.media.g711 import PCMU
from callbox.server.media.session import MediaSession
from callbox.server.media.udp import disconnect

FRAME = 160
Call = tuple[MediaSession, socket.socket, socket.socket]


def rtp(sequence: int, ssrc: int = 77, fill: int = 0x10) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, sequence, 5000 + sequence * FRAME, ssrc) + bytes(
        [fill]) * FRAME


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


def received(sock: socket.socket) -> bytes:
    return sock.recv(2048)


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    """A started session whose SDP names `peer`; `stranger` is another loopback socket."""
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours.bind(("127.0.0.1", 0))
    ours.setblocking(False)
    peer, stranger = udp(), udp()
    media = MediaSession(ours, "127.0.0.1")
    media.configure("127.0.0.1", peer.getsockname()[1], 0, None)
    media.start()
    yield media, peer, stranger
    media.close()
    for sock in (ours, peer, stranger):
        sock.close()


def test_before_the_latch_the_socket_is_not_connected(call: Call) -> None:
    media, peer, _ = call
    media.tick()
    with pytest.raises(OSError):
        media.sock.getpeername()
    assert received(peer)[0] == 0x80  # sent to the SDP address all the same


def test_the_latched_peer_is_connected_and_other_sources_are_dropped(call: Call) -> None:
    media, peer, stranger = call
    address = ("127.0.0.1", media.local_port)
    peer.sendto(rtp(1), address)
    media.tick()
    assert media.sock.getpeername() == peer.getsockname()
    assert received(peer)[0] == 0x80  # send() reaches the peer
    # A stranger's packets never reach the session: the kernel drops them.
    for k in range(2, 6):
        stranger.sendto(rtp(k, ssrc=99, fill=0x70), address)
    peer.sendto(rtp(2), address)
    for _ in range(60):  # past the drain and the any-source latch window
        media.tick()
    assert media.stats.packets_received == 2
    assert media.remote == peer.getsockname()
    assert media.sock.getpeername() == peer.getsockname()


def test_the_peer_s_audio_is_played_out_through_the_connected_socket(call: Call) -> None:
    media, peer, _ = call
    heard: list[np.ndarray] = []
    media.add_tap(lambda speak, listen: heard.append(speak.copy()))
    address = ("127.0.0.1", media.local_port)
    for k in range(20):
        peer.sendto(rtp(k), address)
        media.tick()
    for _ in range(5):
        media.tick()
    out = np.concatenate(heard)
    assert np.count_nonzero(out == PCMU.decode(b"\x10")[0]) == 20 * FRAME
    assert media.stats.packets_received == 20


def test_a_new_address_in_a_reinvite_disconnects_and_latches_the_new_peer(call: Call) -> None:
    media, peer, stranger = call
    address = ("127.0.0.1", media.local_port)
    peer.sendto(rtp(1), address)
    media.tick()
    assert media.sock.getpeername() == peer.getsockname()
    media.configure("127.0.0.1", stranger.getsockname()[1], 0, None)  # the media moved
    with pytest.raises(OSError):
        media.sock.getpeername()
    assert media.sock.getsockname() == address  # still the port our SDP names
    assert media.remote == stranger.getsockname()
    stranger.sendto(rtp(1, ssrc=99), address)
    media.tick()
    assert media.sock.getpeername() == stranger.getsockname()
    assert media.stats.packets_received == 2
    received(stranger)  # our frame went to the new peer


def test_the_same_address_or_a_hold_address_keeps_the_connection(call: Call) -> None:
    media, peer, _ = call
    peer.sendto(rtp(1), ("127.0.0.1", media.local_port))
    media.tick()
    media.configure("127.0.0.1", peer.getsockname()[1], 0, None, "sendrecv")  # a refresh
    media.configure("0.0.0.0", peer.getsockname()[1], 0, None, "recvonly")  # an old hold
    assert media.sock.getpeername() == peer.getsockname()
    assert media.remote == peer.getsockname()


def test_disconnect_keeps_an_ephemeral_port() -> None:
    """Linux lets an ephemeral port go when the association is dissolved: it is bound again."""
    sock, other, third = udp(), udp(), udp()
    bound = sock.getsockname()
    sock.connect(other.getsockname())
    disconnect(sock)
    assert sock.getsockname() == bound
    third.sendto(b"x", bound)
    assert sock.recvfrom(16) == (b"x", third.getsockname())
    for s in (sock, other, third):
        s.close()


def test_datagrams_queued_before_the_connect_are_still_checked(call: Call) -> None:
    """connect() filters only what arrives after it: a stranger's packets already waiting in
    the socket when the peer latched are read with their source checked, not as the peer's."""
    media, peer, stranger = call
    address = ("127.0.0.1", media.local_port)
    peer.sendto(rtp(1), address)
    for k in range(2, 6):
        stranger.sendto(rtp(k, ssrc=99, fill=0x70), address)
    media.tick()  # reads the peer's packet, latches and connects; the stranger's wait
    assert media.sock.getpeername() == peer.getsockname()
    for _ in range(3):
        media.tick()
    assert (media.stats.packets_received, media.stats.packets_foreign) == (1, 4)
    peer.sendto(rtp(2), address)
    media.tick()  # the queue was emptied: from now on, recv() and no check
    assert media.stats.packets_received == 2
