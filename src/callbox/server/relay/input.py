"""The digit-input commands: `calling.collect` (+ `.stop`, `.start_input_timers`),
`calling.play_and_collect` (+ `.stop`, `.volume`) and `calling.send_digits`.

A collect is a `DigitCollector` (callbox.server.media.digits) fed by the call's received digits
and by the media clock (a frame tap: its timeouts count frames). `play_and_collect` also plays
a prompt under the same control_id (its `calling.call.play` events too): the first digit stops
the prompt and counts, and the initial timeout starts when the prompt ends. Each collect ends
with one `calling.call.collect` event (``final: true``) to the session that started it: digits,
`no_input`, or `error` when the call ended first; with `partial_results`, every digit before
that sends one with ``final: false``. `send_digits` answers at once and reports
`calling.call.send_digits` (`finished`, or `error` if the call ended first) once the last
digit went out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from callbox.server.call import Call, CallGone, PlayOperation
from callbox.server.media.digits import CollectResult, DigitCollector, DigitRules, Outcome
from callbox.server.media.sources import MediaError
from callbox.server.relay.calls import CallEntry, PlayControl
from callbox.server.relay.results import (
    REPLY_WITHIN,
    CommandError,
    Handler,
    Result,
    bad_params,
    call_gone,
    find_control,
    ok,
)
from callbox.wire import collect as input_wire
from callbox.wire import relay as wire
from callbox.wire.collect import CollectParams, InputParamError

if TYPE_CHECKING:
    from callbox.server.relay.session import Session

log = logging.getLogger(__name__)

# A client may run this many collects, and have this many digit sends pending, on one call:
# each collect listens to every media tick of the call.
MAX_COLLECTS_PER_CALL = 10
MAX_DIGIT_SENDS_PER_CALL = 10


def result_params(result: CollectResult) -> dict[str, Any]:
    """A collector's result as the event's `result` object."""
    if result.outcome is Outcome.DIGIT:
        return input_wire.digit_result(result.digits, result.terminator)
    if result.outcome is Outcome.NO_INPUT:
        return input_wire.no_input_result()
    return input_wire.error_result()


class CollectControl:
    """One running collect on a call, known by its control_id; `prompt` is the play of a
    `play_and_collect` (None for a plain collect)."""

    def __init__(self, entry: CallEntry, session: Session, control_id: str,
                 params: CollectParams, *, with_prompt: bool,
                 on_done: Callable[[CollectControl], None]) -> None:
        self.entry = entry
        self.session = session
        self.control_id = control_id
        self.params = params
        rules = DigitRules(params.max_digits, params.terminators, params.digit_timeout,
                           params.initial_timeout)
        # with a prompt, the initial timeout waits for the prompt's end
        self.collector = DigitCollector(
            rules, timers_started=params.start_input_timers and not with_prompt)
        self.prompt = PlayControl(session, control_id) if with_prompt else None
        self._on_done = on_done
        self._unsubscribe: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self.collector.done

    def start(self) -> None:
        """Listen to the call's digits, media ticks and end."""
        call = self.entry.call
        self._unsubscribe = [call.on_dtmf(self._on_digit), call.add_tap(self._on_frame),
                             call.on_state(self._on_state)]

    # -- the prompt -----------------------------------------------------------------------

    def prompt_started(self, op: PlayOperation) -> None:
        """The prompt plays: report it; it is stopped at once if a digit came first."""
        assert self.prompt is not None
        self.entry.play_started(self.prompt, op)
        op.done.add_done_callback(lambda _: self._prompt_over())

    def prompt_failed(self, reason: str) -> None:
        """The prompt could not play after the command was answered: the collect ends too."""
        assert self.prompt is not None
        self.entry.play_failed(self.prompt, reason)
        self._finish(self.collector.fail())

    def _prompt_over(self) -> None:
        if self.params.start_input_timers:
            self.collector.start_timers()

    def _stop_prompt(self) -> None:
        prompt = self.prompt
        if prompt is None:
            return
        prompt.stop_requested = True
        if prompt.op is not None:
            prompt.op.playback.stop()

    def set_prompt_volume(self, volume: float) -> None:
        prompt = self.prompt
        if prompt is None:
            return
        if prompt.op is None:
            prompt.volume_requested = volume
        else:
            prompt.op.playback.set_volume(volume)

    # -- input ----------------------------------------------------------------------------

    def _on_digit(self, digit: str) -> None:
        self._stop_prompt()  # barge-in
        result = self.collector.digit(digit)
        if result is not None:
            self._finish(result)
        elif self.params.partial_results and self.collector.digits:
            self._emit(input_wire.digit_result(self.collector.digits), final=False)

    def _on_frame(self, speak: np.ndarray, listen: np.ndarray) -> None:
        result = self.collector.tick()
        if result is not None:
            self._finish(result)

    def _on_state(self, call: Call) -> None:
        if not call.is_active:
            self._finish(self.collector.fail())

    def stop(self) -> None:
        """End now with the digits so far (`no_input` if none)."""
        self._finish(self.collector.stop())

    def discard(self) -> None:
        """Forget the collect without an event (its command failed)."""
        self._stop_listening()
        self.collector.fail()
        self._on_done(self)

    # -- the end --------------------------------------------------------------------------

    def _finish(self, result: CollectResult) -> None:
        if not self._unsubscribe:  # reported already
            return
        self._stop_listening()
        self._stop_prompt()
        self._emit(result_params(result), final=True)
        self._on_done(self)

    def _stop_listening(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _emit(self, result: Mapping[str, Any], *, final: bool) -> None:
        self.session.emit(input_wire.CALL_COLLECT, input_wire.collect_event_params(
            call_id=self.entry.call.id, node_id=self.entry.node_id,
            control_id=self.control_id, result=result, final=final))


class InputCommands:
    """The handlers of the digit-input commands (`handlers()` maps their methods), and the
    collects running on every call by (call id, control_id)."""

    def __init__(self) -> None:
        self.collects: dict[tuple[str, str], CollectControl] = {}
        self.digit_sends: dict[str, int] = {}  # pending, by call id

    def handlers(self) -> dict[str, Handler]:
        return {
            input_wire.COLLECT: self.collect,
            input_wire.COLLECT_STOP: self.collect_stop,
            input_wire.COLLECT_START_INPUT_TIMERS: self.collect_start_input_timers,
            input_wire.PLAY_AND_COLLECT: self.play_and_collect,
            input_wire.PLAY_AND_COLLECT_STOP: self.collect_stop,
            input_wire.PLAY_AND_COLLECT_VOLUME: self.play_and_collect_volume,
            input_wire.SEND_DIGITS: self.send_digits,
        }

    # -- collect --------------------------------------------------------------------------

    async def collect(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                      ) -> Result:
        try:
            collect = CollectParams.parse(params)
            control_id = wire.parse_control_id(params.get("control_id"))
        except (InputParamError, wire.ParamError) as exc:
            raise bad_params(exc) from None
        self._begin(session, entry, control_id, collect, with_prompt=False)
        return ok("Collecting", control_id=control_id)

    async def play_and_collect(self, session: Session, entry: CallEntry,
                               params: Mapping[str, Any]) -> Result:
        try:
            urls = wire.play_urls(params.get("play"))
            volume = wire.parse_volume(params.get("volume"))
            collect = CollectParams.parse(params.get("collect"), "collect.")
            control_id = wire.parse_control_id(params.get("control_id"))
        except (InputParamError, wire.ParamError) as exc:
            raise bad_params(exc) from None
        control = self._begin(session, entry, control_id, collect, with_prompt=True)
        # not `spawn`: an error before the reply is the reply, not a failure to log
        rendering = asyncio.get_running_loop().create_task(
            entry.call.play(urls, volume_db=volume, control_id=control_id),
            name=f"relay-prompt-{control_id}")
        await asyncio.wait({rendering}, timeout=REPLY_WITHIN)
        if not rendering.done():  # still fetching its audio: events tell the rest
            rendering.add_done_callback(lambda task: self._prompt_ready(control, task))
            return ok("Playing and collecting", control_id=control_id)
        error = rendering.exception()
        if error is not None:
            control.discard()
            if isinstance(error, CallGone):
                raise call_gone(entry)
            if isinstance(error, MediaError):
                raise CommandError(wire.CODE_BAD_REQUEST, f"play: {error}")
            raise error
        control.prompt_started(rendering.result())
        return ok("Playing and collecting", control_id=control_id)

    @staticmethod
    def _prompt_ready(control: CollectControl, rendering: asyncio.Task[PlayOperation]) -> None:
        error = None if rendering.cancelled() else rendering.exception()
        if rendering.cancelled() or error is not None:
            if error is not None and not isinstance(error, MediaError | CallGone):
                log.error("prompt %s failed", control.control_id, exc_info=error)
            control.prompt_failed(str(error) if error is not None else "cancelled")
            return
        control.prompt_started(rendering.result())

    def _begin(self, session: Session, entry: CallEntry, control_id: str,
               params: CollectParams, *, with_prompt: bool) -> CollectControl:
        if not entry.call.is_active:
            raise call_gone(entry)
        key = (entry.call.id, control_id)
        if key in self.collects:
            raise CommandError(wire.CODE_BAD_REQUEST,
                               f"control_id {control_id!r} is already collecting on this call")
        if sum(call_id == entry.call.id for call_id, _ in self.collects) >= \
                MAX_COLLECTS_PER_CALL:
            raise CommandError(wire.CODE_BAD_REQUEST, f"at most {MAX_COLLECTS_PER_CALL} "
                               "collects may run on one call")

        def forget(control: CollectControl) -> None:
            if self.collects.get(key) is control:
                del self.collects[key]

        control = CollectControl(entry, session, control_id, params, with_prompt=with_prompt,
                                 on_done=forget)
        self.collects[key] = control
        control.start()
        return control

    def _collect(self, entry: CallEntry, params: Mapping[str, Any]) -> CollectControl:
        return find_control(params, "collect",
                            lambda control_id: self.collects.get((entry.call.id, control_id)))

    async def collect_stop(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                           ) -> Result:
        control = self._collect(entry, params)
        control.stop()
        return ok("Stopped", control_id=control.control_id)

    async def collect_start_input_timers(self, session: Session, entry: CallEntry,
                                         params: Mapping[str, Any]) -> Result:
        control = self._collect(entry, params)
        control.collector.start_timers()
        return ok("Input timers started", control_id=control.control_id)

    async def play_and_collect_volume(self, session: Session, entry: CallEntry,
                                      params: Mapping[str, Any]) -> Result:
        control = self._collect(entry, params)
        if params.get("volume") is None:
            raise CommandError(wire.CODE_BAD_REQUEST, "volume (dB, -40 to 40) is required")
        try:
            volume = wire.parse_volume(params.get("volume"))
        except wire.ParamError as exc:
            raise bad_params(exc) from None
        control.set_prompt_volume(volume)
        return ok("Volume set", control_id=control.control_id, volume=volume)

    # -- send_digits ----------------------------------------------------------------------

    async def send_digits(self, session: Session, entry: CallEntry, params: Mapping[str, Any]
                          ) -> Result:
        try:
            digits = input_wire.parse_digits_to_send(params.get("digits"))
            control_id = wire.parse_control_id(params.get("control_id"))
        except (InputParamError, wire.ParamError) as exc:
            raise bad_params(exc) from None
        call_id = entry.call.id
        if self.digit_sends.get(call_id, 0) >= MAX_DIGIT_SENDS_PER_CALL:
            raise CommandError(wire.CODE_BAD_REQUEST, f"at most {MAX_DIGIT_SENDS_PER_CALL} "
                               "send_digits may wait to be sent on one call")

        def report(sent: bool) -> None:
            left = self.digit_sends.pop(call_id, 1) - 1
            if left:
                self.digit_sends[call_id] = left
            session.emit(input_wire.CALL_SEND_DIGITS, input_wire.send_digits_event_params(
                call_id=call_id, node_id=entry.node_id, control_id=control_id,
                state=input_wire.SEND_DIGITS_FINISHED if sent else
                input_wire.SEND_DIGITS_ERROR))

        try:
            entry.call.send_digits(digits, report)
        except CallGone:
            raise call_gone(entry) from None
        except ValueError as exc:  # the peer has no telephone-event
            raise CommandError(wire.CODE_BAD_REQUEST, f"send_digits: {exc}") from None
        self.digit_sends[call_id] = self.digit_sends.get(call_id, 0) + 1
        return ok("Sending digits", control_id=control_id)
