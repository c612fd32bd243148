"""The recordings console in a real browser (Debian's chromium driven by Playwright) against a
real platform and real sipp calls: sign in, a fresh recording appears live, plays, its waveform
is drawn, it is deleted; the live-call buttons pause and resume a real call's recording (the
file has the silence); a wrong token is refused; no JavaScript error anywhere.

Screenshots are kept in each test's tmp dir.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect
from tests.integration.conftest import RunningPlatform, running_platform, swml
from tests.peers import audio
from tests.peers.ports import free_port_range
from tests.peers.sipp import g711_stream, require_pass, run_sipp, start_sipp_uas

from callbox.server.config import Project, Route

pytestmark = [pytest.mark.peers, pytest.mark.asyncio(loop_scope="module")]

CALLER_HZ = 700
CALLEE_HZ = 1000
WAIT_MS = 30_000  # a browser wait's deadline (the machine may be loaded)


def routes(status_url: str) -> list[Route]:
    record = {"format": "wav", "stereo": True, "control_id": "console-test",
              "status_url": status_url}
    return [Route("rec", swml=swml({"answer": {}}, {"record_call": record}, {"sleep": 120_000})),
            Route("listen", swml=swml({"answer": {}}, {"sleep": 120_000}))]


async def webhook_receiver() -> web.AppRunner:
    """Answers every status_url POST with 204."""
    app = web.Application()
    app.router.add_post("/hook", _no_content)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    return runner


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


@dataclass
class Console:
    running: RunningPlatform
    url: str  # https://127.0.0.1:PORT
    hook_url: str  # a status_url that answers 204


@dataclass
class BrowserPage:
    page: Page
    errors: list[str] = field(default_factory=list)
    shots: Path = Path()

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed: apt-get install chromium " \
                       "(scripts/setup.sh --test does it; never `playwright install`)"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    receiver = await webhook_receiver()
    site = web.TCPSite(receiver, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{receiver.addresses[0][1]}/hook"
    try:
        async with running_platform(tmp_path_factory.mktemp("console"),
                                    routes(hook_url)) as running:
            running.platform.config.projects += [Project("p1", "t1"), Project("p2", "t2")]
            assert running.platform.listening is not None
            host, port = running.platform.listening.https
            yield Console(running, f"https://{host}:{port}", hook_url)
    finally:
        await receiver.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser: Browser, console: Console, tmp_path: Path) -> AsyncIterator[BrowserPage]:
    context = await browser.new_context(ignore_https_errors=True, base_url=console.url,
                                        viewport={"width": 1200, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    opened = BrowserPage(page, shots=tmp_path)
    page.on("pageerror", lambda error: opened.errors.append(f"page error: {error}"))
    page.on("console", lambda message: opened.errors.append(f"console: {message.text}")
            if message.type == "error" else None)
    try:
        yield opened
    finally:
        await context.close()


async def sign_in(tab: BrowserPage, project: str = "p1", token: str = "t1") -> None:
    await tab.page.goto("/console/")
    await tab.page.get_by_label("Project id").fill(project)
    await tab.page.get_by_label("Token").fill(token)
    await tab.page.get_by_role("button", name="Sign in").click()


async def open_fresh_recording(tab: BrowserPage, console: Console, tmp_path: Path,
                               service: str) -> str:
    """A 3 s sipp call to `service` (which records it) while the list is open; its recording's
    row appears live, then the recording's page is opened; returns its id."""
    page = tab.page
    await expect(page.locator("#live-status")).to_have_text("live")
    store = console.running.platform.recordings
    before = {row.id for row in (await store.list("p1", page_size=100))[0]}
    caller = start_caller(console, tmp_path, service, 3.0)
    # the new recording shows up while it records, without reloading the page
    row = page.locator("#recordings tbody tr").first
    await expect(row.locator(".state")).to_have_text("recording")
    rec_id = await row.get_attribute("data-id")
    assert rec_id is not None and rec_id not in before
    await tab.shot("1-recording-live")
    result = await caller
    assert result.ok, result.describe()
    await expect(page.locator(f'tr[data-id="{rec_id}"] .state')).to_have_text("finished")
    await tab.shot("2-list")
    await page.locator(f'tr[data-id="{rec_id}"] a').click()
    await expect(page).to_have_url(f"{console.url}/console/recordings/{rec_id}")
    await expect(page.locator('#meta dd[data-field="state"]')).to_have_text("finished")
    return rec_id


def start_caller(console: Console, tmp_path: Path, service: str, seconds: float
                 ) -> asyncio.Task[Any]:
    """A sipp call to `service` streaming a tone (looped) for `seconds`, then BYE."""
    stream = g711_stream(audio.tone(CALLER_HZ, 1.0, dbfs=-12), tmp_path / "tone.ulaw",
                         loops=-1)
    block = free_port_range(8)
    return asyncio.create_task(run_sipp(
        "uac_stream_bye", console.running.target, service=service, local_port=block.start,
        media_port=block.start + 4, keys={"stream": stream},
        extra_args=["-d", str(int(seconds * 1000))], timeout=60))


