"""Property tests: the parsers reject bad input only with their own errors, and round-trip."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbox.server.sip.dialog import Dialog
from callbox.server.sip.headers import NameAddr, SipUri, Via
from callbox.server.sip.message import SipParseError, SipRequest, parse_message
from callbox.server.sip.sdp import SdpError, answer_offer, parse_sdp

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6002 RTP/AVP 0 8 96\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\na=ptime:20\r\na=sendonly\r\n"
    b"m=video 0 RTP/AVP 31\r\n"
)

VALID_MESSAGES = [
    b"INVITE sip:voicemail@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1234-1-0;rport\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:6000>;tag=1234SIPpTag001\r\n"
    b"To: <sip:voicemail@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:6000\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP,
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKa;received=2001:db8::2;rport=5062,"
    b" SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb\r\n"
    b'f: "A \\"quoted\\" name" <sip:a@example.com>;tag=x\r\n'
    b"t: <sip:b@example.com;transport=udp>;tag=y\r\n"
    b"i: abc@def\r\n"
    b"CSeq: 42 BYE\r\n"
    b"Record-Route: <sip:p1;lr>,\r\n <sip:p2;lr>\r\n"
    b"l: 0\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid message with a few random edits: replace, insert, delete, duplicate, truncate."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "duplicate", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            chunk = draw(
                st.one_of(
                    st.binary(max_size=8),
                    st.sampled_from(
                        [b"\r\n", b"\n", b":", b";", b",", b"<", b">", b'"', b" ", b"\t", b"\r\n "]
                    ),
                )
            )
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif op == "duplicate":
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def check_message(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert 400 <= exc.status < 600
        return
    # Whatever parses must serialize into something that parses to the same thing.
    again = parse_message(msg.serialize())
    assert again.serialize() == msg.serialize()
    # Accessors the endpoint relies on work on every accepted message.
    assert msg.call_id
    assert msg.cseq.seq >= 0
    assert msg.top_via.host
    for value in msg.headers.get_all("Via"):
        Via.parse(value)
    _ = (msg.from_tag, msg.to_tag, msg.branch)
    if isinstance(msg, SipRequest) and msg.method == "INVITE":
        dialog = Dialog.as_uas(msg, "local")
        dialog.create_request("BYE", via="SIP/2.0/UDP 192.0.2.1", contact=None)


def check_sdp(data: bytes | str) -> None:
    try:
        sdp = parse_sdp(data)
    except SdpError:
        return
    again = parse_sdp(sdp.serialize())
    assert again.serialize() == sdp.serialize()
    try:
        answer, _ = answer_offer(
            sdp, local_host="192.0.2.1", local_port=4000, session_id=1, session_version=1
        )
    except SdpError:
        return
    assert len(answer.media) == len(sdp.media)
    parse_sdp(answer.serialize())


@FUZZ
@given(st.binary(max_size=600))
def test_parse_message_arbitrary_bytes(data: bytes) -> None:
    check_message(data)


@FUZZ
@given(mutated(VALID_MESSAGES))
def test_parse_message_mutated(data: bytes) -> None:
    check_message(data)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "l", "X"]),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
        ),
        max_size=8,
    ),
    st.sampled_from(["INVITE sip:a@b SIP/2.0", "SIP/2.0 200 OK", "ACK sip:a@b SIP/2.0"]),
    st.binary(max_size=40),
)
def test_parse_message_random_headers(
    headers: list[tuple[str, str]], start: str, body: bytes
) -> None:
    head = "\r\n".join([start, *(f"{n}: {v}" for n, v in headers)]) + "\r\n\r\n"
    check_message(head.encode("utf-8") + body)


@FUZZ
@given(st.text(max_size=80))
def test_header_value_parsers_only_raise_sip_parse_error(text: str) -> None:
    for parser in (SipUri.parse, NameAddr.parse, Via.parse):
        try:
            value = parser(text)
        except SipParseError:
            continue
        assert parser(str(value)) == value


@FUZZ
@given(st.binary(max_size=400))
def test_parse_sdp_arbitrary_bytes(data: bytes) -> None:
    check_sdp(data)


@FUZZ
@given(st.text(max_size=300))
def test_parse_sdp_arbitrary_text(text: str) -> None:
    check_sdp(text)
    check_sdp("v=0\r\no=- 1 1 IN IP4 h\r\n" + text)


@FUZZ
@given(mutated([SDP]))
def test_parse_sdp_mutated(data: bytes) -> None:
    check_sdp(data)
