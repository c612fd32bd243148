"""The recording engine: recorder state machine, voice detection, writers, storage."""
