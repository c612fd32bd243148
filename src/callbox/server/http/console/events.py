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
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from callbox.server.recording.engine import RecordingEngine

QUEUE_EVENTS: Final = 256
KEEPALIVE_SECONDS: Final = 15.0
CLOSED: Final = None  # what a subscriber's queue yields when its stream must end

Event = dict[str, Any]
Subscriber = asyncio.Queue[Event | None]


class ConsoleEvents:
    def __init__(self) -> None:
        self._subscribers: dict[Subscriber, str] = {}  # queue -> project id
        self._engine: RecordingEngine | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, engine: RecordingEngine | None) -> None:
        """Observe `engine` (again when the platform made a new one)."""
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
        for queue, owner in list(self._subscribers.items()):
            if owner != project_id:
                continue
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._close(queue)

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
