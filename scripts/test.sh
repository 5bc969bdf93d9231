#!/usr/bin/env bash
# The test command: set up (scripts/bootstrap.sh), then run the whole suite
# against real redis-server processes once per transport (hiredis extension,
# then pure Python; scripts/run_suite.sh), then the suite again against an
# install from the sdist (scripts/check_sdist.sh) and from the repaired wheel
# (scripts/check_wheel.sh), then the docs (Sphinx, -W;
# scripts/build_docs.sh), then every benchmark once with
# timing off (so the benches keep working; speed is measured by
# scripts/bench.sh and `pytest benches --benchmark-only`, never asserted).
# Extra arguments go to the test-suite pytest (e.g. scripts/test.sh -k town -x).
# Exits non-zero if any run fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
status=0
PYTHON="$ROOT/.venv/bin/python" scripts/run_suite.sh "$@" || status=$?
# The sdist: built, installed in a fresh virtualenv (compiled against the
# system's hiredis) and the suite run against that install over the
# extension's transport only: the point of the install is the compiled
# extension; the pure-Python transport ran above (run_suite.sh), and one run
# of the suite costs about 6 minutes on a 2-core machine.
TRANSPORTS=hiredis scripts/check_sdist.sh "$@" || status=$?
# The wheel, as released: hiredis built from its pinned source, the wheel
# repaired by auditwheel (libhiredis bundled), installed in a fresh
# virtualenv and the suite run against it, over the extension's transport
# (as the sdist, above), in a mount namespace where the system libhiredis is
# hidden so that only the bundled copy can load (scripts/check_wheel.sh;
# by hand, WHEEL_ENV=chroot checks it on a Debian without libhiredis).
WHEEL_ENV=venv TRANSPORTS=hiredis scripts/check_wheel.sh "$@" || status=$?
# The documentation, warnings as errors, every public name in the reference.
scripts/build_docs.sh || status=$?
.venv/bin/python -m pytest benches --benchmark-disable -q || status=$?
# The sanitizer job (issue 10): the extension built with ASan + UBSan against
# hiredis 0.14 (the system's) and 1.2 (scripts/build_hiredis.sh: the pinned
# sdist from PyPI, sha256-checked), running the transport, reply-fuzz, misuse,
# reconnect and cancellation tests (scripts/sanitize.sh; 8 to 15 minutes on 2
# cores). TINYTOWN_SKIP_SANITIZE=1 leaves it out (e.g. for a quick local run).
if [ "${TINYTOWN_SKIP_SANITIZE:-0}" != 1 ]; then
    scripts/sanitize.sh || status=$?
fi
exit "$status"
