"""What the recording engine needs of the call it records.

The engine records a call's two streams; it does not know what a call is made of (SIP, RELAY,
SWML). The platform's `Call` is one `RecordedCall`; so is any other thing with a media session
that a recording can be attached to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from callbox.server.recording.parties import Parties
from callbox.server.recording.runtime import RuntimeReports
from callbox.wire.recording import RecordParams

Unsubscribe = Callable[[], None]


class RecordingMedia(Protocol):
    """The media half of one recording: a `RecordingRuntime` in this process or in a media
    worker. Its state changes and its end come back through the `RuntimeReports` it was made
    with; `lost` is reported when the worker holding it died."""

    async def open(self, fmt: str, path: Path, channels: int, *,
                   record: RecordParams | None = None, pause_behavior: str | None = None
                   ) -> None:
        """Create the file; raises OSError. With `record`, record at once (as `start`)."""

    def start(self, params: RecordParams, pause_behavior: str | None) -> None: ...

    def pause(self, behavior: str) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None:
        """End it (`no_input` and no file when it was never started)."""


class Playing(Protocol):
    """A prompt started on the call."""

    async def wait(self) -> str: ...


class AttachedRecording(Protocol):
    """What the call needs of a recording attached to it (the engine's `Recording`): the call
    stops its recordings when it ends and waits for their end before it reports `ended`, and
    tells them who they hold when attached and at each change of its peer."""

    control_id: str
    done: asyncio.Future[Any]  # completes with the terminal event

    @property
    def is_done(self) -> bool: ...

    def stop(self) -> None: ...

    def note_parties(self, parties: Parties) -> None:
        """Who the recording holds now (see `recording.parties`)."""


class RecordedCall(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def is_active(self) -> bool: ...

    @property
    def peer_id(self) -> str | None:
        """The call this one is bridged to now (webhooks and events carry it)."""

    @property
    def recordings(self) -> Sequence[AttachedRecording]: ...

    def attach_recording(self, recording: AttachedRecording) -> None: ...

    def record_media(self, recording_id: str, reports: RuntimeReports) -> RecordingMedia:
        """The media half of a new recording on this call."""

    def play_samples(self, segments: Sequence[np.ndarray]) -> Playing: ...

    async def prompts_played(self) -> None: ...
