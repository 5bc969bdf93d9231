"""Latency and throughput of the Channel, side by side with what else a Python user could pick.

Used by ``tinytown bench`` (a table for people, ``--json`` for machines,
``--plot`` for a chart) and by the pytest-benchmark suites in ``benches/``.

Everything is compared *in the same run, in interleaved rounds*: for each
round, tinytown, the Python peers (redis-py's asyncio client with its hiredis
parser, valkey-glide and coredis, when installed) and the C client
``redis-benchmark`` each run one batch against the same server with the same
payload, so the machine's drift hits all of them alike. Results are medians
over rounds; ratios (tinytown / baseline) are what to compare across
machines, never the absolute times.

Two figures that scheduling noise cannot move much are reported beside the
wall-clock ones: the client's CPU time per operation (process time over a
round, every thread of the client included) and, with ``--callgrind``, the
user-space instructions per ``send`` counted by ``valgrind --tool=callgrind``
against a minimal hiredis C loop (the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import json
import os
import platform
import re
import resource
import signal
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

from ._ops_state import CAS_SHA, CAS_SCRIPT
from ._ops_streams import DOCKET_GROUP
from ._transport.resp import call
from .agent import Agent
from .channel import Channel
from .errors import ReplyError
from .ids import AgentId
from .message import Message, MessageType
from .sync_channel import SyncChannel
from .task import Task

__all__ = ["Bench", "OperationBench", "RedisServer", "Result", "main", "placement", "redis_benchmark", "render_table"]

#: Tinytown's documented cost of one operation over a Unix socket.
TARGET_NS = 100_000

Op = Callable[[], Awaitable[Any]]

#: The Python clients measured beside tinytown (each optional: a peer that is
#: not installed is left out of the run).
PEERS = ("redis_py", "glide", "coredis")
#: Contenders of the single-operation rounds, in the order they take turns.
CONTENDERS = ("tinytown", *PEERS, "tcp")


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
    glide: float | None = None     # valkey-glide (async), same measure
    coredis: float | None = None   # coredis, same measure
    python_transport: float | None = None  # tinytown on its pure-Python transport
    #: Client CPU time per operation (ns), by contender: "tinytown", the
    #: peers' names and "c_client" (redis-benchmark's own CPU time).
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self, baseline: float | None) -> float | None:
        """tinytown / baseline: below 1 is better for a latency, above 1 for a rate."""
        if baseline is None or not baseline:
            return None
        return self.tinytown / baseline

    def cpu_ratio(self, who: str) -> float | None:
        """tinytown's CPU time per operation / ``who``'s (below 1 is better)."""
        mine, theirs = self.cpu.get("tinytown"), self.cpu.get(who)
        return mine / theirs if mine and theirs else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for who in (*PEERS, "c_client", "python_transport"):
            d[f"ratio_{who}"] = self.ratio(getattr(self, who))
            d[f"cpu_ratio_{who}"] = self.cpu_ratio(who)
        d["ratio_tcp_unix"] = (self.tcp / self.tinytown) if self.tcp and self.tinytown else None
        return d


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed for ``localhost``."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a ``localhost`` server certificate, written to ``directory``.

    Made with ``trustme`` (in the ``bench`` extra). Raises RuntimeError when
    it is not installed.
    """
    try:
        import trustme
    except ImportError:
        raise RuntimeError("trustme is not installed (pip install 'tinytown[bench]')") from None
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    return files


