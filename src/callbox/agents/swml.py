"""SWML documents as an agent renders them: the document model and the `ai` verb.

Pure data, no I/O: `SwmlDocument` holds sections of verbs and renders them as the JSON a SWML
interpreter executes; `AiVerb` holds what an agent configures (prompt, tools, params, hints...)
and renders the `ai` verb for one request, given the URL its SWAIG functions are called at.

Key order is part of the contract: it is the order in which the official SignalWire package
renders the same document, so that JSON produced here compares equal byte for byte.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SWML_VERSION: Final = "1.0.0"
MAIN: Final = "main"


def swml_document(*verbs: Mapping[str, Any], sections_first: bool = False) -> dict[str, Any]:
    """A one-section SWML document whose `main` runs `verbs` in order.

    `{"version": "1.0.0", "sections": {"main": [verb, ...]}}`; `sections_first` puts `sections`
    before `version` (the order the official package uses for a few actions, e.g. `connect`).
    """
    sections = {MAIN: [dict(verb) for verb in verbs]}
    if sections_first:
        return {"sections": sections, "version": SWML_VERSION}
    return {"version": SWML_VERSION, "sections": sections}


class SwmlDocument:
    """A SWML document built verb by verb: `doc.add_verb("answer", {})`, `doc.to_dict()`."""

    def __init__(self) -> None:
        self._sections: dict[str, list[dict[str, Any]]] = {MAIN: []}

    def add_section(self, name: str) -> SwmlDocument:
        self._sections.setdefault(name, [])
        return self

    def add_verb(self, name: str, config: Any, section: str = MAIN) -> SwmlDocument:
        self._sections.setdefault(section, []).append({name: config})
        return self

    def verbs(self, section: str = MAIN) -> list[dict[str, Any]]:
        return list(self._sections.get(section, []))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SWML_VERSION,
            "sections": {name: list(verbs) for name, verbs in self._sections.items()},
        }


def function_parameters(
    parameters: Mapping[str, Any] | None, required: Iterable[str] | None = None
) -> dict[str, Any]:
    """A tool's JSON-schema `parameters`, as rendered in `SWAIG.functions`.

    A complete object schema (`{"type": "object", "properties": {...}}`) is used as given;
    anything else is taken as the `properties` map and wrapped, with `required` added when given.
    """
    params = dict(parameters or {})
    if params.get("type") == "object" and "properties" in params:
        return copy.deepcopy(params)
    schema: dict[str, Any] = {"type": "object", "properties": copy.deepcopy(params)}
    if required:
        schema["required"] = list(required)
    return schema


@dataclass
class SwaigFunctionSpec:
    """One SWAIG function as the `ai` verb lists it (the handler lives elsewhere).

    `secure` functions get their own `web_hook_url` (the agent's SWAIG endpoint); others use
    `SWAIG.defaults.web_hook_url`. `webhook_url` points a function at an external server.
    `extra` holds any further SWAIG fields (e.g. `meta_data_token`), rendered last.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    secure: bool = True
    fillers: dict[str, list[str]] | None = None
    webhook_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self, swaig_url: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "function": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.parameters),
        }
        if self.fillers:
            entry["fillers"] = copy.deepcopy(self.fillers)
        if self.webhook_url:
            entry["web_hook_url"] = self.webhook_url
        elif self.secure:
            entry["web_hook_url"] = swaig_url
        entry.update(copy.deepcopy(self.extra))
        return entry


@dataclass
class AiVerb:
    """What an agent puts in its `ai` verb, rendered per request by `render()`."""

    prompt_text: str | None = None
    post_prompt_text: str | None = None
    post_prompt_url: str | None = None
    functions: list[SwaigFunctionSpec | dict[str, Any]] = field(default_factory=list)
    native_functions: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    hints: list[Any] = field(default_factory=list)
    languages: list[dict[str, Any]] = field(default_factory=list)
    global_data: dict[str, Any] = field(default_factory=dict)

    def render(self, swaig_url: str, post_prompt_url: str | None = None,
               function_urls: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The `ai` verb's object. `swaig_url` is this agent's SWAIG endpoint (with credentials);
        `post_prompt_url` is where summaries go when a post-prompt is set; `function_urls`
        gives some functions their own endpoint URL (e.g. with a per-call token)."""
        own_urls = function_urls or {}
        ai: dict[str, Any] = {
            "prompt": {"text": self.prompt_text} if self.prompt_text is not None else {"pom": []}
        }
        if self.post_prompt_text is not None:
            ai["post_prompt"] = {"text": self.post_prompt_text}
            url = self.post_prompt_url or post_prompt_url
            if url:
                ai["post_prompt_url"] = url
        swaig: dict[str, Any] = {}
        if self.native_functions:
            swaig["native_functions"] = list(self.native_functions)
        if self.functions:
            swaig["functions"] = [
                copy.deepcopy(f) if isinstance(f, dict)
                else f.render(own_urls.get(f.name, swaig_url))
                for f in self.functions
            ]
            swaig["defaults"] = {"web_hook_url": swaig_url}
        if swaig:
            ai["SWAIG"] = swaig
        ai["params"] = copy.deepcopy(self.params)
        if self.hints:
            ai["hints"] = list(self.hints)
        if self.languages:
            ai["languages"] = copy.deepcopy(self.languages)
        if self.global_data:
            ai["global_data"] = copy.deepcopy(self.global_data)
        return ai


def agent_document(
    ai: Mapping[str, Any],
    *,
    auto_answer: bool = True,
    pre_answer: Iterable[Mapping[str, Any]] = (),
    post_answer: Iterable[Mapping[str, Any]] = (),
    post_ai: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An agent's whole SWML document:
    [pre-answer verbs] answer [post-answer verbs] ai [post-ai verbs]."""
    doc = SwmlDocument()
    for verb in pre_answer:
        for name, config in verb.items():
            doc.add_verb(name, copy.deepcopy(config))
    if auto_answer:
        doc.add_verb("answer", {})
    for verb in post_answer:
        for name, config in verb.items():
            doc.add_verb(name, copy.deepcopy(config))
    doc.add_verb("ai", dict(ai))
    for verb in post_ai:
        for name, config in verb.items():
            doc.add_verb(name, copy.deepcopy(config))
    return doc.to_dict()
