"""Speech to text for the ai verb: segmentation with the voice detector, pocketsphinx on
espeak-ng speech at 8 kHz through G.711, fed frame by frame as a call delivers it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from callbox.server.ai.stt import (
    END_SILENCE_SECONDS,
    PRE_ROLL_SECONDS,
    PocketsphinxSTT,
    SpeechToText,
    UtteranceSegmenter,
    make_stt,
    upsample_2x,
)
from callbox.server.media.g711 import ulaw_decode, ulaw_encode
from callbox.server.media.sources import render_tts, tone

FRAME = 160


def frames(signal: np.ndarray):
    for start in range(0, len(signal) - FRAME + 1, FRAME):
        yield signal[start:start + FRAME]


def telephone(pcm: np.ndarray) -> np.ndarray:
    """What arrives over a PCMU call."""
    return ulaw_decode(ulaw_encode(pcm))


def test_segmenter_cuts_utterances_at_end_silence_with_pre_roll():
    burst = tone((500.0,), 1.0, -20.0)
    stream = np.concatenate([np.zeros(8000, np.int16), burst, np.zeros(4000, np.int16),  # 0.5 s
                             burst, np.zeros(16000, np.int16)])
    segmenter = UtteranceSegmenter()
    ended_at = []
    cuts = []
    for index, frame in enumerate(frames(stream)):
        audio = segmenter.feed(frame)
        if audio is not None:
            cuts.append(audio)
            ended_at.append((index + 1) * FRAME / 8000)
    # a 0.5 s pause does not end the utterance; 0.8 s of non-speech does
    assert len(cuts) == 1
    speech_end = 1.0 + 1.0 + 0.5 + 1.0
    assert ended_at[0] == pytest.approx(speech_end + END_SILENCE_SECONDS, abs=0.03)
    # 0.3 s up to the onset (which is 60 ms into the speech) + the rest + the end silence
    assert len(cuts[0]) / 8000 == pytest.approx(
        PRE_ROLL_SECONDS - 0.06 + 2.5 + END_SILENCE_SECONDS, abs=0.005)
    assert segmenter.flush() is None


def test_segmenter_ignores_clicks_and_caps_length():
    click = np.zeros(8000, np.int16)
    click[100:200] = 20000  # under 60 ms: no onset
    segmenter = UtteranceSegmenter(max_seconds=2.0)
    assert all(segmenter.feed(f) is None for f in frames(click))
    long = tone((300.0,), 5.0, -20.0)
    cuts = [a for a in map(segmenter.feed, frames(long)) if a is not None]
    assert [round(len(c) / 8000, 1) for c in cuts] == [2.0, 2.0]


def test_upsample_keeps_the_signal():
    x = tone((440.0,), 0.5, -12.0)
    y = upsample_2x(x)
    assert len(y) == 2 * len(x)
    assert np.max(np.abs(y[::2].astype(int) - x.astype(int))) <= 2


@pytest.mark.parametrize(("text", "keywords"), [
    ("Hello, I would like to leave a message.", {"hello", "like", "leave"}),
    ("Stop the recording now. Thank you.", {"recording"}),
])
async def test_pocketsphinx_transcribes_espeak_speech_over_g711(text, keywords):
    speech = telephone(np.asarray(await render_tts(text)))
    stream = np.concatenate([np.zeros(8000, np.int16), speech, np.zeros(12000, np.int16)])
    stt: SpeechToText = make_stt("pocketsphinx")
    assert isinstance(stt, PocketsphinxSTT)
    try:
        for frame in frames(stream):
            stt.feed(frame)
        heard = await asyncio.wait_for(stt.utterance(), 30)
    finally:
        stt.close()
    words = set(heard.split())
    assert words & keywords == keywords, f"heard {heard!r}"


async def test_silence_gives_no_utterance():
    stt = PocketsphinxSTT()
    try:
        for frame in frames(np.zeros(16000, np.int16)):
            stt.feed(frame)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stt.utterance(), 0.3)
    finally:
        stt.close()
