"""The main process's side of the media: a handle per call session, whichever host runs it.

`MediaHandle` is what a `Call` (and the bridge, the recording engine, RELAY, SWML, the AI)
commands: configure, start, play, send digits, tap frames, record, join, close. It mirrors what
the main process needs to answer at once (the negotiated codec and telephone-event, the plays'
states) and learns the rest from the host's events. `HostView` is the main process's view of
one host: it routes the host's events to the handles, plays and recordings they belong to,
sends each prompt's samples to the host once, and when the host's process dies it tells every
handle (the calls end) and every recording (repaired from what reached the disk).

Plays report `paused`, `playing` and `finished` at once when the main process changes them
(as a local playback does); the host's own `finished` (the end of the audio) follows later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from callbox.server.media.dtmf import DTMF_EVENTS
from callbox.server.media.g711 import codec_for_payload_type
from callbox.server.media.playback import FINISHED, PAUSED, PLAYING, REASON_STOPPED
from callbox.server.media.session import DTMF_WAIT_FRAMES, FrameTap, is_numeric_address
from callbox.server.media.sound import Sound
from callbox.server.recording.machine import RecState
from callbox.server.recording.runtime import RuntimeEnd, RuntimeReports
from callbox.server.worker import messages as m
from callbox.server.worker.link import MediaLink, WorkerLost

log = logging.getLogger(__name__)

Unsubscribe = Callable[[], None]
SOUND_BUDGET_BYTES = 64 * 1024 * 1024  # prompt samples a worker keeps for the main process
_DIGIT_CHARACTERS = frozenset(DTMF_EVENTS + DTMF_EVENTS.lower()[-4:]) | set(DTMF_WAIT_FRAMES)


class HostView:
    """One media host as the main process sees it (see the module docstring)."""

    def __init__(self, link: MediaLink) -> None:
        self.link = link
        self.handles: dict[int, MediaHandle] = {}
        self.closing: dict[int, MediaHandle] = {}  # closed, until the host confirms
        self.recordings: dict[str, RuntimeReports] = {}
        self.ended_counters: dict[str, int] = {}  # of the sessions closed on this host
        self._sounds: OrderedDict[int, int] = OrderedDict()  # key -> bytes, sent to the host
        self._sound_bytes = 0
        link.on_event = self._on_event

    def _on_event(self, event: Any) -> None:
        if isinstance(event, m.Frames):
            for sid, tick, speak, listen in event.items:
                handle = self.handles.get(sid)
                if handle is not None:
                    handle.frames(tick, speak, listen)
        elif isinstance(event, m.PlayState | m.Digit | m.DigitsSent):
            handle = self.handles.get(event.sid)
            if handle is not None:
                handle.event(event)
        elif isinstance(event, m.RecordingTransition):
            reports = self.recordings.get(event.rid)
            if reports is not None:
                reports.transition(event.rid, RecState(event.state), event.pause_behavior)
        elif isinstance(event, m.RecordingEnded):
            reports = self.recordings.pop(event.rid, None)
            if reports is not None:
                reports.ended(event.rid, RuntimeEnd(RecState(event.state), event.reason,
                                                    event.size, event.duration))
        elif isinstance(event, m.SessionClosed):
            for name, value in event.snapshot.counters.items():
                self.ended_counters[name] = self.ended_counters.get(name, 0) + value
            closed = self.closing.pop(event.sid, None)
            if closed is not None:
                closed.closed_as(event.snapshot)
        else:
            log.warning("unexpected media event %r", event)

    def lost(self) -> None:
        """The host's process died: its recordings and calls learn it."""
        recordings, self.recordings = self.recordings, {}
        for rid, reports in recordings.items():
            reports.lost(rid)
        handles, self.handles = self.handles, {}
        for handle in handles.values():
            handle.host_lost()
        closing, self.closing = self.closing, {}
        for handle in closing.values():
            handle.host_lost()

    def segments(self, segments: Sequence[np.ndarray | Sound]) -> list[int | np.ndarray | Sound]:
        """What a `Play` carries: sounds by key (sent once), or as they are in-process."""
        if self.link.shares_memory:
            return list(segments)
        out: list[int | np.ndarray | Sound] = []
        for segment in segments:
            if isinstance(segment, Sound):
                self._ship(segment)
                out.append(segment.key)
            else:
                out.append(np.asarray(segment, dtype=np.int16))
        return out

    def _ship(self, sound: Sound) -> None:
        if sound.key in self._sounds:
            self._sounds.move_to_end(sound.key)
            return
        self.link.send(m.SoundData(sound.key, sound.samples))
        self._sounds[sound.key] = sound.samples.nbytes
        self._sound_bytes += sound.samples.nbytes
        while self._sound_bytes > SOUND_BUDGET_BYTES and len(self._sounds) > 1:
            key, size = self._sounds.popitem(last=False)
            self._sound_bytes -= size
            self.link.send(m.ForgetSound(key))