class RedisServer:
    """A private redis-server for benchmarking, on a Unix socket or a TCP port.

    With ``tls`` (a :class:`TlsFiles`), the server also listens for TLS on
    ``127.0.0.1:tls_port`` (``--tls-port``; clients need no certificate);
    :meth:`cli` and :attr:`url` keep using its Unix socket, :attr:`tls_url`
    and :meth:`target_args` reach the TLS port. Raises RuntimeError, with
    redis-server's own last words, when the server does not start (a
    redis-server built without TLS refuses ``--tls-port``).
    """

    def __init__(self, directory: Path, tcp: bool = False, cpus: set[int] | None = None,
                 tls: TlsFiles | None = None) -> None:
        from .town import Town

        self.directory = directory
        self.tcp = tcp
        self.tls = tls
        self.port: int | None = None
        self.tls_port: int | None = None
        self.socket_path = directory / "redis.sock"
        args = [Town.find_server_binary(), "--save", "", "--appendonly", "no",
                "--dir", str(directory), "--logfile", str(directory / "redis.log")]
        if tcp:
            self.port = _free_port()
            args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        else:
            args += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if tls is not None:
            self.tls_port = _free_port()
            args += ["--bind", "127.0.0.1", "--tls-port", str(self.tls_port),
                     "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key),
                     "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        # Start-up errors (a directive this build does not know) go to stderr.
        stderr_path = directory / "redis.stderr"
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.cli("PING")
                break
            except (OSError, ReplyError):  # not listening yet, or still loading its data
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    why = _last_words(stderr_path, directory / "redis.log")
                    raise RuntimeError("redis-server for the benchmark did not start"
                                       + (f": {why}" if why else "")) from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" if self.tcp else f"unix://{self.socket_path}"

    @property
    def tls_url(self) -> str:
        """``rediss://localhost:<tls_port>`` (the certificate names ``localhost``)."""
        if self.tls_port is None:
            raise ValueError("this server has no TLS port")
        return f"rediss://localhost:{self.tls_port}"

    def target_args(self) -> list[str]:
        """redis-benchmark/redis-cli arguments that reach this server (its TLS port if it has one)."""
        if self.tls is not None:
            return ["-h", "127.0.0.1", "-p", str(self.tls_port), "--tls", "--sni", "localhost",
                    "--cacert", str(self.tls.ca)]
        return ["-h", "127.0.0.1", "-p", str(self.port)] if self.tcp else ["-s", str(self.socket_path)]

    def cli(self, *args: str) -> object:
        """Run one command on a new connection; its reply (an error reply raises
        :class:`~tinytown.ReplyError`). Times out after 5 seconds (OSError)."""
        with socket.socket(socket.AF_INET if self.tcp else socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", self.port) if self.tcp else str(self.socket_path))
            reply = call(s, *args)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _last_words(*logs: Path) -> str:
    """The last two lines of the first of ``logs`` that has any, without
    redis-server's "pid:role date #" prefixes ("" if none)."""
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        lines = [re.sub(r"^\d+:[A-Z] .*?\d\d:\d\d:\d\d\.\d+ [#*.-] ", "", line.strip())
                 for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("***")]
        if lines:
            return " / ".join(lines[-2:])
    return ""


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
        # A second agent for the hash-layout rows, so that a row never reads a
        # key another row left in the other layout.
        self.hash_agent_state = Agent.new("worker-2", "claude")
        self.hash_agent_key = f"tt:{town}:agent:{self.hash_agent_state.id}"
        self.urgent = f"tt:{town}:urgent:{self.agent}"
        self.stop_key = f"tt:{town}:stop:{self.agent}"
        self.docket = f"tt:{town}:docket:tasks"
        self.channel: Channel | None = None
        self.tcp_channel: Channel | None = None
        # The same server in the hash layout (Tinytown 0.7-0.10 as released).
        self.hash_channel: Channel | None = None
        self.hash_tcp_channel: Channel | None = None
        self.hash_sync_channel: Any = None
        self.redis_py: Any = None          # redis.asyncio.Redis
        self.glide: Any = None             # glide.GlideClient
        self.coredis: Any = None           # coredis.Redis
        self.sync_channel: Any = None      # tinytown.SyncChannel
        self.redis_py_sync: Any = None     # redis.Redis (sync client)

    async def __aenter__(self) -> Bench:
        # The json layout: the peers' rows are SET/GET of the same JSON, on the same keys.
        self.channel = await Channel.connect(self.server.url, town=self.town, layout="json")
        self.hash_channel = await Channel.connect(self.server.url, town=self.town, layout="hash")
        if self.tcp_server is not None:
            self.tcp_channel = await Channel.connect(self.tcp_server.url, town=self.town,
                                                     layout="json")
            self.hash_tcp_channel = await Channel.connect(self.tcp_server.url, town=self.town,
                                                          layout="hash")
        # Both transports have a SyncChannel: the sync rows always run.
        self.sync_channel = SyncChannel.connect(self.server.url, town=self.town, layout="json")
        self.hash_sync_channel = SyncChannel.connect(self.server.url, town=self.town,
                                                     layout="hash")
        path = str(self.server.socket_path)
        try:  # every peer is optional for `tinytown bench`
            import redis
            import redis.asyncio as aredis
        except ImportError:
            pass
        else:
            self.redis_py = aredis.Redis(unix_socket_path=path)
            await self.redis_py.ping()
            self.redis_py_sync = redis.Redis(unix_socket_path=path)
            self.redis_py_sync.ping()
        try:
            import glide
        except ImportError:
            pass
        else:
            # A generous request timeout (glide's default is 250 ms): a loaded
            # machine must slow the run down, not abort it.
            self.glide = await glide.GlideClient.create(glide.GlideClientConfiguration(
                [glide.NodeAddress(unix_socket_path=path)], request_timeout=10_000))
        try:
            import coredis
        except ImportError:
            pass
        else:
            # coredis 6 opens its pool in the client's async context, which must
            # be left in the task that entered it: one task holds it open.
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._coredis_done = asyncio.Event()

            async def hold() -> None:
                try:
                    async with coredis.Redis(unix_socket_path=path) as client:
                        await client.ping()
                        ready.set_result(client)
                        await self._coredis_done.wait()
                except BaseException as exc:
                    if not ready.done():
                        ready.set_exception(exc)
                    raise

            self._coredis_holder = asyncio.ensure_future(hold())
            self.coredis = await ready
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in (self.channel, self.tcp_channel, self.hash_channel, self.hash_tcp_channel):
            if channel is not None:
                await channel.close()
        if self.hash_sync_channel is not None:
            self.hash_sync_channel.close()
        if self.redis_py is not None:
            await self.redis_py.aclose()
        if self.glide is not None:
            await self.glide.close()
        if self.coredis is not None:
            self._coredis_done.set()
            await self._coredis_holder
        if self.sync_channel is not None:
            self.sync_channel.close()
        if self.redis_py_sync is not None:
            self.redis_py_sync.close()

    def peer(self, who: str) -> Any:
        """The client of a Python peer ("redis_py", "glide", "coredis"), or None."""
        return getattr(self, who)

    # -- primitives -------------------------------------------------------------

    @staticmethod
    async def _time_ops(op: Op, n: int, into: list[int]) -> int:
        """Run ``op`` n times, appending each latency (ns); returns the CPU ns spent."""
        clock, cpu = time.perf_counter_ns, time.process_time_ns
        cpu_start = cpu()
        for _ in range(n):
            start = clock()
            await op()
            into.append(clock() - start)
        return cpu() - cpu_start

    @staticmethod
    def _time_sync_ops(op: Callable[[], Any], n: int, into: list[int]) -> int:
        clock, cpu = time.perf_counter_ns, time.process_time_ns
        cpu_start = cpu()
        for _ in range(n):
            start = clock()
            op()
            into.append(clock() - start)
        return cpu() - cpu_start

    async def _prefill(self, channel: Channel, key: str, n: int, stream: bool = False) -> None:
        """Untimed: ``n`` messages in the list ``key``, or ``n`` entries never
        delivered to the group ``workers`` in the docket stream ``key``."""
        await channel.execute("DEL", key)
        if stream:
            await channel.execute("XGROUP", "CREATE", key, DOCKET_GROUP, "$", "MKSTREAM")
            fields = self.docket_fields
            for start in range(0, n, 1000):  # one pipelined write per batch
                await asyncio.gather(*[channel.execute("XADD", key, "*", *fields)
                                       for _ in range(min(1000, n - start))])
            return
        for start in range(0, n, 1000):
            await channel.execute("RPUSH", key, *[self.payload] * min(1000, n - start))

    def _c_p50(self, command: list[str] | None, prefill: str | None,
               stream: bool = False) -> tuple[float, float] | None:
        """redis-benchmark -c 1 on ``command``: (p50 ns, its CPU ns per request)."""
        if command is None:  # redis-benchmark cannot run it (a transaction)
            return None
        requests = max(self.per_round, 1000)
        if prefill is not None:
            self.server.cli("DEL", prefill)
            if stream:
                self.server.cli("XGROUP", "CREATE", prefill, DOCKET_GROUP.decode(), "$", "MKSTREAM")
                redis_benchmark(self.server, ["XADD", prefill, "*", *self.docket_fields],
                                requests=requests, pipeline=100)
            else:
                redis_benchmark(self.server, ["RPUSH", prefill, self.payload.decode()],
                                requests=requests, pipeline=100)
        before = _children_cpu_ns()
        row = redis_benchmark(self.server, command, requests=requests)
        if row is None:
            return None
        return row["p50_ms"] * 1e6, (_children_cpu_ns() - before) / requests

    @property
    def docket_fields(self) -> list[str]:
        """The fields of a docket entry as ``docket_push`` writes them (a fixed timestamp)."""
        return ["task_id", str(self.task.id), "type", "task_assign",
                "message", "Refactor the scheduler", "priority", "high",
                "from", "supervisor", "to", str(self.agent), "timestamp",
                "2026-01-01T00:00:00.000000+00:00"]

    # -- single operations --------------------------------------------------------

    def _operations(self) -> list[OpSpec]:
        """Every single operation: tinytown's call and each peer's equivalent.

        The rows run on a json-layout channel (the peers' equivalents are then
        SET/GET of the same JSON) except those marked ``(hash layout)``, which
        run on a hash-layout channel beside the peers sending the same
        commands (``MULTI, HDEL, HMSET, EXEC``; ``HGETALL``; the heartbeat's
        ``EVALSHA``).
        """
        agent, message, payload, inbox = self.agent, self.message, self.payload, self.inbox
        agent_state, task = self.agent_state, self.task
        agent_json, task_json = agent_state.to_json(), task.to_json()
        payload_text = payload.decode()
        rp, gl, cd = self.redis_py, self.glide, self.coredis
        akey, tkey = self.agent_key, self.task_key
        urgent, stop, docket = self.urgent, self.stop_key, self.docket
        hash_state, hkey = self.hash_agent_state, self.hash_agent_key
        hdel, pairs = (list(x) for x in hash_state.hash_fields())
        hash_map = dict(zip(pairs[::2], pairs[1::2]))
        # update_agent_heartbeat on a Hash: one EVALSHA of the compare-and-set script.
        beat = [CAS_SHA.decode(), "1", hkey, "hash?", "last_heartbeat", "none", "",
                "2026-01-01T00:00:00.000000+00:00"]
        beat_args = beat[3:]
        fields = self.docket_fields
        field_pairs = list(zip(fields[::2], fields[1::2]))
        group, consumer = DOCKET_GROUP.decode(), "bench"
        gl_read = None
        if gl:
            import glide

            gl_read = glide.StreamReadGroupOptions(block_ms=1000, count=1)

        def peers(redis_py: Op, glide: Op, coredis: Op) -> dict[str, Op | None]:
            return {"redis_py": rp and redis_py, "glide": gl and glide, "coredis": cd and coredis}

        async def rp_hash_set() -> Any:
            async with rp.pipeline(transaction=True) as pipe:
                pipe.hdel(hkey, *hdel)
                pipe.execute_command("HMSET", hkey, *pairs)
                return await pipe.execute()

        async def gl_hash_set() -> Any:
            import glide

            batch = glide.Batch(is_atomic=True)
            batch.hdel(hkey, hdel)
            batch.custom_command(["HMSET", hkey, *pairs])
            return await gl.exec(batch, raise_on_error=True)

        async def cd_hash_set() -> None:
            async with cd.pipeline(transaction=True) as pipe:  # runs when the block ends
                pipe.hdel(hkey, hdel)
                pipe.hmset(hkey, hash_map)

        return [
            OpSpec("send", lambda ch: lambda: ch.send(message),
                   peers(lambda: rp.rpush(inbox, payload), lambda: gl.rpush(inbox, [payload]),
                         lambda: cd.rpush(inbox, [payload])),
                   ["RPUSH", inbox, payload_text], None),
            OpSpec("try_receive", lambda ch: lambda: ch.try_receive(agent),
                   peers(lambda: rp.lpop(inbox), lambda: gl.lpop(inbox), lambda: cd.lpop(inbox)),
                   ["LPOP", inbox], inbox),
            OpSpec("receive (message waiting)", lambda ch: lambda: ch.receive(agent, 1),
                   peers(lambda: rp.blpop([inbox], 1), lambda: gl.blpop([inbox], 1),
                         lambda: cd.blpop([inbox], 1)),
                   ["BLPOP", inbox, "1"], inbox),
            OpSpec("inbox_len", lambda ch: lambda: ch.inbox_len(agent),
                   peers(lambda: rp.llen(inbox), lambda: gl.llen(inbox), lambda: cd.llen(inbox)),
                   ["LLEN", inbox], None),
            OpSpec("set_agent_state", lambda ch: lambda: ch.set_agent_state(agent_state),
                   peers(lambda: rp.set(akey, agent_json), lambda: gl.set(akey, agent_json),
                         lambda: cd.set(akey, agent_json)),
                   ["SET", akey, agent_json.decode()], None),
            OpSpec("get_agent_state", lambda ch: lambda: ch.get_agent_state(agent_state.id),
                   peers(lambda: rp.get(akey), lambda: gl.get(akey), lambda: cd.get(akey)),
                   ["GET", akey], None),
            OpSpec("set_agent_state (hash layout)",
                   lambda ch: lambda: ch.set_agent_state(hash_state),
                   peers(rp_hash_set, gl_hash_set, cd_hash_set),
                   None, None, layout="hash"),  # redis-benchmark cannot run MULTI ... EXEC
            OpSpec("get_agent_state (hash layout)",
                   lambda ch: lambda: ch.get_agent_state(hash_state.id),
                   peers(lambda: rp.hgetall(hkey), lambda: gl.hgetall(hkey),
                         lambda: cd.hgetall(hkey)),
                   ["HGETALL", hkey], None, layout="hash"),
            OpSpec("set_task", lambda ch: lambda: ch.set_task(task),
                   peers(lambda: rp.set(tkey, task_json), lambda: gl.set(tkey, task_json),
                         lambda: cd.set(tkey, task_json)),
                   ["SET", tkey, task_json.decode()], None),
            OpSpec("get_task", lambda ch: lambda: ch.get_task(task.id),
                   peers(lambda: rp.get(tkey), lambda: gl.get(tkey), lambda: cd.get(tkey)),
                   ["GET", tkey], None),
            OpSpec("broadcast", lambda ch: lambda: ch.broadcast(message),
                   peers(lambda: rp.publish("tt:broadcast", payload),
                         lambda: gl.publish(payload, "tt:broadcast"),
                         lambda: cd.publish("tt:broadcast", payload)),
                   ["PUBLISH", "tt:broadcast", payload_text], None),
            OpSpec("send_urgent", lambda ch: lambda: ch.send_urgent(message),
                   peers(lambda: rp.lpush(urgent, payload), lambda: gl.lpush(urgent, [payload]),
                         lambda: cd.lpush(urgent, [payload])),
                   ["LPUSH", urgent, payload_text], None, clear=urgent),
            OpSpec("should_stop", lambda ch: lambda: ch.should_stop(agent),
                   peers(lambda: rp.exists(stop), lambda: gl.exists([stop]),
                         lambda: cd.exists([stop])),
                   ["EXISTS", stop], None),
            OpSpec("update_agent_heartbeat (hash layout)",
                   lambda ch: lambda: ch.update_agent_heartbeat(hash_state.id),
                   peers(lambda: rp.evalsha(beat[0], 1, hkey, *beat_args),
                         lambda: gl.custom_command(["EVALSHA", *beat]),
                         lambda: cd.evalsha(beat[0], keys=[hkey], args=beat_args)),
                   ["EVALSHA", *beat], None, layout="hash"),
            OpSpec("docket_push",
                   lambda ch: lambda: ch.docket_push(task.id, "Refactor the scheduler", "high",
                                                     "supervisor", str(agent)),
                   peers(lambda: rp.xadd(docket, dict(field_pairs)),
                         lambda: gl.xadd(docket, field_pairs),
                         lambda: cd.xadd(docket, dict(field_pairs))),
                   ["XADD", docket, "*", *fields], None, clear=docket),
            OpSpec("docket_read (entry waiting)", lambda ch: lambda: ch.docket_read(consumer, 1000),
                   peers(lambda: rp.xreadgroup(group, consumer, {docket: ">"}, count=1, block=1000),
                         lambda: gl.xreadgroup({docket: ">"}, group, consumer, gl_read),
                         lambda: cd.xreadgroup(group, consumer, streams={docket: ">"}, count=1,
                                               block=1000)),
                   ["XREADGROUP", "GROUP", group, consumer, "COUNT", "1", "BLOCK", "1000",
                    "STREAMS", docket, ">"], docket, stream=True),
        ]

    def _sync_operations(self) -> list[OpSpec]:
        """The same calls on the blocking SyncChannel, beside redis-py's sync client."""
        if self.sync_channel is None:
            return []
        payload, inbox, rp = self.payload, self.inbox, self.redis_py_sync
        agent_json, task_json = self.agent_state.to_json(), self.task.to_json()
        hkey, docket = self.hash_agent_key, self.docket
        hdel, pairs = self.hash_agent_state.hash_fields()
        fields = self.docket_fields
        beat = [CAS_SHA.decode(), "1", hkey, "hash?", "last_heartbeat", "none", "",
                "2026-01-01T00:00:00.000000+00:00"]

        def hash_set() -> Any:
            with rp.pipeline(transaction=True) as pipe:
                pipe.hdel(hkey, *hdel)
                pipe.execute_command("HMSET", hkey, *pairs)
                return pipe.execute()

        baselines = {  # same order as _operations()
            "send": lambda: rp.rpush(inbox, payload),
            "try_receive": lambda: rp.lpop(inbox),
            "receive (message waiting)": lambda: rp.blpop([inbox], 1),
            "inbox_len": lambda: rp.llen(inbox),
            "set_agent_state": lambda: rp.set(self.agent_key, agent_json),
            "get_agent_state": lambda: rp.get(self.agent_key),
            "set_agent_state (hash layout)": hash_set,
            "get_agent_state (hash layout)": lambda: rp.hgetall(hkey),
            "set_task": lambda: rp.set(self.task_key, task_json),
            "get_task": lambda: rp.get(self.task_key),
            "broadcast": lambda: rp.publish("tt:broadcast", payload),
            "send_urgent": lambda: rp.lpush(self.urgent, payload),
            "should_stop": lambda: rp.exists(self.stop_key),
            "update_agent_heartbeat (hash layout)": lambda: rp.evalsha(beat[0], 1, *beat[2:]),
            "docket_push": lambda: rp.xadd(docket, dict(zip(fields[::2], fields[1::2]))),
            "docket_read (entry waiting)": lambda: rp.xreadgroup(
                DOCKET_GROUP.decode(), "bench", {docket: ">"}, count=1, block=1000),
        }
        return [OpSpec(f"sync {spec.name}", spec.make_op,
                       {"redis_py": rp and baselines[spec.name]}, spec.c_command, spec.prefill,
                       layout=spec.layout, clear=spec.clear, stream=spec.stream)
                for spec in self._operations()]

    def operation(self, name: str) -> OperationBench:
        """The measurement of one Channel (or SyncChannel) call, driven round by round."""
        for spec in self._operations():
            if spec.name == name:
                return OperationBench(self, spec)
        for spec in self._sync_operations():
            if spec.name == name:
                return OperationBench(self, spec, sync=True)
        raise KeyError(name)

    def operation_names(self) -> list[str]:
        return [spec.name for spec in self._operations() + self._sync_operations()]

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
                for who in (reversed(CONTENDERS) if r % 2 else CONTENDERS):
                    await op.prepare(who)
                    await op.timed_round(who)
                op.c_round()
            results.append(op.result())
        return results

    # -- throughput -----------------------------------------------------------------

    def _send_op(self, who: str) -> Op:
        """One send on the shared client of ``who`` (tinytown or a peer)."""
        channel, message, inbox, payload = self.channel, self.message, self.inbox, self.payload
        assert channel is not None
        if who == "tinytown":
            return lambda: channel.send(message)
        client = self.peer(who)
        if who == "redis_py":
            return lambda: client.rpush(inbox, payload)
        return lambda: client.rpush(inbox, [payload])

    def _present(self) -> list[str]:
        """tinytown and the peers installed for this run."""
        return ["tinytown"] + [who for who in PEERS if self.peer(who) is not None]

    async def concurrent_round(self, who: str, coroutines: int = 100,
                               per_coroutine: int = 100) -> tuple[float, float]:
        """(sends/s, CPU ns per send) of ``coroutines`` coroutines sending on one client."""
        assert self.channel is not None
        op = self._send_op(who)

        async def worker() -> None:
            for _ in range(per_coroutine):
                await op()

        cpu, start = time.process_time_ns(), time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(coroutines)])
        n = coroutines * per_coroutine
        rate, cpu_per_op = n / (time.perf_counter() - start), (time.process_time_ns() - cpu) / n
        await self.channel.execute("DEL", self.inbox)
        return rate, cpu_per_op

    def concurrent_c(self, coroutines: int = 100, per_coroutine: int = 100) -> tuple[float, float] | None:
        """(requests/s, CPU ns per request) of ``redis-benchmark -c <coroutines>`` on the same push."""
        before = _children_cpu_ns()
        n = coroutines * per_coroutine
        row = redis_benchmark(self.server, ["RPUSH", self.inbox, self.payload.decode()],
                              clients=coroutines, requests=n)
        self.server.cli("DEL", self.inbox)
        return None if row is None else (row["rps"], (_children_cpu_ns() - before) / n)

    async def concurrent_sends(self, coroutines: int = 100, per_coroutine: int = 100) -> Result:
        """Sends/s of ``coroutines`` coroutines sending on one Channel (one client per peer)."""
        rates: dict[str, list[tuple[float, float]]] = {who: [] for who in self._present()}
        c: list[tuple[float, float]] = []
        for r in range(self.rounds):
            self.progress(f"{coroutines} coroutines round {r + 1}/{self.rounds}")
            for who in rates:
                rates[who].append(await self.concurrent_round(who, coroutines, per_coroutine))
            row = self.concurrent_c(coroutines, per_coroutine)
            if row is not None:
                c.append(row)
        return _rate_result(f"{coroutines} coroutines, one Channel", rates, c)

    async def send_many_round(self, who: str, count: int = 10_000) -> tuple[float, float]:
        """(messages/s, CPU ns per message) of one ``send_many(count)`` (encoding
        included), or of a peer's pipeline of the same pushes."""
        assert self.channel is not None
        messages = [Message.new(AgentId.supervisor(), self.agent,
                                MessageType.Task(description=f"item {i}")) for i in range(count)]
        inbox = self.inbox
        client: Any = self.peer(who) if who != "tinytown" else None  # (peer clients: see peer())
        cpu, start = time.process_time_ns(), time.perf_counter()
        if who == "tinytown":
            await self.channel.send_many(messages)
        elif who == "redis_py":
            async with client.pipeline(transaction=False) as pipe:
                for m in messages:
                    pipe.rpush(inbox, m.to_json())
                await pipe.execute()
        elif who == "glide":
            import glide

            batch = glide.Batch(is_atomic=False)
            for m in messages:
                batch.rpush(inbox, [m.to_json()])
            await client.exec(batch, raise_on_error=True)
        else:  # coredis: the pipeline runs when its block ends
            async with client.pipeline(transaction=False) as pipe:
                for m in messages:
                    pipe.rpush(inbox, [m.to_json()])
        rate, cpu_per_op = count / (time.perf_counter() - start), (time.process_time_ns() - cpu) / count
        await self.channel.execute("DEL", inbox)
        return rate, cpu_per_op

    def send_many_c(self, count: int = 10_000) -> tuple[float, float] | None:
        """(requests/s, CPU ns per request) of ``redis-benchmark -P 1000`` on the same push."""
        before = _children_cpu_ns()
        n = count * 20
        row = redis_benchmark(self.server, ["RPUSH", self.inbox, self.payload.decode()],
                              requests=n, pipeline=1000)
        self.server.cli("DEL", self.inbox)
        return None if row is None else (row["rps"], (_children_cpu_ns() - before) / n)

    async def send_many(self, count: int = 10_000) -> Result:
        """Messages/s of ``send_many(count)``, JSON encoding included."""
        rates: dict[str, list[tuple[float, float]]] = {who: [] for who in self._present()}
        c: list[tuple[float, float]] = []
        for r in range(self.rounds):
            self.progress(f"send_many({count}) round {r + 1}/{self.rounds}")
            for who in rates:
                rates[who].append(await self.send_many_round(who, count))
            row = self.send_many_c(count)
            if row is not None:
                c.append(row)
        return _rate_result(f"send_many({count})", rates, c)

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


