"""Secure SWAIG functions and the post-prompt need the per-call token their SWML URL carries.

An agent served over real HTTP (aiohttp client): a secure function (the default) runs only when
the request carries the `__token` minted for that function and that call; a missing, wrong or
other call's token is refused with 403 and the handler never runs. Non-secure functions need no
token. The post-prompt URL works the same way.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import pytest

from callbox import AgentBase, FunctionResult

AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


@dataclass
class Served:
    agent: AgentBase
    base: str
    session: aiohttp.ClientSession
    ran: list[str]
    summaries: list[Any]

    async def urls(self, call_id: str) -> dict[str, str]:
        """The function and post-prompt URLs of the SWML rendered for `call_id`."""
        async with self.session.post(self.base + "/agent", json={"call": {"call_id": call_id}},
                                     headers=AUTH) as response:
            assert response.status == 200
            ai = (await response.json())["sections"]["main"][-1]["ai"]
        urls = {f["function"]: f.get("web_hook_url", "") for f in ai["SWAIG"]["functions"]}
        urls["post_prompt"] = ai["post_prompt_url"]
        return {name: _without_userinfo(url) for name, url in urls.items()}

    async def post(self, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(url, json=body, headers=AUTH) as response:
            return response.status, await response.json()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["__token"][0]


def _with_token(url: str, token: str | None) -> str:
    parts = urlsplit(url)
    query = f"__token={token}" if token is not None else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    ran: list[str] = []
    summaries: list[Any] = []

    class Agent(AgentBase):
        def on_summary(self, summary: Any, raw_data: dict[str, Any] | None = None) -> None:
            summaries.append(summary)

    agent = Agent(name="tokens", route="/agent", basic_auth=("u", "p"))
    agent.set_prompt_text("Test.")
    agent.set_post_prompt("Summarize.")

    def transfer(args: dict[str, Any], raw: dict[str, Any]) -> FunctionResult:
        ran.append("transfer")
        return FunctionResult("transferred")

    def weather(args: dict[str, Any], raw: dict[str, Any]) -> FunctionResult:
        ran.append("weather")
        return FunctionResult("sunny")

    agent.define_tool("transfer", "Transfer the call", {}, transfer)  # secure by default
    agent.define_tool("weather", "The weather", {}, weather, secure=False)
    port = await agent.start("127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        try:
            yield Served(agent, f"http://127.0.0.1:{port}", session, ran, summaries)
        finally:
            await agent.stop()


def _tampered(token: str) -> str:
    """The token with its last character changed (never the same token)."""
    return token[:-1] + ("1" if token.endswith("0") else "0")


async def test_a_secure_function_runs_with_its_calls_token(served: Served) -> None:
    urls = await served.urls("call-A")
    assert "__token=" in urls["transfer"]
    status, reply = await served.post(urls["transfer"], {"function": "transfer",
                                                         "call_id": "call-A"})
    assert (status, reply) == (200, {"response": "transferred"})
    assert served.ran == ["transfer"]


async def test_a_secure_function_without_a_valid_token_is_refused(served: Served) -> None:
    urls_a = await served.urls("call-A")
    urls_b = await served.urls("call-B")
    plain = _with_token(urls_a["transfer"], None)
    cases = {
        "missing": (plain, "call-A"),
        "empty": (_with_token(plain, ""), "call-A"),
        "wrong": (_with_token(plain, "1.2.3"), "call-A"),
        "tampered": (_with_token(plain, _tampered(_token(urls_a["transfer"]))), "call-A"),
        "another call's": (urls_b["transfer"], "call-A"),
        "no call_id": (urls_a["transfer"], None),
        "another function's": (_with_token(plain, _token(urls_a["post_prompt"])), "call-A"),
    }
    for name, (url, call_id) in cases.items():
        body: dict[str, Any] = {"function": "transfer"}
        if call_id is not None:
            body["call_id"] = call_id
        status, reply = await served.post(url, body)
        assert status == 403, name
        assert "token" in reply["error"], name
    assert served.ran == []  # the handler never ran


async def test_a_non_secure_function_needs_no_token(served: Served) -> None:
    urls = await served.urls("call-A")
    assert "__token" not in urls["weather"]  # it uses the defaults URL, without a token
    status, reply = await served.post(served.base + "/agent/swaig",
                                      {"function": "weather", "call_id": "call-A"})
    assert (status, reply) == (200, {"response": "sunny"})


async def test_post_prompt_needs_its_calls_token(served: Served) -> None:
    urls_a = await served.urls("call-A")
    urls_b = await served.urls("call-B")
    body = {"call_id": "call-A", "post_prompt_data": {"raw": "summary of A"}}
    for url in (served.base + "/agent/post_prompt", urls_b["post_prompt"],
                _with_token(urls_a["post_prompt"], _token(urls_a["transfer"]))):
        status, _ = await served.post(url, body)
        assert status == 403, url
    assert served.summaries == []
    status, reply = await served.post(urls_a["post_prompt"], body)
    assert (status, reply) == (200, {"success": True})
    assert served.summaries == ["summary of A"]


async def test_a_document_without_a_call_id_offers_no_token(served: Served) -> None:
    async with served.session.get(served.base + "/agent", headers=AUTH) as response:
        ai = (await response.json())["sections"]["main"][-1]["ai"]
    assert all("__token" not in f.get("web_hook_url", "") for f in ai["SWAIG"]["functions"])
    status, _ = await served.post(served.base + "/agent/swaig",
                                  {"function": "transfer", "call_id": "call-A"})
    assert status == 403
