#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then run the two-agent example: a supervisor
# and a worker exchanging messages through a town started in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/python examples/two_agents.py "$@"
