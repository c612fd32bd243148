"""SWML: the interpreter and its verbs. Importing the package registers every verb."""

from callbox.server.swml import ai_verb, record_verbs, verbs  # noqa: F401
