"""ReceiveBuffer.push_g711 (the receive hot path) against push(decode(payload)): same audio, same
counters, for any arrival pattern (reordering, loss, late packets, wrap of the ring and of the
RTP timestamp, SSRC changes, odd packet sizes)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.server.media.g711 import PCMA, PCMU
from callbox.server.media.jitter import ReceiveBuffer

HEADER = 12

event = st.one_of(
    st.just(("pop",)),
    st.tuples(
        st.just("packet"),
        st.sampled_from([0x1111, 0x1111, 0x1111, 0x2222]),  # mostly one SSRC
        st.integers(-40, 140),  # timestamp step in 20 ms frames from the stream position
        st.sampled_from([80, 160, 160, 160, 240, 1]),  # payload bytes
        st.integers(0, 255),  # first code byte
    ),
)


def _run(events, codec, start_ts: int) -> None:
    plain, fast = ReceiveBuffer(), ReceiveBuffer()
    position = start_ts
    for item in events:
        if item[0] == "pop":
            np.testing.assert_array_equal(plain.pop_frame(), fast.pop_frame())
            position += 160
            continue
        _, ssrc, step, size, first = item
        timestamp = (position + step * 160) & 0xFFFFFFFF
        payload = bytes((first + i) % 256 for i in range(size))
        datagram = bytes(HEADER) + payload
        plain.push(ssrc, timestamp, codec.decode(payload))
        fast.push_g711(ssrc, timestamp, datagram, HEADER, len(datagram), codec.decode_table)
        assert (plain.packets, plain.late, plain.resyncs) == (fast.packets, fast.late,
                                                              fast.resyncs)
    for _ in range(110):  # play out everything still in the ring
        np.testing.assert_array_equal(plain.pop_frame(), fast.pop_frame())


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=120), st.sampled_from([0, 2**32 - 800, 123456]),
       st.sampled_from([PCMU, PCMA]))
def test_push_g711_matches_push_of_decoded_audio(events, start_ts, codec) -> None:
    _run(events, codec, start_ts)


def test_fresh_flag_marks_on_time_packets() -> None:
    buf = ReceiveBuffer(delay_frames=3)
    datagram = bytes(HEADER) + bytes(160)
    table = PCMU.decode_table
    assert buf.push_g711(1, 1000, datagram, HEADER, len(datagram), table)  # anchors: on time
    buf.pop_frame()
    assert buf.push_g711(1, 1160, datagram, HEADER, len(datagram), table)  # one per pop
    buf.pop_frame()
    buf.pop_frame()
    # a packet one frame behind schedule (it sat in the socket for a tick): not fresh
    assert not buf.push_g711(1, 1320, datagram, HEADER, len(datagram), table)
