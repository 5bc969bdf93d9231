#!/usr/bin/env bash
# Build the documentation (docs/: the guides and the API reference generated
# from the public docstrings by Sphinx autodoc) into build/docs/, with
# warnings as errors and nitpicky references (a broken reference to
# tinytown's API fails), then check that every public name of tinytown is in
# the reference with a docstring (scripts/check_docs.py). Used by
# scripts/test.sh. Environment: PYTHON (default: the checkout's .venv, whose
# `docs` extra has Sphinx and MyST). Exits non-zero on any warning.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
rm -rf build/docs
"$PYTHON" -m sphinx -W --keep-going -n -q -b html docs build/docs
"$PYTHON" scripts/check_docs.py
echo "build_docs: build/docs/index.html"
