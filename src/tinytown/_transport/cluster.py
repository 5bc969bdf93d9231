"""Redis Cluster: a connection that routes each command to the node owning its key.

``Channel.connect("redis+cluster://host:port[,host:port...]", town=...)``
gives the channel a :class:`ClusterTopology` (the slot map, learnt with
``CLUSTER SLOTS`` from any reachable seed, shared by the channel's
connections) and makes every connection the channel opens a
:class:`ClusterConnection`: the same interface as a transport
:class:`~.choose.OpenConnection` (``execute``, ``execute_many``, ``subscribe``, ``close``...),
over one ordinary transport connection per node, opened on first use and
logged in like any other. So the main connection, each blocking receive and
each broadcast subscription work as on a single server:

* a command goes to the node that owns the hash slot of its key (the first
  argument after the command name; ``EVAL``-style commands name theirs);
  ``MOVED`` updates the slot map (and refreshes it in the background) and
  retries on the new owner, ``ASK`` retries once on the importing node after
  ``ASKING``, ``TRYAGAIN`` retries after a short pause;
* what Redis did not run is retried until the call's deadline: a node that
  cannot be reached, ``CLUSTERDOWN`` (every node answers it while a master
  is failing over), ``UNBLOCKED`` (a blocked command on a master that became
  a replica), ``LOADING``. Each retry waits out the channel's Backoff for
  that node (shared by all the channel's connections: calls failing in the
  same round count once) and rereads the slot map first (one shared read,
  at most one per REFRESH_INTERVAL, over a connection kept for it). The
  deadline is ``reconnect_timeout`` after the first failure; a blocking
  command keeps its own timeout and is re-sent with the time that remains.
  What persists ends in ConnectionError; a command in flight when its
  connection dropped is never retried (it may have run);
* ``BLPOP`` on a receive runs on the connection to the node owning that
  inbox, so it blocks that node only;
* ``PUBLISH`` and ``SUBSCRIBE`` go to the node owning the slot of the channel
  name: classic pub/sub is forwarded over the cluster bus to every node, so a
  subscriber anywhere (a Rust agent on another node) gets every broadcast,
  and because tinytown puts publishers and subscribers of ``tt:broadcast`` on
  one node the count ``PUBLISH`` returns includes the tinytown subscribers
  connected there. A subscription follows the slot when its owner changes
  (see :meth:`ClusterConnection.map_changed`).

Commands to one node keep their order (one pipelined connection per node);
commands to different nodes are independent. A command with several keys
must keep them in one slot (Redis answers ``CROSSSLOT`` otherwise).
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import dataclasses
import logging
import math
import random
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..address import Address
from ..backoff import LAST_ATTEMPT, Backoff
from ..errors import ConnectionError, InvalidArgumentError, ReplyError
from .futures import PyReplyFuture, deliver
from .resp import command_bytes as _command_bytes, encode_command

__all__ = ["SLOTS", "ClusterConnection", "ClusterTopology", "key_slot"]

log = logging.getLogger("tinytown")

SLOTS = 16384
MAX_REDIRECTS = 5
TRYAGAIN_DELAY = 0.05
# Seconds a moving broadcast subscription stays on its old node after the new
# one confirmed (messages already on their way over the cluster bus).
SUBSCRIPTION_OVERLAP = 0.5
# Least time between two reloads of the slot map (CLUSTER SLOTS): however
# many calls fail at once, a channel asks at most 1 / REFRESH_INTERVAL times
# a second.
REFRESH_INTERVAL = 0.1
# Commands whose keys follow a key count (the third argument) instead of
# being the first argument.
_NUMKEYS_COMMANDS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}
# Blocking commands whose last argument is their timeout in seconds: a retry
# re-sends them with the time that remains.
_BLOCKING = {b"BLPOP", b"BRPOP", b"BLMOVE", b"BRPOPLPUSH", b"BZPOPMIN", b"BZPOPMAX"}
# Error replies that mean "not executed, try again": the cluster is failing
# over (CLUSTERDOWN), a blocked command was released because its master
# became a replica (UNBLOCKED), a node is still loading its data (LOADING).
_TRANSIENT = ("CLUSTERDOWN", "UNBLOCKED", "LOADING", "MASTERDOWN")

OpenNode = Callable[[Address, "float | None"], Awaitable[Any]]


def key_slot(key: bytes) -> int:
    """The cluster hash slot of ``key``: CRC16 (XMODEM) of the key, or of its
    ``{hash tag}`` when it has a non-empty one, modulo 16384."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) & (SLOTS - 1)


def _as_bytes(arg: Any) -> bytes | None:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        try:
            return arg.encode()
        except UnicodeEncodeError:
            return None
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, int) and not isinstance(arg, bool):
        return repr(arg).encode()
    return None


