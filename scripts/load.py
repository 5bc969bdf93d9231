#!/usr/bin/env python3
"""Load test of the tinytown channel: producer and consumer processes.

    .venv/bin/python scripts/load.py                          # 1,000,000 messages, plain receive
    .venv/bin/python scripts/load.py --mode reliable --kill 5 # reliable receive, 5 consumers SIGKILLed
    .venv/bin/python scripts/load.py --messages 20000 --json  # small run, JSON summary on stdout

P producer processes (default 10) send N messages (default 1,000,000) round
robin to the inboxes of C agents, one consumer process per agent (default
10). Every message has a known id; every consumer appends the id of each
message it processed to a file of its own with an unbuffered write, so what
a SIGKILLed consumer processed is on disk. At the end the coordinator sends
each agent a Shutdown message, waits for the consumers, and checks the ids:

- plain mode (``receive``): every message received once and only once;
- reliable mode (``receive_reliable`` + ``ack``; ``--kill K`` SIGKILLs K
  consumers mid-stream, each replaced by a new process that first
  ``reclaim``s): every message received at least once; duplicates (processed
  but not acked when killed) are counted and removed, then none may be missing.

It also checks that every inbox and processing list is empty. Without
``--url`` it starts a town (a redis-server on a Unix socket in a temporary
directory, snapshots off). Exit status 0 when the checks pass.

Subcommands ``produce`` and ``consume`` are the worker processes (internal).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tinytown import AgentId, Channel, Message, MessageType, Town

ID_LINE = 37  # a message id as text plus "\n"


def message_id(producer: int, seq: int) -> str:
    """The id of message ``seq`` of ``producer``: a UUID that encodes both."""
    return f"{producer:08x}-0000-4000-8000-{seq:012x}"


def die_with_parent() -> None:
    """Linux: SIGKILL this worker if the coordinator dies, so nothing is left behind."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


# ---------------------------------------------------------------- workers


async def produce(args: argparse.Namespace) -> None:
    agents = [AgentId(a) for a in args.agents.split(",")]
    sender = AgentId.supervisor()
    pad = "x" * args.size
    async with await Channel.connect(args.url, town=args.town) as channel:
        # Start together: the coordinator's clock starts once every worker is up.
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        batch: list[Message] = []
        for seq in range(args.count):
            batch.append(Message(message_id(args.producer, seq), sender, agents[seq % len(agents)],
                                 MessageType.Task(description=pad)))
            if len(batch) >= args.batch:
                await channel.send_many(batch)
                batch = []
        if batch:
            await channel.send_many(batch)
    print(json.dumps({"sent": args.count, "seconds": time.perf_counter() - start}), flush=True)


async def consume(args: argparse.Namespace) -> None:
    agent = AgentId(args.agent)
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    reliable = args.mode == "reliable"
    async with await Channel.connect(args.url, town=args.town) as channel:
        reclaimed = 0
        if reliable:
            # A predecessor may have been killed: its unacked messages go
            # back to the front of the inbox before anything else is taken.
            reclaimed = await channel.reclaim(agent)
        print(f"ready reclaimed={reclaimed}", flush=True)
        while True:
            if reliable:
                delivery = await channel.receive_reliable(agent, 5)
                message = delivery.message if delivery is not None else None
            else:
                delivery = None
                message = await channel.receive(agent, 5)
            if message is None:
                continue
            if isinstance(message.msg_type, MessageType.Shutdown):
                if delivery is not None:
                    await channel.ack(delivery)
                return
            if args.work_ms:
                await asyncio.sleep(args.work_ms / 1000)  # simulated work
            # "Processing": record the id on disk, unbuffered, before the ack,
            # so a kill between the two shows up as a duplicate, never a loss.
            os.write(fd, message.id.encode() + b"\n")
            if delivery is not None:
                await channel.ack(delivery)


# ---------------------------------------------------------------- coordinator


