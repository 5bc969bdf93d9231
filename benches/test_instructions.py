"""User-space instructions per send under callgrind: a figure scheduling noise cannot move.

tinytown (SyncChannel, Channel on uvloop and on asyncio, JSON encoding
included) beside redis-py, valkey-glide, coredis and a minimal hiredis C loop
(the floor), each run twice under ``valgrind --tool=callgrind`` with
different send counts; the difference divided by the difference in counts is
the cost of one send. Recorded in ``extra_info`` for benches/ratios.py.
With benchmarks disabled (CI) only the floor and the SyncChannel run, with
small counts, to check the machinery still works.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import record
from tinytown import bench as bench_module
from tinytown.bench import Bench, Result, instructions_per_send


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_per_send(benchmark, bench: Bench, monkeypatch) -> None:
    clients = bench_module.CALLGRIND_CLIENTS
    if benchmark.disabled:
        monkeypatch.setattr(bench_module, "CALLGRIND_N", (50, 100))
        clients = ("hiredis C loop", "tinytown SyncChannel")
    counts: dict[str, float] = {}
    benchmark.group = "instructions"
    benchmark.pedantic(lambda: counts.update(instructions_per_send(bench.server, clients=clients)),
                       rounds=1, iterations=1)
    assert set(counts) == set(clients)
    assert all(n > 0 for n in counts.values())
    floor = counts["hiredis C loop"]
    result = Result("instructions per send", "instructions", counts["tinytown SyncChannel"],
                    extra={"instructions": counts,
                           "x_floor": {who: n / floor for who, n in counts.items()}})
    record(benchmark, result)
