"""The registration state machine: refresh at 80 %, capped doubling backoff, stop rules."""

from __future__ import annotations

import pytest

from callbox.server.sip.registration import (
    Registration,
    RegistrationProtocolError,
    RegistrationState,
)


def test_success_schedules_the_refresh_at_80_percent_of_the_granted_time() -> None:
    reg = Registration(expires=300)
    assert reg.start() and reg.summary == "registering"
    assert reg.succeeded(100.0, granted=60)
    assert reg.summary == "registered" and reg.deadline == pytest.approx(148.0)
    assert not reg.due(147.9) and reg.summary == "registered"
    assert reg.due(148.0) and reg.summary == "registering"


def test_failures_back_off_doubling_to_the_cap_and_reset_on_success() -> None:
    reg = Registration(expires=300)
    reg.start()
    waits = []
    now = 0.0
    for _ in range(10):
        reg.failed(now, "401 Unauthorized")
        assert reg.state is RegistrationState.FAILED and reg.summary == "failed: 401 Unauthorized"
        assert reg.deadline is not None
        waits.append(reg.deadline - now)
        now = reg.deadline
        assert reg.due(now)
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    reg.succeeded(now, granted=300)
    reg.due(now + 240)
    reg.failed(now + 240, "timeout")
    assert reg.deadline == pytest.approx(now + 242)  # the backoff starts again at 2 s


def test_stop_unregisters_only_when_a_binding_may_exist() -> None:
    reg = Registration(expires=300)
    reg.start()
    reg.succeeded(0.0, 300)
    assert reg.stop() and reg.summary == "stopping"
    reg.unregistered()
    assert reg.summary == "stopped" and reg.deadline is None

    failed = Registration(expires=300)
    failed.start()
    failed.failed(0.0, "403 Forbidden")
    assert not failed.stop() and failed.state is RegistrationState.STOPPED


def test_events_out_of_order_are_refused() -> None:
    reg = Registration(expires=300)
    with pytest.raises(RegistrationProtocolError, match="succeeded in state idle"):
        reg.succeeded(0.0, 300)
    assert not reg.due(1e9)  # nothing is due before the start
