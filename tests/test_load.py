"""scripts/load.py at a CI-sized scale: producer and consumer processes, real Redis.

The default run (1,000,000 messages) is for measuring: see docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LOAD = Path(__file__).resolve().parents[1] / "scripts" / "load.py"


def run_load(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(LOAD), "--json", *args],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_plain_mode_delivers_every_message_exactly_once():
    result = run_load("--messages", "20000")
    assert result["ok"] and result["sent"] == 20000
    assert result["unique"] == 20000 and result["duplicates"] == 0 and result["missing"] == 0
    assert result["left_in_redis"] == 0 and result["send_rate"] > 0


@pytest.mark.timeout(300)
def test_reliable_mode_loses_nothing_when_consumers_are_killed():
    result = run_load("--messages", "10000", "--mode", "reliable", "--kill", "4", "--work-ms", "0.2")
    assert result["ok"] and result["consumers_killed"] == 4
    assert result["unique"] == 10000 and result["missing"] == 0 and result["unexpected"] == 0
    assert result["duplicates"] <= result["consumers_killed"]
    assert result["left_in_redis"] == 0


def test_kill_needs_reliable_mode():
    proc = subprocess.run([sys.executable, str(LOAD), "--messages", "10", "--kill", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--kill needs --mode reliable" in proc.stderr
