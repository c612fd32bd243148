"""The configured trunks at run time: their registrations, their credentials, their state.

A trunk whose proxy does not resolve is reported with one clear error line at start; nothing
else waits for it (the lookup runs off the event loop and the platform keeps serving calls).
"""

from __future__ import annotations

import logging

from callbox.server.config import Trunk
from callbox.server.sip.digest import Authenticator
from callbox.server.sip.endpoint import SipEndpoint
from callbox.server.sip.registration_runner import TrunkRegistration, trunk_authenticator
from callbox.server.sip.resolve import numeric_host
from callbox.server.tasks import spawn

log = logging.getLogger(__name__)


class Trunks:
    def __init__(self, endpoint: SipEndpoint, trunks: list[Trunk]) -> None:
        self.endpoint = endpoint
        self.trunks = list(trunks)
        self.registrations = {t.name: TrunkRegistration(endpoint, t)
                              for t in trunks if t.register}
        self._authenticators = {t.name: (self.registrations[t.name].authenticator
                                         if t.name in self.registrations
                                         else trunk_authenticator(t)) for t in trunks}

    def start(self) -> None:
        """Start registering; check that the other trunks' proxies resolve."""
        for trunk in self.trunks:
            registration = self.registrations.get(trunk.name)
            if registration is not None:
                registration.start()  # reports a proxy that does not resolve itself
            else:
                spawn(self._check_resolves(trunk), name=f"resolve-{trunk.name}")

    async def stop(self) -> None:
        """Unregister (Expires: 0) every registered trunk."""
        for registration in self.registrations.values():
            await registration.stop()

    async def _check_resolves(self, trunk: Trunk) -> None:
        host = trunk.host_port[0]
        try:
            await numeric_host(host)
        except OSError as exc:
            log.error("trunk %s: proxy %r does not resolve (%s); calls through it will fail",
                      trunk.name, trunk.proxy, exc)

    def authenticator(self, name: str) -> Authenticator | None:
        """The credentials of trunk `name` (shared by its registration and its calls)."""
        return self._authenticators.get(name)

    def states(self) -> dict[str, str]:
        """Each registering trunk's state: 'registering', 'registered', 'failed', ..."""
        return {name: r.state.value for name, r in self.registrations.items()}
