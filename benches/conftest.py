"""Fixtures of the benchmark suites: private redis-servers and one Bench per session.

The servers (one on a Unix socket, one on TCP for the Unix-vs-TCP rows) are
started by the session. Clients and servers are pinned to CPUs the same way
for every contender (see tinytown.bench.placement).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinytown.bench import Bench, RedisServer, placement

ROUNDS = int(os.environ.get("TINYTOWN_BENCH_ROUNDS", "7"))
PER_ROUND = int(os.environ.get("TINYTOWN_BENCH_PER_ROUND", "300"))


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def run(loop: asyncio.AbstractEventLoop) -> Any:
    return loop.run_until_complete


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    pinned = placement()
    previous = os.sched_getaffinity(0)
    if pinned is not None:
        os.sched_setaffinity(0, pinned[0])
    with tempfile.TemporaryDirectory(prefix="tinytown-benches-") as tmp:
        unix_dir, tcp_dir = Path(tmp) / "unix", Path(tmp) / "tcp"
        unix_dir.mkdir()
        tcp_dir.mkdir()
        server = RedisServer(unix_dir, cpus=pinned and pinned[1])
        tcp_server = RedisServer(tcp_dir, tcp=True, cpus=pinned and pinned[1])
        try:
            yield server, tcp_server
        finally:
            server.stop()
            tcp_server.stop()
            os.sched_setaffinity(0, previous)


@pytest.fixture(scope="session")
def bench(servers: tuple[RedisServer, RedisServer], run: Any) -> Iterator[Bench]:
    server, tcp_server = servers
    b = Bench(server, tcp_server, rounds=ROUNDS, per_round=PER_ROUND)
    run(b.__aenter__())
    try:
        yield b
    finally:
        run(b.__aexit__(None, None, None))


def rounds(benchmark: Any) -> int:
    """Interleaved rounds; one when benchmarks are disabled (CI only checks they run)."""
    return 1 if benchmark.disabled else ROUNDS


def record(benchmark: Any, result: Any) -> None:
    """Put a tinytown.bench.Result (medians, baselines, ratios) in the JSON report."""
    data = result.as_dict()
    extra = data.pop("extra")
    data["extra"] = {k: v for k, v in extra.items() if k != "samples"}
    benchmark.extra_info.update(data)
