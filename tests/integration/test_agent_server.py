"""The seed's agents served by callbox, over real HTTP, side by side with the official package.

The seed's two examples run verbatim but for their import line (`from callbox import AgentBase,
FunctionResult`), each in its own process with `agent.serve()`; a third "probe" agent covers the
error paths. The same scripts also run on the official `signalwire-sdk` (its own venv,
`.venv-sw`), and the SWAIG replies of both must be identical.

Differences from the official server (by design), and how the comparison handles them:
- Both packages add a per-call token (`?__token=...`) to each secure function's `web_hook_url`
  and refuse calls without a valid one (official: a 200 whose reply says "the security token for
  this function is invalid or expired"; callbox: 403). So calls here first fetch the SWML
  document for a call_id and then call the URL (token included) that document gives.
- The official `web_hook_url` is built on the configured host ("localhost:PORT") and ends with
  "/swaig/"; callbox uses the request's scheme and Host header and ".../swaig". Documents are
  compared with the host, the token and the trailing slash taken out.
- Non-object JSON bodies and non-string function names are 400 here; the official server
  answers 500 "Internal server error" (not compared).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from tests.peers.official_sdk import official_sdk_python

USER, PASSWORD = "agent-user", "s3cret-pass"

OFFICIAL_IMPORT = "from signalwire import AgentBase\nfrom signalwire import FunctionResult\n"
CALLBOX_IMPORT = "from callbox import AgentBase, FunctionResult\n"

# The seed's two examples, verbatim (the official SDK's import lines).
SEED_CONTINUOUS = '''from signalwire import AgentBase
from signalwire import FunctionResult

agent = AgentBase(name="my-agent", route="/agent")
agent.set_prompt_text("You are a helpful assistant.")

@agent.tool(name="start_recording", description="Start recording the call")
def start_recording(args, raw_data):
    return (
        FunctionResult("Recording started.")
        .record_call(
            control_id="main_recording",
            stereo=True,
            format="mp3"
        )
    )

agent.serve()
'''

SEED_VOICEMAIL = '''from signalwire import AgentBase
from signalwire import FunctionResult

agent = AgentBase(name="my-agent", route="/agent")
agent.set_prompt_text("You are a helpful assistant.")

@agent.tool(name="record_voicemail", description="Record a voicemail message")
def record_voicemail(args, raw_data):
    return (
        FunctionResult("Please leave your message after the beep.")
        .record_call(
            control_id="voicemail",
            beep=True,
            max_length=120.0,
            end_silence_timeout=3.0
        )
    )

agent.serve()
'''

# Error paths and the handler return types, identical source for both packages.
PROBE = '''import json
from signalwire import AgentBase
from signalwire import FunctionResult

agent = AgentBase(name="probe", route="/probe/")
agent.set_prompt_text("Probe.")

@agent.tool(
    name="echo_args",
    description="Echo the arguments",
    parameters={"type": "object", "properties": {"x": {"type": "string", "description": "x"}}},
)
def echo_args(args, raw_data):
    return FunctionResult(json.dumps(args, sort_keys=True)).update_global_data(
        {"seen_call_id": raw_data.get("call_id")}
    )

@agent.tool(name="boom", description="Raise")
def boom(args, raw_data):
    raise RuntimeError("kaboom")

@agent.tool(name="async_boom", description="Raise, async")
async def async_boom(args, raw_data):
    raise ValueError("async kaboom")

@agent.tool(name="as_dict", description="Return a dict")
def as_dict(args, raw_data):
    return {"response": "from a dict", "action": [{"say": "hi"}]}

@agent.tool(name="as_str", description="Return a string")
def as_str(args, raw_data):
    return "plain text"

@agent.tool(name="as_none", description="Return None")
def as_none(args, raw_data):
    return None

@agent.tool(name="as_async", description="Async handler")
async def as_async(args, raw_data):
    return FunctionResult("async done").hangup()

agent.serve()
'''

# The replies agents.md gives for the seed's examples (official package, exact JSON).
SEED_REPLIES = {
    "start_recording": '{"response":"Recording started.","action":[{"SWML":{"version":"1.0.0",'
    '"sections":{"main":[{"record_call":{"stereo":true,"format":"mp3","direction":"both",'
    '"beep":false,"input_sensitivity":44.0,"control_id":"main_recording"}}]}}}]}',
    "record_voicemail": '{"response":"Please leave your message after the beep.","action":'
    '[{"SWML":{"version":"1.0.0","sections":{"main":[{"record_call":{"stereo":false,'
    '"format":"wav","direction":"both","beep":true,"input_sensitivity":44.0,'
    '"control_id":"voicemail","end_silence_timeout":3.0,"max_length":120.0}}]}}}]}',
}

SWAIG_REQUEST = {
    "argument": {"parsed": [{"reason": "voicemail"}], "raw": '{"reason":"voicemail"}'},
    "project_id": "p-1",
    "content_type": "text/swaig",
    "version": "2.0",
    "global_data": {},
    "meta_data": {},
    "caller_id_num": "+15550001111",
    "caller_id_name": "Alice",
}

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    auth: tuple[str, str] | None = (USER, PASSWORD),
    content_type: str | None = "application/json",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request; credentials in the URL's userinfo are moved to the Authorization header."""
    parts = urlsplit(url)
    if parts.username is not None:
        auth = (parts.username, parts.password or "")
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None and content_type is not None:
        request.add_header("Content-Type", content_type)
    if auth is not None:
        request.add_header("Authorization", basic(*auth))
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read().decode())


