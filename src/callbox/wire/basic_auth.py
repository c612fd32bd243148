"""HTTP Basic authentication (RFC 7617): one parser for the platform and the agents SDK."""

from __future__ import annotations

import base64
import binascii
import hmac

BASIC_SCHEME = "basic"


def parse_basic_auth(header: str) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` -> (user, password); None for anything else."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != BASIC_SCHEME or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def credentials_equal(given: tuple[str, str], expected: tuple[str, str]) -> bool:
    """Constant-time comparison of both fields (both are always compared)."""
    user_ok = hmac.compare_digest(given[0].encode(), expected[0].encode())
    password_ok = hmac.compare_digest(given[1].encode(), expected[1].encode())
    return user_ok & password_ok


def basic_auth_header(user: str, password: str) -> str:
    """The Authorization header value for `user`:`password`."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"
