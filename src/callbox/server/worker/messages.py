"""What the main process and a media host say to each other.

Commands go from the main process (SIP, RELAY, HTTP, the calls' logic) to a `MediaHost` (the
media clock, RTP sockets, prompts, recordings' frames and files); events come back. Sessions are
numbered by the main process (`sid`), plays per session (`pid`), digit sends per session
(`did`); recordings keep their recording id. A command that needs an answer travels inside a
`Request` and gets a `Reply` with the same number. The same messages cross a process boundary
(pickled) or are handed over as they are when the host runs in the main process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callbox.server.media.sound import Sound
from callbox.wire.recording import RecordParams

# -- commands: sessions -------------------------------------------------------------------------


@dataclass(slots=True)
class OpenSession:
    """A session on the RTP socket that comes with this command (its file descriptor)."""

    sid: int
    advertised_host: str


@dataclass(slots=True)
class Configure:
    sid: int
    remote_host: str
    remote_port: int
    payload_type: int
    dtmf_payload_type: int | None
    direction: str


@dataclass(slots=True)
class StartSession:
    sid: int


@dataclass(slots=True)
class CloseSession:
    sid: int


@dataclass(slots=True)
class SetTap:
    """Stream the session's frames to the main process (`Frames`) or stop."""

    sid: int
    on: bool


@dataclass(slots=True)
class SendDigits:
    sid: int
    did: int
    digits: str


@dataclass(slots=True)
class Join:
    """Bridge two sessions of the same host."""

    a: int
    b: int


@dataclass(slots=True)
class Split:
    a: int


# -- commands: plays ----------------------------------------------------------------------------


@dataclass(slots=True)
class SoundData:
    """A rendered sound the host keeps under `key` until `ForgetSound`."""

    key: int
    samples: np.ndarray


@dataclass(slots=True)
class ForgetSound:
    key: int


@dataclass(slots=True)
class Play:
    """Play `segments`: each a sound key sent before, or the samples themselves (a `Sound`
    only to a host in the same process)."""

    sid: int
    pid: int
    segments: list[int | np.ndarray | Sound]
    volume_db: float
    loop: int
    control_id: str


@dataclass(slots=True)
class PlayControl:
    sid: int
    pid: int
    action: str  # pause | resume | stop | volume
    volume_db: float = 0.0


# -- commands: recordings -----------------------------------------------------------------------


@dataclass(slots=True)
class OpenRecording:
    """Create the file (and, with `start`, record at once); the reply is None or the OSError's
    message."""

    sid: int
    rid: str
    format: str
    path: Path
    channels: int
    start: StartRecording | None = None


@dataclass(slots=True)
class StartRecording:
    rid: str
    params: RecordParams
    pause_behavior: str | None


@dataclass(slots=True)
class RecordingControl:
    rid: str
    action: str  # pause | resume | stop
    behavior: str = "silence"


# -- commands: questions ------------------------------------------------------------------------


@dataclass(slots=True)
class SessionQuery:
    sid: int


@dataclass(slots=True)
class HostQuery:
    pass


@dataclass(slots=True)
class Request:
    number: int
    command: Any


# -- events -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    number: int
    value: Any = None
    error: str | None = None


@dataclass(slots=True)
class PlayState:
    sid: int
    pid: int
    state: str
    finished_reason: str | None


@dataclass(slots=True)
class Digit:
    sid: int
    digit: str


@dataclass(slots=True)
class DigitsSent:
    sid: int
    did: int


@dataclass(slots=True)
class Frames:
    """Frames of sessions with a tap: (sid, the host clock's tick, speak, listen) each."""

    items: list[tuple[int, int, np.ndarray, np.ndarray]]


@dataclass(slots=True)
class RecordingTransition:
    rid: str
    state: str
    pause_behavior: str | None


@dataclass(slots=True)
class RecordingEnded:
    rid: str
    state: str
    reason: str | None
    size: int | None
    duration: float | None


@dataclass(slots=True)
class SessionClosed:
    """A session's last state (its counters go to the operators' totals)."""

    sid: int
    snapshot: SessionSnapshot


# -- answers to questions -----------------------------------------------------------------------


@dataclass(slots=True)
class SessionSnapshot:
    local_port: int
    remote: tuple[str, int] | None
    codec: str
    sending: bool
    ticks: int
    ticking: bool  # a member of the clock on its own (not bridged, not ended)
    buffered: int  # audio packets placed on the receive timeline
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class HostSnapshot:
    sessions: int = 0
    ticks: int = 0
    late_ticks: int = 0
    max_behind: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)  # of the open sessions
