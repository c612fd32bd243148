"""RFC 3261 §17 transactions driven with fake clocks: exact retransmission and timeout times."""

from __future__ import annotations

import pytest

from callbox.server.sip.message import (
    Headers,
    SipRequest,
    make_cancel,
    make_response,
    parse_message,
)
from callbox.server.sip.transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    Terminated,
    Timeout,
    Timers,
    Transaction,
    TransactionError,
    TransactionState,
    cancel_target_key,
    client_key,
    make_ack,
    server_key,
)

START = 1000.0
TIMERS = Timers()  # T1=0.5, T2=4, T4=5


def request(
    method: str = "INVITE", branch: str = "z9hG4bKtest1", sent_by: str = "10.0.0.1:5060"
) -> SipRequest:
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP {sent_by};branch={branch}"),
            ("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy"),
            ("Max-Forwards", "70"),
            ("Route", "<sip:edge.example.com;lr>"),
            ("From", "<sip:alice@example.com>;tag=alice1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "call-1@example.com"),
            ("CSeq", f"5 {method}"),
        ]
    )
    return SipRequest(method, "sip:bob@example.com", headers)


def ack_for(invite: SipRequest, branch: str | None = None) -> SipRequest:
    ack = SipRequest("ACK", invite.uri, invite.headers.copy())
    ack.headers.set("CSeq", f"{invite.cseq.seq} ACK")
    if branch is not None:
        ack.headers.set("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch={branch}")
    return ack


def run_timers(txn: Transaction, until: float) -> list[tuple[float, Action]]:
    """Call on_timer at each deadline up to `until`; return (time relative to START, action)."""
    events: list[tuple[float, Action]] = []
    while txn.deadline is not None and txn.deadline <= until:
        now = txn.deadline
        events += [(round(now - START, 6), a) for a in txn.on_timer(now)]
    return events


def send_times(events: list[tuple[float, Action]]) -> list[float]:
    return [t for t, a in events if isinstance(a, Send)]


# -- server INVITE -------------------------------------------------------------------------------


def test_server_invite_2xx_retransmitted_until_timeout() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    assert txn.state is TransactionState.PROCEEDING
    assert txn.deadline is None
    ok = make_response(invite, 200, to_tag="b")
    assert txn.send_response(ok, START) == [Send(ok)]
    assert txn.state is TransactionState.ACCEPTED
    events = run_timers(txn, START + 100)
    assert send_times(events) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(a == Send(ok) for _, a in events if isinstance(a, Send))
    assert events[-2:] == [(32.0, Timeout("no ACK for 2xx")), (32.0, Terminated())]
    assert txn.terminated and txn.deadline is None
    assert txn.on_timer(START + 200) == []


def test_server_invite_2xx_ack_stops_retransmission() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    ok = make_response(invite, 200, to_tag="b")
    txn.send_response(ok, START)
    assert send_times(run_timers(txn, START + 2)) == [0.5, 1.5]
    assert txn.deadline == START + 3.5
    assert txn.ack_received(START + 2) == [Terminated()]
    assert txn.terminated
    assert txn.deadline is None
    assert txn.ack_received(START + 3) == []


def test_server_invite_retransmitted_invite() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    assert txn.receive(invite, START + 0.1) == []  # nothing sent yet
    trying = make_response(invite, 100)
    ringing = make_response(invite, 180, to_tag="b")
    txn.send_response(trying, START + 0.01)
    assert txn.receive(invite, START + 0.2) == [Send(trying)]
    txn.send_response(ringing, START + 0.3)
    assert txn.receive(invite, START + 0.4) == [Send(ringing)]
    assert txn.deadline is None  # provisional responses are not retransmitted
    ok = make_response(invite, 200, to_tag="b")
    txn.send_response(ok, START + 1)
    assert txn.receive(invite, START + 1.1) == [Send(ok)]


def test_server_invite_same_branch_ack_in_accepted_is_delivered() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    txn.send_response(make_response(invite, 200, to_tag="b"), START)
    ack = ack_for(invite)
    assert txn.receive(ack, START + 0.2) == [Deliver(ack), Terminated()]


def test_server_invite_extra_2xx_in_accepted_is_sent() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    txn.send_response(make_response(invite, 200, to_tag="b"), START)
    again = make_response(invite, 200, to_tag="b", body=b"x")
    assert txn.send_response(again, START + 0.1) == [Send(again)]
    assert run_timers(txn, START + 0.5) == [(0.5, Send(again))]


