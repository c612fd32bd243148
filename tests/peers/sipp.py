"""Run sipp (the SIP + RTP test tool, Debian ``sip-tester`` 3.6.1) from tests.

- :func:`run_sipp` runs one sipp process to completion (asyncio subprocess, killed on timeout)
  and returns a :class:`SippResult`; :func:`run_sipp_sync` is the same for plain tests.
- :func:`start_sipp_uas` is an async context manager for a background callee (a UAS scenario):
  it returns once sipp listens on its SIP port.
- Scenarios are XML files; a bare name such as ``"uac_audio_dtmf"`` means
  ``tests/peers/scenarios/uac_audio_dtmf.xml`` (see :func:`scenario_path`).
- :func:`stream_key` builds the ``-key stream FILE,LOOPS,PT`` value for ``rtp_stream``;
  :func:`g711_stream` writes samples to a headerless G.711 file and returns that key;
  :func:`sipp_share_dir` / :func:`dtmf_pcap` find the pcap files shipped with sip-tester.

Scenarios (each file's header comment has the details):

==========================  =====================================================  ==========
``uac_audio_dtmf``          INVITE (PCMU + PT 96 events), stream, DTMF, BYE        stream,
                                                                                   digits, -d
``uac_pcap_dtmf``           INVITE (PCMU + PT 101), two pcap digits, BYE           pcap1, pcap2
``uac_hangup_by_server``    INVITE, stream, wait up to 55 s for the server's BYE   stream
``uac_cancel``              INVITE, CANCEL on 180 (or 1 s), expect 200 + 487, ACK  -
``uac_no_ack``              INVITE, never ACK, wait up to 60 s for BYE             -
``uac_options``             OPTIONS, expect 200                                    -
``uas_answer``              answer 200 (PCMU + PT 101), stream, wait for BYE       stream
``uas_ring``                180, wait for CANCEL, 200 + 487                        -
``uas_no_ack_bye``          answer, no ACK expected, BYE after ~1 s                -
==========================  =====================================================  ==========

Nothing here asserts on its own: a test checks ``result.ok`` (or ``result.returncode == 0``)
with ``result.describe()`` in the assertion message, or calls ``require_pass(result)``, which
does both; the description holds the command, exit status, error log and the tail of the SIP
message trace (a bare ``assert result.ok`` would show none of it when a call fails).

sipp facts measured with 3.6.1:

- Exit status 0 = every call passed; 1 = a call failed, *or* a fatal scenario error such as
  ``rtp_stream "[stream]" looks like a keyword value, but keyword not supplied!`` (read
  stderr); 254 = its SIP port was in use.  ``-nostdin`` is required when stdin is not a tty.
- A request sent again (an INVITE retransmitted while sipp, starved of CPU, had not read the
  first) that arrives once the scenario moved past its ``recv`` aborts the call as an
  unexpected message; the callee scenarios absorb the INVITE with an optional ``recv``.
- Every run uses ``-i 127.0.0.1 -mi 127.0.0.1 -mp <port>``.  sipp also opens a UDP control
  socket (``-cp``, default 8888): the harness passes a free port so concurrent sipps never fight
  over it.  Automatic files (trace, error, stats) go to the *current directory*: the harness runs
  sipp in a fresh temp dir (``result.workdir``).
- ``rtp_stream`` needs a headerless G.711 file (a WAV header would be streamed as noise) and
  sends from the ``-mp`` socket.  ``[auto_media_port]`` in SDP is ``mp + 4*(call_number-1)``,
  so load tests should reserve ``4*calls`` ports (``free_port_range``).
- ``play_dtmf`` (RFC 4733 with PT 96 hard-coded; 20 filler packets with PT 97 first, from a new
  SSRC) and ``play_pcap_audio`` need root (raw socket).  A new play_pcap/play_dtmf cancels the
  running one: pause between them.
- An optional ``<recv>`` does not advance by itself: sipp waits on the first not-yet-received
  message, so a ``timeout``/``ontimeout`` must sit on *every* optional recv that may be current.
- ``[branch-N]`` = the branch of the message N entries earlier (labels do not count): that is
  how CANCEL and the ACK for a non-2xx reuse the INVITE branch (see ``uac_cancel.xml``).
- The ``-stf`` CSV is ``;``-separated and its timestamp columns contain tabs; its last row holds
  the cumulative ``(C)`` counters (``SuccessfulCall(C)``, ``FailedCall(C)``, ``Retransmissions(C)``
  ...), exposed as ``result.stats``.
- sipp does not check or record the media it receives: assert on the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callbox.server.sip.headers import Via

from . import audio, new_workdir
from .ports import LOOPBACK, free_udp_port, port_is_free, udp_port_bound

__all__ = [
    "SCENARIO_DIR",
    "SippResult",
    "SippUas",
    "TracedMessage",
    "dtmf_pcap",
    "g711_stream",
    "received_transactions",
    "require_pass",
    "run_sipp",
    "run_sipp_sync",
    "scenario_path",
    "silence_stream",
    "sipp_command",
    "sipp_share_dir",
    "start_sipp_uas",
    "stream_key",
    "traced_messages",
]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

_SHARE_CANDIDATES = (
    "/usr/share/sip-tester",  # Debian / Ubuntu package sip-tester
    "/usr/share/sipp",
    "/usr/local/share/sipp",
    "/usr/local/share/sip-tester",
)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def scenario_path(scenario: str | Path) -> Path:
    """An existing path, or a name in :data:`SCENARIO_DIR` (``.xml`` may be left off)."""
    path = Path(scenario)
    if path.exists():
        return path.resolve()
    name = path.name if path.suffix == ".xml" else f"{path.name}.xml"
    candidate = SCENARIO_DIR / name
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.xml")))
    raise FileNotFoundError(f"no sipp scenario {scenario!r} (known: {known})")


def sipp_share_dir() -> Path:
    """The directory holding sipp's ``g711a.pcap`` and ``dtmf_2833_*.pcap`` files.

    ``$SIPP_SHARE_DIR`` wins; then the usual install locations; then ``dpkg -L sip-tester``.
    """
    env = os.environ.get("SIPP_SHARE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(p) for p in _SHARE_CANDIDATES]
    for cand in candidates:
        if (cand / "dtmf_2833_0.pcap").exists():
            return cand
    if shutil.which("dpkg"):
        proc = subprocess.run(
            ["dpkg", "-L", "sip-tester"], capture_output=True, text=True, check=False
        )
        for line in proc.stdout.splitlines():
            if line.endswith("/dtmf_2833_0.pcap"):
                return Path(line).parent
    raise FileNotFoundError("sipp pcap files not found (install sip-tester or set SIPP_SHARE_DIR)")


_PCAP_NAMES = {"*": "star", "#": "pound"}


def dtmf_pcap(digit: str) -> Path:
    """The sip-tester pcap of one RFC 4733 digit (PT 101): ``dtmf_pcap("5")``, ``"*"``, ``"#"``."""
    if len(digit) != 1 or not (digit.isdigit() or digit in _PCAP_NAMES):
        raise ValueError(f"no sipp pcap for DTMF digit {digit!r}")
    path = sipp_share_dir() / f"dtmf_2833_{_PCAP_NAMES.get(digit, digit)}.pcap"
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def stream_key(path: str | Path, loops: int = 1, payload_type: int = 0) -> str:
    """Value for ``-key stream``: ``FILE,LOOPS,PT`` (LOOPS -1 = until the call ends; PT 0 =
    PCMU, 8 = PCMA).  The file must be headerless G.711 and its path free of commas."""
    text = str(path)
    if "," in text:
        raise ValueError("sipp rtp_stream file paths cannot contain commas")
    return f"{text},{loops},{payload_type}"


def g711_stream(
    samples: np.ndarray,
    path: str | Path,
    *,
    loops: int = 1,
    codec: str = "PCMU",
    rate: int = audio.RATE,
) -> str:
    """Write ``samples`` as headerless G.711 to ``path``; return the ``-key stream`` value."""
    codec = codec.upper()
    if codec == "PCMU":
        audio.write_raw_ulaw(path, samples, rate=rate)
        return stream_key(path, loops, 0)
    if codec == "PCMA":
        audio.write_raw_alaw(path, samples, rate=rate)
        return stream_key(path, loops, 8)
    raise ValueError(f"unsupported codec {codec!r} (PCMU or PCMA)")


def silence_stream(seconds: float = 1.0, loops: int = 1) -> str:
    """A cached PCMU silence file as a ``-key stream`` value (used when a scenario needs
    ``[stream]`` and the caller gave none)."""
    path = audio.cache_dir() / f"silence-{seconds:g}s.ulaw"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        audio.write_raw_ulaw(tmp, audio.silence(seconds))
        os.replace(tmp, path)
    return stream_key(path, loops, 0)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


# The line above each message of sipp's `-trace_msg` log: dashes and sipp's clock.
_TRACE_HEAD = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$", re.M)


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message of sipp's `-trace_msg` log (:attr:`SippResult.messages`)."""

    when: float  # unix seconds, by sipp's clock
    received: bool  # else sent by sipp
    text: str  # the message, start line first


