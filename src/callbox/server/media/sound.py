"""A rendered sound, shared by every call that plays it, and the cache that shares it.

A prompt is rendered once (TTS, a decoded file, a tone) and its G.711 payloads are encoded once
per codec on first use: G.711 maps each sample to one byte, so any 20 ms frame of the sound, at
any offset, is a slice of the encoded whole. A call playing one prompt at unity gain then sends
that slice as it is, with no per-call numpy work per tick (see `Playback.next_frame`).

`SoundCache.get(url)` renders what `render_media_url` renders, keeping deterministic sounds
(`say:`, `tone:`, `ring:`, `silence:`, and local files while their size and modification time
stay the same) up to MAX_CACHED_BYTES, least recently used first out. Remote (`http(s)`) audio
is fetched every time: its content may change.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from callbox.server.media.g711 import G711Codec
from callbox.server.media.sources import render_media_url

MAX_CACHED_BYTES: Final = 64 * 1024 * 1024  # samples and encodings together
GENERATED_SCHEMES: Final = frozenset({"say", "tone", "ring", "ringtone", "silence"})
_KEYS: Final = itertools.count(1)


class Sound:
    """8 kHz mono int16 samples (read-only) and their G.711 encodings, made on first use."""

    __slots__ = ("_encoded", "key", "samples")

    def __init__(self, samples: npt.ArrayLike) -> None:
        self.key = next(_KEYS)  # names it to the media workers that were sent it
        array = np.asarray(samples).reshape(-1)
        if array.dtype != np.int16:
            array = np.clip(array, -32768, 32767).astype(np.int16)
        array = np.array(array, dtype=np.int16, copy=True)  # ours alone: nobody can change it
        array.flags.writeable = False
        self.samples: npt.NDArray[np.int16] = array
        self._encoded: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def encoded(self, codec: G711Codec) -> memoryview:
        """The whole sound in `codec`: byte i is sample i."""
        data = self._encoded.get(codec.payload_type)
        if data is None:
            data = self._encoded[codec.payload_type] = codec.encode(self.samples)
        return memoryview(data)


Renderer = Callable[[str], Awaitable[npt.NDArray[np.int16]]]


class SoundCache:
    def __init__(self, max_bytes: int = MAX_CACHED_BYTES,
                 render: Renderer = render_media_url) -> None:
        self.max_bytes = max_bytes
        self._render = render
        self._sounds: OrderedDict[tuple[str, ...], Sound] = OrderedDict()
        self._bytes = 0  # kept sounds, counted with room for two encodings each
        self._rendering: dict[tuple[str, ...], asyncio.Future[Sound]] = {}
        self.hits = self.renders = 0

    async def get(self, url: str) -> Sound:
        """The sound `url` names; raises MediaError as `render_media_url` does."""
        key = _cache_key(url)
        if key is None:
            self.renders += 1
            return Sound(await self._render(url))
        cached = self._sounds.get(key)
        if cached is not None:
            self._sounds.move_to_end(key)
            self.hits += 1
            return cached
        pending = self._rendering.get(key)
        if pending is not None:  # another call is rendering the same sound right now
            self.hits += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[Sound] = asyncio.get_running_loop().create_future()
        self._rendering[key] = future
        try:
            self.renders += 1
            sound = Sound(await self._render(url))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) get it too
            raise
        finally:
            del self._rendering[key]
        future.set_result(sound)
        self._keep(key, sound)
        return sound

    def _keep(self, key: tuple[str, ...], sound: Sound) -> None:
        size = _budget(sound)
        if size > self.max_bytes:
            return
        self._sounds[key] = sound
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, oldest = self._sounds.popitem(last=False)
            self._bytes -= _budget(oldest)


def _budget(sound: Sound) -> int:
    """What a kept sound may come to: its samples and a PCMU and a PCMA encoding."""
    return sound.samples.nbytes * 2


def _cache_key(url: str) -> tuple[str, ...] | None:
    """What identifies the sound, or None when it must be fetched each time."""
    scheme, sep, _ = url.partition(":")
    kind = scheme.strip().lower() if sep else ""
    if kind in GENERATED_SCHEMES or url.strip().lower() in ("ring", "ringtone"):
        return ("generated", url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() in ("http", "https"):
        return None
    path = Path(urllib.parse.unquote(parts.path)) if parts.scheme.lower() == "file" else Path(url)
    try:
        stat = os.stat(path)
    except OSError:
        return None  # let the renderer report it
    return ("file", str(path), str(stat.st_size), str(stat.st_mtime_ns))


SHARED_SOUNDS: Final = SoundCache()  # the process's prompts, shared by every call