def command_slot(args: Sequence[Any]) -> int | None:
    """The slot a command should go to, or None when any node will do.

    Only a routing hint: a node that does not own the key answers MOVED,
    which the connection follows. Keyless commands (PING, INFO...) with
    arguments are routed by their first argument, which is harmless.
    """
    if len(args) < 2:
        return None
    name = _as_bytes(args[0])
    index = 1
    if name is not None and name.upper() in _NUMKEYS_COMMANDS:
        numkeys = _as_bytes(args[2]) if len(args) > 3 else None
        if numkeys is None or not numkeys.isdigit() or int(numkeys) == 0:
            return None
        index = 3
    key = _as_bytes(args[index])
    return None if key is None else key_slot(key)


def _redirection(error: BaseException) -> tuple[str, int, str] | None:
    """("MOVED"|"ASK", slot, "host:port") of a redirection error reply, else None."""
    if type(error) is not ReplyError:
        return None
    text = str(error)
    if not text.startswith(("MOVED ", "ASK ")):
        return None
    parts = text.split()
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def _split_node(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host.strip("[]"), int(port)


def _is_transient(error: BaseException) -> bool:
    return type(error) is ReplyError and str(error).startswith(_TRANSIENT)


def _is_retryable(error: BaseException) -> bool:
    """An error reply that says the command was not executed and where (or
    when) to send it again."""
    if type(error) is not ReplyError:
        return False
    text = str(error)
    return text.startswith(("MOVED ", "ASK ", "TRYAGAIN")) or text.startswith(_TRANSIENT)


def _blocking_timeout(args: Sequence[Any]) -> float | None:
    """The timeout (seconds, inf for 0) of a blocking command, else None."""
    if len(args) < 3 or type(args[0]) is not bytes or args[0] not in _BLOCKING:
        return None
    try:
        seconds = float(_as_bytes(args[-1]) or b"")
    except ValueError:
        return None
    return math.inf if seconds == 0 else seconds


class _Pacer:
    """Consecutive failures of one node and when it may be tried again,
    shared by the connections of a channel: calls that fail in the same
    round count as one failure, like the channel's ReconnectSchedule."""

    __slots__ = ("failures", "not_before")

    def __init__(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def failed(self, backoff: Backoff, started: float, now: float) -> None:
        if self.not_before <= started:  # the first failure of this round
            self.failures += 1
            self.not_before = now + backoff.delay(self.failures)

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class ClusterTopology:
    """The slot map of one cluster, shared by the connections of one channel.

    ``open_node(address, timeout)`` opens a logged-in transport connection
    to one node (Channel's own connection opener, so timeouts and AUTH are
    the same as for a single server). ``backoff`` and ``reconnect_timeout``
    are the channel's: they pace and bound the retries of every call.

    The map is read with ``CLUSTER SLOTS`` over one connection kept for it
    (reopened to any reachable node when it drops), at most once per
    REFRESH_INTERVAL, and concurrent requests share one read.
    """

    def __init__(self, address: Address, open_node: OpenNode, backoff: Backoff | None = None,
                 reconnect_timeout: float = 5.0) -> None:
        self.address = address
        self._open_node = open_node
        self.backoff = backoff if backoff is not None else Backoff()
        self.reconnect_timeout = reconnect_timeout
        self.slots: list[str | None] = [None] * SLOTS
        self.nodes: list[str] = []
        self._pacers: dict[str, _Pacer] = {}
        self._control: tuple[str, Any] | None = None  # (node, connection) for CLUSTER SLOTS
        self._loading: asyncio.Task[None] | None = None
        self._soon: asyncio.Task[None] | None = None
        self._tried_at = -math.inf  # loop time the last read started
        self._read_at = -math.inf   # loop time the last successful read started
        self._load_failures = 0
        self._closed = False
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()  # subscribed ClusterConnections

    def node_address(self, name: str) -> Address:
        host, port = _split_node(name)
        # The seed address's login and TLS settings, for one node.
        return dataclasses.replace(self.address, host=host, port=port, cluster=())

    async def open_node(self, name: str, timeout: float | None = None) -> Any:
        return await self._open_node(self.node_address(name), timeout)

    def pacer(self, name: str) -> _Pacer:
        pacer = self._pacers.get(name)
        if pacer is None:
            pacer = self._pacers[name] = _Pacer()
        return pacer

    def route(self, args: Sequence[Any]) -> str | None:
        """The node that owns the command's key, or any known node."""
        slot = command_slot(args)
        if slot is not None:
            name = self.slots[slot]
            if name is not None:
                return name
        return random.choice(self.nodes) if self.nodes else None

    def node_of(self, slot: int) -> str | None:
        return self.slots[slot]

    # -- learning the map ---------------------------------------------------

    def _candidates(self) -> list[str]:
        seeds = [f"{host}:{port}" for host, port in self.address.cluster]
        return seeds + [n for n in self.nodes if n not in seeds]

    async def load(self) -> None:
        """Learn the slot map now, unless a read that started after this call did."""
        await self.refresh(asyncio.get_running_loop().time())

    async def refresh(self, since: float) -> None:
        """Make sure the map was read by a ``CLUSTER SLOTS`` sent at or after
        ``since`` (loop time). Concurrent callers share one read; reads are
        at least REFRESH_INTERVAL apart. Raises ConnectionError if the read
        this call waited for failed."""
        loop = asyncio.get_running_loop()
        while self._read_at < since:
            task = self._loading
            if task is not None and task.done():
                # Finished (its done callback has not run yet) but read
                # before ``since``: another read is needed.
                self._loading = task = None
            if task is None:
                wait = self._tried_at + REFRESH_INTERVAL - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                task = self._loading = loop.create_task(self._load())
                task.add_done_callback(self._load_done)
            await asyncio.shield(task)

    def _load_done(self, task: asyncio.Task[None]) -> None:
        if self._loading is task:
            self._loading = None
        if not task.cancelled() and task.exception() is not None:  # retrieved here, raised to waiters
            self._load_failures += 1
            if self._load_failures == 1:
                log.warning("tinytown: could not read the Redis Cluster slot map: %s", task.exception())
        else:
            self._load_failures = 0

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = self._tried_at = loop.time()
        errors: list[str] = []
        control = self._control
        candidates = self._candidates()
        if control is not None:
            if control[1].is_closed:
                self._control = control = None
            else:  # the connection kept from last time, first
                candidates = [control[0]] + [n for n in candidates if n != control[0]]
        for name in candidates:
            if self._closed:
                raise ConnectionError("connection to Redis closed")
            if control is not None and control[0] == name:
                conn = control[1]
            else:
                try:
                    conn = await self.open_node(name)
                except ConnectionError as exc:
                    errors.append(str(exc))
                    continue
            try:
                reply = await conn.execute(b"CLUSTER", b"SLOTS")
            except ReplyError as exc:
                conn.close()
                if "LOADING" in str(exc):
                    errors.append(f"{name}: {exc}")
                    continue
                raise ConnectionError(
                    f"{self.address}: {name} is not a Redis Cluster node ({exc})") from None
            except ConnectionError as exc:
                conn.close()
                errors.append(str(exc))
                continue
            except BaseException:
                conn.close()
                raise
            if self._closed:
                conn.close()
                raise ConnectionError("connection to Redis closed")
            if control is None or control[1] is not conn:
                if self._control is not None:
                    self._control[1].close()
                self._control = (name, conn)
            self._apply(reply, _split_node(name)[0])
            self._read_at = started
            return
        raise ConnectionError(
            f"cannot reach any node of the Redis Cluster {self.address}: " + "; ".join(errors))

    def _apply(self, reply: list[Any], asked_host: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        nodes: list[str] = []
        for entry in reply:
            start, end, master = entry[0], entry[1], entry[2]
            host = master[0].decode() if master[0] else asked_host  # "" means: the node asked
            name = f"[{host}]:{master[1]}" if ":" in host else f"{host}:{master[1]}"
            if name not in nodes:
                nodes.append(name)
            slots[start:end + 1] = [name] * (end - start + 1)
        if not nodes:
            raise ConnectionError(f"the Redis Cluster {self.address} serves no slots yet")
        changed = slots != self.slots
        self.slots = slots
        self.nodes = nodes
        if changed:
            self._notify()

    def watch(self, conn: Any) -> None:
        """Call ``conn.map_changed()`` whenever the slot map changes."""
        self._watchers.add(conn)

    def _notify(self) -> None:
        for conn in list(self._watchers):
            conn.map_changed()

    def moved(self, slot: int, name: str) -> None:
        """A MOVED reply: the slot has a new owner; refresh the whole map soon."""
        self.slots[slot] = name
        if name not in self.nodes:
            self.nodes.append(name)
        self._notify()
        self.refresh_soon()

    def refresh_soon(self) -> None:
        """Reload the map in the background (shared, at most one per REFRESH_INTERVAL)."""
        if self._closed or (self._soon is not None and not self._soon.done()):
            return
        self._soon = asyncio.get_running_loop().create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        try:
            await self.refresh(asyncio.get_running_loop().time())
        except Exception:  # logged by _load_done; the next failure tries again
            pass

    def close(self) -> None:
        """Close the connection kept for CLUSTER SLOTS and stop reading the map."""
        self._closed = True
        for task in (self._loading, self._soon):
            if task is not None:
                task.cancel()
        if self._control is not None:
            self._control[1].close()
            self._control = None


class ClusterConnection:
    """A connection to a Redis Cluster with the interface of a transport Connection.

    Made by :meth:`Channel._open_connection` for ``redis+cluster://`` URLs;
    see the module docstring for the routing and retry rules.
    """

    def __init__(self, topology: ClusterTopology, loop: asyncio.AbstractEventLoop) -> None:
        self._topology = topology
        self._loop = loop
        self._nodes: dict[str, Any] = {}
        self._opening: dict[str, asyncio.Task[Any]] = {}
        self._tasks: dict[asyncio.Task[Any], asyncio.Future[Any]] = {}
        self._opening_transactions: set[asyncio.Task[None]] = set()
        self._subscriber: Any = None
        self._subscribing: asyncio.Task[None] | None = None
        # The subscription (node, handler, channels), its move to a new owner, if any.
        self._sub: tuple[str, Callable[[Any], None], tuple[Any, ...]] | None = None
        self._moving: asyncio.Task[None] | None = None
        self._overlap: _Overlap | None = None
        # (loop time, channel + payload) of the messages the subscriber handed
        # on lately: a move counts them as delivered by the old node already.
        self._recent: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=4096)
        self._closed = False

    async def start(self) -> ClusterConnection:
        """Make sure the slot map is known (the first connection of a channel learns it)."""
        if not self._topology.nodes:
            await self._topology.load()
        return self

    # -- node connections ---------------------------------------------------

    def _open_conn(self, name: str | None) -> Any:
        conn = self._nodes.get(name) if name is not None else None
        return conn if conn is not None and not conn.is_closed else None

    async def _connection(self, name: str, timeout: float | None = None) -> Any:
        conn = self._open_conn(name)
        if conn is not None:
            return conn
        task = self._opening.get(name)
        if task is None:
            task = self._opening[name] = self._loop.create_task(self._open(name, timeout))
        return await asyncio.shield(task)

    async def _open(self, name: str, timeout: float | None) -> Any:
        try:
            conn = await self._topology.open_node(name, timeout)
        finally:
            self._opening.pop(name, None)
        if self._closed:
            conn.close()
            raise ConnectionError("connection to Redis closed")
        self._nodes[name] = conn
        return conn

    def _any_node(self) -> str:
        name = self._topology.route(())
        if name is None:
            raise ConnectionError(f"no node of the Redis Cluster {self._topology.address} is known")
        return name

    # -- commands -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionError("connection to Redis is closed")

    def _spawn(self, coro: Coroutine[Any, Any, Any], out: asyncio.Future[Any]) -> None:
        """Run ``coro`` for the caller waiting on ``out``; close() fails it with ConnectionError."""
        task = self._loop.create_task(coro)
        self._tasks[task] = out
        task.add_done_callback(self._task_done)
        # A caller that gives up cancels the work; the node connections drop
        # the replies of cancelled commands, so nothing gets out of step.
        _cancel_with(out, task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        out = self._tasks.pop(task, None)
        if task.cancelled():
            if out is not None and not out.done():
                out.cancel()
            return
        error = task.exception()  # retrieved even when nobody waits any more
        if out is not None:
            deliver(out, error if error is not None else task.result(), error is not None)

    def execute(self, *args: Any) -> PyReplyFuture:
        """Send one command to the node owning its key; a future of its reply.

        Redirections and transient errors are retried as the module
        docstring says; an error that persists past the call's deadline
        fails the future with ConnectionError.
        """
        self._check_open()
        out = PyReplyFuture(loop=self._loop)
        # Blocking commands keep their own deadline from the moment they are issued.
        issued = self._loop.time() if args and type(args[0]) is bytes and args[0] in _BLOCKING \
            else None
        name = self._topology.route(args)
        conn = self._open_conn(name)
        if conn is None:
            encode_command(args)  # a bad argument fails now, as on one server
            self._spawn(self._run(args, out, None, None, issued), out)
            return out
        waiter = conn.wait_writable(_command_bytes(args))
        if waiter is not None:
            # Backpressure is per node: only this node's queue holds the
            # command up, not the other nodes' commands.
            encode_command(args)  # a bad argument fails now, as on one server
            waiter.add_done_callback(lambda w: self._issue_after_wait(w, conn, args, out, issued, name))
            return out
        inner = conn.execute(*args)
        inner.add_done_callback(lambda f: self._on_reply(args, out, f, issued, name))
        return out

    def _issue_after_wait(self, waiter: asyncio.Future[None], conn: Any, args: tuple[Any, ...],
                          out: PyReplyFuture, issued: float | None, name: str | None) -> None:
        """Send a command that waited for its node's write queue to drain."""
        if out.done() and getattr(out, "orphan", None) is None:
            # The caller gave up while it waited and wants nothing: nothing is
            # sent. (One that left an orphan handler, a cancelled pop, still
            # sends: its driver counts on the handler to settle the pop.)
            return
        if waiter.cancelled() or waiter.exception() is not None or conn.is_closed or self._closed:
            # The node's connection went while it waited (nothing was sent):
            # as for a node not connected, the retrying path takes over.
            self._spawn(self._run(args, out, None, None, issued), out)
            return
        inner = conn.execute(*args)
        inner.add_done_callback(lambda f: self._on_reply(args, out, f, issued, name))

    def _on_reply(self, args: tuple[Any, ...], out: asyncio.Future[Any],
                  inner: asyncio.Future[Any], issued: float | None, name: str | None) -> None:
        if inner.cancelled():
            if not out.done():
                out.cancel()
            return
        error = inner.exception()
        if error is None:
            deliver(out, inner.result(), False)
            pacers = self._topology._pacers
            if pacers and name in pacers:  # the node answers again: start its backoff afresh
                pacers[name].succeeded()
            return
        if out.done() and getattr(out, "orphan", None) is None:
            return  # the caller gave up and wants nothing: no retry
        if not _is_retryable(error):
            if isinstance(error, ConnectionError):
                # The node may have died or failed over: relearn who owns what.
                self._topology.refresh_soon()
            deliver(out, error, True)
            return
        self._spawn(self._run(args, out, error, name, issued), out)

    async def _run(self, args: tuple[Any, ...], out: asyncio.Future[Any],
                   error: BaseException | None, failed_on: str | None,
                   issued: float | None) -> Any:
        """Send ``args`` where it belongs, following redirections and retrying
        what was not executed, until the call's deadline.

        ``error``: the reply of a first attempt made on ``failed_on``, if
        any. Only failures that guarantee the command did not run are
        retried: a node that cannot be reached (the connection is not
        open), a redirection (MOVED, ASK, TRYAGAIN) or a transient error
        reply (CLUSTERDOWN, UNBLOCKED, LOADING). A connection lost while the
        command was in flight is raised at once (it may have run).
        Transient failures wait out the backoff of the node that failed
        (shared by the channel's connections) and reread the slot map
        before the next attempt. The deadline is ``reconnect_timeout``
        after the first failure, or for a blocking command its own timeout
        from ``issued``; blocking commands are re-sent with the time that
        remains, and a blocking command with no time left returns None
        (nothing popped) after a redirection.
        """
        loop = self._loop
        topology = self._topology
        blocking = _blocking_timeout(args) if issued is not None else None
        now = loop.time()
        deadline = issued + blocking if blocking is not None and issued is not None \
            else now + topology.reconnect_timeout
        target: str | None = None  # the node a redirection named
        asking = False
        redirects = 0
        attempts = 1 if error is not None else 0
        last_error: BaseException | None = error
        started = now
        while True:
            if error is not None:
                last_error = error
                redirect = _redirection(error)
                now = loop.time()
                if redirect is not None:
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise ConnectionError(
                            f"Redis Cluster {topology.address}: still redirected after "
                            f"{MAX_REDIRECTS} redirections ({error})") from None
                    kind, slot, target = redirect
                    if target.startswith(":"):  # Redis 7 may leave out the host: the same one
                        target = _split_node(topology.node_of(slot) or self._any_node())[0] + target
                    asking = kind == "ASK"
                    if not asking:
                        topology.moved(slot, target)
                elif str(error).startswith("TRYAGAIN"):  # a multi-key command during a migration
                    target = None
                    if now + TRYAGAIN_DELAY >= deadline:
                        raise self._give_up(args, attempts, now - started, error)
                    await asyncio.sleep(TRYAGAIN_DELAY)
                else:  # the node failed or the cluster is failing over
                    target = None
                    if failed_on is not None:
                        topology.pacer(failed_on).failed(topology.backoff, started, now)
                    try:
                        await topology.refresh(now)
                    except ConnectionError:
                        pass  # the attempt below fails too, and counts
                error = None
            if out.done():
                # The caller stopped waiting, and nothing ran yet: stop here.
                # (An orphan handler gets None, as for a receive that timed out.)
                return None
            name = target or topology.route(args) or self._any_node()
            pacer = topology.pacer(name)
            now = loop.time()
            wait = pacer.not_before - now
            if wait > 0 and target is None:
                if now + wait >= deadline - LAST_ATTEMPT:
                    if attempts and now + LAST_ATTEMPT >= deadline:
                        raise self._give_up(args, attempts, now - started, last_error)
                    wait = max(0.0, deadline - now - LAST_ATTEMPT)
                await asyncio.sleep(wait)
                if out.done():
                    return None
                name = topology.route(args) or self._any_node()  # the map may have changed
                now = loop.time()
            elif attempts and now >= deadline:
                if redirects and blocking is not None:
                    return None  # redirected with no time left: the receive timed out
                raise self._give_up(args, attempts, now - started, last_error)
            started = now
            attempts += 1
            command = args
            if blocking is not None and blocking != math.inf:
                left = deadline - now
                if left <= 0.001:
                    return None
                command = args[:-1] + (f"{left:.3f}",)
            failed_on = name
            try:
                conn = await self._connection(name, max(deadline - now, LAST_ATTEMPT))
            except ConnectionError as exc:
                error = exc
                continue
            if asking:
                conn.execute(b"ASKING").add_done_callback(_retrieve)
                asking = False
            try:
                reply = await conn.execute(*command)
            except ReplyError as exc:
                if not _is_retryable(exc):
                    raise
                error = exc
                continue
            except ConnectionError:
                topology.refresh_soon()
                raise
            pacer.succeeded()
            return reply

    def _give_up(self, args: Sequence[Any], attempts: int, seconds: float,
                 error: BaseException | None) -> ConnectionError:
        name = _as_bytes(args[0]) if args else b"?"
        return ConnectionError(
            f"Redis Cluster {self._topology.address}: {(name or b'?').decode(errors='replace')} "
            f"failed {attempts} times in {seconds:.1f} s: {error}")

    def execute_many(self, commands: Iterable[Sequence[Any]],
                     replies: bool = True) -> asyncio.Future[list[Any] | None]:
        """Send many commands, each to its node; one future, as on one server.

        It resolves to the replies in command order (error replies as
        ReplyError instances) or, with ``replies=False``, to None, once every
        reply is in. If a node could not be reached or its connection was
        lost, it fails with a new ConnectionError whose ``written_commands``
        is the tuple of indexes of the commands that Redis confirmed (per
        node, commands keep their order: those confirmed before a
        connection dropped, and every command to the other nodes); else, if
        any reply is an error, it fails with the first one (in command
        order).
        """
        self._check_open()
        commands = list(commands)
        if commands and _is_multi(commands[0]):
            return self._transaction(commands, replies)
        futures = [self.execute(*command) for command in commands]
        out = PyReplyFuture(loop=self._loop)
        if not futures:
            out.set_result([] if replies else None)
            return out
        remaining = len(futures)

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining or out.done():
                return
            values: list[Any] = []
            for f in futures:
                values.append(f.exception() or f.result() if not f.cancelled()
                              else ConnectionError("command cancelled"))
            lost = next((v for v in values if isinstance(v, ConnectionError)), None)
            if lost is not None:
                error: BaseException = ConnectionError(str(lost))
                error.written_commands = tuple(  # type: ignore[attr-defined]
                    i for i, v in enumerate(values) if not isinstance(v, BaseException))
                error.__cause__ = lost
                out.set_exception(error)
                return
            first = next((v for v in values if isinstance(v, BaseException)), None)
            if first is not None:
                out.set_exception(first)
            else:
                out.set_result(values if replies else None)

        for f in futures:
            f.add_done_callback(one_done)
            _cancel_with(out, f)
        return out

    def _transaction(self, commands: list[Sequence[Any]], replies: bool) -> asyncio.Future[Any]:
        """A ``MULTI ... EXEC`` block, sent whole to the node owning its keys
        (which must share one slot); no redirection is followed (a moved
        slot fails the block with EXECABORT). A caller that cancels with an
        ``orphan`` handler still gets the replies there."""
        for command in commands:
            encode_command(command)  # a bad argument fails now, as on one server
        keyed = next((c for c in commands if command_slot(c) is not None), ())
        name = self._topology.route(keyed)
        out = PyReplyFuture(loop=self._loop)

        async def run() -> None:
            conn = await self._connection(name or self._any_node())
            inner = conn.execute_many(commands, replies)
            inner.add_done_callback(lambda f: _copy(f, out))

        conn = self._open_conn(name)
        waiter = conn.wait_writable(sum(map(_command_bytes, commands))) if conn is not None else None
        if conn is not None and waiter is None:
            conn.execute_many(commands, replies).add_done_callback(lambda f: _copy(f, out))
        elif conn is not None and waiter is not None:
            # Its node's queue is over the high-water mark: the block waits,
            # whole, for that node only.
            def issue(w: asyncio.Future[None]) -> None:
                if out.done() and getattr(out, "orphan", None) is None:
                    return  # the caller gave up while it waited: nothing is sent (as above)
                if w.cancelled() or w.exception() is not None or conn.is_closed:
                    deliver(out, ConnectionError("connection to Redis lost before the transaction "
                                                 "was sent (nothing of it ran)"), True)
                    return
                conn.execute_many(commands, replies).add_done_callback(lambda f: _copy(f, out))

            waiter.add_done_callback(issue)
        else:
            # Not _spawn: the replies must reach ``out`` (or its orphan
            # handler) even when its caller has gone away meanwhile.
            opening = self._loop.create_task(run())
            self._opening_transactions.add(opening)
            opening.add_done_callback(self._opening_transactions.discard)
            def copy_failure(f: asyncio.Task[None]) -> None:
                if not (f.cancelled() or f.exception() is None):
                    _copy(f, out)

            opening.add_done_callback(copy_failure)
        return out

    def subscribe(self, handler: Callable[[Any], None], *channels: Any) -> None:
        """Subscribe on the node owning the first channel's slot (pub/sub is
        cluster-wide); the handler protocol is the transports' one.

        A dedicated connection: if the node cannot be reached, it is retried
        in the background with the backoff (rereading the slot map, so a
        failover moves it to the new master) until it works or close();
        when the subscribed node connection drops, this whole connection
        closes and ``handler`` gets the ConnectionError, once.
        """
        self._check_open()
        if not channels:
            raise InvalidArgumentError("subscribe needs at least one channel")
        encode_command((b"SUBSCRIBE",) + channels)
        name = self._topology.route((b"SUBSCRIBE",) + channels) or self._any_node()
        conn = self._open_conn(name)
        if conn is not None:
            self._take_subscriber(name, conn, handler, channels)
        else:
            self._subscribing = self._loop.create_task(self._subscribe_when_open(handler, channels))
            self._subscribing.add_done_callback(_retrieve)

    async def _subscribe_when_open(self, handler: Callable[[Any], None],
                                   channels: tuple[Any, ...]) -> None:
        topology = self._topology
        loop = self._loop
        while not self._closed:
            name = topology.route((b"SUBSCRIBE",) + channels) or self._any_node()
            pacer = topology.pacer(name)
            wait = pacer.not_before - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            started = loop.time()
            try:
                conn = await self._connection(name)
            except ConnectionError:
                now = loop.time()
                pacer.failed(topology.backoff, started, now)
                try:
                    await topology.refresh(now)
                except ConnectionError:
                    pass
                continue
            pacer.succeeded()
            self._take_subscriber(name, conn, handler, channels)
            return

    def _take_subscriber(self, name: str, conn: Any, handler: Callable[[Any], None],
                         channels: tuple[Any, ...]) -> None:
        # A subscribed connection takes no other command: no longer route to it.
        if self._nodes.get(name) is conn:
            del self._nodes[name]
        self._subscriber = conn
        self._sub = (name, handler, channels)
        self._topology.watch(self)

        def on_push(item: Any) -> None:
            if conn is not self._subscriber:  # the old node of a finished move
                return
            if isinstance(item, BaseException):
                # The subscription is gone with its node: close everything,
                # so the subscriber starts afresh on whoever owns the slot now.
                self._topology.refresh_soon()
                self.close()
                handler(item)
            elif self._overlap is not None and _is_message(item):
                self._overlap.forward(item, old=True)
            else:
                if _is_message(item):
                    self._recent.append((self._loop.time(), _Overlap.key(item)))
                handler(item)

        conn.subscribe(on_push, *channels)

    def map_changed(self) -> None:
        """The slot map changed: a subscription follows its channel's slot to
        the new owner, so that PUBLISH (sent there) counts it."""
        if self._closed or self._subscriber is None or self._moving is not None or self._sub is None:
            return
        name, handler, channels = self._sub
        owner = self._topology.route((b"SUBSCRIBE",) + channels)
        if owner is None or owner == name:
            return
        self._moving = self._loop.create_task(self._move_subscription(owner))
        self._moving.add_done_callback(_retrieve)

    async def _move_subscription(self, owner: str) -> None:
        """Subscribe on ``owner``, then leave the old node.

        While both are subscribed (SUBSCRIPTION_OVERLAP seconds, for the
        cluster bus to deliver to the old node what was published before),
        a message that arrives on both is handed on once; nothing published
        during the move is lost. If the new node cannot be reached, the
        subscription stays where it is (a later map change tries again).
        """
        assert self._sub is not None
        name, handler, channels = self._sub
        new: Any = None
        moved = False
        # From now until the move ends, every message of either node goes
        # through the overlap, which also counts those the old node handed on
        # lately: the cluster bus can bring the new node a message published
        # before its SUBSCRIBE, which the old node delivered already.
        overlap = _Overlap(handler)
        since = self._loop.time() - SUBSCRIPTION_OVERLAP
        overlap.seed(key for when, key in self._recent if when >= since)
        self._overlap = overlap
        try:
            new = await self._topology.open_node(owner)
            confirmed = self._loop.create_future()

            def on_push(item: Any) -> None:
                if isinstance(item, BaseException):
                    if not confirmed.done():
                        confirmed.set_exception(item)
                        confirmed.exception()
                    elif self._subscriber is new:  # the move is over: as any subscriber
                        self._topology.refresh_soon()
                        self.close()
                        handler(item)
                    else:
                        self._overlap = None  # the move is abandoned; the old node goes on
                elif type(item) is list and item and item[0] == b"subscribe":
                    if not confirmed.done():
                        confirmed.set_result(None)
                elif self._subscriber is new or self._overlap is not overlap:
                    if _is_message(item):
                        self._recent.append((self._loop.time(), _Overlap.key(item)))
                    handler(item)
                elif _is_message(item):
                    overlap.forward(item, old=False)

            new.subscribe(on_push, *channels)
            await asyncio.wait_for(confirmed, self._topology.reconnect_timeout)
            if self._closed or self._overlap is not overlap:
                return
            await asyncio.sleep(SUBSCRIPTION_OVERLAP)
            if self._closed or self._overlap is not overlap:
                return
            old, self._subscriber, self._overlap = self._subscriber, new, None
            self._sub = (owner, handler, channels)
            moved = True
            if old is not None:
                old.close()
        except (ConnectionError, asyncio.TimeoutError) as exc:
            log.info("tinytown: a broadcast subscription could not move to %s: %s", owner, exc)
        finally:
            self._moving = None
            if not moved and self._overlap is overlap:
                self._overlap = None    # the old node goes on alone
            if new is not None and not moved:
                new.close()

    def close(self) -> None:
        """Close every node connection; every pending call fails with ConnectionError."""
        if self._closed:
            return
        self._closed = True
        error = ConnectionError("connection to Redis closed")
        for task, out in list(self._tasks.items()):
            deliver(out, error, True)  # a cancelled caller's orphan handler gets it
            task.cancel()
        for task in list(self._opening.values()):
            task.cancel()
        for waiting in (self._subscribing, self._moving):
            if waiting is not None:
                waiting.cancel()
        self._overlap = None
        conns = list(self._nodes.values())
        if self._subscriber is not None:
            conns.append(self._subscriber)
        self._nodes.clear()
        self._subscriber = None
        for conn in conns:
            conn.close()

    @property
    def is_closed(self) -> bool:
        """True after :meth:`close` (a lost node connection is reopened on next use)."""
        return self._closed

    @property
    def pending_replies(self) -> int:
        """Commands sent (or waiting for their node) whose replies have not arrived."""
        pending: int = len(self._tasks) + sum(conn.pending_replies for conn in self._nodes.values())
        return pending

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued on the node connections, not yet written to their sockets."""
        return sum(conn.write_buffer_size for conn in self._nodes.values())

    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
        """Nothing: each node connection has the channel's limits (Channel._connect_one)."""

    def wait_writable(self, nbytes: int = 0) -> None:
        """Always None: backpressure is per node, so each command waits in
        :meth:`execute` (and a transaction in :meth:`execute_many`) for its
        own node's write queue; a stalled node holds up only its commands."""
        return None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<tinytown ClusterConnection {self._topology.address} {state} "
                f"nodes={sorted(self._nodes)}>")


def _is_message(item: Any) -> bool:
    return type(item) is list and len(item) >= 3 and item[0] == b"message"


class _Overlap:
    """Hands on each pub/sub message once while two connections (the old and
    the new node of a subscription) both deliver it: a message is dropped
    when the same bytes already came from the other connection."""

    def __init__(self, handler: Callable[[Any], None]) -> None:
        self._handler = handler
        self._from: dict[bool, dict[bytes, int]] = {True: {}, False: {}}

    @staticmethod
    def key(item: list[Any]) -> bytes:
        """What tells two deliveries of one message apart from two messages."""
        return bytes(item[1]) + b"\0" + bytes(item[2])

    def seed(self, keys: Iterable[bytes]) -> None:
        """Count ``keys`` as handed on from the old node already."""
        mine = self._from[True]
        for key in keys:
            mine[key] = mine.get(key, 0) + 1

    def forward(self, item: list[Any], old: bool) -> None:
        key = self.key(item)
        other = self._from[not old]
        if other.get(key):
            other[key] -= 1
            return  # its twin from the other node was handed on
        mine = self._from[old]
        mine[key] = mine.get(key, 0) + 1
        self._handler(item)


def _cancel_with(outer: asyncio.Future[Any], inner: asyncio.Future[Any]) -> None:
    """Cancel ``inner`` when the caller cancels ``outer`` and leaves no
    ``orphan`` handler (one that wants the reply lets the work finish)."""
    def on_done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() and getattr(fut, "orphan", None) is None:
            inner.cancel()
    outer.add_done_callback(on_done)


def _is_multi(command: Sequence[Any]) -> bool:
    verb = _as_bytes(command[0]) if command else None
    return verb is not None and verb.upper() == b"MULTI"


def _copy(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if source.cancelled():
        if not target.done():
            target.cancel()
    elif source.exception() is not None:
        deliver(target, source.exception(), True)
    else:
        deliver(target, source.result(), False)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A reply (ASKING's) or a task (a background subscription) that matters
    # to nobody: fetch its error so asyncio does not report it as never retrieved.
    if not fut.cancelled():
        fut.exception()
