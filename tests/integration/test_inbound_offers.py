"""Inbound INVITEs with unusual offers and SIP edge cases, over real UDP sockets (RawSip): each
gets its defined answer, and an accepted call sends its RTP to a numeric address resolved
before answering."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvloop
from tests.integration.conftest import RunningPlatform, running_platform
from tests.peers.rawsip import SDP_PCMU, RawSip

from callbox.server.sip.endpoint import glare_wait
from callbox.server.sip.message import SipRequest, SipResponse, make_response, parse_message
from callbox.server.sip.sdp import parse_sdp

pytestmark = pytest.mark.peers


@pytest.fixture
def raw() -> Iterator[RawSip]:
    client = RawSip()
    yield client
    client.close()


@pytest.fixture
def rtp() -> Iterator[socket.socket]:
    """The caller's RTP socket: where the platform must send its audio."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def offer(port: int, *, connection: str = "IN IP4 127.0.0.1", media: str = "") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
            f"c={connection}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n{media}")


@dataclass
class Dialog:
    """The caller's side of one call placed with RawSip."""

    raw: RawSip
    invite: SipRequest
    sip_port: int
    cseq: int = 1

    @classmethod
    async def start(cls, raw: RawSip, platform: RunningPlatform, body: str = "", *,
                    user: str = "listen", replace: tuple[bytes, bytes] = (b"", b"")
                    ) -> tuple[Dialog, SipResponse | None]:
        data = raw.request("INVITE", platform.uri(user), body=body)
        if replace[0]:
            data = data.replace(*replace)
        dialog = cls(raw, parse_request(data), platform.sip_port)
        send(raw, data, platform.sip_port)
        return dialog, await raw.final(timeout=8)

    def in_dialog(self, method: str, to: str, body: str = "", cseq: int | None = None) -> bytes:
        headers = [
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.raw.port};branch=z9hG4bK{os.urandom(6).hex()}",
            f"From: {self.invite.headers.get('From')}", f"To: {to}",
            f"Call-ID: {self.invite.call_id}", f"CSeq: {cseq or self.cseq} {method}",
            f"Contact: <sip:raw@127.0.0.1:{self.raw.port}>", "Max-Forwards: 70",
        ]
        if body:
            headers.append("Content-Type: application/sdp")
        headers.append(f"Content-Length: {len(body)}")
        return "\r\n".join([f"{method} {self.invite.uri} SIP/2.0", *headers, "", body]).encode()

    async def ack(self, ok: SipResponse, body: str = "") -> None:
        to = ok.headers.get("To") or ""
        send(self.raw, self.in_dialog("ACK", to, body, cseq=1), self.sip_port)

    async def reinvite(self, ok: SipResponse, body: str) -> SipResponse | None:
        self.cseq += 1
        to = ok.headers.get("To") or ""
        send(self.raw, self.in_dialog("INVITE", to, body), self.sip_port)
        return await self.raw.final(timeout=8)


def send(raw: RawSip, data: bytes, port: int) -> None:
    """A plain sendto (loopback UDP does not block): uvloop has no sock_sendto."""
    raw.sock.sendto(data, ("127.0.0.1", port))


def parse_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


async def rtp_arrives(sock: socket.socket, timeout: float = 5.0) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    _, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), timeout)
    return addr


async def call_of(platform: RunningPlatform, index: int = 0):
    deadline = asyncio.get_running_loop().time() + 5
    while len(platform.observed) <= index:
        assert asyncio.get_running_loop().time() < deadline, "the call never started"
        await asyncio.sleep(0.02)
    return platform.observed[index].call


# -- c= host names (resolved once, before answering) -----------------------------------------

async def test_host_name_in_connection_is_resolved_before_answering(platform, raw, rtp):
    port = rtp.getsockname()[1]
    dialog, ok = await Dialog.start(raw, platform, offer(port, connection="IN IP4 localhost"))
    assert ok is not None and ok.status == 200
    call = await call_of(platform)
    # numeric: no lookup in the media tick
    assert (await call.media.snapshot()).remote == ("127.0.0.1", port)
    await dialog.ack(ok)
    await rtp_arrives(rtp)


