"""Drive baresip (Debian ``baresip-core`` 1.0.0), a real softphone, from tests.

``Baresip`` is an async context manager.  It writes a config dir into a temp dir, starts
``baresip -f DIR`` and talks to it through the ``ctrl_tcp`` module (JSON in netstrings), so a
test can dial, answer, send DTMF, hang up, wait for call events and read what baresip heard::

    async with Baresip(source=audio.tone(700, 3.0)) as phone:
        await phone.dial("sip:voicemail@127.0.0.1:5060")
        await phone.wait_established(timeout=5)
        await phone.send_dtmf("123#")
        await phone.hangup()
        await phone.wait_call_closed(timeout=5)
        heard, rate = phone.heard()          # what the platform played to the caller

Quirks of this baresip version, measured (they cost hours, keep this list current):

- ``audio_source aufile,<wav>`` loads the whole WAV (16-bit PCM) at call start.  When it reaches
  the end, the ``menu`` module logs "audio error (0,end of file)" and **hangs up the call**.
  ``Baresip`` therefore pads the source with silence to ``min_source_seconds`` (default 120 s)
  unless ``hangup_at_source_end=True`` (then the call ends when the file does).
- The ``aufile`` module is a *source* only in 1.0.0 (no ``aufile`` player).  Received audio is
  captured by the ``sndfile`` audio *filter*: each call writes ``<snd_path>/dump-<time>-dec.wav``
  (what baresip heard, after decoding) and ``...-enc.wav`` (what it sent).  A player is still
  needed for the receive path to run; ``aubridge,nil`` is a null player that works headless.
- The dec dump holds decoded frames back to back: a gap in the incoming RTP is *not* written as
  silence, so compare content (cross-correlation, tone level), not wall-clock positions.
  When the far end stops sending, the last ~60-100 ms (what sits in the jitter buffer) never
  reach the dump: a 2.0 s stream is heard as about 1.9 s.  The start is intact (lag 0).
  The time in the file name has one-second resolution: two calls starting in the same second
  in one instance overwrite each other's dumps.  Read dumps after CALL_CLOSED.
- ``sip_listen 127.0.0.1:P`` binds UDP *and* TCP on P, and TCP P+1 (TLS): the harness reserves
  two ports.  ``net_interface`` must be an address (``127.0.0.1``); the name ``lo`` fails.
- ctrl_tcp: commands are ``{"command": "dial", "params": "sip:...", "token": "t1"}`` framed as
  netstrings (``LEN:JSON,``).  Responses are ``{"response": true, "ok": bool, "data": str,
  "token": ...}``; events are ``{"event": true, "type": "CALL_ESTABLISHED", "class": "call",
  "peeruri": ..., "id": ..., "param": ...}``.  Seen: CALL_INCOMING, CALL_LOCAL_SDP,
  CALL_REMOTE_SDP, CALL_ESTABLISHED, CALL_RTPESTAB, CALL_DTMF_START/END (``param`` = digit),
  CALL_CLOSED (``param`` = reason), SHUTDOWN, EXIT.  Command names are the menu's long
  commands: ``dial``, ``accept``, ``hangup``, ``sndcode``, ``callstat``, ``quit``.
- In-call commands (``sndcode``, ...) exist only while a call is up: outside a call baresip
  answers ``command not found (sndcode)`` (raised as :class:`BaresipError`).  ``dial`` is
  acknowledged with ok even for a bad URI; the failure shows up as CALL_CLOSED, so wait for
  CALL_ESTABLISHED (``wait_established``) rather than trusting the response.
  With ``answermode=auto`` there is no CALL_INCOMING event (REMOTE_SDP/ESTABLISHED only).
- ``sndcode 123`` does **not** end digits 1 and 2 (only the last one gets an end event):
  :meth:`Baresip.send_dtmf` sends one ``sndcode`` per digit, each started and ended at once.
- ``-e "/dial ..."`` runs before a call exists, so digits cannot be scripted that way: use the
  control port.  Auto-answer is the account parameter ``;answermode=auto``.
- The ``menu`` status line (``[0:00:03] audio=...``) is printed with ``\\r`` and mixes into log
  lines; ``statmode_default off`` silences it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import audio, new_workdir
from .ports import (
    LOOPBACK,
    free_port_range,
    port_is_free,
    tcp_port_listening,
    udp_port_bound,
)

__all__ = ["Baresip", "BaresipError", "Event"]

Event = dict[str, Any]

MODULE_DIR = Path("/usr/lib/baresip/modules")


class BaresipError(RuntimeError):
    """baresip failed to start, rejected a command, or an expected event did not come."""


def _netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class Baresip:
    """One baresip user agent on 127.0.0.1, controlled over ctrl_tcp.

    Args:
        source: what baresip sends in calls: int16 samples at 8 kHz mono, or an audio file
            (converted to 8 kHz mono).  Default: silence.
        auto_answer: answer incoming calls at once (account ``answermode=auto``).
        user: the user part of baresip's own address (``sip:<user>@127.0.0.1:<sip_port>``).
        sip_port / ctrl_port / rtp_ports: fixed ports; free ones are picked by default.
        min_source_seconds: pad ``source`` with silence to this length (see module docstring).
        hangup_at_source_end: do not pad, so baresip hangs up when the source ends.
        codecs: the account's ``audio_codecs`` list.
        extra_config: more ``config`` lines (key -> value), overriding the defaults.
        workdir: where config, logs and dumps go (a fresh temp dir by default; kept after stop
            so a failing test can point at it).
    """

    def __init__(
        self,
        *,
        source: np.ndarray | str | Path | None = None,
        auto_answer: bool = False,
        user: str = "bares",
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        rtp_ports: range | None = None,
        min_source_seconds: float = 120.0,
        hangup_at_source_end: bool = False,
        codecs: str = "PCMU/8000/1,PCMA/8000/1",
        extra_config: Mapping[str, str] | None = None,
        workdir: str | Path | None = None,
        startup_timeout: float = 10.0,
        host: str = LOOPBACK,
    ) -> None:
        self.host = host
        self.user = user
        self.auto_answer = auto_answer
        self.sip_port = sip_port if sip_port is not None else free_port_range(2, tcp=True).start
        self.ctrl_port = ctrl_port if ctrl_port is not None else free_port_range(1, tcp=True).start
        self.rtp_ports = rtp_ports if rtp_ports is not None else free_port_range(20)
        self.codecs = codecs
        self.startup_timeout = startup_timeout
        self.workdir = Path(workdir) if workdir else new_workdir("baresip-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir = self.workdir / "config"
        self.dump_dir = self.workdir / "dump"
        self.log_path = self.workdir / "baresip.log"
        self._source = source
        self._min_source_seconds = 0.0 if hangup_at_source_end else min_source_seconds
        self._extra_config = dict(extra_config or {})

        self.events: list[Event] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._tokens = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._log_file: Any = None
        self._closed = False

    # ---------------------------------------------------------------- addresses

    @property
    def uri(self) -> str:
        """baresip's own SIP URI (what a caller dials to reach it)."""
        return f"sip:{self.user}@{self.host}:{self.sip_port}"

    @property
    def target(self) -> str:
        """``host:port`` of baresip's SIP socket (sipp's target argument)."""
        return f"{self.host}:{self.sip_port}"

    # ---------------------------------------------------------------- lifecycle

    def _write_source(self) -> Path:
        path = self.workdir / "source.wav"
        src = self._source
        if src is None:
            samples = np.zeros(0, dtype=np.int16)
        elif isinstance(src, np.ndarray):
            samples = np.asarray(src, dtype=np.int16).reshape(-1)
        else:
            samples = self._load_source_file(Path(src))
        pad = round(self._min_source_seconds * audio.RATE) - samples.size
        if pad > 0 or samples.size == 0:
            samples = audio.concat(samples, audio.silence(max(pad, audio.RATE) / audio.RATE))
        audio.write_wav(path, samples, rate=audio.RATE)
        return path

    def _load_source_file(self, path: Path) -> np.ndarray:
        samples, rate = audio.decode_audio(path)
        if rate == audio.RATE and samples.ndim == 1:
            return samples
        sox = shutil.which("sox")
        if sox is None:
            raise BaresipError("sox is needed to convert the source to 8 kHz mono")
        out = self.workdir / "source-8k.wav"
        tmp_in = audio.write_wav(
            self.workdir / "source-orig.wav",
            samples,
            rate=rate,
            channels=1 if samples.ndim == 1 else samples.shape[1],
        )
        subprocess.run(
            [sox, str(tmp_in), "-r", "8000", "-c", "1", "-b", "16", str(out)],
            check=True,
            capture_output=True,
        )
        converted, _ = audio.read_wav(out)
        return converted

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        source = self._write_source()
        config: dict[str, str] = {
            "poll_method": "epoll",
            "sip_listen": f"{self.host}:{self.sip_port}",
            "net_interface": self.host,
            "rtp_ports": f"{self.rtp_ports.start}-{self.rtp_ports.stop - 1}",
            "audio_source": f"aufile,{source}",
            "audio_player": "aubridge,nil",
            "audio_alert": "aubridge,alert",
            "snd_path": str(self.dump_dir),
            "ctrl_tcp_listen": f"{self.host}:{self.ctrl_port}",
            "statmode_default": "off",
            "module_path": str(MODULE_DIR),
        }
        config.update(self._extra_config)
        lines = [f"{k}\t{v}" for k, v in config.items()]
        for module in (
            "g711.so",
            "aufile.so",
            "aubridge.so",
            "sndfile.so",
            "menu.so",
            "ctrl_tcp.so",
        ):
            lines.append(f"module\t{module}")
        lines.append("module_app\taccount.so")
        (self.config_dir / "config").write_text("\n".join(lines) + "\n")
        params = f"regint=0;audio_codecs={self.codecs}"
        if self.auto_answer:
            params += ";answermode=auto"
        account = f"<sip:{self.user}@{self.host}:{self.sip_port}>;{params}\n"
        (self.config_dir / "accounts").write_text(account)
        (self.config_dir / "contacts").write_text("")

    async def start(self) -> Baresip:
        """Write the config, start baresip and connect to its control port."""
        exe = shutil.which("baresip")
        if exe is None:
            raise BaresipError("baresip is not installed (Debian package baresip-core)")
        busy = [
            f"{proto} {port}"
            for proto, port, udp, tcp in (
                ("UDP/TCP", self.sip_port, True, True),
                ("TCP", self.sip_port + 1, False, True),
                ("TCP", self.ctrl_port, False, True),
            )
            if not port_is_free(port, self.host, udp=udp, tcp=tcp)
        ]
        if busy:
            raise BaresipError(f"ports already in use: {', '.join(busy)}")
        self._write_config()
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = await asyncio.create_subprocess_exec(
            exe,
            "-f",
            str(self.config_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
        )
        try:
            await self._connect(time.monotonic() + self.startup_timeout)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _connect(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.returncode is not None:
                raise BaresipError(f"baresip exited with {self._proc.returncode}\n{self.log()}")
            if tcp_port_listening(self.ctrl_port, self.host):
                try:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.host, self.ctrl_port
                    )
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BaresipError(f"baresip ctrl_tcp did not come up\n{self.log()}")
            await asyncio.sleep(0.05)
        self._read_task = asyncio.create_task(self._read_loop())
        while not udp_port_bound(self.sip_port, self.host):
            if time.monotonic() > deadline:
                raise BaresipError(f"baresip did not bind SIP port {self.sip_port}\n{self.log()}")
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 5.0) -> None:
        """Quit baresip (``quit`` command, then SIGTERM, then SIGKILL) and close the log."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self._writer is not None and not self._closed:
                with contextlib.suppress(BaresipError, OSError, TimeoutError):
                    await self.command("quit", timeout=min(2.0, timeout))
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 2.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
            self._read_task = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aenter__(self) -> Baresip:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def log(self, tail: int = 4000) -> str:
        """The end of baresip's console output (``\\r`` status updates turned into lines)."""
        try:
            text = self.log_path.read_text(errors="replace").replace("\r", "\n")
        except OSError:
            return ""
        return text[-tail:]

    # ---------------------------------------------------------------- control protocol

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                head = await self._reader.readuntil(b":")
                length = int(head[:-1])
                body = await self._reader.readexactly(length + 1)
                if body[-1:] != b",":
                    raise BaresipError(f"bad netstring from baresip: {body[-10:]!r}")
                message: Event = json.loads(body[:-1])
                if message.get("response"):
                    fut = self._pending.pop(str(message.get("token")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(message)
                elif message.get("event"):
                    message["_time"] = time.monotonic()
                    self.events.append(message)
                    self._wake()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, BaresipError):
            pass
        finally:
            self._closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(BaresipError("baresip control connection closed"))
            self._pending.clear()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def command(self, name: str, params: str | None = None, *, timeout: float = 5.0) -> str:
        """Run a baresip long command (``dial``, ``hangup``, ...); return its ``data`` text."""
        if self._writer is None or self._closed:
            raise BaresipError(f"baresip is not running\n{self.log()}")
        token = f"t{next(self._tokens)}"
        request: dict[str, str] = {"command": name, "token": token}
        if params is not None:
            request["params"] = params
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        self._writer.write(_netstring(json.dumps(request).encode()))
        await self._writer.drain()
        try:
            response = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(token, None)
            raise BaresipError(f"no response to {name!r} within {timeout} s") from None
        if not response.get("ok", False):
            raise BaresipError(f"baresip rejected {name} {params or ''}: {response.get('data')}")
        return str(response.get("data", ""))

    # ---------------------------------------------------------------- events

    async def wait_event(
        self,
        event_type: str,
        *,
        timeout: float = 10.0,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The first not-yet-returned event of ``event_type`` (past or future) matching ``where``.

        Each event is returned by at most one ``wait_event`` call, so sequential calls see
        sequential calls' events.  Raises :class:`BaresipError` on timeout or if baresip exits.
        """
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if i in self._consumed or ev.get("type") != event_type:
                    continue
                if where is None or where(ev):
                    self._consumed.add(i)
                    return ev
            if self._closed:
                raise BaresipError(f"baresip exited while waiting for {event_type}\n{self.log()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("type") for e in self.events]
                raise BaresipError(
                    f"no {event_type} within {timeout} s (events seen: {seen})\n{self.log()}"
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def wait_incoming(self, timeout: float = 10.0) -> Event:
        return await self.wait_event("CALL_INCOMING", timeout=timeout)

    async def wait_established(self, timeout: float = 10.0) -> Event:
        return await self.wait_event("CALL_ESTABLISHED", timeout=timeout)

    async def wait_call_closed(self, timeout: float = 10.0) -> Event:
        """Wait for CALL_CLOSED; the event's ``param`` is the reason (e.g. "Connection reset
        by user" for our hangup)."""
        return await self.wait_event("CALL_CLOSED", timeout=timeout)

    def received_dtmf(self) -> str:
        """Digits received so far (CALL_DTMF_START events), in order."""
        return "".join(
            str(e.get("param", "")) for e in self.events if e.get("type") == "CALL_DTMF_START"
        )

    # ---------------------------------------------------------------- call control

    async def dial(self, uri: str) -> None:
        """Start a call to ``uri``; follow with :meth:`wait_established`."""
        await self.command("dial", uri)

    async def accept(self) -> None:
        """Answer the ringing incoming call (when not ``auto_answer``)."""
        await self.command("accept")

    async def hangup(self) -> None:
        """Hang up the current call (BYE, or CANCEL while ringing)."""
        await self.command("hangup")

    async def send_dtmf(self, digits: str, *, gap: float = 0.15) -> None:
        """Send RFC 4733 digits, one ``sndcode`` per digit with ``gap`` seconds in between."""
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(gap)
            await self.command("sndcode", digit)

    # ---------------------------------------------------------------- recordings

    def heard_wavs(self) -> list[Path]:
        """All ``dump-*-dec.wav`` files (what baresip heard, one per call), oldest first."""
        return sorted(self.dump_dir.glob("dump-*-dec.wav"), key=lambda p: p.stat().st_mtime)

    def heard_wav(self) -> Path:
        """The newest dec dump: what baresip heard in its last call."""
        wavs = self.heard_wavs()
        if not wavs:
            raise FileNotFoundError(f"no dec dump in {self.dump_dir}\n{self.log()}")
        return wavs[-1]

    def heard(self) -> tuple[np.ndarray, int]:
        """Samples and rate of :meth:`heard_wav`."""
        return audio.read_wav(self.heard_wav())

    def sent_wav(self) -> Path:
        """The newest enc dump: what baresip sent in its last call."""
        wavs = sorted(self.dump_dir.glob("dump-*-enc.wav"), key=lambda p: p.stat().st_mtime)
        if not wavs:
            raise FileNotFoundError(f"no enc dump in {self.dump_dir}")
        return wavs[-1]