class RemotePlayback:
    """A play on a host, with the surface of `Playback` that callers use."""

    def __init__(self, handle: MediaHandle, pid: int, loop: int, control_id: str,
                 volume_db: float) -> None:
        self._handle = handle
        self.pid = pid
        self.loop = loop
        self.control_id = control_id
        self.volume_db = volume_db
        self.state = PLAYING
        self.finished_reason: str | None = None
        self.on_state: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"RemotePlayback({self.control_id!r}, {self.state})"

    def pause(self) -> None:
        if self.state == PLAYING:
            self._handle.control_play(self.pid, "pause")
            self.reported(PAUSED, None)

    def resume(self) -> None:
        if self.state == PAUSED:
            self._handle.control_play(self.pid, "resume")
            self.reported(PLAYING, None)

    def stop(self) -> None:
        if self.state != FINISHED:
            self._handle.control_play(self.pid, "stop")
            self.reported(FINISHED, REASON_STOPPED)

    def set_volume(self, db: float) -> None:
        if not math.isfinite(db):
            raise ValueError(f"volume {db!r} dB is not finite")
        self.volume_db = float(db)
        self._handle.control_play(self.pid, "volume", self.volume_db)

    def reported(self, state: str, finished_reason: str | None) -> None:
        """A state change (ours at once, the host's when it gets here); repeats are dropped."""
        if state == self.state or self.state == FINISHED:
            return
        self.state = state
        if state == FINISHED:
            self.finished_reason = finished_reason
            self._handle.play_over(self.pid)
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("play %r on_state(%r) failed", self.control_id, state)


class RemoteRecording:
    """The media half of one recording on a host (a `RecordingMedia`)."""

    def __init__(self, handle: MediaHandle, rid: str, reports: RuntimeReports) -> None:
        self._handle = handle
        self.rid = rid
        self._reports = reports

    async def open(self, fmt: str, path: Path, channels: int, *,
                   record: Any = None, pause_behavior: str | None = None) -> None:
        view = self._handle.view
        view.recordings[self.rid] = self._reports
        start = None if record is None else m.StartRecording(self.rid, record, pause_behavior)
        try:
            await view.link.open_recording(m.OpenRecording(self._handle.sid, self.rid, fmt,
                                                           path, channels, start))
        except BaseException:
            view.recordings.pop(self.rid, None)
            raise

    def start(self, params: Any, pause_behavior: str | None) -> None:
        self._handle.view.link.send(m.StartRecording(self.rid, params, pause_behavior))

    def pause(self, behavior: str) -> None:
        self._handle.view.link.send(m.RecordingControl(self.rid, "pause", behavior))

    def resume(self) -> None:
        self._handle.view.link.send(m.RecordingControl(self.rid, "resume"))

    def stop(self) -> None:
        self._handle.view.link.send(m.RecordingControl(self.rid, "stop"))


