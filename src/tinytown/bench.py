"""Latency and throughput of the Channel, side by side with what else a Python user could pick.

Used by ``tinytown bench`` (a table for people, ``--json`` for machines,
``--plot`` for a chart) and by the pytest-benchmark suites in ``benches/``.

Everything is compared *in the same run, in interleaved rounds*: for each
round, tinytown, redis-py's asyncio client (hiredis parser) and the C client
``redis-benchmark`` each run one batch against the same server with the same
payload, so the machine's drift hits all of them alike. Results are medians
over rounds; ratios (tinytown / baseline) are what to compare across
machines, never the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .agent import Agent
from .channel import Channel
from .ids import AgentId
from .message import Message, MessageType
from .sync_channel import SyncChannel
from .task import Task

__all__ = ["Bench", "OperationBench", "RedisServer", "Result", "main", "placement", "redis_benchmark", "render_table"]

#: Tinytown's documented cost of one operation over a Unix socket.
TARGET_NS = 100_000

Op = Callable[[], Awaitable[Any]]


def _p(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


@dataclass
class Result:
    """One measured operation: medians over interleaved rounds."""

    name: str
    unit: str                      # "ns" (latency per operation) or "ops/s"
    tinytown: float                # median per-op latency, or throughput
    tinytown_p99: float | None = None
    redis_py: float | None = None  # same measure for redis-py asyncio
    c_client: float | None = None  # redis-benchmark's p50 (ns) or requests/s
    tcp: float | None = None       # tinytown over TCP, same measure
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self, baseline: float | None) -> float | None:
        """tinytown / baseline: below 1 is better for a latency, above 1 for a rate."""
        if baseline is None or not baseline:
            return None
        return self.tinytown / baseline

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_redis_py"] = self.ratio(self.redis_py)
        d["ratio_c_client"] = self.ratio(self.c_client)
        d["ratio_tcp_unix"] = (self.tcp / self.tinytown) if self.tcp and self.tinytown else None
        return d


# --------------------------------------------------------------------------- servers


class RedisServer:
    """A private redis-server for benchmarking, on a Unix socket or a TCP port."""

    def __init__(self, directory: Path, tcp: bool = False, cpus: set[int] | None = None) -> None:
        from .town import Town

        self.directory = directory
        self.tcp = tcp
        self.port: int | None = None
        self.socket_path = directory / "redis.sock"
        args = [Town.find_server_binary(), "--save", "", "--appendonly", "no",
                "--dir", str(directory), "--logfile", str(directory / "redis.log")]
        if tcp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.cli("PING")
                break
            except (OSError, subprocess.CalledProcessError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server for the benchmark did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" if self.tcp else f"unix://{self.socket_path}"

    def target_args(self) -> list[str]:
        """redis-benchmark/redis-cli arguments that reach this server."""
        return ["-h", "127.0.0.1", "-p", str(self.port)] if self.tcp else ["-s", str(self.socket_path)]

    def cli(self, *args: str) -> str:
        with socket.socket(socket.AF_INET if self.tcp else socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", self.port) if self.tcp else str(self.socket_path))
            s.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [
                f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args]))
            return s.recv(65536).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_benchmark(server: RedisServer, command: list[str], *, clients: int = 1,
                    requests: int = 2000, pipeline: int = 1) -> dict[str, float] | None:
    """Run the C client ``redis-benchmark`` on one command; its CSV row as numbers.

    Returns ``{"rps": ..., "p50_ms": ..., ...}``, or None when redis-benchmark
    is not installed.
    """
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    args = [exe, *server.target_args(), "-c", str(clients), "-n", str(requests),
            "-P", str(pipeline), "--csv", *command]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    # The first CSV column repeats the command unescaped (quotes and commas of
    # a JSON payload included), so read the numeric columns from the right.
    header = next(csv.reader([lines[0]]))
    values = lines[-1].rsplit(",", len(header) - 1)
    parsed: dict[str, float] = {}
    for name, value in zip(header[1:], values[1:]):
        parsed[name.replace("_latency_ms", "_ms")] = float(value.strip('"'))
    return parsed


def placement() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs) for pinned runs, or None on a single CPU.

    Where a process runs decides what a wake-up costs (on a VM, a wake-up
    across vCPUs costs several times one on the same vCPU), and the kernel
    moves processes around during a run. Pinning every contender the same
    way (clients on one CPU, redis-server on another; child processes such
    as redis-benchmark inherit the client's) keeps the comparison fair and
    the medians stable.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[-1]}


# --------------------------------------------------------------------------- the bench


class Bench:
    """The operations of Tinytown's Channel, measured against the baselines.

    ``url``/``server`` is the Unix-socket server; ``tcp_server`` (optional)
    gives the Unix-vs-TCP comparison. ``rounds`` interleaved rounds of
    ``per_round`` operations per contender.
    """

    def __init__(self, server: RedisServer, tcp_server: RedisServer | None = None, *,
                 rounds: int = 7, per_round: int = 300, town: str = "bench",
                 progress: Callable[[str], None] | None = None) -> None:
        self.server = server
        self.tcp_server = tcp_server
        self.rounds = rounds
        self.per_round = per_round
        self.town = town
        self.progress = progress or (lambda label: None)
        self.agent = AgentId.new()
        self.message = Message.new(AgentId.supervisor(), self.agent,
                                   MessageType.Task(description="Review the pull request #1234"))
        self.payload = self.message.to_json()
        self.inbox = f"tt:{town}:inbox:{self.agent}"
        self.agent_state = Agent.new("worker-1", "claude")
        self.agent_key = f"tt:{town}:agent:{self.agent_state.id}"
        self.task = Task.new("Refactor the scheduler")
        self.task_key = f"tt:{town}:task:{self.task.id}"
        self.channel: Channel | None = None
        self.tcp_channel: Channel | None = None
        self.redis_py: Any = None
        self.sync_channel: Any = None      # tinytown.SyncChannel
        self.redis_py_sync: Any = None     # redis.Redis (sync client)

    async def __aenter__(self) -> Bench:
        self.channel = await Channel.connect(self.server.url, town=self.town)
        if self.tcp_server is not None:
            self.tcp_channel = await Channel.connect(self.tcp_server.url, town=self.town)
        # Both transports have a SyncChannel: the sync rows always run.
        self.sync_channel = SyncChannel.connect(self.server.url, town=self.town)
        try:
            import redis
            import redis.asyncio as aredis
        except ImportError:  # the baseline is optional for `tinytown bench`
            self.redis_py = None
        else:
            self.redis_py = aredis.Redis(unix_socket_path=str(self.server.socket_path))
            await self.redis_py.ping()
            self.redis_py_sync = redis.Redis(unix_socket_path=str(self.server.socket_path))
            self.redis_py_sync.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.tcp_channel is not None:
            await self.tcp_channel.close()
        if self.redis_py is not None:
            await self.redis_py.aclose()
        if self.sync_channel is not None:
            self.sync_channel.close()
        if self.redis_py_sync is not None:
            self.redis_py_sync.close()

    # -- primitives -------------------------------------------------------------

    async def _time_ops(self, op: Op, n: int, into: list[int]) -> None:
        clock = time.perf_counter_ns
        for _ in range(n):
            start = clock()
            await op()
            into.append(clock() - start)

    @staticmethod
    def _time_sync_ops(op: Callable[[], Any], n: int, into: list[int]) -> None:
        clock = time.perf_counter_ns
        for _ in range(n):
            start = clock()
            op()
            into.append(clock() - start)

    async def _prefill(self, channel: Channel, key: str, n: int) -> None:
        await channel.execute("DEL", key)
        for start in range(0, n, 1000):
            await channel.execute("RPUSH", key, *[self.payload] * min(1000, n - start))

    def _c_p50(self, command: list[str], prefill: str | None) -> float | None:
        requests = max(self.per_round, 1000)
        if prefill is not None:
            self.server.cli("DEL", prefill)
            redis_benchmark(self.server, ["RPUSH", prefill, self.payload.decode()],
                            requests=requests, pipeline=100)
        row = redis_benchmark(self.server, command, requests=requests)
        return None if row is None else row["p50_ms"] * 1e6

    # -- single operations --------------------------------------------------------

    def _operations(self) -> list[tuple[str, Callable[[Channel], Op], Op | None, list[str], str | None]]:
        """(name, tinytown op for a channel, redis-py op, C command, key to prefill)."""
        agent, message, payload, inbox = self.agent, self.message, self.payload, self.inbox
        rp = self.redis_py
        agent_state, task = self.agent_state, self.task
        payload_text = payload.decode()
        return [
            ("send", lambda ch: lambda: ch.send(message),
             rp and (lambda: rp.rpush(inbox, payload)), ["RPUSH", inbox, payload_text], None),
            ("try_receive", lambda ch: lambda: ch.try_receive(agent),
             rp and (lambda: rp.lpop(inbox)), ["LPOP", inbox], inbox),
            ("receive (message waiting)", lambda ch: lambda: ch.receive(agent, 1),
             rp and (lambda: rp.blpop([inbox], 1)), ["BLPOP", inbox, "1"], inbox),
            ("inbox_len", lambda ch: lambda: ch.inbox_len(agent),
             rp and (lambda: rp.llen(inbox)), ["LLEN", inbox], None),
            ("set_agent_state", lambda ch: lambda: ch.set_agent_state(agent_state),
             rp and (lambda: rp.set(self.agent_key, agent_state.to_json())),
             ["SET", self.agent_key, agent_state.to_json().decode()], None),
            ("get_agent_state", lambda ch: lambda: ch.get_agent_state(agent_state.id),
             rp and (lambda: rp.get(self.agent_key)), ["GET", self.agent_key], None),
            ("set_task", lambda ch: lambda: ch.set_task(task),
             rp and (lambda: rp.set(self.task_key, task.to_json())),
             ["SET", self.task_key, task.to_json().decode()], None),
            ("get_task", lambda ch: lambda: ch.get_task(task.id),
             rp and (lambda: rp.get(self.task_key)), ["GET", self.task_key], None),
            ("broadcast", lambda ch: lambda: ch.broadcast(message),
             rp and (lambda: rp.publish("tt:broadcast", payload)),
             ["PUBLISH", "tt:broadcast", payload_text], None),
        ]

    def _sync_operations(self) -> list[tuple[str, Callable[[Any], Any], Any, list[str], str | None]]:
        """The same calls on the blocking SyncChannel, beside redis-py's sync client."""
        if self.sync_channel is None:
            return []
        payload, inbox, rp = self.payload, self.inbox, self.redis_py_sync
        agent_json, task_json = self.agent_state.to_json(), self.task.to_json()
        baselines = {  # same order as _operations()
            "send": lambda: rp.rpush(inbox, payload),
            "try_receive": lambda: rp.lpop(inbox),
            "receive (message waiting)": lambda: rp.blpop([inbox], 1),
            "inbox_len": lambda: rp.llen(inbox),
            "set_agent_state": lambda: rp.set(self.agent_key, agent_json),
            "get_agent_state": lambda: rp.get(self.agent_key),
            "set_task": lambda: rp.set(self.task_key, task_json),
            "get_task": lambda: rp.get(self.task_key),
            "broadcast": lambda: rp.publish("tt:broadcast", payload),
        }
        return [(f"sync {name}", make_op, rp and baselines[name], c_command, prefill)
                for name, make_op, _async_rp, c_command, prefill in self._operations()]

    def operation(self, name: str) -> OperationBench:
        """The measurement of one Channel (or SyncChannel) call, driven round by round."""
        for op_name, make_op, rp_op, c_command, prefill in self._operations():
            if op_name == name:
                return OperationBench(self, name, make_op, rp_op, c_command, prefill)
        for op_name, make_op, rp_op, c_command, prefill in self._sync_operations():
            if op_name == name:
                return OperationBench(self, name, make_op, rp_op, c_command, prefill, sync=True)
        raise KeyError(name)

    def operation_names(self) -> list[str]:
        return [op[0] for op in self._operations()] + [op[0] for op in self._sync_operations()]

    async def single_operations(self, only: set[str] | None = None) -> list[Result]:
        """Median per-operation latency of each Channel call, interleaved with the baselines."""
        results = []
        for name in self.operation_names():
            if only and name not in only:
                continue
            op = self.operation(name)
            await op.setup()
            for r in range(self.rounds):
                self.progress(f"{name} round {r + 1}/{self.rounds}")
                order = ["tinytown", "redis_py", "tcp"]
                for who in (reversed(order) if r % 2 else order):
                    await op.prepare(who)
                    await op.timed_round(who)
                op.c_round()
            results.append(op.result())
        return results

    # -- throughput -----------------------------------------------------------------

    async def concurrent_round(self, who: str, coroutines: int = 100, per_coroutine: int = 100) -> float:
        """Sends/s of ``coroutines`` coroutines sending on one client ("tinytown"/"redis_py")."""
        assert self.channel is not None
        channel, message, rp, inbox, payload = (
            self.channel, self.message, self.redis_py, self.inbox, self.payload)
        op: Op = (lambda: channel.send(message)) if who == "tinytown" \
            else (lambda: rp.rpush(inbox, payload))

        async def worker() -> None:
            for _ in range(per_coroutine):
                await op()

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(coroutines)])
        rate = coroutines * per_coroutine / (time.perf_counter() - start)
        await channel.execute("DEL", inbox)
        return rate

    def concurrent_c(self, coroutines: int = 100, per_coroutine: int = 100) -> float | None:
        """requests/s of ``redis-benchmark -c <coroutines>`` on the same push."""
        row = redis_benchmark(self.server, ["RPUSH", self.inbox, self.payload.decode()],
                              clients=coroutines, requests=coroutines * per_coroutine)
        self.server.cli("DEL", self.inbox)
        return None if row is None else row["rps"]

    async def concurrent_sends(self, coroutines: int = 100, per_coroutine: int = 100) -> Result:
        """Sends/s of ``coroutines`` coroutines sending on one Channel."""
        tt, base, c = [], [], []
        for r in range(self.rounds):
            self.progress(f"{coroutines} coroutines round {r + 1}/{self.rounds}")
            tt.append(await self.concurrent_round("tinytown", coroutines, per_coroutine))
            if self.redis_py is not None:
                base.append(await self.concurrent_round("redis_py", coroutines, per_coroutine))
            rate = self.concurrent_c(coroutines, per_coroutine)
            if rate is not None:
                c.append(rate)
        return Result(name=f"{coroutines} coroutines, one Channel", unit="ops/s",
                      tinytown=statistics.median(tt),
                      redis_py=statistics.median(base) if base else None,
                      c_client=statistics.median(c) if c else None)

    async def send_many_round(self, who: str, count: int = 10_000) -> float:
        """Messages/s of one ``send_many(count)`` (encoding included), or of a
        redis-py pipeline of the same pushes."""
        assert self.channel is not None
        messages = [Message.new(AgentId.supervisor(), self.agent,
                                MessageType.Task(description=f"item {i}")) for i in range(count)]
        start = time.perf_counter()
        if who == "tinytown":
            await self.channel.send_many(messages)
        else:
            async with self.redis_py.pipeline(transaction=False) as pipe:
                for m in messages:
                    pipe.rpush(self.inbox, m.to_json())
                await pipe.execute()
        rate = count / (time.perf_counter() - start)
        await self.channel.execute("DEL", self.inbox)
        return rate

    def send_many_c(self, count: int = 10_000) -> float | None:
        """requests/s of ``redis-benchmark -P 1000`` on the same push."""
        row = redis_benchmark(self.server, ["RPUSH", self.inbox, self.payload.decode()],
                              requests=count * 20, pipeline=1000)
        self.server.cli("DEL", self.inbox)
        return None if row is None else row["rps"]

    async def send_many(self, count: int = 10_000) -> Result:
        """Messages/s of ``send_many(count)``, JSON encoding included."""
        tt, base, c = [], [], []
        for r in range(self.rounds):
            self.progress(f"send_many({count}) round {r + 1}/{self.rounds}")
            tt.append(await self.send_many_round("tinytown", count))
            if self.redis_py is not None:
                base.append(await self.send_many_round("redis_py", count))
            rate = self.send_many_c(count)
            if rate is not None:
                c.append(rate)
        return Result(name=f"send_many({count})", unit="ops/s", tinytown=statistics.median(tt),
                      redis_py=statistics.median(base) if base else None,
                      c_client=statistics.median(c) if c else None)

    async def end_to_end(self, messages: int = 500) -> Result:
        """Latency from send() in this process to the receive() that wakes in another.

        Ping-pong: the other process is parked in BLPOP when each message is
        sent, stamps the wake-up, and answers so that the next message is
        sent at once (both sides busy, as redis-benchmark's clients are).
        """
        assert self.channel is not None
        agent, back = AgentId.new(), AgentId.new()
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tinytown.bench import _e2e_receiver; "
             "_e2e_receiver(*sys.argv[1:5], int(sys.argv[5]))",
             self.server.url, self.town, agent, back, str(messages)],
            stdout=subprocess.PIPE, text=True)
        c: list[float] = []
        try:
            for i in range(messages):
                if i % max(1, messages // self.rounds) == 0:
                    self.progress(f"end to end {i}/{messages}")
                    row = redis_benchmark(self.server, ["RPUSH", "tt:bench:e2e", "x"], requests=1000)
                    if row is not None:
                        c.append(row["p50_ms"] * 1e6)
                    await self.channel.execute("DEL", "tt:bench:e2e")
                stamp = MessageType.Custom(kind="stamp", payload=str(time.perf_counter_ns()))
                await self.channel.send(Message.new(AgentId.supervisor(), agent, stamp))
                if await self.channel.receive(back, 30) is None:
                    raise RuntimeError("end-to-end receiver stopped answering")
            out, _ = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        latencies = json.loads(out)
        return Result(name="send -> receive, another process", unit="ns",
                      tinytown=statistics.median(latencies), tinytown_p99=_p(latencies, 0.99),
                      c_client=statistics.median(c) if c else None,
                      extra={"samples": {"tinytown": latencies}})

    async def memory(self, pairs: int = 1_000_000) -> Result:
        """RSS growth of a process doing ``pairs`` send+receive (run in a child process)."""
        self.progress(f"memory: {pairs} send+receive")
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from tinytown.bench import _memory_child; "
             "_memory_child(sys.argv[1], int(sys.argv[2]))", self.server.url, str(pairs)],
            capture_output=True, text=True, check=True, timeout=3600).stdout
        growth = json.loads(out)
        return Result(name=f"RSS growth over {pairs:,} send+receive", unit="bytes",
                      tinytown=growth["growth"], extra=growth)