async def canvas_ink(page: Page, channel: int) -> int:
    """How many pixels of a waveform canvas are drawn (not transparent)."""
    return int(await page.evaluate(
        """(channel) => {
            const canvas = document.querySelector(`.wave canvas[data-channel="${channel}"]`);
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width,
                                                              canvas.height).data;
            let ink = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
            return ink;
        }""", channel))


async def test_fresh_recording_appears_plays_draws_and_is_deleted(
        tab: BrowserPage, console: Console, tmp_path: Path) -> None:
    page = tab.page
    await sign_in(tab)
    await expect(page.get_by_role("heading", name="Recordings")).to_be_visible()
    rec_id = await open_fresh_recording(tab, console, tmp_path, "rec")
    store = console.running.platform.recordings
    stored = await store.get(rec_id)
    assert stored is not None and stored.project_id == "p1" and stored.channels == 2
    await expect(page.locator('#meta dd[data-field="who-is-where"]')).to_have_text(
        "Left: the caller (sipp); Right: what the platform plays")
    # the status_url webhooks, as delivered (the page polls while one is on its way)
    await expect(page.locator("#deliveries tbody tr")).to_have_count(2)
    await expect(page.locator("#deliveries tbody tr").last).to_contain_text("finished")
    await expect(page.locator("#deliveries tbody tr").last).to_contain_text("delivered")
    # the player streams the file: its duration is the file's
    samples, rate = audio.decode_audio(stored.path)
    file_seconds = len(samples) / rate
    await page.wait_for_function(
        "() => Number.isFinite(document.querySelector('#player').duration)")
    player_seconds = await page.evaluate("document.querySelector('#player').duration")
    assert abs(player_seconds - file_seconds) <= 0.5
    await page.evaluate("document.querySelector('#player').play()")
    await page.wait_for_function("() => document.querySelector('#player').currentTime > 0.3")
    await page.evaluate("document.querySelector('#player').pause()")
    # one waveform per channel, drawn from the server's peaks: the caller's tone on the left
    await expect(page.locator(".wave canvas")).to_have_count(2)
    assert await canvas_ink(page, 0) > 1000
    # click the middle of the waveform: the player seeks there
    box = await page.locator('.wave canvas[data-channel="0"]').bounding_box()
    assert box is not None
    await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    position = await page.evaluate("document.querySelector('#player').currentTime")
    assert abs(position - player_seconds / 2) < 0.25
    # and from the keyboard: the waveform is a labelled slider
    wave = page.get_by_role("slider", name=re.compile(r"^Waveform, Left: the caller"))
    await wave.focus()
    await page.keyboard.press("Home")
    assert await page.evaluate("document.querySelector('#player').currentTime") == 0
    await page.keyboard.press("ArrowRight")  # 5 s on: the end of this 3 s file
    position = await page.evaluate("document.querySelector('#player').currentTime")
    assert position == pytest.approx(player_seconds, abs=0.05)
    await tab.shot("3-recording-page")

    await page.get_by_role("button", name="Delete…").click()
    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(page).to_have_url(f"{console.url}/console/")
    await expect(page.locator(f'tr[data-id="{rec_id}"]')).to_have_count(0)
    assert await store.get(rec_id) is None
    assert not Path(stored.path).exists()
    assert await console.running.platform.recorder.webhooks.queue.deliveries(rec_id) == []

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Project id")).to_be_visible()
    assert (await page.request.get("/console/api/recordings")).status == 401
    assert tab.errors == []


