"""Trunks against a real carrier: Kamailio as registrar (www digest) and proxy (proxy digest).

callbox registers, is reachable at its registered AOR through Kamailio (sipp calls it and the
call is recorded), refuses to loop on a wrong password (backoff, counted from Kamailio's side),
unregisters on a graceful stop, and keeps serving when a trunk's proxy does not resolve.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from tests.integration.conftest import RunningPlatform, running_platform
from tests.peers import audio
from tests.peers.kamailio import Kamailio, start_kamailio
from tests.peers.poll import until
from tests.peers.ports import free_port_range, free_udp_port
from tests.peers.sipp import g711_stream, run_sipp

from callbox.caller import place_call
from callbox.server.config import Project, Route, Trunk
from callbox.server.recording.engine import Recording
from callbox.server.sip.digest import Authenticator, Credentials
from callbox.server.sip.endpoint import CallFailed, SipEndpoint
from callbox.server.sip.registration import RegistrationState
from callbox.server.sip.registration_runner import TrunkRegistration
from callbox.server.sip.sdp import make_offer
from callbox.wire.basic_auth import basic_auth_header

pytestmark = pytest.mark.peers

PASSWORD = "s3cret-carrier"
USERNAME = "callbox"
DIALLED = "15550123"
CALLER_HZ = 700


def carrier(kamailio: Kamailio, *, password: str = PASSWORD, transport: str = "udp") -> Trunk:
    return Trunk(name="carrier", proxy=kamailio.target, transport=transport, username=USERNAME,
                 password=password, register=True, expires=60, from_number="+15550100")


def record_route() -> Route:
    document = {"version": "1.0.0", "sections": {"main": [
        {"answer": {}},
        {"record_call": {"format": "wav", "stereo": False, "direction": "speak"}},
        {"sleep": 60_000},
    ]}}
    return Route(DIALLED, swml=json.dumps(document))


def registration(running: RunningPlatform) -> TrunkRegistration:
    found: TrunkRegistration = running.platform.trunks.registrations["carrier"]
    return found


async def metrics_text(running: RunningPlatform) -> str:
    running.platform.config.projects.append(Project("p1", "t1"))
    assert running.platform.listening is not None
    https = running.platform.listening.https
    async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.1:{https[1]}/metrics", ssl=False,
            headers={"Authorization": basic_auth_header("p1", "t1")}) as response:
        assert response.status == 200
        return await response.text()


async def call_the_aor_through_kamailio(kamailio: Kamailio, tmp_path: Path) -> None:
    """A sipp caller (UDP, proxy auth) streams a tone to the AOR, to the dialled number."""
    stream = g711_stream(audio.tone(CALLER_HZ, 2.0, dbfs=-12), tmp_path / "caller.ulaw")
    result = await run_sipp(
        "uac_auth_stream_bye", kamailio.target, service=USERNAME,
        local_port=free_udp_port(), media_port=free_port_range(4).start,
        keys={"stream": stream, "to_user": DIALLED, "auth_user": "sipp"},
        extra_args=["-au", "sipp", "-ap", PASSWORD, "-d", "2500"], timeout=40)
    assert result.ok, result.describe()


def assert_caller_tone(recording: Recording) -> None:
    samples, rate = audio.decode_audio(recording.path)
    assert rate == 8000 and (recording.duration or 0.0) >= 1.5
    assert audio.tone_level_dbfs(samples[2000:10000], CALLER_HZ) > -18
    assert abs(audio.dominant_frequency(samples[2000:10000]) - CALLER_HZ) < 10


async def test_registers_and_a_call_to_the_registered_aor_is_recorded(tmp_path: Path) -> None:
    async with start_kamailio(password=PASSWORD) as kamailio, running_platform(
            tmp_path, [record_route()], trunks=[carrier(kamailio)]) as running:
        reg = registration(running)
        await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
        contact = f"sip:{USERNAME}@127.0.0.1:{running.sip_port}"
        assert await kamailio.contacts(USERNAME) == [contact]
        registers = kamailio.requests("REGISTER")
        assert [r.authorized for r in registers] == [False, True]  # challenged, then answered
        assert reg.machine.granted == 60
        text = await metrics_text(running)
        assert 'callbox_trunk_registered{trunk="carrier"} 1' in text
        assert 'callbox_trunk_state{trunk="carrier",state="registered"} 1' in text

        # A caller reaches the AOR through Kamailio (proxy auth), which relays the INVITE to
        # our contact: request-URI user = our username, To user = the dialled number.
        await call_the_aor_through_kamailio(kamailio, tmp_path)
        invites = kamailio.requests("INVITE")
        assert [r.authorized for r in invites][:2] == [False, True]
        seen = await running.wait_call_ended(0, timeout=30)
        assert seen.call.to_user == DIALLED
        (recording,) = seen.call.recordings
        assert isinstance(recording, Recording)
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    assert_caller_tone(recording)


async def test_a_tcp_trunk_registers_over_tcp_and_its_calls_come_on_that_connection(
        tmp_path: Path) -> None:
    async with start_kamailio(password=PASSWORD) as kamailio, running_platform(
            tmp_path, [record_route()], trunks=[carrier(kamailio, transport="tcp")]) as running:
        reg = registration(running)
        await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
        contact = f"sip:{USERNAME}@127.0.0.1:{running.sip_port};transport=tcp"
        assert await kamailio.contacts(USERNAME) == [contact]
        registers = kamailio.requests("REGISTER")
        assert [(r.authorized, r.transport) for r in registers] == [(False, "tcp"), (True, "tcp")]
        assert reg.machine.granted == 60  # read from the Contact Kamailio sent back
        tcp = running.platform.sip.tcp
        assert set(tcp.connections) == {(kamailio.host, kamailio.port)}  # opened by us

        # sipp calls over UDP; Kamailio relays to our TCP contact on the registration's
        # connection (no second connection) and the call is answered and recorded.
        await call_the_aor_through_kamailio(kamailio, tmp_path)
        seen = await running.wait_call_ended(0, timeout=30)
        assert seen.call.to_user == DIALLED
        assert seen.call.leg.transport == "TCP"
        assert set(tcp.connections) == {(kamailio.host, kamailio.port)}
        (recording,) = seen.call.recordings
        assert isinstance(recording, Recording)
        await asyncio.wait_for(asyncio.shield(recording.done), 10)
    assert_caller_tone(recording)
    unregister = kamailio.requests("REGISTER")[-1]
    assert (unregister.expires, unregister.authorized, unregister.transport) == ("0", True, "tcp")


def exchanges_allowed(reg: TrunkRegistration, window: float) -> int:
    """The most REGISTER exchanges the backoff schedule allows in `window` seconds: the first
    at once, then one after each backoff step (2 s, 4 s, 8 s ...)."""
    allowed, elapsed = 1, 0.0
    while elapsed + reg.machine.backoff(allowed - 1) <= window:
        elapsed += reg.machine.backoff(allowed - 1)
        allowed += 1
    return allowed


async def test_wrong_password_fails_clearly_and_backs_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callbox")
    loop = asyncio.get_running_loop()  # the platform's clock: its timers run on this loop
    routes = [record_route()]
    async with start_kamailio(password=PASSWORD) as kamailio:
        started = loop.time()  # before the platform, and so its first REGISTER, starts
        async with running_platform(tmp_path, routes,
                                    trunks=[carrier(kamailio, password="wrong")]) as running:
            reg = registration(running)
            await until(lambda: reg.machine.failures >= 3, 30, "three failed registrations")
            assert reg.machine.reason.startswith(
                "401 Unauthorized: credentials refused by realm '127.0.0.1'")
            registers = kamailio.requests("REGISTER")
            allowed = exchanges_allowed(reg, loop.time() - started)
            unanswered = [r for r in registers if not r.authorized]
            assert 3 <= len(unanswered) <= allowed, (len(registers), allowed)
            assert len(registers) <= 2 * allowed  # one authenticated retry each, no more
            assert await kamailio.contacts(USERNAME) == []
            text = await metrics_text(running)
            assert 'callbox_trunk_registered{trunk="carrier"} 0' in text
    failures = [r.getMessage() for r in caplog.records
                if "registration failed: 401" in r.getMessage()]
    assert len(failures) == 1, failures  # logged on change, not on every retry
    assert "credentials refused by realm" in failures[0] and "retrying in 2 s" in failures[0]


async def test_wrong_password_over_tcp_fails_and_backs_off(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with start_kamailio(password=PASSWORD) as kamailio:
        started = loop.time()
        trunk = carrier(kamailio, password="wrong", transport="tcp")
        async with running_platform(tmp_path, [record_route()], trunks=[trunk]) as running:
            reg = registration(running)
            await until(lambda: reg.machine.failures >= 2, 30, "two failed registrations")
            assert reg.state in (RegistrationState.FAILED, RegistrationState.REGISTERING)
            assert reg.machine.reason.startswith(
                "401 Unauthorized: credentials refused by realm '127.0.0.1'")
            registers = kamailio.requests("REGISTER")
            allowed = exchanges_allowed(reg, loop.time() - started)
            assert {r.transport for r in registers} == {"tcp"}
            assert 2 <= len([r for r in registers if not r.authorized]) <= allowed
            assert len(registers) <= 2 * allowed  # one authenticated retry each, no more
            assert await kamailio.contacts(USERNAME) == []


async def test_graceful_stop_unregisters(tmp_path: Path) -> None:
    async with start_kamailio(password=PASSWORD) as kamailio:
        async with running_platform(tmp_path, [record_route()],
                                    trunks=[carrier(kamailio)]) as running:
            reg = registration(running)
            await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
            assert await kamailio.contacts(USERNAME) != []
        assert reg.state is RegistrationState.STOPPED
        assert await kamailio.contacts(USERNAME) == []  # the binding is gone
        last = kamailio.requests("REGISTER")[-1]
        assert last.expires == "0" and last.authorized


async def test_a_proxy_that_does_not_resolve_is_reported_and_calls_still_work(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="callbox")
    trunks = [Trunk(name="nowhere", proxy="callbox-test-no-such-host.invalid:5060",
                    username="u", password="p", register=True),
              Trunk(name="quiet", proxy="callbox-test-no-such-host.invalid", username="u")]
    listen = Route("listen", swml=json.dumps({"version": "1.0.0", "sections": {"main": [
        {"answer": {}}, {"hangup": {}}]}}))
    async with running_platform(tmp_path, [listen], trunks=trunks) as running:
        reg = running.platform.trunks.registrations["nowhere"]
        await until(lambda: reg.state is RegistrationState.FAILED, 20, "failed")
        assert "does not resolve" in reg.machine.reason
        result = await place_call(running.uri("listen"), hangup_after=5)
        assert result.status == 200  # the platform still serves calls
        await until(lambda: any("trunk quiet: proxy" in r.getMessage() for r in caplog.records),
                    20, "error line for the non-registering trunk")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("trunk nowhere: registration failed: proxy" in r.getMessage()
               and "does not resolve" in r.getMessage() for r in errors)
    assert any("trunk quiet: proxy" in r.getMessage() for r in errors)


async def test_an_invite_challenged_by_the_proxy_is_resent_once_with_credentials(
        tmp_path: Path) -> None:
    """Our UAC through Kamailio (407 -> authenticated INVITE) to the AOR callbox registered:
    the platform answers its own trunk's call, routed by the To user."""
    answer = Route(USERNAME, swml=json.dumps({"version": "1.0.0", "sections": {"main": [
        {"answer": {}}, {"sleep": 60_000}]}}))
    async with start_kamailio(password=PASSWORD) as kamailio, running_platform(
            tmp_path, [answer], trunks=[carrier(kamailio)]) as running:
        reg = registration(running)
        await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
        caller = SipEndpoint(user_agent="test-uac")
        await caller.start("127.0.0.1", 0)
        try:
            offer = make_offer(local_host="127.0.0.1", local_port=free_port_range(2).start,
                               session_id=1, session_version=1)
            leg = await caller.call(
                f"sip:{USERNAME}@{kamailio.target}", offer,
                authenticator=Authenticator(Credentials("caller", PASSWORD)))
            assert leg.response is not None and leg.response.status == 200
            assert leg.invite.cseq.seq == 2  # the authenticated INVITE is a new CSeq
            assert leg.invite.headers.get("Proxy-Authorization") is not None
            invites = kamailio.requests("INVITE")
            assert [r.authorized for r in invites] == [False, True]
            assert invites[0].source == invites[1].source
            await until(lambda: len(running.observed) == 1, 10, "the call reached callbox")
            await leg.bye()
            seen = await running.wait_call_ended(0, timeout=15)
            assert seen.call.to_user == USERNAME
        finally:
            caller.close()


