"""What a `Call` and its actions need of the client, as a small interface.

`RelayChannel` is all they use: send a command, subscribe to the events of a call (or of one
control id on it), spawn a task. `RelayClient` implements it with an `EventRouter`; a test
can implement it with anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from callbox.relay.events import RelayEvent

log = logging.getLogger(__name__)

EventListener = Callable[[RelayEvent], None]
Unsubscribe = Callable[[], None]


class RelayChannel(Protocol):
    async def execute(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request; its result, or `RelayError` (a non-2xx code, no connection)."""
        ...

    def subscribe(self, call_id: str, listener: EventListener, control_id: str = ""
                  ) -> Unsubscribe:
        """`listener(event)` for every event of `call_id` (only those of `control_id` when
        given). Returns the function that ends the subscription."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task owned by the client (cancelled when it disconnects)."""
        ...


class CallHandle(Protocol):
    """What an action needs of its call."""

    @property
    def call_id(self) -> str: ...

    @property
    def channel(self) -> RelayChannel: ...

    async def execute(self, method: str, params: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Send a calling command for this call (`node_id` and `call_id` filled in)."""
        ...


class EventRouter:
    """Subscriptions by (call id, control id). An event goes to the listeners of its control
    id first (the action it reports on), then to those of its whole call, each in the order
    they subscribed; a listener that raises is logged and the others still run."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], list[EventListener]] = {}

    def subscribe(self, call_id: str, listener: EventListener, control_id: str = ""
                  ) -> Unsubscribe:
        key = (call_id, control_id)
        self._listeners.setdefault(key, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(key)
            if listeners is not None and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[key]

        return unsubscribe

    def dispatch(self, event: RelayEvent) -> bool:
        """Deliver `event`; False when nobody listens to its call."""
        call_id, control_id = event.call_id, event.control_id
        keys = [(call_id, control_id), (call_id, "")] if control_id else [(call_id, "")]
        listeners = [listener for key in keys for listener in self._listeners.get(key, ())]
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("RELAY: a listener for %s on call %s failed", event.event_type,
                              call_id)
        return bool(listeners)

    def drop(self, call_id: str) -> None:
        """Forget every subscription of `call_id`."""
        for key in [key for key in self._listeners if key[0] == call_id]:
            del self._listeners[key]
