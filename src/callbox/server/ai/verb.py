"""The SWML `ai` verb: an AI agent's conversation on the call.

    {"ai": {"prompt": {"text": "You are a helpful assistant."},
            "SWAIG": {"functions": [{"function": "start_recording", "description": "...",
                                     "parameters": {...}, "web_hook_url": "https://..."}],
                      "defaults": {"web_hook_url": "https://..."}},
            "global_data": {...}, "params": {...}}}

The model is the one configured in `[ai]`; without one, the caller hears an explanation, a
warning is logged and the script goes on. The verb returns when the conversation ends.
"""

from __future__ import annotations

from typing import Any

from callbox.server.ai.conversation import Conversation
from callbox.server.swml.runner import SwmlError, SwmlRunner, verb


@verb("ai")
async def ai(runner: SwmlRunner, params: Any) -> None:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise SwmlError(f"ai takes an object, got {params!r}")
    await Conversation(runner, params, runner.ai).run()
