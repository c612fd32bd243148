"""`callbox demo`, the README's main command: the seed voicemail program records a real call,
and a call between two people is recorded in stereo (the caller left, the person called right).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from tests.peers import audio

from callbox.demo import CALLER_WORDS, MESSAGE, PERSON_WORDS
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


def assert_heard_in_order(recording, words, starts_before: float) -> None:
    """Every voiced quarter second of `words` is in `recording` (score > 0.9 for 90 % of them
    at least), in order, the whole starting before `starts_before` s. A gap a starved moment
    inserted under load spoils a piece and moves the rest later: 0.25 s in all at most."""
    pieces = audio.piece_offsets(recording, words, round(starts_before * 8000))
    found = [offset for score, offset in pieces if score > 0.9]
    assert len(pieces) >= 8 and len(found) >= 0.9 * len(pieces), pieces
    assert found == sorted(found), pieces
    assert found[0] >= 0 and found[-1] < starts_before * 8000, pieces
    assert found[-1] - found[0] <= 0.25 * 8000, pieces


async def test_demo_records_the_voicemail_and_the_call_between_two_people(tmp_path):
    process = await asyncio.create_subprocess_exec(
        CALLBOX, "demo", "--data-dir", str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    text = out.decode()
    assert process.returncode == 0, text
    assert re.search(r"console   https://127\.0\.0\.1:\d+/console/  \(sign in", text), text
    url = re.search(r"\[voicemail.py\] Recording saved: (https://\S+\.mp3)", text).group(1)
    path = tmp_path / "data" / "recordings" / url.rsplit("/", 1)[-1]
    samples, _ = audio.decode_audio(path)
    message = await render_tts(MESSAGE)
    spoken = audio.active_spans(message, 8000, threshold_dbfs=-40)
    spoken_seconds = spoken[-1][1] - spoken[0][0]
    recorded = audio.active_spans(samples, 8000, threshold_dbfs=-40)
    assert recorded[-1][1] - recorded[0][0] == pytest.approx(spoken_seconds, abs=0.5)
    # the message starts after the prompt and the beep: within the first 5 s of the file
    assert_heard_in_order(samples, message, starts_before=5.0)

    # the call between two people: one stereo file, each party alone on its channel
    assert "left channel:  the caller" in text and "right channel: the person called" in text
    url = re.search(r"Bridged recording saved: (https://\S+\.wav)", text).group(1)
    stereo, rate = audio.decode_audio(tmp_path / "data" / "recordings" / url.rsplit("/", 1)[-1])
    assert rate == 8000 and stereo.ndim == 2 and stereo.shape[1] == 2
    left, right = stereo[:, 0], stereo[:, 1]
    caller = await render_tts(CALLER_WORDS)
    person = await render_tts(PERSON_WORDS)

    def score(haystack, needle):
        return audio.max_normalized_xcorr(haystack, needle, max_lag_samples=len(haystack))[0]

    assert_heard_in_order(left, caller, starts_before=len(left) / 8000)
    assert_heard_in_order(right, person, starts_before=len(right) / 8000)
    assert score(left, person) < 0.3 and score(right, caller) < 0.3
