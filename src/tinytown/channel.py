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
import math
import os
import ssl as ssl_module
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import _ops, _ops_inbox, _ops_state
from . import _ops_streams as _streams
from ._transport.cluster import ClusterConnection, ClusterTopology
from ._transport.choose import OpenConnection, connection_class, tls_connection_class
from ._transport.futures import PyReplyFuture
from ._transport.resp import check_args, check_command, command_bytes as _command_bytes
from ._commands import (
    LPUSH,
    MAX_BLOCK_SECONDS,
    RPUSH,
    blpop_timeout,
    check_batch,
    check_message,
    login_commands,
    push_commands,
    push_verb,
    too_big,
)
from .address import Address, connect_each_ip_async, parse_url, with_tls
from .agent import Agent
from .backoff import Backoff, ReconnectSchedule
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
from .reliable import MOVE_ENTRY_SCRIPT, RECLAIM_SCRIPT, Delivery
from .task import Task

if TYPE_CHECKING:
    from .events import TownEvent

__all__ = ["Channel", "BroadcastSubscription"]

log = logging.getLogger("tinytown")

_T = TypeVar("_T")

_BROADCAST = BROADCAST_CHANNEL.encode()

#: Seconds a blocking receive waits for Redis's answer beyond its own timeout
#: before it raises ConnectionError (a server that stopped answering without
#: closing the socket: SIGSTOP, a frozen VM, a network partition).
RECEIVE_GRACE = 1.0
# How often the watchdog of blocking receives looks at them: a silent server
# is noticed between RECEIVE_GRACE and RECEIVE_GRACE + this after the timeout.
_WATCHDOG_TICK = 0.25
# A cancelled blocking command is ended with CLIENT UNBLOCK. An UNBLOCK that
# finds the client not blocked (its BLPOP not read by Redis yet, or answered
# already) is retried this many times before the connection is closed.
_UNBLOCK_TRIES = 4
# Without CLIENT UNBLOCK (denied to the user, or a cluster), how long a
# cancelled blocking command's reply is waited for before its connection is
# closed (which ends the command): a reply already on its way is taken.
_FALLBACK_WAIT = 0.1


if sys.version_info >= (3, 11):
    async def _within(aw: Awaitable[_T], seconds: float) -> _T:
        """``await aw``, raising TimeoutError after ``seconds``.

        Unlike ``asyncio.wait_for`` on Python < 3.12, a cancellation of the
        caller that lands as ``aw`` completes is never swallowed: ``aw`` runs
        in the caller's own task, not in a task of its own.
        """
        async with asyncio.timeout(seconds):
            return await aw
else:  # pragma: no cover - Python 3.10
    async def _within(aw: Awaitable[_T], seconds: float) -> _T:
        """``await aw``, raising TimeoutError after ``seconds`` (see above; on
        3.10 a cancellation in the same instant as the timeout becomes the
        TimeoutError)."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await aw
        except asyncio.CancelledError:
            if expired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            handle.cancel()


class _ReceiverPool:
    """Connections for blocking commands, at most ``size`` in use at once.

    Each connection's CLIENT ID is recorded when it is opened (one round
    trip per connection, none per receive), so that a cancelled blocking
    command can be ended at once with CLIENT UNBLOCK; None when CLIENT is
    denied to the user, or on a cluster.
    """

    def __init__(self, channel: Channel, size: int) -> None:
        self._channel = channel
        self._idle: list[OpenConnection] = []
        self._busy: set[OpenConnection] = set()
        self._ids: dict[OpenConnection, int | None] = {}
        self._slots = asyncio.Semaphore(size)

    async def acquire(self, deadline: float) -> OpenConnection | None:
        """A connection, or None if every slot stayed busy until ``deadline``
        (loop time). Opening one reconnects with backoff, up to the deadline."""
        if self._slots.locked():
            try:
                await _within(self._slots.acquire(), deadline - self._channel._loop.time())
            except asyncio.TimeoutError:
                return None
        else:
            await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed:
                    break
                self._ids.pop(conn, None)
            else:
                conn = await self._channel._connect(deadline)
                await self._identify(conn)
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(conn)
        return conn

    async def _identify(self, conn: OpenConnection) -> None:
        client_id = None
        if self._channel._cluster is None:  # a cluster routes CLIENT to any node
            try:
                client_id = await _within(conn.execute(b"CLIENT", b"ID"),
                                          self._channel._connect_timeout)
            except ReplyError:  # CLIENT denied to this user: cancelling closes instead
                pass
            except asyncio.TimeoutError:
                conn.close()
                raise ConnectionError(
                    f"Redis at {self._channel._address} did not answer CLIENT ID") from None
            except BaseException:
                conn.close()
                raise
        self._ids[conn] = client_id

    def client_id(self, conn: OpenConnection) -> int | None:
        """The CLIENT ID of a connection of this pool, if known."""
        return self._ids.get(conn)

    def release(self, conn: OpenConnection) -> None:
        self._busy.discard(conn)
        if conn.is_closed or conn.pending_replies or self._channel._closed:
            self._ids.pop(conn, None)
            conn.close()
        else:
            self._idle.append(conn)
        self._slots.release()

    def close(self) -> None:
        for conn in self._idle + list(self._busy):
            conn.close()
        self._idle.clear()
        self._ids.clear()


def _cancelling() -> bool:
    """True if the current task is being cancelled from outside (Python >= 3.11;
    on 3.10 a cancellation in the same instant as a receive stall is missed)."""
    task = asyncio.current_task()
    return task is not None and sys.version_info >= (3, 11) and task.cancelling() > 0


#: ``write_buffer_limits`` of :meth:`Channel.connect`: (high, low) in bytes.
DEFAULT_WRITE_BUFFER_LIMITS = (4 * 2**20, 2**20)
_NO_WRITE_LIMIT = 2**62


def _step_bytes(step: Any) -> int:
    """:func:`_command_bytes` of an operation's step (command, list, Pipeline or Pop)."""
    if type(step) is _ops.Pop:
        step = step.step
    if type(step) is tuple:
        return _command_bytes(step)
    return sum(map(_command_bytes, step))


