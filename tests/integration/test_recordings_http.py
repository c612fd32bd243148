"""The recordings REST API and downloads over real HTTP (aiohttp test server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callbox.server.auth import ProjectAuth
from callbox.server.config import Config, HttpConfig, Project, StorageConfig
from callbox.server.http.app import make_app
from callbox.server.recording.writers import open_writer
from callbox.server.services import Services
from callbox.server.store import RecordingRow, SqliteRecordingStore

PUBLIC = "https://rec.example:8443"
API = "/api/relay/rest/recordings"
T0 = 1_789_651_036.0


def basic(login: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


P1 = basic("project-1", "token-one")
P2 = basic("project-2", "token-two")


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: SqliteRecordingStore
    rec_dir: Path
    data_dir: Path


async def _websocket(request: web.Request) -> web.Response:  # the stand-in's RELAY endpoint
    return web.Response(status=426)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = Config(
        http=HttpConfig(public_url=PUBLIC + "/"),
        storage=StorageConfig(data_dir=str(tmp_path)),
        projects=[Project("project-1", "token-one"), Project("project-2", "token-two")],
    )
    store = SqliteRecordingStore(tmp_path / "recordings.db")
    services = Services(calls={}, auth=ProjectAuth(config), node_id="node-1",
                        public_url=config.http.public_url, recordings=store)
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    server = TestServer(make_app(services, _websocket), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        yield Env(client, store, rec_dir, tmp_path)
    finally:
        await client.close()
        await store.close()


async def add_recording(env: Env, *, project_id: str = "project-1", fmt: str = "wav",
                  state: str = "finished", created_at: float = T0,
                  seconds: float = 0.5) -> RecordingRow:
    rec_id = secrets.token_hex(16)
    path = env.rec_dir / f"{rec_id}.{fmt}"
    size = None
    if state in ("finished", "recording"):
        writer = open_writer(fmt, path, 1)
        writer.write(np.random.default_rng(1).integers(-9000, 9000, round(seconds * 8000),
                                                        dtype=np.int16))
        if state == "finished":
            size = writer.close()
    row = RecordingRow(
        id=rec_id, project_id=project_id, call_id="call-" + rec_id[:6], control_id="ctl",
        state=state, format=fmt, channels=1, direction="speak",
        duration=seconds if size else None, size=size,
        url=f"{PUBLIC}/recordings/{rec_id}.{fmt}", path=str(path), created_at=created_at,
        start_time=created_at, end_time=created_at + seconds if size else None, reason=None,
        status_url="", params={"format": fmt},
    )
    await env.store.add(row)
    return row


async def raw_get(env: Env, target: str) -> tuple[int, bytes]:
    """A GET with the request target sent exactly as given (no client-side normalizing)."""
    server = env.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


async def json_of(response: Any) -> Any:
    assert response.content_type == "application/json"
    return await response.json()


async def test_list_pages_newest_first(env: Env) -> None:
    rows = [await add_recording(env, created_at=T0 + i) for i in range(7)]
    await add_recording(env, project_id="project-2", created_at=T0 + 50)
    newest_first = [r.id for r in reversed(rows)]

    seen: list[str] = []
    sizes = []
    url: str | None = f"{API}?page_size=3"
    while url:
        response = await env.client.get(url, headers=P1)
        assert response.status == 200
        body = await json_of(response)
        sizes.append(len(body["data"]))
        seen += [item["id"] for item in body["data"]]
        assert body["links"]["self"].startswith(PUBLIC + API + "?page_size=3")
        following = body["links"]["next"]
        url = following.removeprefix(PUBLIC) if following else None
        if following:
            assert following.startswith(PUBLIC + API + "?")
    assert sizes == [3, 3, 1]
    assert seen == newest_first

    first = (await (await env.client.get(API, headers=P1)).json())["data"][0]
    assert first["id"] == rows[-1].id
    assert first["url"] == f"{PUBLIC}/recordings/{rows[-1].id}.wav"
    assert first["created_at"].endswith("Z") and "path" not in first
    assert first["size"] == rows[-1].size


async def test_list_default_page_and_other_project(env: Env) -> None:
    for i in range(30):
        await add_recording(env, created_at=T0 + i, state="no_input")
    body = await (await env.client.get(API, headers=P1)).json()
    assert len(body["data"]) == 25 and body["links"]["next"] is not None
    body = await (await env.client.get(API, headers=P2)).json()
    assert body == {"data": [], "links": {
        "self": f"{PUBLIC}{API}?page_size=25", "first": f"{PUBLIC}{API}?page_size=25",
        "next": None}}


@pytest.mark.parametrize("query", ["page_size=0", "page_size=abc", "page_size=1001",
                                   "page_size=-1", "page_size="])
async def test_bad_page_size_is_400(env: Env, query: str) -> None:
    response = await env.client.get(f"{API}?{query}", headers=P1)
    assert response.status == 400
    error = (await json_of(response))["errors"][0]
    assert error["attribute"] == "page_size" and "page_size" in error["message"]


async def test_bad_page_token_is_400(env: Env) -> None:
    response = await env.client.get(f"{API}?page_token=nonsense", headers=P1)
    assert response.status == 400
    assert (await json_of(response))["errors"][0]["attribute"] == "page_token"


async def test_get_one(env: Env) -> None:
    row = await add_recording(env, fmt="mp3")
    response = await env.client.get(f"{API}/{row.id}", headers=P1)
    assert response.status == 200
    body = await json_of(response)
    assert body == row.to_api()
    assert body["format"] == "mp3" and body["state"] == "finished"


async def test_auth_required(env: Env) -> None:
    row = await add_recording(env)
    wrong = basic("project-1", "token-two")
    unknown = basic("nobody", "token-one")
    for path in (API, f"{API}/{row.id}"):
        for auth in ({}, wrong, unknown):
            response = await env.client.get(path, headers=auth)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="callbox"'
            assert (await json_of(response))["errors"][0]["code"] == "unauthorized"
    for header in ("Bearer token-one", "Basic !!!", "Basic " + "cHJvamVjdC0x"):  # no colon
        response = await env.client.get(API, headers={"Authorization": header})
        assert response.status == 401
    response = await env.client.delete(f"{API}/{row.id}", headers=wrong)
    assert response.status == 401
    assert await env.store.get(row.id) is not None


async def test_other_projects_and_unknown_ids_are_404(env: Env) -> None:
    theirs = await add_recording(env, project_id="project-2")
    for rec_id in (theirs.id, secrets.token_hex(16), "not-an-id", theirs.id.upper()):
        response = await env.client.get(f"{API}/{rec_id}", headers=P1)
        assert response.status == 404
        assert (await json_of(response))["errors"][0]["code"] == "not_found"
    response = await env.client.delete(f"{API}/{theirs.id}", headers=P1)
    assert response.status == 404
    assert Path(theirs.path).exists() and await env.store.get(theirs.id) is not None
    assert (await env.client.get(f"{API}/{theirs.id}", headers=P2)).status == 200


async def test_delete(env: Env) -> None:
    row = await add_recording(env)
    assert Path(row.path).exists()
    response = await env.client.delete(f"{API}/{row.id}", headers=P1)
    assert response.status == 204
    assert not Path(row.path).exists()
    assert await env.store.get(row.id) is None
    assert (await env.client.get(f"{API}/{row.id}", headers=P1)).status == 404
    assert (await env.client.delete(f"{API}/{row.id}", headers=P1)).status == 404
    assert (await env.client.get(f"/recordings/{row.id}.wav")).status == 404

    gone = await add_recording(env, state="no_input")  # metadata without a file
    assert (await env.client.delete(f"{API}/{gone.id}", headers=P1)).status == 204


async def test_delete_in_progress_is_409(env: Env) -> None:
    row = await add_recording(env, state="recording")
    response = await env.client.delete(f"{API}/{row.id}", headers=P1)
    assert response.status == 409
    assert "in progress" in (await json_of(response))["errors"][0]["message"]
    assert await env.store.get(row.id) is not None
    await env.store.update(row.id, state="paused")
    assert (await env.client.delete(f"{API}/{row.id}", headers=P1)).status == 409


@pytest.mark.parametrize(("fmt", "content_type"), [("wav", "audio/wav"), ("mp3", "audio/mpeg")])
async def test_download(env: Env, fmt: str, content_type: str) -> None:
    row = await add_recording(env, fmt=fmt, seconds=2)
    content = Path(row.path).read_bytes()
    response = await env.client.get(f"/recordings/{row.id}.{fmt}")  # no credentials needed
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == content
    assert response.headers.get("Accept-Ranges") == "bytes"

    response = await env.client.get(f"/recordings/{row.id}.{fmt}",
                                    headers={"Range": "bytes=0-99"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 0-99/{len(content)}"
    assert response.headers["Content-Type"] == content_type
    assert await response.read() == content[:100]

    response = await env.client.get(f"/recordings/{row.id}.{fmt}",
                                    headers={"Range": "bytes=-10"})
    assert response.status == 206 and await response.read() == content[-10:]

    response = await env.client.head(f"/recordings/{row.id}.{fmt}")
    assert response.status == 200 and int(response.headers["Content-Length"]) == len(content)


async def test_download_404s(env: Env) -> None:
    wav = await add_recording(env)
    live = await add_recording(env, state="recording")
    (env.data_dir / "config.wav").write_bytes(b"SECRET-CONFIG")
    for path in (
        f"/recordings/{wav.id}.mp3",  # wrong extension
        f"/recordings/{wav.id}.WAV",
        f"/recordings/{wav.id}",
        f"/recordings/{secrets.token_hex(16)}.wav",  # unknown
        f"/recordings/{live.id}.wav",  # not finished yet
        f"/recordings/{wav.id.upper()}.wav",
        f"/recordings/{wav.id}.wav.part",
    ):
        response = await env.client.get(path)
        assert response.status == 404, path

    for target in ("/recordings/..%2f..%2fetc%2fpasswd", "/recordings/../config.wav",
                   "/recordings/..%2fconfig.wav", "/recordings/%2e%2e/config.wav",
                   "/recordings/..%2f..%2frecordings.db", "/recordings/%2fetc%2fpasswd"):
        status, body = await raw_get(env, target)
        assert status == 404, target
        assert b"SECRET" not in body and b"root:" not in body


async def test_download_empty_suffix_range_is_416(env: Env) -> None:
    """`bytes=-0` asks for the last 0 bytes: nothing is satisfiable (RFC 9110 14.1.1)."""
    row = await add_recording(env, seconds=1)
    size = Path(row.path).stat().st_size
    for header in ("bytes=-0", "bytes=-000"):
        response = await env.client.get(f"/recordings/{row.id}.wav", headers={"Range": header})
        assert response.status == 416, header
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert await response.read() == b""


async def test_download_several_ranges_gets_the_whole_file(env: Env) -> None:
    row = await add_recording(env, seconds=1)
    content = Path(row.path).read_bytes()
    response = await env.client.get(f"/recordings/{row.id}.wav",
                                    headers={"Range": "bytes=0-9, 20-29"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    assert int(response.headers["Content-Length"]) == len(content)
    assert await response.read() == content

    response = await env.client.head(f"/recordings/{row.id}.wav",
                                     headers={"Range": "bytes=0-9, 20-29"})
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(content)
    assert await response.read() == b""
    response = await env.client.get(f"/recordings/{row.id}.wav")  # the connection is still sane
    assert response.status == 200 and await response.read() == content


async def test_download_several_ranges_of_a_vanished_file_is_404(env: Env) -> None:
    row = await add_recording(env, seconds=1)
    Path(row.path).unlink()
    response = await env.client.get(f"/recordings/{row.id}.wav",
                                    headers={"Range": "bytes=0-9,20-29"})
    assert response.status == 404