@dataclass
class AgentProcess:
    impl: str  # "callbox" | "official"
    script: str
    port: int
    route: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.route

    def document(self, call_id: str | None = None) -> dict[str, Any]:
        reply = http("POST", self.url, {"call_id": call_id} if call_id else {})
        assert reply.status == 200, reply.text
        document: dict[str, Any] = reply.json
        return document

    def function_url(self, function: str, call_id: str) -> str:
        """The URL the SWML document gives for `function` (official: with its call token)."""
        ai = self.document(call_id)["sections"]["main"][-1]["ai"]
        for entry in ai["SWAIG"]["functions"]:
            if entry["function"] == function:
                return str(entry["web_hook_url"])
        raise AssertionError(f"{function} not in the document")

    def call(self, function: str, body: dict[str, Any] | None = None) -> Reply:
        """A SWAIG call the way the platform makes it: to the URL the document gave."""
        call_id = f"call-{function}-{time.monotonic_ns()}"
        request = {"function": function, **SWAIG_REQUEST, **(body or {}), "call_id": call_id}
        return http("POST", self.function_url(function, call_id), request)

    def post_swaig(self, body: Any = None, **options: Any) -> Reply:
        """A raw POST to <route>/swaig (no token: for requests refused before dispatch)."""
        return http("POST", self.url.rstrip("/") + "/swaig", body, **options)


def start_agent(
    impl: str, source: str, route: str, workdir: Path, env_extra: dict[str, str] | None = None
) -> AgentProcess:
    port = free_port()
    if impl == "callbox":
        assert source.count(OFFICIAL_IMPORT) == 1  # only the import line changes
        source = source.replace(OFFICIAL_IMPORT, CALLBOX_IMPORT)
        python = sys.executable
    else:
        python = str(official_sdk_python())
    script = workdir / f"{impl}_{port}.py"
    script.write_text(source)
    log = workdir / f"{impl}_{port}.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "SWML_BASIC_AUTH_USER": USER,
        "SWML_BASIC_AUTH_PASSWORD": PASSWORD,
        "SIGNALWIRE_LOG_MODE": "off",
        "PYTHONUNBUFFERED": "1",
        **(env_extra or {}),
    }
    env.pop("SWML_PROXY_URL_BASE", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, str(script)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=workdir)
    return AgentProcess(impl, source, port, route, proc, log)


def wait_ready(agent: AgentProcess, deadline: float) -> None:
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise AssertionError(f"{agent.impl} agent exited:\n{agent.log.read_text()[-3000:]}")
        try:
            if http("GET", agent.base + "/health", auth=None).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{agent.impl} agent not ready:\n{agent.log.read_text()[-3000:]}")


