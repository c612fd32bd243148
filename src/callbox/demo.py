"""`callbox demo`: the platform answers a real SIP call and the caller hears its prompt.

Everything runs for real on loopback: the platform's SIP/RTP stack answers, executes a SWML
route with a TTS prompt, and `callbox call`'s own SIP/RTP stack places the call and saves what
it heard.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

from callbox.caller import place_call
from callbox.server.app import Platform
from callbox.server.config import Config, Route

DEMO_PROMPT = "Hello from callbox. Your platform answered this call and played this prompt."


def demo_config(data_dir: Path) -> Config:
    swml = {"version": "1.0.0", "sections": {"main": [
        {"answer": {}},
        {"play": {"url": f"say:{DEMO_PROMPT}"}},
        {"hangup": {}},
    ]}}
    config = Config()
    config.sip.listen = "127.0.0.1:0"
    config.http.listen = "127.0.0.1:0"
    config.storage.data_dir = str(data_dir)
    config.routes = [Route(number="prompt", swml=json.dumps(swml))]
    return config


def _level_dbfs(path: Path) -> tuple[float, float]:
    with wave.open(str(path)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    seconds = len(samples) / 8000
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0
    return seconds, 20 * np.log10(max(rms, 1e-9) / 32768)


async def run_demo(data_dir: Path) -> int:
    platform = Platform(demo_config(data_dir))
    await platform.start()
    try:
        print(platform.banner())
        host, port = platform.listening.sip if platform.listening else ("127.0.0.1", 5060)
        uri = f"sip:prompt@{host}:{port}"
        heard = data_dir / "demo" / "heard.wav"
        heard.parent.mkdir(parents=True, exist_ok=True)
        print(f"\nplacing a real SIP call to {uri} ...")
        result = await place_call(uri, record_heard=heard, hangup_after=30)
        if result.status >= 300:
            print(f"the call failed: {result.status} {result.reason}")
            return 1
        seconds, level = _level_dbfs(heard)
        print(f"the platform answered, played its prompt and hung up "
              f"({'it' if result.hung_up_by == 'remote' else 'we'} ended the call after "
              f"{result.answered_seconds:.1f} s)")
        print(f"RTP packets received by the caller: {result.packets_received}")
        print(f"the caller heard {seconds:.1f} s of audio at {level:.1f} dBFS, saved to {heard}")
        print(f"listen to it: play {heard}    (sox; or: aplay {heard})")
        return 0 if result.packets_received > 0 else 1
    finally:
        await platform.stop()
