#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite
# against real redis-server processes. Extra arguments go to pytest
# (e.g. scripts/test.sh -k town -x). Exits with pytest's exit code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest tests "$@"
