"""Our digest answers checked by someone else's digest code: a sipp callee challenges our BYE
(or our re-INVITE) with 401 and verifies the re-sent request's Authorization itself (sipp's
`verifyauth`)."""

from __future__ import annotations

import pytest
from tests.integration.conftest import FAST_TIMERS
from tests.peers.ports import free_port_range
from tests.peers.sipp import start_sipp_uas

from callbox.server.sip.digest import Authenticator, Credentials
from callbox.server.sip.endpoint import CallFailed, SipEndpoint
from callbox.server.sip.sdp import make_offer

pytestmark = pytest.mark.peers

PASSWORD = "bye-secret"


async def call_and_hang_up(password: str) -> tuple[int, bool]:
    """Call a `uas_bye_401` sipp, hang up; (the BYE CSeq we reached, whether sipp passed)."""
    keys = {"auth_user": "callbox", "auth_password": PASSWORD}
    async with start_sipp_uas("uas_bye_401", media_port=free_port_range(4).start,
                              keys=keys) as uas:
        caller = SipEndpoint(user_agent="test-uac", timers=FAST_TIMERS)
        await caller.start("127.0.0.1", 0)
        try:
            offer = make_offer(local_host="127.0.0.1", local_port=free_port_range(2).start,
                               session_id=1, session_version=1)
            leg = await caller.call(uas.uri(), offer,
                                    authenticator=Authenticator(Credentials("callbox", password)))
            await leg.bye()
            assert leg.dialog is not None
            result = await uas.wait()
        finally:
            caller.close()
    return leg.dialog.local_seq, result.ok


async def test_a_challenged_bye_is_resent_once_with_credentials_sipp_accepts() -> None:
    seq, ok = await call_and_hang_up(PASSWORD)
    assert ok
    assert seq == 3  # BYE 2 challenged, BYE 3 with credentials


async def test_wrong_credentials_are_refused_by_sipp() -> None:
    seq, ok = await call_and_hang_up("not-the-password")
    assert not ok  # sipp's own digest check failed: the test above is not vacuous
    assert seq >= 2


async def call_hold_and_hang_up(password: str) -> tuple[int | None, int, bool]:
    """Call a `uas_reinvite_401` sipp, put it on hold (re-INVITE), hang up; (the re-INVITE's
    final status or None when unanswered, the BYE CSeq we reached, whether sipp passed)."""
    keys = {"auth_user": "callbox", "auth_password": PASSWORD}
    async with start_sipp_uas("uas_reinvite_401", media_port=free_port_range(4).start,
                              keys=keys) as uas:
        caller = SipEndpoint(user_agent="test-uac", timers=FAST_TIMERS)
        await caller.start("127.0.0.1", 0)
        try:
            media_port = free_port_range(2).start
            offer = make_offer(local_host="127.0.0.1", local_port=media_port,
                               session_id=1, session_version=1)
            leg = await caller.call(uas.uri(), offer,
                                    authenticator=Authenticator(Credentials("callbox", password)))
            held = make_offer(local_host="127.0.0.1", local_port=media_port, session_id=1,
                              session_version=2, direction="sendonly")
            status: int | None
            try:
                status = (await leg.reinvite(held.serialize())).status
            except CallFailed:
                status = None
            await leg.bye()
            assert leg.dialog is not None
            result = await uas.wait()
        finally:
            caller.close()
    return status, leg.dialog.local_seq, result.ok


async def test_a_challenged_reinvite_is_resent_once_with_credentials_sipp_accepts() -> None:
    status, seq, ok = await call_hold_and_hang_up(PASSWORD)
    assert status == 200
    assert ok  # sipp verified the credentials, got the ACK for its 200, then the BYE
    assert seq == 4  # re-INVITE 2 challenged, re-INVITE 3 with credentials, BYE 4


async def test_a_reinvite_with_wrong_credentials_is_refused_by_sipp() -> None:
    status, seq, ok = await call_hold_and_hang_up("not-the-password")
    assert status != 200 and not ok
    assert seq >= 3  # it was re-sent once with (wrong) credentials
