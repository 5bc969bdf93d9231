#!/usr/bin/env python3
"""Turn one benchmark run into ratios and check them against the speed targets.

    pytest benches --benchmark-only --benchmark-json=bench.json
    python benches/ratios.py bench.json

Prints one line per target with the measured ratio; exits 1 when a target is
missed (or could not be measured), 0 when all are met. Every ratio compares
tinytown with a baseline measured in the same run, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

MB = 1_000_000


@dataclass
class Target:
    row: str           # Result.name in extra_info
    measure: str       # key of extra_info: ratio_redis_py, ratio_c_client, tinytown
    limit: float
    at_most: bool      # True: measured <= limit; False: measured >= limit
    label: str

    def check(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.limit if self.at_most else value >= self.limit


def targets() -> list[Target]:
    out = []
    for op in ("send", "try_receive", "get_agent_state", "set_agent_state", "get_task", "set_task"):
        out.append(Target(op, "ratio_redis_py", 0.70, True, f"{op} median vs redis-py asyncio"))
        out.append(Target(op, "ratio_c_client", 1.5, True, f"{op} median vs redis-benchmark -c 1 p50"))
    for op in ("sync send", "sync try_receive", "sync get_agent_state", "sync set_agent_state",
               "sync get_task", "sync set_task"):
        out.append(Target(op, "ratio_c_client", 1.15, True, f"{op} median vs redis-benchmark -c 1 p50"))
    out += [
        Target("100 coroutines, one Channel", "ratio_redis_py", 10.0, False,
               "100 coroutines sends/s vs redis-py asyncio"),
        Target("100 coroutines, one Channel", "ratio_c_client", 1.0, False,
               "100 coroutines sends/s vs redis-benchmark -c 100"),
        Target("send_many(10000)", "ratio_c_client", 0.25, False,
               "send_many(10000) msgs/s vs redis-benchmark -P 1000"),
        Target("send -> receive, another process", "ratio_c_client", 2.5, True,
               "send -> receive in another process vs redis-benchmark p50"),
    ]
    # Ahead of every Python peer measured in the same run: latency and client CPU.
    for op in ("send", "try_receive", "receive (message waiting)", "inbox_len", "get_agent_state",
               "set_agent_state", "get_task", "set_task", "broadcast"):
        for peer, label in (("glide", "valkey-glide"), ("coredis", "coredis")):
            out.append(Target(op, f"ratio_{peer}", 1.0, True, f"{op} median vs {label}"))
        for peer, label in (("redis_py", "redis-py"), ("glide", "valkey-glide"), ("coredis", "coredis")):
            out.append(Target(op, f"cpu_ratio_{peer}", 1.0, True, f"{op} client CPU/op vs {label}"))
    for row in ("100 coroutines, one Channel", "send_many(10000)"):
        for peer, label in (("glide", "valkey-glide"), ("coredis", "coredis")):
            out.append(Target(row, f"ratio_{peer}", 1.0, False, f"{row} vs {label}"))
    return out


@dataclass
class RowRatio:
    """tinytown's median in ``row`` / tinytown's median in ``baseline``, both
    measured in the same run: at most ``limit``."""

    row: str
    baseline: str
    limit: float
    label: str


def row_ratios() -> list[RowRatio]:
    return [
        RowRatio("set_agent_state (hash layout)", "set_agent_state", 1.3,
                 "set_agent_state, hash layout vs JSON layout"),
        RowRatio("sync set_agent_state (hash layout)", "sync set_agent_state", 1.3,
                 "sync set_agent_state, hash layout vs JSON layout"),
    ]


#: The Python peers: every row that measured one must be ahead of it.
PEERS = (("redis_py", "redis-py"), ("glide", "valkey-glide"), ("coredis", "coredis"))


def every_peer_targets(rows: dict[str, dict[str, Any]], covered: set[tuple[str, str]]) -> list[Target]:
    """Ahead of every Python peer measured in the same run, on every row that
    has one (latency and client CPU per operation at most 1.0x, rates at
    least 1.0x), beyond the rows :func:`targets` names."""
    out = []
    for name, row in rows.items():
        unit = row.get("unit")
        if unit not in ("ns", "ops/s"):
            continue
        for peer, label in PEERS:
            for measure, what in ((f"ratio_{peer}", "median" if unit == "ns" else "rate"),
                                  (f"cpu_ratio_{peer}", "client CPU/op")):
                if row.get(measure) is None or (name, measure) in covered:
                    continue
                at_most = unit == "ns" or measure.startswith("cpu_")
                out.append(Target(name, measure, 1.0, at_most, f"{name} {what} vs {label}"))
    return out


def load_targets(rows: dict[str, dict[str, Any]]) -> list[Target]:
    """The rows of benches/test_load.py (drain after a stall, send_many of
    1 MB messages): tinytown at most 1.0x its Python transport."""
    return [Target(name, "ratio_python_transport", 1.0, True, f"{name} vs the Python transport")
            for name, row in rows.items() if row.get("unit") == "s"]


#: Instructions per send (callgrind) as a multiple of the hiredis C loop, at most.
INSTRUCTION_TARGETS = {"tinytown SyncChannel": 2.0, "tinytown Channel (uvloop)": 3.0,
                       "tinytown Channel (asyncio)": 4.0}


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {}
    for bench in report.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if "name" in info:
            rows[info["name"]] = info
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="JSON written by pytest --benchmark-json")
    parser.add_argument("--allow-missing", action="store_true",
                        help="do not fail on targets whose row is absent (e.g. a partial run)")
    args = parser.parse_args(argv)
    with open(args.report, encoding="utf-8") as f:
        rows = rows_of(json.load(f))
    missed = 0
    named = targets()
    load = load_targets(rows)
    if not load:
        missed += 0 if args.allow_missing else 1
        print(f"{'absent' if args.allow_missing else 'MISSING':8} drain and large-message rows: "
              "no measurement in this run")
    for target in named + every_peer_targets(rows, {(t.row, t.measure) for t in named}) + load:
        row = rows.get(target.row)
        if row is None:
            status = "absent" if args.allow_missing else "MISSING"
            missed += 0 if args.allow_missing else 1
            print(f"{status:8} {target.label}: no measurement in this run")
            continue
        value = row.get(target.measure)
        ok = target.check(value)
        missed += not ok
        sign = "<=" if target.at_most else ">="
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"{'ok' if ok else 'MISSED':8} {target.label}: {shown} (target {sign} {target.limit}x)")
    for pair in row_ratios():
        row, base = rows.get(pair.row), rows.get(pair.baseline)
        if row is None or base is None:
            status = "absent" if args.allow_missing else "MISSING"
            missed += 0 if args.allow_missing else 1
            print(f"{status:8} {pair.label}: no measurement in this run")
            continue
        value = row["tinytown"] / base["tinytown"] if base.get("tinytown") else None
        ok = value is not None and value <= pair.limit
        missed += not ok
        shown = "-" if value is None else f"{value:.2f}x"
        print(f"{'ok' if ok else 'MISSED':8} {pair.label}: {shown} (target <= {pair.limit}x)")
    memory = next((r for name, r in rows.items() if name.startswith("RSS growth")), None)
    if memory is None:
        missed += 0 if args.allow_missing else 1
        print(f"{'absent' if args.allow_missing else 'MISSING':8} memory: no measurement in this run")
    else:
        ok = memory["tinytown"] <= 10 * MB
        missed += not ok
        print(f"{'ok' if ok else 'MISSED':8} {memory['name']}: "
              f"{memory['tinytown'] / MB:.1f} MB (target <= 10 MB)")
    instructions = rows.get("instructions per send")
    if instructions is None:
        missed += 0 if args.allow_missing else 1
        print(f"{'absent' if args.allow_missing else 'MISSING':8} instructions per send: no measurement")
    else:
        x_floor = instructions["extra"]["x_floor"]
        for who, limit in INSTRUCTION_TARGETS.items():
            value = x_floor.get(who)
            ok = value is not None and value <= limit
            missed += not ok
            shown = "-" if value is None else f"{value:.2f}x"
            print(f"{'ok' if ok else 'MISSED':8} {who} instructions/send vs the C loop: "
                  f"{shown} (target <= {limit}x)")
    print(f"{missed} target(s) missed" if missed else "all targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