async def test_a_proxy_that_keeps_challenging_gets_one_retry_then_the_call_fails(
        tmp_path: Path) -> None:
    async with start_kamailio(password=PASSWORD) as kamailio:
        caller = SipEndpoint(user_agent="test-uac")
        await caller.start("127.0.0.1", 0)
        try:
            offer = make_offer(local_host="127.0.0.1", local_port=free_port_range(2).start,
                               session_id=1, session_version=1)
            with pytest.raises(CallFailed) as failed:
                await caller.call(f"sip:{USERNAME}@{kamailio.target}", offer,
                                  authenticator=Authenticator(Credentials("caller", "wrong")))
        finally:
            caller.close()
        assert failed.value.status == 407
        assert [r.authorized for r in kamailio.requests("INVITE")] == [False, True]


async def test_a_call_to_our_contact_from_outside_allow_gets_403(tmp_path: Path) -> None:
    answer = Route("*", swml=json.dumps({"version": "1.0.0", "sections": {"main": [
        {"answer": {}}, {"hangup": {}}]}}))
    elsewhere = Trunk(name="elsewhere", proxy="127.0.0.1:9", username=USERNAME, register=True,
                      allow=["192.0.2.0/24"])
    local = Trunk(name="local", proxy="127.0.0.1:9", username="local", register=True,
                  allow=["127.0.0.0/8"])
    async with running_platform(tmp_path, [answer], trunks=[elsewhere, local]) as running:
        refused = await place_call(running.uri(USERNAME), hangup_after=1)
        assert refused.status == 403  # we call from 127.0.0.1, outside 192.0.2.0/24
        inside = await place_call(running.uri("local"), hangup_after=1)
        assert inside.status == 200
        other = await place_call(running.uri("15550123"), hangup_after=1)
        assert other.status == 200  # not addressed to a trunk's contact


