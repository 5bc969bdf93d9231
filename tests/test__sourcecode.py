"""Lint and types, run with the suite (as asyncpg's tests/test__sourcecode.py
runs flake8 and mypy): ``ruff check`` over the Python sources and ``mypy``
(strict) over the package, both configured in pyproject.toml and installed
by the ``test`` extra, so neither is skipped.

From a checkout the tools check the checkout. Where the suite runs against
an install instead (scripts/check_sdist.sh and scripts/check_wheel.sh copy
tests/, scripts/, pyproject.toml... into a folder with no src/), they check
the installed package's .py and .pyi files, laid out as src/tinytown in a
temporary copy of that folder beside its pyproject.toml: what users got.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What pyproject.toml's [tool.ruff] include names (src/ is handled apart).
_LINTED = ("tests", "benches", "scripts", "examples", "docs/conf.py")


def _copy_sources(src: Path, dst: Path) -> None:
    """Copy the .py/.pyi files (and py.typed) under ``src`` to ``dst``."""
    for path in src.rglob("*"):
        if path.is_file() and (path.suffix in (".py", ".pyi") or path.name == "py.typed") \
                and "__pycache__" not in path.parts:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder holding pyproject.toml and src/tinytown to check."""
    if (ROOT / "src" / "tinytown" / "__init__.py").is_file():
        yield ROOT
        return
    spec = importlib.util.find_spec("tinytown")
    assert spec is not None and spec.submodule_search_locations, "tinytown is not installed"
    installed = Path(next(iter(spec.submodule_search_locations)))
    copy = tmp_path_factory.mktemp("sourcecode")
    shutil.copyfile(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for name in _LINTED:
        path = ROOT / name
        if path.is_dir():
            _copy_sources(path, copy / name)
        elif path.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy / name)
    _copy_sources(installed, copy / "src" / "tinytown")
    yield copy


def _run(tree: Path, *argv: str) -> None:
    """Run ``python -m argv...`` in ``tree``; fail with its output unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=tree, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} (in {tree}) exited {proc.returncode}:\n{proc.stdout}",
                    pytrace=False)


@pytest.mark.timeout(600)  # a cold mypy cache takes a while on a loaded machine
def test_ruff(tree: Path) -> None:
    _run(tree, "ruff", "check", "--no-cache", "--output-format", "concise")


@pytest.mark.timeout(600)
def test_mypy(tree: Path) -> None:
    # The files and the strictness come from pyproject.toml ([tool.mypy]).
    _run(tree, "mypy")
