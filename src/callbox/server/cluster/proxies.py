"""Another node's RELAY sessions, as seen by the node that owns calls they command.

Each is a `Session` relayed to its node (`Session.relay_to`): its events are published to that
node, which delivers them into the real session (acks, queueing, resume), so every command and
`CallEntry` works unchanged with it. It goes away like a local session (the hub's rule: calls
not answered yet are hung up) when its node says the session expired, or when its node is
lost. When the client resumes on yet another node, the session moves there (`move`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from callbox.server.cluster.bus import events_subject
from callbox.server.relay.session import Relay, Session

Send = Callable[[str, dict[str, Any]], None]


def event_message(protocol: str, event_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "event", "protocol": protocol, "event_type": event_type,
            "params": dict(params)}


class RemoteSessions:
    """The sessions of other nodes bound to this node's calls, by (node, protocol)."""

    def __init__(self, send: Send, on_expired: Callable[[Session], None]) -> None:
        self._send = send
        self._on_expired = on_expired
        self._sessions: dict[tuple[str, str], Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, node_id: str, protocol: str, project_id: str) -> Session:
        """The session (made on first use: its node names its project, which never changes)."""
        session = self._sessions.get((node_id, protocol))
        if session is None:
            session = Session(protocol=protocol, project_id=project_id, contexts=[],
                              event_acks=False)
            self.adopt(node_id, session)
        return session

    def adopt(self, node_id: str, session: Session) -> None:
        """`session` (maybe one of this node's until now) is `node_id`'s from now on."""
        session.relay_to(self._relay(node_id, session.protocol))
        session.on_expired = self._expired
        self._sessions[(node_id, session.protocol)] = session

    def move(self, old_node: str, protocol: str, new_node: str) -> None:
        """The client of `protocol` resumed on `new_node`: its events go there now."""
        session = self._sessions.pop((old_node, protocol), None)
        if session is None:
            return
        if (new_node, protocol) in self._sessions:  # a command from there came first
            session.relay_to(self._relay(new_node, protocol))  # both now report there
            return
        self.adopt(new_node, session)

    def release(self, node_id: str, protocol: str) -> Session | None:
        """Stop standing for `node_id`'s session (its client resumes on this node); the
        session, still bound to this node's calls, or None when there was none."""
        session = self._sessions.pop((node_id, protocol), None)
        if session is not None:
            session.on_expired = None
        return session

    def expire(self, node_id: str, protocol: str) -> None:
        session = self._sessions.get((node_id, protocol))
        if session is not None:
            session.expire()

    def node_lost(self, node_id: str) -> int:
        """Every session of a lost node expires; how many there were."""
        lost = [s for (node, _), s in self._sessions.items() if node == node_id]
        for session in lost:
            session.expire()
        return len(lost)

    def _relay(self, node_id: str, protocol: str) -> Relay:
        subject = events_subject(node_id)

        def relay(event_type: str, params: Mapping[str, Any]) -> None:
            self._send(subject, event_message(protocol, event_type, params))
        return relay

    def _expired(self, session: Session) -> None:
        for key, held in list(self._sessions.items()):
            if held is session:
                del self._sessions[key]
        self._on_expired(session)
