"""A RELAY session that follows its client to another node.

A client whose socket dropped reconnects with its session's `protocol`, and may land on another
node (behind a load balancer, or because its node is draining). That node, the taker, asks
every node for the session (`SESSIONS_WANTED`). The node that holds it, the holder:
- tells every node that the session moves (`SESSIONS_MOVED`): the calls of third nodes that it
  holds report to the taker from then on;
- relays its own `Session` object to the taker (`RemoteSessions.adopt`), so its calls, plays and
  recordings keep the session they hold, and their events go to the taker;
- sends the taker, on the taker's events subject (so that the events that follow come after
  it), what the session is: its contexts, acks mode, the events its client has not
  acknowledged, and the calls it holds with their node and last state;
- passes on to the taker any event for the session that still comes to it.
The taker makes it its own session (the very object that stood for it there if some of its
calls are held by it) and tracks its calls of other nodes, whose commands are then forwarded as
usual. The nodes that do not hold it say so; the taker waits for every node it knows, at most
WANT_TIMEOUT, and then starts a new session as a single node would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from callbox.server.cluster.bus import (
    SESSIONS_MOVED,
    SESSIONS_WANTED,
    Bus,
    Incoming,
    events_subject,
    strings,
)
from callbox.server.cluster.proxies import RemoteSessions
from callbox.server.cluster.remote_calls import RemoteCalls
from callbox.server.relay.hub import RelayHub
from callbox.server.relay.session import Session

log = logging.getLogger(__name__)

WANT_TIMEOUT = 2.0  # seconds the taker waits for the nodes' answers
MOVED_REMEMBERED = 10_000  # sessions that left, for the events still on their way here
MAX_EVENT_BYTES = 800_000  # of unacknowledged events carried (a NATS message is <= 1 MB)


@dataclass
class _Want:
    future: asyncio.Future[Session | None]
    waiting_for: set[str] = field(default_factory=set)  # the nodes that have not answered


class Handover:
    def __init__(self, bus: Bus, hub: RelayHub, node_id: str, remote_calls: RemoteCalls,
                 proxies: RemoteSessions, nodes: Callable[[], Collection[str]]) -> None:
        self.bus = bus
        self.hub = hub
        self.node_id = node_id
        self.remote_calls = remote_calls
        self.proxies = proxies
        self.nodes = nodes
        self.moved: OrderedDict[str, str] = OrderedDict()  # protocol -> the node it went to
        self._wants: dict[str, _Want] = {}

    # -- the taker ------------------------------------------------------------------------

    async def want(self, project_id: str, protocol: str) -> Session | None:
        """The session `protocol` of `project_id`, moved here; None when no node holds it."""
        others = set(self.nodes()) - {self.node_id}
        if not others:
            return None
        request_id = str(uuid.uuid4())
        want = _Want(asyncio.get_running_loop().create_future(), others)
        self._wants[request_id] = want
        self.bus.send(SESSIONS_WANTED, {"id": request_id, "node": self.node_id,
                                        "project": project_id, "protocol": protocol})
        try:
            return await asyncio.wait_for(asyncio.shield(want.future), WANT_TIMEOUT)
        except TimeoutError:
            log.info("RELAY session %s: not every node answered within %g s; a new session",
                     protocol, WANT_TIMEOUT)
            return None
        finally:
            del self._wants[request_id]

    def on_answer(self, data: dict[str, Any]) -> None:
        """A node's answer to our `SESSIONS_WANTED` (on our events subject)."""
        request_id, node = data.get("id"), data.get("node")
        want = self._wants.get(request_id) if isinstance(request_id, str) else None
        if data.get("held") is not True:
            if want is not None and isinstance(node, str):
                want.waiting_for.discard(node)
                if not want.waiting_for and not want.future.done():
                    want.future.set_result(None)
            return
        # Taken even when nobody waits any more: the holder has let it go.
        session = self._take(data)
        if want is not None and not want.future.done():
            want.future.set_result(session)

    def _take(self, data: dict[str, Any]) -> Session | None:
        fields = strings(data, "node", "protocol", "project")
        contexts, events, calls = data.get("contexts"), data.get("events"), data.get("calls")
        if fields is None or not (isinstance(contexts, list) and isinstance(events, list)
                                  and isinstance(calls, list)):
            log.warning("cluster: malformed session handover %.200r; ignored", data)
            return None
        holder, protocol, project = fields
        session = self.proxies.release(holder, protocol) or Session(
            protocol=protocol, project_id=project, contexts=[], event_acks=False)
        session.resume_here(
            contexts=[str(c) for c in contexts], event_acks=data.get("event_acks") is True,
            agent=str(data.get("agent", "")),
            events=[(str(e[0]), str(e[1])) for e in events
                    if isinstance(e, list) and len(e) == 2],
            grace=self.hub.resume_grace)
        self.hub.resumed_here(session)
        self.moved.pop(protocol, None)
        for call in calls:
            if isinstance(call, dict) and isinstance(call.get("call_id"), str) \
                    and isinstance(call.get("node"), str) and call["node"] != self.node_id:
                self.remote_calls.track(call["call_id"], call["node"], protocol,
                                        call.get("last_state"))
        log.info("RELAY session %s moved here from node %s (%d events, %d calls)", protocol,
                 holder, len(events), len(calls))
        return session

    # -- the holder -----------------------------------------------------------------------

    def on_wanted(self, message: Incoming) -> None:
        fields = strings(message.data, "id", "node", "project", "protocol")
        if fields is None:
            log.warning("cluster: malformed session request %.200r; ignored", message.data)
            return
        request_id, taker, project, protocol = fields
        if taker == self.node_id:
            return
        answer: dict[str, Any] = {"kind": "handover", "id": request_id, "node": self.node_id}
        session = self.hub.sessions.get(protocol)
        if session is None or session.project_id != project:
            self.bus.send(events_subject(taker), {**answer, "held": False})
            return
        calls = [{"call_id": entry.call.id, "node": self.node_id,
                  "last_state": entry.state_params(entry.call.state.value)}
                 for entry in self.hub.entries.values() if session in entry.sessions]
        calls += self.remote_calls.release(protocol)
        events = _newest_that_fit(session.pending_events())
        self.hub.release_session(protocol)
        self.proxies.adopt(taker, session)
        self.moved[protocol] = taker
        while len(self.moved) > MOVED_REMEMBERED:
            self.moved.popitem(last=False)
        self.bus.send(SESSIONS_MOVED, {"node": self.node_id, "protocol": protocol,
                                       "to": taker})
        self.bus.send(events_subject(taker), {
            **answer, "held": True, "protocol": protocol, "project": project,
            "contexts": session.contexts, "event_acks": session.event_acks,
            "agent": session.agent, "events": [list(e) for e in events], "calls": calls})
        log.info("RELAY session %s moves to node %s, its client's (%d events, %d calls)",
                 protocol, taker, len(events), len(calls))

    def pass_on(self, data: dict[str, Any]) -> bool:
        """An event for a session that moved away is sent after it; False if it did not."""
        protocol = data.get("protocol")
        to = self.moved.get(protocol) if isinstance(protocol, str) else None
        if to is None:
            return False
        self.bus.send(events_subject(to), data)
        return True

    # -- every other node -------------------------------------------------------------------

    def on_moved(self, message: Incoming) -> None:
        fields = strings(message.data, "node", "protocol", "to")
        if fields is None:
            log.warning("cluster: malformed session move %.200r; ignored", message.data)
            return
        old, protocol, new = fields
        if self.node_id not in (old, new):  # the two ends know it from the handover itself
            self.proxies.move(old, protocol, new)


def _newest_that_fit(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The newest events whose frames add up to at most MAX_EVENT_BYTES (oldest dropped)."""
    size, first = 0, len(events)
    while first > 0 and size + len(events[first - 1][1]) <= MAX_EVENT_BYTES:
        first -= 1
        size += len(events[first][1])
    if first:
        log.warning("RELAY session handover: %d unacknowledged events too many to carry; "
                    "the oldest dropped", first)
    return events[first:]
