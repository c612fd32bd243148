"""The platform under test, in-process on ephemeral ports, and what it observed of each call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from tests.peers.ports import free_port_range, release

from callbox.server.app import Platform
from callbox.server.call import Call
from callbox.server.config import Config, Route, Trunk
from callbox.server.sip.transaction import Timers

PROMPT_TEXT = "Hello from callbox. This is the prompt route."
# Short SIP timers so that timeouts (64*T1) take 3.2 s instead of 32 s.
FAST_TIMERS = Timers(t1=0.05, t2=0.4, t4=0.5, d=1.0)


def swml(*verbs: object) -> str:
    return json.dumps({"version": "1.0.0", "sections": {"main": list(verbs)}})


ROUTES = [
    Route(
        "prompt", swml=swml({"answer": {}}, {"play": {"url": f"say:{PROMPT_TEXT}"}}, {"hangup": {}})
    ),
    # Answers and listens until the caller hangs up.
    Route("listen", swml=swml({"answer": {}}, {"sleep": 120_000})),
    # Rings and never answers (for CANCEL).
    Route("ring", swml=swml({"sleep": 120_000})),
    Route("badswml", swml=swml({"answer": {}}, {"dance": {}})),
    Route("voicemail", context="default"),
]


@dataclass
class ObservedCall:
    """What the platform saw of one call: digits, the received audio, media counters."""

    call: Call
    digits: list[str] = field(default_factory=list)
    digit_times: list[float] = field(default_factory=list)  # time.time() of each digit
    speak_frames: list[np.ndarray] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def on_digit(self, digit: str) -> None:
        self.digits.append(digit)
        self.digit_times.append(time.time())

    @property
    def speak(self) -> np.ndarray:
        if not self.speak_frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.speak_frames)


@dataclass
class RunningPlatform:
    platform: Platform
    observed: list[ObservedCall]

    @property
    def sip_port(self) -> int:
        assert self.platform.listening is not None
        return self.platform.listening.sip[1]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def uri(self, user: str) -> str:
        return f"sip:{user}@{self.target}"

    async def wait_call_ended(self, index: int = 0, timeout: float = 15.0) -> ObservedCall:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.observed) <= index:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"call #{index} never arrived at the platform")
            await asyncio.sleep(0.02)
        seen = self.observed[index]
        await asyncio.wait_for(
            seen.ended.wait(), max(0.1, deadline - asyncio.get_running_loop().time())
        )
        return seen


def write_serve_config(tmp_path: Path, *, sip_port: int, http_port: int,
                       routes: dict[str, str], sections: Sequence[str] = ()) -> Path:
    """A callbox.toml for `callbox serve` as a subprocess: project p1/t1, SWML `routes`
    (number -> document); `sections`: more TOML lines (e.g. a ``[cluster]`` table)."""
    rtp = free_port_range(40)
    lines = [
        "[sip]", f'listen = "127.0.0.1:{sip_port}"', f'rtp_ports = "{rtp.start}-{rtp.stop - 1}"',
        "[http]", f'listen = "127.0.0.1:{http_port}"',
        f'public_url = "https://127.0.0.1:{http_port}"',
        "[storage]", f'data_dir = "{tmp_path / "data"}"',
        *sections,
        "[[projects]]", 'id = "p1"', 'token = "t1"',
    ]
    for number, document in routes.items():
        lines += ["[[routes]]", f'number = "{number}"', f"swml = '{document}'"]
    path = tmp_path / "callbox.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_config(tmp_path: Path, routes: Sequence[Route] = ROUTES) -> Config:
    config = Config()
    config.sip.listen = "127.0.0.1:0"
    config.http.listen = "127.0.0.1:0"
    ports = free_port_range(64)
    config.sip.rtp_ports = f"{ports.start}-{ports.stop - 1}"
    config.storage.data_dir = str(tmp_path / "data")
    config.routes = list(routes)
    return config


@contextlib.asynccontextmanager
async def running_platform(tmp_path: Path, routes: Sequence[Route] = ROUTES, *,
                           trunks: Sequence[Trunk] = (),
                           **settings: object) -> AsyncIterator[RunningPlatform]:
    """A platform on ephemeral ports with `routes` and `trunks`; `settings` are dotted config
    keys."""
    config = make_config(tmp_path, routes)
    config.trunks = list(trunks)
    for dotted, value in settings.items():
        section, _, key = dotted.partition("__")
        setattr(getattr(config, section), key, value)
    instance = Platform(config, sip_timers=FAST_TIMERS)
    observed: list[ObservedCall] = []

    def observe(call: Call) -> None:
        seen = ObservedCall(call)
        call.on_dtmf(seen.on_digit)
        call.add_tap(lambda speak, listen: seen.speak_frames.append(speak.copy()))
        call.on_state(lambda c: seen.ended.set() if c.state == "ended" else None)
        observed.append(seen)

    instance.call_observers.append(observe)
    low, high = (int(port) for port in config.sip.rtp_ports.split("-"))
    await instance.start()
    try:
        yield RunningPlatform(instance, observed)
    finally:
        await instance.stop()
        release(range(low, high + 1))  # its RTP sockets are closed


def https(platform: Platform) -> ssl.SSLContext:
    """Verifies the platform's own (self-signed) certificate."""
    assert platform.listening is not None
    return ssl.create_default_context(cafile=str(platform.listening.cert))


async def console_json(platform: Platform, path: str, *, project: str = "p1",
                       token: str = "t1") -> Any:
    """The console's JSON API at `/console/api/{path}`, signed in as `project` (as the browser
    does: a session cookie, no Basic auth)."""
    base = platform.config.http.public_url
    jar = aiohttp.CookieJar(unsafe=True)  # the cookie of an IP address host
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(base + "/console/signin", data={"project": project, "token": token},
                             ssl=https(platform), allow_redirects=False) as response:
            assert response.status == 303, await response.text()
        async with http.get(f"{base}/console/api/{path}", ssl=https(platform)) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[RunningPlatform]:
    async with running_platform(tmp_path) as running:
        yield running
