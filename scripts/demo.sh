#!/usr/bin/env bash
# The main job: set up, start the platform and place a real recorded demo call.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/callbox demo "$@"