class Run:
    """One load run: the processes, their files and the final check."""

    def __init__(self, args: argparse.Namespace, url: str, town: str, workdir: Path) -> None:
        self.args = args
        self.url = url
        self.town = town
        self.workdir = workdir
        self.agents = [AgentId.new() for _ in range(args.consumers)]
        self.consumers: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: Counter[str] = Counter()
        self.killed = 0

    def _worker(self, *argv: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                 "--url", self.url, "--town", self.town],
                                stdin=stdin, stdout=subprocess.PIPE, preexec_fn=die_with_parent)

    def start_consumer(self, agent: str) -> None:
        self.generation[agent] += 1
        out = self.workdir / f"consumer-{agent}-{self.generation[agent]}.ids"
        self.consumers[agent] = self._worker("consume", "--agent", agent, "--out", str(out),
                                             "--mode", self.args.mode,
                                             "--work-ms", str(self.args.work_ms))

    def check_consumers(self) -> None:
        for agent, proc in self.consumers.items():
            if proc.poll() is not None:
                raise SystemExit(f"the consumer of {agent} exited early with code {proc.returncode}")

    def received_so_far(self) -> int:
        return sum(p.stat().st_size for p in self.workdir.glob("*.ids")) // ID_LINE

    def run(self) -> dict[str, Any]:
        args = self.args
        for agent in self.agents:
            self.start_consumer(agent)
        per_producer = [args.messages // args.producers + (i < args.messages % args.producers)
                        for i in range(args.producers)]
        producers = [self._worker("produce", "--producer", str(i), "--count", str(n),
                                  "--agents", ",".join(self.agents), "--batch", str(args.batch),
                                  "--size", str(args.size), stdin=subprocess.PIPE)
                     for i, n in enumerate(per_producer)]
        for proc in [*self.consumers.values(), *producers]:
            if proc.stdout is None or not proc.stdout.readline().startswith(b"ready"):
                raise SystemExit("a worker failed to start")
        start = time.perf_counter()
        for proc in producers:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        # Kill consumers mid-stream: when 1/(K+1), 2/(K+1)... of the messages are processed.
        kill_at = [args.messages * (k + 1) // (args.kill + 1) for k in range(args.kill)]
        rng = random.Random(args.seed)
        while kill_at:
            self.check_consumers()
            if self.received_so_far() >= kill_at[0]:
                kill_at.pop(0)
                victim = rng.choice(self.agents)
                self.consumers[victim].send_signal(signal.SIGKILL)
                self.consumers[victim].wait()
                self.killed += 1
                self.start_consumer(victim)
            else:
                time.sleep(0.005)
        reports = []
        for p in producers:
            assert p.stdout is not None
            out = p.stdout.read()
            p.wait()
            if p.returncode != 0:
                raise SystemExit(f"a producer failed with exit code {p.returncode}")
            reports.append(json.loads(out))
        produced = time.perf_counter() - start
        while self.received_so_far() < args.messages:
            self.check_consumers()
            time.sleep(0.005)
        processed = time.perf_counter() - start
        asyncio.run(self._shutdown())
        deadline = time.monotonic() + 60
        for agent, proc in self.consumers.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise SystemExit(f"the consumer of {agent} did not stop after Shutdown") from None
            if proc.returncode != 0:
                raise SystemExit(f"the consumer of {agent} failed with exit code {proc.returncode}")
        leftovers = asyncio.run(self._leftovers())
        return self._check(sum(r["sent"] for r in reports), produced, processed, leftovers)

    async def _shutdown(self) -> None:
        async with await Channel.connect(self.url, town=self.town) as channel:
            await channel.send_many([Message.new(AgentId.supervisor(), a, MessageType.Shutdown())
                                     for a in self.agents])

    async def _leftovers(self) -> int:
        async with await Channel.connect(self.url, town=self.town) as channel:
            return sum([await channel.inbox_len(a) + await channel.processing_len(a)
                        for a in self.agents])

    def _check(self, sent: int, produced: float, processed: float, leftovers: int) -> dict[str, Any]:
        args = self.args
        counts: Counter[str] = Counter()
        for path in self.workdir.glob("*.ids"):
            counts.update(path.read_bytes().decode().split())
        expected = {message_id(p, s) for p in range(args.producers)
                    for s in range(args.messages // args.producers + (p < args.messages % args.producers))}
        unique = set(counts)
        missing = len(expected - unique)
        unexpected = len(unique - expected)
        duplicates = sum(counts.values()) - len(unique)
        if args.mode == "plain":
            ok = missing == 0 and unexpected == 0 and duplicates == 0 and leftovers == 0
        else:
            ok = missing == 0 and unexpected == 0 and leftovers == 0
        return {
            "ok": ok, "mode": args.mode, "messages": args.messages, "sent": sent,
            "producers": args.producers, "consumers": args.consumers, "batch": args.batch,
            "size": args.size, "consumers_killed": self.killed,
            "received": sum(counts.values()), "unique": len(unique), "duplicates": duplicates,
            "missing": missing, "unexpected": unexpected, "left_in_redis": leftovers,
            "send_seconds": round(produced, 3), "end_to_end_seconds": round(processed, 3),
            "send_rate": round(sent / produced), "end_to_end_rate": round(sent / processed),
        }


async def start_town(directory: Path) -> Town:
    town = await Town.start(directory, "load")
    await town.configure_persistence(save="")  # no snapshots in the middle of the run
    return town


def coordinate(args: argparse.Namespace) -> int:
    if args.kill and args.mode != "reliable":
        raise SystemExit("--kill needs --mode reliable: plain receive is at-most-once, a killed "
                         "consumer loses the message it was handling")
    with tempfile.TemporaryDirectory(prefix="tt-load-") as tmp:
        workdir = Path(tmp)
        town = asyncio.run(start_town(workdir / "town")) if args.url is None else None
        try:
            url = town.url if town is not None else args.url
            result = Run(args, url, f"load-{os.getpid()}", workdir).run()
        finally:
            if town is not None:
                asyncio.run(town.stop())
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "produce", "consume"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--messages", "-n", type=int, default=1_000_000, help="messages in all")
    parser.add_argument("--producers", type=int, default=10, help="producer processes")
    parser.add_argument("--consumers", type=int, default=10, help="consumer processes (one agent each)")
    parser.add_argument("--mode", choices=["plain", "reliable"], default="plain",
                        help="receive (at-most-once) or receive_reliable + ack (at-least-once)")
    parser.add_argument("--kill", type=int, default=0,
                        help="SIGKILL this many consumers mid-stream (reliable mode)")
    parser.add_argument("--batch", type=int, default=100, help="messages per send_many (1: send one by one)")
    parser.add_argument("--size", type=int, default=16, help="characters of text in each message")
    parser.add_argument("--seed", type=int, default=0, help="seed choosing the consumers to kill")
    parser.add_argument("--work-ms", type=float, default=0.0,
                        help="simulated processing time per message in the consumers")
    parser.add_argument("--url", help="use this Redis instead of starting a town")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    # worker options
    parser.add_argument("--town", help=argparse.SUPPRESS)
    parser.add_argument("--producer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--agents", help=argparse.SUPPRESS)
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "produce":
        asyncio.run(produce(args))
        return 0
    if args.command == "consume":
        asyncio.run(consume(args))
        return 0
    for name in ("messages", "producers", "consumers", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.kill < 0 or args.size < 0:
        parser.error("--kill and --size must not be negative")
    return coordinate(args)


if __name__ == "__main__":
    sys.exit(main())
