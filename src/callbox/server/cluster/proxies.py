"""Another node's RELAY session, as seen by the node that owns a call it commands.

A `RemoteSession` is a `Session` whose `emit` publishes the event to the session's node (which
delivers it into the real session, with its acks and resume), so every command and `CallEntry`
works unchanged with it. It goes away like a local session (the hub's rule: calls not answered
yet are hung up) when its node says the session expired, or when its node is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from callbox.server.cluster.bus import events_subject
from callbox.server.relay.session import Session

Send = Callable[[str, dict[str, Any]], None]


def event_message(protocol: str, event_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "event", "protocol": protocol, "event_type": event_type,
            "params": dict(params)}


class RemoteSession(Session):
    def __init__(self, *, node_id: str, protocol: str, project_id: str, send: Send) -> None:
        super().__init__(protocol=protocol, project_id=project_id, contexts=[],
                         event_acks=False)
        self.node_id = node_id
        self.gone = False
        self._send = send
        self._subject = events_subject(node_id)

    def __repr__(self) -> str:
        return f"<RemoteSession {self.protocol}@{self.node_id} {self.project_id}>"

    @property
    def connected(self) -> bool:
        return not self.gone

    def emit(self, event_type: str, params: Mapping[str, Any]) -> None:
        if not self.gone:
            self._send(self._subject, event_message(self.protocol, event_type, params))

    def expire(self) -> None:
        self.gone = True
        super().expire()


class RemoteSessions:
    """The remote sessions bound to this node's calls, by (node, protocol)."""

    def __init__(self, send: Send, on_expired: Callable[[Session], None]) -> None:
        self._send = send
        self._on_expired = on_expired
        self._sessions: dict[tuple[str, str], RemoteSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, node_id: str, protocol: str, project_id: str) -> RemoteSession:
        """The session (made on first use: its node names its project, which never changes)."""
        session = self._sessions.get((node_id, protocol))
        if session is None:
            session = RemoteSession(node_id=node_id, protocol=protocol, project_id=project_id,
                                    send=self._send)
            session.on_expired = self._expired
            self._sessions[(node_id, protocol)] = session
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

    def _expired(self, session: Session) -> None:
        assert isinstance(session, RemoteSession)
        if self._sessions.get((session.node_id, session.protocol)) is session:
            del self._sessions[(session.node_id, session.protocol)]
        self._on_expired(session)
