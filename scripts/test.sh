#!/usr/bin/env bash
# Set up and run the whole test suite (unit tests and real-peer tests with sipp and baresip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests
.venv/bin/mypy                # --strict on src/callbox (pyproject.toml [tool.mypy])
.venv/bin/lint-imports        # the layers (pyproject.toml [tool.importlinter])
# Every real peer (sipp, baresip, the official SDK) must run: a missing one fails, never skips.
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [ $# -gt 0 ]; then exec "${pytest[@]}" "$@"; fi  # what was asked, in one process
# The suite: in 2 processes (pytest-xdist, a test file per process at a time; each process hands
# out ports from its own slice, tests/peers/ports.py), then the tests marked `serial` alone.
"${pytest[@]}" -n 2 --dist loadfile -m "not serial"
exec "${pytest[@]}" -m serial
