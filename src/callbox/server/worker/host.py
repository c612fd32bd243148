"""The media host: every media session of one process, ticked by its one media clock.

It executes the commands of `messages` on real objects (`MediaSession`, `Playback`,
`MediaBridge`, `RecordingRuntime`) and reports through `emit` what the main process must know:
play states, received digits, digits sent, recording states and ends, the frames of sessions
with a tap. It runs inside a media worker process (`worker.main`) or, with no workers, inside
the main process; it does not know which.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from callbox.server.media.bridge import MediaBridge
from callbox.server.media.clock import MediaClock
from callbox.server.media.playback import Playback
from callbox.server.media.session import MediaSession
from callbox.server.media.sound import Sound
from callbox.server.recording.machine import RecState
from callbox.server.recording.runtime import RecordingRuntime, RecordingWriters, RuntimeEnd
from callbox.server.worker import messages as m

log = logging.getLogger(__name__)

Emit = Callable[[Any], None]


def session_counters(session: MediaSession) -> dict[str, int]:
    """A session's RTP counters (`MediaStats` plus the receive buffer's)."""
    stats = session.stats
    counters = {f.name: getattr(stats, f.name) for f in fields(stats)}  # flat ints: no deep copy
    counters["packets_late"] = session.receive_buffer.late
    counters["receive_resyncs"] = session.receive_buffer.resyncs
    return counters


class MediaHost:
    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.clock = MediaClock()
        self.writers = RecordingWriters()
        self.sessions: dict[int, MediaSession] = {}
        self._plays: dict[tuple[int, int], Playback] = {}
        self._bridges: dict[int, MediaBridge] = {}  # by both sessions' sid
        self._taps: dict[int, Callable[[], None]] = {}  # sid -> unsubscribe
        self._runtimes: dict[str, RecordingRuntime] = {}
        self._runtime_sessions: dict[str, int] = {}
        self._sounds: dict[int, Sound] = {}
        self._handlers: dict[type, Callable[[Any], Any]] = {
            m.Configure: self._configure, m.StartSession: self._start,
            m.CloseSession: self._close, m.SetTap: self._set_tap,
            m.SendDigits: self._send_digits, m.Join: self._join, m.Split: self._split,
            m.SoundData: self._keep_sound, m.ForgetSound: self._forget_sound,
            m.Play: self._play, m.PlayControl: self._play_control,
            m.StartRecording: self._start_recording,
            m.RecordingControl: self._recording_control,
            m.SessionQuery: self._session_query, m.HostQuery: self._host_query,
        }

    def start(self) -> None:
        self.clock.add(self.writers)
        self.clock.start()

    async def stop(self) -> None:
        for sid in list(self.sessions):
            self._close(m.CloseSession(sid))
        await self.clock.stop()
        self.writers.close()

    # -- dispatch -------------------------------------------------------------------------

    def open_session(self, command: m.OpenSession, sock: socket.socket) -> None:
        session = MediaSession(sock, command.advertised_host)
        sid = command.sid
        session.on_dtmf(lambda digit: self.emit(m.Digit(sid, digit)))
        self.sessions[sid] = session

    def handle(self, command: Any) -> Any:
        """Execute one command; returns the answer of a question (None otherwise). Raises
        ValueError/KeyError for a bad one (the caller reports or logs it)."""
        return self._handlers[type(command)](command)

    async def open_recording(self, command: m.OpenRecording) -> None:
        """Create the recording's file (raises OSError); record at once with `start`."""
        runtime = RecordingRuntime(command.rid, self.writers, self)
        await runtime.open(command.format, command.path, command.channels)
        self._runtimes[command.rid] = runtime
        self._runtime_sessions[command.rid] = command.sid
        if command.start is not None:
            self._start_recording(command.start)

    # -- sessions -------------------------------------------------------------------------

    # A command for a session closed meanwhile (the call ended while it was on its way) is
    # dropped; only questions about it fail.

    def _configure(self, c: m.Configure) -> None:
        session = self.sessions.get(c.sid)
        if session is not None:
            session.configure(c.remote_host, c.remote_port, c.payload_type,
                              c.dtmf_payload_type, c.direction)

    def _start(self, c: m.StartSession) -> None:
        session = self.sessions.get(c.sid)
        if session is not None and not session.closed and not session.started:
            session.start()
            if c.sid not in self._bridges:
                self.clock.add(session)

    def _close(self, c: m.CloseSession) -> None:
        session = self.sessions.pop(c.sid, None)
        if session is None:
            return
        bridge = self._bridges.get(c.sid)
        if bridge is not None:
            self._split(m.Split(c.sid))
        self.clock.remove(session)
        for rid, sid in list(self._runtime_sessions.items()):
            if sid == c.sid:
                self._runtimes[rid].stop()
        session.close()  # stops its plays: their `finished` goes out first
        for key in [k for k in self._plays if k[0] == c.sid]:
            del self._plays[key]
        self._taps.pop(c.sid, lambda: None)()
        snapshot = self._snapshot(session)
        session.sock.close()
        self.emit(m.SessionClosed(c.sid, snapshot))

    def _set_tap(self, c: m.SetTap) -> None:
        if not c.on:
            self._taps.pop(c.sid, lambda: None)()
            return
        session = self.sessions.get(c.sid)
        if session is None or c.sid in self._taps:
            return
        sid = c.sid

        def tap(speak: np.ndarray, listen: np.ndarray) -> None:
            self.emit(m.Frames([(sid, self.clock.ticks, speak, listen)]))

        self._taps[sid] = session.add_tap(tap)

    def _send_digits(self, c: m.SendDigits) -> None:
        sid, did = c.sid, c.did
        session = self.sessions.get(sid)
        if session is not None:
            session.send_dtmf(c.digits, on_sent=lambda: self.emit(m.DigitsSent(sid, did)))

    def _join(self, c: m.Join) -> None:
        a, b = self.sessions.get(c.a), self.sessions.get(c.b)
        if a is None or b is None:
            return
        self._split(m.Split(c.a))
        self._split(m.Split(c.b))
        bridge = MediaBridge(a, b, self.clock)
        self._bridges[c.a] = self._bridges[c.b] = bridge
        bridge.join()

    def _split(self, c: m.Split) -> None:
        bridge = self._bridges.get(c.a)
        if bridge is None:
            return
        bridge.split()
        for sid in [sid for sid, b in self._bridges.items() if b is bridge]:
            del self._bridges[sid]

    # -- plays ----------------------------------------------------------------------------

    def _keep_sound(self, c: m.SoundData) -> None:
        self._sounds[c.key] = Sound(c.samples)

    def _forget_sound(self, c: m.ForgetSound) -> None:
        self._sounds.pop(c.key, None)

    def _play(self, c: m.Play) -> None:
        segments = [self._sounds[s] if isinstance(s, int) else s for s in c.segments]
        playback = Playback(segments, volume_db=c.volume_db, loop=c.loop,
                            control_id=c.control_id)
        sid, pid = c.sid, c.pid
        session = self.sessions.get(sid)

        def on_state(state: str) -> None:
            if state == "finished":
                self._plays.pop((sid, pid), None)
            self.emit(m.PlayState(sid, pid, state, playback.finished_reason))

        playback.on_state = on_state
        if session is None or session.closed:
            playback.stop()
            return
        self._plays[(sid, pid)] = playback
        session.play(playback)

    def _play_control(self, c: m.PlayControl) -> None:
        playback = self._plays.get((c.sid, c.pid))
        if playback is None:
            return
        if c.action == "pause":
            playback.pause()
        elif c.action == "resume":
            playback.resume()
        elif c.action == "stop":
            playback.stop()
        elif c.action == "volume":
            playback.set_volume(c.volume_db)
        else:
            raise ValueError(f"unknown play action {c.action!r}")

    # -- recordings -----------------------------------------------------------------------

    def _start_recording(self, c: m.StartRecording) -> None:
        runtime = self._runtimes.get(c.rid)
        if runtime is None or runtime.ended:  # the call ended first: it ended `no_input`
            return
        session = self.sessions.get(self._runtime_sessions[c.rid])
        if session is None or session.closed:
            runtime.stop()  # the call ended meanwhile: no_input, no file
            return
        runtime.start(session, c.params, c.pause_behavior)

    def _recording_control(self, c: m.RecordingControl) -> None:
        runtime = self._runtimes.get(c.rid)
        if runtime is None:
            return
        if c.action == "pause":
            runtime.pause(c.behavior)
        elif c.action == "resume":
            runtime.resume()
        elif c.action == "stop":
            runtime.stop()
        else:
            raise ValueError(f"unknown recording action {c.action!r}")

    # RuntimeReports, for the runtimes of this host
    def transition(self, recording_id: str, state: RecState, pause_behavior: str | None) -> None:
        self.emit(m.RecordingTransition(recording_id, state.value, pause_behavior))

    def ended(self, recording_id: str, end: RuntimeEnd) -> None:
        self._runtimes.pop(recording_id, None)
        self._runtime_sessions.pop(recording_id, None)
        self.emit(m.RecordingEnded(recording_id, end.state.value, end.reason, end.size,
                                   end.duration))

    def lost(self, recording_id: str) -> None:  # pragma: no cover - only the main side has it
        raise AssertionError("a host's runtimes are never lost to itself")

    # -- questions ------------------------------------------------------------------------

    def _session_query(self, c: m.SessionQuery) -> m.SessionSnapshot:
        return self._snapshot(self.sessions[c.sid])

    def _snapshot(self, session: MediaSession) -> m.SessionSnapshot:
        return m.SessionSnapshot(
            local_port=session.local_port, remote=session.remote, codec=session.codec.name,
            sending=session.sending, ticks=session.ticks, ticking=session in self.clock,
            buffered=session.receive_buffer.packets, counters=session_counters(session))

    def _host_query(self, c: m.HostQuery) -> m.HostSnapshot:
        totals: dict[str, int] = {}
        for session in self.sessions.values():
            for name, value in session_counters(session).items():
                totals[name] = totals.get(name, 0) + value
        return m.HostSnapshot(sessions=len(self.sessions), ticks=self.clock.ticks,
                              late_ticks=self.clock.late_ticks,
                              max_behind=self.clock.max_behind, counters=totals)

