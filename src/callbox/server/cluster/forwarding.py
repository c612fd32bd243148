"""Commands on a call of another node: forwarded there and answered from there.

On the client's node: a command whose call is not here, but is known to be another node's
(it was offered from there) or names a live node in its `node_id`, is published to that node
with the session's protocol and project; the reply comes back on this node's events subject,
after the events the command caused (one ordered stream from each node), and answers the
client as if the command had run here.

On the owning node: the command runs through the hub's `Commands.execute` with the client's
session as this node relays it (`RemoteSessions`), so it is the very same code as for a local
client.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from callbox.server.cluster.bus import Bus, Incoming, commands_subject, events_subject, strings
from callbox.server.cluster.proxies import RemoteSessions
from callbox.server.cluster.remote_calls import RemoteCalls
from callbox.server.relay.hub import RelayHub
from callbox.server.relay.results import REPLY_WITHIN, Result
from callbox.server.relay.session import Session
from callbox.server.tasks import spawn
from callbox.wire import relay as wire

log = logging.getLogger(__name__)

# The owning node answers within REPLY_WITHIN (the commands' own bound); then the bus's trip.
FORWARD_TIMEOUT = REPLY_WITHIN + 3.0


class Forwarding:
    def __init__(self, bus: Bus, hub: RelayHub, node_id: str, remote_calls: RemoteCalls,
                 proxies: RemoteSessions, alive: Callable[[str], bool]) -> None:
        self.bus = bus
        self.hub = hub
        self.node_id = node_id
        self.remote_calls = remote_calls
        self.proxies = proxies
        self.alive = alive
        self._pending: dict[str, tuple[str, asyncio.Future[Result]]] = {}

    # -- the client's node ------------------------------------------------------------------

    def owner_of(self, params: Mapping[str, Any]) -> str | None:
        """The other node that owns the command's call; None when it is not another's."""
        call_id = params.get("call_id")
        if not isinstance(call_id, str) or call_id in self.hub.services.calls:
            return None
        owner = self.remote_calls.owner(call_id)
        if owner is not None:
            return owner
        named = params.get("node_id")
        if isinstance(named, str) and named != self.node_id and self.alive(named):
            return named
        return None

    async def forward(self, session: Session, method: str, params: Mapping[str, Any]
                      ) -> Result | None:
        owner = self.owner_of(params)
        if owner is None:
            return None
        request_id = str(uuid.uuid4())
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (owner, future)
        self.bus.send(commands_subject(owner), {
            "kind": "command", "id": request_id, "node": self.node_id,
            "protocol": session.protocol, "project": session.project_id, "method": method,
            "params": dict(params)})
        try:
            result = await asyncio.wait_for(future, FORWARD_TIMEOUT)
        except TimeoutError:
            return wire.command_result(wire.CODE_SERVER_ERROR,
                                       f"node {owner} of call {params.get('call_id')} did not "
                                       f"answer {method} within {FORWARD_TIMEOUT:g} s")
        finally:
            self._pending.pop(request_id, None)
        if result.get("code") == wire.CODE_OK:
            self.remote_calls.track(str(params["call_id"]), owner, session.protocol)
        return result

    def on_reply(self, data: dict[str, Any]) -> None:
        request_id, result = data.get("id"), data.get("result")
        pending = self._pending.get(request_id) if isinstance(request_id, str) else None
        if pending is None or not isinstance(result, dict):
            log.debug("cluster: a reply nobody waits for: %.200r", data)
            return
        if not pending[1].done():
            pending[1].set_result(result)

    def node_lost(self, node_id: str) -> None:
        """Commands waiting for a lost node get their answer now."""
        for owner, future in self._pending.values():
            if owner == node_id and not future.done():
                future.set_result(wire.command_result(
                    wire.CODE_GONE, f"node {node_id} is gone, and its calls with it"))

    # -- the owning node --------------------------------------------------------------------

    def on_command(self, message: Incoming) -> None:
        data = message.data
        fields, params = strings(data, "id", "node", "protocol", "project", "method"), \
            data.get("params")
        if fields is None or not isinstance(params, dict):
            log.warning("cluster: malformed command message %.200r; ignored", data)
            return
        request_id, origin, protocol, project, method = fields
        session = self.proxies.get(origin, protocol, project)
        spawn(self._execute(session, origin, request_id, method, params),
              name=f"cluster-{method}-{request_id}")

    async def _execute(self, session: Session, origin: str, request_id: str, method: str,
                       params: dict[str, Any]) -> None:
        if self.hub.commands.knows(method):
            result = await self.hub.commands.execute(session, method, params)
        else:
            result = wire.command_result(wire.CODE_BAD_REQUEST, f"unknown method {method!r}")
        self.bus.send(events_subject(origin), {"kind": "reply", "id": request_id,
                                               "result": result})