@dataclass
class OpSpec:
    """One operation: tinytown's call, each peer's equivalent and the C client's command."""

    name: str
    make_op: Callable[[Any], Any]          # channel -> zero-argument call
    peers: dict[str, Any]                  # peer name -> zero-argument call (or None)
    c_command: list[str] | None            # None: redis-benchmark cannot run it
    prefill: str | None                    # key to fill before a round of pops
    layout: str = "json"                   # the layout of tinytown's channel
    clear: str | None = None               # key emptied before a round (default: the inbox)
    stream: bool = False                   # prefill is the docket stream, not a list


class OperationBench:
    """One Channel call measured against the baselines, one round at a time.

    A round runs ``per_round`` operations for one contender (see CONTENDERS)
    after :meth:`prepare`, or the C client (:meth:`c_round`). Each round also
    records the contender's CPU time per operation.
    """

    def __init__(self, bench: Bench, spec: OpSpec, sync: bool = False) -> None:
        self.bench = bench
        self.name = spec.name
        self.c_command = spec.c_command
        self.prefill = spec.prefill
        self.clear = spec.clear or bench.inbox
        self.stream = spec.stream
        self.layout = spec.layout
        self.sync = sync
        self.ops: dict[str, Any] = {who: spec.peers.get(who) for who in PEERS}
        hashed = spec.layout == "hash"
        if sync:  # the same calls on the SyncChannel; no TCP row for them
            self.ops["tinytown"] = spec.make_op(
                bench.hash_sync_channel if hashed else bench.sync_channel)
            self.ops["tcp"] = None
        else:
            channel = bench.hash_channel if hashed else bench.channel
            tcp = bench.hash_tcp_channel if hashed else bench.tcp_channel
            self.ops["tinytown"] = spec.make_op(channel) if channel else None
            self.ops["tcp"] = spec.make_op(tcp) if tcp else None
        self.samples: dict[str, list[int]] = {who: [] for who in CONTENDERS}
        self.cpu: dict[str, list[float]] = {who: [] for who in (*CONTENDERS, "c_client")}
        self.c_p50s: list[float] = []

    def _channel(self, who: str) -> Channel | None:
        return self.bench.tcp_channel if who == "tcp" else self.bench.channel

    async def setup(self) -> None:
        """State the reads need (the agent and task to get, in each layout) and
        the heartbeat's script loaded (so that the peers' EVALSHA finds it)."""
        b = self.bench
        for channel, hashed in ((b.channel, b.hash_channel), (b.tcp_channel, b.hash_tcp_channel)):
            if channel is not None:
                await channel.set_agent_state(b.agent_state)
                await channel.set_task(b.task)
                await channel.execute("SCRIPT", "LOAD", CAS_SCRIPT)
            if hashed is not None:
                await hashed.set_agent_state(b.hash_agent_state)

    async def prepare(self, who: str) -> None:
        """Untimed: fill the inbox for the popping calls, empty it for the pushing ones."""
        channel = self._channel(who)
        if channel is None or self.ops[who] is None:
            return
        if self.prefill is not None:
            await self.bench._prefill(channel, self.prefill, self.bench.per_round, self.stream)
        else:
            await channel.execute("DEL", self.clear)

    async def timed_round(self, who: str) -> None:
        op = self.ops[who]
        if op is None:
            return
        n = self.bench.per_round
        if self.sync:
            cpu = self.bench._time_sync_ops(op, n, self.samples[who])
        else:
            cpu = await self.bench._time_ops(op, n, self.samples[who])
        self.cpu[who].append(cpu / n)

    def c_round(self) -> None:
        row = self.bench._c_p50(self.c_command, self.prefill, self.stream)
        if row is not None:
            self.c_p50s.append(row[0])
            self.cpu["c_client"].append(row[1])

    def result(self) -> Result:
        s = self.samples

        def median(values: list[Any]) -> float | None:
            return statistics.median(values) if values else None

        return Result(
            name=self.name, unit="ns",
            tinytown=statistics.median(s["tinytown"]),
            tinytown_p99=_p(s["tinytown"], 0.99),
            redis_py=median(s["redis_py"]), glide=median(s["glide"]),
            coredis=median(s["coredis"]), c_client=median(self.c_p50s), tcp=median(s["tcp"]),
            cpu={who: statistics.median(v) for who, v in self.cpu.items() if v and who != "tcp"},
            extra={"samples": {k: v for k, v in s.items() if v} | (
                {"c_client_p50": self.c_p50s} if self.c_p50s else {})},
        )


