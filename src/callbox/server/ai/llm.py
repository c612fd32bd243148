"""An OpenAI-compatible chat-completions client (aiohttp), with SWAIG functions as tools.

    POST {base_url}/chat/completions
    {"model": ..., "messages": [...], "tools": [{"type": "function", "function": {...}}]}

The reply's first choice is returned as an `AssistantTurn`: its text and its tool calls. Every
failure (refused connection, timeout, HTTP error, a body that is not a completion) raises
`LlmError` with a message that names the endpoint and what went wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from callbox.wire.json_depth import loads_bounded

log = logging.getLogger(__name__)

LLM_TIMEOUT_SECONDS: Final = 60.0
LLM_CONNECT_TIMEOUT_SECONDS: Final = 10.0
MAX_REPLY_BYTES: Final = 4 * 1024 * 1024
EMPTY_PARAMETERS: Final = {"type": "object", "properties": {}}


class LlmError(RuntimeError):
    """The model could not be asked, or its answer was not a chat completion."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass
class AssistantTurn:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    message: dict[str, Any] = field(default_factory=dict)  # for the history, as received


def completions_url(base_url: str) -> str:
    """"https://api.example/v1" -> ".../v1/chat/completions" (a full URL is kept)."""
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def tool_definition(name: str, description: str, parameters: Any) -> dict[str, Any]:
    """One SWAIG function as an OpenAI tool."""
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        parameters = EMPTY_PARAMETERS
    return {"type": "function", "function": {
        "name": name, "description": description or name, "parameters": dict(parameters),
    }}


def parse_completion(body: Any) -> AssistantTurn:
    """The first choice of a chat-completions reply; LlmError if it is not one."""
    if not isinstance(body, Mapping):
        raise LlmError("reply is not a JSON object")
    if isinstance(body.get("error"), Mapping):
        raise LlmError(f"model error: {body['error'].get('message') or body['error']}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise LlmError("reply has no choices")
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        raise LlmError("reply's first choice has no message")
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    calls: list[ToolCall] = []
    for index, raw in enumerate(message.get("tool_calls") or []):
        function = raw.get("function") if isinstance(raw, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise LlmError(f"tool_calls[{index}] has no function name")
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # some servers send an object, not JSON text
            arguments = json.dumps(arguments)
        call_id = raw.get("id") if isinstance(raw.get("id"), str) else f"call_{index}"
        calls.append(ToolCall(call_id, function["name"], arguments or "{}"))
    history: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        history["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    return AssistantTurn(text, calls, history)


class LlmClient:
    """Chat completions against one endpoint and model."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str,
                 api_key: str = "", *, timeout: float = LLM_TIMEOUT_SECONDS) -> None:
        self.session = session
        self.url = completions_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    async def complete(self, messages: list[dict[str, Any]],
                       tools: Iterable[dict[str, Any]] = ()) -> AssistantTurn:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        tool_list = list(tools)
        if tool_list:
            body["tools"] = tool_list
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        timeout = aiohttp.ClientTimeout(total=self.timeout, connect=LLM_CONNECT_TIMEOUT_SECONDS)
        try:
            async with self.session.post(self.url, json=body, headers=headers, timeout=timeout,
                                         allow_redirects=False) as response:
                raw = await response.content.read(MAX_REPLY_BYTES + 1)
                status = response.status
        except TimeoutError:
            raise LlmError(f"{self.url} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise LlmError(f"cannot reach {self.url}: {exc}") from None
        if status != 200:
            detail = raw[:300].decode("utf-8", "replace").strip()
            raise LlmError(f"{self.url} answered HTTP {status}: {detail or 'no body'}")
        if len(raw) > MAX_REPLY_BYTES:
            raise LlmError(f"{self.url} answered more than {MAX_REPLY_BYTES} bytes")
        try:
            parsed = loads_bounded(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LlmError(f"{self.url} answered something that is not JSON: {exc}") from None
        try:
            return parse_completion(parsed)
        except LlmError as exc:
            raise LlmError(f"{self.url}: {exc}") from None
