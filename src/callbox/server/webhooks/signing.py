"""HMAC-SHA256 signatures for status_url webhooks, and how a receiver checks them.

Every webhook POST carries a header::

    X-Callbox-Signature: t=<unix seconds>,v1=<hex digest>

where the digest is::

    hex(HMAC-SHA256(key=<signing key as UTF-8>, msg=b"<t>." + <raw request body>))

- ``t`` is the time the request was sent, as a decimal integer of unix seconds. It is inside the
  MAC, so a captured request cannot be replayed later with a new time: receivers reject a ``t``
  more than a few minutes away from their own clock (``verify`` uses 300 s by default).
- The body is the exact bytes received; do not re-serialise the JSON before checking.
- The signing key is the project's ``signing_key`` (or its API token when none is configured).
- Compare digests in constant time (``hmac.compare_digest``). A header may carry several ``v1=``
  entries (e.g. while a key is being rotated); it is valid when any of them matches.

A receiver in any language does: split the header on ``,``, each part on the first ``=``; take
``t`` and the ``v1`` values; check ``|now - t| <= tolerance``; compute the HMAC above over
``f"{t}.".encode() + body``; compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Callbox-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300.0


def _digest(body: bytes, key: str, timestamp: int) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, key: str, timestamp: int) -> str:
    """The full ``X-Callbox-Signature`` header value for `body` sent at `timestamp`."""
    return f"t={int(timestamp)},{SCHEME}={_digest(body, key, int(timestamp))}"


def verify(body: bytes, key: str, header_value: str, *, now: float | None = None,
           tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when `header_value` is a valid signature of `body` with `key`, made within
    `tolerance` seconds of `now` (default: the current time). An empty key never verifies."""
    if not key or not header_value:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header_value.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif name == SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(body, key, timestamp)
    # Check every candidate (no early exit), each in constant time.
    matches = [hmac.compare_digest(expected.encode(), c.encode()) for c in candidates]
    return any(matches)
