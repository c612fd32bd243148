"""SIP over TCP (RFC 3261 §18) with real peers: sipp over TCP (`-t t1`) calls the platform and is
recorded, the platform's BYE reaches sipp over TCP, a bad stream closes only its own connection
while a UDP call goes on, and a request too big for UDP goes over TCP."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from tests.integration.conftest import running_platform
from tests.integration.test_recording import (
    CALLER_HZ,
    WAV_TOLERANCE,
    decode,
    finished_recordings,
    level,
    route,
    wav_file,
)
from tests.peers import audio, new_workdir
from tests.peers.poll import until
from tests.peers.ports import free_port_range, tcp_port_listening
from tests.peers.rawsip import RawSip
from tests.peers.sipp import (
    SippUas,
    g711_stream,
    run_sipp,
    silence_stream,
    sipp_command,
    start_sipp_uas,
    traced_messages,
)

from callbox.caller import place_call
from callbox.server.media.g711 import ulaw_decode
from callbox.server.sip.endpoint import SipEndpoint
from callbox.server.sip.message import (
    MAX_MESSAGE_BYTES,
    Headers,
    SipRequest,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from callbox.server.sip.negotiation import LocalSdp
from callbox.server.sip.transport import UDP_SIZE_LIMIT

pytestmark = pytest.mark.peers

SIPP_OVER_TCP = ["-t", "t1"]


def sipp_ports() -> tuple[int, int]:
    block = free_port_range(8, tcp=True)
    return block.start, block.start + 4


def sipp_messages(trace: str, start: str, *, received: bool = True) -> list[str]:
    """The SIP messages sipp received (or sent) in its `-trace_msg` log whose first line starts
    with `start`."""
    return [m.text for m in traced_messages(trace)
            if m.received == received and m.text.startswith(start)]


def header(message: str, name: str) -> str:
    for line in message.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} in {message!r}")


def tone_span_seconds(samples: np.ndarray, threshold: int = 2000) -> float:
    """From the first to the last sample of a loud tone, in seconds."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    assert loud.size, "no tone in the recording"
    return float(loud[-1] - loud[0] + 1) / 8000


async def test_sipp_over_tcp_is_answered_and_recorded(tmp_path):
    routes = [route("rec", {"answer": {}}, {"record_call": {"format": "wav"}}, {"sleep": 60_000})]
    tone = audio.tone(CALLER_HZ, 2.0, dbfs=-12)
    stream = g711_stream(tone, tmp_path / "tone.ulaw")
    sip_port, media_port = sipp_ports()
    async with running_platform(tmp_path, routes) as running:
        result = await run_sipp(
            "uac_stream_bye", running.target, service="rec", local_port=sip_port,
            media_port=media_port, keys={"stream": stream},
            extra_args=[*SIPP_OVER_TCP, "-d", "2500"], timeout=30,
        )
        assert result.ok, result.describe()
        (recording,) = await finished_recordings(running)
    (invite,) = sipp_messages(result.messages, "INVITE ", received=False)
    assert header(invite, "Via").startswith("SIP/2.0/TCP")
    answer = next(m for m in sipp_messages(result.messages, "SIP/2.0 200")
                  if header(m, "CSeq") == "1 INVITE")
    assert header(answer, "Contact").endswith(";transport=tcp>")  # our Contact on a TCP dialog
    assert recording.state == "finished"
    samples = decode(recording)
    assert len(samples) / 8000 == pytest.approx(recording.duration, abs=WAV_TOLERANCE)
    assert recording.duration >= 2.0  # sipp hung up 2.5 s after its ACK
    assert level(samples[800:15000], CALLER_HZ) > -16
    assert tone_span_seconds(samples) == pytest.approx(2.0, abs=0.03)  # the whole tone, once


async def test_callbox_call_places_a_call_over_tcp_and_hangs_it_up_over_tcp(tmp_path):
    routes = [route("rec", {"answer": {}}, {"record_call": {"format": "wav"}}, {"sleep": 60_000})]
    caller = wav_file(tmp_path, "tone.wav", audio.tone(CALLER_HZ, 2.0, dbfs=-12))
    async with running_platform(tmp_path, routes) as running:
        result = await place_call(f"{running.uri('rec')};transport=tcp", play=caller,
                                  hangup_after=2.5)
        assert result.status == 200 and result.hung_up_by == "us"
        (recording,) = await finished_recordings(running)
        leg = running.observed[0].call.leg
    assert leg.transport == "TCP"  # the INVITE came over TCP
    assert leg.request.top_via.transport == "TCP"
    assert running.observed[0].call.end_reason == "hangup"  # our BYE (over TCP) arrived
    samples = decode(recording)
    assert len(samples) / 8000 == pytest.approx(recording.duration, abs=WAV_TOLERANCE)
    assert tone_span_seconds(samples) == pytest.approx(2.0, abs=0.03)


