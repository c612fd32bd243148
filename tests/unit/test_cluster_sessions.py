"""Another node's session and calls, without a bus: what is published, and what a lost node
leaves behind for the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callbox.server.cluster.proxies import RemoteSessions
from callbox.server.cluster.remote_calls import RemoteCalls
from callbox.server.relay.session import Session
from callbox.wire import relay as wire


class Heard(Session):
    """A session that keeps what it is told (the client's side of `emit`)."""

    def __init__(self, protocol: str) -> None:
        super().__init__(protocol=protocol, project_id="p1", contexts=["default"],
                         event_acks=True)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, params: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(params)))


def state(call_id: str, call_state: str, tag: str = "t1") -> dict[str, Any]:
    return wire.state_params(call_id=call_id, node_id="node-b", tag=tag, state=call_state,
                             direction="inbound", device={"type": "sip", "params": {}})


def event(protocol: str, event_type: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "event", "protocol": protocol, "event_type": event_type, "params": params}


def test_a_remote_session_publishes_its_events_in_order_until_it_expires() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    expired: list[Session] = []
    sessions = RemoteSessions(lambda subject, message: sent.append((subject, message)),
                              expired.append)
    session = sessions.get("node.a", "signalwire_x", "p1")
    assert sessions.get("node.a", "signalwire_x", "p1") is session and len(sessions) == 1
    session.emit(wire.CALL_STATE, {"n": 1})
    session.emit(wire.CALL_PLAY, {"n": 2})
    assert sent == [("callbox.events.node%2Ea", event("signalwire_x", wire.CALL_STATE, {"n": 1})),
                    ("callbox.events.node%2Ea", event("signalwire_x", wire.CALL_PLAY, {"n": 2}))]
    assert session.connected
    assert sessions.node_lost("node-c") == 0 and not expired
    assert sessions.node_lost("node.a") == 1
    assert expired == [session] and not session.connected and len(sessions) == 0
    session.emit(wire.CALL_STATE, {"n": 3})
    assert len(sent) == 2  # nothing after it went away


def test_events_of_other_nodes_reach_the_session_and_a_lost_node_ends_its_calls() -> None:
    one, two = Heard("s1"), Heard("s2")
    sessions = {"s1": one, "s2": two}
    calls = RemoteCalls(sessions.get)
    calls.track("c1", "node-b", "s1")
    calls.track("c2", "node-b", "s2")
    calls.track("c3", "node-c", "s1")
    calls.on_event(event("s1", wire.CALL_STATE, state("c1", "answered", tag="tag-1")))
    calls.on_event(event("s1", wire.CALL_STATE, state("c3", "ended")))
    calls.on_event({"kind": "event", "protocol": "s1"})  # malformed: ignored
    calls.on_event(event("gone", wire.CALL_STATE, state("c9", "ended")))  # no such session
    assert [p["call_state"] for _, p in one.events] == ["answered", "ended"]
    assert calls.owner("c3") is None  # ended: forgotten

    assert calls.node_lost("node-b") == 2
    ended = [p for _, p in one.events[2:]] + [p for _, p in two.events]
    assert [(p["call_id"], p["call_state"], p["end_reason"], p["node_id"]) for p in ended] == [
        ("c1", "ended", "error", "node-b"), ("c2", "ended", "error", "node-b")]
    assert ended[0]["tag"] == "tag-1" and ended[0]["device"] == {"type": "sip", "params": {}}
    assert calls.calls == {} and calls.node_lost("node-b") == 0


def test_a_session_that_expired_forgets_its_remote_calls() -> None:
    no_sessions: dict[str, Session] = {}
    calls = RemoteCalls(no_sessions.get)
    calls.track("c1", "node-b", "s1")
    calls.track("c2", "node-b", "s2")
    calls.session_gone("s1")
    assert set(calls.calls) == {"c2"}


async def test_a_session_follows_its_client_to_another_node_and_back() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    expired: list[Session] = []
    sessions = RemoteSessions(lambda subject, message: sent.append((subject, message)),
                              expired.append)
    session = sessions.get("node-a", "s1", "p1")
    sessions.move("node-x", "s1", "node-b")  # not a session of this node: nothing happens
    session.emit(wire.CALL_STATE, {"n": 1})
    sessions.move("node-a", "s1", "node-b")  # its client resumed on node B
    session.emit(wire.CALL_STATE, {"n": 2})
    assert [subject for subject, _ in sent] == ["callbox.events.node-a", "callbox.events.node-b"]
    assert sessions.get("node-b", "s1", "p1") is session and len(sessions) == 1

    # The client comes to this node: the session is its own again, bound to the same calls.
    assert sessions.release("node-b", "s1") is session and len(sessions) == 0
    session.resume_here(contexts=["default"], event_acks=True, agent="test",
                        events=[("e1", "frame 1")], grace=60)
    session.emit(wire.CALL_STATE, {"n": 3})
    assert len(sent) == 2 and not session.relayed and not session.connected
    assert session.unacked == 2 and session.pending_events()[0] == ("e1", "frame 1")
    assert session.contexts == ["default"] and session.event_acks
    session.expire()
    assert not expired  # released: this node's hub decides now


async def test_a_local_session_relayed_to_another_node_sends_there_and_keeps_nothing() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    expired: list[Session] = []
    sessions = RemoteSessions(lambda subject, message: sent.append((subject, message)),
                              expired.append)
    local = Session(protocol="s1", project_id="p1", contexts=["default"], event_acks=True)
    local.emit(wire.CALL_STATE, {"n": 1})  # no socket: kept for the client
    assert local.unacked == 1 and not local.connected
    sessions.adopt("node-b", local)
    local.emit(wire.CALL_STATE, {"n": 2})
    assert local.unacked == 0 and local.connected and local.relayed
    assert sent == [("callbox.events.node-b", event("s1", wire.CALL_STATE, {"n": 2}))]
    sessions.expire("node-b", "s1")  # its client's session ended there
    assert expired == [local] and len(sessions) == 0 and not local.connected


def test_the_calls_a_session_holds_go_with_it_and_are_forgotten_here() -> None:
    no_sessions: dict[str, Session] = {}
    calls = RemoteCalls(no_sessions.get)
    calls.track("c1", "node-b", "s1", state("c1", "answered"))
    calls.track("c2", "node-c", "s1")
    calls.track("c3", "node-b", "s2")
    held = calls.release("s1")
    assert [(c["call_id"], c["node"]) for c in held] == [("c1", "node-b"), ("c2", "node-c")]
    assert held[0]["last_state"]["call_state"] == "answered" and held[1]["last_state"] is None
    assert set(calls.calls) == {"c3"} and calls.release("s1") == []
