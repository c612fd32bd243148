"""Project authentication: which configured project an id and token belong to.

Shared by the RELAY hub (`signalwire.connect`) and the HTTP API (HTTP Basic). Projects are read
from the configuration at each check, so a project added at run time is known at once.
"""

from __future__ import annotations

from callbox.server.config import Config, Project
from callbox.wire.basic_auth import credentials_equal, parse_basic_auth


class ProjectAuth:
    def __init__(self, config: Config) -> None:
        self._config = config

    def authenticate(self, project_id: str, token: str) -> Project | None:
        """The project with this id and token, else None. Constant-time: every project is
        compared, on both fields, whatever matches."""
        found = None
        for project in self._config.projects:
            if credentials_equal((project_id, token), (project.id, project.token)):
                found = project
        return found

    def from_authorization(self, header: str) -> Project | None:
        """The project an HTTP ``Authorization: Basic id:token`` header names, else None."""
        credentials = parse_basic_auth(header)
        return self.authenticate(*credentials) if credentials is not None else None
