"""Outbound routing rules: which request-URI, From and trunk a destination gets."""

from __future__ import annotations

import pytest

from callbox.server.config import Trunk
from callbox.server.outbound import OutboundError, route_outbound

CARRIER = Trunk(name="carrier", proxy="sip.example.net:5070", username="acct",
                from_number="+15550100")
PBX = Trunk(name="pbx", proxy="10.0.0.5", transport="tcp", username="office")
TRUNKS = [CARRIER, PBX]


@pytest.mark.parametrize("number", ["+15550001", "15550001"])
def test_a_number_goes_through_the_first_trunk_with_its_from_number(number: str) -> None:
    route = route_outbound(number, TRUNKS)
    assert route.trunk is CARRIER
    assert route.uri == f"sip:{number}@sip.example.net:5070"
    assert route.from_uri == "sip:+15550100@sip.example.net:5070"
    assert route.from_user == "+15550100"


def test_the_named_tcp_trunk_without_from_number_uses_its_username() -> None:
    route = route_outbound("15550001", TRUNKS, trunk="pbx")
    assert route.trunk is PBX
    assert route.uri == "sip:15550001@10.0.0.5;transport=tcp"
    assert route.from_uri == "sip:office@10.0.0.5"


def test_a_caller_id_given_wins_over_the_trunk_from_number() -> None:
    route = route_outbound("15550001", TRUNKS, from_="+15559999")
    assert route.from_uri == "sip:+15559999@sip.example.net:5070"
    uri = route_outbound("15550001", TRUNKS, from_="sip:me@example.org").from_uri
    assert uri == "sip:me@example.org"


def test_a_sip_uri_goes_direct_without_a_trunk() -> None:
    route = route_outbound("sip:bob@192.0.2.7:5080", TRUNKS)
    assert (route.uri, route.trunk, route.from_uri, route.from_user) == (
        "sip:bob@192.0.2.7:5080", None, None, "callbox")
    assert route_outbound("sip:bob@192.0.2.7", [], from_="+1555").from_user == "+1555"


@pytest.mark.parametrize(("to", "trunks", "trunk", "from_", "message"), [
    ("15550001", [], None, None, "no trunk is configured"),
    ("15550001", TRUNKS, "nope", None, "no trunk named 'nope'"),
    ("sip:bob@example.org", TRUNKS, "pbx", None, "is a SIP URI"),
    ("bob", TRUNKS, None, None, "give a number"),
    ("+1 555", TRUNKS, None, None, "give a number"),
    ("15550001", TRUNKS, None, "a b>", "caller id"),
])
def test_what_cannot_be_dialled_says_why(to: str, trunks: list[Trunk], trunk: str | None,
                                         from_: str | None, message: str) -> None:
    with pytest.raises(OutboundError, match=message):
        route_outbound(to, trunks, trunk=trunk, from_=from_)
