"""Real redis-server processes for the test suite.

No mocks and no fake Redis: every test that talks to Redis talks to a real
``redis-server`` (or ``valkey-server``) started here, on a Unix socket in a
private temporary directory by default, or on a free TCP port of 127.0.0.1
when asked.

The helpers speak a tiny bit of RESP over a raw socket (PING, FLUSHALL, any
command) so that the harness depends on no client library, not even on
tinytown itself: it must keep working while the code under test is broken.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

from tinytown._transport.resp import encode_command

__all__ = [
    "RedisProcess",
    "RespConnection",
    "RespError",
    "find_server_binary",
    "free_tcp_port",
    "resp_command",
    "RedisCluster",
    "find_cli_binary",
]

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RespError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def find_server_binary() -> str:
    """$TINYTOWN_REDIS_SERVER, else redis-server, else valkey-server on PATH."""
    env = os.environ.get("TINYTOWN_REDIS_SERVER")
    if env:
        found = shutil.which(env)
        if found is None:
            raise RuntimeError(f"TINYTOWN_REDIS_SERVER={env!r} is not an executable")
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no redis-server (or valkey-server) on PATH: run scripts/bootstrap.sh "
        "(apt-get install redis-server)"
    )


def free_tcp_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# minimal RESP over a raw socket


def _encode(args: Iterable[object]) -> bytes:
    # tinytown's one RESP encoder (the replies are read here, with str for
    # status replies, which the tests compare with).
    return encode_command(tuple(args))


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def reply(self) -> object:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP line {line!r}")


def _connect(address: str | tuple[str, int], timeout: float) -> socket.socket:
    if isinstance(address, tuple):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def resp_command(
    address: str | tuple[str, int],
    *args: object,
    password: str | None = None,
    timeout: float = 5.0,
) -> object:
    """Send one command on a new connection and return its decoded reply.

    ``address`` is a Unix socket path or a ``(host, port)`` pair. Replies:
    simple strings as ``str``, bulk strings as ``bytes``, integers, ``None``,
    lists. An error reply raises :class:`RespError`. ``SHUTDOWN`` succeeding
    (the server closes the connection) returns ``None``.
    """
    with _connect(address, timeout) as sock:
        reader = _Reader(sock)
        if password is not None:
            sock.sendall(_encode(["AUTH", password]))
            r = reader.reply()
            if isinstance(r, RespError):
                raise r
        sock.sendall(_encode(args))
        try:
            reply = reader.reply()
        except ConnectionError:
            if args and str(args[0]).upper() == "SHUTDOWN":
                return None
            raise
    if isinstance(reply, RespError):
        raise reply
    return reply


class RespConnection:
    """One long-lived raw RESP connection (for probes that must not add a
    connection per command to the counts a test measures)."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 5.0) -> None:
        self._sock = _connect(address, timeout)
        self._reader = _Reader(self._sock)

    def command(self, *args: object) -> object:
        """Send one command and return its reply (an error reply raises RespError)."""
        self._sock.sendall(_encode(args))
        reply = self._reader.reply()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict of its ``name:value`` lines."""
        text = self.command("INFO", section).decode()  # type: ignore[union-attr]
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "RespConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# processes

_live: "set[RedisProcess]" = set()  # strong refs: nothing leaks unnoticed


def _cleanup_all() -> None:  # atexit safety net
    for proc in list(_live):
        try:
            proc.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(_cleanup_all)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the server if the test process dies abruptly.

    (PR_SET_PDEATHSIG fires when the *thread* that forked exits: start servers
    from the main thread, as the fixtures do.)
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:
            pass


class RedisProcess:
    """One real redis-server child process, with its own temporary directory.

    By default it listens only on ``<dir>/redis.sock`` (``--port 0``), with
    persistence off (``--save '' --appendonly no``); ``tcp=True`` makes it
    listen on a free port of 127.0.0.1 instead. ``extra_args`` are appended
    to the command line, so they override the defaults (``"--save", "60 1"``,
    ``"--appendonly", "yes"``, ``"--requirepass", "pw"``...).

    The server's stdout and stderr go to ``<dir>/redis.log``.
    """

    def __init__(
        self,
        *extra_args: str,
        tcp: bool = False,
        directory: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.extra_args: tuple[str, ...] = tuple(str(a) for a in extra_args)
        self.tcp = tcp
        self._own_dir = directory is None
        self._dir = Path(
            tempfile.mkdtemp(prefix="tt-redis-") if directory is None else directory
        ).absolute()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._port: int | None = port  # None: a free one, chosen at start
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.password: str | None = None
        args = list(self.extra_args)
        for i, a in enumerate(args[:-1]):
            if a == "--requirepass":
                self.password = args[i + 1]

    # ---------------------------------------------------------------- info
    @property
    def dir(self) -> Path:
        """The server's working directory (RDB/AOF files, socket, log)."""
        return self._dir

    @property
    def unix_path(self) -> str | None:
        """Absolute path of the Unix socket, or None for a TCP server."""
        return None if self.tcp else str(self._dir / "redis.sock")

    @property
    def port(self) -> int | None:
        """The TCP port, or None for a Unix-socket server."""
        return self._port if self.tcp else None

    @property
    def address(self) -> str | tuple[str, int]:
        """Where to connect: a socket path or ``("127.0.0.1", port)``."""
        if self.tcp:
            assert self._port is not None, "server not started"
            return ("127.0.0.1", self._port)
        assert self.unix_path is not None
        return self.unix_path

    @property
    def url(self) -> str:
        """``unix:///abs/path/redis.sock`` or ``redis://127.0.0.1:<port>``."""
        if self.tcp:
            assert self._port is not None, "server not started"
            return f"redis://127.0.0.1:{self._port}"
        return f"unix://{self.unix_path}"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.url if (self._port or not self.tcp) else "tcp"
        return f"<RedisProcess {where} {state}>"

    # ------------------------------------------------------------ commands
    def command(self, *args: object, timeout: float = 5.0) -> object:
        """Run one raw command on a new connection (see :func:`resp_command`)."""
        return resp_command(self.address, *args, password=self.password, timeout=timeout)

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING (a NOAUTH error also means it is up)."""
        try:
            reply = resp_command(self.address, "PING", timeout=timeout)
        except RespError as exc:
            return str(exc).startswith("NOAUTH")
        except OSError:
            return False
        return reply == "PONG"

    def flushall(self) -> None:
        """FLUSHALL over a raw socket."""
        self.command("FLUSHALL")

    # ----------------------------------------------------------- lifecycle
    def _argv(self) -> list[str]:
        argv = [self.binary]
        if self.tcp:
            argv += ["--port", str(self._port), "--bind", "127.0.0.1"]
        else:
            argv += [
                "--port", "0",
                "--unixsocket", str(self.unix_path),
                "--unixsocketperm", "700",
            ]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self._dir)]
        argv += list(self.extra_args)
        return argv

    def start(self, timeout: float = READY_TIMEOUT) -> "RedisProcess":
        """Start the server and wait until it answers PING."""
        if self._closed:
            raise RuntimeError("RedisProcess already closed")
        if self.running:
            return self
        _live.add(self)
        attempts = 3 if (self.tcp and self._port is None) else 1
        for attempt in range(attempts):
            if self.tcp and (self._port is None or attempt > 0):
                self._port = free_tcp_port()
            try:
                self._spawn_and_wait(timeout)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        return self  # pragma: no cover

    def _spawn_and_wait(self, timeout: float) -> None:
        if not self.tcp and self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)  # stale socket of a killed server
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self._proc.returncode} at start:\n"
                    + self.log_tail()
                )
            if self.ping(timeout=0.5):
                return
            if time.monotonic() > deadline:
                self._signal_and_wait(signal.SIGKILL, 5.0)
                raise RuntimeError(
                    f"redis-server did not answer PING within {timeout}s:\n" + self.log_tail()
                )
            time.sleep(0.01)

    def _signal_and_wait(self, sig: int, timeout: float) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return True
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, save: bool | None = False, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server cleanly and wait for it to exit.

        ``save=False`` sends ``SHUTDOWN NOSAVE``, ``True`` ``SHUTDOWN SAVE``,
        ``None`` a plain ``SHUTDOWN`` (the server's save points decide). If the
        command fails, SIGTERM, then SIGKILL after ``timeout``.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        args: list[str] = ["SHUTDOWN"]
        if save is True:
            args.append("SAVE")
        elif save is False:
            args.append("NOSAVE")
        try:
            self.command(*args, timeout=timeout)
        except (OSError, RespError):
            pass
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        if not self._signal_and_wait(signal.SIGTERM, timeout):
            self._signal_and_wait(signal.SIGKILL, timeout)

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is saved, the socket file stays)."""
        self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)

    def restart(self, save: bool | None = False, timeout: float = READY_TIMEOUT) -> "RedisProcess":
        """Stop (if running) and start again with the same socket/port and dir.

        The RDB/AOF files in :attr:`dir` are reused, so data saved before the
        stop (or appended to the AOF before a kill) is loaded again.
        """
        if self._closed:
            raise RuntimeError("RedisProcess already closed")
        self.stop(save=save)
        _live.add(self)
        self._spawn_and_wait(timeout)
        return self

    def close(self) -> None:
        """Stop the server (SIGKILL if needed) and delete its temporary directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop(save=False, timeout=5.0)
        finally:
            self._signal_and_wait(signal.SIGKILL, 5.0)
            if self._own_dir:
                shutil.rmtree(self._dir, ignore_errors=True)
            _live.discard(self)

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(*extra_args: str, tcp: bool = False, **kw: object) -> RedisProcess:
    """Create and start a :class:`RedisProcess`."""
    return RedisProcess(*extra_args, tcp=tcp, **kw).start()  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Redis Cluster


def _free_cluster_port() -> int:
    """A free port P of 127.0.0.1 whose cluster bus port P + 10000 is free too."""
    for _ in range(100):
        port = free_tcp_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


def find_cli_binary(server_binary: str) -> str:
    """redis-cli (or valkey-cli) beside the server binary, else on PATH."""
    name = "valkey-cli" if "valkey" in os.path.basename(server_binary) else "redis-cli"
    beside = os.path.join(os.path.dirname(server_binary), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name} on PATH: run scripts/bootstrap.sh (apt-get install redis-tools)")
    return found


class RedisCluster:
    """A real Redis Cluster of redis-server processes on 127.0.0.1.

    ``masters`` masters with ``replicas`` replicas each. Each node runs with
    ``--cluster-enabled yes`` on its own TCP port (the cluster bus on port +
    10000); ``redis-cli --cluster create`` assigns the 16384 slots and
    :meth:`start` waits until every node reports ``cluster_state:ok`` and
    knows the whole map. Roles change when a test fails a master over, so
    :meth:`masters` and :meth:`node_for` ask the cluster each time;
    :meth:`heal` restarts killed nodes and waits until the cluster is whole
    again.
    """

    def __init__(self, masters: int = 3, node_timeout_ms: int = 5000, replicas: int = 0) -> None:
        self.nodes: list[RedisProcess] = []
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`` (every node is a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def node_timeout(self) -> float:
        """``cluster-node-timeout`` in seconds."""
        return self._node_timeout_ms / 1000

    def start(self, timeout: float = 30.0) -> "RedisCluster":
        for _ in range(self._masters * (1 + self._replicas)):
            node = RedisProcess(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self._node_timeout_ms),
                tcp=True, port=_free_cluster_port())
            self.nodes.append(node)
            node.start()
        cli = find_cli_binary(self.nodes[0].binary)
        argv = [cli, "--cluster", "create"]
        argv += [f"127.0.0.1:{n.port}" for n in self.nodes]
        argv += ["--cluster-replicas", str(self._replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`ready`."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok:\n" + self.describe())
            time.sleep(0.05)

    def ready(self) -> bool:
        """True when every node runs, says cluster_state:ok and maps all 16384
        slots alike, every master has its replicas, and every replica is in sync."""
        maps = []
        for node in self.nodes:
            try:
                info = node.command("CLUSTER", "INFO")
                if b"cluster_state:ok" not in info:  # type: ignore[operator]
                    return False
                maps.append(sorted((s[0], s[1], s[2][1], len(s) - 3)
                                   for s in node.command("CLUSTER", "SLOTS")))  # type: ignore[union-attr]
                role = node.command("ROLE")
                if role[0] == b"slave" and role[3] != b"connected":  # type: ignore[index]
                    return False
            except (OSError, RespError):
                return False
        if not all(m == maps[0] for m in maps) or sum(e - b + 1 for b, e, _, _ in maps[0]) != 16384:
            return False
        return all(r >= self._replicas for _, _, _, r in maps[0])

    def ready_without(self, dead: RedisProcess) -> bool:
        """True when the nodes other than ``dead`` say cluster_state:ok, agree
        on a map of all 16384 slots and ``dead`` serves none of them (a
        replica took its place)."""
        maps = []
        for node in self.nodes:
            if node is dead or not node.running:
                continue
            try:
                if self.state(node) != "ok":
                    return False
                maps.append(sorted((s[0], s[1], s[2][1])
                                   for s in node.command("CLUSTER", "SLOTS")))  # type: ignore[union-attr]
            except (OSError, RespError):
                return False
        return (bool(maps) and all(m == maps[0] for m in maps)
                and sum(e - b + 1 for b, e, _ in maps[0]) == 16384
                and all(port != dead.port for _, _, port in maps[0]))

    def node_for_slot(self, slot: int) -> RedisProcess:
        """The master that serves ``slot``, as a live node says."""
        for entry in self._live().command("CLUSTER", "SLOTS"):  # type: ignore[union-attr]
            if entry[0] <= slot <= entry[1]:
                return next(n for n in self.nodes if n.port == entry[2][1])
        raise RuntimeError(f"no node owns slot {slot}")

    def describe(self) -> str:
        """CLUSTER NODES as some live node sees it (for error messages)."""
        for node in self.nodes:
            try:
                return node.command("CLUSTER", "NODES").decode()  # type: ignore[union-attr]
            except (OSError, RespError):
                continue
        return "(no node answers)"

    def _live(self) -> RedisProcess:
        for node in self.nodes:
            if node.running and node.ping(0.5):
                return node
        raise RuntimeError("no node of the cluster answers")

    def masters(self) -> list[RedisProcess]:
        """The nodes that serve slots now, as a live node sees it."""
        ports = {s[2][1] for s in self._live().command("CLUSTER", "SLOTS")}  # type: ignore[union-attr]
        return [n for n in self.nodes if n.port in ports]

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        """A running replica of ``master``."""
        for entry in master.command("CLUSTER", "SLOTS"):  # type: ignore[union-attr]
            if entry[2][1] == master.port:
                for replica in entry[3:]:
                    node = next(n for n in self.nodes if n.port == replica[1])
                    if node.running:
                        return node
        raise RuntimeError(f"{master} has no running replica")

    def node_for(self, key: str | bytes) -> RedisProcess:
        """The master that owns ``key``'s slot, as the cluster itself says."""
        return self.node_for_slot(self._live().command("CLUSTER", "KEYSLOT", key))  # type: ignore[arg-type]

    def node_id(self, node: RedisProcess) -> str:
        return node.command("CLUSTER", "MYID").decode()  # type: ignore[union-attr]

    def state(self, node: RedisProcess) -> str:
        """``ok`` or ``fail``: cluster_state as ``node`` sees it."""
        info = node.command("CLUSTER", "INFO").decode()  # type: ignore[union-attr]
        return info.split("cluster_state:", 1)[1].split()[0]

    def failover(self, replica: RedisProcess, timeout: float = 30.0) -> None:
        """``CLUSTER FAILOVER`` on ``replica`` (a manual, coordinated failover)
        and wait until it is a master of a healthy cluster."""
        replica.command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        while replica.command("ROLE")[0] != b"master" or not self.ready():  # type: ignore[index]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica} did not take over:\n" + self.describe())
            time.sleep(0.05)

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every node that is not running and wait until :meth:`ready`
        (a killed master comes back as a replica of the node that replaced it)."""
        for node in self.nodes:
            if not node.running:
                node.restart()
        self.wait_ready(timeout)
        for node in self.nodes:  # a test may have forbidden failovers
            node.command("CONFIG", "SET", "cluster-replica-no-failover", "no")

    def flushall(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for node in self.masters():
            node.command("FLUSHALL")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> "RedisCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
