#!/usr/bin/env bash
# Run a slice of the test suite under valgrind's memcheck: the transport tests,
# the reply-path fuzz (a fake RESP server sending valid, nested, truncated and
# garbage replies, and replies nobody asked for), the misuse tests (their
# child interpreters run outside valgrind) and the channel tests that
# drop connections (server killed, subscriptions re-subscribing).
#
#   scripts/valgrind.sh                 # the slice; exit status 0 if memcheck found nothing
#   scripts/valgrind.sh tests/test_x.py # other tests instead
#
# PYTHONMALLOC=malloc makes every Python allocation visible to valgrind (no
# pymalloc arenas). scripts/valgrind-python.supp suppresses the interpreter's
# own noise (see the comments there). Reported: invalid reads/writes/frees,
# uses of uninitialised values outside libpython, definite and indirect leaks.
# The full report goes to valgrind.log (first argument-free run: repo root).
# Environment: TT_FUZZ_EXAMPLES (default 25 here: valgrind is ~50x slower).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v valgrind >/dev/null 2>&1 || { echo "valgrind.sh: install valgrind (apt-get install valgrind)" >&2; exit 2; }
scripts/bootstrap.sh

if [ "$#" -eq 0 ]; then
    set -- tests/test_transport_core.py tests/test_reply_fuzz.py tests/test_misuse.py tests/test_codec.py \
        tests/test_channel.py::test_pending_calls_fail_and_next_call_reconnects \
        tests/test_channel.py::test_cancelled_receive_loses_nothing \
        tests/test_channel.py::test_broadcast_async_for_and_bad_payload \
        tests/test_reconnect.py::test_subscription_resubscribes_after_a_restart \
        tests/test_reconnect.py::test_receive_raises_when_the_server_stops_answering \
        -k "not test_close_fails_queued_commands_and_leaks_nothing"
    # (not that memory-growth test: 13 rounds of 5,500 queued commands and 10 MB;
    # 50x slower they pass their 60 s safety timeout, and memcheck's own leak
    # check below is the finer measure here)
fi
LOG="${VALGRIND_LOG:-$ROOT/valgrind.log}"

export PYTHONMALLOC=malloc
export TT_FUZZ_EXAMPLES="${TT_FUZZ_EXAMPLES:-25}"
status=0
valgrind --tool=memcheck \
    --suppressions="$ROOT/scripts/valgrind-python.supp" \
    --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect \
    --child-silent-after-fork=yes --num-callers=40 \
    --error-exitcode=99 --log-file="$LOG" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -o addopts= --timeout=1200 "$@" || status=$?

grep -E "ERROR SUMMARY|definitely lost|indirectly lost" "$LOG" | sed 's/^==[0-9]*== /valgrind: /'
if [ "$status" = 99 ]; then
    echo "valgrind.sh: memcheck found errors; see $LOG" >&2
elif [ "$status" != 0 ]; then
    echo "valgrind.sh: the tests failed under valgrind (exit $status); see $LOG" >&2
else
    echo "valgrind.sh: clean (report: $LOG)"
fi
exit "$status"
