"""SWML documents and ${var} substitution (the verbs run against real calls in integration)."""

from types import SimpleNamespace

import pytest

from callbox.server.swml.runner import SwmlError, SwmlRunner, parse_document


def runner(**variables):
    call = SimpleNamespace(id="c1", from_user="alice", to_user="prompt", direction="inbound",
                           state="answered")
    return SwmlRunner(call, {"sections": {"main": []}}, variables)  # type: ignore[arg-type]


def test_substitution_in_nested_strings_keeps_lone_variable_types():
    r = runner(record_url="https://x/r.wav", n=3)
    params = {"url": "say:Saved at ${record_url}", "loops": "${n}", "list": ["%{call.from}"]}
    assert r.substitute(params) == {
        "url": "say:Saved at https://x/r.wav", "loops": 3, "list": ["alice"],
    }


def test_unknown_variables_become_empty_strings():
    assert runner().substitute("a${nope}b") == "ab"
    assert runner().substitute("${vars.nope.deeper}") == ""


@pytest.mark.parametrize(("source", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"version": "1.0.0"}', "needs sections.main"),
    ('{"sections": {"main": {}}}', "must be a list of verbs"),
])
def test_bad_documents_are_rejected_with_a_reason(source, message):
    with pytest.raises(SwmlError, match=message):
        parse_document(source)


async def test_unknown_verb_names_its_position_and_the_supported_verbs():
    r = runner()
    expected = r"main\[2\]: unknown SWML verb 'dance'; supported: .*answer"
    with pytest.raises(SwmlError, match=expected):
        await r.execute({"dance": {}}, "main[2]")
    with pytest.raises(SwmlError, match="one key"):
        await r.execute({"answer": {}, "hangup": {}}, "main[0]")