def _rate_result(name: str, rates: dict[str, list[tuple[float, float]]],
                 c: list[tuple[float, float]]) -> Result:
    """A throughput row from per-round (rate, CPU ns per op) of each contender."""
    def median(rows: list[tuple[float, float]], i: int) -> float | None:
        return statistics.median(r[i] for r in rows) if rows else None

    cpu = {who: median(rows, 1) for who, rows in rates.items() if rows}
    if c:
        cpu["c_client"] = median(c, 1)
    return Result(name=name, unit="ops/s", tinytown=median(rates["tinytown"], 0) or 0.0,
                  redis_py=median(rates.get("redis_py", []), 0),
                  glide=median(rates.get("glide", []), 0),
                  coredis=median(rates.get("coredis", []), 0),
                  c_client=median(c, 0), cpu={k: v for k, v in cpu.items() if v is not None})


# --------------------------------------------------------------------------- TLS

#: The TLS rows: an operation and its two sides, tinytown's Channel (or
#: SyncChannel) call and redis-py's same commands.
TLS_OPERATIONS = ("send", "send + receive")


class TlsBench:
    """``send`` and a round trip (``send`` then ``receive``: RPUSH, BLPOP) over TLS.

    tinytown's Channel and SyncChannel (over TLS both run on the pure-Python
    transports: asyncio's and ``ssl``'s TLS) beside redis-py's asyncio and
    blocking clients (``ssl=True``), all on the same ``rediss://`` server
    (a :class:`RedisServer` made with ``tls``), ``rounds`` interleaved rounds
    of ``per_round`` operations each, the order of the two contenders swapped
    every round as in :meth:`Bench.single_operations`. The ``send`` rows also
    have the C client (``redis-benchmark --tls``).
    """

    def __init__(self, server: RedisServer, *, rounds: int = 7, per_round: int = 300,
                 town: str = "bench", progress: Callable[[str], None] | None = None) -> None:
        if server.tls is None:
            raise ValueError("TlsBench needs a RedisServer started with tls")
        self.server = server
        self.rounds = rounds
        self.per_round = per_round
        self.town = town
        self.progress = progress or (lambda label: None)
        self.agent = AgentId.new()
        self.message = Message.new(AgentId.supervisor(), self.agent,
                                   MessageType.Task(description="Review the pull request #1234"))
        self.payload = self.message.to_json()
        self.inbox = f"tt:{town}:inbox:{self.agent}"
        self.channel: Channel | None = None
        self.sync_channel: SyncChannel | None = None
        self.redis_py: Any = None       # redis.asyncio.Redis over TLS
        self.redis_py_sync: Any = None  # redis.Redis over TLS

    async def __aenter__(self) -> TlsBench:
        assert self.server.tls is not None and self.server.tls_port is not None
        url, ca = self.server.tls_url, str(self.server.tls.ca)
        self.channel = await Channel.connect(url, town=self.town, layout="json", ssl_ca_file=ca)
        self.sync_channel = SyncChannel.connect(url, town=self.town, layout="json", ssl_ca_file=ca)
        try:  # optional, as every peer of `tinytown bench`
            import redis
            import redis.asyncio as aredis
        except ImportError:
            pass
        else:
            port = self.server.tls_port
            self.redis_py = aredis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=ca)
            await self.redis_py.ping()
            self.redis_py_sync = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=ca)
            self.redis_py_sync.ping()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.sync_channel is not None:
            self.sync_channel.close()
        if self.redis_py is not None:
            await self.redis_py.aclose()
        if self.redis_py_sync is not None:
            self.redis_py_sync.close()

    def _ops(self, name: str, sync: bool) -> dict[str, Any]:
        """contender -> zero-argument call (a coroutine function unless ``sync``)."""
        agent, message, inbox, payload = self.agent, self.message, self.inbox, self.payload
        ch, sch, rp, rps = self.channel, self.sync_channel, self.redis_py, self.redis_py_sync
        assert ch is not None and sch is not None
        if name == "send":
            if sync:
                return {"tinytown": lambda: sch.send(message),
                        "redis_py": rps and (lambda: rps.rpush(inbox, payload))}
            return {"tinytown": lambda: ch.send(message),
                    "redis_py": rp and (lambda: rp.rpush(inbox, payload))}
        if sync:
            def tt_sync() -> Any:
                sch.send(message)
                return sch.receive(agent, 1)

            def rp_sync() -> Any:
                rps.rpush(inbox, payload)
                return rps.blpop([inbox], 1)

            return {"tinytown": tt_sync, "redis_py": rps and rp_sync}

        async def tt() -> Any:
            await ch.send(message)
            return await ch.receive(agent, 1)

        async def rp_round_trip() -> Any:
            await rp.rpush(inbox, payload)
            return await rp.blpop([inbox], 1)

        return {"tinytown": tt, "redis_py": rp and rp_round_trip}

    async def run(self) -> list[Result]:
        """One :class:`Result` per TLS row: ``send (TLS)``, ``send + receive (TLS)``
        and their ``sync`` twins (SyncChannel beside redis-py's blocking client)."""
        results = []
        n = self.per_round
        for name in TLS_OPERATIONS:
            for sync in (False, True):
                row = f"{'sync ' if sync else ''}{name} (TLS)"
                ops = {who: op for who, op in self._ops(name, sync).items() if op}
                samples: dict[str, list[int]] = {who: [] for who in ops}
                cpu: dict[str, list[float]] = {who: [] for who in (*ops, "c_client")}
                c_p50s: list[float] = []
                for r in range(self.rounds):
                    self.progress(f"{row} round {r + 1}/{self.rounds}")
                    for who in (reversed(list(ops)) if r % 2 else list(ops)):
                        self.server.cli("DEL", self.inbox)
                        if sync:
                            spent = Bench._time_sync_ops(ops[who], n, samples[who])
                        else:
                            spent = await Bench._time_ops(ops[who], n, samples[who])
                        cpu[who].append(spent / n)
                    if name == "send" and not sync:  # the C client, once per round
                        self.server.cli("DEL", self.inbox)
                        before = _children_cpu_ns()
                        c = redis_benchmark(self.server, ["RPUSH", self.inbox, self.payload.decode()],
                                            requests=max(n, 1000))
                        if c is not None:
                            c_p50s.append(c["p50_ms"] * 1e6)
                            cpu["c_client"].append((_children_cpu_ns() - before) / max(n, 1000))
                self.server.cli("DEL", self.inbox)
                results.append(Result(
                    name=row, unit="ns", tinytown=statistics.median(samples["tinytown"]),
                    tinytown_p99=_p(samples["tinytown"], 0.99),
                    redis_py=statistics.median(samples["redis_py"]) if "redis_py" in samples else None,
                    c_client=statistics.median(c_p50s) if c_p50s else None,
                    cpu={who: statistics.median(v) for who, v in cpu.items() if v},
                    extra={"samples": samples | ({"c_client_p50": c_p50s} if c_p50s else {}),
                           "tls": True, "tinytown_transport": "python"}))
        return results


