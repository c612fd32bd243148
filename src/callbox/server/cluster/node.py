"""This node in a cluster: the bus, the heartbeats, offers, forwarded commands and events.

`Cluster(url, hub)` is what the platform holds when `[cluster] bus_url` is set. It implements
the hub's `RemoteNodes` (the hub tells it when its sessions change, and lets it forward
commands), and answers the platform's two questions about inbound calls: `has_taker` (does a
node have a RELAY client for this context? from the heartbeats, at once) and `offer` (hand the
call to one of them).

Heartbeats carry the contexts a node serves and the nodes it hears, on each change at once
and every HEARTBEAT_INTERVAL otherwise. A node silent for SILENCE seconds is lost: the calls it
owned end for this node's clients (`ended`, end_reason "error"), and its sessions bound to
this node's calls go away like a local session that expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from callbox.server.call import Call
from callbox.server.cluster.bus import (
    NODES,
    SESSIONS_GONE,
    SESSIONS_MOVED,
    SESSIONS_WANTED,
    Bus,
    Incoming,
    commands_subject,
    events_subject,
    heartbeat_subject,
    strings,
)
from callbox.server.cluster.directory import (
    HEARTBEAT_INTERVAL,
    Directory,
    Heard,
    NodeInfo,
    heartbeat,
    parse_heartbeat,
)
from callbox.server.cluster.forwarding import Forwarding
from callbox.server.cluster.handover import Handover
from callbox.server.cluster.offers import Offers
from callbox.server.cluster.proxies import RemoteSessions
from callbox.server.cluster.remote_calls import RemoteCalls
from callbox.server.relay.hub import RelayHub
from callbox.server.relay.results import Result
from callbox.server.relay.session import Session

log = logging.getLogger(__name__)


class Cluster:
    def __init__(self, url: str, hub: RelayHub) -> None:
        self.node_id = hub.services.node_id
        self.incarnation = uuid.uuid4().hex  # this process (a restart under the same id differs)
        self.hub = hub
        self.bus = Bus(url, name=f"callbox-{self.node_id}")
        self.directory = Directory(self.node_id)
        self.proxies = RemoteSessions(self.bus.send, hub.session_expired)
        self.remote_calls = RemoteCalls(hub.sessions.get)
        self.offers = Offers(self.bus, hub, self.node_id, self.remote_calls, self.proxies)
        self.forwarding = Forwarding(self.bus, hub, self.node_id, self.remote_calls,
                                     self.proxies, self.directory.alive)
        self.handover = Handover(self.bus, hub, self.node_id, self.remote_calls, self.proxies,
                                 lambda: self.directory.nodes)
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (BusError when the server cannot be reached), listen, announce."""
        await self.bus.connect()
        await self.bus.subscribe(NODES, self._on_heartbeat)
        await self.bus.subscribe(events_subject(self.node_id), self._on_event)
        await self.bus.subscribe(commands_subject(self.node_id), self.forwarding.on_command)
        await self.bus.subscribe(SESSIONS_GONE, self._on_session_gone)
        await self.bus.subscribe(SESSIONS_WANTED, self.handover.on_wanted)
        await self.bus.subscribe(SESSIONS_MOVED, self.handover.on_moved)
        await self.offers.update_subscriptions()
        await self.bus.flush()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._announce_changes(), name="cluster-changes"),
                       loop.create_task(self._beat(), name="cluster-heartbeat")]
        log.info("cluster: node %s on %s", self.node_id, self.bus.url)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.bus.close()

    # -- what the platform asks ---------------------------------------------------------------

    def has_taker(self, project_id: str, context: str) -> bool:
        return self.directory.has_taker(project_id, context)

    async def offer(self, call: Call, context: str) -> bool:
        return await self.offers.offer(call, context)

    def stop_taking_calls(self) -> None:
        """The node drains: leave the offer groups and tell the others this node's clients
        take no more calls (the calls they hold go on)."""
        self.offers.taking = False
        self._changed.set()

    # -- RemoteNodes (what the hub tells) -----------------------------------------------------

    def sessions_changed(self) -> None:
        self._changed.set()

    def session_expired(self, session: Session) -> None:
        self.remote_calls.session_gone(session.protocol)
        self.bus.send(SESSIONS_GONE, {"node": self.node_id, "protocol": session.protocol})

    async def forward(self, session: Session, method: str, params: Mapping[str, Any]
                      ) -> Result | None:
        return await self.forwarding.forward(session, method, params)

    async def resume(self, project_id: str, protocol: str) -> Session | None:
        return await self.handover.want(project_id, protocol)

    # -- heartbeats -------------------------------------------------------------------------

    def _send_heartbeat(self) -> None:
        contexts = self.hub.served_contexts() if self.offers.taking else set()
        this = NodeInfo(self.node_id, self.incarnation, time.monotonic(),
                        frozenset(contexts), frozenset(self.directory.nodes))
        self.bus.send(heartbeat_subject(self.node_id), heartbeat(this))

    async def _announce_changes(self) -> None:
        """Offer subscriptions follow the sessions; a heartbeat tells the others at once."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                if await self.offers.update_subscriptions():
                    self._send_heartbeat()
            except Exception:  # the bus is down: the next change or heartbeat retries
                log.exception("cluster: updating the offer subscriptions failed")
                self._changed.set()
                await asyncio.sleep(self.heartbeat_interval)

    async def _beat(self) -> None:
        while True:
            self._send_heartbeat()
            await asyncio.sleep(self.heartbeat_interval / 2)
            self._check_silent()
            await asyncio.sleep(self.heartbeat_interval / 2)
            self._check_silent()

    def _on_heartbeat(self, message: Incoming) -> None:
        info = parse_heartbeat(message.data, time.monotonic())
        if info is None:
            log.warning("cluster: malformed heartbeat %.200r; ignored", message.data)
            return
        heard = self.directory.heard(info)
        if heard is Heard.RESTARTED:
            self._node_lost(info.node_id, "restarted")
        if heard is not Heard.KNOWN:
            log.info("cluster: node %s joined", info.node_id)
            self._send_heartbeat()  # so that it knows us at once too

    def _check_silent(self) -> None:
        for node_id in self.directory.lost(time.monotonic()):
            self._node_lost(node_id, "silent")

    def _node_lost(self, node_id: str, why: str) -> None:
        calls = self.remote_calls.node_lost(node_id)
        sessions = self.proxies.node_lost(node_id)
        self.forwarding.node_lost(node_id)
        log.warning("cluster: node %s is %s: lost (%d of its calls ended here, %d of its RELAY "
                    "sessions dropped)", node_id, why, calls, sessions)

    # -- messages for this node -----------------------------------------------------------------

    def _on_event(self, message: Incoming) -> None:
        kind = message.data.get("kind")
        if kind == "event":
            if not self.handover.pass_on(message.data):
                self.remote_calls.on_event(message.data)
        elif kind == "reply":
            self.forwarding.on_reply(message.data)
        elif kind == "handover":
            self.handover.on_answer(message.data)
        else:
            log.warning("cluster: unknown message kind %r on the events subject", kind)

    def _on_session_gone(self, message: Incoming) -> None:
        fields = strings(message.data, "node", "protocol")
        if fields is not None and fields[0] != self.node_id:
            self.proxies.expire(*fields)
