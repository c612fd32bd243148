#!/usr/bin/env bash
# Set up and run the whole test suite (unit tests and real-peer tests with sipp and baresip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests
.venv/bin/mypy                # --strict on src/callbox (pyproject.toml [tool.mypy])
.venv/bin/lint-imports        # the layers (pyproject.toml [tool.importlinter])
# Every real peer (sipp, baresip, the official SDK) must run: a missing one fails, never skips.
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