def stop_agent(agent: AgentProcess) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGINT)
        try:
            agent.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()


def normalized_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each webhook URL's host, token and trailing slash taken out."""
    document = json.loads(json.dumps(document))

    def strip(url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit((parts.scheme, f"{userinfo}@HOST", parts.path.rstrip("/"), "", ""))

    for verb in document["sections"]["main"]:
        swaig = verb.get("ai", {}).get("SWAIG", {})
        for entry in swaig.get("functions", []):
            entry["web_hook_url"] = strip(entry["web_hook_url"])
        if "defaults" in swaig:
            swaig["defaults"]["web_hook_url"] = strip(swaig["defaults"]["web_hook_url"])
    return document


# ---------------------------------------------------------------------------------------------
# Fixtures: 3 agents x 2 implementations, started in parallel
# ---------------------------------------------------------------------------------------------

Agents = dict[tuple[str, str], AgentProcess]  # (impl, key) -> the running agent

AGENTS = {
    "continuous": (SEED_CONTINUOUS, "/agent"),
    "voicemail": (SEED_VOICEMAIL, "/agent"),
    "probe": (PROBE, "/probe"),
}


@pytest.fixture(scope="module")
def agents(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Agents]:
    workdir = tmp_path_factory.mktemp("agents")
    official_sdk_python()  # fails at once when the official SDK is not installed
    started: dict[tuple[str, str], AgentProcess] = {}
    try:
        for impl in ("official", "callbox"):
            for key, (source, route) in AGENTS.items():
                started[(impl, key)] = start_agent(impl, source, route, workdir)
        deadline = time.monotonic() + 30
        for agent in started.values():
            wait_ready(agent, deadline)
        yield started
    finally:
        for agent in started.values():
            stop_agent(agent)


def ours(agents: Agents, key: str) -> AgentProcess:
    return agents[("callbox", key)]


def theirs(agents: Agents, key: str) -> AgentProcess:
    return agents[("official", key)]


# ---------------------------------------------------------------------------------------------
# The SWML document
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "function", "description"),
    [
        ("continuous", "start_recording", "Start recording the call"),
        ("voicemail", "record_voicemail", "Record a voicemail message"),
    ],
)
def test_seed_swml_document(agents: Agents, key: str, function: str, description: str) -> None:
    agent = ours(agents, key)
    hook = f"http://{USER}:{PASSWORD}@127.0.0.1:{agent.port}/agent/swaig"
    expected = {
        "version": "1.0.0",
        "sections": {
            "main": [
                {"answer": {}},
                {
                    "ai": {
                        "prompt": {"text": "You are a helpful assistant."},
                        "SWAIG": {
                            "functions": [
                                {
                                    "function": function,
                                    "description": description,
                                    "parameters": {"type": "object", "properties": {}},
                                    "web_hook_url": hook,
                                }
                            ],
                            "defaults": {"web_hook_url": hook},
                        },
                        "params": {},
                    }
                },
            ]
        },
    }
    for method, url in (("GET", agent.url), ("POST", agent.url), ("GET", agent.url + "/")):
        reply = http(method, url, {} if method == "POST" else None)
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        assert json.dumps(reply.json) == json.dumps(expected)


@pytest.mark.parametrize("key", list(AGENTS))
def test_document_matches_official_but_for_urls(agents: Agents, key: str) -> None:
    mine = normalized_document(ours(agents, key).document("call-doc"))
    official = normalized_document(theirs(agents, key).document("call-doc"))
    assert json.dumps(mine) == json.dumps(official)


def test_webhook_url_follows_the_host_header(agents: Agents) -> None:
    agent = ours(agents, "continuous")
    reply = http("GET", agent.url, headers={"Host": "agents.example.com:8443"})
    swaig = reply.json["sections"]["main"][1]["ai"]["SWAIG"]
    assert swaig["defaults"]["web_hook_url"] == (
        f"http://{USER}:{PASSWORD}@agents.example.com:8443/agent/swaig"
    )


