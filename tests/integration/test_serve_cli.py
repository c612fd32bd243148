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

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")


def write_config(tmp_path: Path, sip_port: int, http_port: int) -> Path:
    tone = json.dumps({"version": "1.0.0", "sections": {"main": [
        {"answer": {}}, {"play": {"url": "tone:440:1.5"}}, {"hangup": {}}]}})
    return write_serve_config(tmp_path, sip_port=sip_port, http_port=http_port,
                              routes={"tone": tone})


async def read_banner(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines = []
    while len(lines) < 5:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        if not line:
            break
        lines.append(line.decode())
    return "".join(lines)


async def test_serve_prints_where_it_listens_answers_calls_and_stops_on_sigterm(tmp_path):
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
        cert = Path(re.search(r"TLS cert\s+(\S+)", banner).group(1))
        assert cert == (tmp_path / "data" / "tls" / "cert.pem").resolve() and cert.exists()

        # HTTPS with the self-signed certificate, verified against itself
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.1:{http_port}/health", ssl=context
        ) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "healthy"

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
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    assert process.returncode == 0


async def test_serve_with_a_bad_config_says_what_is_wrong(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[sip]\nlisten = "localhost"\n')
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"sip.listen must be HOST:PORT" in err
