"""Framing SIP on a byte stream: Content-Length framing, keep-alives, bounds, any chunking."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.server.sip.message import MAX_HEADER_LINES, MAX_MESSAGE_BYTES, parse_message
from callbox.server.sip.stream import StreamFramer


def request(branch: str, body: bytes = b"", *, length: str | None = None) -> bytes:
    content_length = str(len(body)) if length is None else length
    return (
        f"OPTIONS sip:callbox@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK{branch}\r\n"
        f"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:callbox@127.0.0.1>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode() + body


STREAM = [
    request("a"),
    request("b", b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
    request("c", b"\r\n\r\nbody that starts with blank lines"),
]


def test_messages_are_cut_at_their_content_length():
    framer = StreamFramer()
    assert framer.feed(b"".join(STREAM)) == STREAM
    assert framer.buffered == 0
    assert [parse_message(m).branch for m in STREAM] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]


def test_an_incomplete_message_waits_for_the_rest_of_its_body():
    framer = StreamFramer()
    message = STREAM[1]
    assert framer.feed(message[:-3]) == []
    assert framer.buffered == len(message) - 3
    assert framer.feed(message[-3:]) == [message]


def test_crlf_keepalives_between_messages_are_skipped():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + STREAM[0] + b"\r\n\r\n\r\n" + STREAM[1]) == STREAM[:2]
    assert framer.feed(b"\r\n") == []
    assert framer.buffered == 0


def test_compact_content_length_frames_too():
    message = request("d", b"abc").replace(b"Content-Length: 3", b"l: 3")
    assert StreamFramer().feed(message + STREAM[0]) == [message, STREAM[0]]


def test_a_message_without_content_length_is_an_error_and_ends_the_stream():
    framer = StreamFramer()
    headless = request("e").replace(b"Content-Length: 0\r\n", b"")
    assert framer.feed(STREAM[0] + headless) == [STREAM[0]]  # the earlier message still counts
    assert framer.error is not None
    assert framer.error.status == 400
    assert "Content-Length is required" in framer.error.reason
    assert b"branch=z9hG4bKe" in framer.error.head
    assert framer.feed(STREAM[1]) == []  # nothing more is read from a broken stream


def test_a_bad_content_length_is_an_error():
    framer = StreamFramer()
    assert framer.feed(request("f", length="-5")) == []
    assert framer.error is not None and framer.error.status == 400


def test_conflicting_content_lengths_are_an_error():
    message = request("g").replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 9\r\n")
    framer = StreamFramer()
    framer.feed(message)
    assert framer.error is not None and "conflicting" in framer.error.reason


def test_a_body_bigger_than_the_bound_is_refused_before_it_arrives():
    framer = StreamFramer()
    head = request("h", length=str(MAX_MESSAGE_BYTES))
    assert framer.feed(head) == []
    assert framer.error is not None and framer.error.status == 513
    assert framer.buffered == 0


def test_an_endless_header_section_is_refused_at_the_bound():
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:x@y SIP/2.0\r\n")
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_MESSAGE_BYTES // len(line) + 1):
        framer.feed(line)
        if framer.error is not None:
            break
    assert framer.error is not None and framer.error.status == 513
    assert framer.buffered == 0


def test_too_many_header_lines_are_refused_like_on_udp():
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:x@y SIP/2.0\r\n" + b"X: y\r\n" * (MAX_HEADER_LINES + 1))
    assert framer.error is not None and framer.error.status == 513
    assert "header lines" in framer.error.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=sum(map(len, STREAM))), max_size=30),
       st.integers(min_value=0, max_value=3))
def test_any_split_of_the_stream_gives_the_same_messages(cuts, keepalives):
    data = b"\r\n" * keepalives + b"".join(STREAM)
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    framer = StreamFramer()
    out: list[bytes] = []
    for start, end in pairwise(bounds):
        out += framer.feed(data[start:end])
    assert out == STREAM
    assert framer.error is None and framer.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_arbitrary_bytes_never_raise_and_stay_bounded(data, cuts):
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    framer = StreamFramer()
    for start, end in pairwise(bounds):
        for message in framer.feed(data[start:end]):
            assert len(message) <= MAX_MESSAGE_BYTES
        assert framer.buffered <= MAX_MESSAGE_BYTES