# ---------------------------------------------------------------------------------------------
# SWAIG: the seed's functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "function"), [("continuous", "start_recording"), ("voicemail", "record_voicemail")]
)
def test_seed_swaig_reply_is_exactly_the_documented_json(agents: Agents, key: str,
                                                         function: str) -> None:
    reply = ours(agents, key).call(function)
    assert reply.status == 200
    assert json.dumps(reply.json, separators=(",", ":")) == SEED_REPLIES[function]


@pytest.mark.parametrize(
    ("key", "function"), [("continuous", "start_recording"), ("voicemail", "record_voicemail")]
)
def test_seed_swaig_reply_equals_official(agents: Agents, key: str, function: str) -> None:
    mine = ours(agents, key).call(function)
    official = theirs(agents, key).call(function)
    assert (mine.status, mine.text and json.dumps(mine.json)) == (
        official.status,
        json.dumps(official.json),
    )


def test_swaig_with_trailing_slash(agents: Agents) -> None:
    agent = ours(agents, "continuous")
    url = agent.function_url("start_recording", "call-slash")
    assert "/swaig?" in url
    reply = http("POST", url.replace("/swaig?", "/swaig/?"),
                 {"function": "start_recording", "call_id": "call-slash"})
    assert json.dumps(reply.json, separators=(",", ":")) == SEED_REPLIES["start_recording"]


# ---------------------------------------------------------------------------------------------
# SWAIG: handlers' return values, arguments, errors (same as the official package)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "body"),
    [
        ("echo_args", {}),
        ("echo_args", {"argument": {"parsed": [{"x": "parsed"}], "raw": '{"x": "raw"}'}}),
        ("echo_args", {"argument": {"parsed": [], "raw": '{"x": "from raw"}'}}),
        ("echo_args", {"argument": {"raw": '{"x": "only raw"}'}}),
        ("echo_args", {"argument": {"raw": "not json"}}),
        ("echo_args", {"argument": {"raw": "[1, 2]"}}),
        ("echo_args", {"argument": {"parsed": "not a list"}}),
        ("echo_args", {"argument": "not an object"}),
        ("echo_args", {"argument": None, "arguments": {"x": "flat"}}),
        ("boom", {}),
        ("async_boom", {}),
        ("as_dict", {}),
        ("as_str", {}),
        ("as_none", {}),
        ("as_async", {}),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else value,
)
def test_probe_reply_equals_official(agents: Agents, function: str, body: dict[str, Any]) -> None:
    mine = ours(agents, "probe").call(function, body)
    official = theirs(agents, "probe").call(function, body)
    assert mine.status == official.status == 200
    # call_id differs per request: compare everything else
    mine_json, official_json = mine.json, official.json
    for reply in (mine_json, official_json):
        for action in reply.get("action", []):
            action.get("set_global_data", {}).pop("seen_call_id", None)
    assert json.dumps(mine_json) == json.dumps(official_json)


def test_handler_that_raises_gives_200_with_the_error(agents: Agents) -> None:
    reply = ours(agents, "probe").call("boom")
    assert reply.status == 200
    assert reply.json == {"response": "Error executing function 'boom': kaboom"}


def test_raw_data_is_the_whole_request(agents: Agents) -> None:
    reply = ours(agents, "probe").call("echo_args", {"argument": {"parsed": [{"x": "1"}]}})
    assert reply.json["response"] == '{"x": "1"}'
    seen = reply.json["action"][0]["set_global_data"]["seen_call_id"]
    assert seen.startswith("call-echo_args-")


