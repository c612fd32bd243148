"""Who else is in the cluster: each node's last heartbeat, the RELAY contexts it serves and the
nodes it hears. Pure bookkeeping (the time is passed in), so it is tested without a bus.

A node is alive while its heartbeats keep coming; silent for `silence` seconds it is lost:
`lost()` returns it once and forgets it (a node that comes back is new again). Each process
names itself with a random `incarnation`: a node restarted under the same id sooner than that
is `RESTARTED`, so what was lost with its old process is known lost all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

HEARTBEAT_INTERVAL = 1.0  # seconds between a node's heartbeats
SILENCE = 3.0  # seconds without a heartbeat after which a node is lost

Served = frozenset[tuple[str, str]]  # (project id, context)


class Heard(Enum):
    KNOWN = "known"
    NEW = "new"  # first heard of, or back after it was lost
    RESTARTED = "restarted"  # a new process under a known id, before it was found lost


@dataclass
class NodeInfo:
    node_id: str
    incarnation: str
    last_seen: float
    contexts: Served = frozenset()
    peers: frozenset[str] = frozenset()  # the nodes it hears


def heartbeat(info: NodeInfo) -> dict[str, Any]:
    """The message announcing `info` (its `last_seen` is the receiver's business)."""
    return {"node": info.node_id, "incarnation": info.incarnation,
            "contexts": sorted([p, c] for p, c in info.contexts), "peers": sorted(info.peers)}


def parse_heartbeat(data: dict[str, Any], now: float) -> NodeInfo | None:
    """The node a heartbeat message announces, seen `now`; None when it is malformed."""
    node, incarnation = data.get("node"), data.get("incarnation")
    contexts, peers = data.get("contexts"), data.get("peers")
    if not isinstance(node, str) or not node or not isinstance(incarnation, str) \
            or not isinstance(contexts, list) or not isinstance(peers, list) \
            or not all(isinstance(p, str) for p in peers):
        return None
    pairs = []
    for item in contexts:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(x, str) for x in item)):
            return None
        pairs.append((item[0], item[1]))
    return NodeInfo(node, incarnation, now, frozenset(pairs), frozenset(peers))


@dataclass
class Directory:
    node_id: str  # this node (never listed)
    silence: float = SILENCE
    nodes: dict[str, NodeInfo] = field(default_factory=dict)

    def heard(self, info: NodeInfo) -> Heard:
        """Record a heartbeat (this node's own are ignored: KNOWN)."""
        if info.node_id == self.node_id:
            return Heard.KNOWN
        before = self.nodes.get(info.node_id)
        self.nodes[info.node_id] = info
        if before is None:
            return Heard.NEW
        return Heard.KNOWN if before.incarnation == info.incarnation else Heard.RESTARTED

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