async def test_the_registration_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    async with start_kamailio(password=PASSWORD) as kamailio:
        trunk = carrier(kamailio)
        trunk.expires = 2  # granted as asked: a refresh every 1.6 s
        async with running_platform(tmp_path, [record_route()], trunks=[trunk]) as running:
            reg = registration(running)
            await until(lambda: reg.attempts >= 3 and reg.state is RegistrationState.REGISTERED,
                        20, "two refreshes")
            assert reg.machine.granted == 2
            assert await kamailio.contacts(USERNAME) != []  # never lapsed in between
            registers = kamailio.requests("REGISTER")
            assert [r.expires for r in registers[:6]] == ["2"] * 6
            assert [r.authorized for r in registers[:6]] == [False, True] * 3


async def test_the_registrars_tcp_connection_stays_open_while_registered() -> None:
    """Kamailio sends calls for our contact on the registering connection: the idle sweep
    must not close it while the binding lasts, and does once we have unregistered."""
    async with start_kamailio(password=PASSWORD) as kamailio:
        endpoint = SipEndpoint(user_agent="test-registrant")
        endpoint.tcp.idle_timeout = 0.2  # a sweep every 0.05 s
        await endpoint.start("127.0.0.1", 0)
        reg = TrunkRegistration(endpoint, carrier(kamailio, transport="tcp"))
        try:
            reg.start()
            await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
            registrar = (kamailio.host, kamailio.port)
            connection = endpoint.tcp.connections[registrar]
            await until(lambda: endpoint.now() - connection.last_active > 1.0, 10,
                        "the connection idle for many sweeps")
            assert endpoint.tcp.connections.get(registrar) is connection
            assert not connection.closed
            await reg.stop()
            assert kamailio.requests("REGISTER")[-1].expires == "0"
            await until(lambda: registrar not in endpoint.tcp.connections, 10,
                        "the idle connection closed once unregistered")
        finally:
            endpoint.close()


