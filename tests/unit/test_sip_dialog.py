"""RFC 3261 §12 dialogs: creation on both sides, in-dialog requests, routing and CSeq order."""

from __future__ import annotations

import pytest

from callbox.server.sip.dialog import Dialog, dialog_key_from_request, dialog_key_from_response
from callbox.server.sip.headers import SipParseError
from callbox.server.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    make_response,
    parse_message,
)

OUR_VIA = "SIP/2.0/UDP 192.0.2.10:5060;rport"
OUR_CONTACT = "<sip:callbox@192.0.2.10:5060>"

INCOMING_INVITE = (
    b"INVITE sip:voicemail@192.0.2.10:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-1234-1-0\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:6000>;tag=1234SIPpTag001\r\n"
    b"To: <sip:voicemail@192.0.2.10:5060>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:6000\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def incoming_invite() -> SipRequest:
    msg = parse_message(INCOMING_INVITE)
    assert isinstance(msg, SipRequest)
    return msg


def uas_dialog() -> Dialog:
    return Dialog.as_uas(incoming_invite(), "ourtag")


def our_invite() -> SipRequest:
    headers = Headers(
        [
            ("Via", f"{OUR_VIA};branch=z9hG4bKours"),
            ("Max-Forwards", "70"),
            ("From", '"callbox" <sip:callbox@192.0.2.10>;tag=ourtag'),
            ("To", "<sip:bob@198.51.100.7>"),
            ("Call-ID", "out-1@192.0.2.10"),
            ("CSeq", "10 INVITE"),
            ("Contact", OUR_CONTACT),
        ]
    )
    return SipRequest("INVITE", "sip:bob@198.51.100.7", headers)


def their_200(invite: SipRequest) -> SipResponse:
    response = make_response(invite, 200, to_tag="bobtag")
    response.headers.add("Contact", "<sip:bob@198.51.100.7:5062;transport=udp>")
    response.headers.add("Record-Route", "<sip:near.example.com;lr>, <sip:far.example.com;lr>")
    return response


def test_as_uas() -> None:
    dialog = uas_dialog()
    assert dialog.call_id == "1-1234@127.0.0.1"
    assert dialog.local_tag == "ourtag"
    assert dialog.remote_tag == "1234SIPpTag001"
    assert dialog.local_uri == "<sip:voicemail@192.0.2.10:5060>"
    assert dialog.remote_uri == '"sipp" <sip:sipp@127.0.0.1:6000>'
    assert dialog.remote_target == "sip:sipp@127.0.0.1:6000"
    assert dialog.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert dialog.remote_seq == 1
    assert dialog.local_seq == 0
    assert dialog.key == ("1-1234@127.0.0.1", "ourtag", "1234SIPpTag001")


def test_as_uas_requires_contact() -> None:
    invite = incoming_invite()
    invite.headers.remove("Contact")
    with pytest.raises(SipParseError, match="Contact"):
        Dialog.as_uas(invite, "t")


def test_uas_bye_loose_routing() -> None:
    dialog = uas_dialog()
    bye = dialog.create_request("BYE", via=OUR_VIA, contact=OUR_CONTACT)
    assert bye.method == "BYE"
    assert bye.uri == "sip:sipp@127.0.0.1:6000"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    via = bye.top_via
    assert str(via).startswith("SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK")
    assert via.wants_rport
    assert len(bye.headers.get_all("Via")) == 1
    assert bye.headers.get("Max-Forwards") == "70"
    assert bye.headers.get("From") == "<sip:voicemail@192.0.2.10:5060>;tag=ourtag"
    assert bye.headers.get("To") == '"sipp" <sip:sipp@127.0.0.1:6000>;tag=1234SIPpTag001'
    assert bye.call_id == "1-1234@127.0.0.1"
    assert str(bye.cseq) == "1 BYE"
    assert bye.headers.get("Contact") == OUR_CONTACT
    # It is a valid message as far as the parser (and so the peer) is concerned.
    assert parse_message(bye.serialize()).serialize() == bye.serialize()


def test_create_request_sequence_numbers_and_branches() -> None:
    dialog = uas_dialog()
    first = dialog.create_request("INFO", via=OUR_VIA, contact=None)
    second = dialog.create_request("INFO", via=OUR_VIA, contact=None)
    assert (first.cseq.seq, second.cseq.seq) == (1, 2)
    assert first.branch != second.branch
    assert "Contact" not in first.headers
    explicit = dialog.create_request("OPTIONS", via=OUR_VIA, contact=None, cseq=99)
    assert explicit.cseq.seq == 99
    assert dialog.local_seq == 2
    ack = dialog.create_request("ACK", via=OUR_VIA, contact=None)
    assert str(ack.cseq) == "2 ACK"
    assert dialog.local_seq == 2


def test_create_request_body_and_extra_headers() -> None:
    dialog = uas_dialog()
    req = dialog.create_request(
        "INVITE",
        via=OUR_VIA,
        contact="sip:callbox@192.0.2.10",
        body=b"v=0\r\n",
        content_type="application/sdp",
        extra_headers=[("User-Agent", "callbox"), ("Content-Type", "text/plain")],
    )
    assert req.headers.get("Contact") == "<sip:callbox@192.0.2.10>"
    assert req.headers.get("User-Agent") == "callbox"
    assert req.headers.get_all("Content-Type") == ["application/sdp"]
    assert req.body == b"v=0\r\n"
    assert b"Content-Length: 5\r\n" in req.serialize()


def test_strict_routing() -> None:
    dialog = uas_dialog()
    dialog.route_set = ["<sip:strict.example.com;maddr=10.1.1.1;method=INVITE?h=v>", "<sip:p2;lr>"]
    req = dialog.create_request("BYE", via=OUR_VIA, contact=OUR_CONTACT)
    assert req.uri == "sip:strict.example.com;maddr=10.1.1.1"
    assert req.headers.get_all("Route") == ["<sip:p2;lr>", "<sip:sipp@127.0.0.1:6000>"]


def test_no_route_set() -> None:
    dialog = uas_dialog()
    dialog.route_set = []
    req = dialog.create_request("BYE", via=OUR_VIA, contact=OUR_CONTACT)
    assert req.uri == dialog.remote_target
    assert "Route" not in req.headers


def test_as_uac() -> None:
    invite = our_invite()
    dialog = Dialog.as_uac(invite, their_200(invite))
    assert dialog.key == ("out-1@192.0.2.10", "ourtag", "bobtag")
    assert dialog.local_uri == '"callbox" <sip:callbox@192.0.2.10>'
    assert dialog.remote_uri == "<sip:bob@198.51.100.7>"
    assert dialog.remote_target == "sip:bob@198.51.100.7:5062;transport=udp"
    assert dialog.route_set == ["<sip:far.example.com;lr>", "<sip:near.example.com;lr>"]
    assert dialog.local_seq == 10
    assert dialog.remote_seq is None
    ack = dialog.create_request("ACK", via=OUR_VIA, contact=OUR_CONTACT, cseq=invite.cseq.seq)
    assert str(ack.cseq) == "10 ACK"
    assert ack.uri == "sip:bob@198.51.100.7:5062;transport=udp"
    assert ack.headers.get("To") == "<sip:bob@198.51.100.7>;tag=bobtag"
    assert ack.headers.get_all("Route") == [
        "<sip:far.example.com;lr>",
        "<sip:near.example.com;lr>",
    ]
    bye = dialog.create_request("BYE", via=OUR_VIA, contact=OUR_CONTACT)
    assert str(bye.cseq) == "11 BYE"


def test_as_uac_requires_from_tag() -> None:
    invite = our_invite()
    response = their_200(invite)
    invite.headers.set("From", "<sip:callbox@192.0.2.10>")
    with pytest.raises(SipParseError):
        Dialog.as_uac(invite, response)


def _remote_request(method: str, seq: int, contact: str | None = None) -> SipRequest:
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKr" + str(seq)),
            ("From", "<sip:sipp@127.0.0.1:6000>;tag=1234SIPpTag001"),
            ("To", "<sip:voicemail@192.0.2.10:5060>;tag=ourtag"),
            ("Call-ID", "1-1234@127.0.0.1"),
            ("CSeq", f"{seq} {method}"),
        ]
    )
    if contact is not None:
        headers.add("Contact", contact)
    return SipRequest(method, "sip:voicemail@192.0.2.10:5060", headers)


