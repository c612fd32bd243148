"""Concurrent recorded calls on one machine: how many, at what cost, every recording complete.

Starts the platform (`callbox serve`, a subprocess with a generated config and its own data
directory), drives N concurrent calls with sipp (each streams the same known speech file for
`--seconds`, then hangs up; calls are ramped with `-r`), records every call (a SWML
`record_call` route, or a RELAY program), and measures what follows. The `bridged-*` variant
connects every call (SWML `record_call` then `connect`) to one sipp UAS that answers all N and
streams other speech back: N pairs, 2N legs, each pair recorded stereo on the inbound leg
(caller left, callee right), both channels checked; "per call" then means per pair. The
`prompt-*` variants play a prompt lasting the whole call (SWML `play` of a WAV written here) to
every caller, checked on the right channel. `short-wav-stereo` places 10 s calls, N at a time,
for `--seconds`: setup and teardown cost (whole-run CPU per call).

- the platform's CPU time per recorded call-second (utime+stime of the platform process, all
  threads, from /proc, over the window where all N calls are up), its event-loop thread's share,
  the machine's CPU (/proc/stat) and sipp's;
- peak RSS (VmHWM) and RSS per call over the idle platform;
- RTP packets sent by sipp vs received by the platform (`/metrics` totals: received, late);
- every recording decoded and compared with the source, 20 ms frame by 20 ms frame, after
  aligning by cross-correlation: a frame is lost when it differs from the source by more than
  G.711 noise (WAV: the file must equal the decoded G.711 stream) or, for MP3, by more than the
  codec's own error (see LOSSY_ERROR_RATIO); bridged, the right channel likewise against the
  callee's source (aligned on its own: it starts when the callee answered);
- the time from sipp's BYE to the recording's `finished` event (its `end_time` in the REST
  API; sipp logs the moment each BYE leaves), p50 and p99;
- SIP setup latency: sipp's INVITE -> 200 OK response time (`rtd`), p50 and p99.

The step search runs N over `--steps` for each variant and event loop, stopping a variant at its
first failing step; a step passes when every call succeeded, every recording is complete
(0 lost frames, right duration) and the processes under test (platform, sipp, RELAY program,
this bench) used under `--max-cpu` (80 %) of the machine, and BYE -> `finished` p99 is within
`--max-finish-ms` (250 ms); other users' CPU is reported beside.

    .venv/bin/python bench/concurrent_recordings.py                       # the full search
    .venv/bin/python bench/concurrent_recordings.py --variants wav-stereo --steps 500 \\
        --loops uvloop --seconds 60                                       # one step
    .venv/bin/python bench/concurrent_recordings.py --max-minutes 60 --results bench/RESULTS.md

    .venv/bin/python bench/concurrent_recordings.py --variants wav-stereo,bridged-wav-stereo \\
        --loops uvloop --steps 150,250,300                                # bridged vs not
    .venv/bin/python bench/concurrent_recordings.py --loops uvloop --steps 300,500,600 \\
        --variants wav-stereo,prompt-wav-stereo,prompt-mp3-stereo,short-wav-stereo
                                                                  # the real workload, interleaved

With `--nodes 2`, each step runs two platforms (`--workers` media workers each) behind Kamailio
(the repository's dispatcher config, tests/peers/kamailio_dispatcher.py), sipp calling
Kamailio: the platform CPU and RSS are both nodes' process trees summed, the recordings are
fetched from each node's REST API and checked in its data directory (RELAY variants: one node).

    .venv/bin/python bench/concurrent_recordings.py --nodes 2 --workers 1 --loops uvloop \\
        --variants wav-stereo --steps 20 --seconds 10                     # two nodes
    .venv/bin/python bench/concurrent_recordings.py --nodes 1,2 --workers 1 --loops uvloop \\
        --variants prompt-wav-stereo --steps 700,800,1000,1200            # one node vs two

`tests/integration/test_concurrent_recordings.py` runs small steps (20 calls, 5 bridged pairs,
10 calls with a prompt, x 10 s) through the same functions as a correctness test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform as host_platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the real-peer harness lives in tests/peers
    sys.path.insert(0, str(ROOT))

from tests.peers import audio  # noqa: E402
from tests.peers.kamailio_dispatcher import start_dispatcher  # noqa: E402
from tests.peers.ports import (  # noqa: E402
    forget_handed_out,
    free_port_range,
    free_tcp_port,
    free_udp_port,
)
from tests.peers.sipp import (  # noqa: E402
    SippResult,
    SippUas,
    run_sipp,
    start_sipp_uas,
    stream_key,
)

from callbox.server.media.g711 import ulaw_decode, ulaw_encode  # noqa: E402

RATE = 8000
FRAME = 160  # samples per 20 ms frame = per RTP packet of the stream
LEAD_SECONDS = 0.5  # silence at the head of the stream: room for the recording to start
TAIL_SECONDS = 0.5  # the stream ends this long before the BYE
BED_DBFS = -30.0  # a quiet two-tone bed under the speech, so every frame has content
LOSSLESS_ERROR_RATIO = 1e-3  # WAV: error power above -30 dB of the frame = not G.711 noise
LOSSY_ERROR_RATIO = 0.5  # MP3: -3 dB; a lost frame (silence) scores 1.0
MAX_START_LAG_SECONDS = 2.0
PROBE_OFFSET_SECONDS = 1  # align on 3 s of content from here (a late start may miss the head)
DURATION_TOLERANCE = 0.1  # seconds: file length vs recording start -> BYE
MP3_EXTRA_SECONDS = 0.2  # MP3 decoders add the encoder delay and the last frame's padding
PROJECT, TOKEN = "bench", "bench-token"
SERVICE = "rec"
RELAY_CONTEXT = "bench"
SENTENCES = (
    "The quick brown fox jumps over the lazy dog while the band plays on.",
    "Please leave your message after the tone, and we will call you back.",
    "Seven silver swans swam silently across the still and misty lake.",
    "Our office hours are Monday to Friday, from nine in the morning until five.",
    "A recording is complete only when every frame of the call is in the file.",
    "Numbers one two three four five six seven eight nine ten, and back again.",
    "She sells sea shells by the sea shore, and the shells she sells are real.",
    "Thank you for calling. Your call is important to us. Please stay on the line.",
)


# -- what is recorded -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    format: str
    stereo: bool
    relay: bool = False
    bridged: bool = False  # the route connects each caller to a sipp callee (2 legs a call)
    prompt: bool = False  # the route plays a prompt lasting the whole call (checked on the right)
    call_seconds: float = 0.0  # short calls: this long each, N at a time for `--seconds`
    recorded: bool = True  # False: the route only answers (call_setup_cost's bare calls)

    @property
    def short(self) -> bool:
        """Many short calls in sequence at a concurrency of N (setup and teardown cost)."""
        return self.call_seconds > 0

    def record_params(self) -> dict[str, object]:
        return {"format": self.format, "stereo": self.stereo, "direction": "both"}

    @property
    def lossy(self) -> bool:
        return self.format == "mp3"

    @property
    def legs(self) -> int:
        """SIP calls on the platform per recorded call."""
        return 2 if self.bridged else 1


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("wav-mono", "wav", False),
    Variant("wav-stereo", "wav", True),
    Variant("mp3-mono", "mp3", False),
    Variant("mp3-stereo", "mp3", True),
    Variant("relay-wav-stereo", "wav", True, relay=True),
    Variant("bridged-wav-stereo", "wav", True, bridged=True),
    Variant("prompt-wav-stereo", "wav", True, prompt=True),
    Variant("prompt-mp3-stereo", "mp3", True, prompt=True),
    Variant("short-wav-stereo", "wav", True, call_seconds=10.0),
)}


@dataclass(frozen=True)
class Speaker:
    """Who streams a source: the sentences, the espeak-ng voice and the two-tone bed under them."""

    name: str
    sentences: tuple[str, ...]
    voice: str
    bed_hz: tuple[float, float]
    late_seconds: float  # starts up to this long after the caller's ACK, so ends this much sooner


CALLER = Speaker("caller", SENTENCES, "en", (350.0, 440.0), 0.0)
# The callee says other sentences in another voice over another bed: a channel holding the wrong
# party (or both) does not match its source. The platform dials it once the caller is answered,
# so its stream starts later; it is shorter by `late_seconds` to end before the caller's BYE.
CALLEE = Speaker("callee", SENTENCES[::-1], "en+f3", (480.0, 620.0), 1.5)
# The prompt the platform plays (from a WAV file the bench writes) starts at the answer, before
# the caller's ACK, and ends `late_seconds` before the caller's stream would.
PROMPT = Speaker("prompt", SENTENCES[3:] + SENTENCES[:3], "en+m3", (300.0, 530.0), 0.5)


@dataclass(frozen=True)
class Source:
    """The audio every caller (or callee) streams, and what the platform should receive of it."""

    stream: str  # sipp `-key stream` value
    path: Path  # headerless PCMU
    call_seconds: float  # the caller's ACK -> BYE
    frames: int  # RTP packets per call
    content_start: int  # first sample that is checked (after the lead-in)
    max_lag_seconds: float = MAX_START_LAG_SECONDS  # its first sample is at most this far in


    def reference(self) -> np.ndarray:
        """The decoded G.711 stream: exactly what the platform's receive path produces."""
        return ulaw_decode(self.path.read_bytes())