REFUSED = [
    ("missing_function", {"argument": {}}, {}),
    ("empty_function", {"function": ""}, {}),
    ("dashed_name", {"function": "bad-name"}, {}),
    ("leading_digit", {"function": "1abc"}, {}),
    ("dotted_name", {"function": "a.b"}, {}),
    ("space_name", {"function": "a b"}, {}),
    ("not_json", None, {"raw": b"{not json"}),
    ("text_plain", {"function": "echo_args"}, {"content_type": "text/plain"}),
    ("form", {"function": "echo_args"}, {"content_type": "application/x-www-form-urlencoded"}),
    ("unknown_function", {"function": "no_such_tool"}, {}),
    ("no_auth", {"function": "echo_args"}, {"auth": None}),
    ("wrong_password", {"function": "echo_args"}, {"auth": (USER, "nope")}),
    ("wrong_user", {"function": "echo_args"}, {"auth": ("someone", PASSWORD)}),
]


@pytest.mark.parametrize(("label", "body", "options"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_requests_equal_official(agents: Agents, label: str, body: Any,
                                        options: dict[str, Any]) -> None:
    mine = ours(agents, "probe").post_swaig(body, **options)
    official = theirs(agents, "probe").post_swaig(body, **options)
    assert mine.status == official.status
    assert mine.json == official.json


def test_status_codes(agents: Agents) -> None:
    agent = ours(agents, "probe")
    missing = agent.post_swaig({"argument": {}})
    assert (missing.status, missing.json) == (400, {"error": "Missing function name"})
    bad = agent.post_swaig({"function": "bad-name"})
    assert (bad.status, bad.json) == (400, {"error": "Invalid function name format: 'bad-name'"})
    not_str = agent.post_swaig({"function": 5})
    assert not_str.status == 400
    array = agent.post_swaig([1, 2])
    assert array.status == 400
    media = agent.post_swaig({"function": "as_str"}, content_type="text/plain")
    assert (media.status, media.json) == (415, {"error": "Content-Type must be application/json"})
    unknown = agent.post_swaig({"function": "no_such_tool"})
    assert unknown.status == 200
    assert unknown.json == {"response": "Function 'no_such_tool' not found"}


@pytest.mark.parametrize("path", ["", "/", "/swaig", "/post_prompt"])
@pytest.mark.parametrize("auth", [None, (USER, "wrong")], ids=["no_auth", "wrong_password"])
def test_every_agent_route_needs_basic_auth(agents: Agents, path: str,
                                           auth: tuple[str, str] | None) -> None:
    agent = ours(agents, "continuous")
    reply = http("GET", agent.url + path, auth=auth)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Basic")
    assert reply.json == {"error": "Unauthorized"}


def test_health_and_ready_without_auth(agents: Agents) -> None:
    for key in ("continuous", "probe"):
        agent = ours(agents, key)
        name = "my-agent" if key == "continuous" else "probe"
        health = http("GET", agent.base + "/health", auth=None)
        assert (health.status, health.json) == (200, {"status": "healthy", "agent": name})
        ready = http("GET", agent.base + "/ready", auth=None)
        assert (ready.status, ready.json) == (200, {"status": "ready"})
        official = theirs(agents, key)
        assert http("GET", official.base + "/health", auth=None).json == health.json
        assert http("GET", official.base + "/ready", auth=None).json == ready.json


def test_ctrl_c_stops_the_server_cleanly(tmp_path: Path) -> None:
    agent = start_agent("callbox", SEED_CONTINUOUS, "/agent", tmp_path)
    try:
        wait_ready(agent, time.monotonic() + 10)
        agent.proc.send_signal(signal.SIGINT)
        assert agent.proc.wait(timeout=5) == 0
    finally:
        stop_agent(agent)
    output = agent.log.read_text()
    assert "Traceback" not in output
    assert f"localhost:{agent.port}/agent" in output


# ---------------------------------------------------------------------------------------------
# In-process: credentials, port, routes, embedding
# ---------------------------------------------------------------------------------------------


async def test_generated_credentials_and_embedding(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import ClientSession

    from callbox import AgentBase, FunctionResult

    for name in ("SWML_BASIC_AUTH_USER", "SWML_BASIC_AUTH_PASSWORD", "PORT"):
        monkeypatch.delenv(name, raising=False)
    agent = AgentBase(name="embedded", route="/bot/")
    assert agent.port == 3000
    assert agent.route == "/bot"
    user, password, source = agent.get_basic_auth_credentials(include_source=True)
    assert (user, source) == ("signalwire", "generated")
    assert len(password) >= 16
    assert AgentBase(name="other").get_basic_auth_credentials()[1] != password

    summaries: list[Any] = []

    class Recorder(AgentBase):
        @AgentBase.tool(name="stop_it", description="Stop recording")
        def stop_it(self, args: dict[str, Any], raw_data: dict[str, Any]) -> FunctionResult:
            return FunctionResult("Stopped.").stop_record_call(args.get("id"))

        def on_summary(self, summary: Any, raw_data: dict[str, Any] | None = None) -> None:
            summaries.append(summary)

    sub = Recorder(name="sub", basic_auth=("a", "b"))
    sub.set_post_prompt("Summarize the call as JSON.")
    sub.define_tool(
        "greet", "Say hi", {"who": {"type": "string"}}, lambda args, raw: f"hi {args['who']}",
        required=["who"],
    )
    with caplog.at_level("INFO", logger="callbox.agents"):
        port = await agent.start("127.0.0.1", 0)
    sub_port = await sub.start("127.0.0.1", 0)
    mine = {"Authorization": basic(user, password)}
    ab = {"Authorization": basic("a", "b")}
    try:
        assert any(password in record.getMessage() for record in caplog.records)
        async with ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/bot", headers=mine) as r:
                assert r.status == 200
            async with session.get(f"http://127.0.0.1:{port}/bot") as r:
                assert r.status == 401
            url = f"http://127.0.0.1:{sub_port}/"
            async with session.get(url + "?call_id=c1", headers=ab) as r:
                ai = (await r.json())["sections"]["main"][1]["ai"]
            functions = ai["SWAIG"]["functions"]
            assert [f["function"] for f in functions] == ["stop_it", "greet"]
            assert functions[1]["parameters"] == {
                "type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"],
            }
            stop_url, greet_url = (f["web_hook_url"] for f in functions)
            prefix = f"http://a:b@127.0.0.1:{sub_port}"
            assert stop_url.startswith(prefix + "/swaig?__token=")
            assert greet_url.startswith(prefix + "/swaig?__token=") and greet_url != stop_url
            assert ai["post_prompt"] == {"text": "Summarize the call as JSON."}
            assert ai["post_prompt_url"].startswith(prefix + "/post_prompt?__token=")

            def plain(url: str) -> str:  # the credentials go in the header
                return url.replace("a:b@", "")

            body = {"function": "stop_it", "argument": {"parsed": [{"id": "r1"}]},
                    "call_id": "c1"}
            async with session.post(plain(stop_url), json=body, headers=ab) as r:
                assert await r.json() == FunctionResult("Stopped.").stop_record_call("r1").to_dict()
            body = {"function": "greet", "argument": {"raw": '{"who": "Bob"}'}, "call_id": "c1"}
            async with session.post(plain(greet_url), json=body, headers=ab) as r:
                assert await r.json() == {"response": "hi Bob"}
            body = {"post_prompt_data": {"parsed": [{"outcome": "voicemail"}], "raw": "..."},
                    "call_id": "c1"}
            async with session.post(plain(ai["post_prompt_url"]), json=body, headers=ab) as r:
                assert await r.json() == {"success": True}
            assert summaries == [{"outcome": "voicemail"}]
    finally:
        await agent.stop()
        await sub.stop()


def test_port_and_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from callbox import AgentBase

    monkeypatch.setenv("PORT", "4321")
    monkeypatch.setenv("SWML_BASIC_AUTH_USER", "env-user")
    monkeypatch.setenv("SWML_BASIC_AUTH_PASSWORD", "env-pass")
    agent = AgentBase(name="env")
    assert agent.port == 4321
    assert agent.get_basic_auth_credentials(include_source=True) == (
        "env-user", "env-pass", "environment",
    )
    explicit = AgentBase(name="explicit", port=5555, basic_auth=("x", "y"))
    assert explicit.port == 5555
    assert explicit.get_basic_auth_credentials() == ("x", "y")