def _children_cpu_ns() -> int:
    """User + system CPU time of every waited-for child process so far (ns)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


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


# --------------------------------------------------------------------------- instructions

#: Sends per callgrind run: the cost of one send is the difference of two runs
#: divided by the difference of their counts, so start-up and imports cancel out.
CALLGRIND_N = (2000, 4000)
#: The clients counted by ``--callgrind``, the C floor first.
CALLGRIND_CLIENTS = ("hiredis C loop", "tinytown SyncChannel", "tinytown Channel (uvloop)",
                     "tinytown Channel (asyncio)", "redis-py asyncio", "valkey-glide", "coredis")


def build_floor(directory: Path) -> Path | None:
    """Compile the hiredis C loop (``_floor.c``); None without a compiler or hiredis headers."""
    cc, pkg = shutil.which("cc"), shutil.which("pkg-config")
    if cc is None or pkg is None:
        return None
    flags = subprocess.run([pkg, "--cflags", "--libs", "hiredis"], capture_output=True, text=True)
    if flags.returncode:
        return None
    exe = directory / "floor"
    built = subprocess.run([cc, "-O2", "-o", str(exe), str(Path(__file__).with_name("_floor.c")),
                            *flags.stdout.split()], capture_output=True, text=True)
    return exe if built.returncode == 0 else None


def _callgrind_total(argv: list[str], env: dict[str, str] | None = None) -> int:
    """User-space instructions executed by ``argv`` under callgrind (its "Collected" total)."""
    with tempfile.TemporaryDirectory(prefix="tinytown-callgrind-") as tmp:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode:
        raise RuntimeError(f"callgrind run failed: {proc.stderr.strip().splitlines()[-1:]}")
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise RuntimeError("callgrind printed no instruction count")


def instructions_per_send(server: RedisServer, progress: Callable[[str], None] = lambda _: None,
                          clients: tuple[str, ...] = CALLGRIND_CLIENTS) -> dict[str, float]:
    """User-space instructions per send of each client (those that can run here).

    tinytown encodes the Message to JSON inside each send; the others push the
    same bytes pre-encoded, as a user of a plain Redis client would.
    """
    if shutil.which("valgrind") is None:
        raise RuntimeError("--callgrind needs valgrind (apt-get install valgrind)")
    town, agent = "bench", AgentId.new()
    key = f"tt:{town}:inbox:{agent}"
    counts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tinytown-floor-") as tmp:
        floor = build_floor(Path(tmp))
        payload_file = Path(tmp) / "payload"
        payload_file.write_bytes(_callgrind_message(agent).to_json())
        for who in clients:
            argv: Callable[[int], list[str]]  # (two variants, one signature)
            if who == "hiredis C loop":
                if floor is None or server.tcp:
                    continue
                def argv(n: int) -> list[str]:
                    return [str(floor), str(server.socket_path), key, str(payload_file), str(n)]
            else:
                if not _client_available(who):
                    continue
                def argv(n: int, who: str = who) -> list[str]:
                    return [sys.executable, "-c", "import sys; from tinytown.bench import _send_child; "
                            "_send_child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))",
                            who, server.url, town, agent, str(n)]
            totals = []
            for n in CALLGRIND_N:
                progress(f"callgrind: {who}, {n} sends")
                totals.append(_callgrind_total(argv(n)))
                server.cli("DEL", key)
            counts[who] = (totals[1] - totals[0]) / (CALLGRIND_N[1] - CALLGRIND_N[0])
    return counts


def _client_available(who: str) -> bool:
    module = {"redis-py asyncio": "redis", "valkey-glide": "glide", "coredis": "coredis",
              "tinytown Channel (uvloop)": "uvloop"}.get(who)
    if module is None:
        return True
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _callgrind_message(agent: str) -> Message:
    return Message.new(AgentId.supervisor(), AgentId(agent), MessageType.Task(
        description="Review the pull request #1234 and report what breaks. " * 8))


def _send_child(who: str, url: str, town: str, agent: str, n: int) -> None:
    """Body of one callgrind run: connect, then ``n`` sends."""
    message = _callgrind_message(agent)
    payload, key = message.to_json(), f"tt:{town}:inbox:{agent}"
    socket_path = url.removeprefix("unix://")
    if who == "tinytown SyncChannel":
        from .sync_channel import SyncChannel

        with SyncChannel.connect(url, town=town) as sync:
            for _ in range(n):
                sync.send(message)
        return

    async def run() -> None:
        if who.startswith("tinytown"):
            async with await Channel.connect(url, town=town) as channel:
                for _ in range(n):
                    await channel.send(message)
        elif who == "redis-py asyncio":
            import redis.asyncio as aredis

            client = aredis.Redis(unix_socket_path=socket_path)
            for _ in range(n):
                await client.rpush(key, payload)
            await client.aclose()
        elif who == "valkey-glide":
            import glide

            g = await glide.GlideClient.create(glide.GlideClientConfiguration(
                [glide.NodeAddress(unix_socket_path=socket_path)]))
            for _ in range(n):
                await g.rpush(key, [payload])
            await g.close()
        elif who == "coredis":
            import coredis

            async with coredis.Redis(unix_socket_path=socket_path) as c:
                for _ in range(n):
                    await c.rpush(key, [payload])
        else:
            raise ValueError(who)

    if who == "tinytown Channel (uvloop)":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


# --------------------------------------------------------------------------- under load

#: Queued-drain sizes (commands of 1 KB) and large-message counts (1 MB each) of ``--load``.
DRAIN_SIZES = (100_000, 200_000, 400_000, 800_000)
LARGE_COUNTS = (100, 200, 400)


async def drain_after_stall(server: RedisServer, who: str, count: int, stall: float = 1.0) -> float:
    """Seconds to drain ``count`` 1 KB pushes queued on one client while redis-server
    was stopped (SIGSTOP), from the moment it resumes (SIGCONT).

    ``who``: "tinytown" (the extension), "python" (tinytown's Python
    transport) or "redis_py" (one pipeline of the same pushes).
    """
    key, value = "tt:bench:drain", b"x" * 1024
    if who == "redis_py":
        import redis.asyncio as aredis

        client = aredis.Redis(unix_socket_path=str(server.socket_path))
        await client.ping()
        pipe = client.pipeline(transaction=False)
        for _ in range(count):
            pipe.rpush(key, value)
        server.proc.send_signal(signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(pipe.execute())
            await asyncio.sleep(stall)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        start = time.perf_counter()
        await task
        elapsed = time.perf_counter() - start
        await client.delete(key)
        await client.aclose()
        return elapsed
    channel = await Channel.connect(server.url, town="bench",
                                    transport="python" if who == "python" else "hiredis")
    started = 0

    async def push() -> None:
        nonlocal started
        started += 1
        await channel.execute("RPUSH", key, value)

    server.proc.send_signal(signal.SIGSTOP)
    try:
        tasks = [asyncio.ensure_future(push()) for _ in range(count)]
        while started < count:
            await asyncio.sleep(0)
        await asyncio.sleep(stall)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    await channel.execute("DEL", key)
    await channel.close()
    return elapsed


async def large_messages(server: RedisServer, who: str, count: int) -> float:
    """Seconds of one ``send_many`` of ``count`` messages of 1 MB (or a redis-py pipeline)."""
    agent = AgentId.new()
    messages = [Message.new(AgentId.supervisor(), agent, MessageType.Task(description="y" * 2**20))
                for _ in range(count)]
    if who == "redis_py":
        import redis.asyncio as aredis

        client = aredis.Redis(unix_socket_path=str(server.socket_path))
        start = time.perf_counter()
        async with client.pipeline(transaction=False) as pipe:
            for m in messages:
                pipe.rpush(f"tt:bench:inbox:{agent}", m.to_json())
            await pipe.execute()
        elapsed = time.perf_counter() - start
        await client.delete(f"tt:bench:inbox:{agent}")
        await client.aclose()
        return elapsed
    async with await Channel.connect(server.url, town="bench", max_message_bytes=2**21,
                                     transport="python" if who == "python" else "hiredis") as ch:
        start = time.perf_counter()
        await ch.send_many(messages)
        elapsed = time.perf_counter() - start
        await ch.execute("DEL", f"tt:bench:inbox:{agent}")
    return elapsed


async def load_rows(server: RedisServer, progress: Callable[[str], None],
                    drain_sizes: tuple[int, ...] = DRAIN_SIZES,
                    large_counts: tuple[int, ...] = LARGE_COUNTS) -> list[Result]:
    """The ``--load`` rows: seconds per case, tinytown beside its Python transport and redis-py."""
    results = []
    cases: list[tuple[str, Callable[[str], Awaitable[float]]]] = [
        (f"drain {n:,} x 1 KB after a stall", functools.partial(drain_after_stall, server, count=n))
        for n in drain_sizes]
    cases += [(f"send_many {n} x 1 MB", functools.partial(large_messages, server, count=n))
              for n in large_counts]
    for name, case in cases:
        times = {}
        for who in ("tinytown", "python", "redis_py"):
            progress(f"{name}: {who}")
            times[who] = await case(who)
        results.append(Result(name=name, unit="s", tinytown=times["tinytown"],
                              redis_py=times["redis_py"], python_transport=times["python"]))
    return results


# --------------------------------------------------------------------------- CLI


def _format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ns":
        return f"{value / 1000:.1f} µs"
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f}/s"


def _format_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return lines


def render_table(results: list[Result]) -> str:
    """The human tables: per operation, wall-clock p50 (or rate), p99, the
    0.1 ms target and ratios to every baseline; then client CPU time per
    operation and its ratios."""
    header = ["operation", "p50 / rate", "p99", "0.1 ms", "vs redis-py", "vs glide",
              "vs coredis", "vs C client", "TCP/Unix"]
    rows = []
    load = [r for r in results if r.unit == "s"]
    results = [r for r in results if r.unit != "s"]
    for r in results:
        target = "-"
        if r.unit == "ns":
            target = "met" if r.tinytown <= TARGET_NS else "missed"
        rows.append([
            r.name, _format_value(r.tinytown, r.unit), _format_value(r.tinytown_p99, r.unit),
            target, *(_format_ratio(r.ratio(getattr(r, who))) for who in (*PEERS, "c_client")),
            _format_ratio(r.tcp / r.tinytown if r.tcp else None),
        ])
    lines = _grid(header, rows)
    lines.append("ratios: latency rows tinytown/baseline (lower is better); "
                 "rate rows tinytown/baseline (higher is better)")
    cpu_rows = [[r.name, _format_value(r.cpu["tinytown"], "ns"),
                 *(_format_ratio(r.cpu_ratio(who)) for who in (*PEERS, "c_client"))]
                for r in results if r.cpu.get("tinytown")]
    if cpu_rows:
        lines += ["", *_grid(["operation", "client CPU/op", "vs redis-py", "vs glide",
                              "vs coredis", "vs C client"], cpu_rows)]
        lines.append("client CPU time per operation (process time, all threads): "
                     "tinytown/baseline, lower is better")
    if load:
        lines += ["", *_grid(["under load", "time", "vs Python transport", "vs redis-py"],
                             [[r.name, _format_value(r.tinytown, "s"),
                               _format_ratio(r.ratio(r.python_transport)),
                               _format_ratio(r.ratio(r.redis_py))] for r in load])]
        lines.append("time to finish: tinytown/baseline, lower is better")
    return "\n".join(lines)


def render_instructions(counts: dict[str, float]) -> str:
    """The callgrind table: user-space instructions per send, and x the C loop."""
    floor = counts.get("hiredis C loop")
    rows = [[who, f"{n / 1000:.1f} k", _format_ratio(n / floor if floor else None)]
            for who, n in counts.items()]
    lines = _grid(["client", "instructions/send", "vs C loop"], rows)
    lines.append("user-space instructions per send under valgrind --tool=callgrind "
                 f"({CALLGRIND_N[1]} sends minus {CALLGRIND_N[0]}, divided by the difference)")
    return "\n".join(lines)


#: Colours of the contenders in the chart, the same in every group.
_COLOURS = {"tinytown": "#1f77b4", "redis_py": "#d62728", "glide": "#9467bd",
            "coredis": "#8c564b", "tcp": "#7f7f7f", "c_client": "#2ca02c"}


def plot(results: list[Result], path: str) -> None:
    """Write a PNG: for each latency row, the contenders' distributions side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    latency = [r for r in results if r.unit == "ns" and r.extra.get("samples")]
    order = [*CONTENDERS, "c_client_p50"]
    fig, ax = plt.subplots(figsize=(11, 0.55 * max(4, 3 * len(latency)) + 1.5))
    ticks, labels, seen = [], [], set()
    y = 0.0
    for r in reversed(latency):  # first row at the top
        groups = [(who, r.extra["samples"][who]) for who in order if who in r.extra["samples"]]
        start = y
        for who, samples in reversed(groups):  # tinytown at the top of its group
            colour = _COLOURS["c_client" if who == "c_client_p50" else who]
            box = ax.boxplot([[s / 1000 for s in samples]], positions=[y], widths=0.7,
                             orientation="horizontal", showfliers=False, whis=(1, 99),
                             patch_artist=True)
            for patch in box["boxes"]:
                patch.set_facecolor(colour)
            seen.add("c_client" if who == "c_client_p50" else who)
            y += 1
        ticks.append((start + y - 1) / 2)
        labels.append(r.name)
        y += 1.0  # a gap between operations
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.axvline(TARGET_NS / 1000, color="red", linestyle="--")
    handles: list[Artist] = [Patch(color=_COLOURS[who], label=who.replace("_", "-"))
                             for who in _COLOURS if who in seen]
    handles.append(Line2D([], [], color="red", linestyle="--", label="Tinytown's 0.1 ms"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xscale("log")  # a few slow outliers would squash everything else
    ax.set_xlabel("latency per operation (µs, log scale); boxes: p25-p75, whiskers: p1-p99; "
                  "C client: its per-round p50")
    ax.set_title(f"tinytown channel latency ({platform.node()}, {time.strftime('%Y-%m-%d')})")
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


async def tls_rows(directory: Path, rounds: int, per_round: int, progress: Callable[[str], None],
                   cpus: set[int] | None = None,
                   files: TlsFiles | None = None) -> tuple[list[Result], str | None]:
    """The TLS rows (:class:`TlsBench`) on a TLS redis-server started in ``directory``
    (with ``files``, or a throwaway CA made by :func:`make_tls_files`).

    Returns (rows, None), or ([], why) when they cannot run here: no
    ``trustme`` to make the certificates, or a redis-server that does not
    start with ``--tls-port`` (built without TLS; redis-server's own words
    are in ``why``). Other failures raise.
    """
    try:
        files = files or make_tls_files(directory)
        server = RedisServer(directory, tls=files, cpus=cpus)
    except RuntimeError as exc:
        return [], str(exc)
    try:
        async with TlsBench(server, rounds=rounds, per_round=per_round, progress=progress) as bench:
            return await bench.run(), None
    finally:
        server.stop()


async def run_all(args: argparse.Namespace, progress: Callable[[str], None],
                  notes: dict[str, Any] | None = None) -> list[Result]:
    """Every row asked for by ``args``. ``notes`` (if given) receives ``"tls"``:
    ``{"ran": bool, "reason": str | None}``, so that rows that could not run
    are reported, never dropped silently."""
    notes = {} if notes is None else notes
    with tempfile.TemporaryDirectory(prefix="tinytown-bench-") as tmp:
        unix_dir, tcp_dir, tls_dir = Path(tmp) / "unix", Path(tmp) / "tcp", Path(tmp) / "tls"
        unix_dir.mkdir()
        tcp_dir.mkdir()
        tls_dir.mkdir()
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
            if args.no_tls:
                notes["tls"] = {"ran": False, "reason": "--no-tls"}
            else:
                rows, why = await tls_rows(tls_dir, args.rounds, args.per_round, progress,
                                           cpus=pinned and pinned[1])
                results += rows
                notes["tls"] = {"ran": why is None, "reason": why}
            if args.load:
                results += await load_rows(server, progress, _sizes(args.drain_sizes),
                                           _sizes(args.large_counts))
            if args.callgrind:
                instructions = instructions_per_send(server, progress)
                results.append(Result(name="instructions per send", unit="instructions",
                                      tinytown=instructions.get("tinytown Channel (asyncio)", 0.0),
                                      extra={"instructions": instructions}))
            return results
        finally:
            server.stop()
            if tcp_server is not None:
                tcp_server.stop()


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if any(n < 1 for n in sizes):
        raise ValueError(text)
    return sizes


def main(argv: list[str] | None = None) -> int:
    """``tinytown bench``: run the benchmark on an embedded local redis-server."""
    parser = argparse.ArgumentParser(
        prog="tinytown bench",
        description="Measure the channel's operations on an embedded redis-server, beside "
                    "redis-py, valkey-glide, coredis (those installed) and the C client "
                    "redis-benchmark, in interleaved rounds: latency, throughput and client "
                    "CPU time per operation.")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--per-round", type=int, default=300,
                        help="operations per contender per round (default 300)")
    parser.add_argument("--e2e-messages", type=int, default=300,
                        help="messages for the cross-process latency (default 300)")
    parser.add_argument("--memory-pairs", type=int, default=0,
                        help="also measure RSS growth over this many send+receive (e.g. 1000000)")
    parser.add_argument("--no-tcp", action="store_true", help="skip the Unix-vs-TCP comparison")
    parser.add_argument("--no-tls", action="store_true",
                        help="skip the TLS rows (send and send + receive over rediss://, "
                             "beside redis-py over the same TLS server)")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count user-space instructions per send under valgrind's callgrind "
                             "(slow: a few minutes), beside a hiredis C loop")
    parser.add_argument("--load", action="store_true",
                        help="also time draining pushes queued during a stall and send_many of "
                             "1 MB messages, beside the Python transport and redis-py (slow)")
    parser.add_argument("--drain-sizes", default=",".join(map(str, DRAIN_SIZES)),
                        help="commands queued in the drain rows of --load (comma-separated)")
    parser.add_argument("--large-counts", default=",".join(map(str, LARGE_COUNTS)),
                        help="1 MB messages in the send_many rows of --load (comma-separated)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin clients and redis-server to CPUs (noisier medians)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a latency distribution chart")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.per_round < 1:
        parser.error("--rounds and --per-round must be positive")
    # Every check that can fail is made here, before minutes of measuring.
    if args.e2e_messages < 1:
        parser.error("--e2e-messages must be positive")
    if args.memory_pairs < 0:
        parser.error("--memory-pairs must be positive (or 0: not measured)")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        parser.error(f"--plot: no directory to write {args.plot!r} in")
    if args.callgrind and shutil.which("valgrind") is None:
        print("tinytown bench: --callgrind needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    try:
        _sizes(args.drain_sizes), _sizes(args.large_counts)
    except ValueError:
        parser.error("--drain-sizes and --large-counts take positive whole numbers, comma-separated")
    total = args.rounds * (18 + 2 + 2 * len(TLS_OPERATIONS)) + max(1, args.rounds) + 1
    progress = _Progress(total)
    notes: dict[str, Any] = {}
    # With --json, stdout carries the JSON document alone: whatever a peer
    # client or a child process prints meanwhile goes to stderr instead.
    saved_stdout = _stdout_to_stderr() if args.json else None
    try:
        results = asyncio.run(_until_terminated(run_all(args, progress, notes)))
    except Exception as exc:  # one line, as every CLI error
        progress.close()
        print(f"tinytown bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if saved_stdout is not None:
            _restore_stdout(saved_stdout)
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
            "tls": notes.get("tls"),
        }
        print(json.dumps(payload, indent=2))
        tls = notes.get("tls")
        if tls and not tls["ran"]:
            print(f"tinytown bench: TLS rows not run: {tls['reason']}", file=sys.stderr)
    else:
        print(render_table([r for r in results if r.unit != "instructions"]))
        tls = notes.get("tls")
        if tls and tls["ran"]:
            print("(TLS) rows: rediss:// to a redis-server --tls-port on 127.0.0.1; tinytown on its "
                  "pure-Python transports (the extension has no TLS), redis-py with ssl=True, "
                  "the C client redis-benchmark --tls")
        elif tls:
            print(f"TLS rows not run: {tls['reason']}")
        for r in results:
            if r.unit == "instructions":
                print()
                print(render_instructions(r.extra["instructions"]))
        if args.plot:
            print(f"chart written to {args.plot}")
    return 0


async def _until_terminated(run: Awaitable[list[Result]]) -> list[Result]:
    """``await run``; SIGTERM (kill, timeout, a cancelled CI job) cancels it, so
    that its finally blocks stop the bench's redis-servers and child processes,
    then exits with status 143. (A loop signal handler: it runs between
    callbacks, never inside the extension's.)"""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such loop support
        return await run
    try:
        return await run
    except asyncio.CancelledError:
        if terminated:
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _stdout_to_stderr() -> int:
    """Point file descriptor 1 at stderr; return a copy of the old one."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    return saved


def _restore_stdout(saved: int) -> None:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