def traced_messages(trace: str) -> list[TracedMessage]:
    """Every message of a `-trace_msg` log, in order."""
    parts = _TRACE_HEAD.split(trace)  # [before, stamp, block, stamp, block, ...]
    out = []
    for stamp, block in zip(parts[1::2], parts[2::2], strict=True):
        intro, _, message = block.partition("\n\n")  # "UDP message received [N] bytes :"
        out.append(TracedMessage(dt.datetime.fromisoformat(stamp).timestamp(),
                                 "received" in intro, message.strip()))
    return out


@dataclass
class SippResult:
    """Outcome of one sipp run.  ``returncode`` 0 means every call passed."""

    returncode: int
    stdout: str
    stderr: str
    stats: dict[str, str] | None
    command: list[str] = field(default_factory=list)
    workdir: Path | None = None
    timed_out: bool = False
    errors: str = ""
    messages: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def stat(self, name: str, default: int = 0) -> int:
        """A cumulative counter from the stats file, e.g. ``stat("SuccessfulCall")``."""
        if not self.stats:
            return default
        value = self.stats.get(f"{name}(C)", self.stats.get(name))
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    def describe(self, tail: int = 3000) -> str:
        """Human-readable summary for assertion messages."""
        parts = [
            f"sipp exit {self.returncode}{' (timed out, killed)' if self.timed_out else ''}",
            "command: " + " ".join(self.command),
        ]
        if self.stats:
            keys = (
                "SuccessfulCall(C)",
                "FailedCall(C)",
                "FailedUnexpectedMessage(C)",
                "FailedTimeoutOnRecv(C)",
                "FailedMaxUDPRetrans(C)",
                "Retransmissions(C)",
            )
            parts.append("stats: " + ", ".join(f"{k}={self.stats.get(k)}" for k in keys))
        if self.stderr.strip():
            parts.append("stderr:\n" + self.stderr.strip()[-tail:])
        if self.errors.strip():
            parts.append("error log:\n" + self.errors.strip()[-tail:])
        if self.messages.strip():
            parts.append("message trace (tail):\n" + self.messages.strip()[-tail:])
        elif self.stdout.strip():
            parts.append("stdout (tail):\n" + self.stdout.strip()[-tail:])
        return "\n".join(parts)


