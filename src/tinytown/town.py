"""The town: a local redis-server managed by tinytown.

A town is a directory holding a Redis server's Unix socket, pid file, log and
snapshot files (``redis.sock``, ``redis.pid``, ``redis.log``, ``dump.rdb``),
and ``town.json``, which records the town's name so that the ``tinytown``
command run against that socket finds the right town (:func:`recorded_town_name`).
:meth:`Town.start` starts ``redis-server`` there (or reuses one already
serving that socket), :meth:`Town.channel` opens a :class:`~tinytown.Channel`
on it, and :meth:`Town.stop` shuts the server down with ``SHUTDOWN`` so that
Redis writes its RDB snapshot and the next start finds the state again.

The server keeps Redis's default snapshot rules; :meth:`Town.configure_persistence`
tightens them (``save``) or adds an append-only file (``appendonly``). Those
choices are remembered in ``persistence.json`` and given to redis-server on
the next start: an AOF that Redis ignored after a crash would protect nothing.

Server management speaks a few RESP commands over the socket itself (PING,
INFO, CONFIG SET, SHUTDOWN), so it does not depend on the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, AsyncIterator

from ._transport.resp import encode_command
from .errors import ConnectionError, InvalidArgumentError, ReplyError, ServerError
from .keys import validate_town_name

if TYPE_CHECKING:  # pragma: no cover
    from .channel import Channel

__all__ = ["Town", "validate_town_name", "recorded_town_name", "TOWN_FILE_NAME"]

INSTALL_HINT = "apt-get install redis-server"
SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
LOCK_NAME = "town.lock"
PERSISTENCE_NAME = "persistence.json"
#: The file in a town directory recording the town's name (``{"name": ...}``).
TOWN_FILE_NAME = "town.json"
# Redis's appendfsync policies: fsync the append-only file after every write
# ("always": an acknowledged write survives even a power loss), once a second
# ("everysec", Redis's default) or when the OS decides ("no").
APPENDFSYNC_POLICIES = ("always", "everysec", "no")
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


# ------------------------------------------------------------------ RESP
# Commands are encoded by _transport.resp.encode_command, tinytown's one encoder. The
# reply is read here from the asyncio stream (readline/readexactly wait for
# every byte), not with hiredis.Reader: the town works without the optional
# hiredis package.


class _Closed(Exception):
    """The server closed the connection before replying."""


async def _read_reply(reader: asyncio.StreamReader) -> object:
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise _Closed()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await reader.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [await _read_reply(reader) for _ in range(n)]
    raise ConnectionError(f"unexpected reply from redis-server: {line[:80]!r}")


async def _call(path: Path, *args: object, timeout: float = 5.0) -> object:
    """Send one command on a new connection to the socket; return the reply.

    An error reply is returned as a :class:`ReplyError` instance (not raised),
    and a connection closed without a reply raises :class:`_Closed`.
    """

    async def run() -> object:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(encode_command(args))
            await writer.drain()
            try:
                return await _read_reply(reader)
            except asyncio.IncompleteReadError as exc:
                raise _Closed() from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(run(), timeout)


async def _command(path: Path, *args: object, timeout: float = 5.0) -> object:
    """Like :func:`_call`, raising ReplyError / tinytown ConnectionError."""
    try:
        reply = await _call(path, *args, timeout=timeout)
    except (OSError, _Closed, asyncio.TimeoutError) as exc:
        raise ConnectionError(
            f"cannot run {args[0]} on the town's redis-server at {path}: {exc!r}"
        ) from exc
    if isinstance(reply, ReplyError):
        raise reply
    return reply


# ------------------------------------------------------------------ helpers


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


def _info_field(info: object, field: str) -> str | None:
    if not isinstance(info, bytes):
        return None
    prefix = field.encode() + b":"
    for line in info.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].decode().strip()
    return None


def _read_persistence(path: Path) -> dict[str, object]:
    """The persistence choices saved by :meth:`Town.configure_persistence`."""
    file = path / PERSISTENCE_NAME
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read {file}: {exc}; fix or delete it") from exc
    if not isinstance(data, dict):
        raise ServerError(f"{file} must hold a JSON object; fix or delete it")
    save, appendonly = data.get("save"), data.get("appendonly")
    appendfsync = data.get("appendfsync")
    if (save is not None and not isinstance(save, str)) or (
        appendonly is not None and not isinstance(appendonly, bool)
    ) or (appendfsync is not None and appendfsync not in APPENDFSYNC_POLICIES):
        raise ServerError(f"{file} holds invalid settings {data!r}; fix or delete it")
    return data


def _write_persistence(path: Path, data: dict[str, object]) -> None:
    file = path / PERSISTENCE_NAME
    tmp = file.with_name(file.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)


def recorded_town_name(directory: str | os.PathLike[str]) -> str | None:
    """The town name recorded in ``<directory>/town.json`` by :meth:`Town.start`.

    None when there is no such file. Raises :class:`~tinytown.ServerError`
    when the file cannot be read or does not hold a valid town name (the
    message names the file to fix).
    """
    file = Path(os.fspath(directory)) / TOWN_FILE_NAME
    try:
        data = json.loads(file.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise ServerError(f"cannot read {file}: {exc}; fix or delete it") from exc
    name = data.get("name") if isinstance(data, dict) else None
    try:
        return validate_town_name(name)
    except InvalidArgumentError as exc:
        raise ServerError(f"{file} does not record a valid town name ({exc}); fix or delete it") from None


def _record_town_name(path: Path, name: str) -> None:
    """Write ``town.json`` unless the directory already records a name.

    The first name stays: several towns may share one server, and the file
    says which one the directory was made for.
    """
    if (path / TOWN_FILE_NAME).exists():
        return
    file = path / TOWN_FILE_NAME
    tmp = file.with_name(file.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump({"name": name}, f)
            f.write("\n")
        os.replace(tmp, file)
    except OSError as exc:
        raise ServerError(f"cannot write {file}: {exc}") from exc


@contextlib.asynccontextmanager
async def _locked(lock_path: Path, deadline: float) -> AsyncIterator[None]:
    """Hold an exclusive flock on ``lock_path`` (one Town.start per directory)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"another process is starting the town in {lock_path.parent}"
                    ) from None
                await asyncio.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------ Town


