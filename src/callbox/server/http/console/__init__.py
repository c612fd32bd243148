"""The recordings console in the browser, at `/console/` on the HTTPS port (see `routes`)."""

from callbox.server.http.console.routes import add_console_routes

__all__ = ["add_console_routes"]
