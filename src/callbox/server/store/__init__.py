"""Metadata storage behind small interfaces (SQLite by default; a server database can
replace it)."""

from callbox.server.store.recordings import RecordingRow, RecordingStore, SqliteRecordingStore

__all__ = ["RecordingRow", "RecordingStore", "SqliteRecordingStore"]
