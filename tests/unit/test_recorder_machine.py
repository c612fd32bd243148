"""The recorder state machine: timers in exact frames, trimming, pause, mixing, terminators."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.server.media.frames import FRAME_SAMPLES
from callbox.server.recording.detector import FULL_SCALE
from callbox.server.recording.machine import (
    HANGOVER_FRAMES,
    RecorderMachine,
    RecState,
    seconds_to_frames,
)
from callbox.wire.recording import RecordParams

RATE = 8000
FPS = 50
SPEECH_DB = -20.0
HUM_DB = -50.0


def tone(dbfs: float, seconds: float, freq: float = 400.0) -> np.ndarray:
    n = round(seconds * FPS) * FRAME_SAMPLES
    amplitude = FULL_SCALE * 10 ** (dbfs / 20) * np.sqrt(2)
    t = np.arange(n) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * FPS) * FRAME_SAMPLES, dtype=np.int16)


def numbered(seconds: float, dbfs: float = SPEECH_DB) -> np.ndarray:
    """A tone whose frames differ (a slow ramp added) so reordering or loss shows."""
    sig = tone(dbfs, seconds).astype(np.int32) + np.arange(round(seconds * FPS) * 160) % 97
    return sig.astype(np.int16)


def params(entry: str = "swml_record_call", **kw: object) -> RecordParams:
    return RecordParams.parse(kw, entry)  # type: ignore[arg-type]


class Run:
    """Feed whole signals frame by frame, reusing the input buffers like the media tick does."""

    def __init__(self, p: RecordParams) -> None:
        self.m = RecorderMachine(p)
        self.out: list[np.ndarray] = []
        self.fed = 0
        self.ended_at: int | None = None  # 1-based frame index at which a terminal state came
        self._speak = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._listen = np.zeros(FRAME_SAMPLES, dtype=np.int16)

    def feed(self, speak: np.ndarray, listen: np.ndarray | None = None) -> Run:
        if listen is None:
            listen = np.zeros_like(speak)
        for i in range(0, len(speak), FRAME_SAMPLES):
            self._speak[:] = speak[i : i + FRAME_SAMPLES]
            self._listen[:] = listen[i : i + FRAME_SAMPLES]
            self.fed += 1
            self.out.extend(self.m.feed(self._speak, self._listen))
            if self.m.done and self.ended_at is None:
                self.ended_at = self.fed
        return self

    def do(self, frames: list[np.ndarray]) -> Run:
        self.out.extend(frames)
        return self

    @property
    def audio(self) -> np.ndarray:
        if not self.out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.out)

    @property
    def seconds(self) -> float:
        return len(self.out) / FPS


# -- states and transitions ------------------------------------------------------------------


def test_starts_recording_and_reports_it_once():
    m = RecorderMachine(params())
    assert m.state is RecState.RECORDING and not m.done
    assert m.pop_transitions() == [RecState.RECORDING]
    assert m.pop_transitions() == []
    assert [s.value for s in RecState] == ["recording", "paused", "finished", "no_input", "error"]


def test_initial_timeout_no_input_at_exactly_frame_200():
    r = Run(params("swml_record")).feed(silence(10))
    assert r.ended_at == 200
    assert r.m.state is RecState.NO_INPUT
    assert r.m.pop_transitions() == [RecState.RECORDING, RecState.NO_INPUT]
    assert r.m.frames_out == 200
    assert r.m.feed(r._speak, r._listen) == []  # done: no more frames


def test_hum_below_sensitivity_is_no_input_but_heard_at_60():
    r = Run(params("swml_record")).feed(tone(HUM_DB, 6))
    assert r.m.state is RecState.NO_INPUT and r.ended_at == 200
    r60 = Run(params("swml_record", input_sensitivity=60)).feed(tone(HUM_DB, 6))
    assert r60.m.speech_started
    assert r60.m.state is RecState.RECORDING


def test_speech_on_the_last_waiting_frame_beats_the_initial_timeout():
    r = Run(params("swml_record")).feed(silence(3.94)).feed(tone(SPEECH_DB, 0.06))
    assert r.fed == 200 and r.m.speech_started
    assert r.m.state is RecState.RECORDING


def test_two_frames_of_tone_do_not_start_speech():
    r = Run(params("swml_record")).feed(silence(1)).feed(tone(SPEECH_DB, 0.04))
    r.feed(silence(1)).feed(tone(SPEECH_DB, 0.04)).feed(silence(1.92))
    assert not r.m.speech_started
    assert r.m.state is RecState.NO_INPUT and r.ended_at == 200


def test_end_silence_finishes_and_trims():
    r = Run(params("swml_record")).feed(tone(SPEECH_DB, 3)).feed(silence(10))
    assert r.m.state is RecState.FINISHED
    assert r.ended_at == 150 + 250  # 5 s of silence after 3 s of tone
    assert 3.0 <= r.seconds <= 3.5
    assert r.m.duration == pytest.approx(r.seconds)
    assert r.m.frames_out == len(r.out)
    # the kept part is the tone, sample-exact, then at most 0.5 s of silence
    assert np.array_equal(r.audio[: 150 * 160], tone(SPEECH_DB, 3))
    assert not r.audio[150 * 160 :].any()
    assert len(r.out) - 150 == HANGOVER_FRAMES <= 25


def test_trim_after_speech_that_follows_a_leading_silence():
    r = Run(params("relay")).feed(silence(2)).feed(tone(SPEECH_DB, 1)).feed(silence(3))
    assert r.m.state is RecState.FINISHED
    assert r.ended_at == 100 + 50 + 50  # relay: end_silence_timeout 1 s
    last_speech = 150
    assert last_speech <= len(r.out) <= last_speech + 25


def test_short_gaps_inside_speech_are_kept_sample_exact():
    a, b, c = numbered(1), numbered(0.5), numbered(1.2)
    signal = np.concatenate([a, silence(4.9), b, silence(0.3), c])
    r = Run(params("swml_record")).feed(signal)
    assert r.m.state is RecState.RECORDING
    assert r.m.held_frames == 0  # ended on speech: nothing held back
    assert np.array_equal(r.audio, signal)


def test_stop_during_held_silence_releases_everything():
    signal = np.concatenate([numbered(1), silence(3)])
    r = Run(params("swml_record")).feed(signal)
    assert r.m.held_frames == 150 - HANGOVER_FRAMES
    assert len(r.out) == 50 + HANGOVER_FRAMES
    r.do(r.m.stop())
    assert r.m.state is RecState.FINISHED
    assert np.array_equal(r.audio, signal)
    assert r.m.frames_out == 200
    assert r.m.stop() == []
    assert r.m.pop_transitions() == [RecState.RECORDING, RecState.FINISHED]


def test_held_frames_stay_bounded():
    r = Run(params("swml_record", end_silence_timeout=3))
    r.feed(tone(SPEECH_DB, 1))
    most = 0
    for _ in range(149):
        r.feed(silence(0.02))
        most = max(most, r.m.held_frames)
    assert most <= 150
    assert r.m.state is RecState.RECORDING
    r.feed(silence(0.02))
    assert r.m.state is RecState.FINISHED and r.m.held_frames == 0


# -- terminators -------------------------------------------------------------------------------


def test_terminator_stops_and_other_digits_do_not():
    r = Run(params("swml_record", terminators="#")).feed(tone(SPEECH_DB, 1))
    assert r.m.digit("1") == []
    assert r.m.state is RecState.RECORDING
    assert r.m.digit("") == []
    r.do(r.m.digit("#"))
    assert r.m.state is RecState.FINISHED
    assert r.m.frames_out == 50
    assert r.m.pop_transitions() == [RecState.RECORDING, RecState.FINISHED]
    assert r.m.digit("#") == []  # done: ignored


def test_no_terminators_means_digits_are_ignored():
    m = RecorderMachine(params("swml_record_call"))
    for d in "0123456789*#ABCD":
        assert m.digit(d) == []
    assert m.state is RecState.RECORDING


def test_terminator_during_held_silence_releases_it():
    signal = np.concatenate([numbered(1), silence(2)])
    r = Run(params("swml_record")).feed(signal)
    r.do(r.m.digit("#"))
    assert np.array_equal(r.audio, signal)


# -- max_length --------------------------------------------------------------------------------


def test_max_length_is_exact():
    r = Run(params(max_length=2.0)).feed(tone(SPEECH_DB, 5))
    assert r.m.state is RecState.FINISHED
    assert r.ended_at == 100
    assert len(r.out) == 100 and r.m.frames_out == 100
    assert r.m.duration == pytest.approx(2.0)


def test_max_length_counts_held_silence_and_releases_it():
    r = Run(params("swml_record", max_length=2.0)).feed(numbered(1)).feed(silence(3))
    assert r.m.state is RecState.FINISHED and r.ended_at == 100
    assert len(r.out) == 100
    assert np.array_equal(r.audio, np.concatenate([numbered(1), silence(1)]))


def test_max_length_counts_paused_silence_but_not_skip():
    r = Run(params(max_length=2.0)).feed(tone(SPEECH_DB, 1))
    r.m.pause("silence")
    r.feed(tone(SPEECH_DB, 3))
    assert r.m.state is RecState.FINISHED and r.ended_at == 100
    assert len(r.out) == 100
    s = Run(params(max_length=2.0)).feed(tone(SPEECH_DB, 1))
    s.m.pause("skip")
    s.feed(tone(SPEECH_DB, 3))
    assert s.m.state is RecState.PAUSED and len(s.out) == 50
    s.m.resume()
    s.feed(tone(SPEECH_DB, 3))
    assert s.m.state is RecState.FINISHED and len(s.out) == 100


# -- pause / resume ----------------------------------------------------------------------------


def test_pause_silence_keeps_the_timeline_with_zeros():
    a, b = numbered(1), numbered(1)
    r = Run(params()).feed(a)
    r.m.pause()
    assert r.m.state is RecState.PAUSED and r.m.pause_behavior == "silence"
    r.feed(tone(SPEECH_DB, 0.5))  # not recorded: zeros instead
    r.m.resume()
    r.feed(b)
    assert np.array_equal(r.audio, np.concatenate([a, silence(0.5), b]))
    assert r.m.duration == pytest.approx(2.5)
    assert r.m.pop_transitions() == [RecState.RECORDING, RecState.PAUSED, RecState.RECORDING]


def test_pause_skip_leaves_the_gap_out():
    a, b = numbered(1), numbered(1)
    r = Run(params()).feed(a)
    r.m.pause("skip")
    r.feed(tone(SPEECH_DB, 0.5))
    r.m.resume()
    r.feed(b)
    assert np.array_equal(r.audio, np.concatenate([a, b]))
    assert r.m.duration == pytest.approx(2.0)
    assert r.m.pause_behavior == "skip"


def test_pause_and_resume_are_idempotent_and_validated():
    m = RecorderMachine(params())
    m.pop_transitions()
    m.resume()
    assert m.pop_transitions() == []
    m.pause("skip")
    m.pause("silence")  # already paused: no-op, behaviour unchanged
    assert m.pop_transitions() == [RecState.PAUSED]
    assert m.pause_behavior == "skip"
    with pytest.raises(ValueError, match="'silence' or 'skip'"):
        m.pause("mute")
    m.resume()
    m.resume()
    assert m.pop_transitions() == [RecState.RECORDING]


def test_timers_are_frozen_while_paused():
    r = Run(params("swml_record")).feed(silence(3))  # initial_timeout 4 s
    r.m.pause("skip")
    r.feed(silence(10))
    assert r.m.state is RecState.PAUSED
    r.m.resume()
    r.feed(silence(0.98))
    assert r.m.state is RecState.RECORDING
    r.feed(silence(0.02))
    assert r.m.state is RecState.NO_INPUT


def test_end_silence_timer_frozen_while_paused():
    r = Run(params("swml_record")).feed(tone(SPEECH_DB, 1)).feed(silence(4))
    r.m.pause("silence")
    r.feed(silence(10))
    r.m.resume()
    r.feed(silence(0.98))
    assert r.m.state is RecState.RECORDING
    r.feed(silence(0.02))
    assert r.m.state is RecState.FINISHED


def test_pause_silence_releases_held_frames_in_order():
    a, hum = numbered(1), numbered(2, dbfs=HUM_DB)  # hum: non-speech but not zeros
    r = Run(params("swml_record")).feed(a).feed(hum)
    assert r.m.held_frames > 0
    r.m.pause("silence")
    r.feed(tone(SPEECH_DB, 0.2))
    r.do(r.m.stop())
    assert np.array_equal(r.audio, np.concatenate([a, hum, silence(0.2)]))


def test_stop_while_paused_skip_releases_held():
    a = numbered(1)
    r = Run(params("swml_record")).feed(a).feed(silence(2))
    r.m.pause("skip")
    r.feed(tone(SPEECH_DB, 1))
    r.do(r.m.stop())
    assert np.array_equal(r.audio, np.concatenate([a, silence(2)]))


# -- stop / fail / commands after the end --------------------------------------------------------


def test_fail_is_terminal_with_a_reason():
    m = RecorderMachine(params())
    m.pop_transitions()
    assert m.reason is None
    assert m.fail("disk full") == []
    assert m.state is RecState.ERROR and m.done and m.reason == "disk full"
    m.pause()
    m.resume()
    assert m.stop() == [] and m.fail("again") == [] and m.digit("#") == []
    assert m.pop_transitions() == [RecState.ERROR]
    assert m.reason == "disk full"


# -- channels and mixing -------------------------------------------------------------------------


def test_stereo_left_speak_right_listen():
    speak, listen = numbered(0.2), numbered(0.2, dbfs=-30.0)
    r = Run(params(stereo=True)).feed(speak, listen)
    assert all(f.shape == (160, 2) and f.dtype == np.int16 for f in r.out)
    assert np.array_equal(r.audio[:, 0], speak)
    assert np.array_equal(r.audio[:, 1], listen)


@pytest.mark.parametrize(("direction", "side"), [("speak", 0), ("listen", 1)])
def test_stereo_single_direction_silences_the_other_channel(direction, side):
    speak, listen = numbered(0.2), numbered(0.2, dbfs=-30.0)
    r = Run(params(stereo=True, direction=direction)).feed(speak, listen)
    assert np.array_equal(r.audio[:, side], speak if side == 0 else listen)
    assert not r.audio[:, 1 - side].any()


def test_mono_directions():
    speak, listen = numbered(0.2), numbered(0.2, dbfs=-30.0)
    for direction, expected in (("speak", speak), ("listen", listen)):
        r = Run(params(direction=direction)).feed(speak, listen)
        assert all(f.shape == (160,) and f.dtype == np.int16 for f in r.out)
        assert np.array_equal(r.audio, expected)
    r = Run(params(direction="both")).feed(speak, listen)
    assert np.array_equal(r.audio, (speak.astype(np.int32) + listen).astype(np.int16))


def test_mono_both_saturates():
    hi = np.full(160, 32767, dtype=np.int16)
    lo = np.full(160, -32768, dtype=np.int16)
    m = RecorderMachine(params(direction="both"))
    assert np.all(m.feed(hi, hi)[0] == 32767)
    assert np.all(m.feed(lo, lo)[0] == -32768)
    assert np.all(m.feed(hi, lo)[0] == -1)


def test_returned_frames_are_not_the_callers_buffers():
    speak = np.full(160, 1000, dtype=np.int16)
    m = RecorderMachine(params(direction="speak"))
    (frame,) = m.feed(speak, speak)
    speak[:] = 0
    assert np.all(frame == 1000)


def test_detection_follows_the_recorded_side():
    # direction listen: speech on listen starts it, speech on speak alone does not
    quiet, loud = silence(1), tone(SPEECH_DB, 1)
    r = Run(params("swml_record", direction="listen")).feed(quiet, loud)
    assert r.m.speech_started
    r = Run(params("swml_record", direction="listen")).feed(loud, quiet)
    assert not r.m.speech_started
    r = Run(params("swml_record", direction="both")).feed(loud, quiet)
    assert r.m.speech_started
    r = Run(params("swml_record", direction="both")).feed(quiet, loud)
    assert not r.m.speech_started  # detection runs on the speak side


# -- invariants under random command sequences -----------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("speech"), st.integers(1, 60)),
        st.tuples(st.just("silence"), st.integers(1, 120)),
        st.tuples(st.just("pause"), st.sampled_from(["silence", "skip"])),
        st.tuples(st.just("resume"), st.none()),
        st.tuples(st.just("digit"), st.sampled_from(["1", "#", "*"])),
        st.tuples(st.just("stop"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=80, deadline=None)
@given(
    ops=_ops,
    entry=st.sampled_from(["relay", "swml_record", "swml_record_call"]),
    max_length=st.sampled_from([0, 1.5, 4]),
    end_silence=st.sampled_from([None, 0, 0.1, 1.5]),
)
def test_random_sequences_keep_the_invariants(ops, entry, max_length, end_silence):
    p = params(entry, max_length=max_length, end_silence_timeout=end_silence)
    r = Run(p)
    expected: list[np.ndarray] = []  # what the file holds if nothing is trimmed
    valid_next = {
        RecState.RECORDING: {RecState.PAUSED, RecState.FINISHED, RecState.NO_INPUT},
        RecState.PAUSED: {RecState.RECORDING, RecState.FINISHED, RecState.ERROR},
    }
    for op, arg in ops:
        before = r.m.state
        if op in ("speech", "silence"):
            sig = numbered(arg / FPS) if op == "speech" else silence(arg / FPS)
            for i in range(arg):
                frame = sig[i * 160 : (i + 1) * 160]
                if r.m.state is RecState.RECORDING:
                    expected.append(frame)
                elif r.m.state is RecState.PAUSED and r.m.pause_behavior == "silence":
                    expected.append(np.zeros(160, dtype=np.int16))
                r.feed(frame)
        elif op == "pause":
            r.m.pause(arg)
        elif op == "resume":
            r.m.resume()
        elif op == "digit":
            r.do(r.m.digit(arg))
        else:
            r.do(r.m.stop())
        assert r.m.frames_out == len(r.out)
        if before is not r.m.state and before in valid_next:
            assert r.m.state in valid_next[before]
    transitions = r.m.pop_transitions()
    assert transitions[0] is RecState.RECORDING
    terminal = (RecState.FINISHED, RecState.NO_INPUT, RecState.ERROR)
    assert sum(s in terminal for s in transitions) <= 1
    if p.max_length:
        assert len(r.out) <= seconds_to_frames(p.max_length)
    if not r.m.done:
        r.do(r.m.stop())
    got = r.audio
    want = np.concatenate(expected) if expected else np.zeros(0, dtype=np.int16)
    # the file is always a prefix of what was fed (trimming only cuts the end)
    assert np.array_equal(got, want[: len(got)])
    if len(got) < len(want):
        # only the end-silence stop cuts, and what it cuts is silence
        assert r.m.state is RecState.FINISHED and p.end_silence_timeout > 0
        assert not want[len(got) :].any()


# -- blocks of frames (the engine stages a few ticks) ----------------------------------------

# an op: ("audio", frames, content per frame), or a command between blocks
AUDIO_OP = st.tuples(st.just("audio"), st.lists(st.sampled_from(["speech", "quiet", "zero"]),
                                                min_size=1, max_size=40))
COMMAND_OP = st.sampled_from([("pause", "silence"), ("pause", "skip"), ("resume",),
                              ("digit", "#"), ("digit", "1")])
BLOCK_PARAMS = st.fixed_dictionaries({
    "format": st.just("wav"),
    "stereo": st.booleans(),
    "direction": st.sampled_from(["speak", "listen", "both"]),
    "initial_timeout": st.sampled_from([0, 0.1, 0.5]),
    "end_silence_timeout": st.sampled_from([0, 0.3, 0.6]),
    "max_length": st.sampled_from([0, 0.5, 1.3]),
    "terminators": st.just("#"),
})


def render(kinds: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Speak and listen audio for frames of the given kinds (distinct samples per frame)."""
    rng = np.random.default_rng(seed)
    level = {"speech": 8000, "quiet": 40, "zero": 0}
    speak = np.concatenate([rng.integers(-level[k] - 1, level[k] + 1, FRAME_SAMPLES)
                            for k in kinds]).astype(np.int16)
    return speak, (speak[::-1] // 2).astype(np.int16)


def play(m: RecorderMachine, ops: list, block_sizes: list[int], seed: int) -> tuple:
    """Run ops through `m`, feeding audio in the given block sizes (cycled)."""
    out: list[np.ndarray] = []
    states: list[RecState] = []
    sizes = iter(block_sizes * 1000)
    for number, op in enumerate(ops):
        if op[0] == "audio":
            speak, listen = render(op[1], seed + number)
            at = 0
            while at < len(op[1]):
                size = next(sizes)
                piece = slice(at * FRAME_SAMPLES, (at + size) * FRAME_SAMPLES)
                out += m.feed(speak[piece].copy(), listen[piece].copy())
                at += size
        elif op[0] == "pause":
            m.pause(op[1])
        elif op[0] == "resume":
            m.resume()
        else:
            out += m.digit(op[1])
        states += m.pop_transitions()
    out += m.stop()
    states += m.pop_transitions()
    audio = np.concatenate(out) if out else np.zeros(0, np.int16)
    return audio, states, m.frames_out


@settings(max_examples=150, deadline=None)
@given(BLOCK_PARAMS, st.lists(st.one_of(AUDIO_OP, COMMAND_OP), max_size=8),
       st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(0, 1000))
def test_feeding_blocks_equals_feeding_frames(raw, ops, block_sizes, seed):
    p = RecordParams.parse(raw, "swml_record")
    by_frame = play(RecorderMachine(p), ops, [1], seed)
    by_block = play(RecorderMachine(p), ops, block_sizes, seed)
    assert np.array_equal(by_block[0], by_frame[0])
    assert by_block[1] == by_frame[1]
    assert by_block[2] == by_frame[2] == len(by_frame[0]) // FRAME_SAMPLES
