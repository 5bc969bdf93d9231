"""The examples of examples/ run to completion, on both transports, each
against the throwaway redis-server it starts (tinytown.Town in a temp dir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinytown import TransportUnavailableError
from tinytown._transport.choose import TRANSPORTS, connection_class

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(args: list[str], transport: str) -> subprocess.CompletedProcess[str]:
    try:
        connection_class(transport)
    except TransportUnavailableError as exc:  # e.g. the no-extension install check
        pytest.skip(str(exc))
    env = {**os.environ, "TINYTOWN_TRANSPORT": transport}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=EXAMPLES)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("example", ["two_agents.py", "worker_010.py"])
def test_example_runs(example: str, transport: str) -> None:
    proc = _run([str(EXAMPLES / example)], transport)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done:" in proc.stdout


def test_worker_010_does_every_step() -> None:
    proc = _run([str(EXAMPLES / "worker_010.py")], TRANSPORTS[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for step in ("registered as", "<- urgent", "<- docket", "-> acked", "stop requested",
                 "state=stopped, tasks_completed=2",
                 "events: ['agent_spawned', 'task_completed', 'task_completed', 'agent_stopped']"):
        assert step in out, step


def test_worker_010_fails_when_a_step_does_not_happen() -> None:
    """The example's own checks can fail: a supervisor whose stop request never
    lands leaves the worker running, and the example exits 1."""
    code = ("import sys, tinytown, worker_010 as ex\n"
            "async def no_stop(self, agent_id): pass\n"
            "tinytown.Channel.request_stop = no_stop\n"
            "ex.DEADLINE = 3.0\n"
            "sys.argv = ['worker_010.py']\n"
            "sys.exit(ex.run())\n")
    proc = _run(["-c", code], TRANSPORTS[-1])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "example FAILED: not done in 3 s" in proc.stderr