class Channel:
    """Tinytown's message transport on one Redis server, scoped to one town.

    Create it with :meth:`connect` (or ``await town.channel()``); close it with
    :meth:`close` or ``async with channel:``. Every method that takes an id
    accepts the id type, a :class:`uuid.UUID` or its string form
    (hyphenated, 32 hex digits, ``{braced}`` or ``urn:uuid:``, any case, as
    Tinytown reads them; keys always use the lowercase hyphenated form); any
    other value raises :class:`tinytown.InvalidArgumentError` before
    anything is sent. Unless a method says otherwise, a key holding another
    Redis type raises :class:`tinytown.ReplyError` (WRONGTYPE) and is left
    as it is.

    A Channel belongs to the event loop it was connected on and is not
    thread-safe: a call from another loop raises
    :class:`tinytown.EventLoopError` before anything is sent. If the connection drops, calls in flight fail with
    :class:`tinytown.ConnectionError` and the next call reconnects, with
    exponential backoff (see :class:`tinytown.Backoff`).
    """

    def __init__(self, address: Address, town: str, *, loop: asyncio.AbstractEventLoop,
                 max_receivers: int, connect_timeout: float, transport: str | None = None,
                 backoff: Backoff = Backoff(), reconnect_timeout: float = 5.0,
                 max_message_bytes: int = 16 * 2**20, layout: str = "hash",
                 write_buffer_limits: tuple[int, int] | None = DEFAULT_WRITE_BUFFER_LIMITS) -> None:
        # Use Channel.connect(); this only wires the parts together.
        self._write_limits = (_NO_WRITE_LIMIT, _NO_WRITE_LIMIT) if write_buffer_limits is None \
            else write_buffer_limits
        self._layout = _ops_state.check_layout(layout)
        self._transport = (tls_connection_class(transport, address) if address.tls
                           else connection_class(transport))
        self._address = address
        # redis+cluster://: every connection routes over per-node connections by slot.
        self._cluster = ClusterTopology(address, self._open_connection, backoff, reconnect_timeout) \
            if address.cluster else None
        self._keys = TownKeys(town)
        # Tinytown 0.7-0.10 publish on the town's channel; the Channels page on one for all towns.
        self._broadcast_name = (self._keys.broadcast.encode() if self._layout == "hash"
                                else _BROADCAST)
        self._loop = loop
        self._connect_timeout = connect_timeout
        self._schedule = ReconnectSchedule(backoff, loop)
        self._reconnect_timeout = reconnect_timeout
        self._max_bytes = max_message_bytes
        # Blocking commands in flight: future -> (loop time to give up, connection).
        self._unanswered: dict[PyReplyFuture, tuple[float, OpenConnection]] = {}
        self._gave_up: set[asyncio.Future[Any]] = set()  # cancelled by the watchdog, caller not told yet
        self._stalled = 0  # commands given up by the watchdog whose reply has not come
        self._watchdog: asyncio.TimerHandle | None = None
        self._conn: OpenConnection | None = None
        self._reconnecting: asyncio.Task[OpenConnection] | None = None
        self._receivers = _ReceiverPool(self, max_receivers)
        # Cancelled blocking commands (see _abandon): how many still wait for
        # their reply after a CLIENT UNBLOCK; what they took, held to be put
        # back in one go, in order; handbacks being written; cancelled callers
        # waiting for all that to settle.
        self._sent = 0  # blocking commands sent: their order on the server
        self._unblocking = 0
        self._handbacks: list[tuple[int, tuple[Any, ...], bytes]] = []
        self._handback_seq: int | None = None
        self._handback_timer: asyncio.TimerHandle | None = None
        # Pop steps in flight (future -> the ``cancelling`` method of the task
        # awaiting it, or ``int``, which also returns 0, when there is none)
        # and put-backs of cancelled ones being written: a later pop waits for
        # those, or it would take the next message before the put-back (see
        # _pop_gate).
        self._pops: dict[Any, Callable[[], int]] = {}
        self._putbacks = 0
        self._pop_waiters: list[asyncio.Future[None]] = []
        self._writing_handbacks = 0
        self._settle_waiters: list[asyncio.Future[None]] = []
        # Weak: a subscription dropped by its user (``break`` out of
        # ``async for``) is finalized, which unsubscribes it.
        self._subscriptions: weakref.WeakSet[BroadcastSubscription] = weakref.WeakSet()
        self._closed = False

    @classmethod
    async def connect(cls, url: str, town: str, *, max_receivers: int = 16,
                      connect_timeout: float = 5.0, transport: str | None = None,
                      backoff: Backoff | None = None, reconnect_timeout: float = 5.0,
                      max_message_bytes: int = 16 * 2**20, layout: str = "hash",
                      ssl: ssl_module.SSLContext | None = None,
                      ssl_ca_file: str | os.PathLike[str] | None = None,
                      ssl_certfile: str | os.PathLike[str] | None = None,
                      ssl_keyfile: str | os.PathLike[str] | None = None,
                      ssl_check_hostname: bool = True,
                      write_buffer_limits: tuple[int, int] | None = DEFAULT_WRITE_BUFFER_LIMITS,
                      ) -> Channel:
        """Connect to the Redis at ``url`` for the town ``town``.

        ``url`` is ``unix:///abs/path/redis.sock``,
        ``redis://[user:password@]host:port[/db]`` (AUTH and SELECT are done on
        connect) or ``redis+cluster://[user:password@]host:port[,host:port...]``
        (seed nodes of a Redis Cluster; each command goes to the node owning
        its key). ``rediss://`` and ``rediss+cluster://`` connect over TLS,
        verifying the server's certificate against ``ssl_ca_file`` (PEM; by
        default the system's CAs) and its host name unless
        ``ssl_check_hostname`` is False; ``ssl_certfile``/``ssl_keyfile`` are a
        client certificate and key (PEM); ``ssl`` (an :class:`ssl.SSLContext`)
        replaces all four. TLS connections use the pure-Python transport (the
        extension has no TLS; one log line at INFO says so); a failed
        handshake or certificate check raises :class:`ConnectionError`.
        ``max_receivers`` bounds the connections used by concurrent
        blocking receives. ``connect_timeout`` bounds one connection attempt.
        ``transport`` is ``"hiredis"`` (the C extension) or ``"python"``; None
        means ``$TINYTOWN_TRANSPORT``, else the extension if it loads, else
        Python.

        After the connection drops, a call reconnects, retrying with
        ``backoff`` (default :class:`tinytown.Backoff`: 50 ms doubling up to
        2 s, with jitter) for up to ``reconnect_timeout`` seconds before it
        fails with :class:`ConnectionError`; a blocking receive retries within
        its own timeout instead.

        ``max_message_bytes`` (default 16 MiB) bounds the JSON of a message,
        agent or task that this channel writes: a bigger one raises
        :class:`InvalidArgumentError` and nothing is written.

        ``write_buffer_limits`` is ``(high, low)`` in bytes (default 4 MiB,
        1 MiB; ``high`` at most 2**62): when more than ``high`` bytes of commands are queued on a
        connection but not yet written to its socket (a slow or stopped
        server, a flood of concurrent sends), every call that writes on the
        shared connection (:meth:`send`, :meth:`send_many`,
        :meth:`send_urgent`, :meth:`broadcast`, the ``set_*`` calls,
        :meth:`execute`...) waits until the queue is down to ``low`` before
        it queues its command, as asyncio's transports do; so a connection
        queues at most ``high`` bytes plus one command.
        None: no limit. Waiting writers fail with :class:`ConnectionError` if
        the connection drops meanwhile (nothing of theirs was sent).

        ``layout`` is how agent and task state and broadcasts are stored:
        ``"hash"`` (the default) as Tinytown 0.7-0.10 release it, each agent
        and task a Redis Hash (spec section 6 field order and spelling) and
        broadcasts on ``tt:<town>:broadcast``; ``"json"`` as the Channels
        page describes, one JSON string per agent or task and broadcasts on
        ``tt:broadcast``. Reads accept both layouts either way, and a write
        over a key holding the other layout replaces it atomically.

        Raises :class:`InvalidArgumentError` for a bad URL, town name, layout,
        transport or option, :class:`TransportUnavailableError` when no
        transport can be loaded and :class:`ConnectionError` if Redis cannot
        be reached (the first connection is tried once: a wrong address fails
        fast).
        """
        address = with_tls(parse_url(url), ssl=ssl, ssl_ca_file=ssl_ca_file, ssl_certfile=ssl_certfile,
                           ssl_keyfile=ssl_keyfile, ssl_check_hostname=ssl_check_hostname)
        _ops_state.check_layout(layout)
        if not isinstance(max_receivers, int) or max_receivers < 1:
            raise InvalidArgumentError(f"max_receivers must be a positive int, not {max_receivers!r}")
        if not connect_timeout > 0:
            raise InvalidArgumentError(f"connect_timeout must be positive, not {connect_timeout!r}")
        if not reconnect_timeout > 0:
            raise InvalidArgumentError(f"reconnect_timeout must be positive, not {reconnect_timeout!r}")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) \
                or max_message_bytes < 1:
            raise InvalidArgumentError(
                f"max_message_bytes must be a positive int, not {max_message_bytes!r}")
        if write_buffer_limits is not None and not (
                isinstance(write_buffer_limits, tuple) and len(write_buffer_limits) == 2
                and all(type(n) is int for n in write_buffer_limits)
                and 0 <= write_buffer_limits[1] <= write_buffer_limits[0] <= _NO_WRITE_LIMIT):
            # (The extension keeps the marks in a size_t and does signed
            # arithmetic on them: past 2**62, OverflowError or a wrapped sum.)
            raise InvalidArgumentError(
                "write_buffer_limits must be None or a tuple (high, low) of ints with "
                f"0 <= low <= high <= 2**62, not {write_buffer_limits!r}")
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise InvalidArgumentError(f"backoff must be a tinytown.Backoff, not {backoff!r}")
        channel = cls(address, town, loop=asyncio.get_running_loop(),
                      max_receivers=max_receivers, connect_timeout=connect_timeout,
                      transport=transport, backoff=backoff, reconnect_timeout=reconnect_timeout,
                      max_message_bytes=max_message_bytes, layout=layout,
                      write_buffer_limits=write_buffer_limits)
        channel._conn = await channel._open_connection()
        return channel

    # -- connections --------------------------------------------------------

    async def _open_connection(self, address: Address | None = None,
                               timeout: float | None = None) -> OpenConnection:
        """A new logged-in connection to this channel's server (or to ``address``,
        a node of its cluster; for a cluster, a ClusterConnection over such ones).

        One attempt; connecting and logging in to a node each take at most
        ``timeout`` (default and upper bound: ``connect_timeout``) seconds.
        """
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        if timeout is None or timeout > self._connect_timeout:
            timeout = self._connect_timeout
        if address is None:
            if self._cluster is not None:
                return await ClusterConnection(self._cluster, self._loop).start()
            address = self._address
        if address.unix_path is not None:
            conn = await self._connect_one(lambda c: c.connect_unix(address.unix_path), timeout)
        else:
            if address.tls:
                def start(c: Any, ip: str) -> Any:
                    return c.connect_tcp(ip, address.port, tls=address.ssl_context,
                                         server_hostname=address.host)
            else:
                def start(c: Any, ip: str) -> Any:
                    return c.connect_tcp(ip, address.port)
            conn = await connect_each_ip_async(
                address, lambda ip: self._connect_one(lambda c: start(c, ip), timeout), self._loop)
        try:
            await _within(self._log_in(conn), timeout)
        except asyncio.TimeoutError:
            conn.close()
            raise ConnectionError(
                f"Redis at {self._address} accepted the connection but did not answer "
                f"in {timeout:.3g} s") from None
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect_one(self, start: Any, timeout: float) -> OpenConnection:
        conn = self._transport(self._loop)
        conn.set_write_buffer_limits(*self._write_limits)
        try:
            await _within(start(conn), timeout)
        except asyncio.TimeoutError:
            conn.close()
            raise ConnectionError(
                f"cannot connect to Redis at {self._address}: "
                f"no answer in {timeout:.3g} s") from None
        except BaseException:
            conn.close()
            raise
        return conn

    async def _log_in(self, conn: OpenConnection) -> None:
        address = self._address
        # A server restarted with a large dataset accepts connections while it
        # loads, and answers -LOADING to nearly everything: PING makes such a
        # connection a failed attempt, which the backoff retries.
        commands = login_commands(address) + [(b"PING",)]
        try:
            await conn.execute_many(commands, False)
        except ReplyError as exc:
            if str(exc).startswith("LOADING"):
                raise ConnectionError(f"Redis at {address} is still loading its dataset: {exc}") from None
            raise ConnectionError(f"Redis at {address} refused the login: {exc}") from None

    async def _connect(self, deadline: float) -> OpenConnection:
        """A new connection, retried with backoff until ``deadline`` (loop time)."""
        return await self._schedule.connect(
            lambda timeout: self._open_connection(timeout=timeout), deadline, str(self._address))

    async def _reconnect(self) -> OpenConnection:
        """The main connection, reopened; concurrent callers share one attempt."""
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        task = self._reconnecting
        if task is None:
            deadline = self._loop.time() + self._reconnect_timeout
            task = self._reconnecting = self._loop.create_task(self._connect(deadline))
        try:
            conn = await asyncio.shield(task)
        finally:
            if task.done() and self._reconnecting is task:
                self._reconnecting = None
        self._conn = conn
        return conn

    async def _main(self) -> OpenConnection:
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        return conn

    # -- messages -------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Put ``message`` in its recipient's inbox.

        Urgent and high priority go to the front (LPUSH), normal and low to
        the back (RPUSH).

        Key: ``tt:<town>:inbox:<message.to>``; one ``LPUSH``/``RPUSH <key> <json>``.
        Raises :class:`InvalidArgumentError` for a non-Message or one over
        ``max_message_bytes`` and :class:`EncodeError` for one that JSON cannot carry
        (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another
        type, :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        if type(message) is not Message:
            check_message(message, "send")
        payload = message.to_json()
        if len(payload) > self._max_bytes:
            raise too_big("message", payload, self._max_bytes)
        key = self._keys.inbox_prefix + message.to  # a Message's ids are typed and immutable
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        waiter = conn.wait_writable(len(payload) + len(key) + 48)
        if waiter is not None:
            await waiter    # backpressure: the queue is over its high-water mark
        await conn.execute(push_verb(message), key, payload)

    async def send_many(self, messages: Iterable[Message]) -> None:
        """Send many messages in one pipelined round trip, in order.

        Placement follows :meth:`send`. Every message is encoded before
        anything is sent, so a message that cannot be encoded sends nothing.
        Consecutive messages for the same inbox and end travel in one
        variadic push, which leaves each inbox exactly as one send per
        message would.

        Raises :class:`ConnectionError` if the batch may be partly written;
        its ``written`` and ``unconfirmed`` attributes split the batch into
        the messages Redis confirmed and the rest (on a Redis Cluster, each
        node confirms its own pushes).

        Pushes: ``LPUSH``/``RPUSH tt:<town>:inbox:<to> <json>...``, one variadic push
        per run of messages for the same inbox and end. Raises
        :class:`InvalidArgumentError` for a non-Message or one over
        ``max_message_bytes`` and :class:`EncodeError` for one that JSON cannot carry
        (nothing is sent), :class:`ReplyError` (the first error reply, e.g. WRONGTYPE;
        the other pushes are done), :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConnectionError` as above.
        """
        batch = messages if isinstance(messages, (list, tuple)) else list(check_batch(messages))
        commands = push_commands(batch, self._keys.inbox_prefix, self._max_bytes)
        if not commands:
            if self._closed:
                raise ChannelClosedError("the channel is closed")
            return
        try:
            conn = await self._main()
            waiter = conn.wait_writable(sum(map(_command_bytes, commands)))
            if waiter is not None:
                await waiter
            await conn.execute_many(commands, False)
        except ConnectionError as exc:
            # A new exception: the one given may be shared with other calls
            # that failed on the same connection.
            raise _split_batch(exc, batch, commands) from exc

    async def receive(self, agent_id: AgentId | Any, timeout: float | timedelta) -> Message | None:
        """Wait up to ``timeout`` (seconds or timedelta) for a message; None if none came.

        Runs BLPOP on a connection of its own. If the caller is cancelled,
        the BLPOP is ended at once (CLIENT UNBLOCK) and a message it had
        taken is put back at the front of the inbox before the
        CancelledError goes on. If the connection drops meanwhile, this
        raises :class:`ConnectionError` (a message Redis popped just before
        may be lost: plain receive is at-most-once, see
        :meth:`receive_reliable`); the next receive reconnects. It returns or
        raises within about ``timeout`` + 1 s even if Redis stops answering.

        Key: ``tt:<town>:inbox:<agent>``. Raises :class:`InvalidArgumentError` for a bad
        id or a ``timeout`` that is not a positive, finite number of seconds or a
        timedelta (nothing is sent), :class:`DecodeError` (with ``raw``; the message is
        moved to ``tt:<town>:dead:<agent>``) for an undecodable message,
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        agent = AgentId(agent_id)
        key = self._keys.inbox_prefix + agent
        reply = await self._blocking(timeout, lambda seconds: (b"BLPOP", key, seconds),
                                     self._abandoned_pop)
        if reply is None:
            return None
        return await self._decode(agent, reply[1])

    async def _blocking(self, timeout: float | timedelta, command: Callable[[str], tuple[Any, ...]],
                        on_abandoned: Callable[[OpenConnection, Any], None]) -> Any:
        """Run the blocking command ``command(seconds)`` on a receiver
        connection; ``seconds`` is the time left, as text (``"1.500"``), for
        the command's own timeout argument.

        Reconnecting, waiting for a free connection and the command itself
        all fit in ``timeout`` (plus RECEIVE_GRACE for Redis's answer); None
        when time runs out before the command could be sent. If the caller
        stops waiting (cancelled, or the watchdog gave up on a silent
        server), the command still completes on the server: its reply then
        goes to ``on_abandoned(conn, reply)`` (an exception if the
        connection failed), which also gives the connection back.

        A cancelled caller ends its command at once (CLIENT UNBLOCK, see
        :meth:`_abandon`) and waits, at most RECEIVE_GRACE, for the reply to
        reach ``on_abandoned`` and for what it hands back with
        :meth:`_requeue` to be written, before the CancelledError goes on:
        when a cancelled receive has finished, its slot is free and a
        message it took is back in its inbox.
        """
        text = blpop_timeout(timeout)
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        loop = self._loop
        seconds = float(text)
        deadline = loop.time() + seconds
        if (self._pops or self._putbacks) and self._pops_unsettled():
            await self._pop_gate()  # a cancelled pop's put-back goes first
        for attempt in (1, 2):
            acquired = await self._receivers.acquire(deadline)
            if acquired is None:
                if self._stalled:
                    raise ConnectionError(
                        f"Redis has not answered {self._stalled} earlier blocking receives, which "
                        "hold the receiver connections (server paused or unreachable)")
                return None
            conn = acquired
            left = deadline - loop.time()
            if left < seconds - 0.001:  # reconnecting or waiting for a connection took time
                text = f"{max(left, 0.001):.3f}"
            try:
                fut = conn.execute(*command(text))
            except BaseException:
                self._receivers.release(conn)
                raise
            self._sent += 1
            if not fut.done() or attempt == 2:
                break
            # Failed inside execute(): on an idle connection the command is
            # written at once, so this is the write failing (the server went
            # away while the connection sat in the pool). Nothing reached
            # Redis: one retry on a fresh connection is safe.
            fut.exception()  # retrieved
            self._receivers.release(conn)
        fut.orphan = lambda reply: on_abandoned(conn, reply)
        sent = self._sent
        # One watchdog per channel, not a timer per receive (see _watch).
        self._unanswered[fut] = (deadline + RECEIVE_GRACE, conn)
        if self._watchdog is None:
            self._watchdog = loop.call_later(_WATCHDOG_TICK, self._watch)
        try:
            reply = await fut
        except asyncio.CancelledError:
            self._unanswered.pop(fut, None)
            if fut in self._gave_up:
                self._gave_up.discard(fut)
                if not _cancelling():  # the watchdog's doing, not the caller's
                    raise ConnectionError(
                        "Redis did not answer a blocking receive within its timeout plus "
                        f"{RECEIVE_GRACE:g} s (server paused or unreachable)") from None
                raise
            if fut.done() and not fut.cancelled():
                # The reply was in, but the cancellation reached the task first.
                fut.orphan = None
                self._abandon(sent, conn, on_abandoned, None)(
                    None if fut.exception() else fut.result())
            else:
                self._abandon(sent, conn, on_abandoned, fut)
            await self._handed_back()
            raise
        except BaseException:
            self._unanswered.pop(fut, None)
            self._receivers.release(conn)
            raise
        self._unanswered.pop(fut, None)
        self._receivers.release(conn)
        return reply

    def _abandon(self, sent: int, conn: OpenConnection, on_abandoned: Callable[[OpenConnection, Any], None],
                 fut: asyncio.Future[Any] | None) -> Callable[[Any], None]:
        """A blocking command (the ``sent``-th) whose caller was cancelled:
        returns the handler of its reply, which passes the reply on to
        ``on_abandoned`` while collecting what that hands back (see _requeue).

        With ``fut`` (the command's reply is still to come), the handler
        becomes its orphan and the command is ended now, so that it neither
        holds its connection until its timeout nor takes a message meant for
        a later receive: CLIENT UNBLOCK on the main connection makes Redis
        answer it at once, nil or what it took just before.
        """
        self._unblocking += 1
        done = False

        def resolve(reply: Any) -> None:
            nonlocal done
            if done:
                return
            done = True
            self._unblocking -= 1
            self._handback_seq = sent
            try:
                on_abandoned(conn, reply)
            finally:
                self._handback_seq = None
                self._handbacks_due()

        if fut is not None:
            fut.orphan = resolve  # type: ignore[attr-defined]
            self._unblock(conn, fut, 1)
        return resolve

    def _unblock(self, conn: OpenConnection, fut: asyncio.Future[Any], attempt: int) -> None:
        """End the blocking command of ``fut``, whose caller went away."""
        if getattr(fut, "orphan", None) is None:
            return  # its reply came
        client_id = self._receivers.client_id(conn)
        main = self._conn
        if client_id is None or main is None or main.is_closed or self._closed:
            self._loop.call_later(_FALLBACK_WAIT, self._drop_blocked, conn, fut)
            return
        try:
            unblocked = main.execute(b"CLIENT", b"UNBLOCK", client_id)
        except Exception:
            self._loop.call_later(_FALLBACK_WAIT, self._drop_blocked, conn, fut)
            return

        def answered(f: asyncio.Future[Any]) -> None:
            # Retrieved even when no longer needed, or asyncio would log the
            # error (main connection lost) as "never retrieved".
            failed = f.cancelled() or f.exception() is not None
            if getattr(fut, "orphan", None) is None:
                return
            if failed:  # denied, or main connection lost
                self._drop_blocked(conn, fut)
            elif f.result() == 0:
                # Not blocked: Redis has not read the command yet (it went on
                # another socket just before), or its reply is on its way.
                if attempt < _UNBLOCK_TRIES:
                    self._unblock(conn, fut, attempt + 1)
                else:
                    self._loop.call_later(_FALLBACK_WAIT, self._drop_blocked, conn, fut)
            # 1: Redis answers the command now (nil), on its own connection

        unblocked.add_done_callback(answered)

    def _drop_blocked(self, conn: OpenConnection, fut: asyncio.Future[Any]) -> None:
        """Close the connection of an abandoned command still unanswered: the
        server drops the command with the client (its orphan gets the error)."""
        if getattr(fut, "orphan", None) is None:
            return
        conn.close()
        handler = getattr(fut, "orphan", None)
        if handler is not None:  # a transport that does not call it on close
            fut.orphan = None  # type: ignore[attr-defined]
            handler(ConnectionError("connection to Redis closed"))

    async def _handed_back(self) -> None:
        """Wait (at most RECEIVE_GRACE) until every abandoned command has its
        reply and what they took is back in Redis."""
        if self._settled():
            return
        waiter = self._loop.create_future()
        self._settle_waiters.append(waiter)
        try:
            await _within(waiter, RECEIVE_GRACE)
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._settle_waiters:
                self._settle_waiters.remove(waiter)

    def _settled(self) -> bool:
        return not (self._unblocking or self._handbacks or self._writing_handbacks)

    def _handbacks_due(self) -> None:
        """Write the held handbacks once no abandoned command is unanswered,
        or after RECEIVE_GRACE at the latest; wake the settled waiters."""
        if self._handbacks:
            if not self._unblocking:
                self._write_handbacks()
            elif self._handback_timer is None:
                self._handback_timer = self._loop.call_later(RECEIVE_GRACE, self._write_handbacks)
        if self._settled():
            waiters, self._settle_waiters = self._settle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._wake_pop_waiters()

    def _write_handbacks(self) -> None:
        if self._handback_timer is not None:
            self._handback_timer.cancel()
            self._handback_timer = None
        if not self._handbacks:
            return
        # Each command puts its message at the front: the one taken last goes
        # first, so the one taken first ends in front. Blocked commands on a
        # key are served in the order Redis got them, which is sending order.
        batch = sorted(self._handbacks, key=lambda h: h[0], reverse=True)
        self._handbacks = []
        self._run_handbacks([(command, raw) for _, command, raw in batch])

    def _run_handbacks(self, batch: list[tuple[tuple[Any, ...], bytes]]) -> None:
        """Run the commands of ``batch`` (in order, one pipeline) on the main
        connection, reconnecting first if it is down."""
        self._writing_handbacks += 1
        main = self._conn
        if main is None or main.is_closed:
            self._loop.create_task(self._handbacks_reconnecting(batch))
            return
        try:
            written = main.execute_many([command for command, _ in batch], False)
        except Exception:
            self._loop.create_task(self._handbacks_reconnecting(batch))
            return

        def pushed(f: asyncio.Future[Any]) -> None:
            error = None if f.cancelled() else f.exception()
            if isinstance(error, ConnectionError):
                self._loop.create_task(self._handbacks_reconnecting(batch))
                return
            if error is not None:
                log.error("tinytown: a cancelled receive could not requeue its message: %s; "
                          "lost: %r", error, [raw for _, raw in batch])
            self._writing_handbacks -= 1
            self._handbacks_due()

        written.add_done_callback(pushed)

    async def _handbacks_reconnecting(self, batch: list[tuple[tuple[Any, ...], bytes]]) -> None:
        try:
            await self._retry_putback([command for command, _ in batch], None)
        except Exception as exc:  # nowhere left to put them: say so loudly
            log.error("tinytown: a cancelled receive could not requeue its message; lost: %r (%s)",
                      [raw for _, raw in batch], exc)
        finally:
            self._writing_handbacks -= 1
            self._handbacks_due()

    def _watch(self) -> None:
        """The watchdog of blocking commands in flight.

        A command still unanswered RECEIVE_GRACE after its timeout is given
        up: its future is cancelled, which raises ConnectionError in the
        caller (see _blocking). The connection stays open with the command's
        orphan handler: a server that was only paused (SIGSTOP, a frozen VM)
        runs the queued BLPOP when it resumes and may pop a message then,
        which the handler puts back. Closing the connection instead would
        lose that message. Such connections keep their pool slot until the
        reply comes, so a server that never answers again holds at most
        max_receivers connections.
        """
        self._watchdog = None
        now = self._loop.time()
        for fut, (expiry, _conn) in list(self._unanswered.items()):
            if now >= expiry and not fut.done():
                del self._unanswered[fut]
                self._gave_up.add(fut)
                self._stalled += 1
                assert fut.orphan is not None  # (set by _blocking before it lists the future)
                fut.orphan = self._stall_handler(fut.orphan)
                fut.cancel()
        if self._unanswered and not self._closed:
            self._watchdog = self._loop.call_later(_WATCHDOG_TICK, self._watch)

    def _stall_handler(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        def stall_over(reply: Any) -> None:
            self._stalled -= 1
            handler(reply)

        return stall_over

    def _abandoned_pop(self, conn: OpenConnection, reply: Any) -> None:
        """The reply of a BLPOP whose caller stopped waiting: put its message back."""
        self._receivers.release(conn)
        if not isinstance(reply, list):  # timed out, or the connection failed
            return
        key, raw = reply
        self._requeue((LPUSH, key, raw), raw)

    def _requeue(self, command: tuple[Any, ...], raw: bytes) -> None:
        """Run ``command``, which puts the popped message ``raw`` back at the
        front of its inbox, reconnecting first if the main connection is down.

        Called from the reply handler of an abandoned blocking command (see
        _abandon), it is held until the other abandoned commands have their
        replies, and they are all put back in the order they were taken.
        """
        sent = self._handback_seq
        if sent is None:
            self._run_handbacks([(command, raw)])
        else:
            self._handbacks.append((sent, command, raw))

    async def try_receive(self, agent_id: AgentId | Any) -> Message | None:
        """Take the first message of the inbox without waiting (``LPOP
        tt:<town>:inbox:<agent>``); None if it is empty.

        If the caller is cancelled while the LPOP is on its way, a message
        it took goes back to the front of the inbox: nothing is lost. An
        undecodable message is moved to ``tt:<town>:dead:<agent>`` and
        :class:`DecodeError` (with ``raw``) is raised (Tinytown 0.10 drops
        it).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`DecodeError` for an undecodable message (as above), :class:`ReplyError`
        (WRONGTYPE) if the key holds another type, :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`.
        """
        return await self._run(_ops_inbox.try_receive(self._keys, agent_id))

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

    # -- reliable receive (tinytown.reliable) --------------------------------

    async def receive_reliable(self, agent_id: AgentId | Any,
                               timeout: float | timedelta) -> Delivery | None:
        """Like :meth:`receive`, but at-least-once: returns a :class:`Delivery`
        to :meth:`ack` once processed, or None if nothing came in ``timeout``
        (seconds, or a timedelta).

        The message moves atomically (BLMOVE) from the inbox to
        ``tt:<town>:processing:<agent>`` and stays there until acked, so a
        consumer that crashes, is killed or loses its connection loses
        nothing: :meth:`reclaim` puts what it left back in the inbox. Use one
        consumer per agent, and reclaim when it (re)starts. An undecodable
        message goes from the processing list to the dead-letter list and
        raises :class:`DecodeError` (with ``raw``). If the caller is
        cancelled, a message already moved goes back to the inbox's front.
        Needs Redis >= 6.2; not available on a Redis Cluster.

        ``BLMOVE tt:<town>:inbox:<agent> tt:<town>:processing:<agent> LEFT RIGHT
        <timeout>``. Raises :class:`InvalidArgumentError` for a bad id, a ``timeout``
        that is not a positive, finite number of seconds or a timedelta, or on a Redis
        Cluster (nothing is sent), :class:`DecodeError` (with ``raw``) for an
        undecodable message, :class:`ReplyError` (WRONGTYPE; ``ERR unknown command``
        before Redis 6.2), :class:`ConnectionError` if the connection is lost or cannot
        be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("receive_reliable")
        agent = AgentId(agent_id)
        inbox = self._keys.inbox_prefix + agent
        processing = self._keys.processing(agent)
        raw = await self._blocking(
            timeout, lambda seconds: (b"BLMOVE", inbox, processing, b"LEFT", b"RIGHT", seconds),
            lambda conn, reply: self._abandoned_move(conn, reply, inbox, processing))
        if raw is None:
            return None
        try:
            message = Message.from_json(raw)
        except DecodeError as exc:
            try:
                conn = await self._main()
                await conn.execute(b"EVAL", MOVE_ENTRY_SCRIPT, 2, processing,
                                   self._keys.dead(agent), raw, RPUSH)
            except Exception as store_exc:  # it stays in the processing list: reclaim finds it
                log.error("tinytown: could not dead-letter %r: %s", raw, store_exc)
            exc.raw = raw
            raise
        return Delivery(message, agent, raw)

    def _abandoned_move(self, conn: OpenConnection, reply: Any, inbox: str, processing: str) -> None:
        """The reply of a BLMOVE whose caller stopped waiting: move its message back."""
        self._receivers.release(conn)
        if not isinstance(reply, bytes):  # timed out, or the connection failed
            return
        self._requeue((b"EVAL", MOVE_ENTRY_SCRIPT, 2, processing, inbox, reply, LPUSH), reply)

    async def ack(self, delivery: Delivery) -> bool:
        """Remove a delivery from the processing list: it is done.

        True if it was there; False if it was not (already acked, or
        reclaimed meanwhile, in which case it will be delivered again).

        ``LREM tt:<town>:processing:<agent> 1 <delivery.raw>``. Raises
        :class:`InvalidArgumentError` if ``delivery`` is not a :class:`Delivery`,
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        if not isinstance(delivery, Delivery):
            raise InvalidArgumentError(
                f"ack() takes the Delivery returned by receive_reliable(), not {type(delivery).__name__}")
        conn = await self._main()
        removed: int = await conn.execute(b"LREM", self._keys.processing(delivery.agent_id), 1, delivery.raw)
        return removed > 0

    async def reclaim(self, agent_id: AgentId | Any) -> int:
        """Move every unacked message of the agent back to the front of its
        inbox, in the order they were received; returns how many moved.

        Atomic (one Lua script). Call it when the agent's consumer starts,
        before its first :meth:`receive_reliable`: while a consumer is alive,
        its messages in processing are not abandoned, and reclaiming them
        would deliver them twice.

        One ``EVAL`` of a Lua script that runs ``LMOVE tt:<town>:processing:<agent>
        tt:<town>:inbox:<agent> RIGHT LEFT`` until the processing list is empty. Raises
        :class:`InvalidArgumentError` for a bad id or on a Redis Cluster,
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("reclaim")
        agent = AgentId(agent_id)
        conn = await self._main()
        moved: int = await conn.execute(b"EVAL", RECLAIM_SCRIPT, 2, self._keys.processing(agent),
                                        self._keys.inbox_prefix + agent)
        return moved

    def _check_not_cluster(self, operation: str, why: str = "") -> None:
        if self._cluster is not None:
            raise InvalidArgumentError(
                f"{operation}() is not available on a Redis Cluster: "
                + (why or "it moves messages between an inbox and a processing list in one "
                   "command, and Tinytown's key names put them on different hash slots"))

    async def processing_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages received reliably by the agent and not yet acked.

        ``LLEN tt:<town>:processing:<agent>``. Raises :class:`InvalidArgumentError` for
        a bad id (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds
        another type, :class:`ConnectionError` if the connection is lost or cannot be
        made, :class:`ChannelClosedError` after :meth:`close`.
        """
        conn = await self._main()
        return _ops.int_reply(await conn.execute(b"LLEN", self._keys.processing(AgentId(agent_id))),
                              "LLEN")

    async def inbox_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages waiting in the agent's inbox (LLEN).

        Key: ``tt:<town>:inbox:<agent>``. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another
        type, :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        key = self._keys.inbox_prefix + AgentId(agent_id)
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        n = await conn.execute(b"LLEN", key)
        return n if type(n) is int else _ops.int_reply(n, "LLEN")

    async def broadcast(self, message: Message) -> int:
        """Publish ``message`` (``PUBLISH``) on the layout's broadcast channel:
        ``tt:<town>:broadcast`` (hash layout) or ``tt:broadcast`` (json
        layout); returns how many subscribers got it.

        Raises :class:`InvalidArgumentError` for a non-Message or one over
        ``max_message_bytes`` and :class:`EncodeError` for one that JSON cannot carry
        (nothing is published), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        check_message(message, "broadcast")
        payload = message.to_json()
        if len(payload) > self._max_bytes:
            raise too_big("message", payload, self._max_bytes)
        conn = await self._main()
        waiter = conn.wait_writable(len(payload) + len(self._broadcast_name) + 48)
        if waiter is not None:
            await waiter    # backpressure, as for send
        return _ops.int_reply(await conn.execute(b"PUBLISH", self._broadcast_name, payload), "PUBLISH")

    def broadcasts(self) -> BroadcastSubscription:
        """Subscribe to broadcasts: ``async for message in channel.broadcasts(): ...``.

        The channel is the layout's: ``tt:<town>:broadcast`` (hash layout)
        or ``tt:broadcast`` (json layout).

        The subscription has a connection of its own, opened on first
        iteration (or on ``async with``/``await sub.start()``, to be sure to
        be subscribed before something is published).

        No Redis command is sent here: the subscription sends ``SUBSCRIBE <channel>`` on
        its own connection when it starts, and its start and iteration raise the
        connection errors. Raises :class:`ChannelClosedError` if the channel is closed.
        """
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        return BroadcastSubscription(self)

    # -- urgent inbox, peek, drain, move (Tinytown 0.10) ------------------------

    async def send_urgent(self, message: Message) -> None:
        """Put ``message`` in its recipient's urgent inbox, whatever its priority
        (``LPUSH tt:<town>:urgent:<to> <json>``: the urgent inbox is newest first).

        Raises :class:`InvalidArgumentError` for a non-Message or one over
        ``max_message_bytes``; nothing is written then.
        """
        await self._run(_ops_inbox.send_urgent(self._keys, message, self._max_bytes))

    async def receive_urgent(self, agent_id: AgentId | Any) -> list[Message]:
        """Take every message of the agent's urgent inbox, newest first (as
        Tinytown 0.10 returns them); ``[]`` if it is empty.

        One round trip, atomic: ``MULTI, LRANGE tt:<town>:urgent:<agent> 0 -1,
        LTRIM ... 1 0, EXEC`` (Tinytown pops one at a time and, meeting a
        malformed element, loses what it had popped). A malformed element is
        moved to ``tt:<town>:dead:<agent>`` with a logged warning and every
        good message is returned. If the caller is cancelled before the
        result reaches it, the messages go back to the front of the urgent
        inbox in their order. A key of another type raises
        :class:`ReplyError` (WRONGTYPE) and is left as it is.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_inbox.receive_urgent(self._keys, agent_id))

    async def urgent_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages in the agent's urgent inbox (``LLEN tt:<town>:urgent:<agent>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_inbox.urgent_len(self._keys, agent_id))

    async def peek_inbox(self, agent_id: AgentId | Any, count: int) -> list[Message]:
        """The first ``count`` messages of the agent's inbox, in the order
        :meth:`try_receive` would take them, without removing them
        (``LRANGE tt:<town>:inbox:<agent> 0 <count-1>``).

        Elements that are not valid messages are skipped (with a logged
        warning; they stay in the inbox). ``count`` must be an int >= 1:
        Tinytown 0.10 reads 0 as "the whole inbox" and negative counts as
        offsets from the end, which is rejected here with
        :class:`InvalidArgumentError` (nothing is sent).

        Raises :class:`InvalidArgumentError` for a bad id or ``count``,
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_inbox.peek_inbox(self._keys, agent_id, count))

    async def drain_inbox(self, agent_id: AgentId | Any) -> list[Message]:
        """Take every message of the agent's inbox, in receive order; ``[]`` if empty.

        One round trip, atomic: ``MULTI, LRANGE tt:<town>:inbox:<agent> 0 -1,
        LTRIM ... 1 0, EXEC`` (Tinytown 0.10 loops on LPOP, and drops
        malformed elements). A malformed element is moved to
        ``tt:<town>:dead:<agent>`` with a logged warning; every good message
        is returned. If the caller is cancelled before the result reaches
        it, the messages go back to the front of the inbox in their order.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_inbox.drain_inbox(self._keys, agent_id))

    async def move_message_to_inbox(self, message: Message, to: AgentId | Any) -> None:
        """Send a copy of ``message`` addressed to ``to`` (same id and fields
        otherwise), placed as :meth:`send` places it (LPUSH for urgent/high,
        RPUSH for normal/low, on ``tt:<town>:inbox:<to>``). The original is
        not removed from anywhere.

        Raises :class:`InvalidArgumentError` for a non-Message or one over
        ``max_message_bytes`` or a bad ``to`` (nothing is sent), :class:`ReplyError`
        (WRONGTYPE) if the key holds another type, :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`.
        """
        await self._run(_ops_inbox.move_message_to_inbox(self._keys, message, to, self._max_bytes))

    # -- state ----------------------------------------------------------------

    @property
    def layout(self) -> str:
        """``"hash"`` or ``"json"``: how this channel writes state and broadcasts
        (see :meth:`connect`)."""
        return self._layout

    async def set_agent_state(self, agent: Agent) -> None:
        """Store ``agent`` at ``tt:<town>:agent:<id>`` in the channel's layout.

        Hash layout: ``MULTI, HDEL <absent optional fields> (left out when
        none is absent), HMSET <fields in Tinytown's order>, EXEC`` in one
        write (Tinytown 0.10 sends HDEL and HMSET without MULTI, so a reader
        can see the Hash between them); if the key holds a JSON string, it is
        replaced in one more step, ``MULTI, DEL, HMSET, EXEC``. JSON layout:
        ``SET <key> <json>``, which replaces a Hash atomically too. A
        WRONGTYPE never reaches the caller and no key is left half in each
        layout. Raises :class:`InvalidArgumentError` for a non-Agent or one
        over ``max_message_bytes`` (nothing is written).
        """
        await self._run(_ops_state.set_agent_state(self._keys, self._layout, agent, self._max_bytes))

    async def get_agent_state(self, agent_id: AgentId | Any) -> Agent | None:
        """The stored Agent, or None when absent; either layout.

        ``HGETALL tt:<town>:agent:<id>`` (hash layout; a Hash is read by
        Tinytown's rules) or ``GET`` (json layout), the other one after a
        WRONGTYPE. Raises :class:`DecodeError` for state that cannot be read.
        """
        return await self._run(_ops_state.get_agent_state(self._keys, self._layout, agent_id))

    async def set_task(self, task: Task) -> None:
        """Store ``task`` at ``tt:<town>:task:<id>`` in the channel's layout,
        exactly as :meth:`set_agent_state` stores an agent.

        Hash layout: ``MULTI, HDEL <absent optional fields>, HMSET <fields>, EXEC``;
        json layout: ``SET <key> <json>``. Raises :class:`InvalidArgumentError` for a
        non-Task or one over ``max_message_bytes`` (nothing is written),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_ops_state.set_task(self._keys, self._layout, task, self._max_bytes))

    async def get_task(self, task_id: TaskId | Any) -> Task | None:
        """The stored Task, or None when absent; either layout (as :meth:`get_agent_state`).

        ``HGETALL tt:<town>:task:<id>`` (hash layout) or ``GET`` (json layout), the
        other one after a WRONGTYPE. Raises :class:`InvalidArgumentError` for a bad id
        (nothing is sent), :class:`DecodeError` for state that cannot be read,
        :class:`ReplyError` (WRONGTYPE) if the key is neither a Hash nor a string,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_state.get_task(self._keys, self._layout, task_id))

    async def list_agents(self) -> list[Agent]:
        """Every agent of the town, in no particular order; either layout.

        ``SCAN <cursor> MATCH tt:<town>:agent:* COUNT 100`` until done (the
        town name's glob characters escaped), then every key read in one
        pipelined round trip (HGETALL or GET as :meth:`get_agent_state`).
        Tinytown 0.10 uses KEYS and fails entirely on one key of another
        type; here a key that is not an agent (another type, unreadable
        state, a name that is not ``agent:<uuid>``) is skipped with a
        logged warning.
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Raises :class:`InvalidArgumentError` on a Redis Cluster,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("list_agents", "it SCANs one server's keys")
        return await self._run(_ops_state.list_agents(self._keys, self._layout))

    async def get_agent_by_name(self, name: str) -> Agent | None:
        """The first agent (of :meth:`list_agents`, so in no particular order)
        whose ``name`` is exactly ``name`` (case-sensitive); None if none.
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Commands: those of :meth:`list_agents` (``SCAN ... MATCH tt:<town>:agent:*``,
        then ``HGETALL`` in the hash layout or ``GET`` in the json layout per key).
        Raises :class:`InvalidArgumentError` for a non-str ``name`` or on a Redis
        Cluster, :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("get_agent_by_name", "it SCANs one server's keys")
        return await self._run(_ops_state.get_agent_by_name(self._keys, self._layout, name))

    async def resolve_agent_ref(self, ref: str) -> Agent | None:
        """The agent a person means by ``ref``, as Tinytown's ``resolve_agent_ref``.

        ``ref`` is trimmed (Unicode White_Space); empty gives None. A UUID
        (any form :class:`AgentId` accepts) is looked up directly
        (:meth:`get_agent_state`, no fallback to names). Otherwise the
        agents of :meth:`list_agents` whose name, display name (nickname,
        else name), display label (``"<display name> [<role>]"``, the name
        in place of the ``default`` role) or short id (the id's first 4
        characters) equal ``ref``, ignoring ASCII case: None if none,
        the agent if one, :class:`AmbiguousAgentRefError` (with
        ``matches``) if several.
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Commands: ``HGETALL tt:<town>:agent:<id>`` (or ``GET``) for a UUID, else those of
        :meth:`list_agents`. Raises :class:`AmbiguousAgentRefError` if several agents match,
        :class:`InvalidArgumentError` for a non-str ``ref`` or on a Redis Cluster,
        :class:`DecodeError` for a UUID whose stored state cannot be read,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("resolve_agent_ref", "it SCANs one server's keys")
        return await self._run(_ops_state.resolve_agent_ref(self._keys, self._layout, ref))

    async def delete_agent(self, agent_id: AgentId | Any) -> None:
        """Delete the agent's state, inbox, urgent inbox, activity log and stop
        flag: ``DEL`` of ``tt:<town>:agent|inbox|urgent|activity|stop:<id>``, in
        that order, in one write. Its event stream
        (``tt:<town>:events:agent:<id>``) and dead letters are kept, as in
        Tinytown 0.10.

        ``DEL`` takes keys of any type. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_ops_state.delete_agent(self._keys, agent_id))

    async def list_tasks(self) -> list[Task]:
        """Every task of the town, in no particular order; either layout
        (``SCAN ... MATCH tt:<town>:task:*``, as :meth:`list_agents`).
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Raises :class:`InvalidArgumentError` on a Redis Cluster,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("list_tasks", "it SCANs one server's keys")
        return await self._run(_ops_state.list_tasks(self._keys, self._layout))

    async def delete_task(self, task_id: TaskId | Any) -> bool:
        """Delete ``tt:<town>:task:<id>`` (``DEL``, any type); True if it existed.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_state.delete_task(self._keys, task_id))

    async def increment_agent_rounds(self, agent_id: AgentId | Any) -> int:
        """Add 1 to the agent's ``rounds_completed``; returns the new value.

        Either layout, atomically: the agent is read (``HGETALL`` or
        ``GET``), then written back by one Lua script (``EVALSHA``) only if it
        did not change meanwhile (else it is read again), so a concurrent
        update is never lost and the u64 counter
        stays exact beyond 2**53 (Tinytown 0.10's ``HINCRBY`` fails above
        2**63-1). Raises :class:`AgentNotFoundError` if the agent has no
        state (Tinytown creates a partial Hash instead) and
        :class:`EncodeError` if the counter is already 2**64-1.
        """
        return await self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "rounds_completed", True))

    async def increment_agent_tasks_completed(self, agent_id: AgentId | Any) -> int:
        """Add 1 to the agent's ``tasks_completed``; returns the new value.
        As :meth:`increment_agent_rounds` (same guarantees and errors).

        Commands: ``HGETALL tt:<town>:agent:<id>`` (or ``GET``, json layout), then
        ``EVALSHA`` of the compare-and-set script. Raises :class:`AgentNotFoundError` if
        the agent has no state, :class:`EncodeError` if the counter is already 2**64-1,
        :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "tasks_completed", True))

    async def update_agent_heartbeat(self, agent_id: AgentId | Any) -> None:
        """Set the agent's ``last_heartbeat`` to now (the channel's clock).

        A Hash gets the one field (``+00:00`` form, as Tinytown's ``HSET``)
        in one round trip: a Lua script (``EVALSHA``) that writes it only if
        the Hash exists and has an ``id``; a JSON agent is read and rewritten
        as :meth:`increment_agent_rounds` does. Raises
        :class:`AgentNotFoundError` if the agent has no state, and
        :class:`ReplyError` (WRONGTYPE) if its key holds another type, as the
        counters do.
        """
        await self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "last_heartbeat", False))

    async def reset_all(self) -> int:
        """Delete every key of this town; returns how many were deleted.

        ``SCAN ... MATCH tt:<town>:* COUNT 100`` (glob characters of the town
        name escaped), keeping only keys of the shapes a town writes
        (``agent:<uuid>``, ``inbox:<uuid>``, ``backlog``, ``events``,
        ``docket:tasks``, mission keys...), so another town whose name starts
        with ``<town>:`` (Rust allows ':') keeps its keys; then ``DEL`` in
        batches of 1000. Tinytown 0.10 deletes the other towns' keys and
        returns the number scanned. Not atomic: keys written meanwhile may
        survive.
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Raises :class:`InvalidArgumentError` on a Redis Cluster,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("reset_all", "it SCANs one server's keys")
        return await self._run(_ops_state.reset_all(self._keys))

    async def reset_agents_only(self) -> int:
        """Delete every agent's keys of this town (state, inbox, urgent inbox,
        stop flag, activity log, and this package's dead letters and
        processing lists), keeping tasks, backlog, docket and event streams;
        returns how many were deleted. One SCAN per kind, as :meth:`reset_all`.
        Not available on a Redis Cluster (:class:`InvalidArgumentError`).

        Raises :class:`InvalidArgumentError` on a Redis Cluster,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        self._check_not_cluster("reset_agents_only", "it SCANs one server's keys")
        return await self._run(_ops_state.reset_agents_only(self._keys))

    # -- driving operations (tinytown._ops): pops that hand back, pipelines ----

    async def _pop(self, conn: OpenConnection, pop: _ops.Pop) -> Any:
        """Run a Pop step; if the caller goes away first, what it took goes back."""
        if self._pops or self._putbacks or not self._settled():
            if self._pops_unsettled():  # (else the gate would return at once)
                await self._pop_gate()
            if conn.is_closed:  # dropped meanwhile: nothing was sent on it
                conn = await self._reconnect()
        step = pop.step
        fut = conn.execute(*step) if type(step) is tuple else conn.execute_many(step, True)
        restore = pop.restore
        pops = self._pops

        def orphan(reply: Any) -> None:
            # The reply of a cancelled command comes here instead of being dropped.
            pops.pop(fut, None)
            self._restore(restore(reply))
            self._wake_pop_waiters()

        fut.orphan = orphan  # type: ignore[attr-defined]
        pops[fut] = getattr(asyncio.current_task(self._loop), "cancelling", int)
        try:
            return await fut
        except ReplyError:
            fut.orphan = None  # type: ignore[attr-defined]
            raise
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The reply was in, but the cancellation reached the task first.
                fut.orphan = None  # type: ignore[attr-defined]
                self._restore(restore(fut.exception() or fut.result()))
            raise
        except BaseException as exc:  # the connection failed: give back what is still held
            fut.orphan = None  # type: ignore[attr-defined]
            self._restore(restore(exc))
            raise
        finally:
            # A cancelled one leaves when its orphan handler has run (its put-back queued).
            if not fut.cancelled() and fut in pops:
                del pops[fut]
                self._wake_pop_waiters()

    def _pops_unsettled(self) -> bool:
        """True while a cancelled pop's reply or put-back is on its way (or a
        cancelled blocking receive's handback): a pop sent now could take a
        message that is to go back before it."""
        if self._putbacks or not self._settled():
            return True
        # Every pop in flight is looked at: nothing announces a cancellation.
        # A cancelled future, or a task being cancelled (its reply is in, its
        # put-back not written yet); ``cancelling`` was looked up when the
        # pop was sent (a third of the cost of this loop, per pop in flight).
        for fut, cancelling in self._pops.items():
            if fut.cancelled() or cancelling():
                return True
        return False

    async def _pop_gate(self) -> None:
        """Wait until no cancelled pop of this channel has a put-back pending.

        Put-backs go to the front of their list; a pop sent before one is
        written would take the message behind it (an inversion). Only calls
        that follow a cancelled pop wait here."""
        deadline = self._loop.time() + RECEIVE_GRACE
        while self._pops_unsettled():
            left = deadline - self._loop.time()
            if left <= 0:
                break
            waiter = self._loop.create_future()
            self._pop_waiters.append(waiter)
            try:
                await _within(waiter, left)
            except asyncio.TimeoutError:
                break
            finally:
                if waiter in self._pop_waiters:
                    self._pop_waiters.remove(waiter)
        else:
            return
        # A reply that does not come (server paused): go on, as before, and
        # stop waiting for those cancelled pops (their handlers still run).
        for fut in [fut for fut in self._pops if fut.cancelled()]:
            del self._pops[fut]

    def _wake_pop_waiters(self) -> None:
        if self._pop_waiters:
            waiters, self._pop_waiters = self._pop_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _pipeline(self, conn: OpenConnection, commands: _ops.Pipeline) -> list[Any]:
        """Run a Pipeline step: one future per command (the connection pipelines
        them), error replies returned in the list."""
        futures = [conn.execute(*command) for command in commands]
        replies: list[Any] = []
        try:
            for fut in futures:
                try:
                    replies.append(await fut)
                except ReplyError as exc:
                    replies.append(exc)
        except BaseException:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved
            raise
        return replies

    def _restore(self, commands: list[tuple[Any, ...]]) -> None:
        """Run ``commands``, which put back what a Pop step's caller left behind,
        on the main connection (reconnecting first if it is down). Later pops
        of this channel wait until they are done (see _pop_gate)."""
        if not commands:
            return
        self._putbacks += 1
        main = self._conn
        if main is None or main.is_closed:
            self._loop.create_task(self._restore_reconnecting(commands))
            return

        def written(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._loop.create_task(self._restore_reconnecting(commands, f))
            else:
                self._putback_done()

        try:
            main.execute_many(commands, False).add_done_callback(written)
        except Exception:  # closed under us: nothing was sent
            self._loop.create_task(self._restore_reconnecting(commands))

    def _putback_done(self) -> None:
        self._putbacks -= 1
        self._wake_pop_waiters()

    async def _restore_reconnecting(self, commands: list[tuple[Any, ...]],
                                    failed: asyncio.Future[Any] | None = None) -> None:
        try:
            await self._retry_putback(commands, failed)
        except Exception as exc:  # nowhere left to put it: say so loudly
            log.error("tinytown: a cancelled call could not put back what it took; lost: %r (%s)",
                      commands, exc)
        finally:
            self._putback_done()

    async def _retry_putback(self, commands: list[tuple[Any, ...]],
                             failed: asyncio.Future[Any] | None) -> None:
        """Write a put-back on a fresh connection, reconnecting (with the
        channel's backoff) until ``reconnect_timeout`` runs out.

        ``failed``: the earlier attempt's future. Only a connection failure is
        retried; an error reply (a foreign key of another type) is final."""
        error = None if failed is None or failed.cancelled() else failed.exception()
        if error is not None and not isinstance(error, ConnectionError):
            raise error
        deadline = self._loop.time() + self._reconnect_timeout
        while True:
            try:
                conn = await self._main()
                await conn.execute_many(commands, False)
                return
            except ConnectionError:
                if self._closed or self._loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.01)

    # -- stop flag --------------------------------------------------------------

    async def request_stop(self, agent_id: AgentId | Any) -> None:
        """Ask the agent to stop: ``SETEX tt:<town>:stop:<agent> 3600 1`` (the flag lives 1 h).

        ``SETEX`` replaces a key of any type. Raises :class:`InvalidArgumentError` for a
        bad id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_ops.request_stop(self._keys, agent_id))

    async def should_stop(self, agent_id: AgentId | Any) -> bool:
        """True if a stop was requested for the agent (``EXISTS tt:<town>:stop:<agent>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_ops.should_stop(self._keys, agent_id))

    async def clear_stop(self, agent_id: AgentId | Any) -> None:
        """Withdraw a stop request (``DEL tt:<town>:stop:<agent>``).

        ``DEL`` takes a key of any type. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_ops.clear_stop(self._keys, agent_id))

    async def _run(self, op: _ops.Op[_T]) -> _T:
        """Drive a sans-I/O operation of :mod:`tinytown._ops` on the main connection."""
        try:
            step = next(op)  # argument checks run here, before anything is sent
        except StopIteration as done:  # answered without Redis
            return done.value  # type: ignore[no-any-return]
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        # What the operation holds from its last Pop step, to hand back if it
        # ends other than by returning (a signal handler raising between two
        # bytecodes, an error): the caller never gets it.
        held: list[tuple[Any, ...]] | None = None
        try:
            while True:
                try:
                    # Backpressure, as for send: every step waits while the
                    # write queue is over its high-water mark (not put-backs,
                    # which _restore writes at once).
                    waiter = conn.wait_writable(_step_bytes(step))
                    if waiter is not None:
                        await waiter
                    # (mypy cannot narrow step through kind: the ignores below)
                    kind = type(step)
                    if kind is tuple:
                        reply = await conn.execute(*step)  # type: ignore[misc]
                    elif kind is list:
                        reply = await conn.execute_many(step, True)  # type: ignore[arg-type]
                    elif kind is _ops.Pop:
                        held = None  # while it runs, the step hands back by itself
                        try:
                            reply = await self._pop(conn, step)  # type: ignore[arg-type]
                        except ReplyError as exc:
                            held = step.restore(exc)  # type: ignore[union-attr]
                            raise
                        held = step.restore(reply)  # type: ignore[union-attr]
                    else:
                        reply = await self._pipeline(conn, step)  # type: ignore[arg-type]
                except ReplyError as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except BaseException:
            if held:
                self._restore(held)
            raise
        finally:
            op.close()

    # -- events, docket, backlog, activity ----------------------------------------

    async def log_agent_activity(self, agent_id: AgentId | Any, text: str) -> None:
        """Add a line to the agent's activity log, ``tt:<town>:activity:<agent>``.

        ``LPUSH`` the text (UTF-8, unchanged), ``LTRIM 0 9`` (the 10 newest
        are kept) and ``EXPIRE 3600`` (the log lives 1 h after its last line),
        in that order as Tinytown does, but in one write inside MULTI/EXEC, so
        no reader sees the list untrimmed (upstream: three round trips). On a
        Redis Cluster the three go as one pipeline (no MULTI).
        Raises :class:`InvalidArgumentError` for a bad id or a non-str text,
        :class:`EncodeError` for text that is not valid Unicode.
        """
        await self._run(_streams.log_agent_activity(
            self._keys, agent_id, text, transaction=self._cluster is None))

    async def get_agent_activity(self, agent_id: AgentId | Any) -> str | None:
        """The agent's 5 newest activity lines, newest first, joined with ``"\\n"``;
        None when it has none (``LRANGE tt:<town>:activity:<agent> 0 4``).

        As Tinytown returns it; a line containing a newline makes the text
        ambiguous: :meth:`get_agent_activity_lines` returns the list instead.
        Bytes that are not UTF-8 read as U+FFFD.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.get_agent_activity(self._keys, agent_id))

    async def get_agent_activity_lines(self, agent_id: AgentId | Any,
                                       count: int = 5) -> list[str]:
        """The agent's ``count`` (default 5, at most 10 are kept) newest activity
        lines as a list, newest first; ``[]`` when none (``LRANGE ... 0 count-1``).
        Not in Tinytown: its :meth:`get_agent_activity` joins them with ``"\\n"``.

        Raises :class:`InvalidArgumentError` for a bad id or a ``count`` outside
        1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds
        another type, :class:`ConnectionError` if the connection is lost or cannot be
        made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.get_agent_activity_lines(self._keys, agent_id, count))

    async def emit_event(self, event: TownEvent) -> str:
        """Append ``event`` to the town's event streams; returns its entry id in
        ``tt:<town>:events`` (``"1700000000000-0"``).

        One ``XADD <stream> MAXLEN ~ <n> * event_type <type> data <JSON>`` per
        stream, as Tinytown writes them: the town stream (~1000 kept), the
        stream of each distinct agent among ``agent_id``, ``parent_agent_id``
        and ``child_agent_id`` (``tt:<town>:events:agent:<id>``, ~100 kept),
        then the mission's (``tt:<town>:events:mission:<id>``, ~500 kept).

        Unlike Tinytown, all of them go in one write inside MULTI/EXEC, so a
        reader never sees the event in one stream and not yet in another, and
        an error is raised instead of swallowed: :class:`ReplyError` (e.g.
        WRONGTYPE when a stream key holds something else; Redis does not roll
        back a transaction, so the XADDs that succeeded stay written).
        On a Redis Cluster the XADDs go as one pipeline (no MULTI).
        Raises :class:`InvalidArgumentError` if ``event`` is not a TownEvent.
        """
        return await self._run(_streams.emit_event(self._keys, event,
                                                   transaction=self._cluster is None))

    async def read_town_events(self, last_id: str = "-",
                               count: int = 100) -> list[tuple[str, TownEvent]]:
        """Up to ``count`` events of ``tt:<town>:events`` after the entry
        ``last_id``, oldest first, as ``(entry_id, TownEvent)`` pairs.

        ``last_id`` is the id of the last entry already seen, or ``"-"`` (or
        ``"0"``) for the start of the stream. Unlike Tinytown, whose XRANGE
        start is inclusive so that a follow loop gets its last event again on
        every read, the entry ``last_id`` itself is not returned: this sends
        ``XRANGE <key> (<last_id> + COUNT <count>`` (Redis >= 6.2; ``-``/``0``
        are sent as they are). Entries whose ``data`` field is missing or not
        a TownEvent are skipped (logged as warnings), as Tinytown does; after
        the largest id (``18446744073709551615-18446744073709551615``) there
        is nothing to read and nothing is sent. Raises
        :class:`InvalidArgumentError` for a malformed ``last_id`` (an id's
        two parts are at most 2**64-1) or a ``count`` outside 1..2**63-1.
        """
        return await self._run(_streams.read_town_events(self._keys, last_id, count))

    async def read_agent_events(self, agent_id: AgentId | Any, last_id: str = "-",
                                count: int = 100) -> list[tuple[str, TownEvent]]:
        """Like :meth:`read_town_events`, on the agent's stream
        ``tt:<town>:events:agent:<agent>``.

        ``XRANGE tt:<town>:events:agent:<agent> (<last_id> + COUNT <count>`` (``-``/``0``
        sent as they are, as :meth:`read_town_events` does). Raises
        :class:`InvalidArgumentError` for a bad id, a malformed ``last_id`` or a
        ``count`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE)
        if the key holds another type, :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.read_agent_events(self._keys, agent_id, last_id, count))

    async def read_mission_events(self, mission_id: Any, last_id: str = "-",
                                  count: int = 100) -> list[tuple[str, TownEvent]]:
        """Like :meth:`read_town_events`, on the mission's stream
        ``tt:<town>:events:mission:<mission>`` (``mission_id``: a UUID).

        ``XRANGE tt:<town>:events:mission:<mission> (<last_id> + COUNT <count>`` (``-``/``0``
        sent as they are, as :meth:`read_town_events` does). Raises
        :class:`InvalidArgumentError` for a bad mission id, a malformed ``last_id`` or a
        ``count`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE)
        if the key holds another type, :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.read_mission_events(self._keys, mission_id, last_id, count))

    async def read_recent_town_events(self, count: int = 100) -> list[tuple[str, TownEvent]]:
        """The ``count`` newest events of ``tt:<town>:events``, oldest first, as
        ``(entry_id, TownEvent)`` (``XREVRANGE <key> + - COUNT <count>``);
        undecodable entries skipped. The last id can start a
        :meth:`read_town_events` follow loop.

        Raises :class:`InvalidArgumentError` for a ``count`` outside 1..2**63-1 (nothing
        is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.read_recent_town_events(self._keys, count))

    async def backlog_push(self, task_id: TaskId | Any) -> None:
        """Queue a task id at the end of the town's backlog (``RPUSH tt:<town>:backlog``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_streams.backlog_push(self._keys, task_id))

    async def backlog_list(self) -> list[TaskId]:
        """Every task id in the backlog, front first (``LRANGE tt:<town>:backlog 0 -1``);
        entries that are not task ids are skipped (logged), as Tinytown does.

        Raises :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.backlog_list(self._keys))

    async def backlog_len(self) -> int:
        """Number of entries in the backlog (``LLEN``), unreadable ones included.

        Key: ``tt:<town>:backlog``. Raises :class:`ReplyError` (WRONGTYPE) if the key
        holds another type, :class:`ConnectionError` if the connection is lost or cannot
        be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.backlog_len(self._keys))

    async def backlog_pop(self) -> TaskId | None:
        """Take the task id at the front of the backlog (``LPOP``); None if empty.

        An entry that is not a task id is moved to ``tt:<town>:dead:backlog``
        and :class:`DecodeError` is raised with it in ``.raw`` (Tinytown drops
        it, spec §9.9); the next call goes on with the following entry. If
        the caller is cancelled while the LPOP is on its way, an entry it took
        goes back to the front of the backlog: nothing is lost.

        Raises :class:`DecodeError` for an entry that is not a task id (as above),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.backlog_pop(self._keys))

    async def backlog_remove(self, task_id: TaskId | Any) -> bool:
        """Remove the first occurrence of ``task_id`` from the backlog; True if
        it was there (``LREM tt:<town>:backlog 1 <task_id>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.backlog_remove(self._keys, task_id))

    async def docket_ensure_group(self) -> None:
        """Create the docket stream and its consumer group ``workers`` if missing
        (``XGROUP CREATE tt:<town>:docket:tasks workers $ MKSTREAM``; the
        BUSYGROUP error of an existing group is ignored). Entries pushed
        before the group existed are not delivered to it (``$``), as in Tinytown.

        Raises :class:`ReplyError` for an error other than BUSYGROUP (e.g. WRONGTYPE if
        the key holds another type), :class:`ConnectionError` if the connection is lost
        or cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        await self._run(_streams.docket_ensure_group(self._keys))

    async def docket_push(self, task_id: TaskId | Any, description: str, priority: str,
                          from_: str, to: str) -> str:
        """Offer a task on the docket; returns the stream entry id.

        ``XADD tt:<town>:docket:tasks * task_id <id> type task_assign message
        <description> priority <priority> from <from_> to <to> timestamp
        <now, RFC 3339 with +00:00>``, as Tinytown writes it (never trimmed).
        The strings are written verbatim (``priority`` may be a
        :class:`Priority`). Raises :class:`InvalidArgumentError` for a bad
        task id or a non-str argument.
        """
        return await self._run(_streams.docket_push(self._keys, task_id, description,
                                                    priority, from_, to))

    async def docket_read(self, consumer: str,
                          block_ms: int) -> tuple[str, dict[str, str]] | None:
        """Wait up to ``block_ms`` milliseconds for a docket entry never
        delivered to the group; returns ``(entry_id, fields)`` or None.

        ``XREADGROUP GROUP workers <consumer> COUNT 1 BLOCK <block_ms>
        STREAMS tt:<town>:docket:tasks >``, on a connection of its own (like
        :meth:`receive`). The entry stays pending for ``consumer`` until
        :meth:`docket_ack`. ``fields`` maps field names to values (bytes
        that are not UTF-8 read as U+FFFD). ``block_ms`` must be an int in 1..2**63-1:
        Tinytown's ``0`` would wait forever. If the caller is cancelled after
        Redis delivered an entry, the entry stays pending for ``consumer``:
        :meth:`docket_reclaim` returns it. A missing group raises
        :class:`ReplyError` (NOGROUP; see :meth:`docket_ensure_group`).

        Raises :class:`InvalidArgumentError` for a non-str ``consumer`` or a
        ``block_ms`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (NOGROUP,
        WRONGTYPE), :class:`ConnectionError` if the connection is lost or cannot be
        made, :class:`ChannelClosedError` after :meth:`close`.
        """
        keys = self._keys
        ms = _streams.docket_block_ms(block_ms)
        _streams.docket_read_command(keys, consumer, ms)  # argument checks, nothing sent

        # The channel's own wait for the reply, within what a BLPOP timeout
        # may be (BLOCK itself may be up to 2**63-1 ms: Redis takes that).
        wait = min(ms / 1000, MAX_BLOCK_SECONDS)

        def command(seconds: str) -> tuple[Any, ...]:
            # Tinytown's exact BLOCK, unless getting a connection used a real
            # share of it: up to 100 ms late stays well inside RECEIVE_GRACE.
            late = (wait - float(seconds)) * 1000
            return _streams.docket_read_command(keys, consumer, ms if late < 100 else max(1, round(ms - late)))

        reply = await self._blocking(wait, command,
                                     lambda conn, reply: self._receivers.release(conn))
        return _streams.docket_read_reply(reply)

    async def docket_ack(self, entry_id: str) -> bool:
        """Mark a docket entry as done for the group (``XACK tt:<town>:docket:tasks
        workers <entry_id>``); True if it was pending (Tinytown returns nothing).
        Raises :class:`InvalidArgumentError` for a malformed id."""
        return await self._run(_streams.docket_ack(self._keys, entry_id))

    async def docket_len(self) -> int:
        """Entries in the docket stream, acked ones included (``XLEN``; 0 when absent).

        Key: ``tt:<town>:docket:tasks``. Raises :class:`ReplyError` (WRONGTYPE) if the
        key holds another type, :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.docket_len(self._keys))

    async def docket_pending_count(self) -> int:
        """Entries delivered to the group and not yet acked (``XPENDING tt:<town>:docket:tasks
        workers``). A missing stream or group raises :class:`ReplyError` (NOGROUP).

        Raises :class:`ReplyError` (NOGROUP, WRONGTYPE), :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`.
        """
        return await self._run(_streams.docket_pending_count(self._keys))

    async def docket_group_lag(self) -> int | None:
        """Entries of the docket not yet delivered to the group (``lag`` of
        ``XINFO GROUPS``); None when the group is missing or Redis cannot
        tell (Redis < 7). A missing stream raises :class:`ReplyError`.

        Raises :class:`ReplyError` (missing stream: ``ERR no such key``; WRONGTYPE),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.docket_group_lag(self._keys))

    async def docket_log_event(self, task_id: TaskId | Any, event_type: str, detail: str) -> str:
        """Append to the docket's event log; returns the entry id (``XADD
        tt:<town>:docket:events * task_id <id> event <event_type> detail <detail>
        timestamp <now, +00:00>``, never trimmed).

        Raises :class:`InvalidArgumentError` for a bad task id or a non-str
        ``event_type``/``detail``, :class:`EncodeError` for text that is not valid
        Unicode, :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.docket_log_event(self._keys, task_id, event_type, detail))

    async def docket_reclaim(self, consumer: str, min_idle_ms: int,
                             count: int = 10) -> list[tuple[str, dict[str, str]]]:
        """Take over docket entries left pending (delivered, never acked) for
        at least ``min_idle_ms`` milliseconds by any consumer: a crashed
        worker's, or a :meth:`docket_read` cancelled after delivery. They
        become pending for ``consumer`` and are returned as ``(entry_id,
        fields)``, oldest first, at most ``count`` (``XAUTOCLAIM
        tt:<town>:docket:tasks workers <consumer> <min_idle_ms> <cursor> COUNT
        <n>``, repeated until Redis's scan wraps or ``count`` came back).
        Not in Tinytown, which never reclaims; needs Redis >= 6.2.

        Raises :class:`InvalidArgumentError` for a non-str ``consumer``, a
        ``min_idle_ms`` (milliseconds) outside 0..2**63-1 or a ``count`` outside
        1..2**63-1 (nothing is sent), :class:`ReplyError` (NOGROUP; ``ERR unknown
        command`` before Redis 6.2), :class:`ConnectionError` if the connection is lost
        or cannot be made, :class:`ChannelClosedError` after :meth:`close`.
        """
        return await self._run(_streams.docket_reclaim(self._keys, consumer, min_idle_ms, count))

    # -- raw access and lifetime ------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Run one raw Redis command on the shared connection and return its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`ReplyError`. Do not send blocking
        or subscribing commands here: they would hold up every other call.
        Waits first while the connection's write queue is over its high-water
        mark (``write_buffer_limits`` of :meth:`connect`).

        No Redis command of its own: ``args`` is sent as the command, e.g.
        ``execute("GET", key)``; each argument bytes, str (UTF-8), int or float.
        Raises :class:`InvalidArgumentError` (nothing is sent) for another argument
        type (bool included), for a command that changes the connection's protocol
        state (the SUBSCRIBE family, MONITOR, RESET, QUIT, HELLO 3, CLIENT REPLY
        OFF/SKIP) or one of 2 GiB - 64 KiB or more; :class:`ReplyError` for an error reply,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`.
        """
        conn = await self._main()
        waiter = conn.wait_writable(_command_bytes(args))
        if waiter is not None:
            # Bad input fails now, as on an idle connection, not after the wait
            # (the transport checks it only when the command is issued).
            try:
                check_args(args)
                check_command(args)
            except BaseException:
                waiter.cancel()     # gives its turn to the next waiting writer
                raise
            await waiter
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
        """Close every connection of the channel; pending calls fail with ConnectionError.

        No Redis command: the connections are closed without QUIT. Idempotent. Raises
        nothing.
        """
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            sub._shut(ChannelClosedError("the channel is closed"))
        self._shut()

    def _shut(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for timer in (self._watchdog, self._handback_timer):
            if timer is not None:
                timer.cancel()
        self._watchdog = self._handback_timer = None
        # Receivers first: an abandoned command's reply handler then sees its
        # connection fail, not a message to put back on a closed channel.
        self._receivers.close()
        if self._conn is not None:
            self._conn.close()
        if self._cluster is not None:
            self._cluster.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # A channel dropped without close(): its connections stay registered
        # with the loop, which keeps them (and their sockets and server
        # clients) alive, so close them, and say so, as asyncio's transports
        # do. Whatever still needs the channel (a call in flight, an abandoned
        # receive's reply handler, the watchdog, a reconnect) holds it, so
        # nothing runs into it after this.
        if getattr(self, "_closed", True):
            return
        message = f"unclosed {self!r}"
        self._closed = True
        conn = self._conn
        if conn is None or conn.is_closed:
            if not (self._receivers._idle or self._receivers._busy):
                return  # nothing open: never connected, or lost and not reopened
        try:
            _warn(message, ResourceWarning, source=self)
        except Exception:  # warnings turned into errors
            pass
        try:
            self._shut()
        except Exception:  # the loop is closed, or the interpreter is exiting
            pass

    async def __aenter__(self) -> Channel:
        """The channel itself; ``__aexit__`` calls :meth:`close`. No Redis command:
        :meth:`connect` already connected (AUTH and SELECT when the URL has them).
        Raises nothing."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<tinytown.Channel town={self.town!r} {self._address} {state}>"


def _split_batch(exc: ConnectionError, batch: list[Message] | tuple[Message, ...],
                 commands: list[list[Any]]) -> ConnectionError:
    """The ConnectionError of a failed send_many: ``exc``'s message, with
    ``written``/``unconfirmed`` from the indexes of the pushes Redis confirmed
    (``written_commands``, set by the cluster router; none on one server)."""
    confirmed = set(getattr(exc, "written_commands", ()))
    written: list[Message] = []
    unconfirmed: list[Message] = []
    position = 0
    for index, command in enumerate(commands):
        count = len(command) - 2  # verb, key, then one payload per message
        (written if index in confirmed else unconfirmed).extend(batch[position:position + count])
        position += count
    error = ConnectionError(str(exc))
    error.written, error.unconfirmed = tuple(written), tuple(unconfirmed)
    return error


class BroadcastSubscription:
    """Messages published on the channel's broadcast channel (``tt:<town>:broadcast``,
    or ``tt:broadcast`` in the json layout), as an async iterator.

    A message that cannot be decoded raises :class:`DecodeError` (with
    ``raw``) from ``__anext__``; the subscription stays usable, so the next
    iteration goes on with the following message.

    If the connection drops, the pending ``__anext__`` raises
    :class:`ConnectionError` once (broadcasts published while disconnected
    are missed: pub/sub keeps nothing), and the subscription re-subscribes by
    itself in the background, with the channel's backoff, until it is back
    or closed; the next ``__anext__`` goes on with what arrives after that.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._conn: OpenConnection | None = None
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._resubscribing: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    async def start(self) -> BroadcastSubscription:
        """Subscribe now (idempotent); returns once Redis confirmed the subscription
        (after a lost connection: once it is subscribed again)."""
        if self._closed:
            raise ChannelClosedError("the subscription is closed")
        if self._subscribed is None:
            self._subscribed = self._channel._loop.create_future()
            try:
                self._attach(await self._channel._open_connection())
            except BaseException:
                self._subscribed = None  # the next start() tries again
                raise
        await asyncio.shield(self._subscribed)
        return self

    def _attach(self, conn: OpenConnection) -> None:
        self._conn = conn
        self._channel._subscriptions.add(self)
        # The connection (which the loop keeps) holds the subscription weakly,
        # so a subscription its user dropped is finalized (see __del__).
        ref = weakref.ref(self)

        def on_push(item: Any) -> None:
            sub = ref()
            if sub is not None:
                sub._on_push(item)

        conn.subscribe(on_push, self._channel._broadcast_name)

    def _on_push(self, item: Any) -> None:
        # Called by the transport for every pub/sub reply, or with the error
        # when the connection goes away.
        if isinstance(item, BaseException):
            self._lost(item)
        elif type(item) is list and len(item) >= 3 and item[0] == b"message":
            self._queue.append(item[2])
        elif type(item) is list and item and item[0] == b"subscribe":
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
            return
        else:
            return
        self._wake()

    def _lost(self, error: BaseException) -> None:
        """The connection went away: report it once, and subscribe again."""
        self._conn = None
        if self._closed:
            return
        self._error = error
        loop = self._channel._loop
        previous = self._subscribed
        if previous is not None and not previous.done():
            previous.set_exception(error)
            previous.exception()  # retrieved: a start() waiting on it re-raises it
        self._subscribed = loop.create_future()
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = loop.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            # No deadline: the backoff bounds the rate, close() ends it.
            conn = await self._channel._connect(self._channel._loop.time() + math.inf)
        except (ChannelClosedError, asyncio.CancelledError):
            return
        except Exception as exc:  # not a connection problem: report it
            log.error("tinytown: broadcast subscription could not be restored: %s", exc)
            self._error = exc
            self._wake()
            return
        if self._closed:
            conn.close()
            return
        self._attach(conn)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _shut(self, error: BaseException) -> None:
        self._closed = True
        self._error = self._error or error
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        self._channel._subscriptions.discard(self)
        if self._conn is not None:
            self._conn.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> BroadcastSubscription:
        return self

    async def __anext__(self) -> Message:
        """The next broadcast, waiting as long as it takes; subscribes first
        (``SUBSCRIBE <channel>``) if :meth:`start` was not called. Raises
        :class:`DecodeError` (with ``raw``) for a broadcast that is not a Message,
        :class:`ConnectionError` once when the connection drops (it re-subscribes
        by itself), and ``StopAsyncIteration`` once closed."""
        if self._subscribed is None and not self._closed:
            await self.start()
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                error, self._error = self._error, None
                raise error
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
        """Unsubscribe and close the subscription's connection.

        No Redis command (no UNSUBSCRIBE): closing the connection ends the subscription
        on the server. Idempotent; ``aclose`` is the same call. Raises nothing.
        """
        self._shut(ChannelClosedError("the subscription is closed"))

    aclose = close

    def __del__(self) -> None:
        # Dropped by its user, typically by leaving ``async for`` with break:
        # unsubscribe, or its connection would stay subscribed, receiving
        # every broadcast for nobody, until the channel closes.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        conn = self._conn
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the loop is closed, or the interpreter is exiting
                pass

    async def __aenter__(self) -> BroadcastSubscription:
        """Subscribe (``SUBSCRIBE <channel>``, as :meth:`start`) and return the
        subscription; ``__aexit__`` calls :meth:`close`. Raises
        :class:`ChannelClosedError` if it is closed, :class:`ConnectionError` if it
        cannot connect."""
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
