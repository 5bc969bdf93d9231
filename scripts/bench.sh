#!/usr/bin/env bash
# The main job: set up (scripts/bootstrap.sh), then `tinytown bench` on an
# embedded local redis-server. Arguments go to tinytown bench
# (e.g. scripts/bench.sh --json, scripts/bench.sh --plot latency.png).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/tinytown bench "$@"
