"""The SWML `connect` verb's parameters: the dial plan they make, and errors naming the field."""

import pytest

from callbox.server.dialing import Device
from callbox.server.swml.connect_verb import DEFAULT_TIMEOUT, StateHook, parse_connect
from callbox.server.swml.runner import SwmlError


def test_to_is_one_device_with_the_verbs_from_and_timeout():
    request = parse_connect({"to": "+15550001", "from": "+15550000", "timeout": "20",
                             "answer_on_bridge": "true", "ringback": "ring:uk",
                             "max_duration": 30, "codecs": "PCMU"})
    assert request.plan == [[Device("+15550001", "+15550000", 20.0)]]
    assert request.answer_on_bridge and request.ringback == ("ring:uk",)
    assert request.max_duration == 30.0 and request.ignored == ("codecs",)


def test_serial_parallel_and_serial_parallel_plans_with_overrides():
    a, b = {"to": "sip:a@h"}, {"to": "sip:b@h", "timeout": 5, "from": "sip:me@h"}
    assert parse_connect({"serial": [a, b]}).plan == [
        [Device("sip:a@h", None, DEFAULT_TIMEOUT)], [Device("sip:b@h", "sip:me@h", 5.0)]]
    assert parse_connect({"parallel": [a, b]}).plan == [
        [Device("sip:a@h", None, DEFAULT_TIMEOUT), Device("sip:b@h", "sip:me@h", 5.0)]]
    assert parse_connect({"serial_parallel": [[a], [a, b]]}).plan == [
        [Device("sip:a@h", None, DEFAULT_TIMEOUT)],
        [Device("sip:a@h", None, DEFAULT_TIMEOUT), Device("sip:b@h", "sip:me@h", 5.0)]]


def test_call_state_hooks_are_inherited_and_overridden_per_destination():
    request = parse_connect({
        "parallel": [{"to": "sip:a@h"},
                     {"to": "sip:b@h", "call_state_events": ["answered"]},
                     {"to": "sip:c@h", "call_state_url": "https://other/x"}],
        "call_state_url": "https://hooks/x"})
    hooks = [d.hook for d in request.groups[0]]
    assert hooks == [StateHook("https://hooks/x", frozenset({"ended"})),
                     StateHook("https://hooks/x", frozenset({"answered"})),
                     StateHook("https://other/x", frozenset({"ended"}))]


@pytest.mark.parametrize(("params", "message"), [
    ("sip:a@h", "connect takes an object"),
    ({}, "connect needs exactly one of to, serial, parallel, serial_parallel"),
    ({"to": "sip:a@h", "serial": []}, "got to and serial"),
    ({"to": "alice"}, r"connect.to must be a number \(\+15550001\) or a sip: URI"),
    ({"to": 15550001}, "connect.to must be a number"),
    ({"serial": []}, "connect.serial must be a non-empty list"),
    ({"serial": ["sip:a@h"]}, r"connect.serial\[0\] must be a destination object"),
    ({"parallel": [{"to": "sip:a@h"}, {"from": "x"}]}, r"connect.parallel\[1\].to is missing"),
    ({"serial_parallel": [[{"to": "sip:a@h"}], []]},
     r"connect.serial_parallel\[1\] must be a non-empty list"),
    ({"serial_parallel": [[{"to": "sip:a@h", "timeout": "soon"}]]},
     r"connect.serial_parallel\[0\]\[0\].timeout must be a number of seconds"),
    ({"to": "sip:a@h", "timeout": 0}, "connect.timeout must be more than 0 seconds"),
    ({"to": "sip:a@h", "max_duration": -1}, "connect.max_duration must be more than 0"),
    ({"to": "sip:a@h", "answer_on_bridge": "yes"}, "connect.answer_on_bridge must be true or"),
    ({"to": "sip:a@h", "from": 5}, "connect.from must be a string"),
    ({"to": "sip:a@h", "ringback": [1]}, "connect.ringback must be a list of play URLs"),
    ({"to": "sip:a@h", "call_state_url": "ftp://x"}, "connect.call_state_url must be an http"),
    ({"to": "sip:a@h", "call_state_url": "http://x", "call_state_events": ["gone"]},
     "connect.call_state_events: unknown event"),
    ({"serial": [{"to": "sip:a@h", "call_state_url": 3}]},
     r"connect.serial\[0\].call_state_url must be an http"),
])
def test_bad_parameters_name_the_field(params, message):
    with pytest.raises(SwmlError, match=message):
        parse_connect(params)
