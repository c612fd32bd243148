"""ToolTokens: a token is good for one function on one call, until it expires."""

from __future__ import annotations

from callbox.agents.tool_tokens import ToolTokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_valid_for_its_function_and_call_only() -> None:
    tokens = ToolTokens(secret=b"k" * 32)
    token = tokens.issue("transfer", "call-1")
    assert tokens.valid("transfer", "call-1", token)
    assert not tokens.valid("transfer", "call-2", token)
    assert not tokens.valid("hangup", "call-1", token)
    assert not tokens.valid("transfer", "call-1", None)
    assert not tokens.valid("transfer", None, token)
    assert not tokens.valid("transfer", "call-1", "")
    assert not tokens.valid("transfer", "call-1", "garbage")


def test_another_agents_token_is_refused() -> None:
    token = ToolTokens(secret=b"a" * 32).issue("transfer", "call-1")
    assert not ToolTokens(secret=b"b" * 32).valid("transfer", "call-1", token)


def test_names_cannot_be_shifted_between_call_id_and_function() -> None:
    tokens = ToolTokens(secret=b"k" * 32)
    token = tokens.issue("b", "a\x00")
    assert not tokens.valid("\x00b", "a", token)


def test_a_token_expires() -> None:
    clock = FakeClock()
    tokens = ToolTokens(secret=b"k" * 32, lifetime=60, clock=clock)
    token = tokens.issue("transfer", "call-1")
    clock.now += 60
    assert tokens.valid("transfer", "call-1", token)
    clock.now += 1
    assert not tokens.valid("transfer", "call-1", token)


def test_a_forged_expiry_breaks_the_signature() -> None:
    clock = FakeClock()
    tokens = ToolTokens(secret=b"k" * 32, lifetime=60, clock=clock)
    expiry, nonce, mac = tokens.issue("transfer", "call-1").split(".")
    forged = f"{int(expiry) + 3600}.{nonce}.{mac}"
    clock.now += 120
    assert not tokens.valid("transfer", "call-1", forged)
