"""Throughput and end-to-end rows: concurrency, send_many, another process, memory."""

from __future__ import annotations

import os
import statistics

from conftest import record, rounds
from tinytown.bench import Bench, Result

MEMORY_PAIRS = int(os.environ.get("TINYTOWN_BENCH_MEMORY_PAIRS", "1000000"))


def test_100_coroutines_one_channel(benchmark, bench: Bench, run) -> None:
    tt: list[float] = []
    base: list[float] = []
    c: list[float] = []

    def baselines() -> None:
        base.append(run(bench.concurrent_round("redis_py")))
        rate = bench.concurrent_c()
        if rate is not None:
            c.append(rate)

    benchmark.group = "throughput"
    benchmark.pedantic(lambda: tt.append(run(bench.concurrent_round("tinytown"))),
                       setup=baselines, rounds=rounds(benchmark), iterations=1)
    record(benchmark, Result("100 coroutines, one Channel", "ops/s", statistics.median(tt),
                             redis_py=statistics.median(base),
                             c_client=statistics.median(c) if c else None))
    assert all(rate > 0 for rate in tt)


def test_send_many_10000(benchmark, bench: Bench, run) -> None:
    tt: list[float] = []
    base: list[float] = []
    c: list[float] = []

    def baselines() -> None:
        base.append(run(bench.send_many_round("redis_py")))
        rate = bench.send_many_c()
        if rate is not None:
            c.append(rate)

    benchmark.group = "throughput"
    benchmark.pedantic(lambda: tt.append(run(bench.send_many_round("tinytown"))),
                       setup=baselines, rounds=rounds(benchmark), iterations=1)
    record(benchmark, Result("send_many(10000)", "ops/s", statistics.median(tt),
                             redis_py=statistics.median(base),
                             c_client=statistics.median(c) if c else None))


def test_end_to_end_another_process(benchmark, bench: Bench, run) -> None:
    messages = 50 if benchmark.disabled else 500
    results: list[Result] = []
    benchmark.group = "end to end"
    benchmark.pedantic(lambda: results.append(run(bench.end_to_end(messages))),
                       rounds=1, iterations=1)
    assert len(results[0].extra["samples"]["tinytown"]) == messages
    record(benchmark, results[0])


def test_memory_over_send_receive(benchmark, bench: Bench, run) -> None:
    pairs = 10_000 if benchmark.disabled else MEMORY_PAIRS
    results: list[Result] = []
    benchmark.group = "memory"
    benchmark.pedantic(lambda: results.append(run(bench.memory(pairs))), rounds=1, iterations=1)
    record(benchmark, results[0])