async def test_the_platform_hangs_up_a_tcp_call_with_a_bye_over_tcp(platform):
    sip_port, media_port = sipp_ports()
    result = await run_sipp(
        "uac_hangup_by_server", platform.target, service="prompt", local_port=sip_port,
        media_port=media_port, extra_args=SIPP_OVER_TCP, timeout=40,
    )
    assert result.ok, result.describe()  # sipp (listening on TCP only) got our BYE
    (bye,) = sipp_messages(result.messages, "BYE ")
    assert header(bye, "Via").startswith(f"SIP/2.0/TCP 127.0.0.1:{platform.sip_port};")
    assert header(bye, "Contact").endswith(";transport=tcp>")
    seen = await platform.wait_call_ended()
    assert seen.call.end_reason == "hangup"


async def tcp_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new TCP connection; everything read until the platform closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            return await reader.read()  # until EOF
    finally:
        writer.close()


def tcp_request(method: str, target: str, **kwargs: object) -> bytes:
    raw = RawSip()
    try:
        text = raw.request(method, target, **kwargs)  # type: ignore[arg-type]
    finally:
        raw.close()
    return text.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")


async def test_a_bad_tcp_stream_closes_only_its_connection_while_a_udp_call_goes_on(
    platform, tmp_path
):
    tone = audio.tone(CALLER_HZ, 3.0, dbfs=-12)
    stream = g711_stream(tone, tmp_path / "tone.ulaw")
    sent = ulaw_decode((tmp_path / "tone.ulaw").read_bytes())
    sip_port, media_port = sipp_ports()
    call = asyncio.create_task(run_sipp(
        "uac_stream_bye", platform.target, service="listen", local_port=sip_port,
        media_port=media_port, keys={"stream": stream}, extra_args=["-d", "3500"], timeout=40,
    ))
    async with asyncio.timeout(10):
        while not platform.observed:
            await asyncio.sleep(0.02)
    sip = platform.platform.sip
    # A body announced beyond the bound: 513, then the connection is closed.
    oversized = tcp_request("OPTIONS", platform.uri("prompt"), length=MAX_MESSAGE_BYTES)
    reply = await tcp_exchange(platform.sip_port, oversized)
    assert parse_message(reply).status == 513
    # No Content-Length on a stream: 400 naming it, then closed.
    unframed = tcp_request("OPTIONS", platform.uri("prompt"), omit=("Content-Length",))
    reply = await tcp_exchange(platform.sip_port, unframed)
    response = parse_message(reply)
    assert response.status == 400
    assert "Content-Length" in (response.headers.get("Warning") or "")
    # Bytes that never end a header section: closed at the size bound, nothing to answer.
    assert await tcp_exchange(platform.sip_port, b"x" * (MAX_MESSAGE_BYTES + 10)) == b""
    assert sip.oversized >= 2 and sip.malformed >= 1
    # Another TCP connection is served as usual.
    reader, writer = await asyncio.open_connection("127.0.0.1", platform.sip_port)
    writer.write(tcp_request("OPTIONS", platform.uri("prompt")))
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"SIP/2.0 200 OK")
    # And the UDP call went on undisturbed: every packet arrived, none late.
    result = await call
    assert result.ok, result.describe()
    seen = await platform.wait_call_ended()
    media = await seen.call.media.snapshot()
    assert media.buffered == len(sent) // 160
    assert media.counters["packets_late"] == 0


def options(target: str, endpoint: SipEndpoint, padding: int) -> SipRequest:
    headers = Headers([
        ("Via", f"{endpoint.via_value()};branch={new_branch()}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:callbox@127.0.0.1:{endpoint.port}>;tag={new_tag()}"),
        ("To", f"<{target}>"),
        ("Call-ID", new_call_id("127.0.0.1")),
        ("CSeq", "1 OPTIONS"),
    ])
    if padding:
        headers.add("X-Padding", "p" * padding)
    return SipRequest("OPTIONS", target, headers)


async def test_a_request_bigger_than_1300_bytes_goes_over_tcp(platform):
    client = SipEndpoint(user_agent="tcp-test")
    await client.start("127.0.0.1", 0)
    try:
        dest = ("127.0.0.1", platform.sip_port)
        small = options(platform.uri("prompt"), client, 0)
        big = options(platform.uri("prompt"), client, UDP_SIZE_LIMIT)
        assert len(small.serialize()) < UDP_SIZE_LIMIT < len(big.serialize())
        assert (await client.request(small, dest)).top_via.transport == "UDP"
        response = await client.request(big, dest)
        assert response.status == 200
        assert response.top_via.transport == "TCP"  # the Via the platform received and echoed
        assert client.transports.switched_to_tcp == 1
        assert list(client.tcp.connections) == [dest]
    finally:
        client.close()


