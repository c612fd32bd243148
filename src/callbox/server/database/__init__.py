"""A PostgreSQL database that the nodes of a cluster share: its connection pool and its schema
migrations. Without `[database] url` nothing here is used (SQLite files in the data directory)."""

from callbox.server.database.postgres import (
    Database,
    DatabaseUnavailable,
    Migration,
    migrate,
    migrations,
    open_database,
)

__all__ = ["Database", "DatabaseUnavailable", "Migration", "migrate", "migrations",
           "open_database"]
