"""Throughput and end-to-end rows: concurrency, send_many, another process, memory."""

from __future__ import annotations

import os

from conftest import record, rounds
from tinytown.bench import Bench, Result, _rate_result

MEMORY_PAIRS = int(os.environ.get("TINYTOWN_BENCH_MEMORY_PAIRS", "1000000"))


def measure_rate(benchmark, bench: Bench, run, name: str, round_of, c_round) -> Result:
    """Interleaved rounds of a rate: pytest-benchmark times tinytown's round
    (``round_of("tinytown")``, which returns (rate, CPU ns per op)); the
    untimed setup of each round runs every installed peer's round and the C
    client's (``c_round()``, None if absent)."""
    present = bench._present()
    rates: dict[str, list[tuple[float, float]]] = {who: [] for who in present}
    c: list[tuple[float, float]] = []

    def baselines() -> None:
        for who in present[1:]:
            rates[who].append(run(round_of(who)))
        row = c_round()
        if row is not None:
            c.append(row)

    benchmark.group = "throughput"
    benchmark.pedantic(lambda: rates["tinytown"].append(run(round_of("tinytown"))),
                       setup=baselines, rounds=rounds(benchmark), iterations=1)
    assert all(rate > 0 and cpu > 0 for rows in rates.values() for rate, cpu in rows)
    result = _rate_result(name, rates, c)
    record(benchmark, result)
    return result


def test_100_coroutines_one_channel(benchmark, bench: Bench, run) -> None:
    measure_rate(benchmark, bench, run, "100 coroutines, one Channel",
                 bench.concurrent_round, bench.concurrent_c)


def test_send_many_10000(benchmark, bench: Bench, run) -> None:
    measure_rate(benchmark, bench, run, "send_many(10000)", bench.send_many_round, bench.send_many_c)


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
