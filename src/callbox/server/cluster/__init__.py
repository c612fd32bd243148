"""RELAY across nodes over NATS (`[cluster] bus_url`): a client on any node gets the calls of
its contexts from every node, commands them, and hears their events.

`node.Cluster` is what the platform holds; `bus` the NATS connection and the subjects;
`directory` the other nodes (heartbeats, liveness); `offers` inbound calls offered across
nodes; `forwarding` commands run on the call's node; `proxies` another node's session as the
call's node sees it; `remote_calls` the other nodes' calls held by this node's sessions.
"""

from callbox.server.cluster.node import Cluster

__all__ = ["Cluster"]