async def test_host_name_in_reinvite_is_resolved_too(platform, raw, rtp):
    port = rtp.getsockname()[1]
    dialog, ok = await Dialog.start(raw, platform, offer(port))
    assert ok is not None and ok.status == 200
    await dialog.ack(ok)
    call = await call_of(platform)
    answer = await dialog.reinvite(ok, offer(port + 2, connection="IN IP4 localhost",
                                             media="a=sendonly\r\n"))
    assert answer is not None and answer.status == 200
    assert "a=recvonly" in answer.body.decode()
    assert (await call.media.snapshot()).remote == ("127.0.0.1", port + 2)
    # RFC 3264 section 5: the same session id for the whole call, a higher version each time.
    first, second = parse_sdp(ok.body).origin, parse_sdp(answer.body).origin
    assert second.session_id == first.session_id
    assert second.session_version == first.session_version + 1


async def test_a_reinvite_while_another_is_answered_gets_500_with_retry_after(platform, raw,
                                                                             rtp):
    """RFC 3261 14.2: the second of two overlapping re-INVITEs is refused with 500 and a
    Retry-After of 0-10 s; the first is answered. (The first names a host in c=, so its answer
    waits for the lookup off the event loop while the second arrives.)"""
    port = rtp.getsockname()[1]
    dialog, ok = await Dialog.start(raw, platform, offer(port))
    assert ok is not None and ok.status == 200
    await dialog.ack(ok)
    to = ok.headers.get("To") or ""
    first = dialog.in_dialog("INVITE", to, offer(port + 2, connection="IN IP4 localhost"),
                             cseq=2)
    second = dialog.in_dialog("INVITE", to, offer(port + 4), cseq=3)
    send(raw, first, platform.sip_port)
    send(raw, second, platform.sip_port)
    finals: dict[int, SipResponse] = {}
    while len(finals) < 2:
        response = await raw.final(timeout=8)
        assert response is not None, f"only {sorted(finals)} answered"
        finals[response.cseq.seq] = response
    assert finals[2].status == 200 and "127.0.0.1" in finals[2].body.decode()
    assert finals[3].status == 500
    assert 0 <= int(finals[3].headers.get("Retry-After") or "-1") <= 10
    call = await call_of(platform)
    assert (await call.media.snapshot()).remote == ("127.0.0.1", port + 2)  # the first's


async def next_request(raw: RawSip, method: str) -> SipRequest:
    """The next request of `method` the platform sends to the raw peer (others are skipped)."""
    while True:
        message = parse_message(await raw.datagram(timeout=8))
        if isinstance(message, SipRequest) and message.method == method:
            return message


async def answer_ours(raw: RawSip, platform: RunningPlatform, invite: SipRequest,
                      ours: asyncio.Task[SipResponse], port: int) -> None:
    """The caller answers our re-INVITE 200 (receiving on `port`): `reinvite()` returns it."""
    answer = offer(port, media="a=recvonly\r\n").encode()
    send(raw, make_response(invite, 200, body=answer, content_type="application/sdp",
                            headers=[("Contact", f"<sip:raw@127.0.0.1:{raw.port}>")]
                            ).serialize(), platform.sip_port)
    response = await asyncio.wait_for(ours, 8)
    assert response.status == 200 and response.cseq.seq == invite.cseq.seq


async def test_reinvites_crossing_get_491_and_ours_is_sent_again(platform, raw, rtp):
    """RFC 3261 14.1/14.2 (glare): while our re-INVITE awaits its answer, the caller's own
    re-INVITE gets 491; the caller answers ours 491 too (and gets its ACK); ours is sent again,
    with the next CSeq, after a random wait, and its 200 is ACKed."""
    port = rtp.getsockname()[1]
    dialog, ok = await Dialog.start(raw, platform, offer(port))
    assert ok is not None and ok.status == 200
    await dialog.ack(ok)
    call = await call_of(platform)
    held = offer(port, media="a=sendonly\r\n").encode()
    ours = asyncio.create_task(call.leg.reinvite(held))
    first = await next_request(raw, "INVITE")
    assert first.call_id == dialog.invite.call_id and b"a=sendonly" in first.body
    crossing = await dialog.reinvite(ok, offer(port + 2))
    assert crossing is not None and crossing.status == 491
    send(raw, make_response(first, 491, to_tag=None).serialize(), platform.sip_port)
    ack = await next_request(raw, "ACK")
    assert ack.cseq.seq == first.cseq.seq and ack.branch == first.branch  # hop by hop
    again = await next_request(raw, "INVITE")
    assert again.cseq.seq == first.cseq.seq + 1 and again.body == first.body
    await answer_ours(raw, platform, again, ours, port + 4)
    ack = await next_request(raw, "ACK")
    assert ack.cseq.seq == again.cseq.seq and ack.branch != again.branch  # a 2xx's ACK


