"""Per-call SWAIG function tokens: a secure function runs only for the call it was offered to.

When the agent renders its SWML for a call, each secure function's `web_hook_url` (and the
`post_prompt_url`) carries `?__token=TOKEN`. The token is an HMAC, under a secret made for this
agent process, of the call id, the function name and an expiry; a request is accepted only with
the token minted for its own call and function (same query parameter as the official package, a
token format of our own). Nothing is stored per call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Final

TOKEN_PARAM: Final = "__token"
POST_PROMPT: Final = "post_prompt"  # the "function" name the post-prompt token is minted for
DEFAULT_LIFETIME_SECONDS: Final = 4 * 3600.0  # longer than any call we expect


class ToolTokens:
    def __init__(self, *, secret: bytes | None = None,
                 lifetime: float = DEFAULT_LIFETIME_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._lifetime = lifetime
        self._clock = clock

    def issue(self, function: str, call_id: str) -> str:
        """A token for `function` on `call_id`: ``EXPIRY.NONCE.MAC`` (URL-safe as it is)."""
        expiry = int(self._clock() + self._lifetime)
        nonce = secrets.token_hex(8)
        return f"{expiry}.{nonce}.{self._mac(function, call_id, expiry, nonce)}"

    def valid(self, function: str, call_id: str | None, token: str | None) -> bool:
        """True only for a token issued for this very function and call, not yet expired."""
        if not token or not call_id:
            return False
        expiry_text, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expiry_text.isdigit() or not nonce or not mac or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        expected = self._mac(function, call_id, expiry, nonce)
        return hmac.compare_digest(mac.encode(), expected.encode()) and self._clock() <= expiry

    def _mac(self, function: str, call_id: str, expiry: int, nonce: str) -> str:
        message = json.dumps([call_id, function, expiry, nonce]).encode()  # unambiguous
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
