"""`callbox demo`, the README's main command: the seed voicemail program records a real call."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from tests.peers import audio

from callbox.demo import MESSAGE
from callbox.server.media.sources import render_tts

pytestmark = pytest.mark.peers

CALLBOX = str(Path(sys.executable).parent / "callbox")
# The seed's RELAY voicemail example, verbatim (the official SDK's import line), kept in the repo.
SEED = Path(__file__).resolve().parents[1] / "data" / "seed_relay_voicemail.txt"


def test_the_example_is_the_seed_with_only_the_import_changed():
    from callbox import examples

    program = Path(examples.__file__).with_name("relay_voicemail.py").read_text()
    seed = SEED.read_text()
    assert "from signalwire.relay import" in seed
    assert program == seed.replace("from signalwire.relay import", "from callbox.relay import")


async def test_demo_records_the_spoken_message(tmp_path):
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "demo", "--data-dir", str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    text = out.decode()
    assert process.returncode == 0, text
    url = re.search(r"\[voicemail.py\] Recording saved: (https://\S+\.mp3)", text).group(1)
    path = tmp_path / "data" / "recordings" / url.rsplit("/", 1)[-1]
    samples, _ = audio.decode_audio(path)
    message = await render_tts(MESSAGE)
    spoken = audio.active_spans(message, 8000, threshold_dbfs=-40)
    spoken_seconds = spoken[-1][1] - spoken[0][0]
    recorded = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    assert recorded[-1][1] - recorded[0][0] == pytest.approx(spoken_seconds, abs=0.5)
    # the message starts after the prompt and the beep: within the first 5 s of the file
    score, _ = audio.max_normalized_xcorr(samples, message, max_lag_samples=5 * 8000)
    assert score > 0.9