async def test_our_reinvite_waits_while_the_callers_is_being_answered(platform, raw, rtp):
    """RFC 3261 14.1: no re-INVITE of ours while the caller's own re-INVITE is being answered;
    ours goes out once that answer is sent."""
    port = rtp.getsockname()[1]
    dialog, ok = await Dialog.start(raw, platform, offer(port))
    assert ok is not None and ok.status == 200
    await dialog.ack(ok)
    call = await call_of(platform)
    answer_offer = call.leg.on_reoffer
    assert answer_offer is not None
    answering, gate = asyncio.Event(), asyncio.Event()

    async def held_answer(request: SipRequest) -> bytes:
        answering.set()
        await gate.wait()
        return await answer_offer(request)

    call.leg.on_reoffer = held_answer
    to = ok.headers.get("To") or ""
    send(raw, dialog.in_dialog("INVITE", to, offer(port + 2), cseq=2), platform.sip_port)
    await asyncio.wait_for(answering.wait(), 8)
    ours = asyncio.create_task(call.leg.reinvite(offer(port, media="a=sendonly\r\n").encode()))
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + 0.5
    while (left := quiet_until - loop.time()) > 0:  # what the platform sends meanwhile
        try:
            message = parse_message(await raw.datagram(timeout=left))
        except TimeoutError:
            break
        assert not isinstance(message, SipRequest), f"sent {message.method} while answering"
    gate.set()
    answered: SipResponse | None = None
    while answered is None or answered.status < 200:
        message = parse_message(await raw.datagram(timeout=8))
        assert isinstance(message, SipResponse), "our re-INVITE came before the answer"
        answered = message
    assert answered.cseq.seq == 2 and answered.status == 200
    send(raw, dialog.in_dialog("ACK", to, cseq=2), platform.sip_port)
    again = await next_request(raw, "INVITE")
    assert b"a=sendonly" in again.body
    await answer_ours(raw, platform, again, ours, port + 4)


@pytest.mark.parametrize(("owner", "low", "high"), [(True, 2.1, 4.0), (False, 0.0, 2.0)])
def test_the_wait_after_a_491_is_random_in_10_ms_steps(owner: bool, low: float,
                                                       high: float) -> None:
    waits = [glare_wait(owner) for _ in range(2000)]
    assert low <= min(waits) and max(waits) <= high
    assert max(waits) - min(waits) > (high - low) * 0.9  # spread over the range
    assert all(abs(w * 100 - round(w * 100)) < 1e-6 for w in waits)


async def test_unresolvable_host_name_gets_488(platform, raw):
    _, response = await Dialog.start(
        raw, platform, offer(40000, connection="IN IP4 no-such-host.invalid"))
    assert response is not None and response.status == 488
    assert "does not resolve" in (response.headers.get("Warning") or "")
    assert platform.observed == [] and platform.platform.ports.in_use == 0


def test_bye_reaches_a_contact_with_a_host_name(tmp_path, raw, rtp):
    """The prompt route hangs up by itself: its BYE goes to the Contact, a host name. On
    uvloop, the production loop, whose sendto takes numeric addresses only."""
    uvloop.run(bye_to_host_name_contact(tmp_path, raw, rtp))


async def bye_to_host_name_contact(tmp_path, raw: RawSip, rtp: socket.socket) -> None:
    async with running_platform(tmp_path) as platform:
        await expect_bye_at_host_name_contact(platform, raw, rtp)


async def expect_bye_at_host_name_contact(platform: RunningPlatform, raw: RawSip,
                                          rtp: socket.socket) -> None:
    contact = (f"Contact: <sip:raw@127.0.0.1:{raw.port}>".encode(),
               f"Contact: <sip:raw@localhost:{raw.port}>".encode())
    dialog, ok = await Dialog.start(raw, platform, offer(rtp.getsockname()[1]), user="prompt",
                                    replace=contact)
    assert ok is not None and ok.status == 200
    await dialog.ack(ok)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "no BYE came"
        try:
            message = parse_message(await raw.datagram(timeout=left))
        except TimeoutError:
            pytest.fail("no BYE came")
        if isinstance(message, SipRequest) and message.method == "BYE":
            break
    assert message.call_id == dialog.invite.call_id


