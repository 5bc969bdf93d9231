"""SyncChannel: Tinytown's Channel for plain (non-asyncio) Python.

The same operations, keys, JSON and errors as :class:`tinytown.Channel`, as
blocking calls over hiredis's plain ``redisContext``: no event loop. The GIL
is released while a call waits on Redis, so other threads run meanwhile; each
thread should open its own SyncChannel.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from . import _ops
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
from ._transport import SyncConnection
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

__all__ = ["SyncChannel", "SyncBroadcastSubscription"]

log = logging.getLogger("tinytown")

_T = TypeVar("_T")

_BROADCAST = BROADCAST_CHANNEL.encode()
_BLPOP = b"BLPOP"
_LPOP = b"LPOP"
_LLEN = b"LLEN"
_GET = b"GET"
_SET = b"SET"
# How long past its own timeout a BLPOP may take to answer before the server
# is considered gone (Redis checks blocked clients' timeouts 10 times a second).
_BLPOP_GRACE = 10.0
# Without CLIENT UNBLOCK, how long an interrupted receive waits for a reply
# already on its way before it drops the connection.
_FALLBACK_WAIT = 0.1


class SyncChannel:
    """Tinytown's message transport on one Redis server, scoped to one town; blocking.

    Create it with :meth:`connect`; close it with :meth:`close` or ``with``.
    Every method that takes an id accepts the id type, a :class:`uuid.UUID`
    or its string form.

    One SyncChannel per thread: a call made while another thread is inside a
    call on the same channel raises :class:`tinytown.ConcurrentUseError`.
    :meth:`close` may be called from any thread; a call blocked in another
    thread (a :meth:`receive`) then fails with :class:`tinytown.ConnectionError`.
    If the connection drops, the call fails with ConnectionError and the
    next call reconnects.
    """

    def __init__(self, address: Address, town: str, *, connect_timeout: float) -> None:
        # Use SyncChannel.connect(); this only wires the parts together.
        self._address = address
        self._keys = TownKeys(town)
        # Prefixes kept as attributes: one lookup on the hot path.
        self._inbox_prefix = self._keys.inbox_prefix
        self._agent_prefix = self._keys.agent_prefix
        self._task_prefix = self._keys.task_prefix
        self._connect_timeout = connect_timeout
        self._conn: SyncConnection | None = None
        self._client_id: int | None = None   # CLIENT ID of _conn, to unblock a BLPOP
        # Weak: a subscription dropped by its user (``break`` out of its
        # ``for`` loop) is finalized, which unsubscribes it.
        self._subscriptions: weakref.WeakSet[SyncBroadcastSubscription] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def connect(cls, url: str, town: str, *, connect_timeout: float = 5.0) -> SyncChannel:
        """Connect to the Redis at ``url`` for the town ``town``.

        ``url`` is ``unix:///abs/path/redis.sock`` or
        ``redis://[user:password@]host:port[/db]`` (AUTH and SELECT are done on
        connect). Raises :class:`InvalidArgumentError` for a bad URL or town
        name and :class:`ConnectionError` if Redis cannot be reached within
        ``connect_timeout`` seconds.
        """
        address = parse_url(url)
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) \
                or not 0 < connect_timeout < float("inf"):
            raise InvalidArgumentError(f"connect_timeout must be positive, not {connect_timeout!r}")
        channel = cls(address, town, connect_timeout=float(connect_timeout))
        channel._reconnect()
        return channel

    # -- connections --------------------------------------------------------

    def _open_connection(self, *, want_id: bool = False) -> tuple[SyncConnection, int | None]:
        """A new logged-in connection to this channel's server (and its CLIENT ID)."""
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        address = self._address
        conn = self._connect()
        client_id: int | None = None
        try:
            login = login_commands(address)
            if login:
                try:
                    conn.execute_many(login, False)
                except ReplyError as exc:
                    raise ConnectionError(f"Redis at {address} refused the login: {exc}") from None
            if want_id:
                try:
                    client_id = conn.execute(b"CLIENT", b"ID")
                except ReplyError:
                    client_id = None   # CLIENT not allowed for this user: see _abandon_pop
        except BaseException:
            conn.close()
            raise
        return conn, client_id

    def _connect(self) -> SyncConnection:
        address = self._address
        if address.unix_path is not None:
            conn = SyncConnection()
            conn.connect_unix(address.unix_path, self._connect_timeout)
            return conn
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectionError(f"cannot resolve Redis host {address.host!r}: {exc}") from None
        # Try every address in order, as Channel does ("localhost" may give ::1 first).
        error: ConnectionError | None = None
        for ip in dict.fromkeys(info[4][0] for info in infos):
            conn = SyncConnection()
            try:
                conn.connect_tcp(ip, address.port, self._connect_timeout)
                return conn
            except ConnectionError as exc:
                error = exc
        raise error or ConnectionError(f"cannot resolve Redis host {address.host!r}")

    def _reconnect(self) -> SyncConnection:
        """The main connection, (re)opened."""
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        old = self._conn
        if old is not None:
            old.close()
            self._conn = None
        conn, self._client_id = self._open_connection(want_id=True)
        self._conn = conn
        return conn

    def _main(self) -> SyncConnection:
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        return conn

    # -- messages -------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Put ``message`` in its recipient's inbox.

        Urgent and high priority go to the front (LPUSH), normal and low to
        the back (RPUSH).
        """
        check_message(message, "send")
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        # message.to is an AgentId already: Message checks its fields.
        conn.execute(LPUSH if message.priority.is_front else RPUSH,
                     self._inbox_prefix + message.to, message.to_json())

    def send_many(self, messages: Iterable[Message]) -> None:
        """Send many messages in one pipelined round trip, in order.

        Placement follows :meth:`send`. Every message is encoded before
        anything is sent, so a message that cannot be encoded sends nothing.
        """
        commands = push_commands(messages, self._inbox_prefix)
        if not commands:
            return
        self._main().execute_many(commands, False)

    def receive(self, agent_id: AgentId | Any, timeout: float | timedelta) -> Message | None:
        """Wait up to ``timeout`` (seconds or timedelta) for a message; None if none came.

        Runs BLPOP, with the GIL released. If a signal handler raises
        (Ctrl-C) at any point after the BLPOP was sent, while it waits, as
        its reply is read or as the message is decoded, the BLPOP is stopped
        and a message it took is put back at the front of the inbox before
        the exception propagates: nothing is lost, nothing duplicated. (Once
        receive() has returned, the message is the caller's.)
        """
        agent = AgentId(agent_id)
        key = self._inbox_prefix + agent
        seconds = blpop_timeout(timeout)
        conn = self._main()
        client_id = self._client_id
        # The reply goes into ``box`` from C (map and list.extend): Python
        # runs a signal handler only between bytecodes, and none runs between
        # read_reply returning the reply and its being kept there, so the
        # except clauses below always know whether it was read.
        box: list[Any] = []
        try:
            conn.send_command(_BLPOP, key, seconds)
            box.extend(map(conn.read_reply, (float(seconds) + _BLPOP_GRACE,)))
            reply = box[0]
            if reply is None:
                return None
            try:
                return Message.from_json(reply[1])
            except DecodeError as exc:
                # The decoder turns any Exception raised inside it into a
                # DecodeError, a signal handler's too: decoding again tells.
                interruption = exc.__context__
                try:
                    Message.from_json(reply[1])
                except DecodeError:
                    pass
                else:
                    raise interruption or exc from None  # handled below: put back
            return self._decode(agent, reply[1])  # dead-letters it, raises DecodeError
        except DecodeError:
            raise  # undecodable: kept in the dead-letter list by _decode
        except TimeoutError:
            if box or not conn.pending_replies or conn.is_closed:
                self._interrupted_pop(conn, client_id, key, box)
                raise
            conn.close()
            raise ConnectionError(
                f"Redis at {self._address} did not answer BLPOP within {seconds} s "
                f"+ {_BLPOP_GRACE:g} s; connection dropped") from None
        except BaseException:
            self._interrupted_pop(conn, client_id, key, box)
            raise

    def _interrupted_pop(self, conn: SyncConnection, client_id: int | None, key: str,
                         box: list[Any]) -> None:
        """receive() is ending with an exception: give back what its BLPOP took.

        ``box`` holds the BLPOP's reply if it was read (then it goes back
        to the front of the inbox); else, if the BLPOP is still pending, it
        is stopped (see _abandon_pop). An error reply leaves nothing pending.
        """
        if box:
            reply = box[0]
            if reply is None:
                return
            try:
                self._main().execute(LPUSH, reply[0], reply[1])
            except BaseException as exc:
                log.error("tinytown: receive() interrupted after taking a message, which could "
                          "not be put back (%s); lost: %r", exc, reply[1])
        elif not conn.is_closed and conn.pending_replies:
            self._abandon_pop(conn, client_id, key)

    def _abandon_pop(self, conn: SyncConnection, client_id: int | None, key: str) -> None:
        """A BLPOP's wait was interrupted (a signal handler raised): stop it
        without losing the message it may have taken already.

        CLIENT UNBLOCK, sent on a side connection, ends the BLPOP; its reply,
        read next, is then either nil or the popped message, which goes back
        to the front of the inbox (as Channel does for a cancelled receive).
        """
        try:
            if client_id is not None:
                side, _ = self._open_connection()
                try:
                    side.execute(b"CLIENT", b"UNBLOCK", client_id)
                finally:
                    side.close()
                reply = conn.read_reply(_BLPOP_GRACE)
            else:
                # No CLIENT command for this user: take a reply that is here
                # or on its way, then drop the connection, which ends the
                # BLPOP (best effort: a pop after this wait would be lost).
                try:
                    reply = conn.read_reply(_FALLBACK_WAIT)
                except TimeoutError:
                    reply = None
                    conn.close()
            if reply is not None:
                conn.execute(LPUSH, reply[0], reply[1])
        except BaseException as exc:
            log.error("tinytown: receive() interrupted and the BLPOP could not be ended "
                      "cleanly (%s); a message it took may be lost", exc)
            conn.close()

    def try_receive(self, agent_id: AgentId | Any) -> Message | None:
        """Take the first message of the inbox without waiting (LPOP); None if empty."""
        agent = AgentId(agent_id)
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        raw = conn.execute(_LPOP, self._inbox_prefix + agent)
        if raw is None:
            return None
        return self._decode(agent, raw)

    def _decode(self, agent: AgentId, raw: bytes) -> Message:
        """Decode a popped message; an undecodable one goes to the dead-letter list.

        It is already out of the inbox, so it is kept at ``tt:<town>:dead:<agent>``
        before the DecodeError (carrying ``raw``) reaches the caller.
        """
        try:
            return Message.from_json(raw)
        except DecodeError as exc:
            try:
                self._main().execute(RPUSH, self._keys.dead(agent), raw)
            except Exception as store_exc:  # the caller still gets raw
                log.error("tinytown: could not dead-letter %r: %s", raw, store_exc)
            exc.raw = raw
            raise

    def inbox_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages waiting in the agent's inbox (LLEN)."""
        key = self._inbox_prefix + AgentId(agent_id)
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        return conn.execute(_LLEN, key)  # type: ignore[no-any-return]

    def broadcast(self, message: Message) -> int:
        """Publish ``message`` on ``tt:broadcast``; returns how many subscribers got it."""
        check_message(message, "broadcast")
        payload = message.to_json()
        return self._main().execute(b"PUBLISH", _BROADCAST, payload)  # type: ignore[no-any-return]

    def broadcasts(self) -> SyncBroadcastSubscription:
        """Subscribe to broadcasts: ``for message in channel.broadcasts(): ...``.

        The subscription has a connection of its own, opened on first
        iteration (or on ``with``/``sub.start()``, to be sure to be subscribed
        before something is published). Use it from one thread; its
        :meth:`~SyncBroadcastSubscription.close` works from any thread.
        """
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        return SyncBroadcastSubscription(self)

    # -- state ----------------------------------------------------------------

    def set_agent_state(self, agent: Agent) -> None:
        """Store ``agent`` at ``tt:<town>:agent:<id>`` (JSON, as Tinytown's Rust code does)."""
        payload = check_agent(agent).to_json()
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        conn.execute(_SET, self._agent_prefix + AgentId(agent.id), payload)

    def get_agent_state(self, agent_id: AgentId | Any) -> Agent | None:
        """The stored Agent, or None when absent (JSON or the newer Hash layout)."""
        return decode_agent(self._get_state(self._agent_prefix + AgentId(agent_id)))

    def set_task(self, task: Task) -> None:
        """Store ``task`` at ``tt:<town>:task:<id>``."""
        payload = check_task(task).to_json()
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        conn.execute(_SET, self._task_prefix + TaskId(task.id), payload)

    def get_task(self, task_id: TaskId | Any) -> Task | None:
        """The stored Task, or None when absent (JSON or the newer Hash layout)."""
        return decode_task(self._get_state(self._task_prefix + TaskId(task_id)))

    def _get_state(self, key: str) -> bytes | list[bytes] | None:
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        try:
            return conn.execute(_GET, key)  # type: ignore[no-any-return]
        except ReplyError as exc:
            if not is_wrongtype(exc):
                raise
        # Newer Tinytown releases keep state as a Hash at the same key.
        return conn.execute(b"HGETALL", key)  # type: ignore[no-any-return]

    # -- stop flag --------------------------------------------------------------

    def request_stop(self, agent_id: AgentId | Any) -> None:
        """Ask the agent to stop: ``SETEX tt:<town>:stop:<agent> 3600 1`` (the flag lives 1 h)."""
        self._run(_ops.request_stop(self._keys, agent_id))

    def should_stop(self, agent_id: AgentId | Any) -> bool:
        """True if a stop was requested for the agent (``EXISTS tt:<town>:stop:<agent>``)."""
        return self._run(_ops.should_stop(self._keys, agent_id))

    def clear_stop(self, agent_id: AgentId | Any) -> None:
        """Withdraw a stop request (``DEL tt:<town>:stop:<agent>``)."""
        self._run(_ops.clear_stop(self._keys, agent_id))

    def _run(self, op: _ops.Op[_T]) -> _T:
        """Drive a sans-I/O operation of :mod:`tinytown._ops` on the main connection."""
        step = next(op)  # argument checks run here, before anything is sent
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        try:
            while True:
                try:
                    if type(step) is tuple:
                        reply = conn.execute(*step)
                    else:
                        reply = conn.execute_many(step, True)
                except ReplyError as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            op.close()

    # -- raw access and lifetime ------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Run one raw Redis command and return its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`ReplyError`. Do not send
        subscribing commands (SUBSCRIBE, MONITOR) here.
        """
        return self._main().execute(*args)

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

    def close(self) -> None:
        """Close every connection of the channel (from any thread); idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            sub.close()
        conn = self._conn
        if conn is not None:
            conn.close()

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<tinytown.SyncChannel town={self.town!r} {self._address} {state}>"


