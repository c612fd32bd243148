"""The outbound call (UAC side of an INVITE) as a sans-I/O state machine.

Fed the responses to our INVITE (as the INVITE client transaction delivers them), the caller's
wish to give up, and "no response" timeouts; returns actions for the I/O around it: messages to
send (ACK for a 2xx, CANCEL), a BYE to send in the dialog, early media to configure, and the
outcome. Every legal transition is written out in `TRANSITIONS`, h11 style; anything else raises
`UacError`.

Outcomes that no SIP response states directly get a synthesized status: 408 when nothing
answered (timer B, or no final response after our CANCEL), 487 when we cancelled, 488 when a 2xx
carried no usable SDP answer (the dialog is then ACKed and ended with BYE).
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass

from callbox.server.sip.dialog import Dialog
from callbox.server.sip.headers import SipParseError
from callbox.server.sip.message import Headers, SipRequest, SipResponse
from callbox.server.sip.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    UnsupportedContentType,
    accept_answer,
    parse_sdp,
    sdp_body,
)

NO_RESPONSE_STATUS = 408
CANCELLED_STATUS = 487
BAD_ANSWER_STATUS = 488


class UacState(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing heard yet
    PROCEEDING = "proceeding"  # a provisional response came (100, 180, 183 without SDP)
    EARLY = "early"  # a provisional response with SDP: early media flows
    CANCELLING = "cancelling"  # we gave up; waiting for the INVITE's final response (487)
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class UacEvent(enum.Enum):
    PROVISIONAL = "1xx"
    EARLY_MEDIA = "1xx with SDP"
    ANSWER = "2xx with a usable SDP answer"
    BAD_ANSWER = "2xx without a usable SDP answer"
    REJECTED = "3xx-6xx"
    NO_RESPONSE = "no (final) response in time"
    CANCEL = "the caller gives up"


S, E = UacState, UacEvent
_RINGING = {
    E.PROVISIONAL: S.PROCEEDING,
    E.EARLY_MEDIA: S.EARLY,
    E.ANSWER: S.ANSWERED,
    E.BAD_ANSWER: S.FAILED,
    E.REJECTED: S.FAILED,
    E.NO_RESPONSE: S.FAILED,
    E.CANCEL: S.CANCELLING,
}

# Every legal (state, event) -> next state. A 2xx in a final state is a retransmission (or a
# late answer to a call we already gave up): it is ACKed again and changes nothing.
TRANSITIONS: dict[UacState, dict[UacEvent, UacState]] = {
    S.CALLING: dict(_RINGING),
    S.PROCEEDING: dict(_RINGING),
    S.EARLY: {**_RINGING, E.PROVISIONAL: S.EARLY},
    S.CANCELLING: {
        E.PROVISIONAL: S.CANCELLING,
        E.EARLY_MEDIA: S.CANCELLING,
        E.ANSWER: S.CANCELLED,
        E.BAD_ANSWER: S.CANCELLED,
        E.REJECTED: S.CANCELLED,
        E.NO_RESPONSE: S.CANCELLED,
        E.CANCEL: S.CANCELLING,
    },
    S.ANSWERED: {E.ANSWER: S.ANSWERED, E.BAD_ANSWER: S.ANSWERED},
    S.FAILED: {E.ANSWER: S.FAILED, E.BAD_ANSWER: S.FAILED},
    S.CANCELLED: {E.ANSWER: S.CANCELLED, E.BAD_ANSWER: S.CANCELLED},
}
del S, E

FINAL_STATES = frozenset({UacState.ANSWERED, UacState.FAILED, UacState.CANCELLED})


class UacError(RuntimeError):
    """An event the outbound call's state does not allow (see `TRANSITIONS`)."""


@dataclass(frozen=True)
class SendMessage:
    """Send outside any transaction of ours: the ACK for a 2xx."""

    message: SipRequest


@dataclass(frozen=True)
class SendCancel:
    """Send in its own non-INVITE client transaction, to where the INVITE went."""

    cancel: SipRequest


@dataclass(frozen=True)
class Hangup:
    """End the dialog the 2xx created (it is ACKed): a BYE in `OutboundCall.dialog`."""

    reason: str


@dataclass(frozen=True)
class EarlyMedia:
    media: NegotiatedMedia
    response: SipResponse


@dataclass(frozen=True)
class Answered:
    media: NegotiatedMedia
    response: SipResponse


@dataclass(frozen=True)
class Failed:
    """The call ended before an answer (state FAILED or CANCELLED)."""

    status: int
    reason: str


UacAction = SendMessage | SendCancel | Hangup | EarlyMedia | Answered | Failed


def make_cancel(invite: SipRequest) -> SipRequest:
    """CANCEL for our INVITE (RFC 3261 §9.1): same Request-URI, top Via, From, To, Call-ID,
    CSeq number and Route set."""
    headers = Headers()
    headers.add("Via", str(invite.top_via))
    headers.add("Max-Forwards", "70")
    for name, value in invite.headers:
        if name.lower() == "route":
            headers.add(name, value)
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return SipRequest("CANCEL", invite.uri, headers)


def _via_without_branch(invite: SipRequest) -> str:
    via = copy.deepcopy(invite.top_via)
    via.params.pop("branch", None)
    return str(via)


