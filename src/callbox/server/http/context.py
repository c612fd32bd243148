"""Where a handler finds the platform's services: one key on the aiohttp Application."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from callbox.server.services import Services

SERVICES_KEY: Final[web.AppKey[Services]] = web.AppKey("services", Services)


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES_KEY]
