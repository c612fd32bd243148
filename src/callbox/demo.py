"""`callbox demo`: real calls recorded on a local platform.

Everything runs for real on loopback: the platform (SIP, RTP, RELAY over WSS, recording), the
seed's RELAY voicemail program (`callbox/examples/relay_voicemail.py`, the documentation's
example with only its import changed) as its own process, and callers placed by `callbox call`
in processes of their own, as phones:

1. a voicemail: the caller speaks a message after the beep and presses `#`;
2. a call between two people: the caller's route records the call in stereo (SWML
   `record_call`) and `connect`s it to a second SIP endpoint - the platform calling itself on
   a route that answers and speaks, as a person would - and the demo shows that the recording
   holds the caller on the left channel and the person called on the right.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from pathlib import Path

import numpy as np

from callbox import examples
from callbox.server.app import Platform
from callbox.server.call import Call
from callbox.server.config import Config, Project, Route
from callbox.server.http.console.routes import ROOT as CONSOLE_PATH
from callbox.server.media.sources import render_tts
from callbox.server.recording.engine import Recording
from callbox.server.recording.machine import RecState

# The seed program's own credentials and context, so that it runs unchanged.
PROJECT, TOKEN, CONTEXT = "your-project-id", "your-api-token", "default"
MESSAGE = ("Hi, this is a test message for callbox. The platform answered, played the "
           "prompt, beeped, and is recording what I say. Goodbye.")
LEAD_IN_SECONDS = 4.0  # the prompt and the beep play first
RECORDING_SAVED = "Recording saved: "
VOICEMAIL_PROGRAM = Path(examples.__file__).with_name("relay_voicemail.py")
CALLER_WORDS = "Hello, this is the caller. Can you hear me?"
PERSON_WORDS = "Hi, this is the person you called. I hear you well. Goodbye."
PERSON_LISTENS_MS = 3500  # the person lets the caller speak first
BRIDGED_SAVED = "Bridged recording saved: "


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


def two_people_routes(sip_host: str, sip_port: int) -> list[Route]:
    """`bridge`: record in stereo, connect to `person`, hang up when the person did;
    `person`: answers, listens, speaks, hangs up."""
    person = Route("person", swml=swml(
        {"answer": {}}, {"sleep": PERSON_LISTENS_MS},
        {"play": {"url": f"say:{PERSON_WORDS}"}}, {"hangup": {}}))
    bridge = Route("bridge", swml=swml(
        {"record_call": {"control_id": "conversation", "stereo": True, "format": "wav",
                         "direction": "both"}},
        {"connect": {"to": f"sip:person@{sip_host}:{sip_port}", "timeout": 20}},
        {"hangup": {}}))
    return [person, bridge]


def demo_config(data_dir: Path) -> Config:
    config = Config()
    config.sip.listen = "127.0.0.1:0"
    config.http.listen = "127.0.0.1:0"
    config.storage.data_dir = str(data_dir)
    config.projects = [Project(PROJECT, TOKEN)]
    config.routes = [Route(number="voicemail", context=CONTEXT)]
    return config


async def write_speech(path: Path, text: str, lead_in: float) -> float:
    """The caller's audio: `lead_in` seconds of silence, then `text` spoken. Returns its
    length in seconds."""
    speech = await render_tts(text)
    samples = np.concatenate([np.zeros(int(lead_in * 8000), np.int16), speech])
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.astype("<i2").tobytes())
    return len(samples) / 8000


async def write_message(path: Path) -> float:
    """The voicemail caller's audio: silence while the prompt plays, then the spoken message.
    Returns when (seconds after answer) the caller should press '#'."""
    return await write_speech(path, MESSAGE, LEAD_IN_SECONDS) + 0.5


async def call_from_a_phone(uri: str, play: Path, hangup_after: float, dtmf: str = "") -> bool:
    """Call `uri` with `callbox call` in a process of its own, as a phone elsewhere would: its
    media clock does not share the platform's loop (a stall there would delay the audio it
    sends, and the far end drops what comes after its playout delay). True when answered."""
    args = [sys.executable, "-m", "callbox.cli", "call", uri, "--play", str(play),
            "--hangup-after", f"{hangup_after:.2f}"]
    if dtmf:
        args += ["--dtmf", dtmf]
    phone = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await phone.communicate()
    if phone.returncode != 0:
        print(f"the call failed: {out.decode().strip()}")
    return phone.returncode == 0


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


async def voicemail_call(platform: Platform, demo_dir: Path) -> bool:
    """The seed voicemail program records a caller's message; True when it was saved."""
    assert platform.listening is not None
    sip_host, sip_port = platform.listening.sip
    message = demo_dir / "message.wav"
    press_at = await write_message(message)
    print(f"\nstarting the seed voicemail program: {VOICEMAIL_PROGRAM}")
    program = await start_program(platform)
    try:
        uri = f"sip:voicemail@{sip_host}:{sip_port}"
        print(f"placing a real SIP call to {uri}: it speaks a message and presses # ...")
        saved = asyncio.ensure_future(read_saved_url(program))
        if not await call_from_a_phone(uri, message, press_at + 15, f"#@{press_at:.2f}"):
            return False
        url = await asyncio.wait_for(saved, 15)
        if not url:
            print("the voicemail program did not report a recording")
            return False
        recording = await platform.recordings.get(url.rsplit("/", 1)[-1].split(".")[0]) \
            if platform.recordings else None
        print(f"\nRecording saved: {url}")
        if recording is not None:
            print(f"  state {recording.state}, {recording.duration:.1f} s, {recording.size} "
                  f"bytes, file {recording.path}")
            print(f"  listen to it:   play {recording.path}    (sox; or ffplay -nodisp "
                  f"-autoexit {recording.path})")
        print("  (the url is served while the platform runs: with `callbox serve`, download it "
              "with curl -k -o voicemail.mp3 URL)")
        return recording is not None and recording.state == "finished"
    finally:
        if program.returncode is None:
            program.send_signal(2)  # Ctrl-C: the program stops cleanly
            try:
                await asyncio.wait_for(program.wait(), 10)
            except TimeoutError:
                program.kill()


