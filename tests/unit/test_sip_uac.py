"""The outbound call's state machine (sip/uac.py): every row of its transition table, the
actions each one returns, and the events it refuses."""

from __future__ import annotations

import pytest

from callbox.server.sip.message import Headers, SipRequest, SipResponse, make_response
from callbox.server.sip.sdp import make_offer
from callbox.server.sip.uac import (
    BAD_ANSWER_STATUS,
    CANCELLED_STATUS,
    FINAL_STATES,
    NO_RESPONSE_STATUS,
    TRANSITIONS,
    Answered,
    EarlyMedia,
    Failed,
    Hangup,
    OutboundCall,
    SendCancel,
    SendMessage,
    UacAction,
    UacError,
    UacEvent,
    UacState,
    make_cancel,
)

OFFER = make_offer(local_host="192.0.2.10", local_port=40000, session_id=1, session_version=1)


def answer_sdp(payload_types: str = "0 101", rtpmap: str = "a=rtpmap:0 PCMU/8000\r\n") -> bytes:
    return (
        "v=0\r\no=bob 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
        f"m=audio 30000 RTP/AVP {payload_types}\r\n{rtpmap}"
        "a=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


def invite() -> SipRequest:
    headers = Headers([
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bKours"),
        ("Max-Forwards", "70"),
        ("Route", "<sip:proxy.example.com;lr>"),
        ("From", "<sip:callbox@192.0.2.10>;tag=ourtag"),
        ("To", "<sip:bob@198.51.100.7>"),
        ("Call-ID", "out-1@192.0.2.10"),
        ("CSeq", "7 INVITE"),
        ("Contact", "<sip:callbox@192.0.2.10:5060>"),
    ])
    return SipRequest("INVITE", "sip:bob@198.51.100.7", headers, OFFER.serialize())


def response(status: int, body: bytes = b"", *, contact: bool = True) -> SipResponse:
    headers = [("Contact", "<sip:bob@198.51.100.7:5062>")] if contact else []
    return make_response(invite(), status, to_tag="bobtag" if status > 100 else None,
                         headers=headers, body=body,
                         content_type="application/sdp" if body else None)


EVENT_RESPONSES: dict[UacEvent, SipResponse] = {
    UacEvent.PROVISIONAL: response(180),
    UacEvent.EARLY_MEDIA: response(183, answer_sdp()),
    UacEvent.ANSWER: response(200, answer_sdp()),
    UacEvent.BAD_ANSWER: response(200),
    UacEvent.REJECTED: response(486),
}


def feed(call: OutboundCall, event: UacEvent) -> list[UacAction]:
    if event is UacEvent.CANCEL:
        return call.cancel("ring timeout")
    if event is UacEvent.NO_RESPONSE:
        return call.no_response("no response to INVITE")
    return call.receive(EVENT_RESPONSES[event])


# How to bring a fresh call into each state.
PATHS: dict[UacState, list[UacEvent]] = {
    UacState.CALLING: [],
    UacState.PROCEEDING: [UacEvent.PROVISIONAL],
    UacState.EARLY: [UacEvent.EARLY_MEDIA],
    UacState.CANCELLING: [UacEvent.PROVISIONAL, UacEvent.CANCEL],
    UacState.ANSWERED: [UacEvent.ANSWER],
    UacState.FAILED: [UacEvent.BAD_ANSWER],
    UacState.CANCELLED: [UacEvent.PROVISIONAL, UacEvent.CANCEL, UacEvent.REJECTED],
}


def call_in(state: UacState) -> OutboundCall:
    call = OutboundCall(invite(), OFFER)
    for event in PATHS[state]:
        feed(call, event)
    assert call.state is state
    return call


ROWS = [(state, event, following) for state, row in TRANSITIONS.items()
        for event, following in row.items()]
ILLEGAL = [(state, event) for state in UacState for event in UacEvent
           if event not in TRANSITIONS[state]]


def test_every_state_has_a_row_and_only_final_states_have_no_way_back() -> None:
    assert set(TRANSITIONS) == set(UacState)
    assert {UacState.ANSWERED, UacState.FAILED, UacState.CANCELLED} == FINAL_STATES
    for state in FINAL_STATES:
        assert set(TRANSITIONS[state].values()) == {state}


@pytest.mark.parametrize(("state", "event", "following"), ROWS,
                         ids=[f"{s.value}-{e.name}" for s, e, _ in ROWS])
def test_each_transition(state: UacState, event: UacEvent, following: UacState) -> None:
    call = call_in(state)
    actions = feed(call, event)
    assert call.state is following
    kinds = [type(action) for action in actions]
    if event in (UacEvent.ANSWER, UacEvent.BAD_ANSWER):
        assert kinds[0] is SendMessage and actions[0].message.method == "ACK"  # type: ignore[union-attr]
    if following in (UacState.FAILED, UacState.CANCELLED) and state not in FINAL_STATES:
        assert kinds[-1] is Failed
    if state in FINAL_STATES:
        assert kinds == [SendMessage]  # a retransmitted 2xx is only ACKed again


@pytest.mark.parametrize(("state", "event"), ILLEGAL,
                         ids=[f"{s.value}-{e.name}" for s, e in ILLEGAL])
def test_illegal_events_raise_and_change_nothing(state: UacState, event: UacEvent) -> None:
    call = call_in(state)
    with pytest.raises(UacError, match=state.value):
        feed(call, event)
    assert call.state is state


def test_answer_acks_the_2xx_in_the_dialog_and_reports_the_media() -> None:
    call = OutboundCall(invite(), OFFER)
    actions = call.receive(response(200, answer_sdp()))
    ack, answered = actions
    assert isinstance(ack, SendMessage) and isinstance(answered, Answered)
    assert ack.message.method == "ACK"
    assert ack.message.cseq.seq == 7 and ack.message.cseq.method == "ACK"
    assert ack.message.uri == "sip:bob@198.51.100.7:5062"  # the 2xx's Contact
    assert ack.message.to_tag == "bobtag" and ack.message.from_tag == "ourtag"
    assert ack.message.branch != "z9hG4bKours"  # the 2xx ACK is a transaction of its own
    assert answered.media.remote_host == "198.51.100.7" and answered.media.remote_port == 30000
    assert answered.media.codec == "PCMU"
    assert (call.status, call.reason) == (200, "OK")
    assert call.dialog is not None and call.dialog.remote_tag == "bobtag"


def test_a_retransmitted_2xx_is_acked_again() -> None:
    call = OutboundCall(invite(), OFFER)
    first = call.receive(response(200, answer_sdp()))[0]
    again = call.receive(response(200, answer_sdp()))
    assert len(again) == 1 and isinstance(again[0], SendMessage) and isinstance(first, SendMessage)
    assert again[0].message.cseq == first.message.cseq
    assert again[0].message.method == "ACK"


def test_a_2xx_without_sdp_is_acked_then_hung_up_and_fails() -> None:
    call = OutboundCall(invite(), OFFER)
    ack, hangup, failed = call.receive(response(200))
    assert isinstance(ack, SendMessage) and isinstance(hangup, Hangup)
    assert failed == Failed(BAD_ANSWER_STATUS, "no SDP answer in the 200 OK")
    assert call.state is UacState.FAILED


def test_a_2xx_naming_a_codec_we_did_not_offer_fails() -> None:
    g729 = answer_sdp("18", "a=rtpmap:18 G729/8000\r\n")
    call = OutboundCall(invite(), OFFER)
    actions = call.receive(response(200, g729))
    assert [type(a) for a in actions] == [SendMessage, Hangup, Failed]
    failed = actions[-1]
    assert isinstance(failed, Failed) and failed.status == BAD_ANSWER_STATUS
    assert "G729" in failed.reason


@pytest.mark.parametrize("contact", [None, "<sip:bob@[bad>"])
def test_a_2xx_without_a_usable_contact_is_acked_at_the_request_uri(contact: str | None) -> None:
    ok = response(200, answer_sdp(), contact=False)
    if contact is not None:
        ok.headers.add("Contact", contact)
    call = OutboundCall(invite(), OFFER)
    ack, answered = call.receive(ok)
    assert isinstance(ack, SendMessage) and ack.message.uri == "sip:bob@198.51.100.7"
    assert isinstance(answered, Answered)


@pytest.mark.parametrize(("status", "reason"), [(302, "Moved Temporarily"), (486, "Busy Here"),
                                                (503, "Service Unavailable"), (603, "Decline")])
def test_3xx_to_6xx_fail_with_their_code(status: int, reason: str) -> None:
    call = OutboundCall(invite(), OFFER)
    assert call.receive(response(status)) == [Failed(status, reason)]
    assert call.state is UacState.FAILED


def test_183_with_sdp_is_early_media_and_180_keeps_it() -> None:
    call = OutboundCall(invite(), OFFER)
    (early,) = call.receive(response(183, answer_sdp()))
    assert isinstance(early, EarlyMedia) and early.media.remote_port == 30000
    assert call.media == early.media
    assert call.receive(response(180)) == []
    assert call.state is UacState.EARLY


def test_183_with_unusable_sdp_is_only_progress() -> None:
    call = OutboundCall(invite(), OFFER)
    assert call.receive(response(183, b"garbage")) == []
    assert call.state is UacState.PROCEEDING and call.media is None


def test_cancel_waits_for_a_provisional_response() -> None:
    call = OutboundCall(invite(), OFFER)
    assert call.cancel("abandoned") == []  # RFC 3261 §9.1: not before a provisional
    (cancel,) = call.receive(response(100))
    assert isinstance(cancel, SendCancel)
    assert call.receive(response(180)) == []  # only one CANCEL
    assert call.receive(response(487)) == [Failed(CANCELLED_STATUS, "abandoned")]
    assert call.state is UacState.CANCELLED


def test_cancel_copies_the_invite_identity() -> None:
    call = call_in(UacState.PROCEEDING)
    (action,) = call.cancel("ring timeout")
    assert isinstance(action, SendCancel)
    cancel, ours = action.cancel, invite()
    assert cancel == make_cancel(ours)
    assert cancel.method == "CANCEL" and cancel.uri == ours.uri
    assert cancel.branch == ours.branch and str(cancel.top_via) == str(ours.top_via)
    assert (cancel.cseq.seq, cancel.cseq.method) == (7, "CANCEL")
    for name in ("From", "To", "Call-ID", "Route"):
        assert cancel.headers.get(name) == ours.headers.get(name)


def test_an_answer_racing_our_cancel_is_acked_and_hung_up() -> None:
    call = call_in(UacState.CANCELLING)
    actions = call.receive(response(200, answer_sdp()))
    assert [type(a) for a in actions] == [SendMessage, Hangup, Failed]
    assert actions[-1] == Failed(CANCELLED_STATUS, "ring timeout")


def test_no_response_fails_with_408_but_after_cancel_counts_as_cancelled() -> None:
    call = OutboundCall(invite(), OFFER)
    assert call.no_response("no response to INVITE") == [
        Failed(NO_RESPONSE_STATUS, "no response to INVITE")]
    cancelling = call_in(UacState.CANCELLING)
    assert cancelling.no_response("no final response after CANCEL") == [
        Failed(CANCELLED_STATUS, "ring timeout")]
