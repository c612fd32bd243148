"""Untrusted JSON (SWML documents, SWAIG and model replies, REST bodies) is read with a bound on
its nesting: too deep is invalid JSON, never a RecursionError."""

from __future__ import annotations

import json

import pytest

from callbox.server.swml.runner import SwmlError, parse_document
from callbox.wire.json_depth import loads_bounded


@pytest.mark.parametrize("data", ["[" * 100_000, '{"a":' * 100_000, b"[" * 100_000])
def test_untrusted_json_nested_too_deep_is_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        loads_bounded(data)


def test_swml_nested_too_deep_is_a_swml_error() -> None:
    with pytest.raises(SwmlError, match="nested deeper"):
        parse_document('{"version": "1.0.0", "sections": {"main": ' + "[" * 100_000 + "}}")


def test_bounded_json_reads_what_json_reads() -> None:
    text = '{"a": [1, {"b": "[[[["}], "c": "\\u00e9"}'
    assert loads_bounded(text) == json.loads(text)
    assert loads_bounded(text.encode("utf-16")) == json.loads(text)
