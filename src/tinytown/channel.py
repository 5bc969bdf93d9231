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
import socket
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from . import _ops
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
    too_big,
)
from ._transports import Connection, connection_class
from .address import Address, parse_url
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
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._ids: dict[Connection, int | None] = {}
        self._slots = asyncio.Semaphore(size)

    async def acquire(self, deadline: float) -> Connection | None:
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

    async def _identify(self, conn: Connection) -> None:
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

    def client_id(self, conn: Connection) -> int | None:
        """The CLIENT ID of a connection of this pool, if known."""
        return self._ids.get(conn)

    def release(self, conn: Connection) -> None:
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


class Channel:
    """Tinytown's message transport on one Redis server, scoped to one town.

    Create it with :meth:`connect` (or ``await town.channel()``); close it with
    :meth:`close` or ``async with channel:``. Every method that takes an id
    accepts the id type, a :class:`uuid.UUID` or its string form.

    A Channel belongs to the event loop it was connected on and is not
    thread-safe. If the connection drops, calls in flight fail with
    :class:`tinytown.ConnectionError` and the next call reconnects, with
    exponential backoff (see :class:`tinytown.Backoff`).
    """

    def __init__(self, address: Address, town: str, *, loop: asyncio.AbstractEventLoop,
                 max_receivers: int, connect_timeout: float, transport: str | None = None,
                 backoff: Backoff = Backoff(), reconnect_timeout: float = 5.0,
                 max_message_bytes: int = 16 * 2**20) -> None:
        # Use Channel.connect(); this only wires the parts together.
        self._transport = connection_class(transport)
        self._address = address
        # redis+cluster://: every connection routes over per-node connections by slot.
        self._cluster = ClusterTopology(address, self._open_connection) if address.cluster else None
        self._keys = TownKeys(town)
        self._loop = loop
        self._connect_timeout = connect_timeout
        self._schedule = ReconnectSchedule(backoff, loop)
        self._reconnect_timeout = reconnect_timeout
        self._max_bytes = max_message_bytes
        # Blocking commands in flight: future -> (loop time to give up, connection).
        self._unanswered: dict[asyncio.Future[Any], tuple[float, Connection]] = {}
        self._gave_up: set[asyncio.Future[Any]] = set()  # cancelled by the watchdog, caller not told yet
        self._stalled = 0  # commands given up by the watchdog whose reply has not come
        self._watchdog: asyncio.TimerHandle | None = None
        self._conn: Connection | None = None
        self._reconnecting: asyncio.Task[Connection] | None = None
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
                      max_message_bytes: int = 16 * 2**20) -> Channel:
        """Connect to the Redis at ``url`` for the town ``town``.

        ``url`` is ``unix:///abs/path/redis.sock``,
        ``redis://[user:password@]host:port[/db]`` (AUTH and SELECT are done on
        connect) or ``redis+cluster://[user:password@]host:port[,host:port...]``
        (seed nodes of a Redis Cluster; each command goes to the node owning
        its key). ``max_receivers`` bounds the connections used by concurrent
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

        Raises :class:`InvalidArgumentError` for a bad URL, town name,
        transport or option, :class:`TransportUnavailableError` when no
        transport can be loaded and :class:`ConnectionError` if Redis cannot
        be reached (the first connection is tried once: a wrong address fails
        fast).
        """
        address = parse_url(url)
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
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise InvalidArgumentError(f"backoff must be a tinytown.Backoff, not {backoff!r}")
        channel = cls(address, town, loop=asyncio.get_running_loop(),
                      max_receivers=max_receivers, connect_timeout=connect_timeout,
                      transport=transport, backoff=backoff, reconnect_timeout=reconnect_timeout,
                      max_message_bytes=max_message_bytes)
        channel._conn = await channel._open_connection()
        return channel

    # -- connections --------------------------------------------------------

    async def _open_connection(self, address: Address | None = None,
                               timeout: float | None = None) -> Connection:
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
            try:
                infos = await self._loop.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ConnectionError(f"cannot resolve Redis host {address.host!r}: {exc}") from None
            # Try every address in order ("localhost" may give ::1 first).
            error: ConnectionError | None = None
            for ip in dict.fromkeys(info[4][0] for info in infos):
                try:
                    conn = await self._connect_one(lambda c: c.connect_tcp(ip, address.port), timeout)
                    break
                except ConnectionError as exc:
                    error = exc
            else:
                raise error or ConnectionError(f"cannot resolve Redis host {address.host!r}")
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

    async def _connect_one(self, start: Any, timeout: float) -> Connection:
        conn = self._transport(self._loop)
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

    async def _log_in(self, conn: Connection) -> None:
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

    async def _connect(self, deadline: float) -> Connection:
        """A new connection, retried with backoff until ``deadline`` (loop time)."""
        return await self._schedule.connect(
            lambda timeout: self._open_connection(timeout=timeout), deadline, str(self._address))

    async def _reconnect(self) -> Connection:
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
        if len(payload) > self._max_bytes:
            raise too_big("message", payload, self._max_bytes)
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
        commands = push_commands(messages, self._keys.inbox_prefix, self._max_bytes)
        if not commands:
            if self._closed:
                raise ChannelClosedError("the channel is closed")
            return
        conn = await self._main()
        await conn.execute_many(commands, False)

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
        """
        agent = AgentId(agent_id)
        key = self._keys.inbox_prefix + agent
        reply = await self._blocking(timeout, lambda seconds: (b"BLPOP", key, seconds),
                                     self._abandoned_pop)
        if reply is None:
            return None
        return await self._decode(agent, reply[1])

    async def _blocking(self, timeout: float | timedelta, command: Callable[[str], tuple[Any, ...]],
                        on_abandoned: Callable[[Connection, Any], None]) -> Any:
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
        for attempt in (1, 2):
            conn = await self._receivers.acquire(deadline)
            if conn is None:
                if self._stalled:
                    raise ConnectionError(
                        f"Redis has not answered {self._stalled} earlier blocking receives, which "
                        "hold the receiver connections (server paused or unreachable)")
                return None
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

    def _abandon(self, sent: int, conn: Connection, on_abandoned: Callable[[Connection, Any], None],
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

    def _unblock(self, conn: Connection, fut: asyncio.Future[Any], attempt: int) -> None:
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
            if getattr(fut, "orphan", None) is None:
                return
            if f.cancelled() or f.exception() is not None:  # denied, or main connection lost
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

    def _drop_blocked(self, conn: Connection, fut: asyncio.Future[Any]) -> None:
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
            conn = await self._main()
            await conn.execute_many([command for command, _ in batch], False)
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
        for fut, (expiry, conn) in list(self._unanswered.items()):
            if now >= expiry and not fut.done():
                del self._unanswered[fut]
                self._gave_up.add(fut)
                self._stalled += 1
                fut.orphan = self._stall_handler(fut.orphan)
                fut.cancel()
        if self._unanswered and not self._closed:
            self._watchdog = self._loop.call_later(_WATCHDOG_TICK, self._watch)

    def _stall_handler(self, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        def stall_over(reply: Any) -> None:
            self._stalled -= 1
            handler(reply)

        return stall_over

    def _abandoned_pop(self, conn: Connection, reply: Any) -> None:
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

    # -- reliable receive (tinytown.reliable) --------------------------------

    async def receive_reliable(self, agent_id: AgentId | Any,
                               timeout: float | timedelta) -> Delivery | None:
        """Like :meth:`receive`, but at-least-once: returns a :class:`Delivery`
        to :meth:`ack` once processed, or None if nothing came in ``timeout``.

        The message moves atomically (BLMOVE) from the inbox to
        ``tt:<town>:processing:<agent>`` and stays there until acked, so a
        consumer that crashes, is killed or loses its connection loses
        nothing: :meth:`reclaim` puts what it left back in the inbox. Use one
        consumer per agent, and reclaim when it (re)starts. An undecodable
        message goes from the processing list to the dead-letter list and
        raises :class:`DecodeError` (with ``raw``). If the caller is
        cancelled, a message already moved goes back to the inbox's front.
        Needs Redis >= 6.2; not available on a Redis Cluster.
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

    def _abandoned_move(self, conn: Connection, reply: Any, inbox: str, processing: str) -> None:
        """The reply of a BLMOVE whose caller stopped waiting: move its message back."""
        self._receivers.release(conn)
        if not isinstance(reply, bytes):  # timed out, or the connection failed
            return
        self._requeue((b"EVAL", MOVE_ENTRY_SCRIPT, 2, processing, inbox, reply, LPUSH), reply)

    async def ack(self, delivery: Delivery) -> bool:
        """Remove a delivery from the processing list: it is done.

        True if it was there; False if it was not (already acked, or
        reclaimed meanwhile, in which case it will be delivered again).
        """
        if not isinstance(delivery, Delivery):
            raise InvalidArgumentError(
                f"ack() takes the Delivery returned by receive_reliable(), not {type(delivery).__name__}")
        conn = await self._main()
        removed = await conn.execute(b"LREM", self._keys.processing(delivery.agent_id), 1, delivery.raw)
        return removed > 0

    async def reclaim(self, agent_id: AgentId | Any) -> int:
        """Move every unacked message of the agent back to the front of its
        inbox, in the order they were received; returns how many moved.

        Atomic (one Lua script). Call it when the agent's consumer starts,
        before its first :meth:`receive_reliable`: while a consumer is alive,
        its messages in processing are not abandoned, and reclaiming them
        would deliver them twice.
        """
        self._check_not_cluster("reclaim")
        agent = AgentId(agent_id)
        conn = await self._main()
        return await conn.execute(b"EVAL", RECLAIM_SCRIPT, 2, self._keys.processing(agent),
                                  self._keys.inbox_prefix + agent)

    def _check_not_cluster(self, operation: str) -> None:
        if self._cluster is not None:
            raise InvalidArgumentError(
                f"{operation}() is not available on a Redis Cluster: it moves messages between "
                "an inbox and a processing list in one command, and Tinytown's key names put "
                "them on different hash slots")

    async def processing_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages received reliably by the agent and not yet acked."""
        conn = await self._main()
        return await conn.execute(b"LLEN", self._keys.processing(AgentId(agent_id)))

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
        if len(payload) > self._max_bytes:
            raise too_big("message", payload, self._max_bytes)
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
        if len(payload) > self._max_bytes:
            raise too_big("agent state", payload, self._max_bytes)
        conn = await self._main()
        await conn.execute(b"SET", self._keys.agent_prefix + AgentId(agent.id), payload)

    async def get_agent_state(self, agent_id: AgentId | Any) -> Agent | None:
        """The stored Agent, or None when absent (JSON or the newer Hash layout)."""
        key = self._keys.agent_prefix + AgentId(agent_id)
        return decode_agent(await self._get_state(key))

    async def set_task(self, task: Task) -> None:
        """Store ``task`` at ``tt:<town>:task:<id>``."""
        payload = check_task(task).to_json()
        if len(payload) > self._max_bytes:
            raise too_big("task", payload, self._max_bytes)
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

    # -- stop flag --------------------------------------------------------------

    async def request_stop(self, agent_id: AgentId | Any) -> None:
        """Ask the agent to stop: ``SETEX tt:<town>:stop:<agent> 3600 1`` (the flag lives 1 h)."""
        await self._run(_ops.request_stop(self._keys, agent_id))

    async def should_stop(self, agent_id: AgentId | Any) -> bool:
        """True if a stop was requested for the agent (``EXISTS tt:<town>:stop:<agent>``)."""
        return await self._run(_ops.should_stop(self._keys, agent_id))

    async def clear_stop(self, agent_id: AgentId | Any) -> None:
        """Withdraw a stop request (``DEL tt:<town>:stop:<agent>``)."""
        await self._run(_ops.clear_stop(self._keys, agent_id))

    async def _run(self, op: _ops.Op[_T]) -> _T:
        """Drive a sans-I/O operation of :mod:`tinytown._ops` on the main connection."""
        step = next(op)  # argument checks run here, before anything is sent
        conn = self._conn
        if conn is None or conn.is_closed:
            conn = await self._reconnect()
        try:
            while True:
                try:
                    if type(step) is tuple:
                        reply = await conn.execute(*step)
                    else:
                        reply = await conn.execute_many(step, True)
                except ReplyError as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            op.close()

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

    If the connection drops, the pending ``__anext__`` raises
    :class:`ConnectionError` once (broadcasts published while disconnected
    are missed: pub/sub keeps nothing), and the subscription re-subscribes by
    itself in the background, with the channel's backoff, until it is back
    or closed; the next ``__anext__`` goes on with what arrives after that.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._conn: Connection | None = None
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

    def _attach(self, conn: Connection) -> None:
        self._conn = conn
        self._channel._subscriptions.add(self)
        # The connection (which the loop keeps) holds the subscription weakly,
        # so a subscription its user dropped is finalized (see __del__).
        ref = weakref.ref(self)

        def on_push(item: Any) -> None:
            sub = ref()
            if sub is not None:
                sub._on_push(item)

        conn.subscribe(on_push, _BROADCAST)

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
        """Unsubscribe and close the subscription's connection."""
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
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
