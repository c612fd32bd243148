"""Handles on running plays, recordings, collects and digit sends: control them, wait for
their end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from callbox.relay.channel import CallHandle, Unsubscribe
from callbox.relay.events import RelayError, RelayEvent
from callbox.wire import collect as input_wire
from callbox.wire import relay as wire
from callbox.wire.recording import TERMINAL_STATES as RECORD_TERMINAL_STATES

log = logging.getLogger(__name__)

Completion = Callable[[RelayEvent], Awaitable[Any] | Any]


class Action:
    """A running operation on a call, known by its `control_id`.

    `wait()` returns the terminal event (a `RelayEvent`); `result` holds it once there;
    `state` is the last state reported; `on_completed` (sync or async) gets the terminal event.
    """

    terminal_states: ClassVar[tuple[str, ...]] = ()
    method_prefix: ClassVar[str] = ""  # the command that starts it; its controls add a suffix

    def __init__(self, call: CallHandle, control_id: str,
                 on_completed: Completion | None = None) -> None:
        self.call = call
        self.control_id = control_id
        self.state = ""
        self.result: RelayEvent | None = None
        self.reply: dict[str, Any] = {}  # the result of the command that started it
        self.events: list[RelayEvent] = []
        self._on_completed = on_completed
        self._done: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()
        self._unsubscribe: Unsubscribe | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.control_id} {self.state or 'starting'}>"

    @property
    def is_done(self) -> bool:
        return self._done.done()

    async def wait(self, timeout: float | None = None) -> RelayEvent:
        """The terminal event; `TimeoutError` after `timeout` seconds (the action goes on)."""
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def start(self, params: Mapping[str, Any]) -> None:
        """Send the command that starts the action (`calling.play`, `calling.record`) with
        `params`. Its events are taken from before it goes out (the first may beat the reply);
        when the command fails, it raises and `wait()` raises the same."""
        self._unsubscribe = self.call.channel.subscribe(self.call.call_id, self._on_event,
                                                        self.control_id)
        try:
            self.reply = await self.call.execute(self.method_prefix,
                                                 {"control_id": self.control_id, **params})
        except BaseException as exc:
            self._stop_listening()
            self._fail(exc if isinstance(exc, Exception) else RelayError("cancelled"))
            raise

    # -- events ---------------------------------------------------------------------------

    def ends_with(self, event: RelayEvent) -> bool:
        """True when `event` is the action's terminal event (by default: a terminal state)."""
        return event.state in self.terminal_states

    def _on_event(self, event: RelayEvent) -> None:
        self.events.append(event)
        self.state = event.state
        if self.ends_with(event) and not self._done.done():
            self.result = event
            self._done.set_result(event)
            self._stop_listening()
            if self._on_completed is not None:
                try:
                    outcome = self._on_completed(event)
                    if asyncio.iscoroutine(outcome):
                        self.call.channel.spawn(outcome, f"on-completed-{self.control_id}")
                except Exception:
                    log.exception("on_completed callback of %s failed", self.control_id)

    def _stop_listening(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _fail(self, exc: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # retrieved: the command that failed raised it already

    async def _command(self, suffix: str, **params: Any) -> dict[str, Any]:
        if self.is_done:
            return {}
        return await self.call.execute(f"{self.method_prefix}.{suffix}",
                                       {"control_id": self.control_id, **params})


class PlayAction(Action):
    """A `calling.play`: `stop()`, `pause()`, `resume()`, `volume(db)`, `wait()`."""

    terminal_states = wire.PLAY_TERMINAL_STATES
    method_prefix = wire.PLAY

    async def stop(self) -> dict[str, Any]:
        return await self._command("stop")

    async def pause(self) -> dict[str, Any]:
        return await self._command("pause")

    async def resume(self) -> dict[str, Any]:
        return await self._command("resume")

    async def volume(self, volume: float) -> dict[str, Any]:
        """Set the volume in dB (-40 to +40) relative to the source."""
        return await self._command("volume", volume=volume)


class RecordAction(Action):
    """A `calling.record`: `stop()`, `pause(behavior)`, `resume()`, `wait()`.

    `wait()` returns the event with state `finished`, `no_input` or `error`; its `.url`,
    `.duration` and `.size` describe the file (`params["record"]["url"]` too).
    """

    terminal_states = RECORD_TERMINAL_STATES
    method_prefix = wire.RECORD

    def __init__(self, call: CallHandle, control_id: str,
                 on_completed: Completion | None = None) -> None:
        super().__init__(call, control_id, on_completed)
        self.url = ""

    def _on_event(self, event: RelayEvent) -> None:
        if event.url:
            self.url = event.url
        super()._on_event(event)

    async def stop(self) -> dict[str, Any]:
        return await self._command("stop")

    async def pause(self, behavior: str = "silence") -> dict[str, Any]:
        """`silence` keeps the timeline (silence is recorded); `skip` leaves the paused time
        out of the file."""
        return await self._command("pause", behavior=behavior)

    async def resume(self) -> dict[str, Any]:
        return await self._command("resume")


class StandaloneCollectAction(Action):
    """A `calling.collect`: `stop()`, `start_input_timers()`, `wait()`.

    `wait()` returns the final `calling.call.collect` event; its `.result` is
    ``{"type": "digit", "params": {"digits": "12", "terminator": "#"}}``, ``{"type":
    "no_input"}`` or ``{"type": "error"}`` (`.digits`, `.terminator` read it). Partial results
    (``final: false``) are in `events` but do not end it.
    """

    method_prefix = input_wire.COLLECT

    def ends_with(self, event: RelayEvent) -> bool:
        return event.event_type == input_wire.CALL_COLLECT and \
            input_wire.is_final_collect(event.params)

    async def stop(self) -> dict[str, Any]:
        return await self._command("stop")

    async def start_input_timers(self) -> dict[str, Any]:
        """Start the initial timeout of a collect started with ``start_input_timers=False``."""
        return await self.call.execute(input_wire.COLLECT_START_INPUT_TIMERS,
                                       {"control_id": self.control_id})


class CollectAction(StandaloneCollectAction):
    """A `calling.play_and_collect`: as `StandaloneCollectAction`, plus `volume(db)` for the
    prompt. Its events include the prompt's `calling.call.play` events (same control_id)."""

    method_prefix = input_wire.PLAY_AND_COLLECT

    async def volume(self, volume: float) -> dict[str, Any]:
        """Set the prompt's volume in dB (-40 to +40)."""
        return await self._command("volume", volume=volume)


class SendDigitsAction(Action):
    """A `calling.send_digits`; it ends with `calling.call.send_digits` `finished` (or
    `error` when the call ended before the digits went out)."""

    terminal_states = input_wire.SEND_DIGITS_TERMINAL_STATES
    method_prefix = input_wire.SEND_DIGITS
