"""Digit input on the wire (callbox.wire.collect), the client's reading of collect events, and
the media session's digit sending with waits and a completion callback (real UDP on
loopback, ticks driven by hand)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from callbox.relay.events import RelayEvent
from callbox.server.media.session import DTMF_GAP_FRAMES, MediaSession
from callbox.wire import collect as input_wire
from callbox.wire.collect import CollectParams, InputParamError

# -- collect params ----------------------------------------------------------------------------


def test_collect_params_from_what_the_official_client_sends() -> None:
    params = CollectParams.parse({
        "digits": {"max": 4, "terminators": "#*", "digit_timeout": 2.5},
        "initial_timeout": 7, "partial_results": True, "start_input_timers": False,
        "send_start_of_input": True, "continuous": False,
    })
    assert params == CollectParams(max_digits=4, terminators="#*", digit_timeout=2.5,
                                   initial_timeout=7.0, partial_results=True,
                                   start_input_timers=False)


def test_collect_params_defaults_and_speech_beside_digits_ignored() -> None:
    params = CollectParams.parse({"digits": {"max": 1}, "speech": {"end_silence_timeout": 1}})
    assert params == CollectParams(max_digits=1, terminators="", digit_timeout=5.0,
                                   initial_timeout=5.0, partial_results=False,
                                   start_input_timers=True)


@pytest.mark.parametrize(("collect", "field", "words"), [
    ({"digits": {"max": 0}}, "collect.digits.max", "must be a positive integer"),
    ({"digits": {"max": "2"}}, "collect.digits.max", "must be a positive integer"),
    ({"digits": {"max": True}}, "collect.digits.max", "must be a positive integer"),
    ({"digits": {}}, "collect.digits.max", "must be a positive integer"),
    ({"digits": {"max": 2, "terminators": "#x"}}, "collect.digits.terminators", "DTMF"),
    ({"digits": {"max": 2, "digit_timeout": -1}}, "collect.digits.digit_timeout", "seconds"),
    ({"digits": {"max": 2}, "initial_timeout": "soon"}, "collect.initial_timeout", "seconds"),
    ({"digits": {"max": 2}, "initial_timeout": float("nan")}, "collect.initial_timeout",
     "seconds"),
    ({"digits": {"max": 2}, "partial_results": "yes"}, "collect.partial_results", "true or"),
    ({"digits": {"max": 2}, "continuous": True}, "collect.continuous", "not supported"),
    ({"speech": {}}, "collect.speech", "speech input is not supported"),
    ({}, "collect.digits", "is required"),
    ({"digits": [1]}, "collect.digits", "must be an object"),
    ("digits", "collect", "must be an object"),
])
def test_bad_collect_params_name_the_field(collect: Any, field: str, words: str) -> None:
    with pytest.raises(InputParamError) as caught:
        CollectParams.parse(collect, "collect.")
    assert caught.value.field == field
    assert field in str(caught.value) and words in str(caught.value)


def test_top_level_collect_fields_have_no_prefix() -> None:
    with pytest.raises(InputParamError, match=r"^digits\.max must be a positive integer"):
        CollectParams.parse({"digits": {"max": -3}})


def test_digits_to_send() -> None:
    assert input_wire.parse_digits_to_send("12w3Wa*#") == "12w3WA*#"
    for bad in ("", "12x", "1 2", None, 5, "1" * (input_wire.MAX_SEND_DIGITS + 1)):
        with pytest.raises(InputParamError, match=r"^digits must be 1 to"):
            input_wire.parse_digits_to_send(bad)


# -- events ------------------------------------------------------------------------------------


def test_collect_event_params_and_the_clients_reading_of_them() -> None:
    final = input_wire.collect_event_params(
        call_id="c", node_id="n", control_id="k",
        result=input_wire.digit_result("12", "#"))
    assert final == {"call_id": "c", "node_id": "n", "control_id": "k", "state": "finished",
                     "final": True, "result": {"type": "digit", "params": {
                         "digits": "12", "terminator": "#"}}}
    event = RelayEvent(input_wire.CALL_COLLECT, final)
    assert (event.digits, event.terminator, event.final) == ("12", "#", True)
    assert event.result["type"] == "digit" and input_wire.is_final_collect(final)

    partial = input_wire.collect_event_params(
        call_id="c", node_id="n", control_id="k", result=input_wire.digit_result("1"),
        final=False)
    assert partial["state"] == "collecting" and not input_wire.is_final_collect(partial)
    assert RelayEvent(input_wire.CALL_COLLECT, partial).final is False

    error = input_wire.collect_event_params(call_id="c", node_id="n", control_id="k",
                                            result=input_wire.error_result())
    assert error["state"] == "error" and error["result"] == {"type": "error"}
    no_input = input_wire.collect_event_params(call_id="c", node_id="n", control_id="k",
                                               result=input_wire.no_input_result())
    assert no_input["state"] == "finished" and no_input["result"] == {"type": "no_input"}
    assert RelayEvent(input_wire.CALL_COLLECT, no_input).digits == ""
    assert not input_wire.is_final_collect({"control_id": "k", "state": "finished"})


def test_send_digits_event_params() -> None:
    assert input_wire.send_digits_event_params(
        call_id="c", node_id="n", control_id="k", state="finished") == {
        "call_id": "c", "node_id": "n", "control_id": "k", "state": "finished"}


# -- the media session sends digits, waits, and says when it is done -----------------------


@pytest.fixture
def sender_and_receiver() -> Iterator[tuple[MediaSession, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    media = MediaSession(sock, "127.0.0.1")
    media.configure("127.0.0.1", receiver.getsockname()[1], 0, 101)
    yield media, receiver
    sock.close()
    receiver.close()


def received_events(receiver: socket.socket, count: int) -> list[tuple[int, int, bool]]:
    """(RTP timestamp, event code, end bit) of the telephone-event packets among `count`."""
    events = []
    for _ in range(count):
        data = receiver.recv(2048)
        if data[1] & 0x7F == 101:
            timestamp = struct.unpack_from("!I", data, 4)[0]
            events.append((timestamp, data[12], bool(data[13] & 0x80)))
    return events


def test_send_dtmf_with_a_wait_calls_on_sent_after_its_last_tick(
        sender_and_receiver: tuple[MediaSession, socket.socket]) -> None:
    media, receiver = sender_and_receiver
    done: list[int] = []
    media.send_dtmf("1w2", on_sent=lambda: done.append(media.ticks))
    digit_ticks = 5 + DTMF_GAP_FRAMES  # 100 ms event, then the gap
    expected = digit_ticks + 25 + digit_ticks  # w = 0.5 s = 25 ticks
    for _ in range(expected + 10):
        media.tick()
    assert done == [expected]  # once, in the tick that took the last queued entry
    events = received_events(receiver, expected + 10)
    starts = sorted({(timestamp, code) for timestamp, code, _ in events})
    assert [code for _, code in starts] == [1, 2]
    assert starts[1][0] - starts[0][0] == (digit_ticks + 25) * 160  # the wait, on RTP time
    assert sum(end for _, _, end in events) == 6  # each end sent three times


def test_send_dtmf_refuses_bad_digits_without_queueing(
        sender_and_receiver: tuple[MediaSession, socket.socket]) -> None:
    media, _ = sender_and_receiver
    with pytest.raises(ValueError, match="not a DTMF digit"):
        media.send_dtmf("1x", on_sent=lambda: None)
    with pytest.raises(ValueError, match="no digits"):
        media.send_dtmf("", on_sent=lambda: None)
    media.dtmf_payload_type = None
    with pytest.raises(ValueError, match="telephone-event"):
        media.send_dtmf("1")