class OutboundCall:
    """One INVITE we sent, from the first response to its outcome."""

    def __init__(self, invite: SipRequest, offer: SessionDescription) -> None:
        self.invite = invite
        self.offer = offer
        self.state = UacState.CALLING
        self.dialog: Dialog | None = None  # from the first 2xx
        self.media: NegotiatedMedia | None = None  # from the 2xx (or early media until then)
        self.status = 0  # of the outcome, once final
        self.reason = ""
        self._cancel_reason = ""
        self._cancel_sent = False
        self._provisional_seen = False

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def cancel_requested(self) -> bool:
        return bool(self._cancel_reason)

    def resent(self, invite: SipRequest) -> None:
        """The INVITE was challenged (401/407) and sent again with credentials, in a new
        transaction: CANCEL, the 2xx's ACK and the dialog follow the new one."""
        if self.finished or self.cancel_requested:
            raise UacError(f"INVITE re-sent in state {self.state.value}")
        self.invite = invite
        self._provisional_seen = False

    def _move(self, event: UacEvent) -> UacState:
        following = TRANSITIONS[self.state].get(event)
        if following is None:
            raise UacError(f"{event.value} in state {self.state.value}")
        previous, self.state = self.state, following
        return previous

    def receive(self, response: SipResponse) -> list[UacAction]:
        """A response to our INVITE, as delivered by the INVITE client transaction."""
        if response.status < 200:
            return self._provisional(response)
        if response.status < 300:
            return self._success(response)
        self._move(UacEvent.REJECTED)
        if self.state is UacState.CANCELLED:
            return self._end(CANCELLED_STATUS, self._cancel_reason)
        return self._end(response.status, response.reason)

    def cancel(self, reason: str) -> list[UacAction]:
        """The caller gives up (ring timeout, abandoned). CANCEL goes out once a provisional
        response came (RFC 3261 §9.1); before that it waits for one (or for timer B)."""
        self._move(UacEvent.CANCEL)
        if not self._cancel_reason:
            self._cancel_reason = reason
        return self._send_cancel()

    def no_response(self, reason: str) -> list[UacAction]:
        """Timer B fired, or no final response came in 64*T1 after our CANCEL."""
        self._move(UacEvent.NO_RESPONSE)
        if self.state is UacState.CANCELLED:
            return self._end(CANCELLED_STATUS, self._cancel_reason)
        return self._end(NO_RESPONSE_STATUS, reason)

    def _provisional(self, response: SipResponse) -> list[UacAction]:
        self._provisional_seen = True
        media = self._answer_in(response) if response.body else None
        event = UacEvent.PROVISIONAL if isinstance(media, str | None) else UacEvent.EARLY_MEDIA
        self._move(event)
        if self.state is UacState.CANCELLING:
            return self._send_cancel()
        if isinstance(media, NegotiatedMedia):
            self.media = media
            return [EarlyMedia(media, response)]
        return []

    def _send_cancel(self) -> list[UacAction]:
        if self._cancel_sent or self.state is not UacState.CANCELLING:
            return []
        if not self._provisional_seen:
            return []
        self._cancel_sent = True
        return [SendCancel(make_cancel(self.invite))]

    def _success(self, response: SipResponse) -> list[UacAction]:
        media = self._answer_in(response)
        previous = self._move(
            UacEvent.ANSWER if isinstance(media, NegotiatedMedia) else UacEvent.BAD_ANSWER
        )
        first = self.dialog is None
        if first:
            self.dialog = self._dialog_for(response)
        actions: list[UacAction] = [SendMessage(self._ack(response))]
        if not first or previous in FINAL_STATES:
            return actions  # a retransmitted 2xx: ACK it again, nothing more
        if self.state is UacState.CANCELLED:
            return [*actions, Hangup("answered after we cancelled"),
                    *self._end(CANCELLED_STATUS, self._cancel_reason)]
        if isinstance(media, str):
            return [*actions, Hangup(media), *self._end(BAD_ANSWER_STATUS, media)]
        self.media = media
        self.status, self.reason = response.status, response.reason
        return [*actions, Answered(media, response)]

    def _answer_in(self, response: SipResponse) -> NegotiatedMedia | str:
        """The media negotiated by the SDP in `response`, or why there is none."""
        if not response.body:
            return f"no SDP answer in the {response.status} {response.reason}"
        try:
            return accept_answer(self.offer, parse_sdp(sdp_body(response.body,
                                                                response.content_type)))
        except (SdpError, UnsupportedContentType) as exc:
            return f"unusable SDP answer in the {response.status}: {exc}"

    def _dialog_for(self, response: SipResponse) -> Dialog:
        try:
            return Dialog.as_uac(self.invite, response)
        except SipParseError:  # no usable Contact: in-dialog requests go where the INVITE went
            return Dialog.as_uac(self.invite, _with_contact(response, self.invite.uri))

    def _ack(self, response: SipResponse) -> SipRequest:
        """The ACK of a 2xx carries the CSeq number of the INVITE it answers (which may be a
        retry of ours, with credentials)."""
        assert self.dialog is not None
        self.dialog.local_seq = max(self.dialog.local_seq, response.cseq.seq)
        return self.dialog.create_request("ACK", via=_via_without_branch(self.invite),
                                          contact=None, cseq=response.cseq.seq)

    def _end(self, status: int, reason: str) -> list[UacAction]:
        self.status, self.reason = status, reason
        return [Failed(status, reason)]


def _with_contact(response: SipResponse, uri: str) -> SipResponse:
    headers = Headers()
    for name, value in response.headers:
        if name.lower() not in ("contact", "m"):
            headers.add(name, value)
    headers.add("Contact", f"<{uri}>")
    return SipResponse(response.status, response.reason, headers, response.body)
