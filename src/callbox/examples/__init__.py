"""The seed programs, with only their import line changed (run by `callbox demo` and tests)."""
