"""callbox: a self-hosted voice platform and SDK compatible with SignalWire's APIs."""

from __future__ import annotations

TYPE_CHECKING = False  # the typing module is not imported: `import callbox` stays cheap
if TYPE_CHECKING:
    from callbox.agents import AgentBase, FunctionResult

__version__ = "0.1.0"

# `from callbox import AgentBase, FunctionResult` works; `import callbox` alone stays cheap
# (the agents package, and aiohttp behind it, load on first use).
_LAZY_EXPORTS = {"AgentBase": "callbox.agents", "FunctionResult": "callbox.agents"}


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["AgentBase", "FunctionResult", "__version__"]
