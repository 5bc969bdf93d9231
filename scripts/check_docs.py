#!/usr/bin/env python3
"""Fail when a public name of tinytown has no place in the API reference or no docstring.

Every name in ``tinytown.__all__`` must be documented in docs/api.rst by an
autodoc directive, and it and each of its public members (methods,
properties, class methods; not enum members or dataclass fields) must have
a docstring of its own, since that is what the reference shows. Run by
scripts/build_docs.sh after the Sphinx build. Exits 1 listing what is missing.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import tinytown  # noqa: E402


def undocumented() -> list[str]:
    api = (ROOT / "docs" / "api.rst").read_text()
    directives = set(re.findall(r"^\.\. auto(?:class|exception|function|data)::\s+(\S+)", api, re.M))
    missing: list[str] = []
    for name in tinytown.__all__:
        obj = getattr(tinytown, name)
        if name not in directives and f"tinytown.{name}" not in directives:
            missing.append(f"tinytown.{name}: not in docs/api.rst")
        if not inspect.getdoc(obj):
            missing.append(f"tinytown.{name}: no docstring")
        if not inspect.isclass(obj) or issubclass(obj, (enum.Enum, BaseException)):
            continue
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if not (inspect.isfunction(value) or isinstance(value, property)):
                continue
            doc = value.__doc__
            if not doc or not doc.strip():
                missing.append(f"tinytown.{name}.{member}: no docstring")
    return missing


def main() -> int:
    missing = undocumented()
    for line in missing:
        print(f"check_docs: {line}", file=sys.stderr)
    if missing:
        print(f"check_docs: FAILED: {len(missing)} public name(s) undocumented", file=sys.stderr)
        return 1
    print(f"check_docs: every public name of tinytown ({len(tinytown.__all__)}) is in the reference, documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
