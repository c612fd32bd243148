"""SIP message parsing/serializing and structured header values."""

from __future__ import annotations

import pytest

from callbox.server.sip.headers import CSeq, NameAddr, SipUri, Via
from callbox.server.sip.message import (
    MAX_HEADER_LINES,
    MAX_MESSAGE_BYTES,
    REASON_PHRASES,
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    is_keepalive,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    oversize_reason,
    parse_message,
    unsupported_version,
)

SIPP_SDP = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6002 RTP/AVP 0 96\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\n"
    b"a=fmtp:96 0-16\r\n"
    b"a=ptime:20\r\n"
)


def sipp_invite(body: bytes = SIPP_SDP, length: int | None = None) -> bytes:
    head = (
        "INVITE sip:voicemail@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1234-1-0\r\n"
        "From: sipp <sip:sipp@127.0.0.1:6000>;tag=1234SIPpTag001\r\n"
        "To: <sip:voicemail@127.0.0.1:5060>\r\n"
        "Call-ID: 1-1234@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: sip:sipp@127.0.0.1:6000\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "\r\n"
    )
    return head.encode() + body


BARESIP_SDP = (
    b"v=0\r\no=- 1402618387 2912862513 IN IP4 192.168.1.20\r\ns=-\r\n"
    b"c=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 10000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
)

BARESIP_INVITE = (
    b"INVITE sip:callbox@192.168.1.10 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.168.1.20:38412;branch=z9hG4bK3a1f0c2d;rport\r\n"
    b"Contact: <sip:alice-0x55d4@192.168.1.20:38412;transport=udp>\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: <sip:callbox@192.168.1.10>\r\n"
    b'f: "Alice Smith" <sip:alice@192.168.1.20>;tag=8c1b2f7e\r\n'
    b"i: 5fc3a9f1e2d84b0a\r\n"
    b"CSeq: 27391 INVITE\r\n"
    b"User-Agent: baresip v3.10.1 (x86_64/Linux)\r\n"
    b"Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER\r\n"
    b"k: replaces, 100rel\r\n"
    b"c: application/sdp\r\n"
    b"l: " + str(len(BARESIP_SDP)).encode() + b"\r\n"
    b"\r\n" + BARESIP_SDP
)

RESPONSE_180 = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;received=10.0.0.99;rport=5070\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdef\r\n"
    b"From: <sip:callbox@10.0.0.1>;tag=ours\r\n"
    b"To: <sip:bob@10.0.0.3>;tag=theirs\r\n"
    b"Call-ID: abc@10.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def minimal_request(extra: str = "", method: str = "OPTIONS", cseq: str | None = None) -> bytes:
    return (
        f"{method} sip:a@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n"
        "From: <sip:b@example.com>;tag=1\r\n"
        "To: <sip:a@example.com>\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"{extra}"
        "\r\n"
    ).encode()


# -- parsing real-world messages ---------------------------------------------------------------


def test_parse_sipp_invite() -> None:
    msg = parse_message(sipp_invite())
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:voicemail@127.0.0.1:5060"
    assert msg.body == SIPP_SDP
    assert msg.call_id == "1-1234@127.0.0.1"
    assert msg.cseq == CSeq(1, "INVITE")
    assert msg.from_tag == "1234SIPpTag001"
    assert msg.to_tag is None
    assert msg.branch == "z9hG4bK-1234-1-0"
    via = msg.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "127.0.0.1", 6000)
    contact = NameAddr.parse(msg.headers.get("Contact") or "")
    assert str(contact.uri) == "sip:sipp@127.0.0.1:6000"
    assert msg.headers.get("content-type") == "application/sdp"
    assert msg.from_addr.display == "sipp"
    assert msg.from_addr.uri.user == "sipp"


