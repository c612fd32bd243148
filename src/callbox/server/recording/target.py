"""What the recording engine needs of the call it records.

The engine records a call's two streams; it does not know what a call is made of (SIP, RELAY,
SWML). The platform's `Call` is one `RecordedCall`; so is any other thing with a media session
that a recording can be attached to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from callbox.server.media.session import FrameTap

Unsubscribe = Callable[[], None]


class Playing(Protocol):
    """A prompt started on the call."""

    async def wait(self) -> str: ...


class AttachedRecording(Protocol):
    """What the call needs of a recording attached to it (the engine's `Recording`): the call
    stops its recordings when it ends and waits for their end before it reports `ended`."""

    control_id: str
    done: asyncio.Future[Any]  # completes with the terminal event

    @property
    def is_done(self) -> bool: ...

    def stop(self) -> None: ...


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

    def add_tap(self, tap: FrameTap) -> Unsubscribe: ...

    def on_dtmf(self, listener: Callable[[str], None]) -> Unsubscribe: ...

    def play_samples(self, segments: Sequence[np.ndarray]) -> Playing: ...

    async def prompts_played(self) -> None: ...