def make_source(call_seconds: float, directory: Path, speaker: Speaker = CALLER) -> Source:
    """Speech (espeak-ng) over a quiet two-tone bed, lead-in silence, as a PCMU file lasting
    `call_seconds - TAIL_SECONDS - speaker.late_seconds`."""
    shortest = LEAD_SECONDS + TAIL_SECONDS + speaker.late_seconds + 1.0
    if call_seconds < shortest:
        raise ValueError(f"calls must last at least {shortest:g} s, got {call_seconds:g}")
    total = round((call_seconds - TAIL_SECONDS - speaker.late_seconds) * RATE) // FRAME * FRAME
    lead = int(LEAD_SECONDS * RATE)
    pieces: list[np.ndarray] = []
    length = 0
    while length < total - lead:
        for sentence in speaker.sentences:
            piece = audio.speech(sentence, voice=speaker.voice)
            pieces += [piece, np.zeros(RATE // 4, np.int16)]
            length += len(piece) + RATE // 4
    speech = np.concatenate(pieces)[: total - lead].astype(np.float64)
    t = np.arange(len(speech)) / RATE
    low, high = speaker.bed_hz
    bed = 10 ** (BED_DBFS / 20) * 32767 * 0.5 * (np.sin(2 * np.pi * low * t)
                                                  + np.sin(2 * np.pi * high * t))
    content = np.clip(speech + bed, -32768, 32767).astype(np.int16)
    samples = np.concatenate([np.zeros(lead, np.int16), content])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"source-{speaker.name}-{call_seconds:g}s.ulaw"
    path.write_bytes(ulaw_encode(samples))
    return Source(stream_key(path, 1, 0), path, call_seconds, total // FRAME, lead,
                  MAX_START_LAG_SECONDS + speaker.late_seconds)


def write_prompt_wav(source: Source) -> Path:
    """The prompt as an 8 kHz mono WAV for the platform's `play`: the decoded G.711 file, so
    what the platform sends (and records) at unity gain is exactly `source.reference()`."""
    path = source.path.with_suffix(".wav")
    if not path.exists():
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(source.reference().astype("<i2").tobytes())
    return path


# -- checking a recording ---------------------------------------------------------------------


@dataclass
class ChannelCheck:
    """One channel of a recording against the source its party streamed."""

    frames: int = 0  # content frames checked
    lost: int = 0  # frames missing or different
    lag: int = 0  # samples: where the source's first sample sits in the recording
    score: float = 0.0  # normalised cross-correlation at `lag`
    lost_at: list[int] = field(default_factory=list)  # checked frame numbers (first few)
    skipped: int = 0  # content frames sent before the recording started


@dataclass
class FrameCheck:
    """One recording against the sources: the caller's on the first channel (the only one of
    a mono file) and, when bridged, the callee's on the second."""

    path: str
    caller: ChannelCheck = field(default_factory=ChannelCheck)
    callee: ChannelCheck | None = None
    duration: float = 0.0  # seconds of audio in the file
    channels: int = 0
    expected_duration: float = math.nan  # seconds from the recording's start to the BYE
    error: str = ""

    @property
    def lost(self) -> int:
        """Lost frames on every checked channel."""
        return self.caller.lost + (self.callee.lost if self.callee else 0)


def count_lost_frames(recorded: np.ndarray, reference: np.ndarray, content_start: int,
                      *, lossy: bool) -> tuple[int, int, int, float]:
    """Align `recorded` (mono: the caller's side) with `reference` by cross-correlation and
    count the 20 ms content frames that differ from it. Returns (frames, lost, lag, score)."""
    frames, bad, lag, score, _skipped = lost_frame_map(recorded, reference, content_start,
                                                       lossy=lossy)
    return frames, int(np.count_nonzero(bad)), lag, score


def lost_frame_map(recorded: np.ndarray, reference: np.ndarray, content_start: int,
                   *, lossy: bool, max_lag_seconds: float = MAX_START_LAG_SECONDS,
                   ) -> tuple[int, np.ndarray, int, float, int]:
    """:func:`count_lost_frames` with the per-frame verdict (True = lost) instead of a count.

    Returns (frames checked, verdicts, lag, score, frames skipped): content frames the caller
    sent before the recording started (a RELAY program answers, then records) are skipped,
    not lost; from the recording's first sample to the source's end every frame must be there.
    The source may start up to `max_lag_seconds` into the recording.
    """
    rec = recorded.astype(np.float64)
    ref = reference.astype(np.float64)
    probe_at = content_start + PROBE_OFFSET_SECONDS * RATE
    probe = ref[probe_at: probe_at + 3 * RATE]
    max_lag = int(max_lag_seconds * RATE)
    window = rec[: probe_at + len(probe) + max_lag]
    score, shift = audio.max_normalized_xcorr(window, probe, max_lag + probe_at,
                                              min_overlap=0.9)
    lag = shift - probe_at  # rec[k + lag] ~ ref[k]
    total = (len(ref) - content_start) // FRAME
    first = content_start + lag  # where content frame 0 sits in the recording
    skipped = min(total, max(0, -(first // FRAME)))  # whole frames before the file's start
    frames = total - skipped
    start = content_start + skipped * FRAME
    ref_frames = ref[start: start + frames * FRAME].reshape(frames, FRAME)
    aligned = np.zeros(frames * FRAME)
    at = start + lag
    lo, hi = max(at, 0), min(at + frames * FRAME, len(rec))
    if hi > lo:
        aligned[lo - at: hi - at] = rec[lo:hi]
    aligned_frames = aligned.reshape(frames, FRAME)
    error = ((aligned_frames - ref_frames) ** 2).sum(axis=1)
    power = (ref_frames ** 2).sum(axis=1)
    ratio = LOSSY_ERROR_RATIO if lossy else LOSSLESS_ERROR_RATIO
    return frames, error > ratio * np.maximum(power, 1.0), lag, score, skipped


_REFERENCES: dict[Path, np.ndarray] = {}


def check_channel(recorded: np.ndarray, source: Source, *, lossy: bool) -> ChannelCheck:
    """One channel against `source`, frame by frame (see :func:`lost_frame_map`)."""
    reference = _REFERENCES.get(source.path)
    if reference is None:
        reference = _REFERENCES[source.path] = source.reference()
    check = ChannelCheck()
    check.frames, bad, check.lag, check.score, check.skipped = lost_frame_map(
        recorded, reference, source.content_start, lossy=lossy,
        max_lag_seconds=source.max_lag_seconds)
    check.lost = int(np.count_nonzero(bad))
    check.lost_at = [int(i) for i in np.flatnonzero(bad)[:10]]
    return check


def check_recording(path: str, caller: Source, callee: Source | None, lossy: bool
                    ) -> FrameCheck:
    """Decode one recording and count its lost frames (runs in worker processes): the first
    channel against the caller's source; with a `callee` (the callee's stream, or the prompt
    the platform played), the second channel against it."""
    check = FrameCheck(path)
    try:
        samples, rate = audio.decode_audio(path)
        if rate != RATE:
            raise ValueError(f"sample rate {rate}, expected {RATE}")
        check.channels = 1 if samples.ndim == 1 else samples.shape[1]
        check.duration = len(samples) / RATE
        speak = samples if samples.ndim == 1 else samples[:, 0]
        check.caller = check_channel(speak, caller, lossy=lossy)
        if callee is not None:
            if check.channels != 2:
                raise ValueError(f"{check.channels} channel(s): no callee channel to check")
            check.callee = check_channel(samples[:, 1], callee, lossy=lossy)
    except Exception as exc:  # a broken file is a result, not a crash of the bench
        check.error = f"{type(exc).__name__}: {exc}"
    return check


def check_recordings(paths: Sequence[str], caller: Source, callee: Source | None = None, *,
                     lossy: bool, workers: int = 2) -> list[FrameCheck]:
    args = [(p, caller, callee, lossy) for p in paths]
    if workers <= 1 or len(paths) < 8:
        return [check_recording(*a) for a in args]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(check_recording, *zip(*args, strict=True), chunksize=8))


# -- /proc --------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_split(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads) or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one of its threads."""
    return sum(proc_cpu_split(pid, tid))


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU of a process, its reaped children (cutime + cstime) and its live descendants."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    total = sum(int(v) for v in fields[11:15]) / CLOCK_TICKS
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            total += sum(process_tree_cpu_seconds(int(c)) for c in children.read_text().split())
    return total


def proc_status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def child_pids(name: str) -> list[int]:
    """This process's children called `name` (sipp runs as our child)."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                        pids.append(int(pid))
    return pids


def udp_drops() -> int:
    """Machine-wide UDP receive-buffer drops (/proc/net/snmp RcvbufErrors)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed) for us and the children we start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
        return target
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


# -- the platform under test ----------------------------------------------------------------


def swml_route(variant: Variant, callee_uri: str | None = None,
               prompt: Path | None = None) -> str:
    """Answer, record, then stay on the line (bridged: connect to `callee_uri`; with a prompt:
    play the `prompt` file first, then stay on the line)."""
    verbs: list[dict[str, object]] = [{"answer": {}}]
    if variant.recorded:
        verbs.append({"record_call": variant.record_params()})
    if variant.prompt:
        if prompt is None:
            raise ValueError(f"the {variant.name} variant needs a prompt file")
        verbs.append({"play": {"url": str(prompt)}})
    if variant.bridged:
        if callee_uri is None:
            raise ValueError(f"the {variant.name} variant needs a callee URI")
        verbs.append({"connect": {"to": callee_uri}})
    else:
        verbs.append({"sleep": 3_600_000})
    return json.dumps({"version": "1.0.0", "sections": {"main": verbs}}, separators=(",", ":"))


def write_config(directory: Path, variant: Variant, calls: int, callee_uri: str | None = None,
                 prompt: Path | None = None) -> tuple[Path, dict[str, int]]:
    """A callbox.toml for this step: fresh data dir, an RTP range of 2 ports per leg (+100),
    max_calls above N legs, a plain-HTTP listener for the bench's polling (no TLS handshakes
    in the numbers), and the recording route."""
    legs = variant.legs * calls
    rtp = free_port_range(2 * legs + 100)
    ports = {"sip": free_udp_port(), "https": free_tcp_port(), "http": free_tcp_port()}
    lines = [
        "[sip]", f'listen = "127.0.0.1:{ports["sip"]}"',
        f'rtp_ports = "{rtp.start}-{rtp.stop - 1}"', f"max_calls = {legs + 100}",
        "[http]", f'listen = "127.0.0.1:{ports["https"]}"',
        f'public_url = "https://127.0.0.1:{ports["https"]}"',
        f'plain_listen = "127.0.0.1:{ports["http"]}"',
        "[storage]", f'data_dir = "{directory / "data"}"',
        "[log]", 'level = "info"',
        "[[projects]]", f'id = "{PROJECT}"', f'token = "{TOKEN}"',
        "[[routes]]", f'number = "{SERVICE}"',
    ]
    lines += [f'context = "{RELAY_CONTEXT}"'] if variant.relay else [
        f"swml = '{swml_route(variant, callee_uri, prompt)}'"]
    path = directory / "callbox.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, ports


class ServedPlatform:
    """`callbox serve` as a subprocess, with its log in a file."""

    def __init__(self, directory: Path, variant: Variant, calls: int, loop: str,
                 callee_uri: str | None = None, prompt: Path | None = None, *,
                 workers: int = 1) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config, self.ports = write_config(directory, variant, calls, callee_uri, prompt)
        self.loop = loop
        self.workers = workers
        self.log_path = directory / "platform.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.ports['http']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def sip_target(self) -> str:
        return f"127.0.0.1:{self.ports['sip']}"

    async def start(self, session: aiohttp.ClientSession, timeout: float = 30.0
                    ) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "callbox.cli", "serve", "--config", str(self.config),
               "--loop", self.loop, "--workers", str(self.workers)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.directory,
                                         preexec_fn=raise_open_files_limit)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"callbox serve exited ({self.proc.returncode}):\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(self.base + "/health") as response:
                    alive = response.status == 200 and (await response.json()).get("status")
                if alive == "ok":
                    return await self.metrics(session)
            await asyncio.sleep(0.1)
        raise RuntimeError("callbox serve did not become healthy")

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The platform's /metrics (Prometheus text, project credentials) as a dict: calls,
        recordings, media_late_ticks, media_max_behind_ms, event_loop, rtp {name: total}."""
        token = base64.b64encode(f"{PROJECT}:{TOKEN}".encode()).decode()
        async with session.get(self.base + "/metrics",
                               headers={"Authorization": f"Basic {token}"}) as response:
            response.raise_for_status()
            return parse_metrics(await response.text())

    async def recordings(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Every recording of the project, through the REST API (all pages)."""
        rows: list[dict[str, Any]] = []
        url: str | None = f"{self.base}/api/relay/rest/recordings?page_size=1000"
        token = base64.b64encode(f"{PROJECT}:{TOKEN}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        while url:
            async with session.get(url, headers=headers) as response:
                body = await response.json()
            rows += body["data"]
            url = body["links"].get("next")
            if url:  # links carry the public (HTTPS) base: stay on the plain listener
                url = self.base + url[url.index("/api/"):]
        return rows

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def call_ids(self) -> dict[str, str]:
        """Platform call id -> SIP Call-ID, from the platform's per-call log line."""
        pattern = re.compile(r"call ([0-9a-f-]{36}) from .* \(SIP (\S+)\)$")
        ids = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match:
                ids[match.group(1)] = match.group(2)
        return ids


# -- one step ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    platform_cpu: float
    loop_cpu: float
    machine_busy: float
    machine_total: float
    sipp_cpu: float
    relay_cpu: float
    bench_cpu: float
    rss_kb: int
    calls: int
    worker_cpu: dict[int, float] = field(default_factory=dict)  # media workers by pid


@dataclass
class StepResult:
    variant: str
    loop: str
    calls: int  # recorded calls at once (bridged: pairs)
    seconds: float  # length of each call
    workers: int = 1  # media worker processes (0: media in the main process), per node
    legs: int = 0  # SIP calls on the platform at once (bridged: 2 per pair)
    placed: int = 0  # calls placed in all (short calls: N at a time, in sequence; else N)
    calls_ok: int = 0
    calls_failed: int = 0
    callee_calls_ok: int = -1  # bridged: calls the sipp callee completed (-1: no callee)
    callee_answer_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    recordings: int = 0
    complete: int = 0  # finished, 0 lost frames, right duration
    lost_frames: int = 0
    bad_duration: int = 0
    cpu_ms_per_call_second: float = math.nan
    # every platform process (children too) from the first INVITE to the last recording done
    run_cpu_ms_per_call: float = math.nan
    run_cpu_ms_per_call_second: float = math.nan
    platform_cpu_pct: float = math.nan  # of one core
    loop_cpu_pct: float = math.nan  # the event-loop thread, of one core
    busiest_worker_pct: float = math.nan  # the busiest media worker process, of one core
    machine_cpu_pct: float = math.nan  # of the whole machine (all cores, all processes)
    our_cpu_pct: float = math.nan  # of the whole machine: platform + sipp + RELAY + bench
    sipp_cpu_pct: float = math.nan  # of one core
    relay_cpu_pct: float = math.nan  # the RELAY program in the steady window, of one core
    relay_ms_per_call: float = math.nan  # the RELAY program's CPU over the whole run, per call
    other_cpu_pct: float = math.nan  # everything else on the machine (other users), of 1 core
    window_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_per_call_kb: float = 0.0
    rtp_sent: int = 0
    rtp_received: int = 0
    rtp_late: int = 0
    udp_drops: int = 0
    late_ticks: int = 0
    max_stall_ms: float = 0.0  # the media clock's longest stall
    bye_to_finished_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    setup_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    max_start_lag_ms: float = math.nan
    wall_seconds: float = 0.0
    max_cpu_pct: float = 80.0
    nodes: int = 1  # platforms behind Kamailio (1: sipp calls the platform itself)
    recordings_per_node: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checks: list[FrameCheck] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.placed = self.placed or self.calls

    @property
    def passed(self) -> bool:
        return (not self.problems and self.complete == self.placed
                and self.calls_ok == self.placed and self.callee_calls_ok in (-1, self.calls)
                and not (self.our_cpu_pct >= self.max_cpu_pct))


def percentiles(values: Iterable[float]) -> tuple[float, float, float]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    p50, p99 = np.percentile(data, [50, 99])
    return float(p50), float(p99), float(data.max())


def sipp_bye_times(workdir: Path) -> dict[str, float]:
    """SIP Call-ID -> unix time the BYE left, from the scenario's log action."""
    times = {}
    for path in workdir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[1] == "BYE":
                with contextlib.suppress(ValueError):
                    times[parts[0]] = float(parts[-1])
    return times


def sipp_response_times(workdir: Path) -> list[float]:
    """INVITE -> 200 OK per call, ms (sipp -trace_rtt with -rtt_freq 1)."""
    values = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    values.append(float(parts[1]))
    return values


def parse_metrics(text: str) -> dict[str, Any]:
    """The counters this benchmark reads, from /metrics' Prometheus text exposition."""
    samples: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = value
    info = next((name for name in samples if name.startswith("callbox_info{")), "")
    loop_label = re.search(r'event_loop="([^"]*)"', info)
    rtp = {name[len("callbox_rtp_"):-len("_total")]: int(float(value))
           for name, value in samples.items()
           if name.startswith("callbox_rtp_") and name.endswith("_total")}
    return {
        "calls": int(float(samples["callbox_calls"])),
        "recordings": int(float(samples["callbox_recordings_active"])),
        "media_late_ticks": int(float(samples["callbox_media_late_ticks_total"])),
        "media_max_behind_ms": round(float(samples["callbox_media_max_behind_seconds"]) * 1000, 1),
        "event_loop": loop_label.group(1) if loop_label else "",
        "rtp": rtp,
    }


def _iso_to_unix(text: str | None) -> float:
    if not text:
        return math.nan
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def _sample(platforms: Sequence[ServedPlatform], session: aiohttp.ClientSession,
                  relay_pid: int | None) -> Sample:
    """One sample of every node: CPU of their process trees (main loop threads, RSS, calls)
    summed."""
    busy, total = machine_cpu()
    try:
        calls = sum([(await platform.metrics(session))["calls"] for platform in platforms])
    except (aiohttp.ClientError, OSError, KeyError):
        calls = -1
    return Sample(
        t=time.monotonic(),
        platform_cpu=sum(process_tree_cpu_seconds(platform.pid) for platform in platforms),
        loop_cpu=sum(proc_cpu_seconds(platform.pid, platform.pid) for platform in platforms),
        machine_busy=busy, machine_total=total,
        sipp_cpu=sum(proc_cpu_seconds(pid) for pid in child_pids("sipp")),
        relay_cpu=proc_cpu_seconds(relay_pid) if relay_pid else 0.0,
        bench_cpu=time.process_time() + _children_cpu(),
        rss_kb=sum(proc_status_kb(platform.pid, "VmRSS") for platform in platforms),
        calls=calls,
        worker_cpu={pid: proc_cpu_seconds(pid) for platform in platforms
                    for pid in process_children(platform.pid)},
    )


def process_children(pid: int) -> list[int]:
    """The direct children of `pid` (the platform's media workers)."""
    pids: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(c) for c in children.read_text().split()]
    return pids


def _children_cpu() -> float:
    """CPU of this process's finished children (analysis workers of earlier steps)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _steady_window(samples: list[Sample], calls: int) -> tuple[Sample, Sample] | None:
    """First and last samples of the stretch where all calls were up (one sample trimmed at
    each end, so ramp-up and the first hangups stay out)."""
    full = [i for i, s in enumerate(samples) if s.calls >= calls]
    if len(full) < 4:
        return None
    return samples[full[0] + 1], samples[full[-1] - 1]


def start_callees(calls: int, source: Source, workdir: Path
                  ) -> contextlib.AbstractAsyncContextManager[SippUas]:
    """One sipp UAS taking the platform's `calls` outbound calls: each answered at once,
    `source` streamed once from the ACK, ended by the platform's BYE. Media ports: a block of
    4 per call (sipp's `[auto_media_port]`); sipp accepts incoming calls without a `-l` limit."""
    media = free_port_range(4 * calls + 8)
    return start_sipp_uas("uas_answer", media_port=media.start, keys={"stream": source.stream},
                          calls=calls, trace_messages=False, workdir=workdir,
                          extra_args=["-fd", "5"])


async def run_step(variant: Variant, calls: int, *, seconds: float = 60.0, rate: float = 50.0,
                   loop: str = "uvloop", workers: int = 1, nodes: int = 1, workdir: Path,
                   source: Source | None = None,
                   callee_source: Source | None = None, prompt_source: Source | None = None,
                   max_cpu_pct: float = 80.0, max_finish_ms: float = math.inf,
                   analysis_workers: int = 2,
                   progress: Callable[[str], object] | None = None) -> StepResult:
    """Run N concurrent recorded calls (bridged: N pairs, each caller connected to a sipp
    callee streaming `callee_source`; prompt: the platform plays `prompt_source` to each
    caller; short: calls of `variant.call_seconds`, N at a time, for `seconds`) against a fresh
    platform and measure everything. Sources of the wrong length are made anew. A BYE ->
    `finished` p99 over `max_finish_ms` is a problem (the search's criterion; tests keep it off:
    no timing is asserted there). With `nodes` > 1, that many platforms (each `workers` media
    workers) behind Kamailio (deploy/kamailio's dispatcher config), which sipp calls: CPU, RSS
    and calls are summed over the nodes, recordings fetched from each node's REST API."""
    if variant.relay and nodes > 1:
        raise ValueError("the RELAY variants run on one node (no bus between the nodes here)")
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    workdir.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    placed = calls
    if variant.short:  # N at a time, a new call as one ends: the ramp takes one call length
        placed = calls * max(1, round(seconds / variant.call_seconds))
        seconds, rate = variant.call_seconds, calls / variant.call_seconds

    def fitting(given: Source | None, speaker: Speaker) -> Source:
        if given is not None and given.call_seconds == seconds:
            return given
        return make_source(seconds, workdir, speaker)

    source = fitting(source, CALLER)
    callee_source = fitting(callee_source, CALLEE) if variant.bridged else None
    prompt_source = fitting(prompt_source, PROMPT) if variant.prompt else None
    prompt_wav = write_prompt_wav(prompt_source) if prompt_source else None
    result = StepResult(variant.name, loop, calls, seconds, workers, legs=variant.legs * calls,
                        placed=placed, callee_calls_ok=0 if variant.bridged else -1,
                        max_cpu_pct=max_cpu_pct, nodes=nodes)
    relay_proc: subprocess.Popen[bytes] | None = None
    callee_sipp: SippResult | None = None
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        callees = None
        if callee_source is not None:
            callees = await stack.enter_async_context(
                start_callees(calls, callee_source, workdir / "callee"))
        media = free_port_range(4 * calls + 8)  # sipp's, the largest range: taken first
        # Kamailio deals the calls round-robin: each node's RTP range and max_calls are sized
        # for its share with a margin (all of them for one node)
        per_node = calls if nodes == 1 else math.ceil(calls * 1.2 / nodes)
        platforms = [ServedPlatform(workdir / f"node-{index + 1}" if nodes > 1 else workdir,
                                    variant, per_node, loop,
                                    callees.uri("callee") if callees else None, prompt_wav,
                                    workers=workers) for index in range(nodes)]
        platform = platforms[0]  # the RELAY program's
        try:
            for node in platforms:
                metrics = await node.start(session)
            result.loop = metrics.get("event_loop", loop)
            if loop != "auto" and result.loop != loop:
                result.problems.append(f"asked for the {loop} loop, got {result.loop}")
            target, scenario, proxy_args = platform.sip_target, "uac_stream_bye", []
            if nodes > 1:
                kamailio = await stack.enter_async_context(
                    start_dispatcher([node.sip_target for node in platforms]))
                target, scenario = kamailio.target, "uac_stream_bye_via_proxy"
                proxy_args = ["-default_behaviors", "all,-abortunexp"]  # late 180s
            if variant.relay:
                relay_proc = await start_relay_program(platform, variant, workdir)
            await asyncio.sleep(0.5)
            idle_rss = sum(proc_status_kb(node.pid, "VmRSS") for node in platforms)
            drops_before = udp_drops()
            cpu_before = sum(process_tree_cpu_seconds(node.pid) for node in platforms)
            say(f"{variant.name} {loop} N={calls}: calling")
            sipp_task = asyncio.create_task(run_sipp(
                scenario, target, service=SERVICE,
                local_port=free_udp_port(), media_port=media.start,
                keys={"stream": source.stream}, calls=placed, rate=rate, limit=calls,
                timeout=seconds * placed / calls + calls / rate + 120, trace_messages=False,
                workdir=workdir / "sipp",
                extra_args=["-d", str(int(seconds * 1000)), "-trace_logs", "-log_file",
                            str(workdir / "sipp" / "calls.log"), "-trace_rtt",
                            "-rtt_freq", "1", "-fd", "5", *proxy_args],
            ))
            relay_pid = relay_proc.pid if relay_proc else None
            while not sipp_task.done():
                samples.append(await _sample(platforms, session, relay_pid))
                await asyncio.wait({sipp_task}, timeout=1.0)
            sipp: SippResult = sipp_task.result()
            say(f"{variant.name} {loop} N={calls}: calls done, waiting for the recordings")
            deadline = time.monotonic() + 60
            per_node: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                per_node = [await node.metrics(session) for node in platforms]
                if all(m["recordings"] == 0 and m["calls"] == 0 for m in per_node):
                    break
                await asyncio.sleep(0.2)
            run_cpu = sum(process_tree_cpu_seconds(node.pid) for node in platforms) - cpu_before
            result.run_cpu_ms_per_call = run_cpu * 1000 / placed
            result.run_cpu_ms_per_call_second = result.run_cpu_ms_per_call / seconds
            peak_rss_kb = sum(proc_status_kb(node.pid, "VmHWM") for node in platforms)
            result.peak_rss_mb = peak_rss_kb / 1024
            result.rss_per_call_kb = (peak_rss_kb - idle_rss) / calls
            result.udp_drops = udp_drops() - drops_before
            for metrics in per_node:
                rtp = metrics.get("rtp", {})
                result.rtp_received += rtp.get("packets_received", 0)
                result.rtp_late += rtp.get("packets_late", 0)
                result.late_ticks += metrics.get("media_late_ticks", 0)
                result.max_stall_ms = max(result.max_stall_ms,
                                          metrics.get("media_max_behind_ms", 0.0))
            rows: list[dict[str, Any]] = []
            for node in platforms:  # each node's own recordings, in its own data dir
                own = await node.recordings(session)
                rows += [{**row, "node": node} for row in own]
                result.recordings_per_node.append(len(own))
            if callees is not None:  # it got every BYE by now, unless calls failed
                callee_sipp = await callees.wait(timeout=10)
        finally:
            if relay_proc is not None:
                result.relay_ms_per_call = proc_cpu_seconds(relay_proc.pid) * 1000 / calls
                stop_process(relay_proc)
            for node in platforms:
                node.stop()

    # -- SIP and CPU
    result.calls_ok = sipp.stat("SuccessfulCall")
    result.calls_failed = sipp.stat("FailedCall")
    if not sipp.ok:
        result.problems.append(f"sipp exit {sipp.returncode}"
                               f"{' (timed out)' if sipp.timed_out else ''}")
    result.rtp_sent = result.calls_ok * source.frames
    if callee_sipp is not None and callee_source is not None:
        result.callee_calls_ok = callee_sipp.stat("SuccessfulCall")
        if not callee_sipp.ok:
            result.problems.append(f"callee sipp exit {callee_sipp.returncode}"
                                   f"{' (stopped)' if callee_sipp.timed_out else ''}, "
                                   f"{result.callee_calls_ok} calls completed")
        result.rtp_sent += result.callee_calls_ok * callee_source.frames
    result.setup_ms = percentiles(sipp_response_times(workdir / "sipp"))
    # short calls come and go: their window is where at least 90 % of N are up
    window = _steady_window(samples, math.ceil(result.legs * (0.9 if variant.short else 1.0)))
    if window is None:
        result.problems.append("never had all calls up at once (ramp too slow for the length?)")
    else:
        first, last = window
        span = last.t - first.t
        result.window_seconds = span
        platform_cpu = last.platform_cpu - first.platform_cpu
        call_seconds = calls * span
        if variant.short:  # the calls that were up, sampled every second
            steady = [s for s in samples if first.t <= s.t <= last.t]
            call_seconds = sum((a.calls + b.calls) / 2 * (b.t - a.t)
                               for a, b in itertools.pairwise(steady)) / variant.legs
        result.cpu_ms_per_call_second = platform_cpu * 1000 / call_seconds
        result.platform_cpu_pct = 100 * platform_cpu / span
        result.loop_cpu_pct = 100 * (last.loop_cpu - first.loop_cpu) / span
        worker_cpu = [last.worker_cpu[pid] - first.worker_cpu[pid]
                      for pid in last.worker_cpu if pid in first.worker_cpu]
        if worker_cpu:
            result.busiest_worker_pct = 100 * max(worker_cpu) / span
        # /proc/stat misses some ticks (about 5 % in this VM), per-process times do not: use
        # its busy *share*, and wall time x cores for the per-process figures
        busy_share = ((last.machine_busy - first.machine_busy)
                      / (last.machine_total - first.machine_total))
        cores = os.cpu_count() or 1
        result.machine_cpu_pct = 100 * busy_share
        result.sipp_cpu_pct = 100 * (last.sipp_cpu - first.sipp_cpu) / span
        if variant.relay:
            result.relay_cpu_pct = 100 * (last.relay_cpu - first.relay_cpu) / span
        ours = (platform_cpu + (last.sipp_cpu - first.sipp_cpu) + (last.relay_cpu - first.relay_cpu)
                + (last.bench_cpu - first.bench_cpu))
        result.our_cpu_pct = 100 * ours / (span * cores)
        result.other_cpu_pct = max(0.0, (result.machine_cpu_pct - result.our_cpu_pct) * cores)

    # -- recordings
    sip_ids = {call: sip for node in platforms for call, sip in node.call_ids().items()}
    byes = sipp_bye_times(workdir / "sipp")
    latencies = []
    finished = [r for r in rows if r["state"] == "finished"]
    result.recordings = len(rows)
    if len(finished) != len(rows):
        states = sorted({r["state"] for r in rows})
        result.problems.append(f"recording states {states}")
    expected: dict[str, float] = {}  # file -> seconds from the recording's start to the BYE
    def file_of(row: dict[str, Any]) -> str:
        return str(row["node"].directory / "data" / "recordings" / f"{row['id']}.{row['format']}")

    for row in finished:
        bye = byes.get(sip_ids.get(row["call_id"], ""))
        if bye is not None:
            latencies.append(1000 * (_iso_to_unix(row["end_time"]) - bye))
            expected[file_of(row)] = bye - _iso_to_unix(row["start_time"])
    result.bye_to_finished_ms = percentiles(latencies)
    if result.bye_to_finished_ms[1] > max_finish_ms:
        result.problems.append(f"BYE -> finished p99 {result.bye_to_finished_ms[1]:.0f} ms, "
                               f"over {max_finish_ms:g} ms")
    if len(latencies) != len(finished):
        result.problems.append(f"BYE time known for {len(latencies)} of {len(finished)}")
    say(f"{variant.name} {loop} N={calls}: checking {len(finished)} recordings")
    paths = [file_of(row) for row in finished]
    result.checks = check_recordings(paths, source, callee_source or prompt_source,
                                     lossy=variant.lossy, workers=analysis_workers)
    channels = 2 if variant.stereo else 1
    tolerance = DURATION_TOLERANCE + (MP3_EXTRA_SECONDS if variant.lossy else 0.0)
    for check in result.checks:
        check.duration = round(check.duration, 3)
        check.expected_duration = round(expected.get(check.path, math.nan), 3)
        right_length = abs(check.duration - check.expected_duration) <= tolerance
        result.lost_frames += check.lost
        result.bad_duration += not right_length
        if not check.error and check.lost == 0 and right_length and check.channels == channels:
            result.complete += 1
    errors = sorted({c.error for c in result.checks if c.error})
    if errors:
        result.problems.append(f"undecodable: {errors[:3]}")
    if result.bad_duration:
        worst = max(result.checks, key=lambda c: abs(c.duration - c.expected_duration))
        result.problems.append(f"{result.bad_duration} recordings of the wrong length (worst: "
                               f"{worst.duration} s for {worst.expected_duration} s)")
    if result.checks:
        result.max_start_lag_ms = max(c.caller.lag for c in result.checks) * 1000 / RATE
        late_start = max(c.caller.skipped for c in result.checks)
        if late_start and not variant.relay:  # SWML starts at the answer, before any audio
            result.problems.append(f"a recording started {late_start * 20} ms into the "
                                   "caller's audio")
    callee_checks = [c.callee for c in result.checks if c.callee is not None]
    if callee_checks:  # the callee's audio (or the prompt) starts when it answered (played)
        result.callee_answer_ms = percentiles(c.lag * 1000 / RATE for c in callee_checks)
    lossy_calls = [c for c in result.checks if c.lost]
    if lossy_calls:
        result.problems.append(f"{len(lossy_calls)} recordings lost frames"
                               + lost_frames_where(result.checks))
    result.wall_seconds = time.monotonic() - started
    (workdir / "result.json").write_text(json.dumps(asdict(result), indent=1, default=str))
    return result


def lost_frames_where(checks: Sequence[FrameCheck]) -> str:
    """", at content seconds [...]" per channel that lost frames (the first few)."""
    parts = []
    sides = (("caller", [c.caller for c in checks]),
             ("callee", [c.callee for c in checks if c.callee is not None]))
    for side, channels in sides:
        where = sorted({round(i * FRAME / RATE, 1) for ch in channels for i in ch.lost_at})
        if where:
            parts.append(f"{side} channel at content seconds {where[:8]}")
    return ": " + "; ".join(parts) if parts else ""


# -- the RELAY variant ------------------------------------------------------------------------

RELAY_PROGRAM = Path(__file__).resolve().parent / "relay_recorder.py"


async def start_relay_program(platform: ServedPlatform, variant: Variant,
                              workdir: Path) -> subprocess.Popen[bytes]:
    """The RELAY program that answers and records every call (its own process, so its CPU is
    not the platform's); returns once it is connected."""
    ready = workdir / "relay.ready"
    cmd = [sys.executable, str(RELAY_PROGRAM), "--host", f"127.0.0.1:{platform.ports['http']}",
           "--project", PROJECT, "--token", TOKEN, "--context", RELAY_CONTEXT,
           "--ready-file", str(ready), "--format", variant.format]
    cmd += ["--stereo"] if variant.stereo else []
    with (workdir / "relay.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=raise_open_files_limit)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError("the RELAY program did not connect:\n"
                               + (workdir / "relay.log").read_text(errors="replace")[-3000:])
        await asyncio.sleep(0.1)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- report -----------------------------------------------------------------------------------

HEADER = (
    "| variant | nodes | loop, media workers | N | legs | calls ok | recordings complete "
    "| lost frames | CPU ms per rec. call-s | whole run: CPU ms per call / per call-s "
    "| platform CPU (% of 1 core) | main loop thread / busiest worker % "
    "| machine CPU % (ours / all) | sipp CPU % | other CPU % | peak RSS MB | RSS per call KB "
    "| RTP sent / received / late | clock max stall ms | BYE->finished p50 / p99 ms "
    "| SIP setup p50 / p99 ms | pass |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _f(value: float, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def table_row(r: StepResult) -> str:
    verdict = "yes" if r.passed else "**no**" + (f" ({'; '.join(r.problems)})"
                                                 if r.problems else "")
    name = r.variant + (f" (RELAY program: {_f(r.relay_ms_per_call, 1)} ms CPU per call)"
                        if not math.isnan(r.relay_ms_per_call) else "")
    calls_ok = str(r.calls_ok)
    if not math.isnan(r.callee_answer_ms[0]):
        name += (f" ({'callee' if r.callee_calls_ok >= 0 else 'prompt'} audio from "
                 f"{_f(r.callee_answer_ms[0])} / {_f(r.callee_answer_ms[1])} ms p50 / p99)")
    if r.callee_calls_ok >= 0:
        calls_ok += f" (callee {r.callee_calls_ok})"
    n = str(r.calls) if r.placed == r.calls else f"{r.calls} at once, {r.placed} x {r.seconds:g} s"
    return (f"| {name} | {r.nodes} | {r.loop}, {r.workers} | {n} | {r.legs} | {calls_ok} "
            f"| {r.complete}/{r.placed} "
            f"| {r.lost_frames} | {_f(r.cpu_ms_per_call_second, 3)} "
            f"| {_f(r.run_cpu_ms_per_call, 1)} / {_f(r.run_cpu_ms_per_call_second, 3)} "
            f"| {_f(r.platform_cpu_pct)} "
            f"| {_f(r.loop_cpu_pct)} / {_f(r.busiest_worker_pct)} "
            f"| {_f(r.our_cpu_pct)} / {_f(r.machine_cpu_pct)} "
            f"| {_f(r.sipp_cpu_pct)} "
            f"| {_f(r.other_cpu_pct)} "
            f"| {_f(r.peak_rss_mb)} | {_f(r.rss_per_call_kb)} "
            f"| {r.rtp_sent} / {r.rtp_received} / {r.rtp_late} | {_f(r.max_stall_ms)} "
            f"| {_f(r.bye_to_finished_ms[0])} / {_f(r.bye_to_finished_ms[1])} "
            f"| {_f(r.setup_ms[0])} / {_f(r.setup_ms[1])} | {verdict} |")


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}, {host_platform.machine()}), {memory:.0f} GiB, "
            f"Python {host_platform.python_version()}, {sipp_version()}")


def sipp_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=5).stdout
        match = re.search(r"SIPp v?(\S+)", out)
        if match:
            return f"sipp {match.group(1).split('-')[0]}"
    return "sipp"


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + (" + uncommitted changes in src/" if dirty else "")
    return "unknown"