# -- SDP offers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("connection", "warning"), [
    ("IN IP6 ::1", "IPv6"),
    ("IN IP4 224.2.1.1/127", "multicast"),
])
async def test_unusable_connection_gets_488(platform, raw, connection, warning):
    _, response = await Dialog.start(raw, platform, offer(40000, connection=connection))
    assert response is not None and response.status == 488
    assert warning in (response.headers.get("Warning") or "")
    assert platform.platform.ports.in_use == 0


async def test_maxptime_below_20_ms_gets_488(platform, raw):
    _, response = await Dialog.start(raw, platform, offer(40000, media="a=maxptime:10\r\n"))
    assert response is not None and response.status == 488
    assert "maxptime" in (response.headers.get("Warning") or "")


async def test_malformed_unused_stream_is_rejected_alone(platform, raw):
    body = offer(40000) + "m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264\r\n"
    _, ok = await Dialog.start(raw, platform, body)
    assert ok is not None and ok.status == 200
    answer = parse_sdp(ok.body)
    assert answer.media[0].port != 0 and answer.media[1].port == 0


async def test_sdp_inside_multipart_mixed_is_used(platform, raw, rtp):
    sdp = offer(rtp.getsockname()[1])
    body = ("--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp +
            "\r\n--b1\r\nContent-Type: application/isup; version=itu-t92+\r\n\r\nxx\r\n--b1--\r\n")
    replace = (b"Content-Type: application/sdp\r\nContent-Length",
               b'Content-Type: multipart/mixed; boundary="b1"\r\nContent-Length')
    _, ok = await Dialog.start(raw, platform, body, replace=replace)
    assert ok is not None and ok.status == 200
    call = await call_of(platform)
    assert (await call.media.snapshot()).remote == ("127.0.0.1", rtp.getsockname()[1])


async def test_unknown_content_type_gets_415_with_accept(platform, raw):
    replace = (b"Content-Type: application/sdp", b"Content-Type: application/x-unknown")
    _, response = await Dialog.start(raw, platform, SDP_PCMU, replace=replace)
    assert response is not None and response.status == 415
    assert response.headers.get("Accept") == "application/sdp"


async def test_invite_without_sdp_gets_our_offer_and_the_ack_answers(platform, raw, rtp):
    dialog, ok = await Dialog.start(raw, platform, "")
    assert ok is not None and ok.status == 200
    ours = parse_sdp(ok.body)
    assert ours.media[0].port != 0 and "0" in ours.media[0].formats
    call = await call_of(platform)
    port = rtp.getsockname()[1]
    await dialog.ack(ok, offer(port))
    assert await rtp_arrives(rtp) == ("127.0.0.1", ours.media[0].port)
    assert (await call.media.snapshot()).remote == ("127.0.0.1", port)


# -- SIP status codes (RFC 3261, RFC 4475) ---------------------------------------------------

async def test_another_sip_version_gets_505(platform, raw):
    data = raw.request("OPTIONS", platform.uri("listen"))
    send(raw, data.replace(b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 505


@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
async def test_unknown_uri_scheme_gets_416(platform, raw, method):
    """RFC 4475 unksm2: the To is a SIP URI, the request-URI is not."""
    uri = platform.uri("listen")
    data = raw.request(method, uri, body=SDP_PCMU if method == "INVITE" else "")
    send(raw, data.replace(f"{method} {uri} ".encode(), f"{method} name:John_Smith ".encode()),
         platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 416
    assert platform.observed == []


@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
async def test_unknown_required_option_gets_420(platform, raw, method):
    data = raw.request(method, platform.uri("listen"), extra="Require: nothingweknow\r\n",
                       body=SDP_PCMU if method == "INVITE" else "")
    send(raw, data, platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 420
    assert response.headers.get("Unsupported") == "nothingweknow"


async def test_too_large_message_gets_513(platform, raw):
    data = raw.request("OPTIONS", platform.uri("listen"), extra=f"X-Pad: {'p' * 20_000}\r\n")
    send(raw, data, platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 513


async def test_too_many_headers_is_refused_unparsed(platform, raw):
    vias = "".join(f"Via: SIP/2.0/UDP 127.0.0.1:{5000 + i};branch=z9hG4bKv{i}\r\n"
                   for i in range(300))
    send(raw, raw.request("OPTIONS", platform.uri("listen"), extra=vias), platform.sip_port)
    response = await raw.final(timeout=1)
    assert response is None or response.status == 513
    assert platform.platform.sip.oversized == 1