async def test_keep_alives_hold_the_registrars_tcp_connection_open() -> None:
    """Kamailio closes a TCP connection idle for its lifetime (2 s here; its timer closes it
    within about 12 s): the CRLF keep-alives keep the registering connection, on which calls
    for our contact come, open for longer."""
    lifetime = 2
    async with start_kamailio(password=PASSWORD, tcp_lifetime=lifetime) as kamailio:
        endpoint = SipEndpoint(user_agent="test-registrant")
        await endpoint.start("127.0.0.1", 0)
        reg = TrunkRegistration(endpoint, carrier(kamailio, transport="tcp"))
        reg.keepalive_interval = 0.5
        try:
            reg.start()
            await until(lambda: reg.state is RegistrationState.REGISTERED, 15, "registered")
            registrar = (kamailio.host, kamailio.port)
            connection = endpoint.tcp.connections[registrar]
            registered_at = endpoint.now()
            await until(lambda: endpoint.now() - registered_at > 8 * lifetime, 30,
                        "eight of Kamailio's connection lifetimes")
            assert endpoint.tcp.connections.get(registrar) is connection
            assert not connection.closed
            assert len(kamailio.requests("REGISTER")) == 2  # no refresh kept it alive
        finally:
            await reg.stop()
            endpoint.close()
