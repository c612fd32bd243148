"""Inbound calls offered across nodes.

Taker side: while this node has a connected RELAY session for (project, context), it is in the
queue group of `offer_subject(project, context)`, so NATS gives each offer to one such node. It
picks one of its sessions (round-robin, as for its own calls), remembers the call as that
session's, and answers which session took it.

Owner side (the node the call came to, with no session of its own for the context):
`offer(call, context)` asks the group; a taker's answer binds the session that took it
(relayed to its node, `RemoteSessions`) to the call, and the hub sends it
`calling.call.receive` as to any session. No answer within OFFER_TIMEOUT, or a refusal: False
(the platform rejects the call).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.subscription import Subscription

from callbox.server.call import Call
from callbox.server.cluster.bus import OFFER_QUEUE, Bus, Incoming, offer_subject, strings
from callbox.server.cluster.proxies import RemoteSessions
from callbox.server.cluster.remote_calls import RemoteCalls
from callbox.server.relay.hub import RelayHub

log = logging.getLogger(__name__)

OFFER_TIMEOUT = 2.0  # seconds for a node of the context to take a call


class Offers:
    def __init__(self, bus: Bus, hub: RelayHub, node_id: str, remote_calls: RemoteCalls,
                 proxies: RemoteSessions) -> None:
        self.bus = bus
        self.hub = hub
        self.node_id = node_id
        self.remote_calls = remote_calls
        self.proxies = proxies
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.taking = True  # False once the node drains: its clients get no more calls
        self._lock = asyncio.Lock()

    # -- taker side -------------------------------------------------------------------------

    async def update_subscriptions(self) -> bool:
        """Join the queue group of every context served now (none once the node stopped
        taking calls), leave the others; True when something changed (the server has seen it
        when this returns)."""
        async with self._lock:
            wanted = self.hub.served_contexts() if self.taking else set()
            have = set(self.subscriptions)
            for key in have - wanted:
                await self.subscriptions.pop(key).unsubscribe()
            for key in wanted - have:
                self.subscriptions[key] = await self.bus.subscribe(
                    offer_subject(*key), self._on_offer, queue=OFFER_QUEUE)
            if wanted == have:
                return False
            await self.bus.flush()
            return True

    def _on_offer(self, message: Incoming) -> None:
        fields = strings(message.data, "project", "context", "call_id", "node")
        if fields is None:
            log.warning("cluster: malformed offer %.200r; ignored", message.data)
            return
        project, context, call_id, owner = fields
        session = self.hub.pick_session(project, context)
        reply: dict[str, Any] = {"accepted": session is not None, "node": self.node_id}
        if session is not None:
            reply["protocol"] = session.protocol
            if owner != self.node_id:
                self.remote_calls.track(call_id, owner, session.protocol)
            log.info("call %s of node %s taken for RELAY session %s (context %r)", call_id,
                     owner, session.protocol, context)
        if message.reply:
            self.bus.send(message.reply, reply)

    # -- owner side -------------------------------------------------------------------------

    async def offer(self, call: Call, context: str) -> bool:
        """Offer `call` to a RELAY client of `context` on another node."""
        reply = await self.bus.request(
            offer_subject(call.project_id, context),
            {"project": call.project_id, "context": context, "call_id": call.id,
             "node": self.node_id}, OFFER_TIMEOUT)
        if reply is None or reply.get("accepted") is not True:
            log.info("call %s: no node took it for context %r", call.id, context)
            return False
        answer = strings(reply, "node", "protocol")
        if answer is None:
            log.warning("cluster: malformed offer reply %.200r", reply)
            return False
        taker, protocol = answer
        if not call.is_active:
            return True  # it ended while offered; its session hears nothing of it
        if taker == self.node_id:  # our own session joined meanwhile
            session = self.hub.sessions.get(protocol)
            if session is None:
                return False
            self.hub.offer_to(session, call, context)
        else:
            self.hub.offer_to(self.proxies.get(taker, protocol, call.project_id), call,
                              context)
        return True