def test_server_invite_non_2xx_retransmitted_until_ack() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    busy = make_response(invite, 486, to_tag="b")
    assert txn.send_response(busy, START) == [Send(busy)]
    assert txn.state is TransactionState.COMPLETED
    assert send_times(run_timers(txn, START + 12)) == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert txn.receive(invite, START + 12) == [Send(busy)]  # retransmitted INVITE
    assert txn.receive(ack_for(invite), START + 13) == []
    assert txn.state is TransactionState.CONFIRMED
    assert txn.deadline == START + 13 + 5.0  # timer I = T4
    assert txn.receive(ack_for(invite), START + 14) == []  # ACK retransmission absorbed
    assert txn.receive(invite, START + 14) == []
    assert txn.on_timer(START + 17.9) == []
    assert txn.on_timer(START + 18) == [Terminated()]
    assert txn.terminated


def test_server_invite_non_2xx_timer_h() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    txn.send_response(make_response(invite, 603, to_tag="b"), START)
    events = run_timers(txn, START + 100)
    assert send_times(events)[-1] == 31.5
    assert events[-2:] == [(32.0, Timeout("no ACK")), (32.0, Terminated())]


def test_server_invite_small_timers() -> None:
    invite = request()
    timers = Timers(t1=0.01, t2=0.04, t4=0.05)
    txn = ServerInviteTransaction(invite, START, timers)
    txn.send_response(make_response(invite, 500), START)
    events = run_timers(txn, START + 1)
    assert send_times(events)[:6] == pytest.approx([0.01, 0.03, 0.07, 0.11, 0.15, 0.19])
    assert events[-1] == (pytest.approx(0.64), Terminated())


def test_server_invite_invalid_responses() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    txn.send_response(make_response(invite, 404), START)
    with pytest.raises(TransactionError):
        txn.send_response(make_response(invite, 200), START)
    with pytest.raises(TransactionError):
        txn.send_response(make_response(invite, 180), START)


def test_late_timer_call_does_not_burst() -> None:
    invite = request()
    txn = ServerInviteTransaction(invite, START, TIMERS)
    ok = make_response(invite, 200, to_tag="b")
    txn.send_response(ok, START)
    assert txn.on_timer(START + 0.4) == []
    assert txn.on_timer(START + 10) == [Send(ok)]
    assert txn.deadline is not None and txn.deadline > START + 10


# -- server non-INVITE ---------------------------------------------------------------------------


def test_server_non_invite() -> None:
    bye = request("BYE")
    txn = ServerNonInviteTransaction(bye, START, TIMERS)
    assert txn.state is TransactionState.TRYING
    assert txn.receive(bye, START + 0.1) == []  # absorbed while Trying
    trying = make_response(bye, 100)
    assert txn.send_response(trying, START + 0.2) == [Send(trying)]
    assert txn.state is TransactionState.PROCEEDING
    assert txn.receive(bye, START + 0.3) == [Send(trying)]
    ok = make_response(bye, 200)
    assert txn.send_response(ok, START + 1) == [Send(ok)]
    assert txn.state is TransactionState.COMPLETED
    assert txn.receive(bye, START + 2) == [Send(ok)]
    assert txn.deadline == START + 1 + 32.0  # timer J
    with pytest.raises(TransactionError):
        txn.send_response(make_response(bye, 500), START + 3)
    assert run_timers(txn, START + 100) == [(33.0, Terminated())]
    assert txn.receive(bye, START + 101) == []


# -- client INVITE -------------------------------------------------------------------------------


def test_client_invite_timer_a_and_b() -> None:
    invite = request()
    txn = ClientInviteTransaction(invite, START, TIMERS)
    assert txn.start() == [Send(invite)]
    with pytest.raises(TransactionError):
        txn.start()
    events = run_timers(txn, START + 100)
    assert send_times(events) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert events[-2:] == [(32.0, Timeout("no response to INVITE")), (32.0, Terminated())]


def test_client_invite_provisional_stops_retransmission() -> None:
    invite = request()
    txn = ClientInviteTransaction(invite, START, TIMERS)
    txn.start()
    assert send_times(run_timers(txn, START + 1)) == [0.5]
    ringing = make_response(invite, 180, to_tag="b")
    assert txn.receive(ringing, START + 1) == [Deliver(ringing)]
    assert txn.state is TransactionState.PROCEEDING
    assert txn.deadline is None  # no timer B once Proceeding either
    assert txn.receive(ringing, START + 2) == [Deliver(ringing)]


def test_client_invite_2xx_accepted_state() -> None:
    invite = request()
    txn = ClientInviteTransaction(invite, START, TIMERS)
    txn.start()
    ok = make_response(invite, 200, to_tag="b")
    assert txn.receive(ok, START + 0.2) == [Deliver(ok)]
    assert txn.state is TransactionState.ACCEPTED
    assert txn.receive(ok, START + 0.7) == [Deliver(ok)]  # the TU re-ACKs
    assert txn.receive(make_response(invite, 180, to_tag="b"), START + 0.8) == []
    assert txn.receive(make_response(invite, 486, to_tag="b"), START + 0.9) == []
    assert run_timers(txn, START + 100) == [(32.2, Terminated())]


