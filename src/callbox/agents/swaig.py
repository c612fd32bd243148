"""SWAIG: the web side of an agent's tools (request parsing, dispatch, status codes).

The platform POSTs a SWAIG request when the AI calls a tool::

    {"function": "start_recording",
     "argument": {"parsed": [{"reason": "voicemail"}], "raw": "{\\"reason\\": \\"voicemail\\"}"},
     "call_id": "...", "global_data": {...}, ...}

and speaks the reply's `response` and runs its `action` list. This module has no web
framework in it: `parse_request()` turns a body into a `SwaigCall` or a `SwaigError` (status and
JSON), `invoke()` runs a handler, `reply_for()` dispatches a call (sync handlers in a worker
thread, async ones on the loop) and shapes what it returns; `agent.py` wires them to HTTP.
Status codes and reply shapes are those of the official SignalWire package, so the platform
(or SignalWire) sees the same thing from either.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from callbox.agents.function_result import as_reply
from callbox.wire.json_depth import loads_bounded

log = logging.getLogger("callbox.agents.swaig")

FUNCTION_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
JSON_CONTENT_TYPE: Final = "application/json"

ToolHandler = Callable[[dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class SwaigError:
    """A request refused before any handler ran: HTTP `status` with JSON `body`."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class SwaigCall:
    """A well-formed SWAIG request: the function's name, its arguments, the whole body."""

    function: str
    args: dict[str, Any]
    raw_data: dict[str, Any] = field(default_factory=dict)

    @property
    def call_id(self) -> str | None:
        value = self.raw_data.get("call_id")
        return value if isinstance(value, str) else None


def content_type_ok(content_type: str | None) -> bool:
    """A SWAIG POST must be JSON; a request with no Content-Type at all is read as JSON too."""
    if not content_type:
        return True
    return JSON_CONTENT_TYPE in content_type.lower()


UNSUPPORTED_MEDIA_TYPE: Final = SwaigError(415, {"error": "Content-Type must be application/json"})


def extract_arguments(body: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's arguments: `argument.parsed[0]`, else `json.loads(argument.raw)`, else a flat
    `arguments` object; `{}` when none of them is a JSON object."""
    args: Any = {}
    argument = body.get("argument")
    if isinstance(argument, Mapping):
        parsed = argument.get("parsed")
        raw = argument.get("raw")
        if isinstance(parsed, list) and parsed:
            args = parsed[0]
        elif raw:
            try:
                args = loads_bounded(raw)
            except (TypeError, ValueError):
                log.warning("SWAIG argument.raw is not JSON: %.200r", raw)
                args = {}
    elif isinstance(body.get("arguments"), Mapping):
        args = body["arguments"]
    return dict(args) if isinstance(args, Mapping) else {}


def parse_body(raw: bytes) -> Any:
    """The request body as JSON; a body that is not JSON reads as `{}` (then: missing function)."""
    try:
        return loads_bounded(raw) if raw else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def parse_request(body: Any) -> SwaigCall | SwaigError:
    """Validate a SWAIG request body (already JSON-decoded).

    400 `Missing function name` when there is no `function`; 400 `Invalid function name
    format: '<name>'` when it is not an identifier (`^[a-zA-Z_][a-zA-Z0-9_]*$`).
    """
    if not isinstance(body, Mapping):
        return SwaigError(400, {"error": "Request body must be a JSON object"})
    name = body.get("function")
    if not name:
        return SwaigError(400, {"error": "Missing function name"})
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        return SwaigError(400, {"error": f"Invalid function name format: '{name}'"})
    return SwaigCall(function=name, args=extract_arguments(body), raw_data=dict(body))


def not_found_reply(name: str) -> dict[str, Any]:
    """The reply for a function this agent does not have (HTTP 200: the AI says so)."""
    return {"response": f"Function '{name}' not found"}


def handler_error_reply(name: str, error: BaseException) -> dict[str, Any]:
    """The reply when a handler raises (HTTP 200, so the AI can tell the caller)."""
    return {"response": f"Error executing function '{name}': {error}"}


def is_async_handler(handler: Callable[..., Any]) -> bool:
    target = getattr(handler, "__func__", handler)
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async __call__ on an object
    )


def invoke(name: str, handler: ToolHandler, args: dict[str, Any], raw_data: dict[str, Any]) -> Any:
    """Call `handler(args, raw_data)` and return what it returned, an error reply if it raised,
    or, for an async handler, an awaitable that resolves to one of those."""
    try:
        result = handler(args, raw_data)
    except Exception as error:
        log.warning("SWAIG function %s raised: %s", name, error, exc_info=True)
        return handler_error_reply(name, error)
    if inspect.isawaitable(result):
        return _settle(name, result)
    return result


async def _settle(name: str, pending: Any) -> Any:
    try:
        return await pending
    except Exception as error:
        log.warning("SWAIG function %s raised: %s", name, error, exc_info=True)
        return handler_error_reply(name, error)


async def reply_for(
    call: SwaigCall,
    dispatch: Callable[[str, dict[str, Any], dict[str, Any]], Any],
    is_async: bool,
) -> dict[str, Any]:
    """Run `dispatch(name, args, raw_data)` (an agent's `on_function_call`) and shape the reply.

    `dispatch` returns the handler's result (or an awaitable of it): a FunctionResult is
    rendered with `to_dict()`, a dict is sent as is, None becomes `{"response": "Function
    executed successfully"}`, anything else `{"response": str(value)}`. A handler that raises
    gives 200 `{"response": "Error executing function '<name>': <error>"}`; should dispatch
    itself fail, 200 `{"error": "<error>", "function": "<name>"}`.
    """
    try:
        if is_async:
            result = dispatch(call.function, call.args, call.raw_data)
        else:
            result = await asyncio.to_thread(dispatch, call.function, call.args, call.raw_data)
        if inspect.isawaitable(result):
            result = await result
        return as_reply(result)
    except Exception as error:
        log.exception("SWAIG dispatch of %s failed", call.function)
        return {"error": str(error), "function": call.function}