class SyncBroadcastSubscription:
    """Messages published on ``tt:broadcast``, as a blocking iterator.

    ``for message in sub`` waits for each message; :meth:`get` waits at most
    a given time. A message that cannot be decoded raises
    :class:`DecodeError` (with ``raw``); the subscription stays usable. If the
    connection drops, the call raises :class:`ConnectionError` and the next
    one subscribes again (messages published in between are missed: pub/sub
    keeps nothing). Iteration ends when the subscription or its channel is
    closed, also from another thread.
    """

    def __init__(self, channel: SyncChannel) -> None:
        self._channel = channel
        self._conn: SyncConnection | None = None
        self._closed = False

    def start(self) -> SyncBroadcastSubscription:
        """Subscribe now (idempotent); returns once Redis confirmed the subscription."""
        if self._closed:
            raise ChannelClosedError("the subscription is closed")
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return self
        conn, _ = self._channel._open_connection()
        try:
            conn.send_command(b"SUBSCRIBE", _BROADCAST)
            conn.read_reply()   # [b"subscribe", b"tt:broadcast", 1]
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._channel._subscriptions.add(self)
        if self._closed:   # closed by another thread meanwhile
            conn.close()
        return self

    def get(self, timeout: float | None = None) -> Message | None:
        """The next broadcast; waits at most ``timeout`` seconds (None: no limit)
        and returns None if nothing came. Raises ChannelClosedError once closed."""
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        conn = self._conn
        assert conn is not None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = conn.read_reply(left)
            except TimeoutError:
                return None
            except ConnectionError:
                if self._closed:
                    raise ChannelClosedError("the subscription is closed") from None
                raise
            if item[0] == b"message":
                raw = item[2]
                try:
                    return Message.from_json(raw)
                except DecodeError as exc:
                    exc.raw = raw
                    raise

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        if self._closed:
            raise StopIteration
        try:
            message = self.get()
        except ChannelClosedError:
            raise StopIteration from None
        assert message is not None
        return message

    def close(self) -> None:
        """Unsubscribe and close the subscription's connection (from any thread)."""
        self._closed = True
        self._channel._subscriptions.discard(self)
        conn = self._conn
        if conn is not None:
            conn.close()

    def __del__(self) -> None:
        # Dropped by its user, typically by leaving ``for`` with break:
        # unsubscribe, or its connection would stay subscribed until the
        # channel closes, with every later broadcast queued in its socket.
        if getattr(self, "_closed", True):
            return
        self._closed = True
        conn = self._conn
        if conn is not None:
            conn.close()

    def __enter__(self) -> SyncBroadcastSubscription:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
