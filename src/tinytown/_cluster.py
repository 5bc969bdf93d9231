"""Redis Cluster: a connection that routes each command to the node owning its key.

``Channel.connect("redis+cluster://host:port[,host:port...]", town=...)``
gives the channel a :class:`ClusterTopology` (the slot map, learnt with
``CLUSTER SLOTS`` from any reachable seed, shared by the channel's
connections) and makes every connection the channel opens a
:class:`ClusterConnection`: the same interface as a transport
``Connection`` (``execute``, ``execute_many``, ``subscribe``, ``close``...),
over one ordinary transport connection per node, opened on first use and
logged in like any other. So the main connection, each blocking receive and
each broadcast subscription work as on a single server:

* a command goes to the node that owns the hash slot of its key (the first
  argument after the command name; ``EVAL``-style commands name theirs);
  ``MOVED`` updates the slot map (and refreshes it in the background) and
  retries on the new owner, ``ASK`` retries once on the importing node after
  ``ASKING``, ``TRYAGAIN`` retries after a short pause;
* ``BLPOP`` on a receive runs on the connection to the node owning that
  inbox, so it blocks that node only;
* ``PUBLISH`` and ``SUBSCRIBE`` go to the node owning the slot of the channel
  name: classic pub/sub is forwarded over the cluster bus to every node, so a
  subscriber anywhere (a Rust agent on another node) gets every broadcast,
  and because tinytown puts publishers and subscribers of ``tt:broadcast`` on
  one node the count ``PUBLISH`` returns includes all tinytown subscribers.

Commands to one node keep their order (one pipelined connection per node);
commands to different nodes are independent. A command with several keys
must keep them in one slot (Redis answers ``CROSSSLOT`` otherwise).
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from ._resp import encode_command
from ._transports import ReplyFuture, deliver
from .address import Address
from .errors import ConnectionError, InvalidArgumentError, ReplyError

__all__ = ["SLOTS", "ClusterConnection", "ClusterTopology", "key_slot"]

log = logging.getLogger("tinytown")

SLOTS = 16384
MAX_REDIRECTS = 5
TRYAGAIN_DELAY = 0.05
# Commands whose keys follow a key count (the third argument) instead of
# being the first argument.
_NUMKEYS_COMMANDS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}

OpenNode = Callable[[Address], Awaitable[Any]]


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


class ClusterTopology:
    """The slot map of one cluster, shared by the connections of one channel.

    ``open_node(address)`` opens a logged-in transport connection to one
    node (Channel's own connection opener, so timeouts and AUTH are the
    same as for a single server).
    """

    def __init__(self, address: Address, open_node: OpenNode) -> None:
        self.address = address
        self._open_node = open_node
        self.slots: list[str | None] = [None] * SLOTS
        self.nodes: list[str] = []
        self._loading: asyncio.Task[Any] | None = None
        self._refresh: asyncio.Task[Any] | None = None

    def node_address(self, name: str) -> Address:
        host, port = _split_node(name)
        # The seed address's login and TLS settings, for one node.
        return dataclasses.replace(self.address, host=host, port=port, cluster=())

    async def open_node(self, name: str) -> Any:
        return await self._open_node(self.node_address(name))

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

    async def load(self) -> tuple[str, Any] | None:
        """Learn the slot map now (concurrent callers share one attempt).

        Returns the node connection it used, for the caller to keep, as
        ``(name, conn)``; None if another caller's attempt did the work.
        """
        if self._loading is not None:
            await asyncio.shield(self._loading)
            return None
        self._loading = asyncio.get_running_loop().create_task(self._load())
        try:
            return await asyncio.shield(self._loading)
        finally:
            self._loading = None

    async def _load(self) -> tuple[str, Any]:
        errors: list[str] = []
        for name in self._candidates():
            try:
                conn = await self.open_node(name)
            except ConnectionError as exc:
                errors.append(str(exc))
                continue
            try:
                reply = await conn.execute(b"CLUSTER", b"SLOTS")
            except ReplyError as exc:
                conn.close()
                raise ConnectionError(
                    f"{self.address}: {name} is not a Redis Cluster node ({exc})") from None
            except BaseException:
                conn.close()
                raise
            self._apply(reply, _split_node(name)[0])
            return name, conn
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
        self.slots = slots
        self.nodes = nodes

    def moved(self, slot: int, name: str) -> None:
        """A MOVED reply: the slot has a new owner; refresh the whole map soon."""
        self.slots[slot] = name
        if name not in self.nodes:
            self.nodes.append(name)
        self.refresh_soon()

    def refresh_soon(self) -> None:
        """Reload the map in the background (one reload at a time)."""
        if self._refresh is not None and not self._refresh.done():
            return
        self._refresh = asyncio.get_running_loop().create_task(self._background_refresh())

    async def _background_refresh(self) -> None:
        try:
            loaded = await self.load()
        except Exception as exc:  # the next MOVED or failure tries again
            log.warning("tinytown: could not refresh the Redis Cluster slot map: %s", exc)
            return
        if loaded is not None:
            loaded[1].close()


class ClusterConnection:
    """A connection to a Redis Cluster with the interface of a transport Connection.

    Made by :meth:`Channel._open_connection` for ``redis+cluster://`` URLs;
    see the module docstring for the routing rules.
    """

    def __init__(self, topology: ClusterTopology, loop: asyncio.AbstractEventLoop) -> None:
        self._topology = topology
        self._loop = loop
        self._nodes: dict[str, Any] = {}
        self._opening: dict[str, asyncio.Task[Any]] = {}
        self._tasks: dict[asyncio.Task[Any], asyncio.Future[Any]] = {}
        self._subscriber: Any = None
        self._closed = False

    async def start(self) -> ClusterConnection:
        """Make sure the slot map is known (the first connection of a channel learns it)."""
        if not self._topology.nodes:
            loaded = await self._topology.load()
            if loaded is not None:
                name, conn = loaded
                if self._closed or name not in self._topology.nodes:  # e.g. a seed given by name
                    conn.close()
                else:
                    self._nodes[name] = conn
        return self

    # -- node connections ---------------------------------------------------

    def _open_conn(self, name: str | None) -> Any:
        conn = self._nodes.get(name) if name is not None else None
        return conn if conn is not None and not conn.is_closed else None

    async def _connection(self, name: str) -> Any:
        conn = self._open_conn(name)
        if conn is not None:
            return conn
        task = self._opening.get(name)
        if task is None:
            task = self._opening[name] = self._loop.create_task(self._open(name))
        return await asyncio.shield(task)

    async def _open(self, name: str) -> Any:
        try:
            conn = await self._topology.open_node(name)
        except ConnectionError:
            # The node may have failed over or left: relearn who owns what.
            self._topology.refresh_soon()
            raise
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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` for a caller; close() fails it with ConnectionError."""
        out = ReplyFuture(loop=self._loop)
        task = self._loop.create_task(coro)
        self._tasks[task] = out
        task.add_done_callback(self._task_done)
        # A caller that gives up cancels the work; the node connections drop
        # the replies of cancelled commands, so nothing gets out of step.
        _cancel_with(out, task)
        return out

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        out = self._tasks.pop(task, None)
        if task.cancelled():
            if out is not None and not out.done():
                out.cancel()
            return
        error = task.exception()  # retrieved even when nobody waits any more
        if out is not None:
            deliver(out, error if error is not None else task.result(), error is not None)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command to the node owning its key; a future of its reply."""
        self._check_open()
        conn = self._open_conn(self._topology.route(args))
        if conn is None:
            encode_command(args)  # a bad argument fails now, as on one server
            return self._spawn(self._run(args, None))
        inner = conn.execute(*args)
        out = ReplyFuture(loop=self._loop)
        inner.add_done_callback(lambda f: self._on_reply(args, out, f))
        return out

    def _on_reply(self, args: tuple[Any, ...], out: asyncio.Future[Any],
                  inner: asyncio.Future[Any]) -> None:
        if inner.cancelled():
            if not out.done():
                out.cancel()
            return
        error = inner.exception()
        if error is None:
            deliver(out, inner.result(), False)
            return
        if out.done() and out.orphan is None:
            return  # the caller gave up and wants nothing: no redirection
        redirect = _redirection(error)
        if redirect is None and not str(error).startswith("TRYAGAIN"):
            deliver(out, error, True)
            return
        task_out = self._spawn(self._run(args, error))
        task_out.add_done_callback(lambda f: _copy(f, out))
        _cancel_with(out, task_out)

    async def _run(self, args: tuple[Any, ...], error: BaseException | None) -> Any:
        """Send ``args`` where it belongs, following redirections (``error``: the
        reply that sent us here, if any)."""
        for _ in range(MAX_REDIRECTS + 1):
            redirect = _redirection(error) if error is not None else None
            if error is not None and redirect is None:  # TRYAGAIN: the slot is moving
                await asyncio.sleep(TRYAGAIN_DELAY)
            if redirect is None:
                name = self._topology.route(args) or self._any_node()
                conn = await self._connection(name)
                reply = conn.execute(*args)
            else:
                kind, slot, name = redirect
                if name.startswith(":"):  # Redis 7 may leave out the host: the same one
                    name = _split_node(self._topology.node_of(slot) or self._any_node())[0] + name
                if kind == "MOVED":
                    self._topology.moved(slot, name)
                conn = await self._connection(name)
                if kind == "ASK":
                    asking = conn.execute(b"ASKING")
                    asking.add_done_callback(_retrieve)
                reply = conn.execute(*args)
            try:
                return await reply
            except ReplyError as exc:
                if _redirection(exc) is None and not str(exc).startswith("TRYAGAIN"):
                    raise
                error = exc
        raise error  # type: ignore[misc]  # still redirected after MAX_REDIRECTS

    def execute_many(self, commands: Iterable[Sequence[Any]],
                     replies: bool = True) -> asyncio.Future[list[Any] | None]:
        """Send many commands, each to its node; one future, as on one server.

        It resolves to the replies in command order (error replies as
        ReplyError instances) or, with ``replies=False``, to None; if any
        reply is an error, it fails with the first one (in command order)
        once every reply is in. Commands to one node keep their order.
        """
        self._check_open()
        commands = list(commands)
        if commands and _is_multi(commands[0]):
            return self._transaction(commands, replies)
        futures = [self.execute(*command) for command in commands]
        out = ReplyFuture(loop=self._loop)
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
            error = next((v for v in values if isinstance(v, BaseException)), None)
            if error is not None:
                out.set_exception(error)
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
        out = ReplyFuture(loop=self._loop)

        async def run() -> None:
            conn = await self._connection(name or self._any_node())
            inner = conn.execute_many(commands, replies)
            inner.add_done_callback(lambda f: _copy(f, out))

        conn = self._open_conn(name)
        if conn is not None:
            conn.execute_many(commands, replies).add_done_callback(lambda f: _copy(f, out))
        else:
            opening = self._spawn(run())
            opening.add_done_callback(
                lambda f: f.cancelled() or f.exception() is None or _copy(f, out))
        return out

    def subscribe(self, handler: Callable[[Any], None], *channels: Any) -> None:
        """Subscribe on the node owning the first channel's slot (pub/sub is
        cluster-wide); the handler protocol is the transports' one."""
        self._check_open()
        if not channels:
            raise InvalidArgumentError("subscribe needs at least one channel")
        encode_command((b"SUBSCRIBE",) + channels)
        name = self._topology.route((b"SUBSCRIBE",) + channels) or self._any_node()

        async def subscribe_when_open() -> None:
            try:
                conn = await self._connection(name)
            except BaseException as exc:
                if not self._closed:
                    handler(exc if isinstance(exc, ConnectionError)
                            else ConnectionError(f"cannot subscribe: {exc!r}"))
                raise
            self._take_subscriber(name, conn, handler, channels)

        conn = self._open_conn(name)
        if conn is not None:
            self._take_subscriber(name, conn, handler, channels)
        else:
            self._spawn(subscribe_when_open())

    def _take_subscriber(self, name: str, conn: Any, handler: Callable[[Any], None],
                         channels: tuple[Any, ...]) -> None:
        # A subscribed connection takes no other command: no longer route to it.
        if self._nodes.get(name) is conn:
            del self._nodes[name]
        self._subscriber = conn
        conn.subscribe(handler, *channels)

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
        return len(self._tasks) + sum(conn.pending_replies for conn in self._nodes.values())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<tinytown ClusterConnection {self._topology.address} {state} "
                f"nodes={sorted(self._nodes)}>")


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
    # ASKING's own reply matters to nobody; fetch its error so asyncio does
    # not report it as never retrieved.
    if not fut.cancelled():
        fut.exception()
