"""`callbox serve --loop` / CALLBOX_EVENT_LOOP: pick uvloop or the stdlib event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from callbox import cli


@pytest.fixture(autouse=True)
def _restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def test_asyncio_keeps_the_stdlib_loop() -> None:
    asyncio.set_event_loop_policy(None)
    cli.use_event_loop("asyncio")
    assert type(asyncio.get_event_loop_policy()).__module__.startswith("asyncio")


def test_uvloop_and_auto_use_uvloop_when_installed() -> None:
    for choice in ("uvloop", "auto"):
        asyncio.set_event_loop_policy(None)
        cli.use_event_loop(choice)
        assert type(asyncio.get_event_loop_policy()).__module__.startswith("uvloop")


def test_the_flag_is_parsed_and_a_bad_environment_value_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["serve", "--loop", "asyncio"])
    assert args.loop == "asyncio"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--loop", "trio"])
    monkeypatch.setenv(cli.EVENT_LOOP_ENV, "trio")
    assert cli.main(["serve"]) == 2
    assert "CALLBOX_EVENT_LOOP must be one of auto, uvloop, asyncio" in capsys.readouterr().err
