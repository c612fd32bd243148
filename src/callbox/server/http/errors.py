"""JSON error responses of the HTTP API: ``{"errors": [{"code", "message", "attribute"?}]}``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def json_error(cls: type[web.HTTPException], code: str, message: str, *,
               attribute: str | None = None,
               headers: dict[str, str] | None = None, **init: Any) -> web.HTTPException:
    """A JSON error response to raise; `init` goes to the exception class (413 needs its
    sizes)."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if attribute is not None:
        detail["attribute"] = attribute
    return cls(text=json.dumps({"errors": [detail]}), content_type="application/json",
               headers=headers, **init)