class OperationBench:
    """One Channel call measured against the baselines, one round at a time.

    A round runs ``per_round`` operations for one contender ("tinytown",
    "redis_py", "tcp") after :meth:`prepare`, or the C client (:meth:`c_round`).
    """

    def __init__(self, bench: Bench, name: str, make_op: Callable[[Any], Any],
                 redis_py_op: Any, c_command: list[str], prefill: str | None,
                 sync: bool = False) -> None:
        self.bench = bench
        self.name = name
        self.c_command = c_command
        self.prefill = prefill
        self.sync = sync
        if sync:  # the same calls on the SyncChannel; no TCP row for them
            self.ops: dict[str, Any] = {"tinytown": make_op(bench.sync_channel),
                                        "redis_py": redis_py_op, "tcp": None}
        else:
            self.ops = {
                "tinytown": make_op(bench.channel) if bench.channel else None,
                "redis_py": redis_py_op,
                "tcp": make_op(bench.tcp_channel) if bench.tcp_channel else None,
            }
        self.samples: dict[str, list[int]] = {who: [] for who in self.ops}
        self.c_p50s: list[float] = []

    def _channel(self, who: str) -> Channel | None:
        return self.bench.tcp_channel if who == "tcp" else self.bench.channel

    async def setup(self) -> None:
        """State the reads need (the agent and task to get)."""
        for channel in (self.bench.channel, self.bench.tcp_channel):
            if channel is not None:
                await channel.set_agent_state(self.bench.agent_state)
                await channel.set_task(self.bench.task)

    async def prepare(self, who: str) -> None:
        """Untimed: fill the inbox for the popping calls, empty it for the pushing ones."""
        channel = self._channel(who)
        if channel is None or self.ops[who] is None:
            return
        if self.prefill is not None:
            await self.bench._prefill(channel, self.prefill, self.bench.per_round)
        else:
            await channel.execute("DEL", self.bench.inbox)

    async def timed_round(self, who: str) -> None:
        op = self.ops[who]
        if op is None:
            return
        if self.sync:
            self.bench._time_sync_ops(op, self.bench.per_round, self.samples[who])
        else:
            await self.bench._time_ops(op, self.bench.per_round, self.samples[who])

    def c_round(self) -> None:
        p50 = self.bench._c_p50(self.c_command, self.prefill)
        if p50 is not None:
            self.c_p50s.append(p50)

    def result(self) -> Result:
        s = self.samples
        return Result(
            name=self.name, unit="ns",
            tinytown=statistics.median(s["tinytown"]),
            tinytown_p99=_p(s["tinytown"], 0.99),
            redis_py=statistics.median(s["redis_py"]) if s["redis_py"] else None,
            c_client=statistics.median(self.c_p50s) if self.c_p50s else None,
            tcp=statistics.median(s["tcp"]) if s["tcp"] else None,
            extra={"samples": {k: v for k, v in s.items() if v}},
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _e2e_receiver(url: str, town: str, agent: str, back: str, count: int) -> None:
    async def run() -> list[int]:
        got: list[int] = []
        ack = Message.new(AgentId.new(), back, MessageType.Pong())
        async with await Channel.connect(url, town=town) as channel:
            while len(got) < count:
                message = await channel.receive(agent, 30)
                now = time.perf_counter_ns()  # CLOCK_MONOTONIC: comparable across processes
                if message is None:
                    break
                stamp = message.msg_type
                assert isinstance(stamp, MessageType.Custom)
                got.append(now - int(stamp.payload))
                await channel.send(ack)
        return got
    print(json.dumps(asyncio.run(run())))


def _memory_child(url: str, pairs: int) -> None:
    async def run() -> dict[str, int]:
        agent = AgentId.new()
        message = Message.new(AgentId.supervisor(), agent, MessageType.Ping())
        async with await Channel.connect(url, town="bench-memory") as channel:
            async def worker(n: int) -> None:
                for _ in range(n):
                    await channel.send(message)
                    await channel.receive(agent, 5)
            width = 50
            await asyncio.gather(*[worker(2000 // width) for _ in range(width)])  # warm up
            before = _rss_bytes()
            await asyncio.gather(*[worker(pairs // width) for _ in range(width)])
            after = _rss_bytes()
        return {"before": before, "after": after, "growth": after - before}
    print(json.dumps(asyncio.run(run())))


# --------------------------------------------------------------------------- CLI


def _format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ns":
        return f"{value / 1000:.1f} µs"
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    return f"{value:,.0f}/s"


def _format_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render_table(results: list[Result]) -> str:
    """The human table: operation, p50, p99, target, ratios, Unix vs TCP."""
    header = ["operation", "p50 / rate", "p99", "0.1 ms", "vs redis-py", "vs C client", "TCP/Unix"]
    rows = []
    for r in results:
        target = "-"
        if r.unit == "ns":
            target = "met" if r.tinytown <= TARGET_NS else "missed"
        rows.append([
            r.name, _format_value(r.tinytown, r.unit), _format_value(r.tinytown_p99, r.unit),
            target, _format_ratio(r.ratio(r.redis_py)), _format_ratio(r.ratio(r.c_client)),
            _format_ratio(r.tcp / r.tinytown if r.tcp else None),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("ratios: latency rows tinytown/baseline (lower is better); "
                 "rate rows tinytown/baseline (higher is better)")
    return "\n".join(lines)


def plot(results: list[Result], path: str) -> None:
    """Write a PNG with the latency distribution of each single operation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = [r for r in results if r.unit == "ns" and r.extra.get("samples")]
    fig, ax = plt.subplots(figsize=(11, 0.6 * max(4, 2 * len(latency)) + 1.5))
    data, labels = [], []
    for r in latency:
        for who, samples in r.extra["samples"].items():
            data.append([s / 1000 for s in samples])
            labels.append(f"{r.name} [{who}]")
    ax.boxplot(data, orientation="horizontal", showfliers=False, whis=(1, 99))
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.axvline(TARGET_NS / 1000, color="red", linestyle="--", label="Tinytown's 0.1 ms")
    ax.set_xscale("log")  # a few slow outliers would squash everything else
    ax.set_xlabel("latency per operation (µs, log scale); boxes: p25-p75, whiskers: p1-p99")
    ax.set_title(f"tinytown channel latency ({platform.node()}, {time.strftime('%Y-%m-%d')})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Progress:
    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = stream.isatty()

    def __call__(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = min(width, width * self.done // max(1, self.total))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {label}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


async def run_all(args: argparse.Namespace, progress: Callable[[str], None]) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="tinytown-bench-") as tmp:
        unix_dir, tcp_dir = Path(tmp) / "unix", Path(tmp) / "tcp"
        unix_dir.mkdir()
        tcp_dir.mkdir()
        pinned = None if args.no_pin else placement()
        if pinned is not None:
            os.sched_setaffinity(0, pinned[0])
        server = RedisServer(unix_dir, cpus=pinned and pinned[1])
        tcp_server = RedisServer(tcp_dir, tcp=True, cpus=pinned and pinned[1]) if not args.no_tcp else None
        try:
            async with Bench(server, tcp_server, rounds=args.rounds, per_round=args.per_round,
                             progress=progress) as bench:
                results = await bench.single_operations()
                results.append(await bench.concurrent_sends())
                results.append(await bench.send_many())
                results.append(await bench.end_to_end(args.e2e_messages))
                if args.memory_pairs:
                    results.append(await bench.memory(args.memory_pairs))
                return results
        finally:
            server.stop()
            if tcp_server is not None:
                tcp_server.stop()


def main(argv: list[str] | None = None) -> int:
    """``tinytown bench``: run the benchmark on an embedded local redis-server."""
    parser = argparse.ArgumentParser(
        prog="tinytown bench",
        description="Measure the channel's operations on an embedded redis-server, beside "
                    "redis-py asyncio and the C client redis-benchmark, in interleaved rounds.")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--per-round", type=int, default=300,
                        help="operations per contender per round (default 300)")
    parser.add_argument("--e2e-messages", type=int, default=300,
                        help="messages for the cross-process latency (default 300)")
    parser.add_argument("--memory-pairs", type=int, default=0,
                        help="also measure RSS growth over this many send+receive (e.g. 1000000)")
    parser.add_argument("--no-tcp", action="store_true", help="skip the Unix-vs-TCP comparison")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin clients and redis-server to CPUs (noisier medians)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a latency distribution chart")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.per_round < 1:
        parser.error("--rounds and --per-round must be positive")
    total = args.rounds * (18 + 2) + max(1, args.rounds) + 1
    progress = _Progress(total)
    try:
        results = asyncio.run(run_all(args, progress))
    except Exception as exc:  # one line, as every CLI error
        progress.close()
        print(f"tinytown bench: {exc}", file=sys.stderr)
        return 1
    progress.close()
    if args.plot:
        plot(results, args.plot)
    if args.json:
        payload = {
            "date": time.strftime("%Y-%m-%d"), "machine": platform.node(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "results": [{k: v for k, v in r.as_dict().items() if k != "extra"}
                        | {"extra": {k: v for k, v in r.extra.items() if k != "samples"}}
                        for r in results],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(render_table(results))
        if args.plot:
            print(f"chart written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
