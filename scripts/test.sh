#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite
# against real redis-server processes, once per transport: the hiredis
# extension, then the pure-Python transport (TINYTOWN_TRANSPORT=python), so
# that the two are checked against the same tests. Extra arguments go to
# pytest (e.g. scripts/test.sh -k town -x). Exits non-zero if either run fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
status=0
for transport in hiredis python; do
    printf 'test.sh: whole suite over the %s transport\n' "$transport"
    TINYTOWN_TRANSPORT="$transport" .venv/bin/python -m pytest tests "$@" || status=$?
done
exit "$status"
