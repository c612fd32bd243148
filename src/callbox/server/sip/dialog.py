"""SIP dialog state (RFC 3261 §12): creation from either side and in-dialog request building."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from callbox.server.sip.headers import NameAddr, SipParseError
from callbox.server.sip.message import Headers, SipRequest, SipResponse, new_branch

MAX_FORWARDS = 70
# Requests whose Contact replaces the remote target (RFC 3261 §12.2.2; RFC 3311 for UPDATE).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# Requests that reuse the CSeq number of the request they belong to.
SAME_CSEQ_METHODS = frozenset({"ACK", "CANCEL"})

DialogKey = tuple[str, str, str | None]


def _strip_tag(addr: NameAddr) -> str:
    return str(addr.without_tag())


def _contact_uri(message: SipRequest | SipResponse) -> str:
    contact = message.headers.get("Contact")
    if contact is None:
        raise SipParseError("missing Contact header")
    return str(NameAddr.parse(contact).uri)


@dataclass
class Dialog:
    """`local_uri`/`remote_uri` are From/To name-addr values without their tag."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None

    @classmethod
    def as_uas(cls, request: SipRequest, local_tag: str) -> Dialog:
        """Dialog created by our 2xx/1xx to a dialog-creating request (§12.1.1)."""
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag,
            local_uri=_strip_tag(request.to_addr),
            remote_uri=_strip_tag(request.from_addr),
            remote_target=_contact_uri(request),
            route_set=request.headers.get_all("Record-Route"),
            local_seq=0,
            remote_seq=request.cseq.seq,
        )

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """Dialog created by a 2xx/1xx (with To tag) to our request (§12.1.2)."""
        local_tag = request.from_tag
        if local_tag is None:
            raise SipParseError("our request has no From tag")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=response.to_tag,
            local_uri=_strip_tag(request.from_addr),
            remote_uri=_strip_tag(response.to_addr),
            remote_target=_contact_uri(response),
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=request.cseq.seq,
            remote_seq=None,
        )

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.local_tag, self.remote_tag)

    def create_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        cseq: int | None = None,
    ) -> SipRequest:
        """Build an in-dialog request (§12.2.1.1).

        `via` is our Via value without a branch; a fresh branch is appended. Without `cseq` the
        local sequence number is incremented, except for ACK, which reuses it (the ACK for a 2xx
        carries the INVITE's number).
        """
        if cseq is None:
            if method not in SAME_CSEQ_METHODS:
                self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self._request_target()
        headers = Headers()
        headers.add("Via", f"{via};branch={new_branch()}")
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        for route in routes:
            headers.add("Route", route)
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        to = (
            self.remote_uri
            if self.remote_tag is None
            else f"{self.remote_uri};tag={self.remote_tag}"
        )
        headers.add("To", to)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        if contact is not None:
            headers.add("Contact", contact if "<" in contact else f"<{contact}>")
        for name, value in extra_headers:
            headers.add(name, value)
        if content_type is not None:
            headers.set("Content-Type", content_type)
        return SipRequest(method, uri, headers, body)

    def _request_target(self) -> tuple[str, list[str]]:
        """Request-URI and Route values: loose routing if the first route has `lr` (§12.2.1.1)."""
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0])
        if "lr" in first.uri.params:
            return self.remote_target, list(self.route_set)
        # Strict routing (RFC 2543 proxies): the first route becomes the Request-URI.
        params = {k: v for k, v in first.uri.params.items() if k != "method"}
        uri = dataclasses.replace(first.uri, params=params, headers={})
        return str(uri), [*self.route_set[1:], f"<{self.remote_target}>"]

    def accept_remote_request(self, request: SipRequest) -> bool:
        """Check the CSeq ordering of a request from the peer (§12.2.2).

        False means it is out of order (answer 500). ACK and CANCEL are not ordered: they carry
        the number of the request they belong to.
        """
        if request.method in SAME_CSEQ_METHODS:
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        if request.method in TARGET_REFRESH_METHODS and "Contact" in request.headers:
            self.remote_target = _contact_uri(request)
        return True

    def refresh_target(self, response: SipResponse) -> None:
        """Update the remote target from a 2xx to our target refresh request (re-INVITE)."""
        if "Contact" in response.headers:
            self.remote_target = _contact_uri(response)


def dialog_key_from_request(request: SipRequest, *, uas: bool) -> DialogKey:
    """Dialog key of a request: `uas=True` for a request we received, False for one we sent."""
    if uas:
        local, remote = request.to_tag, request.from_tag
    else:
        local, remote = request.from_tag, request.to_tag
    return (request.call_id, local or "", remote)


def dialog_key_from_response(response: SipResponse) -> DialogKey:
    """Dialog key of a response to a request we sent (we are the UAC)."""
    return (response.call_id, response.from_tag or "", response.to_tag)
