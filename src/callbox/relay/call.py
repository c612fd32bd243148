"""A call as a RELAY client sees it: commands out, events in."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from callbox.relay.actions import (
    Action,
    CollectAction,
    Completion,
    PlayAction,
    RecordAction,
    SendDigitsAction,
    StandaloneCollectAction,
)
from callbox.relay.channel import RelayChannel
from callbox.relay.events import RelayError, RelayEvent
from callbox.wire import dial as dial_wire
from callbox.wire import relay as wire

log = logging.getLogger(__name__)

Listener = Callable[[RelayEvent], Awaitable[Any] | Any]
A = TypeVar("A", bound=Action)

# "the call is gone": hangup() treats these as done, other commands raise
GONE_CODES = (404, 410)


class Call:
    """A call of this client: offered to it (`calling.call.receive`) or dialled by it
    (`RelayClient.dial`, direction "outbound").

    Attributes: `call_id`, `node_id`, `project_id`, `context`, `tag`, `direction`, `device`
    (``{"type": "sip", "params": {"from_number", "to_number", "from", "to"}}``), `state`
    (created, ringing, answered, ending, ended) and, once ended, `end_reason`.

    `play()`, `record()`, `collect()` and `play_and_collect()` return their action once the
    server accepted the command; they do not wait for the end (use `await action.wait()`), as
    in SignalWire's own SDK. `send_digits()` returns once the digits went out.

    It talks to the server through `channel` (the client), and takes the events of its call
    from the moment it is made.
    """

    def __init__(self, channel: RelayChannel, params: Mapping[str, Any]) -> None:
        self.channel = channel
        self.call_id = str(params.get("call_id", ""))
        self.node_id = str(params.get("node_id", ""))
        self.project_id = str(params.get("project_id", ""))
        self.context = str(params.get("context", ""))
        self.tag = str(params.get("tag", ""))
        self.direction = str(params.get("direction", "inbound"))
        self.segment_id = str(params.get("segment_id", ""))
        device = params.get("device")
        self.device: dict[str, Any] = dict(device) if isinstance(device, Mapping) else {}
        self.state = str(params.get("call_state", "created"))
        self.end_reason = ""
        self._listeners: dict[str, list[Listener]] = {}
        self._actions: dict[str, Action] = {}
        self._ended: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()
        channel.subscribe(self.call_id, self._on_event)

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.state}>"

    @property
    def from_number(self) -> str:
        return str(self.device.get("params", {}).get("from_number", ""))

    @property
    def to_number(self) -> str:
        return str(self.device.get("params", {}).get("to_number", ""))

    @property
    def active_actions(self) -> int:
        return sum(1 for action in self._actions.values() if not action.is_done)

    # -- events -----------------------------------------------------------------------------

    def on(self, event_type: str, listener: Listener) -> Listener:
        """Call `listener(event)` (sync or async) for every event of `event_type` on this call
        (e.g. "calling.call.state", "calling.call.play", "calling.call.record")."""
        self._listeners.setdefault(event_type, []).append(listener)
        return listener

    def off(self, event_type: str, listener: Listener) -> None:
        listeners = self._listeners.get(event_type, [])
        if listener in listeners:
            listeners.remove(listener)

    async def wait_for(self, event_type: str,
                       predicate: Callable[[RelayEvent], bool] | None = None,
                       timeout: float | None = None) -> RelayEvent:
        """The next event of `event_type` on this call (that `predicate` accepts)."""
        future: asyncio.Future[RelayEvent] = asyncio.get_running_loop().create_future()

        def take(event: RelayEvent) -> None:
            if not future.done() and (predicate is None or predicate(event)):
                future.set_result(event)

        self.on(event_type, take)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.off(event_type, take)

    async def wait_for_ended(self, timeout: float | None = None) -> RelayEvent:
        """The `ended` state event (at once if the call has ended already)."""
        return await asyncio.wait_for(asyncio.shield(self._ended), timeout)

    def _on_event(self, event: RelayEvent) -> None:
        if event.event_type == wire.CALL_STATE:
            self.state = event.state or self.state
            if self.state in ("ending", "ended"):
                self.end_reason = str(event.params.get("end_reason", "") or self.end_reason)
            if self.state == "ended" and not self._ended.done():
                self._ended.set_result(event)
        for listener in tuple(self._listeners.get(event.event_type, ())):
            try:
                outcome = listener(event)
                if asyncio.iscoroutine(outcome):
                    self.channel.spawn(outcome, f"listener-{event.event_type}")
            except Exception:
                log.exception("listener for %s on call %s failed", event.event_type,
                              self.call_id)

    # -- commands ---------------------------------------------------------------------------

    async def execute(self, method: str, params: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Send a calling command for this call (`node_id` and `call_id` filled in) and
        return its result; `RelayError` for a non-2xx code."""
        payload = {"node_id": self.node_id, "call_id": self.call_id, **(params or {})}
        return await self.channel.execute(method, payload)

    async def answer(self, max_duration: float | None = None) -> dict[str, Any]:
        """Answer; `max_duration` (seconds) ends the call after that long."""
        params = {"max_duration": max_duration} if max_duration is not None else {}
        return await self.execute(wire.ANSWER, params)

    async def hangup(self, reason: str = "hangup") -> dict[str, Any]:
        """End the call. Hanging up a call that has already ended is not an error."""
        try:
            return await self.execute(wire.END, {"reason": reason})
        except RelayError as exc:
            if exc.code in GONE_CODES:
                return {}
            raise

    async def connect(self, devices: list[list[dict[str, Any]]], *,
                      ringback: list[dict[str, Any]] | None = None, tag: str | None = None,
                      max_duration: int | None = None,
                      max_price_per_minute: float | None = None,
                      status_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """Bridge this call to the first of `devices` to answer (outer list serial, inner
        list parallel; ``{"type": "sip", "params": {"to": ...}}`` or ``{"type": "phone",
        "params": {"to_number": ...}}``). `ringback` is a play list heard meanwhile;
        `max_duration` in minutes.

        Returns the server's result once the command is accepted, as SignalWire's SDK does;
        the outcome comes as `calling.call.connect` events (`connect_state` connecting,
        connected with `peer`, failed, disconnected): see `wait_for`.
        """
        params: dict[str, Any] = {"devices": devices, **extra}
        for key, value in (("ringback", ringback), ("tag", tag),
                           ("max_duration", max_duration),
                           ("max_price_per_minute", max_price_per_minute),
                           ("status_url", status_url)):
            if value is not None:
                params[key] = value
        return await self.execute(dial_wire.CONNECT, params)

    async def disconnect(self) -> dict[str, Any]:
        """Part a connected call from its peer; both calls go on."""
        return await self.execute(dial_wire.DISCONNECT)

    async def _start(self, action: A, params: dict[str, Any]) -> A:
        self._actions[action.control_id] = action
        try:
            await action.start(params)
        except BaseException:
            self._actions.pop(action.control_id, None)
            raise
        return action

    async def play(self, media: list[dict[str, Any]], volume: float | None = None, *,
                   loop: int | None = None, direction: str | None = None,
                   control_id: str | None = None,
                   on_completed: Completion | None = None) -> PlayAction:
        """Play `media` (a list of ``{"type": "tts"|"audio"|"silence"|"ringtone", ...}``;
        the flat form ``{"type": "tts", "text": "..."}`` is fine too).

        Returns once the server has started the play; `await action.wait()` for its end.
        `volume` is in dB; `loop` 0 plays until stopped.
        """
        params: dict[str, Any] = {"play": list(media)}
        if volume is not None:
            params["volume"] = volume
        if loop is not None:
            params["loop"] = loop
        if direction is not None:
            params["direction"] = direction
        action = PlayAction(self, control_id or str(uuid.uuid4()), on_completed)
        return await self._start(action, params)

    async def play_tts(self, text: str, *, language: str | None = None,
                       gender: str | None = None, voice: str | None = None,
                       volume: float | None = None,
                       on_completed: Completion | None = None) -> PlayAction:
        tts: dict[str, Any] = {"text": text}
        for key, value in (("language", language), ("gender", gender), ("voice", voice)):
            if value is not None:
                tts[key] = value
        return await self.play([{"type": "tts", "params": tts}], volume,
                               on_completed=on_completed)

    async def play_audio(self, url: str, *, volume: float | None = None,
                         on_completed: Completion | None = None) -> PlayAction:
        return await self.play([{"type": "audio", "params": {"url": url}}], volume,
                               on_completed=on_completed)

    async def play_silence(self, duration: float, *,
                           on_completed: Completion | None = None) -> PlayAction:
        return await self.play([{"type": "silence", "params": {"duration": duration}}],
                               on_completed=on_completed)

    async def play_ringtone(self, name: str = "us", *, duration: float | None = None,
                            volume: float | None = None,
                            on_completed: Completion | None = None) -> PlayAction:
        ring: dict[str, Any] = {"name": name}
        if duration is not None:
            ring["duration"] = duration
        return await self.play([{"type": "ringtone", "params": ring}], volume,
                               on_completed=on_completed)

    async def record(self, audio: dict[str, Any] | None = None, control_id: str | None = None,
                     on_completed: Completion | None = None) -> RecordAction:
        """Start recording; `audio` holds the record settings (format, direction, stereo,
        beep, terminators, initial_timeout, end_silence_timeout, input_sensitivity,
        max_length, status_url). Returns once the server accepted the command."""
        action = RecordAction(self, control_id or str(uuid.uuid4()), on_completed)
        return await self._start(action, {"record": {"audio": dict(audio or {})}})

    # -- input ------------------------------------------------------------------------------

    async def collect(self, *, digits: dict[str, Any] | None = None,
                      speech: dict[str, Any] | None = None,
                      initial_timeout: float | None = None,
                      partial_results: bool | None = None, continuous: bool | None = None,
                      send_start_of_input: bool | None = None,
                      start_input_timers: bool | None = None, control_id: str | None = None,
                      on_completed: Completion | None = None,
                      **kwargs: Any) -> StandaloneCollectAction:
        """Collect digits: `digits` is ``{"max": N, "terminators": "#", "digit_timeout":
        seconds}``; `initial_timeout` (seconds) ends it with `no_input` when nothing comes.
        `await action.wait()` returns the final `calling.call.collect` event (its `.digits`,
        `.terminator`, `.result`). The platform does not recognise speech."""
        params: dict[str, Any] = {}
        for key, value in (("digits", digits), ("speech", speech),
                           ("initial_timeout", initial_timeout),
                           ("partial_results", partial_results), ("continuous", continuous),
                           ("send_start_of_input", send_start_of_input),
                           ("start_input_timers", start_input_timers)):
            if value is not None:
                params[key] = value
        params.update(kwargs)
        action = StandaloneCollectAction(self, control_id or str(uuid.uuid4()), on_completed)
        return await self._start(action, params)

    async def play_and_collect(self, media: list[dict[str, Any]], collect: dict[str, Any], *,
                               volume: float | None = None, control_id: str | None = None,
                               on_completed: Completion | None = None,
                               **kwargs: Any) -> CollectAction:
        """Play `media` (as `play()`) and collect digits (`collect` as the params of
        `collect()`): a digit pressed during the prompt stops it and counts; the initial
        timeout starts when the prompt ends."""
        params: dict[str, Any] = {"play": list(media), "collect": dict(collect)}
        if volume is not None:
            params["volume"] = volume
        params.update(kwargs)
        action = CollectAction(self, control_id or str(uuid.uuid4()), on_completed)
        return await self._start(action, params)

    async def prompt_tts(self, text: str, collect: dict[str, Any], *,
                         language: str | None = None, gender: str | None = None,
                         voice: str | None = None, volume: float | None = None,
                         on_completed: Completion | None = None) -> CollectAction:
        tts: dict[str, Any] = {"text": text}
        for key, value in (("language", language), ("gender", gender), ("voice", voice)):
            if value is not None:
                tts[key] = value
        return await self.play_and_collect([{"type": "tts", "params": tts}], collect,
                                           volume=volume, on_completed=on_completed)

    async def prompt_audio(self, url: str, collect: dict[str, Any], *,
                           volume: float | None = None,
                           on_completed: Completion | None = None) -> CollectAction:
        return await self.play_and_collect([{"type": "audio", "params": {"url": url}}],
                                           collect, volume=volume, on_completed=on_completed)

    async def send_digits(self, digits: str, *, control_id: str | None = None
                          ) -> dict[str, Any]:
        """Send DTMF `digits` (0-9 * # A-D; `w` waits 0.5 s, `W` 1 s) as RFC 4733 events.
        Returns the command's result once the digits went out; `RelayError` if the call
        ended first."""
        action = SendDigitsAction(self, control_id or str(uuid.uuid4()))
        await self._start(action, {"digits": digits})
        event = await action.wait()
        if event.state != "finished":
            raise RelayError(f"send_digits: the digits were not sent ({event.state})")
        return action.reply
