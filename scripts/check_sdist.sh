#!/usr/bin/env bash
# The sdist, as a user without a wheel gets it:
#   1. `python -m build --sdist` from this checkout, and a check that the
#      archive holds what the build and the suite need (ext/ with its
#      headers and includes, py.typed, the .pyi stubs, tests, scripts);
#   2. a fresh virtualenv, the sdist installed in it with pip (the
#      extension compiled there against the system's libhiredis, found by
#      pkg-config), with the test extras;
#   3. the test suite run against that install: from a copy of the sdist's
#      tests/, scripts/ and pyproject.toml in a folder with no src/, so the
#      installed package is what is imported (checked before the run).
# Used by scripts/test.sh (so CI runs it). Work files: build/check-sdist/.
# Environment: PYTHON (interpreter for the virtualenvs, default python3);
# TRANSPORTS (the transports the suite runs over, default "hiredis python").
# Extra arguments go to pytest. Needs PyPI (pip installs build, Cython).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/build/check-sdist"
PYTHON="${PYTHON:-python3}"
TRANSPORTS="${TRANSPORTS:-hiredis python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'check_sdist: %s\n' "$*"; }
fail() { printf 'check_sdist: FAILED: %s\n' "$*" >&2; exit 1; }

rm -rf "$WORK/dist" "$WORK/venv" "$WORK/suite" "$WORK/unpacked"
mkdir -p "$WORK"

# ------------------------------------------------------------------ 1. build
if ! "$WORK/tools/bin/python" -c 'import build' >/dev/null 2>&1; then
    rm -rf "$WORK/tools"
    "$PYTHON" -m venv "$WORK/tools"
    "$WORK/tools/bin/python" -m pip install -q build
fi
say "1. python -m build --sdist"
"$WORK/tools/bin/python" -m build --sdist --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "python -m build --sdist"; }
sdist="$(ls "$WORK"/dist/tinytown-*.tar.gz)"
say "built $(basename "$sdist")"
# (Cython's ext/*.c are build outputs; src/tinytown/_floor.c, the bench's C
# loop, is a source.) (here-strings, not pipes into grep -q: with pipefail, an early exit of
# grep would fail the pipeline)
listing="$(tar -tzf "$sdist")"
needed=(setup.py pyproject.toml MANIFEST.in README.md)
for f in ext/*.pyx ext/*.h ext/includes/* src/tinytown/*.py src/tinytown/_transport/*.py src/tinytown/_transport/*.pyi \
         src/tinytown/py.typed \
         tests/*.py tests/data/wire/*.jsonl tests/data/wire/*/*.jsonl scripts/*.sh scripts/*.py examples/*.py; do
    needed+=("$f")
done
for f in "${needed[@]}"; do
    grep -q "^[^/]*/$f\$" <<<"$listing" || fail "the sdist lacks $f"
done
if grep -qE '^[^/]*/ext/[^/]*\.c$|\.so$|__pycache__' <<<"$listing"; then
    grep -E '^[^/]*/ext/[^/]*\.c$|\.so$|__pycache__' <<<"$listing" >&2
    fail "the sdist holds build outputs"
fi
say "the sdist holds every file of ext/, the package, its stubs, tests and scripts (${#needed[@]} checked)"

# ------------------------------------------------------------------ 2. install
say "2. a fresh virtualenv; pip install the sdist[test] (compiles against the system libhiredis)"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$sdist[test,bench,peers]" >"$WORK/install.log" 2>&1 \
    || { tail -60 "$WORK/install.log"; fail "pip install the sdist"; }

# ------------------------------------------------------------------ 3. the suite
mkdir -p "$WORK/unpacked" "$WORK/suite"
tar -xzf "$sdist" -C "$WORK/unpacked"
src="$(ls -d "$WORK"/unpacked/tinytown-*)"
cp -r "$src/tests" "$src/scripts" "$src/examples" "$src/benches" "$src/docs" "$src/README.md" "$src/pyproject.toml" "$WORK/suite/"
cd "$WORK/suite"
"$WORK/venv/bin/python" - "$WORK/venv" <<'PY'
import os, sys
import tinytown, tinytown._transport.ext
venv = os.path.realpath(sys.argv[1])
for module in (tinytown, tinytown._transport.ext):
    where = os.path.realpath(module.__file__)
    assert where.startswith(venv + os.sep), f"{module.__name__} imported from {where}, not the install"
print(f"check_sdist: tinytown imported from {os.path.dirname(tinytown.__file__)}")
PY
status=0
for transport in $TRANSPORTS; do
    say "3. the suite against the installed sdist, over the $transport transport"
    TINYTOWN_TRANSPORT="$transport" "$WORK/venv/bin/python" -m pytest tests -p no:cacheprovider "$@" || status=$?
done
[ "$status" = 0 ] || fail "the suite failed against the installed sdist"
say "all checks passed"
