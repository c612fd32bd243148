"""Who else is in the cluster: each node's last heartbeat, the RELAY contexts it serves and the
nodes it hears. Pure bookkeeping (the time is passed in), so it is tested without a bus.

A node is alive while its heartbeats keep coming; silent for `silence` seconds it is lost:
`lost()` returns it once and forgets it (a node that comes back is new again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HEARTBEAT_INTERVAL = 1.0  # seconds between a node's heartbeats
SILENCE = 3.0  # seconds without a heartbeat after which a node is lost

Served = frozenset[tuple[str, str]]  # (project id, context)


@dataclass
class NodeInfo:
    node_id: str
    last_seen: float
    contexts: Served = frozenset()
    peers: frozenset[str] = frozenset()  # the nodes it hears


def heartbeat(node_id: str, contexts: Iterable[tuple[str, str]], peers: Iterable[str]
              ) -> dict[str, Any]:
    return {"node": node_id, "contexts": sorted([p, c] for p, c in contexts),
            "peers": sorted(peers)}


def parse_heartbeat(data: dict[str, Any]) -> tuple[str, Served, frozenset[str]] | None:
    """(node id, contexts, peers) of a heartbeat message; None when it is malformed."""
    node, contexts, peers = data.get("node"), data.get("contexts"), data.get("peers")
    if not isinstance(node, str) or not node or not isinstance(contexts, list) \
            or not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        return None
    pairs = []
    for item in contexts:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(x, str) for x in item)):
            return None
        pairs.append((item[0], item[1]))
    return node, frozenset(pairs), frozenset(peers)


@dataclass
class Directory:
    node_id: str  # this node (never listed)
    silence: float = SILENCE
    nodes: dict[str, NodeInfo] = field(default_factory=dict)

    def heard(self, node_id: str, contexts: Served, peers: frozenset[str], now: float) -> bool:
        """Record a heartbeat; True when the node is new (or back after being lost)."""
        if node_id == self.node_id:
            return False
        info = self.nodes.get(node_id)
        self.nodes[node_id] = NodeInfo(node_id, now, contexts, peers)
        return info is None

    def alive(self, node_id: str) -> bool:
        return node_id in self.nodes

    def has_taker(self, project_id: str, context: str) -> bool:
        """Does another node have a RELAY client for this context?"""
        key = (project_id, context)
        return any(key in info.contexts for info in self.nodes.values())

    def lost(self, now: float) -> list[str]:
        """The nodes silent for longer than `silence` (forgotten now)."""
        gone = [n for n, info in self.nodes.items() if now - info.last_seen > self.silence]
        for node_id in gone:
            del self.nodes[node_id]
        return gone
