"""The version has one source, tinytown.__version__, which the package metadata
(pyproject.toml's dynamic version), the CLI and the docs read."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import tinytown


def test_installed_metadata_version_is_tinytown_version():
    assert importlib.metadata.version("tinytown") == tinytown.__version__


def test_cli_version_is_tinytown_version():
    out = subprocess.run([sys.executable, "-m", "tinytown", "--version"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["tinytown", tinytown.__version__]
