"""The SWML interpreter: runs a document's `main` section verb by verb on a live call.

Verbs live in `verbs.py` (and later modules) and register themselves with `@verb(name)`; the
runner knows only documents, sections, variables and `${var}` substitution.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from callbox.server.call import Call, CallGone
from callbox.wire.json_depth import loads_bounded

if TYPE_CHECKING:
    from callbox.server.config import AiConfig
    from callbox.server.outbound import OutboundCalls
    from callbox.server.recording.engine import RecordingEngine

log = logging.getLogger(__name__)

VerbHandler = Callable[["SwmlRunner", Any], Awaitable[None]]
VERBS: dict[str, VerbHandler] = {}
VARIABLE = re.compile(r"[$%]\{([A-Za-z_][A-Za-z0-9_.]*)\}")


class SwmlError(ValueError):
    """The document is not valid SWML or a verb's parameters are wrong."""


class StopScript(Exception):
    """Raised by a verb (hangup) to end the script."""


def verb(name: str) -> Callable[[VerbHandler], VerbHandler]:
    def register(handler: VerbHandler) -> VerbHandler:
        VERBS[name] = handler
        return handler

    return register


def parse_document(source: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Parse and check the document's shape; SwmlError says what is wrong."""
    if isinstance(source, dict):
        document = source
    else:
        try:
            document = loads_bounded(source)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SwmlError(f"SWML is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SwmlError("SWML document must be a JSON object")
    sections = document.get("sections")
    if not isinstance(sections, dict) or "main" not in sections:
        raise SwmlError("SWML document needs sections.main")
    for name, section in sections.items():
        if not isinstance(section, list):
            raise SwmlError(f"SWML section {name!r} must be a list of verbs")
    return document


class SwmlRunner:
    def __init__(self, call: Call, document: dict[str, Any],
                 variables: dict[str, Any] | None = None, *,
                 recordings: RecordingEngine | None = None,
                 ai: AiConfig | None = None, outbound: OutboundCalls | None = None) -> None:
        self.call = call
        self.document = document
        self.vars: dict[str, Any] = dict(variables or {})
        self._recordings = recordings
        self.ai = ai  # the `ai` verb's LLM/STT settings; None = no LLM configured
        self.outbound = outbound  # places the `connect` verb's calls; None = no dialling

    def recordings(self) -> RecordingEngine:
        if self._recordings is None:
            raise SwmlError("recording is not available here")
        return self._recordings

    # -- variables ------------------------------------------------------------------------

    def _context(self) -> dict[str, Any]:
        call = {
            "call_id": self.call.id, "from": self.call.from_user, "to": self.call.to_user,
            "direction": self.call.direction, "state": str(self.call.state),
        }
        return {**self.vars, "vars": self.vars, "call": call}

    def lookup(self, path: str) -> Any:
        value: Any = self._context()
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return ""
            value = value[part]
        return value

    def substitute(self, value: Any) -> Any:
        """Replace ${var} (and %{var}) in every string inside `value`."""
        if isinstance(value, str):
            whole = VARIABLE.fullmatch(value)
            if whole:  # keep the type of a lone variable (numbers stay numbers)
                return self.lookup(whole.group(1))
            return VARIABLE.sub(lambda m: str(self.lookup(m.group(1))), value)
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    # -- execution ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run `main`; hang up when the script ends, fails or the call goes away."""
        try:
            await self.run_section("main")
        except StopScript:
            pass
        except CallGone:
            log.info("call %s ended during SWML", self.call.id)
        except SwmlError as exc:
            log.warning("call %s: SWML error: %s; hanging up", self.call.id, exc)
            await self.call.hangup("error")
        finally:
            if self.call.is_active:
                await self.call.hangup()

    async def run_section(self, name: str) -> None:
        section = self.document["sections"].get(name)
        if section is None:
            raise SwmlError(f"SWML section {name!r} does not exist")
        for index, instruction in enumerate(section):
            if not self.call.is_active:
                return
            await self.execute(instruction, f"{name}[{index}]")

    async def execute(self, instruction: Any, where: str = "") -> None:
        if isinstance(instruction, str):  # e.g. "answer" or "hangup" without parameters
            instruction = {instruction: {}}
        if not isinstance(instruction, dict) or len(instruction) != 1:
            raise SwmlError(f"{where}: each verb must be an object with one key, got "
                            f"{json.dumps(instruction)[:80]}")
        (name, params), = instruction.items()
        handler = VERBS.get(name)
        if handler is None:
            known = ", ".join(sorted(VERBS))
            raise SwmlError(f"{where}: unknown SWML verb {name!r}; supported: {known}")
        await handler(self, self.substitute(params))
