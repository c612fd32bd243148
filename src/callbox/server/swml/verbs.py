"""The basic SWML verbs: answer, play, hangup, sleep, set, unset."""

from __future__ import annotations

import asyncio
from typing import Any

from callbox.server.swml.runner import StopScript, SwmlError, SwmlRunner, verb
from callbox.server.tasks import spawn


def _number(params: dict[str, Any], key: str, default: float | None = None) -> float | None:
    value = params.get(key, default)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SwmlError(f"{key} must be a number, got {value!r}") from None


def _object(verb_name: str, params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise SwmlError(f"{verb_name} takes an object, got {params!r}")
    return params


@verb("answer")
async def answer(runner: SwmlRunner, params: Any) -> None:
    params = _object("answer", params)
    runner.call.answer()
    max_duration = _number(params, "max_duration")
    if max_duration:
        call = runner.call

        async def limit() -> None:
            await asyncio.sleep(max_duration)
            await call.hangup("max_duration")

        spawn(limit(), name=f"max-duration-{call.id}")


@verb("play")
async def play(runner: SwmlRunner, params: Any) -> None:
    if isinstance(params, str):
        params = {"url": params}
    params = _object("play", params)
    urls = params.get("urls") or ([params["url"]] if params.get("url") else [])
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise SwmlError("play needs url (a string) or urls (a list of strings)")
    volume = _number(params, "volume", 0.0) or 0.0
    runner.call.answer()  # playing to an unanswered call answers it, as SignalWire does
    operation = await runner.call.play(urls, volume_db=volume)
    await operation.wait()


@verb("hangup")
async def hangup(runner: SwmlRunner, params: Any) -> None:
    params = _object("hangup", params)
    await runner.call.hangup(str(params.get("reason", "hangup")))
    raise StopScript


@verb("sleep")
async def sleep(runner: SwmlRunner, params: Any) -> None:
    """`{"sleep": 1500}` or `{"sleep": {"duration": 1500}}`: milliseconds."""
    duration: Any = params.get("duration") if isinstance(params, dict) else params
    try:
        seconds = float(duration) / 1000
    except (TypeError, ValueError):
        raise SwmlError(f"sleep takes milliseconds, got {duration!r}") from None
    ended = asyncio.ensure_future(runner.call.wait_ended())
    try:
        await asyncio.wait_for(asyncio.shield(ended), timeout=max(0.0, seconds))
    except TimeoutError:
        pass
    finally:
        ended.cancel()


@verb("set")
async def set_variables(runner: SwmlRunner, params: Any) -> None:
    runner.vars.update(_object("set", params))


@verb("unset")
async def unset_variables(runner: SwmlRunner, params: Any) -> None:
    names = [params] if isinstance(params, str) else params
    if not isinstance(names, list):
        raise SwmlError("unset takes a variable name or a list of names")
    for name in names:
        runner.vars.pop(str(name), None)
