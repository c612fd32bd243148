"""Bad and unsupported SIP input over a real UDP socket: each gets its defined answer (or is
dropped), and the platform keeps serving the next call."""

from __future__ import annotations

import asyncio
import os

import pytest
from tests.peers.rawsip import SDP_G729, SDP_PCMU, RawSip

pytestmark = pytest.mark.peers

@pytest.fixture
def raw():
    client = RawSip()
    yield client
    client.close()


async def assert_still_serving(raw: RawSip, platform) -> None:
    await raw.send(raw.request("OPTIONS", platform.uri("prompt")), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 200


@pytest.mark.parametrize("garbage", [
    b"\x00\xff" * 300,
    b"INVITE",
    b"SIP/2.0 200\r\n\r\n",
    b"NOTSIP sip:x@y HTTP/1.1\r\n\r\n",
    os.urandom(1400),
    "INVITE sip:\u00e9@h SIP/2.0\r\nVia: \xff\r\n\r\n".encode("latin-1"),
])
async def test_garbage_is_dropped_and_the_server_keeps_serving(platform, raw, garbage):
    await raw.send(garbage, platform.sip_port)
    assert await raw.final(timeout=0.5) is None
    await assert_still_serving(raw, platform)
    assert platform.platform.sip.malformed >= 1


async def test_truncated_body_gets_400(platform, raw):
    message = raw.request(
        "INVITE", platform.uri("prompt"), body=SDP_G729, length=len(SDP_G729) + 50
    )
    await raw.send(message, platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 400
    assert "Content-Length" in (response.headers.get("Warning") or "")
    assert platform.observed == []  # no call was created
    await assert_still_serving(raw, platform)


async def test_missing_mandatory_header_gets_400_naming_it(platform, raw):
    await raw.send(raw.request("OPTIONS", platform.uri("prompt"), omit=("Call-ID",)),
                   platform.sip_port)
    # The 400 cannot carry the Call-ID that was missing, so read it as text.
    response = (await raw.datagram()).decode()
    assert response.startswith("SIP/2.0 400 ")
    assert 'Warning: 399 callbox "missing mandatory header Call-ID"' in response
    assert f"127.0.0.1:{raw.port}" in response  # the Via was copied: it found its way back


async def test_another_sip_version_gets_505_and_a_bad_message_of_it_too(platform, raw):
    request = raw.request("OPTIONS", platform.uri("prompt"))
    await raw.send(request.replace(b" SIP/2.0\r\n", b" SIP/2.1\r\n", 1), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 505
    assert "SIP/2.1" in (response.headers.get("Warning") or "")
    # a version we do not speak comes first, even when the rest would not parse either
    bad = raw.request("OPTIONS", platform.uri("prompt"), cseq_method="INVITE")
    await raw.send(bad.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 505
    await assert_still_serving(raw, platform)


async def test_cseq_method_mismatch_gets_400(platform, raw):
    await raw.send(raw.request("OPTIONS", platform.uri("prompt"), cseq_method="INVITE"),
                   platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 400


async def test_no_common_codec_gets_488_with_warning(platform, raw):
    await raw.send(raw.request("INVITE", platform.uri("prompt"), body=SDP_G729), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 488
    warning = response.headers.get("Warning") or ""
    assert "G729" in warning and "PCMU" in warning
    assert platform.observed == []
    assert platform.platform.ports.in_use == 0  # the RTP port went back to the pool


async def test_malformed_sdp_is_rejected(platform, raw):
    body = "v=0\r\nthis is not sdp\r\n"
    await raw.send(raw.request("INVITE", platform.uri("prompt"), body=body), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status in (400, 488)
    assert response.headers.get("Warning")


async def test_unknown_route_gets_404(platform, raw):
    await raw.send(raw.request("INVITE", platform.uri("nobody"), body=SDP_PCMU),
                   platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 404


async def test_bye_for_unknown_dialog_gets_481(platform, raw):
    await raw.send(raw.request("BYE", platform.uri("prompt"), to_tag="nosuchtag"),
                   platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 481


@pytest.mark.parametrize(("method", "status"), [("REGISTER", 405), ("SUBSCRIBE", 405),
                                                ("FROBNICATE", 501)])
async def test_unsupported_methods(platform, raw, method, status):
    await raw.send(raw.request(method, platform.uri("prompt")), platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == status
    if status == 405:
        assert "INVITE" in (response.headers.get("Allow") or "")


async def test_max_forwards_zero_gets_483(platform, raw):
    message = raw.request("INVITE", platform.uri("prompt"), body=SDP_G729).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0")
    await raw.send(message, platform.sip_port)
    response = await raw.final()
    assert response is not None and response.status == 483


async def test_rport_and_received_are_filled_in(platform, raw):
    await raw.send(raw.request("OPTIONS", platform.uri("prompt")), platform.sip_port)
    response = await raw.final()
    assert response is not None
    via = response.top_via
    assert via.params.get("rport") == str(raw.port)
    assert via.received == "127.0.0.1"


async def test_retransmitted_invite_is_absorbed(platform, raw):
    message = raw.request("INVITE", platform.uri("ring"), body=SDP_PCMU)
    for _ in range(3):
        await raw.send(message, platform.sip_port)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    assert len(platform.observed) == 1  # one call, not three
    await platform.platform.stop()
