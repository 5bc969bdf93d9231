"""The Channel: Tinytown's message transport over Redis.

Each agent has an inbox (a Redis list at ``tt:<town>:inbox:<agent>``); the
channel pushes messages into inboxes, pops them with blocking waits,
broadcasts over pub/sub and stores agent and task state, with the same keys
and JSON as Tinytown's Rust code, so Python and Rust agents share a town.

Connections: one multiplexed connection carries every non-blocking command,
pipelined automatically; each blocking receive borrows a connection from a
small pool, so a ``receive()`` waiting 30 s never delays a ``send()``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ._cluster import ClusterConnection, ClusterTopology
from ._commands import (
    LPUSH,
    RPUSH,
    blpop_timeout,
    check_agent,
    check_message,
    check_task,
    decode_agent,
    decode_task,
    is_wrongtype,
    login_commands,
    push_commands,
)
from ._transports import Connection, connection_class
from .address import Address, parse_url
from .agent import Agent
from .errors import (
    ChannelClosedError,
    ConnectionError,
    DecodeError,
    InvalidArgumentError,
    ReplyError,
)
from .ids import AgentId, TaskId
from .keys import BROADCAST_CHANNEL, TownKeys
from .message import Message
from .task import Task

__all__ = ["Channel", "BroadcastSubscription"]

log = logging.getLogger("tinytown")

_BROADCAST = BROADCAST_CHANNEL.encode()


class _ReceiverPool:
    """Connections for blocking commands, at most ``size`` in use at once."""

    def __init__(self, channel: Channel, size: int) -> None:
        self._channel = channel
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> Connection:
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed:
                    break
            else:
                conn = await self._channel._open_connection()
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        self._busy.discard(conn)
        if conn.is_closed or conn.pending_replies or self._channel._closed:
            conn.close()
        else:
            self._idle.append(conn)
        self._slots.release()

    def close(self) -> None:
        for conn in self._idle + list(self._busy):
            conn.close()
        self._idle.clear()


class Channel:
    """Tinytown's message transport on one Redis server, scoped to one town.

    Create it with :meth:`connect` (or ``await town.channel()``); close it with
    :meth:`close` or ``async with channel:``. Every method that takes an id
    accepts the id type, a :class:`uuid.UUID` or its string form.

    A Channel belongs to the event loop it was connected on and is not
    thread-safe. If the connection drops, calls in flight fail with
    :class:`tinytown.ConnectionError` and the next call reconnects.
    """

    def __init__(self, address: Address, town: str, *, loop: asyncio.AbstractEventLoop,
                 max_receivers: int, connect_timeout: float, transport: str | None = None) -> None:
        # Use Channel.connect(); this only wires the parts together.
        self._transport = connection_class(transport)
        self._address = address
        # redis+cluster://: every connection routes over per-node connections by slot.
        self._cluster = ClusterTopology(address, self._open_connection) if address.cluster else None
        self._keys = TownKeys(town)
        self._loop = loop
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._reconnecting: asyncio.Task[Connection] | None = None
        self._receivers = _ReceiverPool(self, max_receivers)
        self._subscriptions: set[BroadcastSubscription] = set()
        self._closed = False

    @classmethod
    async def connect(cls, url: str, town: str, *, max_receivers: int = 16,
                      connect_timeout: float = 5.0, transport: str | None = None) -> Channel:
        """Connect to the Redis at ``url`` for the town ``town``.

        ``url`` is ``unix:///abs/path/redis.sock``,
        ``redis://[user:password@]host:port[/db]`` (AUTH and SELECT are done on
        connect) or ``redis+cluster://[user:password@]host:port[,host:port...]``
        (seed nodes of a Redis Cluster; each command goes to the node owning
        its key). ``max_receivers`` bounds the connections used by concurrent
        blocking receives. ``transport`` is ``"hiredis"`` (the C extension) or
        ``"python"``; None means ``$TINYTOWN_TRANSPORT``, else the extension if
        it loads, else Python. Raises :class:`InvalidArgumentError` for a bad
        URL, town name or transport, :class:`TransportUnavailableError` when
        no transport can be loaded and :class:`ConnectionError` if Redis
        cannot be reached.
        """
        address = parse_url(url)
        if not isinstance(max_receivers, int) or max_receivers < 1:
            raise InvalidArgumentError(f"max_receivers must be a positive int, not {max_receivers!r}")
        if not connect_timeout > 0:
            raise InvalidArgumentError(f"connect_timeout must be positive, not {connect_timeout!r}")
        channel = cls(address, town, loop=asyncio.get_running_loop(),
                      max_receivers=max_receivers, connect_timeout=connect_timeout,
                      transport=transport)
        channel._conn = await channel._open_connection()
        return channel

    # -- connections --------------------------------------------------------

    async def _open_connection(self, address: Address | None = None) -> Connection:
        """A new logged-in connection to this channel's server (or to ``address``,
        a node of its cluster; for a cluster, a ClusterConnection over such ones)."""
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        if address is None:
            if self._cluster is not None:
                return await ClusterConnection(self._cluster, self._loop).start()
            address = self._address
        if address.unix_path is not None:
            conn = await self._connect_one(lambda c: c.connect_unix(address.unix_path))
        else:
            try:
                infos = await self._loop.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ConnectionError(f"cannot resolve Redis host {address.host!r}: {exc}") from None
            # Try every address in order ("localhost" may give ::1 first).
            error: ConnectionError | None = None
            for ip in dict.fromkeys(info[4][0] for info in infos):
                try:
                    conn = await self._connect_one(lambda c: c.connect_tcp(ip, address.port))
                    break
                except ConnectionError as exc:
                    error = exc
            else:
                raise error or ConnectionError(f"cannot resolve Redis host {address.host!r}")
        try:
            await self._log_in(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect_one(self, start: Any) -> Connection:
        conn = self._transport(self._loop)
        try:
            await asyncio.wait_for(start(conn), self._connect_timeout)
        except asyncio.TimeoutError:
            conn.close()
            raise ConnectionError(
                f"cannot connect to Redis at {self._address}: "
                f"no answer in {self._connect_timeout} s") from None
        except BaseException:
            conn.close()
            raise
        return conn

    async def _log_in(self, conn: Connection) -> None:
        address = self._address
        commands = login_commands(address)
        if commands:
            try:
                await conn.execute_many(commands, False)
            except ReplyError as exc:
                raise ConnectionError(f"Redis at {address} refused the login: {exc}") from None

    async def _reconnect(self) -> Connection:
        """The main connection, reopened; concurrent callers share one attempt."""
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        task = self._reconnecting
        if task is None:
            task = self._reconnecting = self._loop.create_task(self._open_connection())
        try:
            conn = await asyncio.shield(task)
        finally:
            if task.done() and self._reconnecting is task:
                self._reconnecting = None
        self._conn = conn
        return conn

    async def _main(self) -> Connection:
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        return conn

    # -- messages -------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Put ``message`` in its recipient's inbox.

        Urgent and high priority go to the front (LPUSH), normal and low to
        the back (RPUSH).
        """
        if type(message) is not Message:
            check_message(message, "send")
        payload = message.to_json()
        key = self._keys.inbox_prefix + message.to  # a Message's ids are typed and immutable
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        await conn.execute(LPUSH if message.priority.is_front else RPUSH, key, payload)

    async def send_many(self, messages: Iterable[Message]) -> None:
        """Send many messages in one pipelined round trip, in order.

        Placement follows :meth:`send`. Every message is encoded before
        anything is sent, so a message that cannot be encoded sends nothing.
        Consecutive messages for the same inbox and end travel in one
        variadic push, which leaves each inbox exactly as one send per
        message would.
        """
        commands = push_commands(messages, self._keys.inbox_prefix)
        if not commands:
            return
        conn = await self._main()
        await conn.execute_many(commands, False)

    async def receive(self, agent_id: AgentId | Any, timeout: float | timedelta) -> Message | None:
        """Wait up to ``timeout`` (seconds or timedelta) for a message; None if none came.

        Runs BLPOP on a connection of its own. If the caller is cancelled
        while a message is on its way, the message is put back at the front
        of the inbox rather than lost.
        """
        agent = AgentId(agent_id)
        key = self._keys.inbox_prefix + agent
        seconds = blpop_timeout(timeout)
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        conn = await self._receivers.acquire()
        try:
            fut = conn.execute(b"BLPOP", key, seconds)
        except BaseException:
            self._receivers.release(conn)
            raise
        # If this caller is cancelled, the BLPOP still completes on the
        # server; its reply then goes to _abandoned_pop instead of being lost.
        fut.orphan = lambda reply: self._abandoned_pop(conn, reply)
        try:
            reply = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The reply was in, but the cancellation reached the task first.
                fut.orphan = None
                self._abandoned_pop(conn, None if fut.exception() else fut.result())
            raise
        except BaseException:
            self._receivers.release(conn)
            raise
        self._receivers.release(conn)
        if reply is None:
            return None
        return await self._decode(agent, reply[1])

    def _abandoned_pop(self, conn: Connection, reply: Any) -> None:
        """The reply of a BLPOP whose caller was cancelled: put its message back."""
        self._receivers.release(conn)
        if not isinstance(reply, list):  # timed out, or the connection failed
            return
        key, raw = reply
        main = self._conn
        if main is None or main.is_closed:
            log.error("tinytown: receive() cancelled and Redis unreachable; message lost: %r", raw)
            return
        def requeued(f: Any) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("tinytown: could not requeue %r: %s", raw, f.exception())

        main.execute(LPUSH, key, raw).add_done_callback(requeued)

    async def try_receive(self, agent_id: AgentId | Any) -> Message | None:
        """Take the first message of the inbox without waiting (LPOP); None if empty."""
        agent = AgentId(agent_id)
        key = self._keys.inbox_prefix + agent
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        raw = await conn.execute(b"LPOP", key)
        if raw is None:
            return None
        return await self._decode(agent, raw)

    async def _decode(self, agent: AgentId, raw: bytes) -> Message:
        """Decode a popped message; an undecodable one goes to the dead-letter list.

        It is already out of the inbox, so it is kept at ``tt:<town>:dead:<agent>``
        before the DecodeError (carrying ``raw``) reaches the caller.
        """
        try:
            return Message.from_json(raw)
        except DecodeError as exc:
            try:
                conn = await self._main()
                await conn.execute(RPUSH, self._keys.dead(agent), raw)
            except Exception as store_exc:  # the caller still gets raw
                log.error("tinytown: could not dead-letter %r: %s", raw, store_exc)
            exc.raw = raw
            raise

    async def inbox_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages waiting in the agent's inbox (LLEN)."""
        key = self._keys.inbox_prefix + AgentId(agent_id)
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        return await conn.execute(b"LLEN", key)

    async def broadcast(self, message: Message) -> int:
        """Publish ``message`` on ``tt:broadcast``; returns how many subscribers got it."""
        check_message(message, "broadcast")
        payload = message.to_json()
        conn = await self._main()
        return await conn.execute(b"PUBLISH", _BROADCAST, payload)

    def broadcasts(self) -> BroadcastSubscription:
        """Subscribe to broadcasts: ``async for message in channel.broadcasts(): ...``.

        The subscription has a connection of its own, opened on first
        iteration (or on ``async with``/``await sub.start()``, to be sure to
        be subscribed before something is published).
        """
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        return BroadcastSubscription(self)

    # -- state ----------------------------------------------------------------

    async def set_agent_state(self, agent: Agent) -> None:
        """Store ``agent`` at ``tt:<town>:agent:<id>`` (JSON, as Tinytown's Rust code does)."""
        payload = check_agent(agent).to_json()
        conn = await self._main()
        await conn.execute(b"SET", self._keys.agent_prefix + AgentId(agent.id), payload)

    async def get_agent_state(self, agent_id: AgentId | Any) -> Agent | None:
        """The stored Agent, or None when absent (JSON or the newer Hash layout)."""
        key = self._keys.agent_prefix + AgentId(agent_id)
        return decode_agent(await self._get_state(key))

    async def set_task(self, task: Task) -> None:
        """Store ``task`` at ``tt:<town>:task:<id>``."""
        payload = check_task(task).to_json()
        conn = await self._main()
        await conn.execute(b"SET", self._keys.task_prefix + TaskId(task.id), payload)

    async def get_task(self, task_id: TaskId | Any) -> Task | None:
        """The stored Task, or None when absent (JSON or the newer Hash layout)."""
        key = self._keys.task_prefix + TaskId(task_id)
        return decode_task(await self._get_state(key))

    async def _get_state(self, key: str) -> bytes | list[bytes] | None:
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        try:
            return await conn.execute(b"GET", key)
        except ReplyError as exc:
            if not is_wrongtype(exc):
                raise
        # Newer Tinytown releases keep state as a Hash at the same key.
        return await conn.execute(b"HGETALL", key)

    # -- raw access and lifetime ------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Run one raw Redis command on the shared connection and return its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`ReplyError`. Do not send blocking
        or subscribing commands here: they would hold up every other call.
        """
        conn = await self._main()
        return await conn.execute(*args)

    @property
    def town(self) -> str:
        """The town this channel's keys belong to."""
        return self._keys.town

    @property
    def keys(self) -> TownKeys:
        """The key builders of this channel's town."""
        return self._keys

    @property
    def is_closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    async def close(self) -> None:
        """Close every connection of the channel; pending calls fail with ConnectionError."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            sub._shut(ChannelClosedError("the channel is closed"))
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._conn is not None:
            self._conn.close()
        self._receivers.close()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<tinytown.Channel town={self.town!r} {self._address} {state}>"


class BroadcastSubscription:
    """Messages published on ``tt:broadcast``, as an async iterator.

    A message that cannot be decoded raises :class:`DecodeError` (with
    ``raw``) from ``__anext__``; the subscription stays usable, so the next
    iteration goes on with the following message.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._conn: Connection | None = None
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    async def start(self) -> BroadcastSubscription:
        """Subscribe now (idempotent); returns once Redis confirmed the subscription."""
        if self._closed:
            raise ChannelClosedError("the subscription is closed")
        if self._subscribed is None:
            loop = self._channel._loop
            self._subscribed = loop.create_future()
            try:
                self._conn = await self._channel._open_connection()
                self._channel._subscriptions.add(self)
                self._conn.subscribe(self._on_push, _BROADCAST)
            except BaseException as exc:
                self._subscribed.set_exception(exc)
                self._subscribed.exception()  # retrieved: the caller gets it below
                raise
        await asyncio.shield(self._subscribed)
        return self

    def _on_push(self, item: Any) -> None:
        # Called by the transport for every pub/sub reply, or with the error
        # when the connection goes away.
        if isinstance(item, BaseException):
            self._error = item
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_exception(item)
        elif item[0] == b"message":
            self._queue.append(item[2])
        elif item[0] == b"subscribe":
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _shut(self, error: BaseException) -> None:
        self._closed = True
        self._error = self._error or error
        self._channel._subscriptions.discard(self)
        if self._conn is not None:
            self._conn.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> BroadcastSubscription:
        return self

    async def __anext__(self) -> Message:
        if self._subscribed is None:
            await self.start()
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._waiter = self._channel._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        raw = self._queue.popleft()
        try:
            return Message.from_json(raw)
        except DecodeError as exc:
            exc.raw = raw
            raise

    async def close(self) -> None:
        """Unsubscribe and close the subscription's connection."""
        self._shut(ChannelClosedError("the subscription is closed"))

    aclose = close

    async def __aenter__(self) -> BroadcastSubscription:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
