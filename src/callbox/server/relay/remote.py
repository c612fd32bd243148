"""What the hub asks of the other nodes of a cluster (implemented by callbox.server.cluster).

Without a cluster the hub holds None and serves its own sessions only. With one, it tells the
cluster when the contexts it serves change and when a session has gone for good, lets it run a
command whose call lives on another node, and asks it for a session its client resumes here
while another node holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from callbox.server.relay.results import Result
    from callbox.server.relay.session import Session


class RemoteNodes(Protocol):
    def sessions_changed(self) -> None:
        """A session connected, went away or changed its contexts."""

    def session_expired(self, session: Session) -> None:
        """`session` (one of this node's) is gone for good: no resume any more."""

    async def resume(self, project_id: str, protocol: str) -> Session | None:
        """The session `protocol` of `project_id`, which another node held, moved here for its
        client (already in the hub's sessions, its unacknowledged events kept); None when no
        node holds it."""

    async def forward(self, session: Session, method: str, params: Mapping[str, Any]
                      ) -> Result | None:
        """The result of a command on a call of another node; None when it runs here."""
