"""One Channel (or SyncChannel) call at a time: latency and client CPU time beside
redis-py, valkey-glide, coredis and redis-benchmark.

pytest-benchmark times tinytown's batch of each round; the untimed ``setup``
of the same round runs the redis-py batch, the TCP batch and the C client,
so that every contender is measured in interleaved rounds. The per-operation
medians and ratios land in ``extra_info`` (see benches/ratios.py).
"""

from __future__ import annotations

import pytest

from conftest import record, rounds
from tinytown.bench import Bench

ASYNC_OPERATIONS = [
    "send", "try_receive", "receive (message waiting)", "inbox_len", "set_agent_state",
    "get_agent_state", "set_agent_state (hash layout)", "get_agent_state (hash layout)",
    "set_task", "get_task", "broadcast", "send_urgent", "should_stop",
    "update_agent_heartbeat (hash layout)", "docket_push", "docket_read (entry waiting)",
]
# The same calls on the blocking SyncChannel, beside redis-py's sync client.
OPERATIONS = ASYNC_OPERATIONS + [f"sync {name}" for name in ASYNC_OPERATIONS]


def test_operation_list_is_complete(bench: Bench) -> None:
    assert OPERATIONS == bench.operation_names()


@pytest.mark.parametrize("name", OPERATIONS)
def test_latency(benchmark, bench: Bench, run, name: str) -> None:
    op = bench.operation(name)
    run(op.setup())

    def baselines_then_prepare() -> None:
        for who in ("redis_py", "glide", "coredis", "tcp"):
            run(op.prepare(who))
            run(op.timed_round(who))
        op.c_round()
        run(op.prepare("tinytown"))

    benchmark.group = "latency: " + name
    benchmark.pedantic(lambda: run(op.timed_round("tinytown")),
                       setup=baselines_then_prepare, rounds=rounds(benchmark), iterations=1)
    result = op.result()
    assert result.tinytown > 0 and len(op.samples["tinytown"]) >= bench.per_round
    assert result.cpu["tinytown"] > 0
    for who in ("redis_py", "glide", "coredis"):  # every installed peer ran its equivalent
        if op.ops[who] is not None:
            assert len(op.samples[who]) >= bench.per_round, who
    if op.c_command is not None:  # and redis-benchmark, where it can run the command
        assert op.c_p50s, "redis-benchmark did not run"
    record(benchmark, result)
