"""The digit collector (sans-I/O): digits and 20 ms frames in, a result out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbox.server.media.digits import (
    CollectResult,
    DigitCollector,
    DigitRules,
    Outcome,
    Phase,
    frames_for,
)


def ticks(collector: DigitCollector, count: int) -> list[CollectResult]:
    return [r for r in (collector.tick() for _ in range(count)) if r is not None]


def test_max_digits_ends_the_collect_with_the_digits() -> None:
    collector = DigitCollector(DigitRules(max_digits=2))
    assert collector.digit("1") is None
    assert collector.phase is Phase.COLLECTING
    assert collector.digit("2") == CollectResult(Outcome.DIGIT, "12", "")
    assert collector.done and collector.result == CollectResult(Outcome.DIGIT, "12", "")
    assert collector.digit("3") is None and collector.tick() is None  # reported once


def test_a_terminator_ends_it_and_is_reported_apart() -> None:
    collector = DigitCollector(DigitRules(max_digits=10, terminators="#*"))
    collector.digit("1")
    collector.digit("2")
    assert collector.digit("#") == CollectResult(Outcome.DIGIT, "12", "#")


def test_a_terminator_first_gives_empty_digits() -> None:
    collector = DigitCollector(DigitRules(max_digits=4, terminators="#"))
    assert collector.digit("#") == CollectResult(Outcome.DIGIT, "", "#")


def test_initial_timeout_counts_frames_and_gives_no_input() -> None:
    collector = DigitCollector(DigitRules(max_digits=4, initial_timeout=1.0))
    assert ticks(collector, 49) == []
    assert collector.tick() == CollectResult(Outcome.NO_INPUT)  # the 50th frame: 1.0 s


def test_digit_timeout_after_some_digits_gives_the_digits() -> None:
    collector = DigitCollector(DigitRules(max_digits=4, digit_timeout=0.5, initial_timeout=1))
    ticks(collector, 40)
    collector.digit("7")
    assert ticks(collector, 24) == []  # the initial timeout no longer runs
    collector.digit("8")  # restarts the digit timeout
    assert ticks(collector, 24) == []
    assert collector.tick() == CollectResult(Outcome.DIGIT, "78", "")


def test_timers_not_started_wait_for_start_timers() -> None:
    collector = DigitCollector(DigitRules(max_digits=2, initial_timeout=0.1),
                               timers_started=False)
    assert ticks(collector, 1000) == []
    collector.start_timers()
    assert ticks(collector, 5) == [CollectResult(Outcome.NO_INPUT)]


def test_a_digit_before_the_timers_start_the_digit_timeout() -> None:
    """play_and_collect: a digit during the prompt counts and starts the digit timeout."""
    collector = DigitCollector(DigitRules(max_digits=3, digit_timeout=0.2),
                               timers_started=False)
    collector.digit("5")
    collector.start_timers()  # the prompt ended (stopped by the digit): no effect now
    assert ticks(collector, 10) == [CollectResult(Outcome.DIGIT, "5", "")]


def test_zero_timeouts_wait_forever() -> None:
    collector = DigitCollector(DigitRules(max_digits=3, digit_timeout=0, initial_timeout=0))
    assert ticks(collector, 10_000) == []
    collector.digit("1")
    assert ticks(collector, 10_000) == []
    assert not collector.done


def test_fail_is_error_and_stop_reports_what_came() -> None:
    failed = DigitCollector(DigitRules(max_digits=3))
    failed.digit("1")
    assert failed.fail() == CollectResult(Outcome.ERROR, "1")
    stopped = DigitCollector(DigitRules(max_digits=3))
    stopped.digit("4")
    assert stopped.stop() == CollectResult(Outcome.DIGIT, "4")
    assert DigitCollector(DigitRules(max_digits=3)).stop() == CollectResult(Outcome.NO_INPUT)
    assert stopped.fail() == CollectResult(Outcome.DIGIT, "4")  # the first end stays


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="max_digits"):
        DigitRules(max_digits=0)
    with pytest.raises(ValueError, match="timeouts"):
        DigitRules(max_digits=1, digit_timeout=-1)


def test_frames_for_rounds_to_frames() -> None:
    assert frames_for(5.0) == 250 and frames_for(0.001) == 1 and frames_for(0) == 0


DIGIT = st.sampled_from("0123456789*#ABCD")


@given(
    max_digits=st.integers(1, 6),
    terminators=st.text(alphabet="#*", max_size=2),
    steps=st.lists(st.one_of(DIGIT, st.integers(1, 400)), max_size=30),
)
def test_property_the_result_is_the_input_up_to_its_end(
        max_digits: int, terminators: str, steps: list[str | int]) -> None:
    """Whatever comes in: at most one result; its digits are the digits fed up to the end,
    without terminators, at most max_digits of them; a terminator result names the one
    pressed."""
    collector = DigitCollector(DigitRules(max_digits, terminators, digit_timeout=2,
                                          initial_timeout=3))
    fed = ""
    results = []
    for step in steps:
        if isinstance(step, str):
            if not collector.done:
                fed += step
            result = collector.digit(step)
            if result is not None:
                results.append(result)
        else:
            results += ticks(collector, step)
    assert len(results) <= 1
    if not results:
        assert not collector.done
        return
    (result,) = results
    assert collector.result == result
    if result.outcome is Outcome.NO_INPUT:
        assert fed == "" and result.digits == ""
        return
    assert result.outcome is Outcome.DIGIT
    assert len(result.digits) <= max_digits
    assert not any(ch in terminators for ch in result.digits)
    assert fed == result.digits + result.terminator  # nothing lost, nothing after the end
    assert result.terminator == "" or result.terminator in terminators
