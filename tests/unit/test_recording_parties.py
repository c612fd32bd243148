"""Who a recording's channels hold (`recording.parties`): the labels of each leg, bridged or
not, and the note kept while the call's peer changes."""

from __future__ import annotations

from dataclasses import dataclass

from callbox.server.recording.parties import Parties, noted, parties_of


@dataclass
class Leg:
    """A call as the labels see it (the platform's `Call` has these fields too)."""

    id: str
    direction: str
    from_user: str
    to_user: str
    peer: Leg | None = None


def bridged(a: Leg, b: Leg) -> None:
    a.peer, b.peer = b, a


def test_an_unbridged_inbound_leg_holds_the_caller_and_what_the_platform_plays() -> None:
    caller = Leg("call-a", "inbound", "alice", "support")
    assert parties_of(caller) == Parties("the caller (alice)", "what the platform plays", None)


def test_each_leg_of_a_bridge_holds_its_party_left_and_the_other_right() -> None:
    caller = Leg("call-a", "inbound", "alice", "support")
    callee = Leg("call-b", "outbound", "support", "bob")
    bridged(caller, callee)
    assert parties_of(caller) == Parties("the caller (alice)", "the callee (bob)", "call-b")
    assert parties_of(callee) == Parties("the called party (bob)", "the caller (alice)",
                                         "call-a")


def test_a_bridged_note_outlives_the_bridge_and_a_new_bridge_replaces_it() -> None:
    caller = Leg("call-a", "inbound", "alice", "support")
    first = noted(None, parties_of(caller))  # the recording starts before the bridge
    assert first.peer_call_id is None
    callee = Leg("call-b", "outbound", "support", "bob")
    bridged(caller, callee)
    during = noted(first, parties_of(caller))
    assert during == Parties("the caller (alice)", "the callee (bob)", "call-b")
    caller.peer = None  # the callee hung up; the caller's recording goes on
    assert noted(during, parties_of(caller)) == during
    other = Leg("call-c", "outbound", "support", "carol")
    bridged(caller, other)  # connected to someone else later: the latest bridge wins
    assert noted(during, parties_of(caller)) == Parties("the caller (alice)",
                                                        "the callee (carol)", "call-c")


def test_stored_parties_parse_back_and_unreadable_ones_are_none() -> None:
    parties = Parties("the caller (alice)", "the callee (bob)", "call-b")
    assert Parties.parse(parties.as_json()) == parties
    assert Parties.parse(Parties("the caller (alice)", "what the platform plays").as_json()) \
        == Parties("the caller (alice)", "what the platform plays", None)
    for bad in (None, [], "x", {"speaker": "a"}, {"speaker": 1, "hearer": "b"},
                {"speaker": "a", "hearer": "b", "peer_call_id": 7}):
        assert Parties.parse(bad) is None
