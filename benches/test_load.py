"""Work that piles up: pushes queued during a stall, and send_many of 1 MB messages.

The ``--load`` rows of ``tinytown bench``, here as pytest-benchmark rows so a
regression shows as a number: each case runs tinytown (the extension), then
its pure-Python transport and redis-py on the same server
(:func:`tinytown.bench.drain_after_stall`, :func:`tinytown.bench.large_messages`).
pytest-benchmark times tinytown's run; the row records all three times and
``benches/ratios.py`` checks tinytown at most 1.0x the Python transport.

Sizes: ``TINYTOWN_BENCH_DRAIN_SIZES`` (commands of 1 KB, default
100000,200000,400000) and ``TINYTOWN_BENCH_LARGE_COUNTS`` (messages of
1 MB, default 100,200,400); with ``--benchmark-disable`` (CI only checks
that they run) 5000 commands and 10 messages, after a 0.1 s stall.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable

import pytest

from conftest import record
from tinytown.bench import Bench, Result, drain_after_stall, large_messages


def _sizes(name: str, default: str) -> list[int]:
    return [int(n) for n in os.environ.get(name, default).split(",") if n.strip()]


DRAIN_SIZES = _sizes("TINYTOWN_BENCH_DRAIN_SIZES", "100000,200000,400000")
LARGE_COUNTS = _sizes("TINYTOWN_BENCH_LARGE_COUNTS", "100,200,400")
HAVE_REDIS_PY = importlib.util.find_spec("redis") is not None


def measure_load(benchmark, run, name: str, case: Callable[[str], Awaitable[float]]) -> Result:
    """Seconds of ``case(who)`` for tinytown (timed by pytest-benchmark), its
    Python transport and redis-py (when installed), recorded as one row."""
    times: dict[str, float] = {}

    def baselines() -> None:
        for who in ("python", "redis_py") if HAVE_REDIS_PY else ("python",):
            times[who] = run(case(who))

    benchmark.group = "under load"
    benchmark.pedantic(lambda: times.__setitem__("tinytown", run(case("tinytown"))),
                       setup=baselines, rounds=1, iterations=1)
    assert all(t > 0 for t in times.values()), times
    result = Result(name=name, unit="s", tinytown=times["tinytown"], redis_py=times.get("redis_py"),
                    python_transport=times["python"])
    record(benchmark, result)
    return result


@pytest.mark.parametrize("count", DRAIN_SIZES)
def test_drain_after_stall(benchmark, bench: Bench, run, count: int) -> None:
    n, stall = (5_000, 0.1) if benchmark.disabled else (count, 1.0)
    measure_load(benchmark, run, f"drain {n:,} x 1 KB after a stall",
                 lambda who: drain_after_stall(bench.server, who, n, stall))


@pytest.mark.parametrize("count", LARGE_COUNTS)
def test_send_many_of_1_mb_messages(benchmark, bench: Bench, run, count: int) -> None:
    n = 10 if benchmark.disabled else count
    measure_load(benchmark, run, f"send_many {n} x 1 MB",
                 lambda who: large_messages(bench.server, who, n))
