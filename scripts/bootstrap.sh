#!/usr/bin/env bash
# Set up a checkout of tinytown from nothing, idempotently:
#   1. system packages: redis-server, redis-cli/redis-benchmark, libhiredis-dev,
#      pkg-config (plus a C compiler / Python venv support if missing), via apt;
#   2. a virtualenv in .venv with tinytown installed editable plus its test,
#      bench and docs dependencies (re-done when pyproject.toml or setup.py change);
#   3. the Cython extension built in place, recompiled only when ext/ changed.
# Prints one short line per step; a failing step prints its full output.
# Environment: PYTHON (interpreter for the venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.tinytown-install-stamp"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'bootstrap: %s\n' "$*"; }

# run CMD... quietly; on failure show what it printed and stop.
quiet() {
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/tinytown-bootstrap.XXXXXX")"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        printf 'bootstrap: FAILED: %s\n' "$*" >&2
        exit 1
    fi
    rm -f "$log"
}

SUDO=()
if [ "$(id -u)" != 0 ]; then
    SUDO=(sudo)
fi

# ---------------------------------------------------------------- apt
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
{ command -v redis-cli && command -v redis-benchmark; } >/dev/null 2>&1 || packages+=(redis-tools)
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists hiredis; } || packages+=(libhiredis-dev pkg-config)
if [ "${#packages[@]}" -gt 0 ]; then
    # One package missing means a fresh machine: install the whole set.
    packages=(redis-server redis-tools libhiredis-dev pkg-config)
fi
command -v cc >/dev/null 2>&1 || packages+=(build-essential)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    PYTHON=python3
    packages+=(python3 python3-venv python3-dev)
else
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
    "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        >/dev/null 2>&1 || packages+=(python3-dev)
fi

if [ "${#packages[@]}" -gt 0 ]; then
    had_redis=0
    command -v redis-server >/dev/null 2>&1 && had_redis=1
    say "apt-get install ${packages[*]}"
    quiet "${SUDO[@]}" apt-get update
    quiet "${SUDO[@]}" apt-get install -y "${packages[@]}"
    if [ "$had_redis" = 0 ]; then
        # The package may have started redis-server as a system service on
        # 127.0.0.1:6379. Nothing here uses it (tests and towns start their
        # own servers): stop it and keep it from starting at boot.
        if [ -x /etc/init.d/redis-server ]; then
            "${SUDO[@]}" /etc/init.d/redis-server stop >/dev/null 2>&1 || true
        fi
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            "${SUDO[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d redis-server disable >/dev/null 2>&1 || true
        fi
    fi
fi
pkg-config --exists hiredis || { say "libhiredis-dev still missing (pkg-config hiredis)"; exit 1; }

# ---------------------------------------------------------------- venv
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating .venv with $("$PYTHON" -c 'import sys; print(sys.executable)')"
    quiet "$PYTHON" -m venv --clear "$VENV"
    rm -f "$STAMP"
fi
PY="$VENV/bin/python"

# Re-install when the packaging changes (or the venv is new): pyproject.toml,
# setup.py, or the version (tinytown.__version__, the metadata's source). The
# install is editable: src/ is imported in place, so edits to .py files need nothing.
want_stamp="$({ cat pyproject.toml setup.py; grep '^__version__' src/tinytown/__init__.py; } | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read() + sys.version.encode()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want_stamp" ] || ! "$PY" -m pip show -q tinytown >/dev/null 2>&1; then
    say "pip install -e '.[test,bench,peers,docs]' into .venv"
    # Build requirements of pyproject.toml, in the venv itself so that the
    # in-place rebuilds below use the same setuptools and Cython.
    quiet "$PY" -m pip install 'setuptools>=68' wheel 'Cython>=3.0'
    quiet "$PY" -m pip install --no-build-isolation -e '.[test,bench,peers,docs]'
    printf '%s\n' "$want_stamp" >"$STAMP"
fi

# ---------------------------------------------------------------- extension
# Incremental: cythonize regenerates ext/*.c when a .pyx/.pxd/include changed,
# and build_ext recompiles only extensions older than their sources.
# The extension was once the module tinytown._transport, built in place as
# src/tinytown/_transport.cpython-*.so; it is now tinytown._transport.ext
# (src/tinytown/_transport/ext.cpython-*.so). Remove a stale old build and its
# generated C so nothing old is loaded or packaged.
rm -f src/tinytown/_transport.cpython-*.so src/tinytown/_transport.*.pyd ext/_transport.c
say "building the extension in place (python setup.py build_ext --inplace)"
quiet "$PY" setup.py build_ext --inplace
say "ready: $("$PY" -c 'import sys; print(sys.version.split()[0])') in .venv, $(redis-server --version | awk '{print $1, $2, $3}'), hiredis $(pkg-config --modversion hiredis)"
