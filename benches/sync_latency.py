"""SyncChannel: one operation's latency beside the C client's, on a Unix socket.

    .venv/bin/python benches/sync_latency.py [--rounds 7] [--per-round 5000]

Performance target of the sync channel: the median of one send / try_receive
/ get / set <= 1.15 x redis-benchmark ``-c 1`` p50. A private redis-server
(tinytown.bench.RedisServer) runs pinned to one CPU, this process and
redis-benchmark (which inherits the affinity) to another, as in
``tinytown bench``. Each round measures redis-benchmark's p50 for an RPUSH of
the same message JSON, then the median of ``--per-round`` timed calls of each
operation; the table shows medians over rounds of each operation's ratio to
its round's C p50. Exits 1 if a ratio misses the target (``--target``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tinytown import Agent, AgentId, Message, MessageType, SyncChannel, Task
from tinytown.bench import RedisServer, placement, redis_benchmark

TARGET = 1.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5000)
    parser.add_argument("--target", type=float, default=TARGET)
    args = parser.parse_args(argv)

    cpus = placement()
    with tempfile.TemporaryDirectory(prefix="tt-sync-bench-") as tmp:
        server = RedisServer(Path(tmp), cpus=cpus[1] if cpus else None)
        try:
            if cpus:
                os.sched_setaffinity(0, cpus[0])
            return run(server, args)
        finally:
            server.stop()


def run(server: RedisServer, args: argparse.Namespace) -> int:
    channel = SyncChannel.connect(server.url, town="bench")
    agent = AgentId.new()
    message = Message.new(AgentId.supervisor(), agent,
                          MessageType.Task(description="Review the pull request #1234"))
    state, task = Agent.new("worker-1", "claude"), Task.new("Refactor the scheduler")
    channel.set_agent_state(state)
    channel.set_task(task)
    ops = {
        "send": lambda: channel.send(message),
        "try_receive": lambda: channel.try_receive(agent),   # pops what send pushed
        "inbox_len": lambda: channel.inbox_len(agent),
        "get_agent_state": lambda: channel.get_agent_state(state.id),
        "set_agent_state": lambda: channel.set_agent_state(state),
        "get_task": lambda: channel.get_task(task.id),
        "set_task": lambda: channel.set_task(task),
    }
    c_key = "tt:bench:inbox:c-client"
    clock = time.perf_counter_ns
    c_p50: list[float] = []
    c_avg: list[float] = []
    ratios: dict[str, list[float]] = {name: [] for name in ops}
    latency: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.rounds):
        c = redis_benchmark(server, ["RPUSH", c_key, message.to_json().decode()],
                            requests=args.per_round)
        if c is None:
            sys.exit("redis-benchmark not found (apt-get install redis-tools)")
        server.cli("DEL", c_key)
        c_ns = c["p50_ms"] * 1e6
        c_p50.append(c_ns)
        c_avg.append(c["avg_ms"] * 1e6)
        for name, op in ops.items():
            samples = []
            for _ in range(args.per_round):
                start = clock()
                op()
                samples.append(clock() - start)
            median = statistics.median(samples)
            latency[name].append(median)
            ratios[name].append(median / c_ns)
    channel.close()

    # redis-benchmark's p50 comes in coarse steps (often 8 us apart at this
    # scale); its mean is shown beside it for reference.
    print(f"redis-benchmark -c 1 RPUSH: p50 median {statistics.median(c_p50) / 1000:.1f} us "
          f"(rounds: {', '.join(f'{x / 1000:.0f}' for x in c_p50)}), "
          f"mean {statistics.median(c_avg) / 1000:.1f} us; {args.rounds} rounds of {args.per_round}")
    print(f"{'operation':18s} {'median':>10s} {'ratio to C p50':>15s}  target <= {args.target}")
    missed = []
    for name in ops:
        ratio = statistics.median(ratios[name])
        ok = ratio <= args.target
        if not ok:
            missed.append(name)
        print(f"{name:18s} {statistics.median(latency[name]) / 1000:8.1f} us {ratio:15.2f}  "
              f"{'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
