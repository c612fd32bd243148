"""AI agents: `AgentBase` (the agent and its web server) and `FunctionResult` (a tool's reply).

`from callbox.agents import FunctionResult` does not import the web server (aiohttp); the names
are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callbox.agents.agent import AgentBase
    from callbox.agents.function_result import FunctionResult, SwaigFunctionResult

__all__ = ["AgentBase", "FunctionResult", "SwaigFunctionResult"]

_LAZY = {
    "AgentBase": "callbox.agents.agent",
    "FunctionResult": "callbox.agents.function_result",
    "SwaigFunctionResult": "callbox.agents.function_result",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
