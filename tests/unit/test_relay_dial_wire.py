"""RELAY dial/connect shapes (callbox.wire.dial): device plans and their errors, event params,
and how our client's `Call` reads a connect event."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbox.relay.events import RelayEvent
from callbox.wire import dial
from callbox.wire.relay import ParamError

SIP: dict[str, Any] = {"type": "sip", "params": {
    "to": "sip:bob@example.com", "from": "sip:me@example.com", "timeout": 20,
    "headers": [{"name": "X-Account", "value": "42"}]}}
PHONE: dict[str, Any] = {"type": "phone", "params": {"to_number": "+15550001",
                                                     "from_number": "+15550002"}}


def test_a_plan_of_serial_groups_of_parallel_devices() -> None:
    plan = dial.parse_devices([[SIP], [PHONE, {"type": "sip", "params": {"to": "sip:x@y"}}]])
    assert [[d.kind for d in group] for group in plan] == [["sip"], ["phone", "sip"]]
    first, phone = plan[0][0], plan[1][0]
    assert (first.to, first.from_, first.timeout) == ("sip:bob@example.com",
                                                      "sip:me@example.com", 20.0)
    assert first.headers == (("X-Account", "42"),)
    assert (phone.to, phone.from_, phone.timeout) == ("+15550001", "+15550002", None)
    # the wire shape comes back as given (it is echoed in events)
    assert first.to_params() == {**SIP, "params": {**SIP["params"], "timeout": 20.0}}
    assert phone.to_params() == PHONE
    assert plan[1][1].to_params() == {"type": "sip", "params": {"to": "sip:x@y"}}


@pytest.mark.parametrize(("devices", "message"), [
    (None, "devices must be a non-empty list of lists of devices"),
    ([], "devices must be a non-empty list"),
    ([SIP], "devices[0] must be a non-empty list of devices"),
    ([[]], "devices[0] must be a non-empty list"),
    ([[SIP], ["x"]], "devices[1][0] must be an object"),
    ([[{"type": "fax", "params": {}}]], "devices[0][0].type must be 'sip' or 'phone'"),
    ([[{"type": "sip"}]], "devices[0][0].params must be an object"),
    ([[{"type": "sip", "params": {"from": "sip:a@b"}}]], "devices[0][0].params.to is required"),
    ([[SIP, {"type": "phone", "params": {"from_number": "+1"}}]],
     "devices[0][1].params.to_number is required"),
    ([[{"type": "sip", "params": {"to": "bob@example.com"}}]],
     "devices[0][0].params.to must be a sip: URI"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "from": "+1555"}}]],
     "devices[0][0].params.from must be a sip: URI"),
    ([[{"type": "phone", "params": {"to_number": 15550001}}]],
     "devices[0][0].params.to_number must be a string"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "timeout": 0}}]],
     "devices[0][0].params.timeout must be a number of seconds"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "timeout": "soon"}}]],
     "devices[0][0].params.timeout must be a number"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "headers": [{"name": "X"}]}}]],
     "devices[0][0].params.headers[0].value is required"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "headers": [
        {"name": "Via", "value": "SIP/2.0/UDP evil"}]}}]],
     "devices[0][0].params.headers[0].name must be a custom header (X-"),
    ([[{"type": "sip", "params": {"to": "sip:a@b", "headers": [
        {"name": "X-A", "value": "1\r\nBYE sip:x SIP/2.0"}]}}]],
     "devices[0][0].params.headers[0].value must not hold control characters"),
    ([[SIP]] * (dial.MAX_GROUPS + 1), "at most 10 serial groups"),
    ([[SIP] * (dial.MAX_PARALLEL + 1)], "devices[0] may hold at most 10 devices"),
])
def test_bad_devices_name_the_field(devices: Any, message: str) -> None:
    with pytest.raises(ParamError) as bad:
        dial.parse_devices(devices)
    assert message in str(bad.value)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["type", "params", "to", "from",
                                                       "to_number", "timeout", "headers"]),
                                      inner, max_size=4),
                    max_leaves=12))
def test_any_json_is_a_plan_or_a_param_error(value: Any) -> None:
    try:
        plan = dial.parse_devices(value)
    except ParamError as exc:
        assert str(exc).startswith("devices")
    else:
        assert all(group and all(d.to for d in group) for group in plan)


def test_max_duration_is_minutes_and_tag_is_checked() -> None:
    assert dial.parse_max_duration(None) is None
    assert dial.parse_max_duration(2) == 120.0
    for bad in (0, -1, "x", True):
        with pytest.raises(ParamError, match="max_duration must be a number of minutes"):
            dial.parse_max_duration(bad)
    assert dial.parse_tag(None) is None and dial.parse_tag("t") == "t"
    with pytest.raises(ParamError, match="tag must be a string"):
        dial.parse_tag(5)


def test_dial_and_connect_event_params() -> None:
    leg = dial.leg_params(call_id="c1", node_id="n", tag="t", device=PHONE, dial_winner=True)
    assert leg == {"call_id": "c1", "node_id": "n", "tag": "t", "device": PHONE,
                   "dial_winner": True}
    assert dial.dial_params(tag="t", node_id="n", state="dialing") == \
        {"tag": "t", "node_id": "n", "dial_state": "dialing"}
    assert dial.dial_params(tag="t", node_id="n", state="answered", call=leg)["call"] == leg
    failed = dial.dial_params(tag="t", node_id="n", state="failed", reason="busy", sip_code=486)
    assert (failed["reason"], failed["sip_code"]) == ("busy", 486)
    connected = dial.connect_params(call_id="a", node_id="n", tag="ta", state="connected",
                                    peer=leg)
    assert connected == {"call_id": "a", "node_id": "n", "tag": "ta",
                         "connect_state": "connected", "peer": leg}
    gone = dial.connect_params(call_id="a", node_id="n", tag="ta", state="failed")
    assert (gone["reason"], gone["sip_code"]) == ("error", 0)


def test_the_client_reads_dial_and_connect_events() -> None:
    params = dial.connect_params(call_id="a", node_id="n", tag="ta", state="connected",
                                 peer=dial.leg_params(call_id="b", node_id="n", tag="t",
                                                      device=SIP))
    event = RelayEvent.from_payload({"event_type": dial.CALL_CONNECT, "params": params})
    assert (event.connect_state, event.peer["call_id"], event.tag) == ("connected", "b", "ta")
    failed = RelayEvent.from_payload({"event_type": dial.CALL_DIAL, "params": dial.dial_params(
        tag="t", node_id="n", state="failed", reason="noAnswer", sip_code=487)})
    assert (failed.dial_state, failed.reason, failed.tag) == ("failed", "noAnswer", "t")
