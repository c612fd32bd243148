"""Who a recording's channels hold, derived from the live call it records.

Every leg keeps the recording's rule: left (`speak`) = the recorded leg's party, right
(`listen`) = what that party hears; on the inbound leg of a bridged call, the caller and the
callee. The labels depend on the call's peer, which changes while the call lives (a bridge can
start after the recording did, and end before it does): the call tells its recordings who they
hold when one is attached and at each change of its peer; each recording keeps the best note
(`noted`: a bridged one over an unbridged one) and the engine stores it with the recording's
end; the console shows it.
"""

from __future__ import annotations

from typing import Protocol

from callbox.server.store.recordings import Parties

__all__ = ["Parties", "PartyCall", "noted", "parties_of"]

UNBRIDGED_HEARER = "what the platform plays"


class PartyCall(Protocol):
    """What the labels need of a call (the platform's `Call` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def direction(self) -> str:
        """`inbound` (the platform answered it) or `outbound` (the platform dialled it)."""

    @property
    def from_user(self) -> str: ...

    @property
    def to_user(self) -> str: ...

    @property
    def peer(self) -> PartyCall | None:
        """The call this one is bridged to now."""


def parties_of(call: PartyCall) -> Parties:
    """Who `call`'s recording holds now: its own party left, what that party hears right."""
    speaker = (f"the caller ({call.from_user})" if call.direction == "inbound"
               else f"the called party ({call.to_user})")
    peer = call.peer
    if peer is None:
        return Parties(speaker, UNBRIDGED_HEARER)
    hearer = (f"the caller ({peer.from_user})" if peer.direction == "inbound"
              else f"the callee ({peer.to_user})")
    return Parties(speaker, hearer, peer.id)


def noted(known: Parties | None, seen: Parties) -> Parties:
    """The note to keep after `seen`: it replaces `known` unless only `known` was bridged (the
    bridge ended; the recording held that peer)."""
    if known is not None and known.peer_call_id and not seen.peer_call_id:
        return known
    return seen
