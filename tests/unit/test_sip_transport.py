"""Transport choice rules: the Via rewrite and which retransmissions a reliable transport keeps."""

from __future__ import annotations

from callbox.server.sip.message import make_response, parse_message
from callbox.server.sip.transaction import Send, Timeout
from callbox.server.sip.transport import retransmissions_needed, set_top_via_transport


def invite(transport: str):
    return parse_message((
        f"INVITE sip:a@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch=z9hG4bKtop;rport, "
        f"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnext\r\n"
        f"From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: c@h\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:b@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
    ).encode())


def test_the_top_via_is_switched_and_the_others_kept():
    request = invite("UDP")
    set_top_via_transport(request, "TCP")
    vias = request.headers.get_all("Via")
    assert vias == ["SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKtop;rport",
                    "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnext"]
    assert request.branch == "z9hG4bKtop"


def test_over_tcp_only_2xx_retransmissions_and_timeouts_remain():
    request = invite("TCP")
    ok, busy = make_response(request, 200), make_response(request, 486)
    actions = [Send(request), Send(busy), Send(ok), Timeout("timer B")]
    assert retransmissions_needed(request, actions) == [Send(ok), Timeout("timer B")]


def test_over_udp_every_retransmission_remains():
    request = invite("UDP")
    actions = [Send(request), Send(make_response(request, 486)), Timeout("timer B")]
    assert retransmissions_needed(request, actions) == actions
