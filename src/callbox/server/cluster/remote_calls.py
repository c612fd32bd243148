"""The calls of other nodes that this node's RELAY sessions hold, and their events.

The owning node publishes each event for one of our sessions to this node (see
`RemoteSessions`); here it goes into the real session (acks, queueing while the client is away,
resume). Each call's last `calling.call.state` is kept, so that when its node is lost the
client still hears the call end: `ended` with end_reason "error".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callbox.server.relay.session import Session
from callbox.wire import relay as wire

log = logging.getLogger(__name__)


@dataclass
class RemoteCall:
    call_id: str
    node_id: str  # the node that owns it
    protocol: str  # the session that holds it
    last_state: dict[str, Any] | None = None  # the params of its last state event


class RemoteCalls:
    def __init__(self, find_session: Callable[[str], Session | None]) -> None:
        self._find_session = find_session
        self.calls: dict[str, RemoteCall] = {}

    def track(self, call_id: str, node_id: str, protocol: str,
              last_state: dict[str, Any] | None = None) -> None:
        if call_id not in self.calls:
            self.calls[call_id] = RemoteCall(call_id, node_id, protocol,
                                             last_state if isinstance(last_state, dict) else None)

    def release(self, protocol: str) -> list[dict[str, Any]]:
        """Forget the calls the session `protocol` holds (it moves to another node): each
        call's id, node and last state, for that node to track."""
        held = [c for c in self.calls.values() if c.protocol == protocol]
        for call in held:
            del self.calls[call.call_id]
        return [{"call_id": c.call_id, "node": c.node_id, "last_state": c.last_state}
                for c in held]

    def owner(self, call_id: str) -> str | None:
        call = self.calls.get(call_id)
        return call.node_id if call is not None else None

    def on_event(self, data: dict[str, Any]) -> None:
        """An event from another node for one of our sessions."""
        protocol, event_type, params = (data.get("protocol"), data.get("event_type"),
                                        data.get("params"))
        if not isinstance(protocol, str) or not isinstance(event_type, str) \
                or not isinstance(params, dict):
            log.warning("cluster: malformed event message %.200r; ignored", data)
            return
        if event_type in (wire.CALL_RECEIVE, wire.CALL_STATE):
            self._note_state(params)
        session = self._find_session(protocol)
        if session is None:
            log.debug("cluster: %s for session %s, which is gone", event_type, protocol)
            return
        session.emit(event_type, params)

    def _note_state(self, params: dict[str, Any]) -> None:
        call = self.calls.get(params.get("call_id", ""))
        if call is None:
            return
        state = params.get("call_state")
        if state == "ended":
            del self.calls[call.call_id]
        else:
            call.last_state = params

    def session_gone(self, protocol: str) -> None:
        for call_id in [c.call_id for c in self.calls.values() if c.protocol == protocol]:
            del self.calls[call_id]

    def node_lost(self, node_id: str) -> int:
        """Every call of a lost node ends for its session; how many there were."""
        lost = [c for c in self.calls.values() if c.node_id == node_id]
        for call in lost:
            del self.calls[call.call_id]
            session = self._find_session(call.protocol)
            if session is None:
                continue
            last = call.last_state or {}
            session.emit(wire.CALL_STATE, wire.state_params(
                call_id=call.call_id, node_id=node_id, tag=str(last.get("tag", "")),
                state="ended", direction=str(last.get("direction", "inbound")),
                device=last.get("device") or {}, end_reason="error"))
        return len(lost)
