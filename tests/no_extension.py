"""Run pytest with the compiled extensions unimportable, as on a machine
where they failed to build or load (``python tests/no_extension.py ARGS...``).

A meta-path finder refusing ``tinytown._transport.ext`` and ``tinytown._codec``
is installed before anything imports tinytown; then the checks below, then
``pytest ARGS``: the Python transports and the Python Message encoder.
Used by tests/test_no_extension.py.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from typing import Any

BLOCKED = "tinytown._transport.ext"
BLOCKED_CODEC = "tinytown._codec"


class RefuseExtension(importlib.abc.MetaPathFinder):
    """Makes ``import tinytown._transport.ext`` fail as a missing .so would."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname in (BLOCKED, BLOCKED_CODEC):
            raise ImportError(f"No module named {BLOCKED!r} (blocked by tests/no_extension.py)",
                              name=fullname)
        return None


class Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "using the pure-Python transport" in record.getMessage():
            self.messages.append(record.getMessage())


def main(args: list[str]) -> int:
    assert BLOCKED not in sys.modules and "tinytown" not in sys.modules
    sys.meta_path.insert(0, RefuseExtension())
    warnings = Count()
    logging.getLogger("tinytown").addHandler(warnings)

    import tinytown
    from tinytown import message
    from tinytown._transport import choose, pyasync, pysync

    assert BLOCKED not in sys.modules, "the extension was imported"
    assert BLOCKED_CODEC not in sys.modules, "the C encoder was imported"
    assert tinytown.Message.to_json is message._py_to_json
    assert choose.connection_class() is pyasync.PyConnection
    assert choose.sync_connection_class() is pysync.PySyncConnection
    print(f"no_extension: tinytown {tinytown.__version__} imported from {tinytown.__file__} "
          f"without {BLOCKED}", flush=True)

    import pytest

    status = int(pytest.main(args))
    assert BLOCKED not in sys.modules, "the extension was imported"
    assert BLOCKED_CODEC not in sys.modules, "the C encoder was imported"
    print(f"no_extension: {len(warnings.messages)} fallback warning(s): {warnings.messages}")
    if len(warnings.messages) != 1:
        print("no_extension: FAILED: expected exactly one logged fallback warning", flush=True)
        return status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
