from __future__ import annotations

import pytest

from callbox.server.media.dtmf import (
    REMEMBERED_PRESSES,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
)

# RFC 4733 section 3.2, table 3: DTMF named events 0-15.
RFC_4733_DTMF = {
    0: "0", 1: "1", 2: "2", 3: "3", 4: "4", 5: "5", 6: "6", 7: "7", 8: "8", 9: "9",
    10: "*", 11: "#", 12: "A", 13: "B", 14: "C", 15: "D",
}


def test_parse_known_payload() -> None:
    # digit 5, end bit, volume 10, duration 800 (RFC 4733 layout)
    event = TelephoneEvent.parse(bytes([5, 0x80 | 10, 0x03, 0x20]))
    assert event == TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert event.digit == "5"
    assert event.serialize() == bytes([5, 0x8A, 0x03, 0x20])


def test_reserved_bit_and_extra_bytes_ignored() -> None:
    event = TelephoneEvent.parse(bytes([11, 0x40 | 7, 0, 160, 99, 99]))
    assert event == TelephoneEvent(event=11, end=False, volume=7, duration=160)
    assert event.digit == "#"


@pytest.mark.parametrize(("code", "digit"), RFC_4733_DTMF.items())
def test_digits(code: int, digit: str) -> None:
    event = TelephoneEvent(code, False, 10, 0)
    assert event.digit == digit
    assert TelephoneEvent.parse(event.serialize()) == event


def test_non_dtmf_event_has_no_digit() -> None:
    assert TelephoneEvent(16, False, 0, 0).digit is None  # flash
    assert TelephoneEvent(255, True, 63, 65535).digit is None


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_parse_short_raises(payload: bytes) -> None:
    with pytest.raises(ValueError):
        TelephoneEvent.parse(payload)


@pytest.mark.parametrize(
    "event",
    [
        TelephoneEvent(256, False, 0, 0),
        TelephoneEvent(1, False, 64, 0),
        TelephoneEvent(1, False, 0, 65536),
        TelephoneEvent(-1, False, 0, 0),
    ],
)
def test_serialize_rejects_out_of_range(event: TelephoneEvent) -> None:
    with pytest.raises(ValueError):
        event.serialize()


def _payload(code: int, duration: int, end: bool = False) -> bytes:
    return TelephoneEvent(code, end, 10, duration).serialize()


def test_receiver_reports_each_press_once() -> None:
    rx = DtmfReceiver()
    ts = 48000
    got = [rx.feed(ts, _payload(1, d)) for d in (160, 320, 480, 640)]
    got += [rx.feed(ts, _payload(1, 800, end=True)) for _ in range(3)]
    assert got == ["1"] + [None] * 6
    # same digit again: a new press has a new timestamp
    got = [rx.feed(ts + 1600, _payload(1, d)) for d in (160, 320)]
    got += [rx.feed(ts + 1600, _payload(1, 480, end=True)) for _ in range(3)]
    assert got == ["1"] + [None] * 4
    assert rx.events == 2
    assert rx.malformed == 0


def test_receiver_reports_press_seen_only_by_end_packets() -> None:
    rx = DtmfReceiver()
    got = [rx.feed(1000, _payload(11, 800, end=True)) for _ in range(3)]
    assert got == ["#", None, None]


def test_receiver_different_digits_same_timestamp_are_distinct() -> None:
    rx = DtmfReceiver()
    assert rx.feed(5000, _payload(2, 160)) == "2"
    assert rx.feed(5000, _payload(3, 160)) == "3"


def test_receiver_ignores_late_straggler_of_previous_press() -> None:
    rx = DtmfReceiver()
    assert rx.feed(100, _payload(4, 160)) == "4"
    assert rx.feed(2000, _payload(4, 160)) == "4"
    assert rx.feed(100, _payload(4, 800, end=True)) is None  # reordered end of the first press


def test_receiver_malformed_and_non_dtmf() -> None:
    rx = DtmfReceiver()
    assert rx.feed(1, b"\x01\x02") is None
    assert rx.feed(1, b"") is None
    assert rx.malformed == 2
    assert rx.feed(2, _payload(16, 160)) is None  # flash: not a digit
    assert rx.events == 0
    assert rx.feed(2, _payload(0, 160)) == "0"


def test_receiver_memory_is_bounded() -> None:
    rx = DtmfReceiver()
    presses = 1000
    for press in range(presses):
        assert rx.feed(press * 1600, _payload(press % 16, 160)) == RFC_4733_DTMF[press % 16]
    # only the newest REMEMBERED_PRESSES are kept: a late repeat of the oldest of them is
    # still dropped, one of the press before it is forgotten and heard as a new press
    oldest = presses - REMEMBERED_PRESSES
    assert rx.feed(oldest * 1600, _payload(oldest % 16, 160)) is None
    forgotten = oldest - 1
    assert rx.feed(forgotten * 1600, _payload(forgotten % 16, 160)) == RFC_4733_DTMF[forgotten % 16]


def test_sender_packets_100ms() -> None:
    ticks = DtmfSender().packets("5")
    assert len(ticks) == 5
    events = [[TelephoneEvent.parse(p) for p in tick] for tick in ticks]
    for index, tick in enumerate(events[:-1], start=1):
        assert tick == [TelephoneEvent(5, False, 10, 160 * index)]
    assert events[-1] == [TelephoneEvent(5, True, 10, 800)] * 3


def test_sender_options_and_rounding() -> None:
    sender = DtmfSender()
    ticks = sender.packets("#", duration_ms=50, volume=20)  # rounded up to 60 ms
    assert len(ticks) == 3
    assert TelephoneEvent.parse(ticks[-1][0]) == TelephoneEvent(11, True, 20, 480)
    single = sender.packets("a", duration_ms=20)
    assert len(single) == 1 and len(single[0]) == 3
    assert TelephoneEvent.parse(single[0][0]) == TelephoneEvent(12, True, 10, 160)


def test_sender_roundtrip_through_receiver() -> None:
    sender, rx = DtmfSender(), DtmfReceiver()
    heard = []
    for start, digit in enumerate("0123456789*#ABCD"):
        for tick in sender.packets(digit, 60):
            for payload in tick:
                got = rx.feed(start * 8000, payload)
                if got is not None:
                    heard.append(got)
    assert "".join(heard) == "0123456789*#ABCD"


@pytest.mark.parametrize(
    ("digit", "kwargs"),
    [
        ("x", {}),
        ("", {}),
        ("12", {}),
        ("1", {"duration_ms": 0}),
        ("1", {"duration_ms": 9000}),
        ("1", {"volume": 64}),
    ],
)
def test_sender_rejects(digit: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DtmfSender().packets(digit, **kwargs)
