"""The registration state machine: refresh at 80 %, capped doubling backoff, stop rules."""

from __future__ import annotations

import pytest

from callbox.server.config import Config, Trunk
from callbox.server.inbound import dialled_user, trunk_refusing
from callbox.server.sip.message import SipRequest, SipResponse, parse_message
from callbox.server.sip.registration import (
    Registration,
    RegistrationProtocolError,
    RegistrationState,
)
from callbox.server.sip.registration_runner import granted_expires


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


def response_with(*headers: tuple[str, str]) -> SipResponse:
    lines = ["SIP/2.0 200 OK", "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx",
             "From: <sip:u@h>;tag=a", "To: <sip:u@h>;tag=b", "Call-ID: c", "CSeq: 2 REGISTER",
             *(f"{n}: {v}" for n, v in headers), "Content-Length: 0", "", ""]
    response = parse_message("\r\n".join(lines).encode())
    assert isinstance(response, SipResponse)
    return response


def test_granted_time_is_our_contacts_expires_param_then_expires_then_asked() -> None:
    ours = "sip:callbox@127.0.0.1:5062"
    both = response_with(("Contact", "<sip:other@10.0.0.1>;expires=999"),
                         ("Contact", f"<{ours}>;expires=45"), ("Expires", "70"))
    assert granted_expires(both, ours, 300) == 45
    assert granted_expires(response_with(("Expires", "70")), ours, 300) == 70
    assert granted_expires(response_with(), ours, 300) == 300


def test_a_call_to_our_registered_contact_is_dialled_by_its_to_user() -> None:
    config = Config(trunks=[Trunk(name="c", proxy="h", username="callbox", register=True)])

    def invite(uri: str, to: str) -> SipRequest:
        request = SipRequest("INVITE", uri)
        request.headers.add("To", to)
        return request

    assert dialled_user(invite("sip:callbox@10.0.0.2:5060", "<sip:+15550123@carrier>"),
                        config) == "+15550123"
    assert dialled_user(invite("sip:prompt@10.0.0.2", "<sip:+15550123@carrier>"),
                        config) == "prompt"
    assert dialled_user(invite("sip:callbox@10.0.0.2", "<sip:+1@c>"), Config()) == "callbox"


def test_allow_refuses_calls_to_our_contact_from_other_networks() -> None:
    trunk = Trunk(name="c", proxy="h", username="callbox", register=True,
                  allow=["192.0.2.0/24"])
    config = Config(trunks=[trunk])

    def invite(uri: str, received: str) -> SipRequest:
        request = SipRequest("INVITE", uri)
        request.headers.add("Via", f"SIP/2.0/UDP {received}:5060;branch=z9hG4bKa;"
                                   f"received={received}")
        return request

    assert trunk_refusing(invite("sip:callbox@10.0.0.2", "198.51.100.7"), config) is trunk
    assert trunk_refusing(invite("sip:callbox@10.0.0.2", "192.0.2.9"), config) is None
    assert trunk_refusing(invite("sip:other@10.0.0.2", "198.51.100.7"), config) is None