def test_parse_baresip_invite_with_compact_headers() -> None:
    msg = parse_message(BARESIP_INVITE)
    assert isinstance(msg, SipRequest)
    names = [name for name, _ in msg.headers.items()]
    assert names == [
        "Via", "Contact", "Max-Forwards", "To", "From", "Call-ID", "CSeq", "User-Agent",
        "Allow", "Supported", "Content-Type", "Content-Length",
    ]  # fmt: skip
    assert msg.call_id == "5fc3a9f1e2d84b0a"
    assert msg.from_addr.display == "Alice Smith"
    assert msg.from_tag == "8c1b2f7e"
    assert msg.top_via.wants_rport and msg.top_via.rport is None
    assert msg.headers.get_all("Supported") == ["replaces", "100rel"]
    assert msg.headers.get_all("Allow")[:3] == ["INVITE", "ACK", "BYE"]
    assert len(msg.headers.get_all("Allow")) == 11
    assert msg.headers.get("User-Agent") == "baresip v3.10.1 (x86_64/Linux)"
    assert msg.body == BARESIP_SDP
    assert msg.headers.get("l") == str(len(BARESIP_SDP))


def test_parse_response_with_received_and_rport() -> None:
    msg = parse_message(RESPONSE_180)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to_tag == "theirs"
    assert msg.top_via.received == "10.0.0.99"
    assert msg.top_via.rport == 5070
    assert msg.cseq.method == "INVITE"
    assert [Via.parse(v).host for v in msg.headers.get_all("Via")] == ["10.0.0.1", "10.0.0.2"]


