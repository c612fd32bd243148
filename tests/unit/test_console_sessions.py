"""Console sign-in, sessions and CSRF: the session store and limiter, then the HTTP side over a
real aiohttp server (cookie flags, expiry, failed-attempt limit, CSRF, another project's 404)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callbox.server.auth import ProjectAuth
from callbox.server.config import Config, Project, StorageConfig
from callbox.server.http.app import make_app
from callbox.server.http.console.csrf import CSRF_HEADER, csrf_valid
from callbox.server.http.console.routes import CONSOLE_KEY
from callbox.server.http.console.sessions import (
    COOKIE_NAME,
    AttemptLimiter,
    SessionStore,
)
from callbox.server.recording.writers import open_writer
from callbox.server.services import Services
from callbox.server.store import RecordingRow, SqliteRecordingStore
from callbox.server.store.recordings import Parties

T0 = 1_789_651_036.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the store and the limiter ----------------------------------------------------------------


def test_sessions_expire_and_end() -> None:
    clock = FakeClock()
    store = SessionStore(lifetime=60, clock=clock)
    session = store.create("p1")
    assert store.get(session.id) == session
    assert session.csrf_token != session.id and len(session.id) >= 40
    clock.now += 59.9
    assert store.get(session.id) == session
    clock.now += 0.1
    assert store.get(session.id) is None  # expired, and forgotten
    assert len(store) == 0
    other = store.create("p1")
    store.end(other.id)
    assert store.get(other.id) is None
    assert store.get("") is None and store.get(None) is None and store.get("guess") is None


def test_sessions_are_bounded_oldest_first() -> None:
    store = SessionStore(max_sessions=3)
    made = [store.create("p1") for _ in range(4)]
    assert store.get(made[0].id) is None
    assert all(store.get(s.id) is not None for s in made[1:])


def test_limiter_per_key_and_window() -> None:
    clock = FakeClock()
    limiter = AttemptLimiter(max_failures=3, window=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("address:a", "project:p1") == 0
        limiter.failed("address:a", "project:p1")
    assert limiter.retry_after("address:a") == pytest.approx(60)
    assert limiter.retry_after("project:p1") == pytest.approx(60)
    # another address for another project is not held up; one naming the project is
    assert limiter.retry_after("address:b", "project:p2") == 0
    assert limiter.retry_after("address:b", "project:p1") > 0
    clock.now += 30
    assert limiter.retry_after("address:a") == pytest.approx(30)
    clock.now += 30
    assert limiter.retry_after("address:a", "project:p1") == 0  # the window passed
    limiter.failed("address:c")
    limiter.succeeded("address:c")
    assert limiter.retry_after("address:c") == 0


def test_csrf_token_compare() -> None:
    session = SessionStore().create("p1")
    assert csrf_valid(session, session.csrf_token)
    assert not csrf_valid(session, None)
    assert not csrf_valid(session, "")
    assert not csrf_valid(session, session.csrf_token[:-1])
    assert not csrf_valid(SessionStore().create("p1"), session.csrf_token)


# -- over HTTP --------------------------------------------------------------------------------


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: SqliteRecordingStore
    rec_dir: Path
    app: web.Application


async def _websocket(request: web.Request) -> web.Response:
    return web.Response(status=426)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    config = Config(storage=StorageConfig(data_dir=str(tmp_path)),
                    projects=[Project("p1", "t1"), Project("p2", "t2")])
    store = SqliteRecordingStore(tmp_path / "recordings.db")
    services = Services(calls={}, auth=ProjectAuth(config), node_id="node-1",
                        public_url="https://rec.example", recordings=store)
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    app = make_app(services, _websocket)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Env(client, store, rec_dir, app)
    finally:
        await client.close()
        await store.close()


async def add_recording(env: Env, project_id: str = "p1") -> RecordingRow:
    rec_id = secrets.token_hex(16)
    path = env.rec_dir / f"{rec_id}.wav"
    writer = open_writer("wav", path, 1)
    writer.write(np.zeros(4000, np.int16))
    size = writer.close()
    row = RecordingRow(
        id=rec_id, project_id=project_id, call_id="call-1", control_id="ctl",
        state="finished", format="wav", channels=1, direction="speak", duration=0.5,
        size=size, url=f"https://rec.example/recordings/{rec_id}.wav", path=str(path),
        created_at=T0, start_time=T0, end_time=T0 + 0.5, reason=None, status_url="",
        params={"format": "wav"})
    await env.store.add(row)
    return row


async def sign_in(env: Env, project: str = "p1", token: str = "t1") -> dict[str, str]:
    """Sign in; the headers of a signed-in request (cookie and CSRF token)."""
    response = await env.client.post("/console/signin", data={"project": project,
                                                              "token": token},
                                     allow_redirects=False)
    assert response.status == 303, await response.text()
    cookie = {COOKIE_NAME: response.cookies[COOKIE_NAME].value}
    session = await env.client.get("/console/api/session", cookies=cookie)
    assert session.status == 200
    body = await session.json()
    assert body["project_id"] == project
    return {"Cookie": f"{COOKIE_NAME}={cookie[COOKIE_NAME]}", CSRF_HEADER: body["csrf_token"]}


def cookie_only(headers: dict[str, str]) -> dict[str, str]:
    return {"Cookie": headers["Cookie"]}


async def test_sign_in_sets_a_strict_secure_httponly_cookie(env: Env) -> None:
    response = await env.client.post("/console/signin", data={"project": "p1", "token": "t1"},
                                     allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/console/"
    morsel = response.cookies[COOKIE_NAME]
    assert morsel["httponly"] is True and morsel["secure"] is True
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/console"
    assert len(morsel.value) >= 40


async def test_signed_out_nothing_of_a_recording_is_shown(env: Env) -> None:
    row = await add_recording(env)
    for path in ("/console/api/recordings", f"/console/api/recordings/{row.id}",
                 f"/console/api/recordings/{row.id}/peaks", "/console/api/calls",
                 "/console/api/events", "/console/api/session"):
        response = await env.client.get(path)
        assert response.status == 401, path
        assert row.id not in await response.text()
    page = await env.client.get(f"/console/recordings/{row.id}")
    text = await page.text()
    assert 'name="project"' in text and 'name="token"' in text  # the sign-in form
    assert row.id not in text and "call-1" not in text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    forged = await env.client.get("/console/api/recordings",
                                  headers={"Cookie": f"{COOKIE_NAME}=forged"})
    assert forged.status == 401


async def test_another_projects_recording_is_404(env: Env) -> None:
    mine, theirs = await add_recording(env, "p1"), await add_recording(env, "p2")
    headers = await sign_in(env, "p1", "t1")
    listed = await (await env.client.get("/console/api/recordings", headers=headers)).json()
    assert [r["id"] for r in listed["data"]] == [mine.id]
    for path in (f"/console/recordings/{theirs.id}", f"/console/api/recordings/{theirs.id}",
                 f"/console/api/recordings/{theirs.id}/peaks"):
        response = await env.client.get(path, headers=headers)
        assert response.status == 404, path
    response = await env.client.delete(f"/console/api/recordings/{theirs.id}", headers=headers)
    assert response.status == 404
    assert await env.store.get(theirs.id) is not None
    own = await env.client.get(f"/console/api/recordings/{mine.id}", headers=headers)
    assert own.status == 200
    assert (await own.json())["audio_url"] == f"/recordings/{mine.id}.wav"
    peaks = await env.client.get(f"/console/api/recordings/{mine.id}/peaks?bins=20",
                                 headers=headers)
    body = await peaks.json()
    assert body["bins"] == 20 and len(body["channels"]) == 1
    assert body["channels"][0] == [0.0] * 20  # the file is silence
    for bad in ("5", "4001", "x", "²", "-1", "1" * 30):
        response = await env.client.get(f"/console/api/recordings/{mine.id}/peaks",
                                        params={"bins": bad}, headers=headers)
        assert response.status == 400, bad
        assert (await response.json())["errors"][0]["attribute"] == "bins"


async def test_the_legend_comes_from_the_stored_parties_else_says_what_each_channel_is(
        env: Env) -> None:
    """No live call and no engine here (another node's recording, or after a restart): the
    legend is what was stored with the recording's end."""
    stored, unknown = await add_recording(env), await add_recording(env)
    await env.store.update(stored.id, channels=2, direction="both", parties=Parties(
        "the caller (alice)", "the callee (bob)", "call-2"))
    await env.store.update(unknown.id, channels=2, direction="both")  # repaired after a crash
    headers = await sign_in(env)

    async def detail(rec_id: str) -> tuple[list[str], str | None]:
        response = await env.client.get(f"/console/api/recordings/{rec_id}", headers=headers)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert "parties" not in body  # the REST fields and the console's own, as before
        return body["channel_legend"], body["peer_call_id"]

    assert await detail(stored.id) == (
        ["Left: the caller (alice)", "Right: the callee (bob)"], "call-2")
    assert await detail(unknown.id) == (
        ["Left: the recorded party", "Right: what that party hears"], None)
    rest = await env.client.get("/console/api/recordings", headers=headers)
    assert [r for r in (await rest.json())["data"] if "parties" in r] == []


async def test_changes_need_the_csrf_token(env: Env) -> None:
    row = await add_recording(env)
    headers = await sign_in(env)
    url = f"/console/api/recordings/{row.id}"
    refused = [
        cookie_only(headers),  # no token
        {**headers, CSRF_HEADER: "x" + headers[CSRF_HEADER]},  # a wrong one
        {**headers, "Origin": "https://evil.example"},  # the right one, from another site
    ]
    for attempt in refused:
        response = await env.client.delete(url, headers=attempt)
        assert response.status == 403
        assert await env.store.get(row.id) is not None and Path(row.path).exists()
    other_session = await sign_in(env)
    response = await env.client.delete(url, headers={**headers,
                                                     CSRF_HEADER: other_session[CSRF_HEADER]})
    assert response.status == 403  # the token is bound to its session
    response = await env.client.post("/console/signout", headers=cookie_only(headers))
    assert response.status == 403  # signing out is a change too

    response = await env.client.delete(url, headers=headers)
    assert response.status == 204
    assert await env.store.get(row.id) is None and not Path(row.path).exists()

    response = await env.client.post("/console/signout", headers=headers)
    assert response.status == 204
    after = await env.client.get("/console/api/recordings", headers=headers)
    assert after.status == 401  # the session is gone on the server


async def test_sessions_expire_over_http(env: Env) -> None:
    clock = FakeClock()
    env.app[CONSOLE_KEY].sessions = SessionStore(lifetime=600, clock=clock)
    headers = await sign_in(env)
    clock.now += 599
    assert (await env.client.get("/console/api/recordings", headers=headers)).status == 200
    clock.now += 1
    assert (await env.client.get("/console/api/recordings", headers=headers)).status == 401


async def test_failed_sign_ins_are_limited(env: Env) -> None:
    for _ in range(5):
        response = await env.client.post("/console/signin",
                                         data={"project": "p1", "token": "guess"},
                                         allow_redirects=False)
        assert response.status == 401
        assert COOKIE_NAME not in response.cookies
        assert "Wrong project id or token." in await response.text()
    # now even the right token is refused from this address, until the window passes
    response = await env.client.post("/console/signin", data={"project": "p1", "token": "t1"},
                                     allow_redirects=False)
    assert response.status == 429
    assert int(response.headers["Retry-After"]) > 0
    assert COOKIE_NAME not in response.cookies
    assert "Too many failed sign-ins" in await response.text()


async def test_sign_in_from_another_site_is_refused(env: Env) -> None:
    response = await env.client.post("/console/signin", data={"project": "p1", "token": "t1"},
                                     headers={"Origin": "https://evil.example"},
                                     allow_redirects=False)
    assert response.status == 403
    assert COOKIE_NAME not in response.cookies


async def test_list_filters_and_bad_filters(env: Env) -> None:
    first, second = await add_recording(env), await add_recording(env)
    await env.store.update(second.id, state="error", control_id="wanted")
    headers = await sign_in(env)

    async def ids(query: str) -> list[str]:
        response = await env.client.get(f"/console/api/recordings?{query}", headers=headers)
        assert response.status == 200, await response.text()
        return [r["id"] for r in (await response.json())["data"]]

    assert await ids("state=error") == [second.id]
    assert await ids("q=wanted") == [second.id]
    assert sorted(await ids("format=wav&channels=1")) == sorted([first.id, second.id])
    assert await ids("channels=2") == []
    assert len(await ids("from=2026-09-17&to=2026-09-17")) == 2  # T0 is that day (UTC)
    assert await ids("from=2026-09-18") == []
    assert await ids("to=2026-09-16") == []
    for bad in ("state=dancing", "format=ogg", "channels=3", "from=yesterday", "q=" + "x" * 200):
        response = await env.client.get(f"/console/api/recordings?{bad}", headers=headers)
        assert response.status == 400, bad
        assert (await response.json())["errors"][0]["attribute"] in bad
