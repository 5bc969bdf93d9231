#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite
# against real redis-server processes, once per transport (hiredis extension,
# then pure Python; scripts/run_suite.sh). Extra arguments go to pytest
# (e.g. scripts/test.sh -k town -x). Exits non-zero if either run fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
PYTHON="$ROOT/.venv/bin/python" exec scripts/run_suite.sh "$@"
