"""Record parameters: entry-point defaults, validation, and the calling.call.record payload."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.wire.recording import (
    DEFAULTS,
    DIRECTIONS,
    FORMATS,
    MAX_SECONDS,
    PAUSE_BEHAVIORS,
    RECORD_EVENT,
    TERMINAL_STATES,
    RecordParamError,
    RecordParams,
    record_event_params,
)


def test_constants():
    assert FORMATS == ("wav", "mp3")
    assert DIRECTIONS == ("speak", "listen", "both")
    assert PAUSE_BEHAVIORS == ("silence", "skip")
    assert TERMINAL_STATES == ("finished", "no_input", "error")
    assert RECORD_EVENT == "calling.call.record"


def test_relay_defaults():
    p = RecordParams.parse(None, "relay")
    assert p == RecordParams(
        format="mp3", direction="speak", stereo=False, beep=False, terminators="#*",
        initial_timeout=5.0, end_silence_timeout=1.0, input_sensitivity=44.0,
        max_length=0.0, status_url="",
    )
    assert p.channels == 1


def test_swml_record_defaults():
    p = RecordParams.parse({}, "swml_record")
    assert (p.format, p.direction, p.stereo, p.beep, p.terminators) == (
        "wav", "speak", False, False, "#")
    assert (p.initial_timeout, p.end_silence_timeout, p.input_sensitivity, p.max_length) == (
        4.0, 5.0, 44.0, 0.0)


def test_swml_record_call_defaults():
    p = RecordParams.parse({}, "swml_record_call")
    assert (p.format, p.direction, p.stereo, p.beep, p.terminators) == (
        "wav", "both", False, False, "")
    assert (p.initial_timeout, p.end_silence_timeout, p.max_length) == (0.0, 0.0, 0.0)
    assert p.input_sensitivity == 44.0


def test_defaults_table_has_every_field():
    fields = set(RecordParams.__dataclass_fields__)
    for entry in ("relay", "swml_record", "swml_record_call"):
        assert set(DEFAULTS[entry]) == fields


def test_caller_values_win_and_none_means_default():
    p = RecordParams.parse(
        {"format": "wav", "direction": "both", "stereo": True, "beep": True,
         "terminators": "1", "initial_timeout": 0, "end_silence_timeout": 2.5,
         "input_sensitivity": 60, "max_length": 120, "status_url": "https://example.com/cb",
         "control_id": "vm"},
        "relay",
    )
    assert p == RecordParams(
        format="wav", direction="both", stereo=True, beep=True, terminators="1",
        initial_timeout=0.0, end_silence_timeout=2.5, input_sensitivity=60.0,
        max_length=120.0, status_url="https://example.com/cb",
    )
    assert p.channels == 2
    q = RecordParams.parse({"format": None, "end_silence_timeout": None}, "relay")
    assert (q.format, q.end_silence_timeout) == ("mp3", 1.0)


def test_bool_strings():
    p = RecordParams.parse({"stereo": "true", "beep": "false"}, "swml_record")
    assert p.stereo is True and p.beep is False
    assert RecordParams.parse({"beep": "TRUE"}, "relay").beep is True


def test_terminators_none_and_empty_mean_none():
    assert RecordParams.parse({"terminators": ""}, "relay").terminators == ""
    assert RecordParams.parse({"terminators": None}, "swml_record_call").terminators == ""
    assert RecordParams.parse({"terminators": "#*ab0"}, "relay").terminators == "#*AB0"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"format": "ogg"}, "format", "format must be 'wav' or 'mp3', got 'ogg'"),
        ({"direction": "up"}, "direction",
         "direction must be one of 'speak', 'listen', 'both', got 'up'"),
        ({"input_sensitivity": 150}, "input_sensitivity",
         "input_sensitivity must be a number from 0 to 100, got 150"),
        ({"input_sensitivity": -1}, "input_sensitivity", "from 0 to 100"),
        ({"terminators": "x"}, "terminators",
         "terminators may contain only 0-9 * # A-D, got 'x'"),
        ({"stereo": "yes"}, "stereo", "stereo must be true or false, got 'yes'"),
        ({"beep": 1}, "beep", "beep must be true or false"),
        ({"initial_timeout": -1}, "initial_timeout", "initial_timeout must be a number"),
        ({"end_silence_timeout": "soon"}, "end_silence_timeout", "got 'soon'"),
        ({"max_length": float("inf")}, "max_length", "max_length must be a number"),
        ({"max_length": True}, "max_length", "max_length must be a number"),
        ({"status_url": "ftp://example.com/x"}, "status_url", "status_url must be an http"),
        ({"status_url": "not a url"}, "status_url", "status_url"),
        ({"foo": 1}, "foo", "unknown record parameter 'foo'; known: beep, control_id,"),
    ],
)
def test_validation_errors_name_their_field(data, field, message):
    with pytest.raises(RecordParamError) as info:
        RecordParams.parse(data, "relay")
    assert info.value.field == field
    assert message in str(info.value)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


NUMBER_FIELDS = ("initial_timeout", "end_silence_timeout", "max_length", "input_sensitivity")


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize("value", [1e308, 10**4000 - 1, -(10**4000 - 1), "10", "2.5", [1],
                                   float("nan"), float("-inf"), MAX_SECONDS + 1])
def test_every_number_is_a_finite_json_number_in_range(field, value):
    """1e308 or a 4000-digit number once overflowed deep in the engine (a 500 and a leaked
    recording); a numeric string was taken as a number."""
    with pytest.raises(RecordParamError) as info:
        RecordParams.parse({field: value}, "relay")
    assert info.value.field == field
    assert str(info.value).startswith(f"{field} must be a number")
    assert len(str(info.value)) < 200  # a huge value is not echoed whole


@pytest.mark.parametrize("field", ("initial_timeout", "end_silence_timeout", "max_length"))
def test_seconds_up_to_a_day_are_accepted(field):
    assert getattr(RecordParams.parse({field: MAX_SECONDS}, "relay"), field) == MAX_SECONDS
    assert getattr(RecordParams.parse({field: 10**3}, "relay"), field) == 1000.0


def test_format_is_validated_for_every_entry():
    for entry in ("relay", "swml_record", "swml_record_call"):
        with pytest.raises(RecordParamError, match="format"):
            RecordParams.parse({"format": "WAV "}, entry)


def test_as_run_omits_unset_limits():
    audio = RecordParams.parse({}, "swml_record_call").as_run()
    assert audio == {
        "format": "wav", "direction": "both", "stereo": False, "beep": False,
        "terminators": "", "initial_timeout": 0.0, "end_silence_timeout": 0.0,
        "input_sensitivity": 44.0,
    }
    full = RecordParams.parse({"max_length": 30, "status_url": "http://h/x"}, "relay").as_run()
    assert full["max_length"] == 30.0 and full["status_url"] == "http://h/x"


URL = "https://host:8443/recordings/abc.wav"
IDS = {"call_id": "c1", "node_id": "n1", "control_id": "k1", "recording_id": "abc"}


def test_finished_event_shape():
    params = RecordParams.parse({}, "swml_record")
    event = record_event_params(
        **IDS, state="finished", url=URL, params=params, duration=18.2, size=298284,
        start_time=1.5, end_time=20.0,
    )
    assert event == {
        "call_id": "c1", "node_id": "n1", "control_id": "k1", "recording_id": "abc",
        "state": "finished", "url": URL, "duration": 18.2, "size": 298284,
        "start_time": 1.5, "end_time": 20.0,
        "record": {"audio": params.as_run(), "url": URL, "duration": 18.2, "size": 298284},
    }
    json.dumps(event)  # JSON-ready


def test_recording_event_has_url_but_no_duration_or_size():
    params = RecordParams.parse({}, "relay")
    event = record_event_params(**IDS, state="recording", url=URL, params=params,
                                duration=1.0, size=10, start_time=1.0)
    assert event["url"] == event["record"]["url"] == URL
    assert "duration" not in event and "size" not in event
    assert "duration" not in event["record"] and "size" not in event["record"]
    assert event["start_time"] == 1.0 and "end_time" not in event


def test_paused_event_carries_pause_behavior():
    params = RecordParams.parse({}, "relay")
    event = record_event_params(**IDS, state="paused", url=URL, params=params,
                                pause_behavior="skip")
    assert event["pause_behavior"] == "skip"
    resumed = record_event_params(**IDS, state="recording", url=URL, params=params,
                                  pause_behavior="skip")
    assert "pause_behavior" not in resumed


def test_error_event_carries_reason_and_no_input_has_no_url():
    params = RecordParams.parse({}, "relay")
    error = record_event_params(**IDS, state="error", url=URL, params=params,
                                reason="disk full", duration=0.4, size=100)
    assert error["reason"] == "disk full"
    assert error["duration"] == error["record"]["duration"] == 0.4
    no_input = record_event_params(**IDS, state="no_input", url=URL, params=params,
                                   reason="ignored")
    assert "url" not in no_input and "url" not in no_input["record"]
    assert "reason" not in no_input
    empty = record_event_params(**IDS, state="recording", url="", params=params)
    assert "url" not in empty and "url" not in empty["record"]


def test_event_rejects_unknown_state():
    with pytest.raises(ValueError, match="state"):
        record_event_params(**IDS, state="done", url=URL,
                            params=RecordParams.parse({}, "relay"))


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.text(max_size=6), st.sampled_from(["wav", "mp3", "both", "listen", "true", "#", "3.5"]),
)


@settings(max_examples=150, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from([*DEFAULTS["relay"], "control_id", "bogus"]), _values, max_size=6
    ),
    entry=st.sampled_from(["relay", "swml_record", "swml_record_call"]),
)
def test_parse_either_succeeds_validly_or_raises_a_field_error(data, entry):
    try:
        p = RecordParams.parse(data, entry)
    except RecordParamError as exc:
        assert exc.field in str(exc)
        assert exc.field in data
        return
    assert p.format in FORMATS and p.direction in DIRECTIONS
    assert 0 <= p.input_sensitivity <= 100
    assert min(p.initial_timeout, p.end_silence_timeout, p.max_length) >= 0
    assert max(p.initial_timeout, p.end_silence_timeout, p.max_length) <= MAX_SECONDS
    assert all(d in "0123456789*#ABCD" for d in p.terminators)
    assert RecordParams.parse(p.as_run(), entry) == p  # as-run round-trips