async def two_people_call(platform: Platform, demo_dir: Path) -> bool:
    """A caller connected to a person, recorded in stereo; True when the recording finished."""
    assert platform.listening is not None
    sip_host, sip_port = platform.listening.sip
    platform.config.routes.extend(two_people_routes(sip_host, sip_port))  # the port is known
    callers: list[Call] = []
    platform.call_observers.append(
        lambda call: callers.append(call) if call.to_user == "bridge" else None)
    words = demo_dir / "caller.wav"
    length = await write_speech(words, CALLER_WORDS, 0.5)
    uri = f"sip:bridge@{sip_host}:{sip_port}"
    person = f"sip:person@{sip_host}:{sip_port}"
    print(f"\nrecording a call between two people: a real SIP call to {uri}, whose SWML "
          f"records it (record_call, stereo) and connects it to {person} (a route that answers "
          "and speaks) ...")
    if not await call_from_a_phone(uri, words, length + 30):
        return False
    if not callers or not callers[0].recordings:
        print("the call was not recorded")
        return False
    recording = callers[0].recordings[0]
    assert isinstance(recording, Recording)
    await asyncio.wait_for(asyncio.shield(recording.done), 15)
    print(f"\n{BRIDGED_SAVED}{recording.url}")
    print(f"  state {recording.state}, {recording.duration or 0:.1f} s, stereo WAV, "
          f"file {recording.path}")
    print(f"  left channel:  the caller ({uri}), who said {CALLER_WORDS!r}")
    print(f"  right channel: the person called ({person}), who said {PERSON_WORDS!r}")
    print(f"  listen to it:   play {recording.path}")
    return recording.state is RecState.FINISHED


async def run_demo(data_dir: Path) -> int:
    platform = Platform(demo_config(data_dir))
    await platform.start()
    try:
        print(platform.banner())
        print(f"  console   {platform.config.http.public_url}{CONSOLE_PATH}  (sign in with "
              f"project {PROJECT!r} and token {TOKEN!r}; open it while the demo runs)")
        demo_dir = data_dir / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        voicemail = await voicemail_call(platform, demo_dir)
        bridged = await two_people_call(platform, demo_dir)
        return 0 if voicemail and bridged else 1
    finally:
        await platform.stop()
