"""SWML: the interpreter and its verbs. Importing the package registers its verbs;
importing `callbox.server.ai` registers the `ai` verb."""

from callbox.server.swml import connect_verb, record_verbs, verbs  # noqa: F401
