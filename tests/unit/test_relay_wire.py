"""RELAY wire shapes (callbox.wire.relay), the client's URL/event helpers, and the server
session's event queue (acks, re-delivery on resume) without a network."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.relay.client import relay_url
from callbox.relay.events import RelayEvent
from callbox.server.relay.session import MAX_UNACKED, Session
from callbox.wire import relay as wire
from callbox.wire.json_depth import nesting_depth, nests_deeper_than

# -- envelopes ---------------------------------------------------------------------------------


def test_request_result_error_envelopes_round_trip() -> None:
    frame = wire.request(wire.PLAY, {"call_id": "c"}, "id-1")
    parsed = wire.parse_message(wire.dumps(frame))
    assert parsed == wire.Request("id-1", "calling.play", {"call_id": "c"})
    assert wire.parse_message(wire.dumps(wire.result("id-1", {"code": "200"}))) == \
        wire.Response("id-1", {"code": "200"})
    assert wire.parse_message(wire.dumps(wire.error(7, -32601, "no"))) == \
        wire.ErrorResponse(7, -32601, "no")
    assert wire.request(wire.PING, {})["id"] != wire.request(wire.PING, {})["id"]


@pytest.mark.parametrize(("text", "code"), [
    ("{nope", wire.PARSE_ERROR),
    (b"\xff\xfe", wire.PARSE_ERROR),
    ("[1, 2]", wire.INVALID_REQUEST),
    ('{"jsonrpc": "1.0", "id": "x", "method": "m"}', wire.INVALID_REQUEST),
    ('{"jsonrpc": "2.0", "id": {"a": 1}, "method": "m"}', wire.INVALID_REQUEST),
    ('{"jsonrpc": "2.0", "id": "x", "method": ""}', wire.INVALID_REQUEST),
    ('{"jsonrpc": "2.0", "id": "x", "method": "m", "params": [1]}', wire.INVALID_PARAMS),
    ('{"jsonrpc": "2.0", "id": "x"}', wire.INVALID_REQUEST),
])
def test_bad_frames_raise_protocol_errors_with_their_code(text: str | bytes, code: int) -> None:
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_message(text)
    assert caught.value.code == code


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\/ a\u00e9\u2028\U0001f600\ud800\n'))
JSON_VALUES = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(TRICKY_TEXT, children, max_size=3),
    max_leaves=40,
)


@given(JSON_VALUES, st.booleans())
@settings(max_examples=400, deadline=None)
def test_nesting_depth_is_exact_and_ignores_brackets_in_strings(value: Any,
                                                                ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_depth(text) == nesting(value)
    assert nests_deeper_than(text, nesting(value)) is False
    if nesting(value) > 0:
        assert nests_deeper_than(text, nesting(value) - 1) is True


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "[{" * 50_000 + "]}",
                                  '{"jsonrpc":"2.0","id":"1","method":"m","params":'
                                  + "[" * 100_000, ("[" * 100_000).encode()])
def test_json_nested_too_deep_is_a_parse_error_before_decoding(text: str | bytes) -> None:
    with pytest.raises(wire.ProtocolError, match="nested deeper than 64 levels") as caught:
        wire.parse_message(text)
    assert caught.value.code == wire.PARSE_ERROR


def test_json_nested_to_the_limit_parses_and_strings_do_not_count() -> None:
    def frame(params: Any) -> str:
        return wire.dumps(wire.request("m", {"p": params}, "1"))

    deepest: Any = 0
    for _ in range(wire.MAX_JSON_DEPTH - 2):  # the frame and its params are two levels
        deepest = [deepest]
    assert wire.parse_message(frame(deepest)) == wire.Request("1", "m", {"p": deepest})
    with pytest.raises(wire.ProtocolError, match="nested deeper"):
        wire.parse_message(frame([deepest]))
    text = '[[[' * 1000 + '\\"{"\\\\'  # brackets, an escaped quote, escaped backslashes
    assert wire.parse_message(frame(text)) == wire.Request("1", "m", {"p": text})


def test_request_id_is_kept_in_protocol_errors_when_known() -> None:
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_message('{"jsonrpc": "2.0", "id": "abc", "method": "m", "params": 3}')
    assert caught.value.request_id == "abc"


def test_null_params_and_non_object_results_are_tolerated() -> None:
    assert wire.parse_message('{"jsonrpc":"2.0","id":1,"method":"m","params":null}') == \
        wire.Request(1, "m", {})
    assert wire.parse_message('{"jsonrpc":"2.0","id":1,"result":true}') == \
        wire.Response(1, {"value": True})


def test_event_frame_shape() -> None:
    frame = wire.event(wire.CALL_STATE, {"call_id": "c", "call_state": "answered"},
                       project_id="p1", channel="ch", timestamp=12.5, event_id="e1")
    assert frame == {"jsonrpc": "2.0", "id": "e1", "method": "signalwire.event", "params": {
        "event_type": "calling.call.state", "event_channel": "ch", "timestamp": 12.5,
        "project_id": "p1", "params": {"call_id": "c", "call_state": "answered"}}}


@pytest.mark.parametrize(("code", "ok"), [("200", True), (201, True), ("400", False),
                                          ("404", False), ("2000", False), (None, False)])
def test_is_success(code: Any, ok: bool) -> None:
    assert wire.is_success(code) is ok


# -- connect ---------------------------------------------------------------------------------


def test_connect_params_round_trip() -> None:
    sent = wire.ConnectParams(project="p1", token="t1", contexts=["default", "sales"],
                              protocol="signalwire_x", agent="test",
                              authorization_state="blob").to_params()
    assert sent["authentication"] == {"project": "p1", "token": "t1"}
    assert sent["version"] == {"major": 2, "minor": 0, "revision": 0}
    assert sent["event_acks"] is True and sent["authorization_state"] == "blob"
    parsed = wire.ConnectParams.parse(sent)
    assert (parsed.project, parsed.token, parsed.contexts, parsed.protocol,
            parsed.authorization_state) == \
        ("p1", "t1", ["default", "sales"], "signalwire_x", "blob")
    assert "authorization_state" not in wire.ConnectParams(project="p", token="t").to_params()


@pytest.mark.parametrize(("params", "field"), [
    ({}, "authentication"),
    ({"authentication": {"token": "t"}}, "authentication.project"),
    ({"authentication": {"project": "p"}}, "authentication.token"),
    ({"authentication": {"project": "p", "token": "t"}, "contexts": "default"}, "contexts"),
    ({"authentication": {"project": "p", "token": "t"}, "contexts": [""]}, "contexts"),
    ({"authentication": {"project": "p", "token": "t"}, "protocol": 5}, "protocol"),
    ({"authentication": {"project": "p", "token": "t"}, "authorization_state": [1]},
     "authorization_state"),
])
def test_connect_params_errors_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(wire.ParamError) as caught:
        wire.ConnectParams.parse(params)
    assert caught.value.field == field


def test_connect_result_has_what_the_official_client_reads() -> None:
    result = wire.connect_result(project="p1", node_id="n", protocol="signalwire_a",
                                 restored=True)
    assert result["protocol"] == "signalwire_a" and result["identity"] == "p1@n"
    assert result["session_restored"] is True
    assert result["authorization"]["project"] == "p1"


# -- play media ------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "url"), [
    ({"type": "tts", "params": {"text": "Hello there"}}, "say:Hello there"),
    ({"type": "tts", "text": "Leave a message after the beep."},
     "say:Leave a message after the beep."),
    ({"type": "tts", "params": {"text": "Hallo", "language": "de-DE", "gender": "male"}},
     "say:voice=de-de:Hallo"),
    ({"type": "tts", "text": "two\nlines"}, "say:two lines"),
    ({"type": "tts", "text": "voice=x:sneaky"}, "say: voice=x:sneaky"),
    ({"type": "audio", "params": {"url": "https://example.com/a.wav"}},
     "https://example.com/a.wav"),
    ({"type": "audio", "url": "http://example.com/a.mp3"}, "http://example.com/a.mp3"),
    ({"type": "silence", "params": {"duration": 1.5}}, "silence:1.5"),
    ({"type": "silence", "duration": "2"}, "silence:2"),
    ({"type": "ringtone", "params": {"name": "uk", "duration": 3}}, "ring:3:uk"),
    ({"type": "ringtone", "params": {"name": "US"}}, "ring:us"),
])
def test_media_items_nested_and_flat(item: dict[str, Any], url: str) -> None:
    assert wire.media_url(item) == url


@pytest.mark.parametrize(("item", "field"), [
    ({"type": "tts", "params": {}}, "play[0].params.text"),
    ({"type": "tts", "text": "  "}, "play[0].text"),
    ({"type": "tts", "text": "x", "language": "en US"}, "play[0].language"),
    ({"type": "audio", "params": {"url": "file:///etc/passwd"}}, "play[0].params.url"),
    ({"type": "audio", "params": {"url": "/etc/passwd"}}, "play[0].params.url"),
    ({"type": "silence", "params": {"duration": -1}}, "play[0].params.duration"),
    ({"type": "silence", "params": {"duration": float("nan")}}, "play[0].params.duration"),
    ({"type": "ringtone", "params": {"name": "../x"}}, "play[0].params.name"),
    ({"type": "video"}, "play[0].type"),
    ({"type": "tts", "params": "text"}, "play[0].params"),
    ("say:hello", "play[0]"),
])
def test_media_errors_name_the_field(item: Any, field: str) -> None:
    with pytest.raises(wire.ParamError) as caught:
        wire.media_url(item)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_play_list_volume_loop_control_id() -> None:
    assert wire.play_urls([{"type": "silence", "duration": 1},
                           {"type": "tts", "text": "hi"}]) == ["silence:1", "say:hi"]
    with pytest.raises(wire.ParamError, match="play must be"):
        wire.play_urls([])
    with pytest.raises(wire.ParamError) as caught:
        wire.play_urls([{"type": "tts", "text": "ok"}, {"type": "tts"}])
    assert caught.value.field == "play[1].text"
    assert wire.parse_volume(None) == 0.0 and wire.parse_volume(-6) == -6.0
    with pytest.raises(wire.ParamError, match="volume"):
        wire.parse_volume(90)
    assert wire.parse_loop(None) == 1 and wire.parse_loop(0) == 0
    with pytest.raises(wire.ParamError, match="loop"):
        wire.parse_loop(-1)
    assert len(wire.parse_control_id(None)) == 36 and wire.parse_control_id("mine") == "mine"
    with pytest.raises(wire.ParamError, match="control_id"):
        wire.parse_control_id(5)


def test_state_and_play_params() -> None:
    device = wire.sip_device(from_uri="sip:a@h", to_uri="sip:b@h", from_number="a",
                             to_number="b")
    ended = wire.state_params(call_id="c", node_id="n", tag="t", state="ended",
                              direction="inbound", device=device, end_reason="hangup")
    assert ended["call_state"] == "ended" and ended["end_reason"] == "hangup"
    answered = wire.state_params(call_id="c", node_id="n", tag="t", state="answered",
                                 direction="inbound", device=device, end_reason="hangup")
    assert "end_reason" not in answered
    assert wire.play_params(call_id="c", node_id="n", control_id="x", state="playing") == \
        {"call_id": "c", "node_id": "n", "control_id": "x", "state": "playing"}


# -- client helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1:8443", "wss://127.0.0.1:8443/"),
    ("example.signalwire.com", "wss://example.signalwire.com/"),
    ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080/"),
    ("wss://h:1/relay", "wss://h:1/relay"),
])
def test_relay_url(host: str, url: str) -> None:
    assert relay_url(host) == url


@pytest.mark.parametrize("host", ["http://h/", "h/path", "user@h", "", "ws://"])
def test_relay_url_rejects_what_it_cannot_use(host: str) -> None:
    with pytest.raises(ValueError, match="host must be"):
        relay_url(host)


def test_relay_event_reads_record_fields_nested_or_top_level() -> None:
    nested = RelayEvent.from_payload({"event_type": "calling.call.record", "timestamp": 3,
                                      "params": {"control_id": "c", "state": "finished",
                                                 "url": "top", "record": {
                                                     "url": "u", "duration": 1.5,
                                                     "size": 10}}})
    assert (nested.url, nested.duration, nested.size, nested.state, nested.control_id) == \
        ("u", 1.5, 10, "finished", "c")
    assert nested.params["record"]["url"] == "u" and nested.timestamp == 3.0
    flat = RelayEvent("calling.call.record", {"url": "u2", "duration": 2, "size": 5})
    assert (flat.url, flat.duration, flat.size) == ("u2", 2.0, 5)
    state = RelayEvent("calling.call.state", {"call_state": "ended", "end_reason": "hangup"})
    assert state.state == "ended" and state.reason == "hangup"
    assert RelayEvent.from_payload({"params": "junk"}).params == {}


# -- the server session's event queue --------------------------------------------------------


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.session: Session | None = None

    def send(self, frame: Any) -> None:
        self.sent.append(json.loads(frame) if isinstance(frame, str) else frame)

    def abort(self) -> None:
        self.closed = True


def events_of(connection: FakeConnection) -> list[str]:
    return [f["params"]["params"]["n"] for f in connection.sent]


async def test_session_redelivers_unacked_events_in_order_on_resume() -> None:
    session = Session(protocol="signalwire_x", project_id="p1", contexts=["default"],
                      event_acks=True)
    first = FakeConnection()
    session.attach(first)  # type: ignore[arg-type]
    session.emit("calling.call.state", {"n": "a"})
    session.emit("calling.call.state", {"n": "b"})
    assert events_of(first) == ["a", "b"]
    assert session.ack(first.sent[0]["id"]) and not session.ack("unknown")
    session.detach(first, grace=60)  # type: ignore[arg-type]
    assert not session.connected
    session.emit("calling.call.record", {"n": "c"})  # queued while away
    second = FakeConnection()
    session.attach(second)  # type: ignore[arg-type]
    assert events_of(second) == ["b", "c"]
    assert second.sent[0]["id"] == first.sent[1]["id"]  # same id: the client can de-duplicate
    assert session.unacked == 2
    session.expire()


async def test_session_expires_after_grace_and_caps_its_queue() -> None:
    expired: list[Session] = []
    session = Session(protocol="signalwire_y", project_id="p1", contexts=[], event_acks=True)
    session.on_expired = expired.append
    connection = FakeConnection()
    session.attach(connection)  # type: ignore[arg-type]
    session.detach(connection, grace=0.01)  # type: ignore[arg-type]
    for n in range(MAX_UNACKED + 5):
        session.emit("calling.call.state", {"n": n})
    assert session.unacked == MAX_UNACKED and session.dropped_events == 5
    await asyncio.sleep(0.05)
    assert expired == [session] and session.unacked == 0


async def test_session_without_acks_keeps_only_what_it_could_not_send() -> None:
    session = Session(protocol="signalwire_z", project_id="p1", contexts=[], event_acks=False)
    connection = FakeConnection()
    session.attach(connection)  # type: ignore[arg-type]
    session.emit("calling.call.state", {"n": "a"})
    assert session.unacked == 0
    session.detach(connection, grace=60)  # type: ignore[arg-type]
    session.emit("calling.call.state", {"n": "b"})
    again = FakeConnection()
    session.attach(again)  # type: ignore[arg-type]
    assert events_of(again) == ["b"] and session.unacked == 0
    session.expire()
