#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), then run an example of examples/ on a town
# started in a temp dir: two_agents (the default: a supervisor and a worker
# exchanging messages) or worker_010 (a Tinytown 0.10 worker: docket, urgent
# inbox, heartbeat, events, stop flag). Other arguments go to the example.
#   scripts/example.sh [two_agents|worker_010] [--loop uvloop]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
example=two_agents
case "${1:-}" in
  two_agents|worker_010) example="$1"; shift ;;
esac
scripts/bootstrap.sh
exec .venv/bin/python "examples/$example.py" "$@"