async def test_live_call_buttons_pause_and_resume_a_real_recording(
        tab: BrowserPage, console: Console, tmp_path: Path) -> None:
    page = tab.page
    platform = console.running.platform
    engine = platform.recorder
    events: list[tuple[str, int]] = []  # (state, media frames seen on the call by then)
    frames = [0]
    changed = asyncio.Event()

    def on_event(project_id: str, params: dict[str, Any]) -> None:
        events.append((params["state"], frames[0]))
        changed.set()

    async def wait_state(state: str) -> int:
        async with asyncio.timeout(WAIT_MS / 1000):
            while not any(s == state for s, _ in events):
                changed.clear()
                await changed.wait()
        return next(f for s, f in events if s == state)

    async def wait_frames(count: int) -> None:
        target = frames[0] + count
        async with asyncio.timeout(WAIT_MS / 1000):
            while frames[0] < target:
                await asyncio.sleep(0.02)

    unsubscribe = engine.on_event(on_event)
    await sign_in(tab)
    index = len(console.running.observed)
    caller = start_caller(console, tmp_path, "listen", 30.0)
    try:
        async with asyncio.timeout(WAIT_MS / 1000):
            while len(console.running.observed) <= index:
                await asyncio.sleep(0.02)
        call = console.running.observed[index].call
        call.add_tap(lambda speak, listen: frames.__setitem__(0, frames[0] + 1))
        call_row = page.locator(f'#calls tr[data-call-id="{call.id}"]')
        await call_row.get_by_role("button", name=f"Start recording call {call.id}").click()
        await wait_state("recording")
        await wait_frames(50)  # a second of the caller's tone
        await call_row.get_by_role("button", name="Pause recording").click()
        paused_at = await wait_state("paused")
        await expect(call_row.locator(".live-recording .state-paused")).to_be_visible()
        await tab.shot("1-paused")
        await wait_frames(60)  # 1.2 s paused, on the platform's media clock
        await call_row.get_by_role("button", name="Resume recording").click()
        await wait_state_after(events, changed, "recording", "paused")
        resumed_at = [f for s, f in events if s == "recording"][-1]
        await wait_frames(50)
        await call_row.get_by_role("button", name="Stop recording").click()
        await wait_state("finished")
    finally:
        unsubscribe()
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
    rec_id = next(iter({r.id for r in (await engine.store.list("p1", page_size=1))[0]}))
    row = await engine.store.get(rec_id)
    assert row is not None and row.state == "finished" and row.call_id == call.id
    samples, rate = audio.decode_audio(row.path)
    left = samples[:, 0]
    spans = audio.active_spans(left, rate, threshold_dbfs=-40)
    assert len(spans) == 2, spans  # tone, the paused silence, tone
    silence = spans[1][0] - spans[0][1]
    assert silence == pytest.approx((resumed_at - paused_at) * 0.02, abs=0.15)
    assert [s for s, _ in events] == ["recording", "paused", "recording", "finished"]
    assert tab.errors == []


async def wait_state_after(events: list[tuple[str, int]], changed: asyncio.Event, state: str,
                           after: str) -> None:
    """Wait for `state` later than the last `after` event."""
    async with asyncio.timeout(WAIT_MS / 1000):
        while True:
            names = [s for s, _ in events]
            if after in names and state in names[len(names) - names[::-1].index(after):]:
                return
            changed.clear()
            await changed.wait()


async def test_bridged_recording_shows_who_is_on_each_channel(
        tab: BrowserPage, console: Console, tmp_path: Path) -> None:
    page = tab.page
    stream = g711_stream(audio.tone(CALLEE_HZ, 1.0, dbfs=-12), tmp_path / "callee.ulaw",
                         loops=-1)
    async with start_sipp_uas("uas_answer", media_port=free_port_range(4).start,
                              keys={"stream": stream}) as callee:
        record = {"format": "wav", "stereo": True, "direction": "both",
                  "status_url": console.hook_url}
        console.running.platform.config.routes.insert(0, Route("bridge", swml=swml(
            {"record_call": record}, {"connect": {"to": callee.uri("bob"), "timeout": 20}})))
        await sign_in(tab)
        rec_id = await open_fresh_recording(tab, console, tmp_path, "bridge")
        require_pass(await callee.wait(timeout=20))
    legend = page.locator('#meta dd[data-field="who-is-where"]')
    callee_is = r"Right: the callee \(sip:bob@127\.0\.0\.1:\d+\)"
    await expect(legend).to_have_text(re.compile(rf"Left: the caller \(sipp\); {callee_is}"))
    await expect(page.locator('#meta dd[data-field="bridged-to"]')).not_to_be_empty()
    await expect(page.locator(".wave span")).to_have_text(
        ["Left: the caller (sipp)", re.compile(callee_is)])
    # each party on its channel: both waveforms are drawn
    assert await canvas_ink(page, 0) > 1000 and await canvas_ink(page, 1) > 1000
    await expect(page.locator("#deliveries tbody tr").last).to_contain_text("delivered")
    await page.evaluate("document.querySelector('#player').currentTime = 1.5")
    await tab.shot("3-bridged-recording")
    stored = await console.running.platform.recordings.get(rec_id)
    assert stored is not None and stored.channels == 2

    # back to the list: search by the call id, then filter by state
    await page.get_by_role("link", name="All recordings").click()
    await page.get_by_label("Call or control id").fill(stored.call_id)
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#recordings tbody tr")).to_have_count(1)
    await expect(page.locator(f'#recordings tr[data-id="{rec_id}"]')).to_have_count(1)
    await page.get_by_label("State").select_option("error")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#recordings tbody tr")).to_have_count(0)
    await expect(page.locator("#no-recordings")).to_be_visible()
    assert tab.errors == []


async def test_wrong_token_is_refused(tab: BrowserPage, console: Console) -> None:
    page = tab.page
    await sign_in(tab, token="not-the-token")
    await expect(page.get_by_role("alert")).to_have_text("Wrong project id or token.")
    await expect(page.get_by_role("heading", name="Recordings")).to_have_count(0)
    cookies = await page.context.cookies()
    assert [c for c in cookies if c["name"] == "callbox_console"] == []
    response = await page.request.get("/console/api/recordings")
    assert response.status == 401
    await tab.shot("refused")
    # the document's own 401 is reported by chromium as a failed load: nothing else
    assert all("status of 401" in error for error in tab.errors), tab.errors
