"""Shared sounds: encodings made once, the cache (hits, files, eviction, failures), and the
playback fast path (`next_frame`) giving exactly what mixing gives, sent as the same packets."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.peers.audio import write_wav

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.media.g711 import CODECS
from callbox.server.media.playback import FINISHED, Playback
from callbox.server.media.session import MediaSession
from callbox.server.media.sound import Sound, SoundCache
from callbox.server.media.sources import MediaError

PCMU, PCMA = CODECS["PCMU"], CODECS["PCMA"]


def noise(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


def test_any_frame_of_the_encoded_sound_is_that_frame_encoded() -> None:
    sound = Sound(noise(1000))
    for codec in (PCMU, PCMA):
        whole = sound.encoded(codec)
        for start in (0, 1, 37, 840):
            frame = sound.samples[start:start + FRAME_SAMPLES]
            assert bytes(whole[start:start + FRAME_SAMPLES]) == codec.encode(frame)
    assert sound.encoded(PCMU).obj is sound.encoded(PCMU).obj  # encoded once
    assert not sound.samples.flags.writeable


def drain(playback: Playback, fast: list[bool]) -> np.ndarray:
    """Play to the end, taking `next_frame` when `fast[i % len]` and it can, else mixing."""
    frames = []
    i = 0
    while playback.state != FINISHED:
        taken = playback.next_frame(PCMU) if fast[i % len(fast)] else None
        if taken is not None:
            samples, payload = taken
            assert bytes(payload) == PCMU.encode(samples)
            frames.append(samples.copy())
        else:
            mix = np.zeros(FRAME_SAMPLES, dtype=np.int32)
            playback.read_into(mix)
            frames.append(mix.astype(np.int16))
        i += 1
    return np.concatenate(frames)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=1, max_size=4),
       loop=st.integers(1, 3), fast=st.lists(st.booleans(), min_size=1, max_size=5))
def test_next_frame_and_read_into_play_the_same_samples(
        lengths: list[int], loop: int, fast: list[bool]) -> None:
    segments = [noise(n, seed=i) for i, n in enumerate(lengths)]
    mixed_only = drain(Playback(segments, loop=loop), [False])
    either = drain(Playback(segments, loop=loop), fast)
    assert np.array_equal(either, mixed_only)
    expected = np.concatenate(segments * loop)
    assert np.array_equal(mixed_only[:len(expected)], expected)
    assert not mixed_only[len(expected):].any()


def test_next_frame_declines_a_scaled_or_paused_playback() -> None:
    playback = Playback([noise(800)], volume_db=-6)
    assert playback.next_frame(PCMU) is None
    playback.set_volume(0)
    assert playback.next_frame(PCMU) is not None
    playback.pause()
    assert playback.next_frame(PCMU) is None


async def test_a_prompt_alone_is_sent_as_the_mix_would_send_it() -> None:
    """Same packets from the fast path (one prompt) and the mixing path (the prompt plus a
    silent second playback, which makes the session mix)."""
    prompt = Sound(noise(FRAME_SAMPLES * 6 + 55))
    sent = {}
    for name, extra in (("fast", []), ("mixed", [np.zeros(FRAME_SAMPLES * 10, np.int16)])):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        own.bind(("127.0.0.1", 0))
        session = MediaSession(own, "127.0.0.1")
        session.configure("127.0.0.1", peer.getsockname()[1], 0, None)
        heard: list[np.ndarray] = []
        session.add_tap(lambda speak, listen, heard=heard: heard.append(listen.copy()))
        session.play(Playback([prompt]))
        for samples in extra:
            session.play(Playback([samples]))
        for _ in range(8):
            session.tick()
        payloads = []
        while True:
            try:
                payloads.append(peer.recv(2048)[12:])
            except BlockingIOError:
                break
        sent[name] = (b"".join(payloads), np.concatenate(heard))
        peer.close()
        own.close()
    assert sent["fast"][0] == sent["mixed"][0]
    assert np.array_equal(sent["fast"][1], sent["mixed"][1])
    assert sent["fast"][0][:len(prompt)] == bytes(prompt.encoded(PCMU))


async def test_the_cache_renders_a_sound_once_even_when_asked_at_once() -> None:
    renders: list[str] = []

    async def render(url: str) -> np.ndarray:
        renders.append(url)
        await asyncio.sleep(0.01)
        return noise(400)

    cache = SoundCache(render=render)
    first, second = await asyncio.gather(cache.get("say:Hello"), cache.get("say:Hello"))
    third = await cache.get("say:Hello")
    assert first is second is third and renders == ["say:Hello"]
    await cache.get("https://example.com/a.wav")
    await cache.get("https://example.com/a.wav")
    assert renders.count("https://example.com/a.wav") == 2  # remote audio may change


async def test_a_file_is_rendered_again_once_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "prompt.wav"
    write_wav(path, noise(800))
    cache = SoundCache()
    first = await cache.get(str(path))
    assert await cache.get(f"file://{path}") is not None
    assert await cache.get(str(path)) is first
    write_wav(path, noise(1600, seed=2))
    os.utime(path, ns=(1, 1))
    changed = await cache.get(str(path))
    assert changed is not first and len(changed) == 1600


async def test_the_least_recently_used_sound_goes_first_and_failures_are_not_kept() -> None:
    calls = {"n": 0}

    async def render(url: str) -> np.ndarray:
        calls["n"] += 1
        if url == "say:broken":
            raise MediaError("espeak failed")
        return noise(1000)  # 2000 bytes of samples: a budget of 4000 each

    cache = SoundCache(max_bytes=9000, render=render)
    a = await cache.get("tone:1")
    await cache.get("tone:2")
    assert await cache.get("tone:1") is a  # tone:1 used last
    await cache.get("tone:3")  # over budget: tone:2 goes
    assert await cache.get("tone:1") is a
    before = calls["n"]
    await cache.get("tone:2")
    assert calls["n"] == before + 1
    for _ in range(2):
        with pytest.raises(MediaError, match="espeak failed"):
            await cache.get("say:broken")
    assert calls["n"] == before + 3
