"""Tests of the real-peer harness (tests/peers): the peers run against each other.

The platform is not needed: sipp calls sipp, sipp calls baresip, baresip calls sipp and
baresip.  Each check would fail if the harness (or the scenario files) broke.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.peers import audio
from tests.peers.baresip import Baresip, BaresipError
from tests.peers.kamailio import start_kamailio
from tests.peers.ports import (
    free_port,
    free_port_range,
    free_udp_port,
    port_is_free,
    release,
)
from tests.peers.rawsip import SDP_PCMU, RawSip
from tests.peers.sipp import (
    dtmf_pcap,
    g711_stream,
    received_transactions,
    require_pass,
    run_sipp,
    run_sipp_sync,
    scenario_path,
    sipp_share_dir,
    start_sipp_uas,
    traced_messages,
)

from callbox.server.sip.message import SipRequest, make_cancel, parse_message
from callbox.server.sip.transaction import make_ack

pytestmark = pytest.mark.peers

RATE = audio.RATE


def media_port(calls: int = 1) -> int:
    """Start of a free RTP range for sipp ``-mp`` (it uses mp..mp+3 per call)."""
    return free_port_range(4 * calls).start


# --------------------------------------------------------------------------------------------
# Audio helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freq", "seconds", "dbfs"), [(1000, 1.0, -20.0), (697, 0.33, -6.5), (1633, 0.1, -30.0)]
)
def test_tone_level_rms_and_frequency(freq: float, seconds: float, dbfs: float) -> None:
    x = audio.tone(freq, seconds, dbfs=dbfs)
    assert x.dtype == np.int16
    assert x.size == round(seconds * RATE)
    assert abs(audio.tone_level_dbfs(x, freq) - dbfs) < 0.5
    assert abs(audio.rms_dbfs(x) - dbfs) < 0.5
    assert abs(audio.dominant_frequency(x) - freq) < 5.0
    # Another DTMF frequency is far below the tone.
    assert audio.tone_level_dbfs(x, freq + 300) < dbfs - 20


def test_level_of_silence_and_mixture() -> None:
    assert audio.rms_dbfs(audio.silence(0.5)) <= -120
    assert audio.tone_level_dbfs(audio.silence(0.5), 1000) <= -120
    mix = (audio.tone(770, 1.0, -20).astype(np.int32) + audio.tone(1336, 1.0, -26)).astype(np.int16)
    assert abs(audio.tone_level_dbfs(mix, 770) + 20) < 0.5
    assert abs(audio.tone_level_dbfs(mix, 1336) + 26) < 0.5
    assert abs(audio.dominant_frequency(mix) - 770) < 5


def test_xcorr_identity_and_known_lag(peer_env) -> None:
    s = audio.speech("one two three, harness check")
    peak, lag = audio.max_normalized_xcorr(s, s, 800)
    assert peak == pytest.approx(1.0, abs=1e-9)
    assert lag == 0

    # b inside a after 0.25 s of silence and followed by other audio: full score at +2000.
    a = audio.concat(audio.silence(0.25), s, audio.tone(440, 0.5))
    peak, lag = audio.max_normalized_xcorr(a, s, RATE)
    assert peak > 0.999
    assert lag == 2000
    # Swapped roles: negative lag.
    peak, lag = audio.max_normalized_xcorr(s, a, RATE)
    assert peak > 0.999
    assert lag == -2000
    # Outside the allowed lag range the match is not found.
    peak, _ = audio.max_normalized_xcorr(a, s, 1000)
    assert peak < 0.8
    # Unrelated signals do not correlate.
    noise = np.random.default_rng(1).normal(0, 3000, s.size).astype(np.int16)
    peak, _ = audio.max_normalized_xcorr(noise, s, RATE)
    assert peak < 0.3


def test_piece_offsets_show_a_gap_and_a_cut(peer_env) -> None:
    s = audio.speech("one two three four five six seven, harness check")
    half = s.size // 2
    clean = audio.concat(audio.silence(0.5), s)
    gapped = audio.concat(audio.silence(0.5), s[:half], audio.silence(0.08), s[half:])
    cut = audio.concat(audio.silence(0.5), s[:half], s[half + 4000:])
    assert {offset for _, offset in audio.piece_offsets(clean, s, RATE)} == {4000}
    pieces = audio.piece_offsets(gapped, s, RATE)
    found = [offset for score, offset in pieces if score > 0.9]
    assert len(found) >= 0.9 * len(pieces) and found == sorted(found)
    assert set(found) == {4000, 4640}  # the words after the gap, 80 ms later
    lost = audio.piece_offsets(cut, s, RATE)  # 0.5 s gone: its pieces are nowhere
    assert sum(score > 0.9 for score, _ in lost) <= len(lost) - 2


def test_active_spans() -> None:
    x = audio.concat(
        audio.silence(0.5),
        audio.tone(1000, 1.0),
        audio.silence(0.5),
        audio.tone(500, 0.3, -30),
        audio.silence(0.2),
    )
    spans = audio.active_spans(x, RATE)
    assert len(spans) == 2
    assert spans[0] == pytest.approx((0.5, 1.5), abs=0.021)
    assert spans[1] == pytest.approx((2.0, 2.3), abs=0.021)
    # Quiet second tone below the threshold: one span.
    assert len(audio.active_spans(x, RATE, threshold_dbfs=-25)) == 1
    # Short gaps merge.
    assert len(audio.active_spans(x, RATE, min_gap_ms=600)) == 1
    assert audio.active_spans(audio.silence(1.0), RATE) == []


def test_wav_files_roundtrip(tmp_path: Path, peer_env) -> None:
    x = audio.concat(audio.tone(1000, 0.5), audio.silence(0.1))
    path = audio.write_wav(tmp_path / "x.wav", x)
    y, rate = audio.read_wav(path)
    assert rate == RATE
    assert np.array_equal(x, y)

    stereo = np.stack([x, -x], axis=1)
    audio.write_wav(tmp_path / "st.wav", stereo, rate=16000, channels=2)
    y2, rate2 = audio.read_wav(tmp_path / "st.wav")
    assert rate2 == 16000
    assert y2.shape == (x.size, 2)
    assert np.array_equal(y2, stereo)

    # A float WAV goes through sox.
    subprocess.run(
        ["sox", str(path), "-e", "floating-point", "-b", "32", str(tmp_path / "f.wav")], check=True
    )
    y3, _ = audio.read_wav(tmp_path / "f.wav")
    assert np.max(np.abs(y3.astype(int) - x)) <= 1

    # MP3 decodes via miniaudio, with encoder delay: compare levels, not samples.
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-b:a",
            "32k",
            str(tmp_path / "x.mp3"),
        ],
        check=True,
    )
    y4, rate4 = audio.decode_audio(tmp_path / "x.mp3")
    assert rate4 == RATE
    assert abs(y4.size / RATE - 0.6) < 0.2
    assert abs(audio.dominant_frequency(y4) - 1000) < 10


def test_raw_g711_files(tmp_path: Path, peer_env) -> None:
    x = audio.tone(1000, 1.0, -12)
    for writer, sox_type in ((audio.write_raw_ulaw, "ul"), (audio.write_raw_alaw, "al")):
        raw = writer(tmp_path / f"x.{sox_type}", x)
        assert raw.stat().st_size == x.size  # one byte per sample, no header
        back = tmp_path / f"back-{sox_type}.wav"
        subprocess.run(
            ["sox", "-t", sox_type, "-r", "8000", "-c", "1", str(raw), str(back)], check=True
        )
        y, _ = audio.read_wav(back)
        assert abs(audio.tone_level_dbfs(y, 1000) + 12) < 0.5
    # Speech survives G.711 nearly unchanged, with no delay.
    s = audio.speech("one two three, harness check")
    back = tmp_path / "speech.wav"
    subprocess.run(
        [
            "sox",
            "-t",
            "ul",
            "-r",
            "8000",
            "-c",
            "1",
            str(audio.write_raw_ulaw(tmp_path / "s.ul", s)),
            str(back),
        ],
        check=True,
    )
    peak, lag = audio.max_normalized_xcorr(audio.read_wav(back)[0], s, 100)
    assert peak > 0.99
    assert lag == 0


def test_speech_is_cached(tmp_path: Path, peer_env, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "callbox speech cache check"
    first = audio.speech(text, tmp_path / "s.wav")
    assert first.dtype == np.int16
    assert 0.5 < first.size / RATE < 5
    assert audio.rms_dbfs(first) > -40
    monkeypatch.setenv("PATH", "")  # espeak-ng and sox can no longer be found...
    with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
        audio.speech("callbox speech cache check, never rendered")
    second = audio.speech(text)  # ...yet the same text is still there: from the cache
    assert np.array_equal(first, second)
    copy, rate = audio.read_wav(tmp_path / "s.wav")
    assert rate == RATE and np.array_equal(copy, first)


def test_ports_are_free_and_distinct() -> None:
    ports = {free_udp_port() for _ in range(20)}
    assert len(ports) == 20
    assert all(port_is_free(p) for p in ports)
    both = free_port()
    assert port_is_free(both, udp=True, tcp=True)
    rng = free_port_range(8)
    assert len(rng) == 8 and rng.start % 2 == 0
    assert all(port_is_free(p) for p in rng)
    assert not set(rng) & set(free_port_range(8))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", rng.start))
        assert not port_is_free(rng.start)


def test_a_released_range_is_handed_out_again_before_its_reuse_time() -> None:
    """A platform's RTP range comes back when the platform stopped: a fast run of many
    platforms in one test process would otherwise use up its share of the space (it did, in
    a 7-minute run: 59 tests could not get 64 ports)."""
    first = free_port_range(64)
    release(first)
    handed: list[range] = []
    try:
        while not handed or not set(handed[-1]) & set(first):  # next fit: once around
            handed.append(free_port_range(64))
    finally:
        for ports in handed:
            release(ports)
    assert len(handed) > 1 and set(handed[-1]) & set(first)  # its ports, before 180 s


def test_parallel_test_processes_hand_out_ports_from_disjoint_slices(monkeypatch) -> None:
    """Under pytest-xdist (2 processes here) process gw0 and gw1 never hand out the same port:
    each draws from its own slice of the single-port and of the RTP-range space."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    singles: dict[str, list[int]] = {}
    ranges: dict[str, list[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        singles[worker] = [free_udp_port() for _ in range(30)]
        ranges[worker] = [p for _ in range(5) for p in free_port_range(300)]
        release(range(min(ranges[worker]), max(ranges[worker]) + 1))  # for the other tests
    assert max(singles["gw0"]) < min(singles["gw1"]) < max(singles["gw1"]) < 20000
    assert min(ranges["gw0"]) > 20999 and max(ranges["gw0"]) < min(ranges["gw1"])


def test_scenarios_and_pcaps_exist(peer_env) -> None:
    for name in (
        "uac_audio_dtmf",
        "uac_pcap_dtmf",
        "uac_hangup_by_server",
        "uac_cancel",
        "uac_no_ack",
        "uac_options",
        "uas_answer",
        "uas_ring",
        "uas_no_ack_bye",
    ):
        assert scenario_path(name).is_file()
    assert (sipp_share_dir() / "g711a.pcap").is_file()
    assert dtmf_pcap("#").name == "dtmf_2833_pound.pcap"
    with pytest.raises(FileNotFoundError):
        scenario_path("no_such_scenario")


# --------------------------------------------------------------------------------------------
# sipp against sipp
# --------------------------------------------------------------------------------------------


async def test_sipp_uac_audio_dtmf_against_sipp_uas(tmp_path: Path, peer_env) -> None:
    peer_env.require_root()
    uas_stream = g711_stream(audio.tone(440, 1.0, -12), tmp_path / "uas.ulaw", loops=-1)
    uac_stream = g711_stream(audio.tone(1000, 0.5, -12), tmp_path / "uac.ulaw")
    async with start_sipp_uas(
        "uas_answer", media_port=media_port(), keys={"stream": uas_stream}
    ) as uas:
        uac = await run_sipp(
            "uac_audio_dtmf",
            uas.target,
            service="echo",
            local_port=free_udp_port(),
            media_port=media_port(),
            keys={"stream": uac_stream, "digits": "12#"},
            extra_args=["-d", "500"],
            timeout=20,
        )
        uas_result = await uas.wait(timeout=10)
    assert uac.ok, uac.describe()
    assert uas_result.ok, uas_result.describe()
    assert uac.stat("SuccessfulCall") == 1, uac.describe()
    assert uas_result.stat("SuccessfulCall") == 1, uas_result.describe()
    assert "BYE sip:echo@" in uac.messages


async def test_sipp_cancel_against_ringing_uas(peer_env) -> None:
    calls = 3
    async with start_sipp_uas("uas_ring", media_port=media_port(calls), calls=calls) as uas:
        uac = await run_sipp(
            "uac_cancel",
            uas.target,
            local_port=free_udp_port(),
            media_port=media_port(calls),
            calls=calls,
            rate=20,
            timeout=20,
        )
        uas_result = await uas.wait(timeout=10)
    assert uac.ok, uac.describe()
    assert uas_result.ok, uas_result.describe()
    assert uac.stat("SuccessfulCall") == calls, uac.describe()
    assert uac.messages.count("CANCEL sip:service@") == calls


async def test_a_callee_scenario_absorbs_an_invite_sent_again(peer_env) -> None:
    """A caller under load may send its INVITE again after sipp's 180 went out (session 9's
    flake: sipp aborted the call on that 'unexpected message'). The ringing callee absorbs it,
    the CANCEL still ends the call, and the trace counts one INVITE transaction."""
    raw = RawSip()
    try:
        async with start_sipp_uas("uas_ring", media_port=media_port()) as uas:
            invite = parse_message(raw.request("INVITE", uas.uri(), body=SDP_PCMU))
            assert isinstance(invite, SipRequest)
            to_uas = ("127.0.0.1", uas.port)
            raw.sock.sendto(invite.serialize(), to_uas)
            while not (await raw.datagram()).startswith(b"SIP/2.0 180 "):
                pass
            raw.sock.sendto(invite.serialize(), to_uas)  # the same INVITE again
            raw.sock.sendto(make_cancel(invite).serialize(), to_uas)
            finals = [await raw.final(), await raw.final()]  # 200 to the CANCEL, 487
            assert [(f.status, f.cseq.method) for f in finals if f is not None] == [
                (200, "CANCEL"), (487, "INVITE")]
            assert finals[1] is not None
            raw.sock.sendto(make_ack(invite, finals[1]).serialize(), to_uas)
            result = require_pass(await uas.wait(timeout=10))
    finally:
        raw.close()
    received = [m for m in traced_messages(result.messages) if m.received]
    assert [m.text.split(" ", 1)[0] for m in received] == ["INVITE", "INVITE", "CANCEL", "ACK"]
    assert received_transactions(result.messages, "INVITE") == {invite.branch}


async def test_sipp_no_ack_scenario_gets_bye(peer_env) -> None:
    async with start_sipp_uas("uas_no_ack_bye", media_port=media_port()) as uas:
        uac = await run_sipp(
            "uac_no_ack",
            uas.target,
            local_port=free_udp_port(),
            media_port=media_port(),
            timeout=20,
        )
        uas_result = await uas.wait(timeout=10)
    assert uac.ok, uac.describe()
    assert uas_result.ok, uas_result.describe()
    assert "ACK sip:" not in uac.messages
    assert "BYE sip:sipp@" in uac.messages


async def test_harness_reports_failures_and_timeouts(peer_env) -> None:
    # A callee that answers at once breaks the CANCEL scenario: sipp must report failure.
    async with start_sipp_uas("uas_answer", media_port=media_port()) as uas:
        uac = await run_sipp(
            "uac_cancel",
            uas.target,
            local_port=free_udp_port(),
            media_port=media_port(),
            timeout=20,
        )
        await uas.stop()
    assert uac.returncode != 0 and not uac.ok
    assert uac.stat("FailedCall") == 1, uac.describe()
    assert "sipp exit" in uac.describe()

    # Nobody hangs up on uac_hangup_by_server: the harness kills sipp at the timeout.
    async with start_sipp_uas("uas_answer", media_port=media_port()) as uas:
        stuck = await asyncio.wait_for(run_sipp(  # the deadline only catches a harness hang
            "uac_hangup_by_server",
            uas.target,
            local_port=free_udp_port(),
            media_port=media_port(),
            timeout=1.5,
        ), 60)
    assert stuck.timed_out and not stuck.ok


async def test_sync_runner(peer_env) -> None:
    async with start_sipp_uas("uas_ring", media_port=media_port()) as uas:
        result = await asyncio.to_thread(
            run_sipp_sync,
            "uac_cancel",
            uas.target,
            local_port=free_udp_port(),
            media_port=media_port(),
            timeout=10,
        )
        uas_result = await uas.wait(timeout=5)
    assert result.ok, result.describe()
    assert uas_result.ok, uas_result.describe()
    assert result.stats is not None and result.stat("SuccessfulCall") == 1


# --------------------------------------------------------------------------------------------
# sipp and baresip
# --------------------------------------------------------------------------------------------


async def test_sipp_caller_is_heard_by_baresip_with_dtmf(tmp_path: Path, peer_env) -> None:
    peer_env.require_root()
    source = audio.concat(audio.speech("harness check, one two three"), audio.tone(1000, 0.3))
    stream = g711_stream(source, tmp_path / "caller.ulaw")
    async with Baresip(auto_answer=True) as phone:
        result = await run_sipp(
            "uac_audio_dtmf",
            phone.target,
            service=phone.user,
            local_port=free_udp_port(),
            media_port=media_port(),
            keys={"stream": stream, "digits": "12#"},
            extra_args=["-d", str(round(1000 * source.size / RATE) + 300)],
            timeout=30,
        )
        assert result.ok, result.describe()
        closed = await phone.wait_call_closed(timeout=5)
        assert closed["param"]  # a reason is given
        assert phone.received_dtmf() == "12#"
        heard, rate = phone.heard()
    assert rate == RATE
    peak, _lag = audio.max_normalized_xcorr(heard, source, RATE)
    assert peak > 0.95, f"baresip did not hear the caller (xcorr {peak:.3f})"


async def test_baresip_dials_sipp_uas_and_hears_its_tone(tmp_path: Path, peer_env) -> None:
    stream = g711_stream(audio.tone(440, 1.0, -12), tmp_path / "uas.ulaw", loops=-1)
    async with (
        start_sipp_uas("uas_answer", media_port=media_port(), keys={"stream": stream}) as uas,
        Baresip() as phone,
    ):
        await phone.dial(uas.uri("svc"))
        established = await phone.wait_established(timeout=5)
        assert established["peeruri"] == uas.uri("svc")
        await asyncio.sleep(1.5)
        await phone.send_dtmf("9")
        await phone.hangup()
        await phone.wait_call_closed(timeout=5)
        uas_result = await uas.wait(timeout=5)
        heard, rate = phone.heard()
    assert uas_result.ok, uas_result.describe()
    assert heard.size / rate > 1.0
    assert abs(audio.dominant_frequency(heard, rate) - 440) < 5
    assert abs(audio.tone_level_dbfs(heard, 440, rate) + 12) < 1.0


async def test_sipp_waits_for_baresip_hangup_and_options(tmp_path: Path, peer_env) -> None:
    stream = g711_stream(audio.tone(1000, 1.0, -12), tmp_path / "c.ulaw", loops=-1)
    async with Baresip(auto_answer=True, user="ivr") as phone:
        options = await run_sipp(
            "uac_options",
            phone.target,
            service="ivr",
            local_port=free_udp_port(),
            media_port=media_port(),
            timeout=10,
        )
        assert options.ok, options.describe()

        call = asyncio.create_task(
            run_sipp(
                "uac_hangup_by_server",
                phone.target,
                service="ivr",
                local_port=free_udp_port(),
                media_port=media_port(),
                keys={"stream": stream},
                timeout=20,
            )
        )
        await phone.wait_established(timeout=5)
        await asyncio.sleep(1.0)
        await phone.hangup()
        result = await call
        assert result.ok, result.describe()
        assert "BYE sip:sipp@" in result.messages
        heard, rate = phone.heard()
    assert abs(audio.tone_level_dbfs(heard, 1000, rate) + 12) < 1.0


async def test_sipp_pcap_dtmf_reaches_baresip(peer_env) -> None:
    peer_env.require_root()
    async with Baresip(auto_answer=True) as phone:
        result = await run_sipp(
            "uac_pcap_dtmf",
            phone.target,
            service=phone.user,
            local_port=free_udp_port(),
            media_port=media_port(),
            keys={"pcap1": str(dtmf_pcap("5")), "pcap2": str(dtmf_pcap("#"))},
            timeout=20,
        )
        assert result.ok, result.describe()
        await phone.wait_call_closed(timeout=5)
        assert phone.received_dtmf() == "5#"


# --------------------------------------------------------------------------------------------
# baresip against baresip
# --------------------------------------------------------------------------------------------


async def test_baresip_to_baresip_audio_and_dtmf(peer_env) -> None:
    async with (
        Baresip(source=audio.tone(1200, 2.0, -15), user="callee") as callee,
        Baresip(source=audio.tone(700, 2.0, -15)) as caller,
    ):
        await caller.dial(callee.uri)
        incoming = await callee.wait_incoming(timeout=5)
        assert incoming["peeruri"] == caller.uri
        await callee.accept()
        await caller.wait_established(timeout=5)
        await asyncio.sleep(1.0)
        await caller.send_dtmf("47*#")
        await asyncio.sleep(0.5)
        await caller.hangup()
        assert (await caller.wait_call_closed(timeout=5))["param"] == "Connection reset by user"
        assert (await callee.wait_call_closed(timeout=5))["param"] == "Connection reset by peer"
        assert callee.received_dtmf() == "47*#"
        with pytest.raises(BaresipError):
            await callee.wait_call_closed(timeout=0.2)  # each event is returned once
        heard_by_caller, _ = caller.heard()
        heard_by_callee, _ = callee.heard()
    assert abs(audio.dominant_frequency(heard_by_caller) - 1200) < 5
    assert abs(audio.dominant_frequency(heard_by_callee) - 700) < 5
    assert caller.returncode == 0


def process_group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (from /proc: field 5 of stat)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


async def test_kamailio_leaves_no_process_behind() -> None:
    """When the harness stops Kamailio, nothing of its process group is left (a TCP child was
    once seen to outlive its main process)."""
    async with start_kamailio(password="secret") as kamailio:
        pgid = kamailio.process.pid
        assert len(process_group(pgid)) > 1  # the main process and its children
    assert process_group(pgid) == []
