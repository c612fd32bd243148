"""Live recording events for the console: one engine observer, fanned out per project.

`ConsoleEvents` subscribes once to the recording engine (`RecordingEngine.on_event`) and hands
each event to the subscribers of that event's project only, as the small dict the console
needs. A subscriber that does not keep up (its queue is full) is dropped; its stream ends and
the browser reconnects and reloads. `sse_stream` writes one subscriber's events as
server-sent events, with a keep-alive comment while idle, until the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from callbox.server.call import Call, CallState
from callbox.server.recording.engine import RecordingEngine

QUEUE_EVENTS: Final = 256
KEEPALIVE_SECONDS: Final = 15.0
REMEMBERED_PARTIES: Final = 10_000
CLOSED: Final = None  # what a subscriber's queue yields when its stream must end

Event = dict[str, Any]
Subscriber = asyncio.Queue[Event | None]


@dataclass(frozen=True)
class Parties:
    """Who a recording's channels hold, as seen while its call was live: `speaker` is the
    recorded leg's party (left, `speak`), `hearer` what that party hears (right, `listen`):
    on the inbound leg of a bridged call, the caller and the callee."""

    speaker: str
    hearer: str
    peer_call_id: str | None


def parties_of(call: Call, calls: Mapping[str, Call]) -> Parties:
    speaker = (f"the caller ({call.from_user})" if call.direction == "inbound"
               else f"the called party ({call.to_user})")
    peer_id = call.peer_id
    peer = calls.get(peer_id) if peer_id else None
    if peer is not None:
        hearer = (f"the callee ({peer.to_user})" if peer.direction != "inbound"
                  else f"the caller ({peer.from_user})")
    elif peer_id:
        hearer = f"the bridged call {peer_id}"
    else:
        hearer = "what the platform plays"
    return Parties(speaker, hearer, peer_id)


class ConsoleEvents:
    def __init__(self) -> None:
        self._subscribers: dict[Subscriber, str] = {}  # queue -> project id
        self._engine: RecordingEngine | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._calls: Mapping[str, Call] = {}
        # recording id -> who its channels hold, as last seen live (bounded)
        self.parties: OrderedDict[str, Parties] = OrderedDict()
        self._watching: set[str] = set()  # recordings whose call's states are observed

    def attach(self, engine: RecordingEngine | None, calls: Mapping[str, Call]) -> None:
        """Observe `engine` (again when the platform made a new one); `calls` are the live
        calls, to note who each recording holds."""
        self._calls = calls
        if engine is self._engine:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._engine = engine
        if engine is not None:
            self._unsubscribe = engine.on_event(self.publish)

    def subscribe(self, project_id: str) -> Subscriber:
        queue: Subscriber = asyncio.Queue(QUEUE_EVENTS)
        self._subscribers[queue] = project_id
        return queue

    def unsubscribe(self, queue: Subscriber) -> None:
        self._subscribers.pop(queue, None)

    def publish(self, project_id: str, params: dict[str, Any]) -> None:
        event = {key: params.get(key) for key in
                 ("recording_id", "call_id", "control_id", "state", "peer_call_id")}
        call = self._calls.get(str(params.get("call_id")))
        if call is not None and params.get("recording_id"):
            self._watch(str(params["recording_id"]), call)
        for queue, owner in list(self._subscribers.items()):
            if owner != project_id:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._close(queue)

    def _watch(self, recording_id: str, call: Call) -> None:
        """Note who the recording holds now and at each of its call's state changes (a
        bridge ends after the call's state listeners that came before it: the call's end
        still sees its peer). A bridged note is never replaced by an unbridged one."""
        self._note(recording_id, call)
        if recording_id in self._watching:
            return
        self._watching.add(recording_id)

        def on_state(changed: Call) -> None:
            self._note(recording_id, changed)
            if changed.state == CallState.ENDED:
                self._watching.discard(recording_id)
                unsubscribe()

        unsubscribe = call.on_state(on_state)

    def _note(self, recording_id: str, call: Call) -> None:
        parties = parties_of(call, self._calls)
        known = self.parties.get(recording_id)
        if known is None or parties.peer_call_id or not known.peer_call_id:
            self.parties[recording_id] = parties
        while len(self.parties) > REMEMBERED_PARTIES:
            self.parties.popitem(last=False)

    def close_all(self) -> None:
        for queue in list(self._subscribers):
            self._close(queue)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._engine = None

    def _close(self, queue: Subscriber) -> None:
        self._subscribers.pop(queue, None)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(CLOSED)
        if queue.full():  # make room for the end mark: the stream ends either way
            queue.get_nowait()
            queue.put_nowait(CLOSED)


async def sse_stream(request: web.Request, events: ConsoleEvents, project_id: str,
                     still_signed_in: Callable[[], bool]) -> web.StreamResponse:
    """`text/event-stream` of the project's recording events (`event: recording`)."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue = events.subscribe(project_id)
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        while still_signed_in():
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is CLOSED:
                break
            data = json.dumps(event, separators=(",", ":"))
            await response.write(f"event: recording\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass
    finally:
        events.unsubscribe(queue)
    return response
