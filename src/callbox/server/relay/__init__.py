"""The RELAY server: JSON-RPC over WebSocket for RELAY clients (ours and SignalWire's).

`hub.RelayHub` is the endpoint and the registry of sessions; `session` holds one client's
socket and event queue; `calls` what RELAY keeps per call; `commands` the `calling.*` commands;
`remote` what the hub asks of the other nodes of a cluster (callbox.server.cluster).
The wire shapes live in `callbox.wire.relay`, shared with the client SDK.
"""

from callbox.server.relay.hub import RelayHub

__all__ = ["RelayHub"]
