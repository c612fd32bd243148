"""The RELAY client's protocol core (callbox.relay.protocol) without any network: frames in,
events out; the frames a server would send are built with the server's own wire helpers.
Also the event routing and a call driven through the `RelayChannel` interface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.relay import protocol as core
from callbox.relay.call import Call
from callbox.relay.channel import EventListener, EventRouter, Unsubscribe
from callbox.relay.events import AuthenticationError, RelayError, RelayEvent
from callbox.wire import relay as wire

PROTOCOL = "signalwire_abc"


def sent(protocol: core.RelayProtocol) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = [json.loads(text) for text in protocol.data_to_send()]
    return frames


def connect_result(restored: bool = False, protocol: str = PROTOCOL) -> dict[str, Any]:
    return wire.connect_result(project="p1", node_id="node", protocol=protocol,
                               restored=restored)


def connected(contexts: tuple[str, ...] = ("default",)) -> core.RelayProtocol:
    """A core that has sent signalwire.connect and got its result (nothing left to send)."""
    client = core.RelayProtocol("p1", "t1", contexts, agent="test")
    request_id = client.connect()
    sent(client)
    (event,) = client.receive(wire.dumps(wire.result(request_id, connect_result())))
    assert isinstance(event, core.Connected)
    return client


def server_event(event_type: str, params: Mapping[str, Any], event_id: str) -> str:
    return wire.dumps(wire.event(event_type, params, project_id="p1", channel="ch",
                                 timestamp=12.5, event_id=event_id))


# -- a whole exchange ------------------------------------------------------------------------


def test_connect_event_ack_execute_result() -> None:
    client = core.RelayProtocol("p1", "t1", ["default"], agent="test")
    connect_id = client.connect()
    assert client.state.value == "connecting"
    (frame,) = sent(client)
    assert frame["id"] == connect_id and frame["method"] == "signalwire.connect"
    assert frame["params"]["authentication"] == {"project": "p1", "token": "t1"}
    assert frame["params"]["contexts"] == ["default"] and frame["params"]["event_acks"] is True
    assert "protocol" not in frame["params"] and "authorization_state" not in frame["params"]

    outcome = client.receive(wire.dumps(wire.result(connect_id, connect_result())))
    assert outcome == [core.Connected(connect_id, "p1@node", PROTOCOL, False, "")]
    assert client.state is core.State.CONNECTED and client.protocol == PROTOCOL

    receive = wire.receive_params(call_id="c1", node_id="node", project_id="p1",
                                  context="default", tag="t", device={}, segment_id="s")
    (got,) = client.receive(server_event("calling.call.receive", receive, "e1"))
    assert isinstance(got, core.EventReceived)
    assert got.event.event_type == "calling.call.receive" and got.event.call_id == "c1"
    assert got.event.event_id == "e1" and got.event.timestamp == 12.5
    assert sent(client) == [{"jsonrpc": "2.0", "id": "e1", "result": {}}]  # the ack

    answer_id = client.send_request("calling.answer", {"node_id": "node", "call_id": "c1"})
    (request,) = sent(client)
    assert request == {"jsonrpc": "2.0", "id": answer_id, "method": "calling.answer",
                       "params": {"node_id": "node", "call_id": "c1"}}
    ok = wire.command_result("200", "Answering call")
    assert client.receive(wire.dumps(wire.result(answer_id, ok))) == [
        core.RequestSucceeded(answer_id, "calling.answer", ok)]
    assert client.pending == 0 and sent(client) == []


def test_error_results_fail_their_request_with_the_servers_code_and_message() -> None:
    client = connected()
    play_id = client.send_request("calling.play", {"call_id": "gone"})
    nope_id = client.send_request("nope", {})
    bad = wire.command_result("410", "the call has ended")
    (failed,) = client.receive(wire.dumps(wire.result(play_id, bad)))
    assert isinstance(failed, core.RequestFailed) and failed.request_id == play_id
    assert (failed.error.code, failed.error.message) == (410, "the call has ended")
    (failed,) = client.receive(wire.dumps(wire.error(nope_id, wire.METHOD_NOT_FOUND, "no")))
    assert isinstance(failed, core.RequestFailed) and failed.method == "nope"
    assert (failed.error.code, failed.error.message) == (-32601, "no")
    assert not isinstance(failed.error, AuthenticationError)
    # a reply to nothing we asked is ignored; an error about no request is reported
    assert client.receive(wire.dumps(wire.result("unknown", {}))) == []
    assert client.receive(wire.dumps(wire.error(None, -32700, "bad"))) == [
        core.ServerError(-32700, "bad")]


def test_refused_credentials_fail_the_connect_with_an_authentication_error() -> None:
    client = core.RelayProtocol("p1", "wrong", ["default"])
    connect_id = client.connect()
    (failed,) = client.receive(wire.dumps(wire.error(connect_id, wire.AUTH_FAILED,
                                                     "unknown project or wrong token")))
    assert isinstance(failed, core.RequestFailed)
    assert isinstance(failed.error, AuthenticationError) and failed.error.code == -32002
    assert "authentication failed for project 'p1'" in str(failed.error)
    assert client.state is core.State.IDLE
    with pytest.raises(core.ProtocolStateError):
        client.send_request("calling.answer", {})


def test_server_ping_and_unknown_methods_are_answered() -> None:
    client = connected()
    assert client.receive(wire.dumps(wire.request("signalwire.ping", {"timestamp": 1},
                                                  "ping-1"))) == []
    assert sent(client) == [{"jsonrpc": "2.0", "id": "ping-1", "result": {}}]
    assert client.receive('{"jsonrpc":"2.0","id":7,"method":"signalwire.what"}') == []
    (reply,) = sent(client)
    assert reply["id"] == 7 and reply["error"]["code"] == wire.METHOD_NOT_FOUND
    assert client.receive('{"jsonrpc":"2.0","method":"signalwire.ping"}') == []
    assert sent(client) == []  # a notification gets no answer


def test_disconnect_request_is_answered_and_restart_drops_the_session() -> None:
    client = connected()
    frame = wire.dumps(wire.request("signalwire.disconnect", {"restart": False}, "d1"))
    assert client.receive(frame) == [core.DisconnectRequested(False)]
    assert sent(client) == [{"jsonrpc": "2.0", "id": "d1", "result": {}}]
    assert client.protocol == PROTOCOL
    frame = wire.dumps(wire.request("signalwire.disconnect", {"restart": True}, "d2"))
    assert client.receive(frame) == [core.DisconnectRequested(True)]
    assert client.protocol == ""


def test_bad_frames_are_reported_not_raised() -> None:
    client = connected()
    for text in ("{nope", "[" * 100_000, '{"jsonrpc":"2.0"}', b"\xff"):
        (bad,) = client.receive(text)
        assert isinstance(bad, core.BadFrame) and bad.reason
    assert sent(client) == []


# -- a drop and a resume ---------------------------------------------------------------------


def test_pending_requests_fail_when_the_connection_drops_and_late_replies_are_ignored() -> None:
    client = connected()
    first = client.send_request("calling.answer", {"call_id": "c1"})
    second = client.send_request("calling.play", {"call_id": "c1"})
    client.receive(server_event("calling.call.state", {"call_id": "c1"}, "e1"))
    failed = client.connection_lost("the socket closed")
    assert [(f.request_id, f.method, f.error.message) for f in failed] == [
        (first, "calling.answer", "the socket closed"),
        (second, "calling.play", "the socket closed")]
    assert client.state is core.State.IDLE and client.pending == 0
    assert client.data_to_send() == []  # the ack went with the socket: the server re-sends
    with pytest.raises(core.ProtocolStateError):
        client.receive(wire.dumps(wire.result(first, {})))
    connect_id = client.connect()
    client.receive(wire.dumps(wire.result(connect_id, connect_result(restored=True))))
    assert client.receive(wire.dumps(wire.result(first, {"code": "200"}))) == []


def test_resume_after_a_drop_keeps_the_protocol_and_subscribes_again() -> None:
    client = connected()
    receive_id = client.send_request("signalwire.receive", {"contexts": ["sales"]})
    client.receive(wire.dumps(wire.result(receive_id, wire.command_result("200", "ok"))))
    unreceive_id = client.send_request("signalwire.unreceive", {"contexts": ["default"]})
    client.receive(wire.dumps(wire.result(unreceive_id, wire.command_result("200", "ok"))))
    assert client.contexts == ["sales"]
    assert client.receive(server_event("signalwire.authorization.state",
                                       {"authorization_state": "blob"}, "a1")) == []
    client.receive(server_event("calling.call.state", {"call_id": "c1"}, "e1"))
    sent(client)
    client.connection_lost("gone")

    connect_id = client.connect()
    (frame,) = sent(client)
    assert frame["params"]["protocol"] == PROTOCOL
    assert frame["params"]["contexts"] == ["sales"]
    assert frame["params"]["authorization_state"] == "blob"
    (resumed,) = client.receive(wire.dumps(wire.result(connect_id,
                                                       connect_result(restored=True))))
    assert resumed == core.Connected(connect_id, "p1@node", PROTOCOL, True, PROTOCOL)
    # the server re-sends what it saw no ack for: acked again, reported once
    assert client.receive(server_event("calling.call.state", {"call_id": "c1"}, "e1")) == []
    assert client.receive(server_event("calling.call.state", {"call_id": "c1"}, "e2")) != []
    assert [f["id"] for f in sent(client)] == ["e1", "e2"]


def test_a_session_that_could_not_be_resumed_says_so() -> None:
    client = connected()
    client.connection_lost("gone")
    connect_id = client.connect()
    (event,) = client.receive(wire.dumps(wire.result(
        connect_id, connect_result(restored=False, protocol="signalwire_new"))))
    assert event == core.Connected(connect_id, "p1@node", "signalwire_new", False, PROTOCOL)
    assert client.protocol == "signalwire_new"


# -- pings -----------------------------------------------------------------------------------


def test_pings_every_interval_and_three_unanswered_end_the_connection() -> None:
    client = connected()
    assert client.next_tick_at() is None
    assert client.tick(100.0) == [] and sent(client) == []
    assert client.next_tick_at() == 130.0
    client.tick(129.9)
    assert sent(client) == []
    client.tick(130.0)
    (ping,) = sent(client)
    assert ping["method"] == "signalwire.ping" and ping["params"] == {}
    assert client.next_tick_at() == 140.0  # the answer's deadline
    assert client.receive(wire.dumps(wire.result(ping["id"], {"timestamp": 1}))) == []
    assert client.next_tick_at() == 160.0 and client.missed_pings == 0
    outcomes = []
    for now in (160.0, 170.0, 190.0, 200.0, 220.0, 230.0):
        outcomes += client.tick(now)
    assert len(sent(client)) == 3 and client.missed_pings == 3
    assert outcomes == [core.PingsUnanswered(3)]


def test_a_late_ping_answer_is_ignored_and_pings_stop_without_a_connection() -> None:
    client = connected()
    client.tick(0.0)
    client.tick(30.0)
    (ping,) = sent(client)
    client.tick(40.0)
    assert client.missed_pings == 1
    assert client.receive(wire.dumps(wire.result(ping["id"], {}))) == []
    assert client.missed_pings == 1
    client.connection_lost("gone")
    assert client.tick(1000.0) == [] and client.next_tick_at() is None


# -- misuse ----------------------------------------------------------------------------------


def test_out_of_order_use_raises_the_state_error() -> None:
    client = core.RelayProtocol("p1", "t1")
    with pytest.raises(core.ProtocolStateError, match="not connected"):
        client.send_request("calling.answer", {})
    with pytest.raises(core.ProtocolStateError, match="no connection"):
        client.receive(wire.dumps(wire.result("x", {})))
    client.connect()
    with pytest.raises(core.ProtocolStateError, match="cannot connect while connecting"):
        client.connect()
    assert isinstance(core.ProtocolStateError("x"), RelayError)


# -- random frames ---------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
METHODS = st.sampled_from(["signalwire.event", "signalwire.ping", "signalwire.disconnect",
                           "signalwire.connect", "calling.play"]) | st.text(max_size=12)
IDS = st.sampled_from(["known-0", "known-1", "known-2"]) | JSON
EVENT_PARAMS = st.fixed_dictionaries(
    {}, optional={"event_type": st.sampled_from(["calling.call.state",
                                                 "signalwire.authorization.state"]) | JSON,
                  "timestamp": JSON | st.integers(min_value=10**300, max_value=10**400),
                  "params": JSON | st.dictionaries(
                      st.sampled_from(["call_id", "control_id", "authorization_state",
                                       "state", "url", "record"]), JSON)})


def envelope(request_id: Any, body: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, **body})


FRAMES = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60),
    JSON.map(json.dumps),
    st.builds(lambda i, m, p: envelope(i, {"method": m, "params": p}), IDS, METHODS,
              EVENT_PARAMS | JSON),
    st.builds(lambda i, p: envelope(i, {"method": "signalwire.event", "params": p}),
              st.text(max_size=8), EVENT_PARAMS),
    st.builds(lambda i, r: envelope(i, {"result": r}), IDS, JSON),
    st.builds(lambda i, e: envelope(i, {"error": e}), IDS, JSON),
)


@given(st.booleans(), st.lists(FRAMES, max_size=12))
@settings(max_examples=400, deadline=None)
def test_random_frames_raise_nothing_but_the_state_error(up: bool, frames: list[str | bytes]
                                                         ) -> None:
    client = core.RelayProtocol("p1", "t1", ["default"])
    ids = [client.connect()] * 3  # replies to it may accept or refuse the connect
    if up:
        client.receive(wire.dumps(wire.result(ids[0], connect_result())))
        ids = [client.send_request(wire.PLAY, {}), client.send_request(wire.RECEIVE, {}),
               client.send_request(wire.UNRECEIVE, {"contexts": ["default"]})]
    client.data_to_send()
    for text in frames:
        if isinstance(text, str):  # the frames may answer requests that are pending
            for n, request_id in enumerate(ids):
                text = text.replace(f"known-{n}", request_id)
        try:
            outcome = client.receive(text)
        except core.ProtocolStateError:
            assert client.state is core.State.IDLE  # a refused connect, then more frames
            continue
        assert all(isinstance(event, core.ProtocolEvent) for event in outcome)
        for reply in client.data_to_send():
            assert isinstance(json.loads(reply), dict)
        client.tick(0.0)


# -- routing, and a call through the channel interface ---------------------------------------


def test_router_gives_an_event_to_its_action_then_to_its_call() -> None:
    router = EventRouter()
    seen: list[str] = []

    def failing(event: RelayEvent) -> None:
        raise RuntimeError("a listener that breaks")

    router.subscribe("c1", lambda e: seen.append(f"call:{e.state}"))
    router.subscribe("c1", failing, "r1")
    stop_r1 = router.subscribe("c1", lambda e: seen.append(f"r1:{e.state}"), "r1")
    router.subscribe("c2", lambda e: seen.append("other call"))
    router.subscribe("c1", lambda e: seen.append("other action"), "r2")
    record = RelayEvent("calling.call.record", {"call_id": "c1", "control_id": "r1",
                                                "state": "recording"})
    assert router.dispatch(record) is True
    assert seen == ["r1:recording", "call:recording"]
    stop_r1()
    stop_r1()  # twice is harmless
    router.dispatch(record)
    assert seen[2:] == ["call:recording"]
    router.drop("c1")
    assert router.dispatch(record) is False
    assert router.dispatch(RelayEvent("calling.call.state", {"call_id": "c2"})) is True


class LoopbackChannel:
    """A `RelayChannel` whose 'server' answers each command at once, after first sending
    the events in `events_before_reply` (as a fast server may)."""

    def __init__(self) -> None:
        self.router = EventRouter()
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.events_before_reply: list[RelayEvent] = []
        self.reply: dict[str, Any] = {"code": "200", "message": "ok"}
        self.tasks: list[asyncio.Task[Any]] = []

    async def execute(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.commands.append((method, dict(params)))
        for event in self.events_before_reply:
            self.router.dispatch(event)
        self.events_before_reply = []
        if self.reply["code"] != "200":
            raise RelayError(self.reply["message"], int(self.reply["code"]))
        return self.reply

    def subscribe(self, call_id: str, listener: EventListener, control_id: str = ""
                  ) -> Unsubscribe:
        return self.router.subscribe(call_id, listener, control_id)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task


async def test_a_call_and_its_recording_through_the_channel_interface() -> None:
    channel = LoopbackChannel()
    call = Call(channel, {"call_id": "c1", "node_id": "n1", "call_state": "created"})
    heard: list[str] = []

    async def listener(event: RelayEvent) -> None:
        heard.append(event.state)

    call.on("calling.call.record", listener)
    # the record's first event arrives before the reply to calling.record
    channel.events_before_reply = [RelayEvent("calling.call.record", {
        "call_id": "c1", "control_id": "r1", "state": "recording"})]
    completed: list[RelayEvent] = []
    action = await call.record(audio={"beep": True}, control_id="r1",
                               on_completed=completed.append)
    assert channel.commands == [("calling.record", {
        "node_id": "n1", "call_id": "c1", "control_id": "r1",
        "record": {"audio": {"beep": True}}})]
    assert action.state == "recording" and call.active_actions == 1
    finished = RelayEvent("calling.call.record", {
        "call_id": "c1", "control_id": "r1", "state": "finished", "record": {"url": "u"}})
    channel.router.dispatch(finished)
    assert await action.wait(1) is finished and action.url == "u"
    assert completed == [finished] and call.active_actions == 0
    channel.router.dispatch(RelayEvent("calling.call.state", {"call_id": "c1",
                                                              "call_state": "ended",
                                                              "end_reason": "hangup"}))
    assert call.state == "ended" and call.end_reason == "hangup"
    await asyncio.gather(*channel.tasks)
    assert heard == ["recording", "finished"]


async def test_a_refused_command_fails_its_action_and_it_hears_nothing_more() -> None:
    channel = LoopbackChannel()
    call = Call(channel, {"call_id": "c1", "node_id": "n1"})
    channel.reply = {"code": "400", "message": "format must be 'wav' or 'mp3', got 'ogg'"}
    with pytest.raises(RelayError) as refused:
        await call.record(audio={"format": "ogg"}, control_id="r1")
    assert refused.value.code == 400 and call.active_actions == 0
    assert channel.router.dispatch(RelayEvent("calling.call.record", {
        "call_id": "c1", "control_id": "r1", "state": "finished"})) is True  # the call's own
    assert call.state == "created"
