"""Property-based tests of the JSON-RPC parser and dispatcher (over a real WebSocket) and of
the SWML document parser and substitution: no exception escapes, each bad input gets its
defined answer, and the connection survives."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.conftest import make_config

from callbox.server.app import Platform
from callbox.server.config import Project
from callbox.server.swml.runner import VARIABLE, SwmlError, SwmlRunner, parse_document
from callbox.wire import relay as wire

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
METHODS = ["calling.answer", "calling.end", "calling.play", "calling.play.stop",
           "calling.play.pause", "calling.play.resume", "calling.play.volume",
           "calling.record", "calling.record.stop", "calling.record.pause",
           "calling.record.resume", "signalwire.receive", "signalwire.unreceive",
           "signalwire.ping", "signalwire.connect"]
PARAM_KEYS = ["call_id", "node_id", "control_id", "play", "record", "volume", "behavior",
              "reason", "contexts", "audio", "direction", "loop"]
REQUESTS = st.builds(
    lambda method, params, request_id: {"jsonrpc": "2.0", "id": request_id, "method": method,
                                        "params": params},
    st.sampled_from(METHODS) | st.text(max_size=30),
    st.dictionaries(st.sampled_from(PARAM_KEYS) | st.text(max_size=8), JSON, max_size=6),
    st.text(min_size=1, max_size=36),
)
FRAMES = (REQUESTS.map(json.dumps) | JSON.map(json.dumps) | st.text(max_size=200)).filter(
    lambda text: '"result"' not in text and '"error"' not in text  # replies need no answer
)


@given(st.text() | st.binary())
@settings(max_examples=300, deadline=None)
def test_parse_message_raises_only_protocol_errors(data):
    try:
        message = wire.parse_message(data)
    except wire.ProtocolError as exc:
        assert isinstance(exc.code, int)
    else:
        assert isinstance(message, wire.Request | wire.Response | wire.ErrorResponse)


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_swml_documents_parse_or_say_why(document):
    try:
        parsed = parse_document(json.dumps(document))
    except SwmlError as exc:
        assert str(exc)
    else:
        assert isinstance(parsed["sections"]["main"], list)


@given(JSON, st.dictionaries(st.text(max_size=8), JSON, max_size=4))
@settings(max_examples=300, deadline=None)
def test_swml_substitution_never_fails(value, variables):
    call = SimpleNamespace(id="c", from_user="a", to_user="b", direction="inbound", state="x")
    runner = SwmlRunner(call, {"sections": {"main": []}}, variables)  # type: ignore[arg-type]
    substituted = runner.substitute(value)
    plain = VARIABLE.search(json.dumps(value)) is None
    if plain:
        assert substituted == value  # nothing to replace: left as it was
    template = json.dumps(value).replace('"', "${x}")
    replaced = runner.substitute(template)
    if plain:  # every ${x}, and nothing else, becomes x's value
        assert replaced == template.replace("${x}", str(runner.lookup("x")))


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory) -> Iterator[str]:
    """A platform on its own loop in a thread, so that hypothesis can drive it synchronously."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = make_config(tmp_path_factory.mktemp("fuzz"))
    config.http.plain_listen = "127.0.0.1:0"
    config.projects = [Project("p1", "t1")]
    platform = Platform(config)
    listening = asyncio.run_coroutine_threadsafe(platform.start(), loop).result(30)
    assert listening.plain is not None
    yield f"ws://127.0.0.1:{listening.plain[1]}/"
    asyncio.run_coroutine_threadsafe(platform.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def exchange(url: str, frame: str) -> tuple[dict, dict]:
    """Connect, send `frame`, return its reply and the reply to a ping sent after it."""
    connect = wire.request("signalwire.connect", {
        "version": {"major": 2, "minor": 0, "revision": 0}, "agent": "fuzz",
        "authentication": {"project": "p1", "token": "t1"}, "contexts": ["fuzz"]})
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(json.dumps(connect))
        assert "result" in await ws.receive_json(timeout=5)
        await ws.send_str(frame)
        reply = await ws.receive_json(timeout=8)
        ping = wire.request("signalwire.ping", {})
        await ws.send_str(json.dumps(ping))
        while True:  # skip anything else (e.g. events) until the ping's answer
            pong = await ws.receive_json(timeout=8)
            if pong.get("id") == ping["id"]:
                return reply, pong


@given(FRAMES)
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_dispatcher_answers_every_frame_and_keeps_the_connection(relay_url, frame):
    reply, pong = asyncio.run(exchange(relay_url, frame))
    assert reply["jsonrpc"] == "2.0"
    if "error" in reply:
        assert isinstance(reply["error"]["code"], int) and reply["error"]["message"]
    else:
        result = reply["result"]
        if "code" in result:  # calling.* commands: a status code and a message
            assert result["code"] in ("200", "400", "404", "410", "500") and result["message"]
    assert "result" in pong  # the socket survived whatever the frame was