async def test_a_big_invite_to_a_peer_without_tcp_goes_over_udp_after_all():
    """RFC 3261 18.1.1: a request switched to TCP for its size goes over UDP when the TCP
    connection cannot be made (sipp listens on UDP only: the connection is refused)."""
    sip_port, media_port = sipp_ports()
    client = SipEndpoint(user_agent="udp-fallback-test")
    await client.start("127.0.0.1", 0)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    try:
        async with start_sipp_uas("uas_answer", local_port=sip_port, media_port=media_port,
                                  keys={"stream": silence_stream(1.0)}) as callee:
            offer = LocalSdp("127.0.0.1", rtp.getsockname()[1], socket.AF_INET).offer()
            leg = await client.call(f"sip:sipp@127.0.0.1:{sip_port}", offer,
                                    headers=[("X-Padding", "p" * UDP_SIZE_LIMIT)])
            await leg.bye()
            sipp = await callee.wait(timeout=15)
    finally:
        client.close()
        rtp.close()
    assert (client.transports.switched_to_tcp, client.transports.fell_back_to_udp) == (1, 1)
    assert sipp.ok, sipp.describe()  # answered, ACKed, our BYE answered
    (invite,) = sipp_messages(sipp.messages, "INVITE ")
    assert header(invite, "Via").startswith("SIP/2.0/UDP ") and len(invite) > UDP_SIZE_LIMIT


async def test_a_peer_without_tcp_gets_the_next_big_requests_over_udp_at_once():
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # UDP only: TCP to it is refused
    peer.bind(("127.0.0.1", free_port_range(1, tcp=True).start))
    peer.setblocking(False)
    dest = peer.getsockname()
    client = SipEndpoint(user_agent="udp-fallback-test")
    await client.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        received = []
        for _ in range(2):
            client.transports.send(options(f"sip:x@127.0.0.1:{dest[1]}", client, UDP_SIZE_LIMIT),
                                   dest)
            data = await asyncio.wait_for(loop.sock_recv(peer, 65536), 10)
            received.append(parse_message(data))
    finally:
        client.close()
        peer.close()
    assert [r.top_via.transport for r in received] == ["UDP", "UDP"]
    assert all(len(r.serialize()) > UDP_SIZE_LIMIT for r in received)
    # the first went to TCP, was refused, then over UDP; the second over UDP at once
    assert (client.transports.switched_to_tcp, client.transports.fell_back_to_udp) == (1, 1)


async def test_an_outbound_call_over_tcp_reaches_a_sipp_callee_whose_audio_is_heard(tmp_path):
    tone = audio.tone(CALLER_HZ, 1.5, dbfs=-12)
    stream = g711_stream(tone, tmp_path / "tone.ulaw")
    sip_port, media_port = sipp_ports()
    workdir = new_workdir("sipp-tcp-uas-")
    command = sipp_command("uas_answer", None, workdir=workdir, local_port=sip_port,
                           media_port=media_port, keys={"stream": stream},
                           extra_args=SIPP_OVER_TCP)
    process = await asyncio.create_subprocess_exec(
        *command, cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    callee = SippUas(process, command, workdir, sip_port, media_port, "127.0.0.1")
    try:
        await until(lambda: tcp_port_listening(sip_port), timeout=5, what="sipp listens on TCP")
        heard = tmp_path / "heard.wav"
        result = await place_call(f"sip:sipp@127.0.0.1:{sip_port};transport=tcp",
                                  hangup_after=2.5, record_heard=heard)
        sipp = await callee.wait(timeout=15)
    finally:
        await callee.stop()
    assert result.status == 200 and result.hung_up_by == "us"
    # sipp, listening on TCP only, got our INVITE, ACK and BYE, and answered the BYE. (It counts
    # the call failed all the same, FailedTcpClosed: our caller closes the connection during
    # its 500 ms linger.)
    for method in ("INVITE ", "ACK ", "BYE "):
        (message,) = sipp_messages(sipp.messages, method)
        assert header(message, "Via").startswith("SIP/2.0/TCP ")
    assert [header(m, "CSeq") for m in sipp_messages(sipp.messages, "SIP/2.0 200", received=False)
            ] == ["1 INVITE", "2 BYE"], sipp.describe()
    assert sipp.stat("FailedCall") == sipp.stat("FailedTcpClosed")  # the linger, nothing else
    (invite,) = sipp_messages(sipp.messages, "INVITE ")
    assert header(invite, "Contact").endswith(";transport=tcp>")
    samples, _ = audio.decode_audio(heard)
    assert level(samples[800:12000], CALLER_HZ) > -16  # sipp's tone, heard by the caller
    assert tone_span_seconds(samples) == pytest.approx(1.5, abs=0.03)