class MediaHandle:
    """One call's media session on a host (see the module docstring)."""

    def __init__(self, view: HostView, sid: int, local_port: int, family: int,
                 release: Callable[[int], None]) -> None:
        self.view = view
        self.sid = sid
        self.local_port = local_port
        self.family = family
        self._release = release
        self.dtmf_payload_type: int | None = None
        self.started = False
        self.closed = False
        self.lost = False  # the host died under it
        self.peer: MediaHandle | None = None  # joined to it in the host
        self.frame_tick = -1  # the host clock's tick of the frames the taps get now
        self._plays: dict[int, RemotePlayback] = {}
        self._next_play = 0
        self._digit_sends: dict[int, Callable[[], None]] = {}
        self._next_digits = 0
        self._taps: list[FrameTap] = []
        self._dtmf_listeners: list[Callable[[str], None]] = []
        self._lost_listeners: list[Callable[[], None]] = []
        self._final: asyncio.Future[m.SessionSnapshot] = \
            asyncio.get_running_loop().create_future()  # its state at the close
        view.handles[sid] = self

    def __repr__(self) -> str:
        return f"<MediaHandle {self.sid} port {self.local_port} on {self.view.link.name}>"

    # -- set-up ---------------------------------------------------------------------------

    def configure(self, remote_host: str, remote_port: int, payload_type: int,
                  dtmf_payload_type: int | None, direction: str = "sendrecv") -> None:
        """Apply negotiated SDP (see `MediaSession.configure`; checked here, so a mistake
        raises ValueError in the caller, not in the host)."""
        if not is_numeric_address(remote_host, self.family):
            family = "IPv6" if self.family == socket.AF_INET6 else "IPv4"
            raise ValueError(f"remote RTP host must be a numeric {family} address, "
                             f"got {remote_host[:80]!r}")
        if codec_for_payload_type(payload_type) is None:
            raise ValueError(f"unsupported payload type {payload_type}")
        self.dtmf_payload_type = dtmf_payload_type
        self._send(m.Configure(self.sid, remote_host, remote_port, payload_type,
                               dtmf_payload_type, direction))

    def start(self) -> None:
        """Start receiving and ticking (idempotent)."""
        if not self.started and not self.closed:
            self.started = True
            self._send(m.StartSession(self.sid))

    def close(self) -> None:
        """Stop the session and free its port; its plays end `finished` (stopped)."""
        if self.closed:
            return
        self.closed = True
        for play in list(self._plays.values()):
            play.reported(FINISHED, REASON_STOPPED)
        self._digit_sends.clear()
        self._taps.clear()
        self.view.handles.pop(self.sid, None)
        if not self.lost:
            self.view.closing[self.sid] = self
        self._send(m.CloseSession(self.sid))
        self._release(self.local_port)

    def closed_as(self, snapshot: m.SessionSnapshot) -> None:
        if not self._final.done():
            self._final.set_result(snapshot)

    def host_lost(self) -> None:
        """The host died: the session is gone; whoever listens (the call) learns it."""
        if not self._final.done():
            self._final.set_exception(WorkerLost("the media worker died"))
            self._final.exception()  # retrieved: nobody may ask
        if self.closed:
            return
        self.lost = True
        self.close()
        for listener in tuple(self._lost_listeners):
            try:
                listener()
            except Exception:
                log.exception("media lost listener failed")

    def on_lost(self, listener: Callable[[], None]) -> Unsubscribe:
        self._lost_listeners.append(listener)
        return lambda: _discard(self._lost_listeners, listener)

    def _send(self, command: Any) -> None:
        if not self.lost:
            self.view.link.send(command)

    # -- subscribers ----------------------------------------------------------------------

    def add_tap(self, tap: FrameTap) -> Unsubscribe:
        """Call `tap(speak, listen)` every tick (the frames travel from the host while any
        tap is on: keep taps for what needs every frame)."""
        self._taps.append(tap)
        if len(self._taps) == 1:
            self._send(m.SetTap(self.sid, True))

        def remove() -> None:
            if tap in self._taps:
                self._taps.remove(tap)
                if not self._taps and not self.closed:
                    self._send(m.SetTap(self.sid, False))

        return remove

    def on_dtmf(self, listener: Callable[[str], None]) -> Unsubscribe:
        self._dtmf_listeners.append(listener)
        return lambda: _discard(self._dtmf_listeners, listener)

    def frames(self, tick: int, speak: np.ndarray, listen: np.ndarray) -> None:
        self.frame_tick = tick
        for tap in tuple(self._taps):
            try:
                tap(speak, listen)
            except Exception:
                log.exception("media tap failed")

    def event(self, event: m.PlayState | m.Digit | m.DigitsSent) -> None:
        if isinstance(event, m.PlayState):
            play = self._plays.get(event.pid)
            if play is not None:
                play.reported(event.state, event.finished_reason)
        elif isinstance(event, m.Digit):
            for listener in tuple(self._dtmf_listeners):
                try:
                    listener(event.digit)
                except Exception:
                    log.exception("DTMF listener failed")
        else:
            on_sent = self._digit_sends.pop(event.did, None)
            if on_sent is not None:
                on_sent()

    # -- outbound -------------------------------------------------------------------------

    def play(self, segments: Sequence[np.ndarray | Sound], *, volume_db: float = 0.0,
             loop: int = 1, control_id: str = "") -> RemotePlayback:
        if loop < 0:
            raise ValueError(f"loop must be >= 0 (0 = forever), got {loop}")
        if not math.isfinite(volume_db):
            raise ValueError(f"volume {volume_db!r} dB is not finite")
        self._next_play += 1
        play = RemotePlayback(self, self._next_play, loop, control_id, float(volume_db))
        if self.closed:
            play.reported(FINISHED, REASON_STOPPED)
            return play
        self._plays[play.pid] = play
        self._send(m.Play(self.sid, play.pid, self.view.segments(segments), float(volume_db),
                          loop, control_id))
        return play

    def control_play(self, pid: int, action: str, volume_db: float = 0.0) -> None:
        if pid in self._plays:
            self._send(m.PlayControl(self.sid, pid, action, volume_db))

    def play_over(self, pid: int) -> None:
        self._plays.pop(pid, None)

    def send_dtmf(self, digits: str, on_sent: Callable[[], None] | None = None) -> None:
        """Queue RFC 4733 digits (`w` waits 0.5 s, `W` 1 s); `on_sent()` once the last went
        out. Raises ValueError for a bad character or a peer without telephone-event."""
        if self.dtmf_payload_type is None:
            raise ValueError("the peer did not negotiate telephone-event")
        bad = [c for c in digits if c not in _DIGIT_CHARACTERS]
        if bad:
            raise ValueError(f"not a DTMF digit: {bad[0]!r}")
        if on_sent is not None and not digits:
            raise ValueError("no digits to send")
        self._next_digits += 1
        if on_sent is not None:
            self._digit_sends[self._next_digits] = on_sent
        self._send(m.SendDigits(self.sid, self._next_digits, digits))

    # -- recordings and bridges -----------------------------------------------------------

    def record_media(self, recording_id: str, reports: RuntimeReports) -> RemoteRecording:
        return RemoteRecording(self, recording_id, reports)

    def join(self, other: MediaHandle) -> None:
        """Bridge with `other` in the host (both must live on the same one)."""
        if other is self:
            raise ValueError("a session cannot be bridged to itself")
        if other.view is not self.view:
            raise ValueError("sessions on different media hosts cannot be bridged")
        self.split()
        other.split()
        self.peer, other.peer = other, self
        self.started = other.started = True
        self._send(m.Join(self.sid, other.sid))

    def split(self) -> None:
        other, self.peer = self.peer, None
        if other is not None:
            other.peer = None
            self._send(m.Split(self.sid))

    async def snapshot(self) -> m.SessionSnapshot:
        """The session's state in the host (remote address, codec, counters); after the
        close, its last state."""
        if self.closed:
            return await asyncio.shield(self._final)
        value = await self.view.link.request(m.SessionQuery(self.sid))
        assert isinstance(value, m.SessionSnapshot)
        return value


def _discard(items: list[Any], item: object) -> None:
    if item in items:
        items.remove(item)