def received_transactions(trace: str, method: str) -> set[str]:
    """The Via branches of the `method` requests in a `-trace_msg` log that sipp received: one
    per transaction (a retransmission, e.g. an INVITE sent again under load, has its own's)."""
    branches: set[str] = set()
    for message in traced_messages(trace):
        if message.received and message.text.startswith(f"{method} "):
            top_via = next(line for line in message.text.splitlines() if line.startswith("Via:"))
            branches.add(Via.parse(top_via.partition(":")[2]).branch or "")
    return branches


def require_pass(result: SippResult) -> SippResult:
    """`result` when every call of it passed; otherwise AssertionError with its description."""
    if not result.ok:
        raise AssertionError(result.describe())
    return result


def _parse_stats(path: Path) -> dict[str, str] | None:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(header, values, strict=False))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def sipp_command(
    scenario: str | Path,
    target: str | None,
    *,
    workdir: Path,
    service: str | None = None,
    local_port: int,
    media_port: int,
    keys: Mapping[str, str] | None = None,
    calls: int = 1,
    rate: float | None = None,
    limit: int | None = None,
    trace_messages: bool = True,
    control_port: int | None = None,
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The sipp argv for one run (``target`` None = a UAS that waits for calls)."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed (Debian package sip-tester)")
    scen = scenario_path(scenario)
    all_keys = dict(keys or {})
    if "stream" not in all_keys and "[stream]" in scen.read_text(errors="replace"):
        all_keys["stream"] = silence_stream()
    cmd = [sipp]
    if target is not None:
        cmd.append(target)
    cmd += ["-sf", str(scen)]
    if service is not None:
        cmd += ["-s", service]
    cmd += [
        "-i",
        host,
        "-p",
        str(local_port),
        "-mi",
        host,
        "-mp",
        str(media_port),
        "-cp",
        str(control_port if control_port is not None else free_udp_port(host)),
        "-m",
        str(calls),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(workdir / "stats.csv"),
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
    ]
    if trace_messages:
        cmd += ["-trace_msg", "-message_file", str(workdir / "messages.log")]
    if rate is not None:
        cmd += ["-r", f"{rate:g}"]
    if limit is not None:
        cmd += ["-l", str(limit)]
    for name, value in all_keys.items():
        cmd += ["-key", name, str(value)]
    cmd += list(extra_args)
    return cmd


