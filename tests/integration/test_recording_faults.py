"""Recording under faults: SIGKILL mid-recording, webhook receivers that fail, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from tests.integration.conftest import running_platform, write_serve_config
from tests.peers import audio
from tests.peers.ports import free_tcp_port, free_udp_port

from callbox.caller import place_call
from callbox.server.config import Route
from callbox.server.webhooks import verify

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


def serve_config(tmp_path: Path, sip_port: int, http_port: int, fmt: str,
                 status_url: str) -> Path:
    record = {"format": fmt, "direction": "speak", "status_url": status_url}
    route = swml({"answer": {}}, {"record_call": record}, {"sleep": 60_000})
    return write_serve_config(tmp_path, sip_port=sip_port, http_port=http_port,
                              routes={"rec": route})


async def start_serve(config: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    while True:  # the banner's last line says where the data lives
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line, "callbox serve exited before it was ready"
        if line.lstrip().startswith(b"data"):
            return process


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
async def test_sigkill_mid_recording_is_recovered_on_restart(tmp_path, fmt):
    async with webhook_receiver(fail_first=0) as (hook_url, received):
        await sigkill_and_restart(tmp_path, fmt, hook_url)
        for _ in range(100):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.1)
    states = [json.loads(body)["params"]["state"] for body, _ in received]
    assert states == ["recording", "finished"]  # the recovered recording is reported


async def sigkill_and_restart(tmp_path: Path, fmt: str, hook_url: str) -> None:
    sip_port, http_port = free_udp_port(), free_tcp_port()
    config = serve_config(tmp_path, sip_port, http_port, fmt, hook_url)
    tone = tmp_path / "tone.wav"
    audio.write_wav(tone, audio.tone(700, 20.0, dbfs=-12))
    server = await start_serve(config)
    caller = subprocess.Popen(
        [CALLBOX, "call", f"sip:rec@127.0.0.1:{sip_port}", "--play", str(tone),
         "--hangup-after", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    recordings = tmp_path / "data" / "recordings"
    try:
        await wait_for_part_seconds(recordings, fmt, 3.0, timeout=30)
        server.send_signal(signal.SIGKILL)
        await server.wait()
    finally:
        caller.kill()
        caller.wait()
    parts = list(recordings.glob("*.part"))
    assert len(parts) == 1, "the crash should leave one unfinished file"
    held = part_seconds(parts[0], fmt)  # the audio the crash left on disk
    assert held >= 3.0

    server = await start_serve(config)
    try:
        auth = {"Authorization": aiohttp.encode_basic_auth("p1", "t1")}
        async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.1:{http_port}/api/relay/rest/recordings", headers=auth, ssl=False
        ) as response:
            assert response.status == 200
            (item,) = (await response.json())["data"]
        assert item["state"] == "finished"
        assert item["duration"] == pytest.approx(held, abs=PART_TOLERANCE[fmt])  # all of it
        recovered = tmp_path / "data" / "recordings" / f"{item['id']}.{fmt}"
        samples, _ = audio.decode_audio(recovered)
        assert abs(len(samples) / 8000 - item["duration"]) < 0.2
        assert audio.tone_level_dbfs(samples[4000:20000], 700) > -16
        assert not list(recovered.parent.glob("*.part"))
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 15)


# Bytes per second of audio in a mono recording: 16-bit PCM; MP3 at 32 kbit/s (the default).
PART_BYTES_PER_SECOND = {"wav": 16000, "mp3": 4000}
PART_HEADER_BYTES = {"wav": 44, "mp3": 0}
# MP3: a trailing partial frame (72 ms) is cut on repair, and the encoder's delay.
PART_TOLERANCE = {"wav": 0.001, "mp3": 0.2}


def part_seconds(part: Path, fmt: str) -> float:
    """Seconds of audio in an unfinished mono recording, from its size."""
    return max(0, part.stat().st_size - PART_HEADER_BYTES[fmt]) / PART_BYTES_PER_SECOND[fmt]


async def wait_for_part_seconds(directory: Path, fmt: str, seconds: float,
                                timeout: float) -> float:
    """Until the one unfinished recording in `directory` holds `seconds` of audio; returns
    the seconds it holds then."""
    deadline = asyncio.get_running_loop().time() + timeout
    held = 0.0
    while held < seconds:
        assert asyncio.get_running_loop().time() < deadline, f"{held:.2f} s recorded so far"
        await asyncio.sleep(0.05)
        parts = list(directory.glob(f"*.{fmt}.part")) if directory.exists() else []
        held = part_seconds(parts[0], fmt) if parts else 0.0
    return held


@contextlib.asynccontextmanager
async def webhook_receiver(fail_first: int):
    received: list[tuple[bytes, dict[str, str]]] = []
    attempts = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        body = await request.read()
        if attempts <= fail_first:
            return web.Response(status=500)
        received.append((body, dict(request.headers)))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_status_url_webhooks_in_order_signed_and_retried(tmp_path):
    async with webhook_receiver(fail_first=1) as (url, received):
        routes = [Route("rec", swml=swml(
            {"answer": {}}, {"record_call": {"status_url": url, "control_id": "wh"}},
            {"sleep": 60_000}), project="p1")]
        async with running_platform(tmp_path, routes) as running:
            from callbox.server.config import Project

            running.platform.config.projects.append(Project("p1", "t1", signing_key="sk"))
            running.platform.recorder.signing_keys["p1"] = "sk"
            await place_call(running.uri("rec"), hangup_after=1.5)
            await running.wait_call_ended()
            assert await running.platform.webhooks.flush(timeout=20)
    bodies = [json.loads(body) for body, _ in received]
    assert [b["params"]["state"] for b in bodies] == ["recording", "finished"]
    assert all(b["event_type"] == "calling.call.record" for b in bodies)
    assert bodies[0]["params"]["control_id"] == "wh"
    assert bodies[1]["params"]["url"] == bodies[1]["params"]["record"]["url"]
    finished = bodies[1]["params"]
    (recording,) = (tmp_path / "data" / "recordings").glob("*.wav")
    samples, _ = audio.decode_audio(recording)
    assert finished["duration"] > 0.5
    assert finished["duration"] == pytest.approx(len(samples) / 8000, abs=0.02)
    assert finished["duration"] <= finished["end_time"] - finished["start_time"] + 0.1
    for body, headers in received:
        assert verify(body, "sk", headers["X-Callbox-Signature"])
        assert not verify(body, "wrong", headers["X-Callbox-Signature"])


async def test_full_disk_ends_the_recording_in_error_and_the_call_goes_on(tmp_path):
    recordings = tmp_path / "data" / "recordings"
    recordings.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(recordings)],
                   check=True)
    try:
        prompt = tmp_path / "prompt.wav"  # what the other caller hears: 10 s of 1000 Hz
        audio.write_wav(prompt, audio.tone(1000, 10.0, dbfs=-12))
        routes = [Route("rec", swml=swml({"answer": {}}, {"record_call": {}},
                                         {"sleep": 60_000})),
                  Route("listen", swml=swml({"answer": {}}, {"play": {"url": str(prompt)}},
                                            {"sleep": 60_000}))]
        async with running_platform(tmp_path, routes) as running:
            tone = tmp_path / "tone.wav"
            audio.write_wav(tone, audio.tone(700, 10.0, dbfs=-12))
            heard = tmp_path / "heard.wav"
            other = asyncio.create_task(place_call(running.uri("listen"), hangup_after=10.5,
                                                   record_heard=heard))
            task = asyncio.create_task(place_call(running.uri("rec"), play=str(tone),
                                                  hangup_after=8))
            while not any(o.call.recordings for o in running.observed):
                await asyncio.sleep(0.05)
            (recorded,) = [o.call for o in running.observed if o.call.recordings]
            recording = recorded.recordings[0]
            event = await asyncio.wait_for(asyncio.shield(recording.done), 10)
            assert event["state"] == "error"
            assert "No space left on device" in event["reason"]
            assert recorded.state == "answered"  # the call goes on
            result = await task
            other_result = await other
        assert result.hung_up_by == "us" and result.answered_seconds >= 7.9
        # the other call, live while the disk filled up, heard all of its prompt, unbroken
        assert other_result.hung_up_by == "us"
        samples, _rate = audio.read_wav(heard)
        spans = audio.active_spans(samples, threshold_dbfs=-30)
        longest = max(end - start for start, end in spans)
        assert longest > 9.8, spans
        assert abs(audio.dominant_frequency(samples[8000:80000]) - 1000) < 20
    finally:
        subprocess.run(["umount", str(recordings)], check=False)


def fill_disk(path: Path) -> None:
    """Fill the file system of `path` to the last byte."""
    with open(path, "wb", buffering=0) as filler:
        for chunk in (65536, 4096, 1):
            block = b"\0" * chunk
            with contextlib.suppress(OSError):
                while True:
                    filler.write(block)


async def test_full_data_disk_ends_the_recording_in_error_keeps_and_reports_its_audio(tmp_path):
    """The data directory (recordings AND their database) fills up: finishing failed on
    SQLite ("database or disk is full"), the recording stayed `recording` forever with no
    error webhook, and after a restart it was called "lost in a crash before any audio"
    although its WAV file was there."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(data)], check=True)
    try:
        async with webhook_receiver(fail_first=0) as (hook_url, received):
            routes = [Route("rec", swml=swml(
                {"answer": {}},
                {"record_call": {"direction": "speak", "status_url": hook_url,
                                 "control_id": "full"}},
                {"sleep": 60_000}))]
            tone = tmp_path / "tone.wav"
            audio.write_wav(tone, audio.tone(700, 10.0, dbfs=-12))
            filler = data / "filler"
            async with running_platform(tmp_path, routes) as running:
                task = asyncio.create_task(place_call(running.uri("rec"), play=str(tone),
                                                      hangup_after=8))
                while not running.observed or not running.observed[0].call.recordings:
                    await asyncio.sleep(0.05)
                call = running.observed[0].call
                (recording,) = call.recordings
                part = data / "recordings" / f"{recording.id}.wav.part"
                while not part.exists() or part.stat().st_size < 44 + 2 * 16000:
                    await asyncio.sleep(0.05)  # 2 s of audio on disk
                fill_disk(filler)
                event = await asyncio.wait_for(asyncio.shield(recording.done), 10)
                assert event["state"] == "error", event
                assert "No space left on device" in event["reason"]
                assert "database or disk is full" in event["reason"]  # its end not stored
                assert event["duration"] >= 1.9 and event["url"] == recording.url
                kept = data / "recordings" / f"{recording.id}.wav"
                assert kept.stat().st_size == event["size"]  # the audio is kept, and said so
                assert call.state == "answered"  # the call goes on
                filler.unlink()  # room again: the held error webhook goes out
                for _ in range(100):
                    if len(received) >= 2:
                        break
                    await asyncio.sleep(0.1)
                await task
            states = [json.loads(body)["params"]["state"] for body, _ in received]
            assert states[:2] == ["recording", "error"]
            error = json.loads(received[1][0])["params"]
            assert error["reason"] == event["reason"] and error["duration"] == event["duration"]

            async with running_platform(tmp_path, routes) as restarted:  # after the outage
                assert restarted.platform.recordings is not None
                row = await restarted.platform.recordings.get(recording.id)
                assert row is not None and row.state == "error"
                assert "before any audio" not in (row.reason or "")
                assert row.duration == pytest.approx(event["duration"], abs=0.01)
                assert row.size == event["size"]
        samples, _ = audio.decode_audio(kept)
        assert len(samples) / 8000 == pytest.approx(event["duration"], abs=0.01)
        assert audio.tone_level_dbfs(samples[4000:12000], 700) > -16
    finally:
        subprocess.run(["umount", str(data)], check=False)
