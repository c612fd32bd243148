"""`callbox demo`: the seed voicemail program records a real call on a local platform.

Everything runs for real on loopback: the platform (SIP, RTP, RELAY over WSS, recording), the
seed's RELAY voicemail program (`callbox/examples/relay_voicemail.py`, the documentation's
example with only its import changed) as its own process, and a caller placed with the engine of
`callbox call` that speaks a message after the beep and presses `#`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import wave
from pathlib import Path

import numpy as np

from callbox import examples
from callbox.caller import place_call
from callbox.server.app import Platform
from callbox.server.config import Config, Project, Route
from callbox.server.media.sources import render_tts

# The seed program's own credentials and context, so that it runs unchanged.
PROJECT, TOKEN, CONTEXT = "your-project-id", "your-api-token", "default"
MESSAGE = ("Hi, this is a test message for callbox. The platform answered, played the "
           "prompt, beeped, and is recording what I say. Goodbye.")
LEAD_IN_SECONDS = 4.0  # the prompt and the beep play first
RECORDING_SAVED = "Recording saved: "
VOICEMAIL_PROGRAM = Path(examples.__file__).with_name("relay_voicemail.py")


def demo_config(data_dir: Path) -> Config:
    config = Config()
    config.sip.listen = "127.0.0.1:0"
    config.http.listen = "127.0.0.1:0"
    config.storage.data_dir = str(data_dir)
    config.projects = [Project(PROJECT, TOKEN)]
    config.routes = [Route(number="voicemail", context=CONTEXT)]
    return config


async def write_message(path: Path) -> float:
    """The caller's audio: silence while the prompt plays, then the spoken message.
    Returns when (seconds after answer) the caller should press '#'."""
    speech = await render_tts(MESSAGE)
    samples = np.concatenate([np.zeros(int(LEAD_IN_SECONDS * 8000), np.int16), speech])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.astype("<i2").tobytes())
    return len(samples) / 8000 + 0.5


async def start_program(platform: Platform) -> asyncio.subprocess.Process:
    assert platform.listening is not None
    host, port = platform.listening.https
    env = dict(os.environ, CALLBOX_RELAY_URL=f"wss://{host}:{port}/",
               SIGNALWIRE_RELAY_CA_FILE=str(platform.listening.cert))
    program = await asyncio.create_subprocess_exec(
        sys.executable, "-u", str(VOICEMAIL_PROGRAM), env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    for _ in range(200):  # until it has connected and subscribed to its context
        if platform.relay.has_session_for(PROJECT, CONTEXT):
            return program
        if program.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError("the voicemail program did not connect")


async def read_saved_url(program: asyncio.subprocess.Process) -> str:
    assert program.stdout is not None
    while line := (await program.stdout.readline()).decode():
        print(f"  [voicemail.py] {line.rstrip()}")
        if line.startswith(RECORDING_SAVED):
            return line[len(RECORDING_SAVED):].strip()
    return ""


async def run_demo(data_dir: Path) -> int:
    platform = Platform(demo_config(data_dir))
    await platform.start()
    program = None
    try:
        print(platform.banner())
        assert platform.listening is not None
        sip_host, sip_port = platform.listening.sip
        demo_dir = data_dir / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        message = demo_dir / "message.wav"
        press_at = await write_message(message)

        print(f"\nstarting the seed voicemail program: {VOICEMAIL_PROGRAM}")
        program = await start_program(platform)
        uri = f"sip:voicemail@{sip_host}:{sip_port}"
        print(f"placing a real SIP call to {uri}: it speaks a message and presses # ...")
        saved = asyncio.ensure_future(read_saved_url(program))
        result = await place_call(uri, play=str(message), dtmf=[("#", press_at)],
                                  hangup_after=press_at + 15)
        if result.status >= 300:
            print(f"the call failed: {result.status} {result.reason}")
            return 1
        url = await asyncio.wait_for(saved, 15)
        if not url:
            print("the voicemail program did not report a recording")
            return 1
        recording = platform.recordings.get(url.rsplit("/", 1)[-1].split(".")[0]) \
            if platform.recordings else None
        print(f"\nRecording saved: {url}")
        if recording is not None:
            print(f"  state {recording.state}, {recording.duration:.1f} s, {recording.size} bytes, "
                  f"file {recording.path}")
            print(f"  listen to it:   play {recording.path}    (sox; or ffplay -nodisp "
                  f"-autoexit {recording.path})")
        print("  (the url is served while the platform runs: with `callbox serve`, download it "
              "with curl -k -o voicemail.mp3 URL)")
        return 0 if recording is not None and recording.state == "finished" else 1
    finally:
        if program is not None and program.returncode is None:
            program.send_signal(2)  # Ctrl-C: the program stops cleanly
            try:
                await asyncio.wait_for(program.wait(), 10)
            except TimeoutError:
                program.kill()
        await platform.stop()