def _result(cmd: list[str], workdir: Path, rc: int, out: bytes, err: bytes, timed_out: bool):
    return SippResult(
        returncode=rc,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        stats=_parse_stats(workdir / "stats.csv"),
        command=cmd,
        workdir=workdir,
        timed_out=timed_out,
        errors=_read(workdir / "errors.log"),
        messages=_read(workdir / "messages.log"),
    )


def _new_workdir(workdir: str | Path | None) -> Path:
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return new_workdir("sipp-")


async def _stop(proc: asyncio.subprocess.Process, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------


async def run_sipp(
    scenario: str | Path,
    target: str,
    *,
    service: str = "service",
    local_port: int,
    media_port: int,
    keys: Mapping[str, str] | None = None,
    calls: int = 1,
    rate: float | None = None,
    limit: int | None = None,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
    trace_messages: bool = True,
    workdir: str | Path | None = None,
) -> SippResult:
    """Run a sipp client scenario against ``target`` (``"127.0.0.1:5060"``) until it exits.

    ``service`` is the Request-URI user (``[service]``); ``keys`` become ``-key NAME VALUE``
    (a scenario using ``[stream]`` gets :func:`silence_stream` when no ``stream`` key is given);
    ``calls``/``rate``/``limit`` map to ``-m``/``-r``/``-l``.  After ``timeout`` seconds sipp is
    terminated and the result has ``timed_out=True``.  Pass ``-d MS`` (the ``<pause/>`` length)
    and the like in ``extra_args``.
    """
    wd = _new_workdir(workdir)
    cmd = sipp_command(
        scenario,
        target,
        workdir=wd,
        service=service,
        local_port=local_port,
        media_port=media_port,
        keys=keys,
        calls=calls,
        rate=rate,
        limit=limit,
        trace_messages=trace_messages,
        extra_args=extra_args,
    )
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=wd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    timed_out = False
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        timed_out = True
        await _stop(proc)
        out, err = await proc.communicate()
    except BaseException:
        await _stop(proc)
        raise
    assert proc.returncode is not None
    return _result(cmd, wd, proc.returncode, out, err, timed_out)


def run_sipp_sync(
    scenario: str | Path,
    target: str,
    *,
    service: str = "service",
    local_port: int,
    media_port: int,
    keys: Mapping[str, str] | None = None,
    calls: int = 1,
    rate: float | None = None,
    limit: int | None = None,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
    trace_messages: bool = True,
    workdir: str | Path | None = None,
) -> SippResult:
    """Blocking twin of :func:`run_sipp` (for tests without an event loop)."""
    wd = _new_workdir(workdir)
    cmd = sipp_command(
        scenario,
        target,
        workdir=wd,
        service=service,
        local_port=local_port,
        media_port=media_port,
        keys=keys,
        calls=calls,
        rate=rate,
        limit=limit,
        trace_messages=trace_messages,
        extra_args=extra_args,
    )
    with subprocess.Popen(
        cmd, cwd=wd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    return _result(cmd, wd, proc.returncode, out, err, timed_out)


class SippUas:
    """A sipp callee running in the background (see :func:`start_sipp_uas`)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cmd: list[str],
        workdir: Path,
        port: int,
        media_port: int,
        host: str,
    ) -> None:
        self.proc = proc
        self.command = cmd
        self.workdir = workdir
        self.port = port
        self.media_port = media_port
        self.host = host
        self.result: SippResult | None = None
        self._timed_out = False

    @property
    def target(self) -> str:
        """``host:port`` to dial."""
        return f"{self.host}:{self.port}"

    def messages_so_far(self) -> list[TracedMessage]:
        """The messages sipp traced until now (with ``trace_messages``, the default)."""
        return traced_messages(_read(self.workdir / "messages.log"))

    def uri(self, user: str = "sipp") -> str:
        """A SIP URI that reaches this UAS."""
        return f"sip:{user}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def wait(self, timeout: float = 30.0) -> SippResult:
        """Wait for sipp to finish its calls (``-m``); terminate it after ``timeout``."""
        if self.result is not None:
            return self.result
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self._timed_out = True
            await _stop(self.proc)
        return await self._collect()

    async def stop(self) -> SippResult:
        """Terminate sipp now (if still running) and collect the result."""
        if self.result is not None:
            return self.result
        if self.proc.returncode is None:
            self._timed_out = True
            await _stop(self.proc)
        return await self._collect()

    async def _collect(self) -> SippResult:
        out, err = await self.proc.communicate()
        assert self.proc.returncode is not None
        self.result = _result(
            self.command, self.workdir, self.proc.returncode, out, err, self._timed_out
        )
        return self.result


@contextlib.asynccontextmanager
async def start_sipp_uas(
    scenario: str | Path = "uas_answer",
    *,
    local_port: int | None = None,
    media_port: int,
    keys: Mapping[str, str] | None = None,
    calls: int = 1,
    extra_args: Sequence[str] = (),
    trace_messages: bool = True,
    startup_timeout: float = 5.0,
    host: str = LOOPBACK,
    workdir: str | Path | None = None,
) -> AsyncIterator[SippUas]:
    """Start a sipp UAS scenario in the background; yield a :class:`SippUas` once it listens.

    sipp exits by itself after ``calls`` calls; ``await uas.wait()`` collects the
    :class:`SippResult`.  Leaving the block terminates sipp if it is still running.
    """
    port = local_port if local_port is not None else free_udp_port(host)
    if not port_is_free(port, host):
        # Readiness is "the port is bound": someone else's socket would fool that check.
        raise RuntimeError(f"UDP port {host}:{port} is already in use")
    wd = _new_workdir(workdir)
    cmd = sipp_command(
        scenario,
        None,
        workdir=wd,
        local_port=port,
        media_port=media_port,
        keys=keys,
        calls=calls,
        trace_messages=trace_messages,
        host=host,
        extra_args=extra_args,
    )
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=wd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    uas = SippUas(proc, cmd, wd, port, media_port, host)
    try:
        deadline = time.monotonic() + startup_timeout
        while not udp_port_bound(port, host):
            if proc.returncode is not None or time.monotonic() > deadline:
                result = await uas.stop()
                raise RuntimeError("sipp UAS did not start\n" + result.describe())
            await asyncio.sleep(0.05)
        yield uas
    finally:
        await uas.stop()
