"""tinytown without its compiled extension: import, Channel and SyncChannel.

The child process refuses ``import tinytown._transport.ext`` before it imports
tinytown (tests/no_extension.py), then runs the Channel and SyncChannel
suites, whose cases are tests/channel_cases.py: everything runs on the
Python transports, with one logged warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.timeout(600)  # a whole child suite: the default per-test 120 s is for one test
def test_channel_and_sync_channel_suites_without_the_extension() -> None:
    env = dict(os.environ)
    env.pop("TINYTOWN_TRANSPORT", None)   # the automatic choice is what is tested
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run(
        [sys.executable, str(HERE / "no_extension.py"), "-q", "-p", "no:cacheprovider",
         "-x", "--rootdir", str(HERE.parent), str(HERE / "test_channel.py"), str(HERE / "test_sync_channel.py")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "without tinytown._transport.ext" in output
    assert "1 fallback warning(s)" in output
    assert " passed" in output and " failed" not in output and " error" not in output
