"""The SWML `connect` verb: ring one or more destinations and bridge the caller to the one who
answers (see bridge.py for the bridge itself).

    {"connect": {"to": "sip:alice@example.com", "timeout": 20}}
    {"connect": {"serial": [{"to": "+15550001"}, {"to": "sip:bob@pbx.example.com"}]}}
    {"connect": {"parallel": [{"to": "..."}, {"to": "..."}], "from": "+15550000"}}
    {"connect": {"serial_parallel": [[{"to": "..."}, {"to": "..."}], [{"to": "..."}]]}}

Exactly one of `to`, `serial`, `parallel`, `serial_parallel`. A destination object takes `to`,
and may override the verb's `from`, `timeout` (seconds of ringing, default 60),
`headers` (custom SIP headers for the INVITE, `[{"name": "X-...", "value": "..."}]`),
`call_state_url` and `call_state_events`. Also: `answer_on_bridge` (answer the caller only when
the callee answers; else the caller is answered first and hears `ringback`, a list of play
URLs, default a ring tone), `max_duration` (seconds, default 4 hours; both calls end then).

As SignalWire does: the verb blocks while the two are bridged. The caller hanging up ends the
callee (and the script); the callee hanging up first lets the script go on with its next verb.
It sets `connect_result` ("connected" or "failed") and `connect_failed_reason` (busy, decline,
noAnswer or error when it failed, else ""). A recording started before (`record_call`) goes
on through the bridge: speak = the caller, listen = the callee (stereo: caller left, callee
right).

`call_state_url` receives each dialled leg's state changes named in `call_state_events`
(created, ringing, answered, ended; default ended) as `calling.call.state` JSON POSTs, through
the platform's webhook queue (signed, retried, no redirects).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from callbox.server.bridge import BridgeEnd, connect
from callbox.server.call import Call, CallState
from callbox.server.dialing import Device, DialFailed, DialLeg
from callbox.server.outbound import NUMBER, OutboundError
from callbox.server.recording.persist import persist
from callbox.server.swml.runner import SwmlError, SwmlRunner, verb
from callbox.server.tasks import spawn
from callbox.server.webhooks import WebhookQueue
from callbox.wire import relay as wire
from callbox.wire.dial import parse_headers

log = logging.getLogger(__name__)

DIALING_KEYS: Final = ("to", "serial", "parallel", "serial_parallel")
DEFAULT_TIMEOUT: Final = 60.0  # seconds of ringing (SignalWire's default)
DEFAULT_MAX_DURATION: Final = 14400.0  # 4 hours
STATE_EVENTS: Final = frozenset({"created", "ringing", "answered", "ended"})
DEFAULT_STATE_EVENTS: Final = frozenset({"ended"})
DESTINATION_KEYS: Final = frozenset({"to", "from", "timeout", "headers", "call_state_url",
                                     "call_state_events"})
SUPPORTED_KEYS: Final = frozenset(DIALING_KEYS) | DESTINATION_KEYS | {
    "answer_on_bridge", "max_duration", "ringback"}


# -- the request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateHook:
    """Where a leg's state changes go, and which ones."""

    url: str
    events: frozenset[str]


@dataclass(frozen=True)
class Destination:
    device: Device
    hook: StateHook | None


@dataclass(frozen=True)
class ConnectRequest:
    groups: tuple[tuple[Destination, ...], ...]  # serial groups of parallel destinations
    answer_on_bridge: bool = False
    ringback: tuple[str, ...] | None = None
    max_duration: float = DEFAULT_MAX_DURATION
    ignored: tuple[str, ...] = ()  # parameters callbox does not support

    @property
    def plan(self) -> list[list[Device]]:
        return [[d.device for d in group] for group in self.groups]


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise SwmlError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise SwmlError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise SwmlError(f"{name} must be more than 0 seconds, got {value!r}")
    return seconds


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise SwmlError(f"{name} must be true or false, got {value!r}")


def _destination_to(value: Any, name: str) -> str:
    if not isinstance(value, str) or not (
            value.strip().lower().startswith("sip:") or NUMBER.fullmatch(value.strip())):
        raise SwmlError(f"{name} must be a number (+15550001) or a sip: URI, got {value!r}")
    return value.strip()


def _caller_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SwmlError(f"{name} must be a string, got {value!r}")
    return value