def test_accept_remote_request_ordering() -> None:
    dialog = uas_dialog()  # remote_seq = 1 from the INVITE
    assert dialog.accept_remote_request(_remote_request("ACK", 1))
    assert not dialog.accept_remote_request(_remote_request("INFO", 1))
    assert not dialog.accept_remote_request(_remote_request("INFO", 0))
    assert dialog.remote_seq == 1
    assert dialog.accept_remote_request(_remote_request("INFO", 5))
    assert dialog.remote_seq == 5
    assert not dialog.accept_remote_request(_remote_request("BYE", 4))
    assert dialog.accept_remote_request(_remote_request("BYE", 6))


def test_accept_remote_request_first_request_on_uac_dialog() -> None:
    invite = our_invite()
    dialog = Dialog.as_uac(invite, their_200(invite))
    assert dialog.accept_remote_request(_remote_request("BYE", 1))
    assert dialog.remote_seq == 1


def test_reinvite_refreshes_remote_target() -> None:
    dialog = uas_dialog()
    assert dialog.accept_remote_request(_remote_request("INFO", 2, contact="<sip:ignored@h>"))
    assert dialog.remote_target == "sip:sipp@127.0.0.1:6000"
    assert dialog.accept_remote_request(_remote_request("INVITE", 3, contact="<sip:sipp@10.9.9.9>"))
    assert dialog.remote_target == "sip:sipp@10.9.9.9"


def test_refresh_target_from_response() -> None:
    invite = our_invite()
    dialog = Dialog.as_uac(invite, their_200(invite))
    reinvite = dialog.create_request("INVITE", via=OUR_VIA, contact=OUR_CONTACT)
    ok = make_response(reinvite, 200)
    ok.headers.add("Contact", "<sip:bob@203.0.113.5>")
    dialog.refresh_target(ok)
    assert dialog.remote_target == "sip:bob@203.0.113.5"


def test_dialog_keys_from_messages() -> None:
    dialog = uas_dialog()
    incoming_bye = _remote_request("BYE", 2)
    assert dialog_key_from_request(incoming_bye, uas=True) == dialog.key
    our_bye = dialog.create_request("BYE", via=OUR_VIA, contact=None)
    assert dialog_key_from_request(our_bye, uas=False) == dialog.key
    assert dialog_key_from_response(make_response(our_bye, 200)) == dialog.key

    invite = our_invite()
    uac = Dialog.as_uac(invite, their_200(invite))
    assert dialog_key_from_response(their_200(invite)) == uac.key
