"""`callbox serve --config FILE` as a user runs it: banner, a real call, HTTPS, clean stop."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from tests.integration.conftest import write_serve_config
from tests.peers import audio
from tests.peers.ports import free_tcp_port, free_udp_port

from callbox.wire.basic_auth import basic_auth_header

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")


def write_config(tmp_path: Path, sip_port: int, http_port: int) -> Path:
    tone = json.dumps({"version": "1.0.0", "sections": {"main": [
        {"answer": {}}, {"play": {"url": "tone:440:1.5"}}, {"hangup": {}}]}})
    return write_serve_config(tmp_path, sip_port=sip_port, http_port=http_port,
                              routes={"tone": tone})


async def read_banner(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    while len(lines) < 5:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        if not line:
            break
        lines.append(line.decode())
    return "".join(lines)


async def test_serve_prints_where_it_listens_answers_calls_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    sip_port, http_port = free_udp_port(), free_tcp_port()
    config = write_config(tmp_path, sip_port, http_port)
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        banner = await read_banner(process)
        assert f"udp:127.0.0.1:{sip_port}" in banner
        assert f"https://127.0.0.1:{http_port}/" in banner
        found = re.search(r"TLS cert\s+(\S+)", banner)
        assert found is not None, banner
        cert = Path(found.group(1))
        assert cert == (tmp_path / "data" / "tls" / "cert.pem").resolve() and cert.exists()

        # HTTPS with the self-signed certificate, verified against itself
        context = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{http_port}"
        async with aiohttp.ClientSession() as session, session.get(
            base + "/health", ssl=context
        ) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}  # liveness only: no counts

        heard = tmp_path / "heard.wav"
        caller = await asyncio.create_subprocess_exec(
            CALLBOX, "call", f"sip:tone@127.0.0.1:{sip_port}", "--record-heard", str(heard),
            "--hangup-after", "10", stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(caller.communicate(), 30)
        assert caller.returncode == 0
        assert b"hung up by remote" in out
        samples, _ = audio.read_wav(heard)
        spans = audio.active_spans(samples, 8000, threshold_dbfs=-30)
        assert len(spans) == 1 and 1.4 <= spans[0][1] - spans[0][0] <= 1.6
        assert abs(audio.dominant_frequency(samples) - 440) < 5
        await check_metrics(base, context)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    assert process.returncode == 0


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_auth_header(user, password)}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {sample name with labels: value}; checks HELP/TYPE lines."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.fullmatch(r"# (HELP \w+ .+|TYPE \w+ (counter|gauge))", line), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


async def check_metrics(base: str, context: ssl.SSLContext) -> None:
    """/metrics: 401 without a project's credentials; the counts once the call has ended."""
    async with aiohttp.ClientSession() as session:
        for headers in ({}, basic("p1", "wrong"), basic("nobody", "t1"), basic("p1", "")):
            async with session.get(base + "/metrics", ssl=context, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            async with session.get(base + "/metrics", ssl=context,
                                   headers=basic("p1", "t1")) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                metrics = parse_metrics(await response.text())
            if metrics["callbox_calls"] == 0 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    assert metrics["callbox_calls"] == 0
    assert metrics["callbox_recordings_active"] == 0
    assert metrics["callbox_rtp_packets_sent_total"] >= 75  # the 1.5 s tone, 20 ms packets
    assert metrics["callbox_rtp_packets_received_total"] > 0
    assert metrics["callbox_media_ticks_total"] >= 75
    assert "callbox_media_late_ticks_total" in metrics
    assert "callbox_media_max_behind_seconds" in metrics
    assert any(name.startswith("callbox_info{") for name in metrics)


async def test_serve_with_a_bad_config_says_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sip]\nlisten = "localhost"\n')
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"sip.listen must be HOST:PORT" in err
