#!/usr/bin/env bash
# Run the whole test suite once per transport: the hiredis extension, then
# the pure-Python transport (TINYTOWN_TRANSPORT=python), so that the two are
# checked against the same tests. Used by scripts/test.sh (the checkout's
# .venv), by cibuildwheel's test-command and by scripts/check_wheel.sh (an
# installed wheel). Environment: PYTHON (default: python3). Extra arguments
# go to pytest. Exits non-zero if either run fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
status=0
for transport in hiredis python; do
    printf 'run_suite: the whole suite over the %s transport\n' "$transport"
    TINYTOWN_TRANSPORT="$transport" "$PYTHON" -m pytest tests "$@" || status=$?
done
exit "$status"