def test_folded_headers_are_unfolded() -> None:
    data = minimal_request(
        "Subject: I know you're there,\r\n   pick up the phone\r\n\tand talk to me!\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"


def test_folded_via() -> None:
    data = (
        b"OPTIONS sip:a@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example.com\r\n ;branch=z9hG4bKfold\r\n"
        b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
        b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    assert parse_message(data).branch == "z9hG4bKfold"


def test_multiple_via_in_one_line_and_many_lines() -> None:
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP first.example.com:4000;branch=z9hG4bK1, "
        b"SIP/2.0/TCP second.example.com;branch=z9hG4bK2\r\n"
        b"v: SIP/2.0/UDP third.example.com:5080;branch=z9hG4bK3\r\n"
        b"Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK4,SIP/2.0/TLS fifth.example.com\r\n"
        b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\n"
        b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    vias = [Via.parse(v) for v in msg.headers.get_all("Via")]
    assert [v.host for v in vias] == [
        "first.example.com", "second.example.com", "third.example.com", "2001:db8::9",
        "fifth.example.com",
    ]  # fmt: skip
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP", "UDP", "TLS"]
    assert msg.top_via.branch == "z9hG4bK1"
    assert msg.headers.get("Via") == "SIP/2.0/UDP first.example.com:4000;branch=z9hG4bK1"
    assert vias[4].effective_port == 5061


def test_ipv6_via() -> None:
    via = Via.parse("SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKv6;received=2001:db8::2;rport")
    assert via.host == "2001:db8::1"
    assert via.port == 5062
    assert via.received == "2001:db8::2"
    assert via.wants_rport
    assert via.sent_by == "[2001:db8::1]:5062"
    assert str(via) == "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKv6;received=2001:db8::2;rport"


def test_lf_only_line_endings_and_leading_crlf() -> None:
    body = SIPP_SDP.replace(b"\r\n", b"\n")
    data = b"\r\n\r\n" + sipp_invite(body).replace(b"\r\n", b"\n")
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    assert msg.call_id == "1-1234@127.0.0.1"
    assert msg.body == body
    assert msg.headers.get("Content-Type") == "application/sdp"


@pytest.mark.parametrize("line", [
    b"Subject: a\rb\r\n",  # a bare CR inside a line of a CRLF head
    b"Subject: a\x00b\r\n",
    b"Subject: a\x1bb\r\n",
    b"Subject: a\x7fb\r\n",
])
def test_a_control_character_in_a_header_line_is_refused(line: bytes) -> None:
    with pytest.raises(SipParseError, match="control character"):
        parse_message(minimal_request(line.decode("latin-1")))


def test_a_head_mixing_crlf_and_lf_endings_is_read_line_by_line() -> None:
    data = minimal_request("Subject: mixed\nX-Extra: yes\r\n") + b"body"
    msg = parse_message(data)
    assert msg.headers.get("Subject") == "mixed"
    assert msg.headers.get("X-Extra") == "yes"
    assert msg.body == b"body"


def test_keepalive() -> None:
    assert is_keepalive(b"\r\n\r\n")
    assert is_keepalive(b"\r\n")
    assert not is_keepalive(b"")
    assert not is_keepalive(sipp_invite())
    with pytest.raises(SipParseError):
        parse_message(b"\r\n\r\n")


def test_content_length_smaller_than_body_truncates() -> None:
    msg = parse_message(sipp_invite(length=10))
    assert msg.body == SIPP_SDP[:10]


def test_no_content_length_takes_rest_of_datagram() -> None:
    data = minimal_request() + b"hello"
    assert parse_message(data).body == b"hello"


def test_header_name_whitespace_before_colon() -> None:
    msg = parse_message(minimal_request("Subject  : spaced\r\n"))
    assert msg.headers.get("subject") == "spaced"


def test_response_without_reason_phrase() -> None:
    data = RESPONSE_180.replace(b"180 Ringing", b"180")
    msg = parse_message(data)
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason) == (180, "")


# -- parse errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"garbage", "start line"),
        (b"\x00\x01\x02 binary\r\n\r\n", ""),
        (b"HELLO\r\n\r\n", "start line"),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", "start line"),
        (b"INVITE  SIP/2.0\r\n\r\n", "start line"),
        (b"INVITE nocolon SIP/2.0\r\n\r\n", "Request-URI"),
        (b"SIP/2.0 99 Too Low\r\n\r\n", "start line"),
        (b"SIP/2.0 700 Too High\r\n\r\n", "start line"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "start line"),
    ],
)
def test_bad_start_line(data: bytes, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400
    assert fragment in info.value.reason


def test_truncated_body() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(sipp_invite(length=len(SIPP_SDP) + 1))
    assert "truncated" in info.value.reason
    assert info.value.status == 400


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", "12345678901", "١٢"])
def test_bad_content_length(length: str) -> None:
    data = minimal_request(f"Content-Length: {length}\r\n")
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert "Content-Length" in info.value.reason


def test_conflicting_content_lengths() -> None:
    data = minimal_request("Content-Length: 0\r\nl: 3\r\n") + b"abc"
    with pytest.raises(SipParseError):
        parse_message(data)


@pytest.mark.parametrize("header", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(header: str) -> None:
    lines = [ln for ln in sipp_invite().split(b"\r\n") if not ln.startswith(header.encode() + b":")]
    with pytest.raises(SipParseError) as info:
        parse_message(b"\r\n".join(lines))
    assert info.value.reason == f"missing mandatory header {header}"
    assert info.value.status == 400


def test_missing_mandatory_header_in_response() -> None:
    data = RESPONSE_180.replace(b"Call-ID: abc@10.0.0.1\r\n", b"")
    with pytest.raises(SipParseError, match="Call-ID"):
        parse_message(data)


@pytest.mark.parametrize(
    "cseq",
    ["x INVITE", "1", "INVITE 1", "2147483648 OPTIONS", "1 INVITE", "-1 OPTIONS", "1 OPTIONS x"],
)
def test_bad_cseq(cseq: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(minimal_request(cseq=cseq))
    assert "CSeq" in info.value.reason


def test_cseq_limit() -> None:
    assert parse_message(minimal_request(cseq="2147483647 OPTIONS")).cseq.seq == 2**31 - 1


@pytest.mark.parametrize(
    "data",
    [
        minimal_request(" folded before anything\r\n").replace(b"Via", b" Via", 1),
        minimal_request("No colon here\r\n"),
        minimal_request("Bad Name: x\r\n"),
        minimal_request("X-Thing: a\x00b\r\n"),
        minimal_request("Call-ID: second\r\n"),
        minimal_request().replace(b"From: <sip:b@example.com>;tag=1", b"From: <sip:b@example.com"),
        minimal_request().replace(b"SIP/2.0/UDP h.example.com", b"SIP/2.0/UDP"),
        minimal_request().replace(b"Call-ID: c1", b"Call-ID: "),
        minimal_request("Contact: <sip:a@b\r\n"),
        minimal_request("Record-Route: <sip:p1;lr>, garbage\r\n"),
        minimal_request(method="INVITE"),
    ],
)
def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(data)


def test_register_star_contact_is_fine() -> None:
    msg = parse_message(minimal_request("Contact: *\r\nExpires: 0\r\n", method="REGISTER"))
    assert msg.headers.get("Contact") == "*"


def test_non_utf8_header_reason() -> None:
    data = minimal_request("Subject: \xff\r\n".encode("latin-1").decode("latin-1"))
    data = data.replace("Subject: ÿ".encode(), b"Subject: \xff")
    with pytest.raises(SipParseError, match="UTF-8"):
        parse_message(data)


def test_utf8_header_values_are_fine() -> None:
    msg = parse_message(minimal_request("Subject: café ☎\r\n"))
    assert msg.headers.get("Subject") == "café ☎"


# -- serializing ---------------------------------------------------------------------------------


def test_round_trip() -> None:
    for data in (sipp_invite(), BARESIP_INVITE, RESPONSE_180):
        msg = parse_message(data)
        again = parse_message(msg.serialize())
        assert again == msg
        assert again.serialize() == msg.serialize()


def test_sipp_invite_serializes_identically() -> None:
    assert parse_message(sipp_invite()).serialize() == sipp_invite()


def test_serialize_writes_correct_content_length() -> None:
    msg = parse_message(sipp_invite())
    msg.body = b"short"
    msg.headers.add("Content-Length", "999")
    data = msg.serialize()
    assert data.count(b"Content-Length") == 1
    assert b"\r\nContent-Length: 5\r\n\r\nshort" in data
    assert data.startswith(b"INVITE sip:voicemail@127.0.0.1:5060 SIP/2.0\r\n")


def test_serialize_built_message() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq"), ("f", "<sip:a@b>;tag=1")])
    headers.add("t", "<sip:c@d>")
    headers.add("i", "x@y")
    headers.add("CSeq", "3 BYE")
    req = SipRequest("BYE", "sip:c@d", headers)
    assert req.serialize() == (
        b"BYE sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x@y\r\nCSeq: 3 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


# -- Headers -------------------------------------------------------------------------------------


def test_headers_multimap() -> None:
    h = Headers()
    h.add("Via", "a")
    h.add("X-Custom", "1")
    h.add("v", "b")
    h.add("x-custom", "2")
    assert h.get("VIA") == "a"
    assert h.get_all("via") == ["a", "b"]
    assert h.get_all("X-CUSTOM") == ["1", "2"]
    assert h.get("Missing") is None
    assert h.get("Missing", "dflt") == "dflt"
    assert "x-custom" in h and "Nope" not in h and 3 not in h
    h.set("X-Custom", "3")
    assert h.items() == [("Via", "a"), ("X-Custom", "3"), ("Via", "b")]
    h.set("New", "n")
    assert h.items()[-1] == ("New", "n")
    copy = h.copy()
    h.remove("via")
    assert h.items() == [("X-Custom", "3"), ("New", "n")]
    assert len(copy) == 4
    assert copy != h
    assert copy.copy() == copy


def test_get_all_splits_list_headers_respecting_quotes_and_brackets() -> None:
    h = Headers()
    h.add("Contact", '"Doe, John" <sip:j@h;x=1,2>;q=0.5, <sip:k@h>')
    h.add("m", "sip:l@h")
    h.add("Subject", "not, a, list")
    h.add("Record-Route", "<sip:p1;lr>,<sip:p2;lr>")
    h.add("Route", "<sip:r1;lr>")
    assert h.get_all("Contact") == ['"Doe, John" <sip:j@h;x=1,2>;q=0.5', "<sip:k@h>", "sip:l@h"]
    assert h.get_all("Subject") == ["not, a, list"]
    assert h.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert h.get("Contact") == '"Doe, John" <sip:j@h;x=1,2>;q=0.5'
    assert NameAddr.parse(h.get_all("Contact")[0]).params == {"q": "0.5"}


def test_get_of_a_list_header_is_the_first_element_whatever_the_first_line_holds() -> None:
    h = Headers([("Via", " SIP/2.0/UDP a;branch=z9hG4bK1 "), ("Via", "SIP/2.0/UDP b")])
    assert h.get("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    h = Headers([("Route", "<sip:p1;lr>, <sip:p2;lr>"), ("Route", "<sip:p3;lr>")])
    assert h.get("Route") == "<sip:p1;lr>"
    h = Headers([("Route", " , "), ("Route", "<sip:p3;lr>")])  # an empty first line is skipped
    assert h.get("Route") == "<sip:p3;lr>"
    assert Headers([("Route", " , ")]).get("Route", "none") == "none"


def test_parsed_header_values_follow_changes_to_the_headers() -> None:
    """The accessors parse a header once per text: a changed line is parsed anew."""
    msg = parse_message(sipp_invite())
    assert msg.to_tag is None and msg.top_via.transport == "UDP"
    assert msg.top_via is msg.top_via  # parsed once
    msg.headers.set("To", "sut <sip:service@127.0.0.1:5060>;tag=abc")
    msg.headers.set("CSeq", "7 INVITE")
    assert msg.to_tag == "abc" and msg.cseq == CSeq(7, "INVITE")
    via = Via.parse(str(msg.top_via))
    via.transport = "TCP"
    msg.replace_top_via(via)
    assert msg.top_via is via and msg.headers.get("Via") == str(via)
    response = make_response(msg, 200, to_tag="xyz")
    assert response.to_tag == "abc"  # the request's tag is kept
    assert response.top_via.transport == "TCP" and response.cseq.seq == 7


def test_compact_forms_normalised() -> None:
    compact = ["v", "f", "t", "i", "m", "l", "c", "k", "s", "e", "o", "u", "r", "b"]
    full = [
        "Via", "From", "To", "Call-ID", "Contact", "Content-Length", "Content-Type",
        "Supported", "Subject", "Content-Encoding", "Event", "Allow-Events", "Refer-To",
        "Referred-By",
    ]  # fmt: skip
    h = Headers((c.upper(), "x") for c in compact)
    assert [name for name, _ in h.items()] == full
    assert Headers([("call-id", "1"), ("cseq", "2")]).items() == [("Call-ID", "1"), ("CSeq", "2")]


# -- make_response / make_cancel -----------------------------------------------------------------


def _invite_with_routes() -> SipRequest:
    data = sipp_invite().replace(
        b"Max-Forwards: 70\r\n",
        b"Max-Forwards: 70\r\nRecord-Route: <sip:p1.example.com;lr>\r\n"
        b"Record-Route: <sip:p2.example.com;lr>\r\n"
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\r\n",
    )
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def test_make_response_copies_headers() -> None:
    request = _invite_with_routes()
    response = make_response(request, 200, to_tag="abc", headers=[("Contact", "<sip:cb@h>")])
    assert response.reason == "OK"
    assert response.headers.get_all("Via") == [
        "SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1234-1-0",
        "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp",
    ]
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("To") == "<sip:voicemail@127.0.0.1:5060>;tag=abc"
    assert response.to_tag == "abc"
    assert response.call_id == request.call_id
    assert response.cseq == request.cseq
    assert response.headers.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    assert response.headers.get("Contact") == "<sip:cb@h>"
    assert parse_message(response.serialize()).serialize() == response.serialize()


def test_make_response_keeps_existing_to_tag() -> None:
    data = minimal_request().replace(b"To: <sip:a@example.com>", b"To: <sip:a@example.com>;tag=x")
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    response = make_response(request, 200, to_tag="other")
    assert response.to_tag == "x"


@pytest.mark.parametrize(
    ("status", "copied"), [(100, False), (180, True), (200, True), (486, False)]
)
def test_make_response_record_route_rules(status: int, copied: bool) -> None:
    response = make_response(_invite_with_routes(), status, to_tag="t")
    assert ("Record-Route" in response.headers) is copied
    assert response.reason == REASON_PHRASES[status]


def test_make_response_no_record_route_for_options() -> None:
    request = parse_message(minimal_request("Record-Route: <sip:p;lr>\r\n"))
    assert isinstance(request, SipRequest)
    assert "Record-Route" not in make_response(request, 200).headers


def test_make_response_body_and_reason() -> None:
    request = parse_message(minimal_request())
    assert isinstance(request, SipRequest)
    response = make_response(request, 488, "Nope", body=b"v=0\r\n", content_type="application/sdp")
    assert response.reason == "Nope"
    assert response.body == b"v=0\r\n"
    assert response.headers.get("Content-Type") == "application/sdp"
    assert b"Content-Length: 5\r\n" in response.serialize()
    assert make_response(request, 599).reason == "Unknown"


def test_make_cancel() -> None:
    invite = _invite_with_routes()
    invite.headers.add("Route", "<sip:outbound.example.com;lr>")
    cancel = make_cancel(invite)
    assert cancel.method == "CANCEL"
    assert cancel.uri == invite.uri
    assert cancel.headers.get_all("Via") == [invite.headers.get("Via")]
    assert cancel.cseq == CSeq(1, "CANCEL")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get_all("Route") == ["<sip:outbound.example.com;lr>"]
    assert parse_message(cancel.serialize()).serialize() == cancel.serialize()


def test_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(b.startswith("z9hG4bK") and len(b) >= 7 + 16 for b in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    call_id = new_call_id("10.0.0.1")
    assert call_id.endswith("@10.0.0.1") and len(call_id) > 20


# -- structured header values --------------------------------------------------------------------


def test_sip_uri_full() -> None:
    uri = SipUri.parse("sips:alice:secret@Example.COM:5061;transport=tcp;lr?subject=hi&x=y")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "secret", "Example.COM", 5061)
    assert uri.params == {"transport": "tcp", "lr": None}
    assert uri.headers == {"subject": "hi", "x": "y"}
    assert str(uri) == "sips:alice:secret@Example.COM:5061;transport=tcp;lr?subject=hi&x=y"


@pytest.mark.parametrize(
    "text",
    [
        "sip:example.com",
        "sip:+15551234567;npdi@gw.example.com;user=phone",
        "sip:bob@[2001:db8::1]:5070;transport=udp",
        "sip:bob@[::1]",
        "sip:%61lice@10.0.0.1",
        "tel:+1-555-0100;phone-context=example.com",
    ],
)
def test_sip_uri_round_trip(text: str) -> None:
    assert str(SipUri.parse(text)) == text


def test_sip_uri_ipv6() -> None:
    uri = SipUri.parse("sip:bob@[2001:db8::1]:5070")
    assert uri.host == "2001:db8::1"
    assert uri.port == 5070
    assert uri.host_port == "[2001:db8::1]:5070"
    assert SipUri.parse("sip:+1555;npdi@gw").user == "+1555;npdi"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com",
        "http://example.com",
        "sip:",
        "sip:@host",
        "sip:bob@host:70000",
        "sip:bob@host:abc",
        "sip:bob@2001:db8::1",
        "sip:bob@[not-ipv6]",
        "sip:bob@[::1",
        "sip:bob@ho st",
        "sip:bob@host?novalue",
        "sip:bob@host;=x",
    ],
)
def test_sip_uri_errors(text: str) -> None:
    with pytest.raises(SipParseError):
        SipUri.parse(text)


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ('"Bob" <sip:b@h>;tag=x', "Bob", "sip:b@h", {"tag": "x"}),
        ('"Say \\"hi\\"" <sip:b@h>', 'Say "hi"', "sip:b@h", {}),
        ("Bob Smith <sip:b@h;lr>;expires=60", "Bob Smith", "sip:b@h;lr", {"expires": "60"}),
        ("<sip:b@h;transport=udp>", None, "sip:b@h;transport=udp", {}),
        ("sip:b@h;tag=x", None, "sip:b@h", {"tag": "x"}),
        ("  sip:b@h:5080  ", None, "sip:b@h:5080", {}),
        (
            '<sip:b@h>;+sip.instance="<urn:uuid:1>"',
            None,
            "sip:b@h",
            {"+sip.instance": '"<urn:uuid:1>"'},
        ),
    ],
)
def test_name_addr(text: str, display: str | None, uri: str, params: dict[str, str]) -> None:
    addr = NameAddr.parse(text)
    assert addr.display == display
    assert str(addr.uri) == uri
    assert addr.params == params
    assert NameAddr.parse(str(addr)) == addr


def test_name_addr_tag_and_str() -> None:
    addr = NameAddr.parse('"A \\"B\\"" <sip:a@h>;tag=1;foo')
    assert addr.tag == "1"
    assert str(addr) == '"A \\"B\\"" <sip:a@h>;tag=1;foo'
    assert str(addr.without_tag()) == '"A \\"B\\"" <sip:a@h>;foo'
    assert str(NameAddr.parse("sip:a@h;tag=z")) == "<sip:a@h>;tag=z"


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@h>',
        "<sip:a@h",
        '"Bob" sip:a@h',
        "<sip:a@h> junk",
        'Bo"b <sip:a@h>',
    ],
)
def test_name_addr_errors(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


def test_via_parse_and_properties() -> None:
    via = Via.parse("SIP / 2.0 / udp  host.example.com : 5070 ; Branch=z9hG4bKa ; rport=1234")
    assert via.transport == "UDP"
    assert (via.host, via.port) == ("host.example.com", 5070)
    assert via.branch == "z9hG4bKa"
    assert via.rport == 1234
    assert via.received is None
    assert str(via) == "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bKa;rport=1234"
    assert Via.parse("SIP/2.0/UDP h").effective_port == 5060


@pytest.mark.parametrize(
    "text",
    ["", "SIP/2.0/UDP", "SIP/1.0/UDP h", "SIP/2.0 h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;=x"],
)
def test_via_errors(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_cseq() -> None:
    assert CSeq.parse(" 42   BYE ") == CSeq(42, "BYE")
    assert str(CSeq(42, "BYE")) == "42 BYE"
    with pytest.raises(SipParseError):
        CSeq.parse(str(2**31) + " BYE")


OPTIONS_HEAD = (b"OPTIONS sip:a@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                b"From: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n")


def test_oversize_reason_bounds_bytes_and_header_lines_before_parsing() -> None:
    ok = OPTIONS_HEAD + b"Content-Length: 0\r\n\r\n"
    assert oversize_reason(ok) is None
    padded = OPTIONS_HEAD + b"X-Pad: " + b"p" * MAX_MESSAGE_BYTES + b"\r\n\r\n"
    assert "bytes exceeds" in (oversize_reason(padded) or "")
    many = OPTIONS_HEAD + b"X-A: 1\r\n" * MAX_HEADER_LINES + b"\r\n"
    assert "header lines exceed" in (oversize_reason(many) or "")
    # body lines do not count as header lines
    body = b"a=x\r\n" * (MAX_HEADER_LINES + 10)
    with_body = OPTIONS_HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    assert oversize_reason(with_body) is None
    parse_message(with_body)


@pytest.mark.parametrize(("line", "version"), [
    (b"OPTIONS sip:a@h SIP/7.0", "SIP/7.0"),
    (b"INVITE sip:a@h SIP/2.1", "SIP/2.1"),
    (b"OPTIONS sip:a@h SIP/2.0", None),
    (b"OPTIONS sip:a@h sip/2.0", None),
    (b"SIP/3.0 200 OK", None),  # a response: nothing to answer
    (b"OPTIONS sip:a@h HTTP/1.1", None),
])
def test_unsupported_version(line: bytes, version: str | None) -> None:
    assert unsupported_version(line + b"\r\nVia: x\r\n\r\n") == version
