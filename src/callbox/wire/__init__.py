"""Wire shapes shared by the SDK and the platform (no import from callbox.server)."""
