"""The webhook signature scheme (as documented in callbox.server.webhooks.signing) and the
retry schedule."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from callbox.server.webhooks import backoff_delay, sign, verify

BODY = b'{"event_type":"calling.call.record","params":{"state":"finished"}}'
KEY = "s3cret-signing-key"
T = 1_789_651_036


def test_header_is_the_documented_scheme() -> None:
    digest = hmac.new(KEY.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, KEY, T) == f"t={T},v1={digest}"


def test_valid_signature_verifies_within_tolerance() -> None:
    header = sign(BODY, KEY, T)
    assert verify(BODY, KEY, header, now=T)
    assert verify(BODY, KEY, header, now=T + 299)
    assert verify(BODY, KEY, header, now=T - 299)  # receiver's clock slightly behind


def test_wrong_key_fails() -> None:
    assert not verify(BODY, KEY + "x", sign(BODY, KEY, T), now=T)


def test_tampered_body_fails() -> None:
    header = sign(BODY, KEY, T)
    assert not verify(BODY.replace(b"finished", b"no_input"), KEY, header, now=T)
    assert not verify(BODY + b" ", KEY, header, now=T)


def test_old_or_future_timestamp_fails() -> None:
    header = sign(BODY, KEY, T)
    assert not verify(BODY, KEY, header, now=T + 301)
    assert not verify(BODY, KEY, header, now=T - 301)
    assert verify(BODY, KEY, header, now=T + 1000, tolerance=1000)


def test_replayed_digest_with_a_new_timestamp_fails() -> None:
    digest = sign(BODY, KEY, T).split("v1=")[1]
    assert not verify(BODY, KEY, f"t={T + 100},v1={digest}", now=T + 100)


def test_any_of_several_v1_values_may_match() -> None:
    good = sign(BODY, KEY, T).split("v1=")[1]
    assert verify(BODY, KEY, f"t={T},v1={'0' * 64},v1={good}", now=T)
    assert verify(BODY, KEY, f" t={T} , v1={good} ", now=T)


@pytest.mark.parametrize("header", [
    "", "garbage", f"v1={'0' * 64}", f"t={T}", f"t=abc,v1={'0' * 64}", f"t=-{T},v1=00",
    f"t=\uff11\uff12,v1={'0' * 64}", f"t={T},t={T},v1={'0' * 64}", f"t={T},v1", f"t={T},v2=00",
])
def test_malformed_headers_fail(header: str) -> None:
    assert not verify(BODY, KEY, header, now=T)


def test_empty_key_never_verifies() -> None:
    assert not verify(BODY, "", sign(BODY, "", T), now=T)


def test_backoff_doubles_caps_and_jitters_down_only() -> None:
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for retry, base in enumerate(bases, start=1):
        assert backoff_delay(retry, 1.0, 60.0, rng=lambda: 0.0) == base
        assert backoff_delay(retry, 1.0, 60.0, rng=lambda: 1.0) == pytest.approx(base * 0.9)
    assert backoff_delay(10_000, 1.0, 60.0, rng=lambda: 0.0) == 60.0  # no overflow


def test_default_schedule_retries_at_least_5_times_over_at_least_a_minute() -> None:
    # Worst case for "spread over a minute": every delay shortened by the full jitter.
    elapsed, retries = 0.0, 0
    while elapsed < 60.0:
        retries += 1
        elapsed += backoff_delay(retries, 1.0, 60.0, rng=lambda: 1.0)
    assert retries >= 5
    # ... and 5 retries happen promptly (within ~a minute) at the other extreme.
    first_five = sum(backoff_delay(n, 1.0, 60.0, rng=lambda: 0.0) for n in range(1, 6))
    assert first_five <= 60.0