def _hook(params: Mapping[str, Any], where: str, inherited: StateHook | None
          ) -> StateHook | None:
    url = params.get("call_state_url")
    events = params.get("call_state_events")
    if url is None and events is None:
        return inherited
    if url is None:
        if inherited is None:
            return None  # events without a url: nothing to send
        url = inherited.url
    elif not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise SwmlError(f"{where}call_state_url must be an http(s) URL, got {url!r}")
    if events is None:
        chosen = inherited.events if inherited is not None else DEFAULT_STATE_EVENTS
    else:
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise SwmlError(f"{where}call_state_events must be a list of event names, got "
                            f"{events!r}")
        unknown = sorted(set(events) - STATE_EVENTS)
        if unknown:
            raise SwmlError(f"{where}call_state_events: unknown event(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(STATE_EVENTS))}")
        chosen = frozenset(events)
    return StateHook(url, chosen)


def _destination(entry: Any, where: str, defaults: Destination) -> Destination:
    if not isinstance(entry, Mapping):
        raise SwmlError(f"{where} must be a destination object with `to`, got {entry!r}")
    if "to" not in entry:
        raise SwmlError(f"{where}.to is missing (a number or a sip: URI)")
    base = defaults.device
    device = Device(
        to=_destination_to(entry["to"], f"{where}.to"),
        from_=_caller_id(entry["from"], f"{where}.from") if "from" in entry else base.from_,
        timeout=_seconds(entry["timeout"], f"{where}.timeout") if "timeout" in entry
        else base.timeout,
        headers=_headers(entry["headers"], f"{where}.headers") if "headers" in entry
        else base.headers,
    )
    return Destination(device, _hook(entry, f"{where}.", defaults.hook))