def test_client_invite_non_2xx_sends_ack() -> None:
    invite = request()
    txn = ClientInviteTransaction(invite, START, TIMERS)
    txn.start()
    busy = make_response(invite, 486, to_tag="bobtag")
    actions = txn.receive(busy, START + 1)
    assert len(actions) == 2
    send, deliver = actions
    assert deliver == Deliver(busy)
    assert isinstance(send, Send)
    ack = send.message
    assert isinstance(ack, SipRequest)
    assert ack.method == "ACK"
    assert ack.uri == invite.uri
    assert ack.headers.get_all("Via") == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKtest1"]
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.headers.get("To") == "<sip:bob@example.com>;tag=bobtag"
    assert ack.call_id == invite.call_id
    assert str(ack.cseq) == "5 ACK"
    assert ack.headers.get_all("Route") == ["<sip:edge.example.com;lr>"]
    assert ack.body == b""
    assert parse_message(ack.serialize()).serialize() == ack.serialize()
    assert txn.state is TransactionState.COMPLETED
    # retransmitted final: the same ACK again, not delivered again
    assert txn.receive(busy, START + 2) == [Send(ack)]
    assert txn.receive(make_response(invite, 200, to_tag="x"), START + 3) == []
    assert run_timers(txn, START + 100) == [(33.0, Terminated())]  # timer D = 32 s


def test_make_ack_matches_transaction_ack() -> None:
    invite = request()
    busy = make_response(invite, 404, to_tag="t")
    txn = ClientInviteTransaction(invite, START, TIMERS)
    txn.start()
    txn.receive(busy, START)
    assert txn.ack is not None
    assert make_ack(invite, busy).serialize() == txn.ack.serialize()
    # the peer's server transaction matches this ACK to its INVITE transaction
    assert server_key(txn.ack) == server_key(invite)


# -- client non-INVITE ---------------------------------------------------------------------------


def test_client_non_invite_timer_e_and_f() -> None:
    bye = request("BYE")
    txn = ClientNonInviteTransaction(bye, START, TIMERS)
    assert txn.start() == [Send(bye)]
    events = run_timers(txn, START + 100)
    assert send_times(events) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events[-2:] == [(32.0, Timeout("no response to BYE")), (32.0, Terminated())]


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    bye = request("BYE")
    txn = ClientNonInviteTransaction(bye, START, TIMERS)
    txn.start()
    assert send_times(run_timers(txn, START + 1)) == [0.5]
    trying = make_response(bye, 100)
    assert txn.receive(trying, START + 1) == [Deliver(trying)]
    assert txn.state is TransactionState.PROCEEDING
    events = run_timers(txn, START + 14)
    assert send_times(events) == [1.5, 5.5, 9.5, 13.5]


def test_client_non_invite_final_and_timer_k() -> None:
    bye = request("BYE")
    txn = ClientNonInviteTransaction(bye, START, TIMERS)
    txn.start()
    ok = make_response(bye, 200)
    assert txn.receive(ok, START + 0.7) == [Deliver(ok)]
    assert txn.state is TransactionState.COMPLETED
    assert txn.receive(ok, START + 0.8) == []  # absorbed
    assert txn.deadline == START + 0.7 + 5.0
    assert run_timers(txn, START + 100) == [(5.7, Terminated())]


# -- matching ------------------------------------------------------------------------------------


def test_server_keys() -> None:
    invite = request()
    assert server_key(invite) == ("z9hG4bKtest1", "10.0.0.1", 5060, "INVITE")
    assert server_key(ack_for(invite)) == server_key(invite)
    cancel = make_cancel(invite)
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    assert server_key(request(sent_by="10.0.0.2:5060")) != server_key(invite)
    assert server_key(request(sent_by="10.0.0.1")) == server_key(invite)  # default port
    assert server_key(request(branch="z9hG4bKother")) != server_key(invite)
    assert server_key(request("BYE")) != server_key(invite)


def test_server_key_rfc2543_fallback() -> None:
    invite = request(branch="old-style")
    ack = ack_for(invite)
    ack.headers.set("To", "<sip:bob@example.com>;tag=added")
    assert server_key(ack) == server_key(invite)
    other = request(branch="old-style")
    other.headers.set("CSeq", "6 INVITE")
    assert server_key(other) != server_key(invite)
    assert cancel_target_key(make_cancel(invite)) == server_key(invite)


def test_client_keys() -> None:
    invite = request()
    assert client_key(invite) == ("z9hG4bKtest1", "INVITE")
    assert client_key(make_response(invite, 180)) == client_key(invite)
    cancel = make_cancel(invite)
    assert client_key(make_response(cancel, 200)) == ("z9hG4bKtest1", "CANCEL")