class Town:
    """A local redis-server in a directory, for one Tinytown town.

    Create it with ``await Town.start(directory, name)``; don't call the
    constructor. Use it as ``async with await Town.start(...) as town:`` to
    stop the server on exit.

    A server this object started (:attr:`owns_server`) runs in its own session,
    so a Ctrl-C in the terminal does not interrupt it in the middle of writing
    a snapshot; it keeps running if the Python process exits without
    :meth:`stop`, and the next :meth:`start` on the directory reuses it.
    """

    def __init__(
        self,
        *,
        name: str,
        directory: Path,
        pid: int | None,
        owns_server: bool,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._name = name
        self._directory = directory
        self._pid = pid
        self._owns_server = owns_server
        self._process = process
        self._stopped = False

    # ------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The town name: the ``<town>`` in ``tt:<town>:...`` keys."""
        return self._name

    @property
    def directory(self) -> Path:
        """The absolute directory holding the socket, pid file, log and snapshots."""
        return self._directory

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket, ``<directory>/redis.sock``."""
        return self._directory / SOCKET_NAME

    @property
    def pid_path(self) -> Path:
        """The pid file redis-server writes, ``<directory>/redis.pid``."""
        return self._directory / PID_NAME

    @property
    def log_path(self) -> Path:
        """The server's log file, ``<directory>/redis.log``."""
        return self._directory / LOG_NAME

    @property
    def url(self) -> str:
        """``unix:///abs/path/redis.sock``, for :meth:`tinytown.Channel.connect`."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """The server's process id (None once this town stopped a server it owned)."""
        return self._pid

    @property
    def owns_server(self) -> bool:
        """True if this object started the server (and :meth:`stop` will stop it)."""
        return self._owns_server

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self._pid}"
        owner = "owned" if self._owns_server else "reused"
        return f"<Town {self._name!r} at {self.socket_path} {owner} {state}>"

    # ------------------------------------------------------------ starting
    @staticmethod
    def find_server_binary() -> str:
        """Path of the Redis server to run.

        ``$TINYTOWN_REDIS_SERVER`` if set (a path, or a command name looked up
        on PATH), else ``redis-server``, else ``valkey-server`` on PATH.
        Raises :class:`~tinytown.ServerError` with a one-line message naming
        the install command when there is none.
        """
        env = os.environ.get("TINYTOWN_REDIS_SERVER")
        if env:
            found = shutil.which(env)
            if found is None:
                raise ServerError(
                    f"TINYTOWN_REDIS_SERVER={env!r} is not an executable redis-server; "
                    f"fix it, or unset it and install Redis: {INSTALL_HINT}"
                )
            return found
        for candidate in ("redis-server", "valkey-server"):
            found = shutil.which(candidate)
            if found is not None:
                return found
        raise ServerError(
            f"redis-server not found on PATH (nor valkey-server); install it: {INSTALL_HINT}"
        )

    @classmethod
    async def start(
        cls,
        directory: str | os.PathLike[str],
        name: str,
        *,
        timeout: float = 10.0,
    ) -> "Town":
        """Start (or reuse) the town's redis-server in ``directory``.

        The directory is created if needed, and the town's name is recorded
        in ``<directory>/town.json`` unless a name is recorded there already
        (the ``tinytown`` command takes the town from it). If a server already answers PING
        on ``<directory>/redis.sock`` it is reused (:attr:`owns_server` is
        False); a stale socket file left by a dead server is removed. Otherwise
        ``redis-server`` is started with its socket, pid file, log and
        snapshots in the directory, Redis's default RDB snapshot rules and no
        TCP port, and this waits up to ``timeout`` seconds for it to answer.

        Raises :class:`~tinytown.InvalidArgumentError` for a bad town name and
        :class:`~tinytown.ServerError` if no server can be found or started
        (the message then ends with the tail of ``redis.log``).
        """
        validate_town_name(name)
        if timeout <= 0:
            raise InvalidArgumentError(f"timeout must be positive, not {timeout!r}")
        path = Path(os.fspath(directory)).expanduser().absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"cannot create the town directory {path}: {exc}") from exc
        sock = path / SOCKET_NAME
        if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
            raise ServerError(
                f"the socket path {sock} is longer than the {MAX_SOCKET_PATH} bytes a "
                "Unix socket allows: use a shorter town directory"
            )
        deadline = time.monotonic() + timeout
        async with _locked(path / LOCK_NAME, deadline):
            _record_town_name(path, name)
            reused = await cls._reuse_live_server(path, name, deadline)
            if reused is not None:
                return reused
            return await cls._spawn(path, name, deadline, timeout)

    @classmethod
    async def _reuse_live_server(cls, path: Path, name: str, deadline: float) -> "Town | None":
        sock = path / SOCKET_NAME
        try:
            st = os.lstat(sock)
        except FileNotFoundError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            raise ServerError(f"{sock} exists and is not a socket; move it out of the way")
        while True:
            remaining = deadline - time.monotonic()
            try:
                reply = await _call(sock, "PING", timeout=min(2.0, max(0.1, remaining)))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                # a dead server's socket file: nothing listens on it any more
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
                return None
            except (ConnectionResetError, BrokenPipeError, _Closed, asyncio.TimeoutError) as exc:
                # A server that was just killed resets connections for a moment
                # before refusing them; a live one answers: ask again.
                if remaining <= 0:
                    raise ServerError(
                        f"something listens on {sock} but does not answer PING like "
                        f"Redis: {exc!r}"
                    ) from exc
                await asyncio.sleep(0.02)
            except OSError as exc:
                raise ServerError(f"cannot connect to {sock}: {exc}") from exc
        await cls._wait_until_ready(sock, reply, deadline, process=None, log=path / LOG_NAME)
        pid: int | None = None
        with contextlib.suppress(ConnectionError, ReplyError, ValueError, TypeError):
            pid = int(_info_field(await _command(sock, "INFO", "server"), "process_id") or "")
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int((path / PID_NAME).read_text().strip())
        return cls(name=name, directory=path, pid=pid, owns_server=False)

    @classmethod
    async def _spawn(cls, path: Path, name: str, deadline: float, timeout: float) -> "Town":
        binary = cls.find_server_binary()
        sock, log = path / SOCKET_NAME, path / LOG_NAME
        remembered = _read_persistence(path)
        argv = [
            binary,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--pidfile", str(path / PID_NAME),
            "--dir", str(path),
            "--daemonize", "no",
            "--logfile", str(log),
        ]
        # Persistence chosen earlier with configure_persistence(); by default
        # nothing is added, so Redis's default RDB snapshot rules apply.
        if isinstance(remembered.get("save"), str):
            argv += ["--save", str(remembered["save"])]
        if remembered.get("appendonly") is not None:
            argv += ["--appendonly", "yes" if remembered["appendonly"] else "no"]
        if remembered.get("appendfsync") is not None:
            argv += ["--appendfsync", str(remembered["appendfsync"])]
        try:
            # stdout/stderr also go to the log: config errors are printed there
            # before redis-server opens its --logfile.
            with open(log, "ab") as log_file:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=path,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise ServerError(f"cannot run {binary}: {exc}") from exc
        try:
            await cls._wait_until_ready(sock, None, deadline, process=process, log=log)
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise
        return cls(name=name, directory=path, pid=process.pid, owns_server=True, process=process)

    @staticmethod
    async def _wait_until_ready(
        sock: Path,
        first_reply: object,
        deadline: float,
        *,
        process: subprocess.Popen[bytes] | None,
        log: Path,
    ) -> None:
        """Poll PING until +PONG (a server loading its snapshot says LOADING)."""
        reply = first_reply
        while True:
            if reply == "PONG":
                return
            if isinstance(reply, ReplyError) and str(reply).startswith("NOAUTH"):
                raise ServerError(
                    f"the redis-server on {sock} requires a password; a town's server must not"
                )
            if process is not None and process.poll() is not None:
                raise ServerError(
                    f"redis-server exited with code {process.returncode} before it was "
                    f"ready; last lines of {log}:\n{_log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"redis-server did not answer PING on {sock} in time "
                    f"(last reply: {reply!r}); last lines of {log}:\n{_log_tail(log)}"
                )
            await asyncio.sleep(0.01)
            try:
                reply = await _call(sock, "PING", timeout=1.0)
            except (OSError, _Closed, asyncio.TimeoutError) as exc:
                reply = exc

    # ------------------------------------------------------------ using
    async def channel(self, *, layout: str = "hash") -> "Channel":
        """A connected :class:`~tinytown.Channel` to this town (close it when done).

        ``layout`` is ``"hash"`` (Tinytown 0.7-0.10, the default) or ``"json"``
        (see :meth:`tinytown.Channel.connect`); another value raises
        :class:`~tinytown.InvalidArgumentError`.
        """
        self._check_not_stopped()
        from .channel import Channel

        return await Channel.connect(self.url, town=self._name, layout=layout)

    async def configure_persistence(
        self,
        save: str | None = None,
        appendonly: bool | None = None,
        appendfsync: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        """Change the server's persistence at run time (``CONFIG SET``).

        ``save`` sets the RDB snapshot rules, e.g. ``"60 1"`` (snapshot every
        60 s if at least one key changed) or ``""`` (no snapshots);
        ``appendonly=True`` turns on the append-only file, logging every write
        on top of the snapshots, and returns once Redis has written the
        initial AOF (at most ``timeout`` seconds). ``appendfsync`` is when
        Redis fsyncs that file: ``"always"`` (before acknowledging each write:
        nothing acknowledged is lost even on power loss), ``"everysec"``
        (Redis's default: a power loss may lose about the last second) or
        ``"no"``. ``None`` leaves a setting as it is.

        The settings also go to ``<directory>/persistence.json``, and the next
        :meth:`start` that launches a server passes them on its command line:
        after a crash, Redis then loads the append-only file rather than an
        older snapshot. Raises :class:`~tinytown.ReplyError` if Redis refuses a
        value (nothing is remembered then).
        """
        self._check_not_stopped()
        if save is not None and not isinstance(save, str):
            raise InvalidArgumentError(f"save must be a str like '60 1', not {save!r}")
        if appendonly is not None and not isinstance(appendonly, bool):
            raise InvalidArgumentError(f"appendonly must be True, False or None, not {appendonly!r}")
        if appendfsync is not None and appendfsync not in APPENDFSYNC_POLICIES:
            raise InvalidArgumentError(
                f"appendfsync must be one of {', '.join(APPENDFSYNC_POLICIES)} or None, not {appendfsync!r}")
        if appendfsync is not None:
            # Before appendonly: the first append-only file is then written
            # under the chosen policy.
            await _command(self.socket_path, "CONFIG", "SET", "appendfsync", appendfsync)
        if save is not None:
            await _command(self.socket_path, "CONFIG", "SET", "save", save)
        if appendonly is not None:
            await _command(
                self.socket_path, "CONFIG", "SET", "appendonly", "yes" if appendonly else "no"
            )
            if appendonly:
                await self._wait_for_aof(timeout)
        if save is not None or appendonly is not None or appendfsync is not None:
            remembered = _read_persistence(self._directory)
            if save is not None:
                remembered["save"] = save
            if appendonly is not None:
                remembered["appendonly"] = appendonly
            if appendfsync is not None:
                remembered["appendfsync"] = appendfsync
            _write_persistence(self._directory, remembered)

    async def _wait_for_aof(self, timeout: float) -> None:
        """Wait until the first AOF rewrite that CONFIG SET appendonly yes starts is done."""
        deadline = time.monotonic() + timeout
        while True:
            info = await _command(self.socket_path, "INFO", "persistence")
            if (
                _info_field(info, "aof_enabled") == "1"
                and _info_field(info, "aof_rewrite_in_progress") == "0"
                and _info_field(info, "aof_rewrite_scheduled") == "0"
            ):
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the append-only file of town {self._name!r} was not written within "
                    f"{timeout:g} s; last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            await asyncio.sleep(0.02)

    async def ping(self) -> bool:
        """True if the town's server answers PING right now."""
        try:
            return await _call(self.socket_path, "PING", timeout=2.0) == "PONG"
        except (OSError, _Closed, asyncio.TimeoutError):
            return False

    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise ServerError(f"town {self._name!r} was stopped; Town.start it again")

    # ------------------------------------------------------------ stopping
    async def stop(self, timeout: float = 30.0) -> None:
        """Stop the server this town started, and wait for it to exit.

        Sends ``SHUTDOWN``, so Redis writes its RDB snapshot (with its save
        rules, the default ones included) and flushes the append-only file;
        a refused SHUTDOWN (Redis refuses while it writes its first AOF) is
        retried, and SIGTERM is the fallback when the command cannot be sent.
        Raises
        :class:`~tinytown.ServerError` if the server is still running after
        ``timeout`` seconds (for instance because it cannot write its
        snapshot: see ``redis.log``). A reused server (:attr:`owns_server`
        False) is left running. Calling it again does nothing.
        """
        if self._stopped:
            return
        if not self._owns_server or self._process is None:
            self._stopped = True
            return
        process = self._process
        deadline = time.monotonic() + timeout
        problem = ""
        shutdown_accepted = False
        next_sigterm = 0.0
        while process.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise ServerError(
                    f"redis-server (pid {process.pid}) of town {self._name!r} did not exit "
                    f"within {timeout:g} s{problem}; last lines of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if not shutdown_accepted and not next_sigterm:
                try:
                    reply = await _call(
                        self.socket_path, "SHUTDOWN", timeout=max(0.1, deadline - now)
                    )
                except _Closed:
                    reply = None  # the normal outcome: it exits without replying
                except (OSError, asyncio.TimeoutError) as exc:
                    reply = exc
                if reply is None:
                    shutdown_accepted = True
                elif isinstance(reply, ReplyError):
                    # e.g. "Writing initial AOF, can't exit": try again shortly
                    problem = f" (SHUTDOWN answered {reply})"
                    await asyncio.sleep(0.1)
                    continue
                else:
                    problem = f" (SHUTDOWN could not be sent: {reply!r})"
                    next_sigterm = now
            if next_sigterm and now >= next_sigterm:
                # Redis handles SIGTERM like SHUTDOWN; repeat it in case the
                # first attempt was refused.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                next_sigterm = now + 0.5
            await asyncio.sleep(0.01)
        self._stopped = True
        self._pid = None

    async def __aenter__(self) -> "Town":
        """The town itself (its server is already running); ``__aexit__`` calls
        :meth:`stop`. Raises nothing."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