def _headers(value: Any, name: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_headers(value, name)
    except wire.ParamError as exc:
        raise SwmlError(str(exc)) from None


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise SwmlError(f"{name} must be a non-empty list, got {value!r}")
    return value


def parse_connect(params: Any) -> ConnectRequest:
    """Check the verb's parameters; SwmlError names the field that is wrong."""
    if not isinstance(params, Mapping):
        raise SwmlError(f"connect takes an object, got {params!r}")
    given = [key for key in DIALING_KEYS if key in params]
    if len(given) != 1:
        found = f"; got {' and '.join(given)}" if given else ""
        raise SwmlError(f"connect needs exactly one of to, serial, parallel, serial_parallel"
                        f"{found}")
    defaults = Destination(
        Device(to="", from_=_caller_id(params.get("from"), "connect.from"),
               timeout=_seconds(params["timeout"], "connect.timeout") if "timeout" in params
               else DEFAULT_TIMEOUT,
               headers=_headers(params.get("headers"), "connect.headers")),
        _hook(params, "connect.", None))
    key = given[0]
    value = params[key]
    where = f"connect.{key}"
    groups: list[tuple[Destination, ...]]
    if key == "to":
        groups = [(_destination({"to": value}, "connect", defaults),)]
    elif key == "serial":
        groups = [(_destination(entry, f"{where}[{i}]", defaults),)
                  for i, entry in enumerate(_list(value, where))]
    elif key == "parallel":
        groups = [tuple(_destination(entry, f"{where}[{i}]", defaults)
                        for i, entry in enumerate(_list(value, where)))]
    else:
        groups = [tuple(_destination(entry, f"{where}[{i}][{j}]", defaults)
                        for j, entry in enumerate(_list(group, f"{where}[{i}]")))
                  for i, group in enumerate(_list(value, where))]
    ringback = params.get("ringback")
    if isinstance(ringback, str):
        ringback = [ringback]
    if ringback is not None and (not isinstance(ringback, list) or not ringback or not all(
            isinstance(url, str) and url for url in ringback)):
        raise SwmlError(f"connect.ringback must be a list of play URLs, got {ringback!r}")
    return ConnectRequest(
        groups=tuple(groups),
        answer_on_bridge=_flag(params.get("answer_on_bridge", False),
                               "connect.answer_on_bridge"),
        ringback=tuple(ringback) if ringback else None,
        max_duration=_seconds(params["max_duration"], "connect.max_duration")
        if "max_duration" in params else DEFAULT_MAX_DURATION,
        ignored=tuple(sorted(k for k in params if k not in SUPPORTED_KEYS)),
    )


# -- call_state_url -------------------------------------------------------------------------


class LegStateWebhooks:
    """Sends the dialled legs' state changes to their `call_state_url` (calling.call.state)."""

    def __init__(self, request: ConnectRequest, parent: Call, queue: WebhookQueue,
                 signing_key: str, node_id: str) -> None:
        self.hooks = {id(d.device): d.hook for group in request.groups for d in group
                      if d.hook is not None}
        self.parent = parent
        self.queue = queue
        self.signing_key = signing_key
        self.node_id = node_id
        self.started: dict[str, float] = {}  # leg id -> when it was created
        self._queued: asyncio.Task[None] | None = None  # the last event on its way in

    def leg_changed(self, leg: DialLeg) -> None:
        if leg.state == "created":
            self.started[leg.id] = time.time()
        self._send(leg, leg.state, leg.end_reason)
        if leg.state == "answered" and leg.call is not None:
            leg.call.on_state(lambda call: self._call_changed(leg, call))

    def _call_changed(self, leg: DialLeg, call: Call) -> None:
        """The answered leg's end (dialing reports the legs only until one answers)."""
        if call.state is CallState.ENDED:
            self._send(leg, "ended", call.end_reason)

    def _send(self, leg: DialLeg, state: str, end_reason: str | None) -> None:
        hook = self.hooks.get(id(leg.device))
        if hook is None or state not in hook.events:
            return
        to = leg.device.to
        caller = leg.call.from_user if leg.call is not None else leg.device.from_ or ""
        answered_at = leg.call.answered_at if leg.call is not None else None
        device = {"type": "sip" if to.lower().startswith("sip:") else "phone",
                  "params": {"from_number": caller, "to_number": to}}
        params = wire.state_params(call_id=leg.id, node_id=self.node_id, tag="", state=state,
                                   direction="outbound", device=device,
                                   end_reason=end_reason)
        params["created_by"] = "connect"
        params["parent"] = {"call_id": self.parent.id, "node_id": self.node_id,
                            "device_type": "sip"}
        if answered_at is not None:
            params["peer"] = {"call_id": self.parent.id, "node_id": self.node_id}
        now = time.time()
        times = {"start_time": self.started.get(leg.id),
                 "answer_time": answered_at,
                 "end_time": now if state == "ended" else None}
        params.update({k: int(v * 1000) for k, v in times.items() if v is not None})
        envelope = {"event_type": wire.CALL_STATE, "event_channel":
                    f"callbox.calls.{self.parent.id}", "timestamp": now,
                    "project_id": self.parent.project_id, "params": params}
        self._queued = spawn(self._enqueue_after(self._queued, hook.url, envelope, leg.id),
                             name=f"call-state-webhook-{leg.id}")

    async def _enqueue_after(self, previous: asyncio.Task[None] | None, url: str,
                             envelope: dict[str, Any], leg_id: str) -> None:
        """Queue one event after the ones sent before it (the queue keeps their order); a
        database outage delays it."""
        if previous is not None:
            await previous
        try:
            await persist(lambda: self.queue.enqueue(url, envelope, self.signing_key,
                                                     ordering_key=leg_id),
                          f"call_state_url event of leg {leg_id}")
        except (sqlite3.Error, OSError) as exc:
            log.error("call %s: call_state_url event for leg %s lost: %s", self.parent.id,
                      leg_id, exc)


# -- the verb -------------------------------------------------------------------------------


def _failed(runner: SwmlRunner, reason: str) -> None:
    runner.vars.update(connect_result="failed", connect_failed_reason=reason)


@verb("connect")
async def connect_verb(runner: SwmlRunner, params: Any) -> None:
    request = parse_connect(params)
    call = runner.call
    outbound = runner.outbound
    if outbound is None:
        raise SwmlError("connect is not available here (no outbound calling)")
    if request.ignored:
        log.info("call %s: connect: %s not supported by callbox; ignored", call.id,
                 ", ".join(request.ignored))
    webhooks = None
    if any(d.hook is not None for group in request.groups for d in group):
        engine = runner.recordings()
        webhooks = LegStateWebhooks(request, call, engine.webhooks.queue,
                                    engine.signing_keys.get(call.project_id, ""),
                                    engine.node_id)
    if not request.answer_on_bridge:
        call.answer()
    try:
        bridge = await connect(
            call, outbound, request.plan, ringback=request.ringback,
            on_leg=webhooks.leg_changed if webhooks is not None else None,
            end_caller_with_callee=False, max_duration=request.max_duration)
    except DialFailed as exc:
        log.info("call %s: connect failed: %s (%s)", call.id, exc, exc.end_reason)
        _failed(runner, exc.end_reason)
        return
    except OutboundError as exc:
        log.warning("call %s: connect: %s", call.id, exc)
        _failed(runner, "error")
        return
    except ValueError as exc:  # already bridged
        raise SwmlError(f"connect: {exc}") from None
    runner.vars.update(connect_result="connected", connect_failed_reason="")
    try:
        end = await asyncio.shield(bridge.done)
    except asyncio.CancelledError:
        if bridge.active:
            await bridge.b.hangup("hangup")
        raise
    log.info("call %s: connect to %s ended (%s)%s", call.id, bridge.b.id, end.value,
             "; the script goes on" if end is BridgeEnd.CALLEE_HUNG_UP else "")