# -- the search -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="wav-stereo,wav-mono,mp3-stereo,mp3-mono",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--loops", default="uvloop,asyncio",
                        help="event loops to compare: uvloop, asyncio")
    parser.add_argument("--steps", default="100,200,300,500,700,1000",
                        help="N values, ascending; a variant stops at its first failure")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each call")
    parser.add_argument("--rate", type=float, default=50.0, help="new calls per second")
    parser.add_argument("--max-minutes", type=float, default=90.0,
                        help="stop starting steps after this long")
    parser.add_argument("--max-finish-ms", type=float, default=250.0,
                        help="a step fails when BYE -> finished p99 is above this (ms)")
    parser.add_argument("--max-cpu", type=float, default=80.0,
                        help="a step fails when the machine's CPU is above this (%%)")
    parser.add_argument("--workdir", help="keep files here (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep recordings and logs")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-run a failing step this many times (other users of the "
                             "machine can cause a failure; every run is reported)")
    parser.add_argument("--workers", default="1,2",
                        help="media worker processes to compare (0 = media in the main process)")
    parser.add_argument("--results", help="append the table to this Markdown file")
    parser.add_argument("--nodes", default="1",
                        help="platforms behind Kamailio, sipp calling Kamailio (1: sipp calls "
                             "the platform), comma-separated to compare; each node has "
                             "--workers media workers")
    args = parser.parse_args(argv)

    variants = [VARIANTS[name.strip()] for name in args.variants.split(",") if name.strip()]
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    setups = [(loop, int(w), int(n)) for loop in loops
              for n in args.nodes.split(",") if n.strip()
              for w in args.workers.split(",") if w.strip()]
    steps = sorted(int(n) for n in args.steps.split(","))
    deadline = time.monotonic() + args.max_minutes * 60
    root = Path(args.workdir or tempfile.mkdtemp(prefix="callbox-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    source = make_source(args.seconds, root)
    callee_source = (make_source(args.seconds, root, CALLEE)
                     if any(v.bridged for v in variants) else None)
    print(f"# concurrent_recordings: {machine_description()}; commit {git_commit()}; "
          f"calls of {args.seconds:g} s ramped at {args.rate:g}/s; workdir {root}", flush=True)
    print(HEADER, flush=True)
    prompt_source = (make_source(args.seconds, root, PROMPT)
                     if any(v.prompt for v in variants) else None)
    short_sources = {v.call_seconds: make_source(v.call_seconds, root)
                     for v in variants if v.short}
    results: list[StepResult] = []
    skipped: list[str] = []
    for loop, workers, nodes in setups:
        failed: set[str] = set()
        for calls in steps:  # every variant at this N, then the next N: ratios hold
            for variant in variants:
                if variant.name in failed:
                    continue
                estimate = args.seconds + calls / args.rate + 30 + calls * 0.05 * variant.legs
                if time.monotonic() + estimate > deadline:
                    skipped.append(f"{variant.name} {loop} {nodes} nodes {workers} workers "
                                   f"N>={calls}")
                    failed.add(variant.name)
                    continue
                for attempt in range(1 + max(0, args.retries)):
                    step_dir = (root / f"{variant.name}-{loop}-n{nodes}-w{workers}-{calls}-"
                                       f"{attempt + 1}")
                    forget_handed_out()  # the last step's platform and sipp have exited
                    try:
                        result = asyncio.run(run_step(
                            variant, calls, seconds=args.seconds, rate=args.rate, loop=loop,
                            workers=workers, nodes=nodes, workdir=step_dir,
                            source=short_sources.get(variant.call_seconds, source),
                            callee_source=callee_source, prompt_source=prompt_source,
                            max_cpu_pct=args.max_cpu, max_finish_ms=args.max_finish_ms,
                            progress=lambda msg: print(f"  ... {msg}", file=sys.stderr,
                                                       flush=True)))
                    except Exception as exc:  # a step that cannot run fails; the rest goes on
                        result = StepResult(variant.name, loop, calls, args.seconds, workers,
                                            legs=variant.legs * calls, max_cpu_pct=args.max_cpu,
                                            nodes=nodes)
                        result.problems.append(f"the step could not run: {exc!r}"[:300])
                    results.append(result)
                    print(table_row(result), flush=True)
                    if not args.keep:
                        _remove_recordings(step_dir)
                    if result.passed or time.monotonic() + estimate > deadline:
                        break
                if not result.passed:
                    failed.add(variant.name)
    summary = _summary(results, skipped)
    print(summary)
    if args.results:
        _append_results(Path(args.results), args, results, summary)
    return 0


def _remove_recordings(step_dir: Path) -> None:
    for path in [*step_dir.glob("data/recordings/*"), *step_dir.glob("node-*/data/recordings/*")]:
        with contextlib.suppress(OSError):
            path.unlink()


def _summary(results: list[StepResult], skipped: list[str]) -> str:
    lines = ["", "Largest N with every recording complete and the machine under the CPU limit:"]
    best: dict[tuple[str, str, int, int], int] = {}  # (variant, loop, nodes, workers) -> N
    for r in results:
        key = (r.variant, r.loop, r.nodes, r.workers)
        best.setdefault(key, 0)
        if r.passed:
            best[key] = max(best[key], r.calls)
    for (variant, loop, nodes, workers), n in best.items():
        lines.append(f"- {variant}, {loop}, {nodes} node(s) of {workers} media workers: "
                     f"{n or 'none of the steps'}")
    for (variant, loop, nodes, workers), n in best.items():
        one = best.get((variant, loop, 1, 1))
        if (nodes, workers) != (1, 1) and one:
            lines.append(f"- {variant}, {loop}: {nodes} node(s) of {workers} workers carry "
                         f"x {n / one:.2f} the calls of 1 node of 1 worker (largest passing "
                         f"steps {n} / {one})")
    lines += _ratios(results)
    if skipped:
        lines.append(f"Not run (time budget): {', '.join(skipped)}")
    return "\n".join(lines)


def _ratios(results: list[StepResult]) -> list[str]:
    """At each N of one invocation: CPU per call-second with a prompt over without (steady
    window, and whole run), and the short calls' setup + teardown: their whole-run CPU per
    call minus the media of as long a call (wav-stereo's steady CPU per call-second)."""
    last = {(r.variant, r.loop, r.nodes, r.workers, r.calls): r
            for r in results}  # the last attempt
    lines = []
    for (name, loop, nodes, workers, n), r in last.items():
        silent = last.get((name.removeprefix("prompt-").removeprefix("short-"), loop, nodes,
                           workers, n))
        if silent is None or silent is r:
            continue
        if name.startswith("prompt-"):
            lines.append(
                f"- {name} / {silent.variant}, {loop}, {workers} workers, N={n}: CPU per "
                "call-second x "
                f"{_f(r.cpu_ms_per_call_second / silent.cpu_ms_per_call_second, 2)} (steady), x "
                f"{_f(r.run_cpu_ms_per_call_second / silent.run_cpu_ms_per_call_second, 2)} "
                "(whole run, every platform process)")
        elif name.startswith("short-"):
            setup = r.run_cpu_ms_per_call - r.seconds * silent.cpu_ms_per_call_second
            lines.append(
                f"- {name}, {loop}, {workers} workers, N={n} at once ({r.placed} calls of "
                f"{r.seconds:g} s): "
                f"{_f(r.run_cpu_ms_per_call, 1)} ms CPU per call over the whole run "
                f"({_f(r.run_cpu_ms_per_call_second, 3)} per call-second), of which setup + "
                f"teardown ~ {_f(setup, 1)} ms (minus {r.seconds:g} s x {silent.variant}'s "
                f"{_f(silent.cpu_ms_per_call_second, 3)} ms per call-second)")
    return ["", "Ratios within this invocation:", *lines] if lines else []


def _append_results(path: Path, args: argparse.Namespace, results: list[StepResult],
                    summary: str) -> None:
    today = dt.date.today().isoformat()
    command = ("`.venv/bin/python bench/concurrent_recordings.py "
               + " ".join(a for a in sys.argv[1:] if a) + "`")
    text = [f"\n## concurrent_recordings.py — {today}\n",
            f"Machine: {machine_description()}. Commit: {git_commit()}.",
            f"Command: {command}\n", HEADER]
    text += [table_row(r) for r in results]
    text.append(summary + "\n")
    with path.open("a") as out:
        out.write("\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
