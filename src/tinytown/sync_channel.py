"""SyncChannel: Tinytown's Channel for plain (non-asyncio) Python.

The same operations, keys, JSON and errors as :class:`tinytown.Channel`, as
blocking calls over hiredis's plain ``redisContext``: no event loop. The GIL
is released while a call waits on Redis, so other threads run meanwhile; each
thread should open its own SyncChannel.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl as ssl_module
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _ops, _ops_inbox, _ops_state
from . import _ops_streams as _streams
from ._commands import (
    LPUSH,
    RPUSH,
    blpop_timeout,
    check_message,
    login_commands,
    push_commands,
    push_verb,
)
from ._transport.choose import sync_connection_class, tls_sync_connection_class
from .address import Address, connect_each_ip, parse_url, with_tls
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

if TYPE_CHECKING:
    from .events import TownEvent
    from ._transport.ext import SyncConnection

__all__ = ["SyncChannel", "SyncBroadcastSubscription"]

log = logging.getLogger("tinytown")

_T = TypeVar("_T")

_BROADCAST = BROADCAST_CHANNEL.encode()
_BLPOP = b"BLPOP"
_LLEN = b"LLEN"
# How long past its own timeout a BLPOP may take to answer before the server
# is considered gone (Redis checks blocked clients' timeouts 10 times a second).
_BLPOP_GRACE = 10.0
# An interrupted pop's put-back that meets a dropped connection is written again on
# a fresh one until this many seconds have passed (then it is logged as lost).
_PUTBACK_RETRY = 5.0
# Without CLIENT UNBLOCK, how long an interrupted receive waits for a reply
# already on its way before it drops the connection.
_FALLBACK_WAIT = 0.1


class SyncChannel:
    """Tinytown's message transport on one Redis server, scoped to one town; blocking.

    Create it with :meth:`connect`; close it with :meth:`close` or ``with``.
    Every method that takes an id accepts the id type, a :class:`uuid.UUID`
    or its string form
    (hyphenated, 32 hex digits, ``{braced}`` or ``urn:uuid:``, any case, as
    Tinytown reads them; keys always use the lowercase hyphenated form); any
    other value raises :class:`tinytown.InvalidArgumentError` before
    anything is sent. Unless a method says otherwise, a key holding another
    Redis type raises :class:`tinytown.ReplyError` (WRONGTYPE) and is left
    as it is.

    One SyncChannel per thread: a call made while another thread is inside a
    call on the same channel raises :class:`tinytown.ConcurrentUseError`.
    :meth:`close` may be called from any thread; a call blocked in another
    thread (a :meth:`receive`) then fails with :class:`tinytown.ConnectionError`.
    If the connection drops, the call fails with ConnectionError and the
    next call reconnects.
    """

    def __init__(self, address: Address, town: str, *, connect_timeout: float,
                 transport: str | None = None, layout: str = "hash") -> None:
        # Use SyncChannel.connect(); this only wires the parts together.
        self._connection_class = (tls_sync_connection_class(transport, address) if address.tls
                                  else sync_connection_class(transport))
        self._address = address
        self._layout = _ops_state.check_layout(layout)
        self._keys = TownKeys(town)
        # Tinytown 0.7-0.10 publish on the town's channel; the Channels page on one for all towns.
        self._broadcast_name = (self._keys.broadcast.encode() if self._layout == "hash"
                                else _BROADCAST)
        # Prefixes kept as attributes: one lookup on the hot path.
        self._inbox_prefix = self._keys.inbox_prefix
        self._connect_timeout = connect_timeout
        self._conn: SyncConnection | None = None
        self._client_id: int | None = None   # CLIENT ID of _conn, to unblock a BLPOP
        # Weak: a subscription dropped by its user (``break`` out of its
        # ``for`` loop) is finalized, which unsubscribes it.
        self._subscriptions: weakref.WeakSet[SyncBroadcastSubscription] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def connect(cls, url: str, town: str, *, connect_timeout: float = 5.0,
                transport: str | None = None, layout: str = "hash",
                ssl: ssl_module.SSLContext | None = None,
                ssl_ca_file: str | os.PathLike[str] | None = None,
                ssl_certfile: str | os.PathLike[str] | None = None,
                ssl_keyfile: str | os.PathLike[str] | None = None,
                ssl_check_hostname: bool = True) -> SyncChannel:
        """Connect to the Redis at ``url`` for the town ``town``.

        ``url`` is ``unix:///abs/path/redis.sock`` or
        ``redis://[user:password@]host:port[/db]`` (AUTH and SELECT are done on
        connect). ``layout`` is ``"hash"`` (default: Tinytown 0.7-0.10 as
        released, state as Hashes, broadcasts on ``tt:<town>:broadcast``) or
        ``"json"`` (the Channels page: JSON strings, ``tt:broadcast``), as
        :meth:`tinytown.Channel.connect`. ``rediss://`` connects over TLS, with the options of
        :meth:`tinytown.Channel.connect` (``ssl_ca_file``, ``ssl_certfile``,
        ``ssl_keyfile``, ``ssl_check_hostname``, or ``ssl``, an
        :class:`ssl.SSLContext`) and the pure-Python transport
        (``ssl.SSLSocket``). ``transport`` is ``"hiredis"`` (the C extension) or
        ``"python"`` (a plain socket and the hiredis package's parser); None
        means ``$TINYTOWN_TRANSPORT``, else the extension if it loads, else
        Python. Raises :class:`InvalidArgumentError` for a bad URL, town name
        transport or layout, :class:`TransportUnavailableError` when no transport
        can be loaded and :class:`ConnectionError` if Redis cannot be reached
        within ``connect_timeout`` seconds.
        """
        _ops_state.check_layout(layout)
        address = with_tls(parse_url(url), ssl=ssl, ssl_ca_file=ssl_ca_file, ssl_certfile=ssl_certfile,
                           ssl_keyfile=ssl_keyfile, ssl_check_hostname=ssl_check_hostname)
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) \
                or not 0 < connect_timeout < float("inf"):
            raise InvalidArgumentError(f"connect_timeout must be positive, not {connect_timeout!r}")
        channel = cls(address, town, connect_timeout=float(connect_timeout), transport=transport,
                      layout=layout)
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
                    client_id = cast(int, conn.execute(b"CLIENT", b"ID"))
                except ReplyError:
                    client_id = None   # CLIENT not allowed for this user: see _abandon_pop
        except BaseException:
            conn.close()
            raise
        return conn, client_id

    def _connect(self) -> SyncConnection:
        address = self._address
        if address.unix_path is not None:
            conn = self._connection_class()
            conn.connect_unix(address.unix_path, self._connect_timeout)
            return conn

        def attempt(ip: str) -> SyncConnection:
            conn = self._connection_class()
            if address.tls:   # the Python SyncConnection (see __init__)
                conn.connect_tcp(ip, address.port, self._connect_timeout,  # type: ignore[call-arg]
                                 tls=address.ssl_context, server_hostname=address.host)
            else:
                conn.connect_tcp(ip, address.port, self._connect_timeout)
            return conn

        return connect_each_ip(address, attempt)

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

        Key: ``tt:<town>:inbox:<message.to>``; one ``LPUSH``/``RPUSH <key> <json>``.
        Raises :class:`InvalidArgumentError` for a non-Message and :class:`EncodeError`
        for one that JSON cannot carry (nothing is sent), :class:`ReplyError`
        (WRONGTYPE) if the key holds another type, :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`, :class:`ConcurrentUseError` if another thread is in a call on
        this channel.
        """
        check_message(message, "send")
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        # message.to is an AgentId already: Message checks its fields.
        conn.execute(push_verb(message),
                     self._inbox_prefix + message.to, message.to_json())

    def send_many(self, messages: Iterable[Message]) -> None:
        """Send many messages in one pipelined round trip, in order.

        Placement follows :meth:`send`. Every message is encoded before
        anything is sent, so a message that cannot be encoded sends nothing.

        Pushes: ``LPUSH``/``RPUSH tt:<town>:inbox:<to> <json>...``, one variadic push
        per run of messages for the same inbox and end. Raises
        :class:`InvalidArgumentError` for a non-Message and :class:`EncodeError` for one
        that JSON cannot carry (nothing is sent), :class:`ReplyError` (the first error
        reply, e.g. WRONGTYPE; the other pushes are done), :class:`ConnectionError` if
        the connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`, :class:`ConcurrentUseError` if another thread is in a call on
        this channel.
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

        Key: ``tt:<town>:inbox:<agent>``. Raises :class:`InvalidArgumentError` for a bad
        id or a ``timeout`` that is not a positive, finite number of seconds or a
        timedelta (nothing is sent), :class:`DecodeError` (with ``raw``; the message is
        moved to ``tt:<town>:dead:<agent>``) for an undecodable message,
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
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
            self._restore([(LPUSH, reply[0], reply[1])])  # (retried on a fresh connection)
        elif not conn.is_closed and conn.pending_replies:
            self._abandon_pop(conn, client_id, key)

    def _abandon_pop(self, conn: SyncConnection, client_id: int | None, key: str) -> None:
        """A BLPOP's wait was interrupted (a signal handler raised): stop it
        without losing the message it may have taken already.

        CLIENT UNBLOCK, sent on a side connection, ends the BLPOP; its reply,
        read next, is then either nil or the popped message, which goes back
        to the front of the inbox (as Channel does for a cancelled receive).
        """
        got: list[Any] = []   # the BLPOP's reply, kept in C (see receive)
        try:
            if client_id is not None:
                side, _ = self._open_connection()
                try:
                    side.execute(b"CLIENT", b"UNBLOCK", client_id)
                finally:
                    side.close()
                got.extend(map(conn.read_reply, (_BLPOP_GRACE,)))
            else:
                # No CLIENT command for this user: take a reply that is here
                # or on its way, then drop the connection, which ends the
                # BLPOP (best effort: a pop after this wait would be lost).
                try:
                    got.extend(map(conn.read_reply, (_FALLBACK_WAIT,)))
                except TimeoutError:
                    conn.close()
        except BaseException as exc:
            log.error("tinytown: receive() interrupted and the BLPOP could not be ended "
                      "cleanly (%s); a message it took may be lost", exc)
            conn.close()
        if got and got[0] is not None:
            reply = got[0]
            try:
                self._main().execute(LPUSH, reply[0], reply[1])
            except BaseException as exc:
                log.error("tinytown: receive() interrupted after taking a message, which could "
                          "not be put back (%s); lost: %r", exc, reply[1])

    def try_receive(self, agent_id: AgentId | Any) -> Message | None:
        """Take the first message of the inbox without waiting (``LPOP
        tt:<town>:inbox:<agent>``); None if it is empty.

        If a signal handler raises (Ctrl-C) while the reply is awaited, the
        reply is still read and a message it took goes back to the front of
        the inbox before the exception propagates: nothing is lost. An
        undecodable message is moved to ``tt:<town>:dead:<agent>`` and
        :class:`DecodeError` (with ``raw``) is raised.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`DecodeError` for an undecodable message (as above), :class:`ReplyError`
        (WRONGTYPE) if the key holds another type, :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`, :class:`ConcurrentUseError` if another thread is in a call on
        this channel.
        """
        return self._run(_ops_inbox.try_receive(self._keys, agent_id))

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
        """Number of messages waiting in the agent's inbox (LLEN).

        Key: ``tt:<town>:inbox:<agent>``. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another
        type, :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        key = self._inbox_prefix + AgentId(agent_id)
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        n = conn.execute(_LLEN, key)
        return n if type(n) is int else _ops.int_reply(n, "LLEN")

    def broadcast(self, message: Message) -> int:
        """Publish ``message`` (``PUBLISH``) on the layout's broadcast channel:
        ``tt:<town>:broadcast`` (hash layout) or ``tt:broadcast`` (json
        layout); returns how many subscribers got it.

        Raises :class:`InvalidArgumentError` for a non-Message and :class:`EncodeError`
        for one that JSON cannot carry (nothing is published), :class:`ConnectionError`
        if the connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`, :class:`ConcurrentUseError` if another thread is in a call on
        this channel.
        """
        check_message(message, "broadcast")
        payload = message.to_json()
        return _ops.int_reply(self._main().execute(b"PUBLISH", self._broadcast_name, payload), "PUBLISH")

    def broadcasts(self) -> SyncBroadcastSubscription:
        """Subscribe to broadcasts: ``for message in channel.broadcasts(): ...``.

        The channel is the layout's: ``tt:<town>:broadcast`` (hash layout)
        or ``tt:broadcast`` (json layout).

        The subscription has a connection of its own, opened on first
        iteration (or on ``with``/``sub.start()``, to be sure to be subscribed
        before something is published). Use it from one thread; its
        :meth:`~SyncBroadcastSubscription.close` works from any thread.

        No Redis command is sent here: the subscription sends ``SUBSCRIBE <channel>`` on
        its own connection when it starts, and its start and iteration raise the
        connection errors. Raises :class:`ChannelClosedError` if the channel is closed.
        """
        if self._closed:
            raise ChannelClosedError("the channel is closed")
        return SyncBroadcastSubscription(self)

    # -- urgent inbox, peek, drain, move (Tinytown 0.10) ------------------------

    def send_urgent(self, message: Message) -> None:
        """Put ``message`` in its recipient's urgent inbox, whatever its priority
        (``LPUSH tt:<town>:urgent:<to> <json>``: the urgent inbox is newest first).

        Raises :class:`InvalidArgumentError` for a non-Message; nothing is
        written then.
        """
        self._run(_ops_inbox.send_urgent(self._keys, message, None))

    def receive_urgent(self, agent_id: AgentId | Any) -> list[Message]:
        """Take every message of the agent's urgent inbox, newest first (as
        Tinytown 0.10 returns them); ``[]`` if it is empty.

        One round trip, atomic: ``MULTI, LRANGE tt:<town>:urgent:<agent> 0 -1,
        LTRIM ... 1 0, EXEC`` (Tinytown pops one at a time and, meeting a
        malformed element, loses what it had popped). A malformed element is
        moved to ``tt:<town>:dead:<agent>`` with a logged warning and every
        good message is returned. If a signal handler raises (Ctrl-C)
        before the result reaches the caller, the messages go back to the front of the urgent
        inbox in their order. A key of another type raises
        :class:`ReplyError` (WRONGTYPE) and is left as it is.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_inbox.receive_urgent(self._keys, agent_id))

    def urgent_len(self, agent_id: AgentId | Any) -> int:
        """Number of messages in the agent's urgent inbox (``LLEN tt:<town>:urgent:<agent>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_inbox.urgent_len(self._keys, agent_id))

    def peek_inbox(self, agent_id: AgentId | Any, count: int) -> list[Message]:
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
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_inbox.peek_inbox(self._keys, agent_id, count))

    def drain_inbox(self, agent_id: AgentId | Any) -> list[Message]:
        """Take every message of the agent's inbox, in receive order; ``[]`` if empty.

        One round trip, atomic: ``MULTI, LRANGE tt:<town>:inbox:<agent> 0 -1,
        LTRIM ... 1 0, EXEC`` (Tinytown 0.10 loops on LPOP, and drops
        malformed elements). A malformed element is moved to
        ``tt:<town>:dead:<agent>`` with a logged warning; every good message
        is returned. If a signal handler raises (Ctrl-C) before the result
        reaches the caller, the messages go back to the front of the inbox in their order.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_inbox.drain_inbox(self._keys, agent_id))

    def move_message_to_inbox(self, message: Message, to: AgentId | Any) -> None:
        """Send a copy of ``message`` addressed to ``to`` (same id and fields
        otherwise), placed as :meth:`send` places it (LPUSH for urgent/high,
        RPUSH for normal/low, on ``tt:<town>:inbox:<to>``). The original is
        not removed from anywhere.

        Raises :class:`InvalidArgumentError` for a non-Message or a bad ``to`` (nothing
        is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        self._run(_ops_inbox.move_message_to_inbox(self._keys, message, to, None))

    # -- state ----------------------------------------------------------------

    @property
    def layout(self) -> str:
        """``"hash"`` or ``"json"``: how this channel writes state and broadcasts
        (see :meth:`connect`)."""
        return self._layout

    def set_agent_state(self, agent: Agent) -> None:
        """Store ``agent`` at ``tt:<town>:agent:<id>`` in the channel's layout.

        Hash layout: ``MULTI, HDEL <absent optional fields> (left out when
        none is absent), HMSET <fields in Tinytown's order>, EXEC`` in one
        write (Tinytown 0.10 sends HDEL and HMSET without MULTI, so a reader
        can see the Hash between them); if the key holds a JSON string, it is
        replaced in one more step, ``MULTI, DEL, HMSET, EXEC``. JSON layout:
        ``SET <key> <json>``, which replaces a Hash atomically too. A
        WRONGTYPE never reaches the caller and no key is left half in each
        layout. Raises :class:`InvalidArgumentError` for a non-Agent
        (nothing is written).
        """
        self._run(_ops_state.set_agent_state(self._keys, self._layout, agent, None))

    def get_agent_state(self, agent_id: AgentId | Any) -> Agent | None:
        """The stored Agent, or None when absent; either layout.

        ``HGETALL tt:<town>:agent:<id>`` (hash layout; a Hash is read by
        Tinytown's rules) or ``GET`` (json layout), the other one after a
        WRONGTYPE. Raises :class:`DecodeError` for state that cannot be read.
        """
        return self._run(_ops_state.get_agent_state(self._keys, self._layout, agent_id))

    def set_task(self, task: Task) -> None:
        """Store ``task`` at ``tt:<town>:task:<id>`` in the channel's layout,
        exactly as :meth:`set_agent_state` stores an agent.

        Hash layout: ``MULTI, HDEL <absent optional fields>, HMSET <fields>, EXEC``;
        json layout: ``SET <key> <json>``. Raises :class:`InvalidArgumentError` for a
        non-Task (nothing is written), :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        self._run(_ops_state.set_task(self._keys, self._layout, task, None))

    def get_task(self, task_id: TaskId | Any) -> Task | None:
        """The stored Task, or None when absent; either layout (as :meth:`get_agent_state`).

        ``HGETALL tt:<town>:task:<id>`` (hash layout) or ``GET`` (json layout), the
        other one after a WRONGTYPE. Raises :class:`InvalidArgumentError` for a bad id
        (nothing is sent), :class:`DecodeError` for state that cannot be read,
        :class:`ReplyError` (WRONGTYPE) if the key is neither a Hash nor a string,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.get_task(self._keys, self._layout, task_id))

    def list_agents(self) -> list[Agent]:
        """Every agent of the town, in no particular order; either layout.

        ``SCAN <cursor> MATCH tt:<town>:agent:* COUNT 100`` until done (the
        town name's glob characters escaped), then every key read in one
        pipelined round trip (HGETALL or GET as :meth:`get_agent_state`).
        Tinytown 0.10 uses KEYS and fails entirely on one key of another
        type; here a key that is not an agent (another type, unreadable
        state, a name that is not ``agent:<uuid>``) is skipped with a
        logged warning.

        Raises :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.list_agents(self._keys, self._layout))

    def get_agent_by_name(self, name: str) -> Agent | None:
        """The first agent (of :meth:`list_agents`, so in no particular order)
        whose ``name`` is exactly ``name`` (case-sensitive); None if none.

        Commands: those of :meth:`list_agents` (``SCAN ... MATCH tt:<town>:agent:*``,
        then ``HGETALL`` in the hash layout or ``GET`` in the json layout per key).
        Raises :class:`InvalidArgumentError` for a non-str ``name``,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.get_agent_by_name(self._keys, self._layout, name))

    def resolve_agent_ref(self, ref: str) -> Agent | None:
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

        Commands: ``HGETALL tt:<town>:agent:<id>`` (or ``GET``) for a UUID, else those of
        :meth:`list_agents`. Raises :class:`AmbiguousAgentRefError` if several agents match,
        :class:`InvalidArgumentError` for a non-str ``ref``,
        :class:`DecodeError` for a UUID whose stored state cannot be read,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.resolve_agent_ref(self._keys, self._layout, ref))

    def delete_agent(self, agent_id: AgentId | Any) -> None:
        """Delete the agent's state, inbox, urgent inbox, activity log and stop
        flag: ``DEL`` of ``tt:<town>:agent|inbox|urgent|activity|stop:<id>``, in
        that order, in one write. Its event stream
        (``tt:<town>:events:agent:<id>``) and dead letters are kept, as in
        Tinytown 0.10.

        ``DEL`` takes keys of any type. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        self._run(_ops_state.delete_agent(self._keys, agent_id))

    def list_tasks(self) -> list[Task]:
        """Every task of the town, in no particular order; either layout
        (``SCAN ... MATCH tt:<town>:task:*``, as :meth:`list_agents`).

        Raises :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.list_tasks(self._keys, self._layout))

    def delete_task(self, task_id: TaskId | Any) -> bool:
        """Delete ``tt:<town>:task:<id>`` (``DEL``, any type); True if it existed.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.delete_task(self._keys, task_id))

    def increment_agent_rounds(self, agent_id: AgentId | Any) -> int:
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
        return self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "rounds_completed", True))

    def increment_agent_tasks_completed(self, agent_id: AgentId | Any) -> int:
        """Add 1 to the agent's ``tasks_completed``; returns the new value.
        As :meth:`increment_agent_rounds` (same guarantees and errors).

        Commands: ``HGETALL tt:<town>:agent:<id>`` (or ``GET``, json layout), then
        ``EVALSHA`` of the compare-and-set script. Raises :class:`AgentNotFoundError` if
        the agent has no state, :class:`EncodeError` if the counter is already 2**64-1,
        :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "tasks_completed", True))

    def update_agent_heartbeat(self, agent_id: AgentId | Any) -> None:
        """Set the agent's ``last_heartbeat`` to now (the channel's clock).

        A Hash gets the one field (``+00:00`` form, as Tinytown's ``HSET``)
        in one round trip: a Lua script (``EVALSHA``) that writes it only if
        the Hash exists and has an ``id``; a JSON agent is read and rewritten
        as :meth:`increment_agent_rounds` does. Raises
        :class:`AgentNotFoundError` if the agent has no state, and
        :class:`ReplyError` (WRONGTYPE) if its key holds another type, as the
        counters do.
        """
        self._run(_ops_state.update_agent(
            self._keys, self._layout, agent_id, "last_heartbeat", False))

    def reset_all(self) -> int:
        """Delete every key of this town; returns how many were deleted.

        ``SCAN ... MATCH tt:<town>:* COUNT 100`` (glob characters of the town
        name escaped), keeping only keys of the shapes a town writes
        (``agent:<uuid>``, ``inbox:<uuid>``, ``backlog``, ``events``,
        ``docket:tasks``, mission keys...), so another town whose name starts
        with ``<town>:`` (Rust allows ':') keeps its keys; then ``DEL`` in
        batches of 1000. Tinytown 0.10 deletes the other towns' keys and
        returns the number scanned. Not atomic: keys written meanwhile may
        survive.

        Raises :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.reset_all(self._keys))

    def reset_agents_only(self) -> int:
        """Delete every agent's keys of this town (state, inbox, urgent inbox,
        stop flag, activity log, and this package's dead letters and
        processing lists), keeping tasks, backlog, docket and event streams;
        returns how many were deleted. One SCAN per kind, as :meth:`reset_all`.

        Raises :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops_state.reset_agents_only(self._keys))

    # -- driving operations (tinytown._ops): pops that hand back, pipelines ----

    @staticmethod
    def _read_one(conn: SyncConnection, timeout: float | None = None) -> Any:
        try:
            return conn.read_reply(timeout)
        except ReplyError as exc:
            return exc

    @staticmethod
    def _read_into(conn: SyncConnection, into: list[Any], timeout: float | None) -> None:
        """Append the next reply to ``into`` (an error reply as its ReplyError).

        ``into.extend(map(conn.read_reply, ...))`` runs in C: no signal
        handler can run between the reply being read and its being in
        ``into`` (a handler runs between bytecodes, in the main thread,
        whichever thread the signal went to)."""
        try:
            into.extend(map(conn.read_reply, (timeout,)))
        except ReplyError as exc:
            into.append(exc)

    def _pop(self, conn: SyncConnection, pop: _ops.Pop, box: list[Any]) -> None:
        """Run a Pop step: send its commands, then read their replies into
        ``box`` (error replies as ReplyError instances).

        If a signal handler raises on the way, the replies of the commands
        that went out are still read into ``box`` before the exception
        propagates (a MULTI cut before its EXEC ran nothing: the connection
        is dropped, which discards it); the caller (:meth:`_run`) gives
        back what ``box`` shows was taken."""
        step = pop.step
        commands = [step] if type(step) is tuple else step
        expected = len(commands)
        before = conn.pending_replies
        try:
            for command in commands:
                conn.send_command(*command)
        except BaseException:
            # send_command counts a command as pending once it went out whole
            # and drops the connection when only part of one did.
            sent = 0 if conn.is_closed else conn.pending_replies - before
            if sent == expected:
                self._finish_pop(conn, expected, box)
            elif sent:
                conn.close()
            raise
        try:
            while len(box) < expected:
                # Bounded: pops do not block on the server.
                self._read_into(conn, box, _BLPOP_GRACE)
        except TimeoutError:
            conn.close()
            raise ConnectionError(
                f"Redis at {self._address} did not answer in {_BLPOP_GRACE:g} s; connection "
                "dropped (what the call may have taken is lost)") from None
        except BaseException:
            if not conn.is_closed:
                self._finish_pop(conn, expected, box)
            raise

    def _finish_pop(self, conn: SyncConnection, expected: int, replies: list[Any]) -> None:
        """Read the rest of an interrupted Pop step's replies (they come at once:
        pops do not block); further interruptions meanwhile are ignored, as the
        first one is about to propagate."""
        deadline = time.monotonic() + _BLPOP_GRACE
        while len(replies) < expected:
            try:
                self._read_into(conn, replies, max(0.0, deadline - time.monotonic()))
            except (TimeoutError, ConnectionError) as exc:
                conn.close()
                log.error("tinytown: an interrupted call could not read what it took (%s); "
                          "it may be lost", exc)
                return
            except BaseException:  # noqa: S112 - another signal: keep reading
                continue

    def _pipeline(self, conn: SyncConnection, commands: _ops.Pipeline) -> list[Any]:
        """Run a Pipeline step: every command sent, then every reply read, error
        replies returned in the list."""
        for command in commands:
            conn.send_command(*command)
        try:
            return [self._read_one(conn) for _ in commands]
        except BaseException:
            conn.close()  # replies would come out of step: drop the connection (reads only)
            raise

    def _restore(self, commands: list[tuple[Any, ...]]) -> None:
        """Put back what an interrupted Pop step took (see :class:`tinytown._ops.Pop`)."""
        if not commands:
            return
        deadline = time.monotonic() + _PUTBACK_RETRY
        while True:
            try:
                self._main().execute_many(commands, False)
                return
            except ConnectionError as exc:  # dropped: again on a fresh connection
                if time.monotonic() < deadline and not self._closed:
                    time.sleep(0.02)
                    continue
                error: BaseException = exc
            except BaseException as exc:
                error = exc
            # nowhere left to put it: say so loudly
            log.error("tinytown: an interrupted call could not put back what it took; lost: %r (%s)",
                      commands, error)
            return

    # -- stop flag --------------------------------------------------------------

    def request_stop(self, agent_id: AgentId | Any) -> None:
        """Ask the agent to stop: ``SETEX tt:<town>:stop:<agent> 3600 1`` (the flag lives 1 h).

        ``SETEX`` replaces a key of any type. Raises :class:`InvalidArgumentError` for a
        bad id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        self._run(_ops.request_stop(self._keys, agent_id))

    def should_stop(self, agent_id: AgentId | Any) -> bool:
        """True if a stop was requested for the agent (``EXISTS tt:<town>:stop:<agent>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_ops.should_stop(self._keys, agent_id))

    def clear_stop(self, agent_id: AgentId | Any) -> None:
        """Withdraw a stop request (``DEL tt:<town>:stop:<agent>``).

        ``DEL`` takes a key of any type. Raises :class:`InvalidArgumentError` for a bad
        id (nothing is sent), :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        self._run(_ops.clear_stop(self._keys, agent_id))

    def _run(self, op: _ops.Op[_T]) -> _T:
        """Drive a sans-I/O operation of :mod:`tinytown._ops` on the main connection.

        An operation that pops (a :class:`~tinytown._ops.Pop` step) runs with
        the calling thread's signals held back (``pthread_sigmask``) from its
        first Pop step to its return; the held handlers run last, once the
        result is ready. A handler can still run earlier, between any two
        bytecodes, when another thread took the signal: wherever one raises,
        the replies of the commands sent are read and what the operation
        took goes back (``restore``) before the exception propagates, so the
        caller either has the result or Redis has it back. While signals are
        held, each reply is awaited at most ``_BLPOP_GRACE`` seconds (pops do
        not block on the server).
        """
        try:
            step = next(op)  # argument checks run here, before anything is sent
        except StopIteration as done:  # answered without Redis
            return done.value  # type: ignore[no-any-return]
        conn = self._conn
        if conn is None or not conn.is_usable():
            conn = self._reconnect()
        # A signal handler may raise between any two bytecodes (in the main
        # thread, even while this thread holds signals: another thread may
        # take the signal), so what a Pop step took is always findable:
        # ``box`` gets its replies in C (_read_into), ``held`` what the
        # operation would have to give back once they are all in. None:
        # not worked out yet (then it comes from ``pop_step`` and ``box``).
        pop_step: _ops.Pop | None = None
        box: list[Any] = []
        held: list[tuple[Any, ...]] | None = None
        mask: set[int] | None = None  # the saved signal mask once a Pop step runs
        result: Any = None
        try:
            while True:
                try:
                    # (mypy cannot narrow step through kind: the ignores below)
                    kind = type(step)
                    if kind is tuple:
                        reply = conn.execute(*step)  # type: ignore[misc]
                    elif kind is list:
                        reply = conn.execute_many(step, True)  # type: ignore[arg-type]
                    elif kind is _ops.Pop:
                        if mask is None:
                            mask = _hold_signals()
                        # From here the step hands back by itself (no bytecode
                        # between these stores can run a handler).
                        held = None
                        box = []
                        pop_step = step  # type: ignore[assignment]
                        self._pop(conn, step, box)  # type: ignore[arg-type]
                        reply = _pop_reply(step, box)  # type: ignore[arg-type]  # ReplyError raised
                        held = step.restore(reply)  # type: ignore[union-attr]
                    else:
                        reply = self._pipeline(conn, step)  # type: ignore[arg-type]
                except ReplyError as exc:
                    if held is None and pop_step is not None:
                        held = pop_step.restore(exc)
                    step = op.throw(exc)
                else:
                    step = op.send(reply)
        except StopIteration as done:
            result = done.value
        except BaseException as exc:
            try:
                if held is None and pop_step is not None:
                    expected = 1 if type(pop_step.step) is tuple else len(pop_step.step)
                    held = pop_step.restore(
                        _pop_reply_or_error(pop_step, box) if len(box) == expected else exc)
                if held:
                    self._restore(held)
            finally:
                if mask is not None:
                    _set_signal_mask(mask)
                op.close()
            raise
        if mask is not None:
            # Let the held signals through: their handlers run inside this
            # call, last. If one raises, the caller never gets the result, so
            # what the operation took goes back before the exception propagates.
            try:
                _set_signal_mask(mask)
            except BaseException:
                if held:
                    try:
                        self._restore(held)
                    except BaseException as exc:
                        log.error("tinytown: a call interrupted by a signal could not give back "
                                  "what it took (%s); it may be lost", exc)
                raise
        return result  # type: ignore[no-any-return]

    # -- events, docket, backlog, activity ----------------------------------------

    def log_agent_activity(self, agent_id: AgentId | Any, text: str) -> None:
        """Add a line to the agent's activity log, ``tt:<town>:activity:<agent>``.

        ``LPUSH`` the text (UTF-8, unchanged), ``LTRIM 0 9`` (the 10 newest
        are kept) and ``EXPIRE 3600`` (the log lives 1 h after its last line),
        in that order as Tinytown does, but in one write inside MULTI/EXEC, so
        no reader sees the list untrimmed (upstream: three round trips).
        Raises :class:`InvalidArgumentError` for a bad id or a non-str text,
        :class:`EncodeError` for text that is not valid Unicode.
        """
        self._run(_streams.log_agent_activity(self._keys, agent_id, text))

    def get_agent_activity(self, agent_id: AgentId | Any) -> str | None:
        """The agent's 5 newest activity lines, newest first, joined with ``"\\n"``;
        None when it has none (``LRANGE tt:<town>:activity:<agent> 0 4``).

        As Tinytown returns it; a line containing a newline makes the text
        ambiguous: :meth:`get_agent_activity_lines` returns the list instead.
        Bytes that are not UTF-8 read as U+FFFD.

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.get_agent_activity(self._keys, agent_id))

    def get_agent_activity_lines(self, agent_id: AgentId | Any, count: int = 5) -> list[str]:
        """The agent's ``count`` (default 5, at most 10 are kept) newest activity
        lines as a list, newest first; ``[]`` when none (``LRANGE ... 0 count-1``).
        Not in Tinytown: its :meth:`get_agent_activity` joins them with ``"\\n"``.

        Raises :class:`InvalidArgumentError` for a bad id or a ``count`` outside
        1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE) if the key holds
        another type, :class:`ConnectionError` if the connection is lost or cannot be
        made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.get_agent_activity_lines(self._keys, agent_id, count))

    def emit_event(self, event: TownEvent) -> str:
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
        Raises :class:`InvalidArgumentError` if ``event`` is not a TownEvent.
        """
        return self._run(_streams.emit_event(self._keys, event))

    def read_town_events(self, last_id: str = "-",
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
        return self._run(_streams.read_town_events(self._keys, last_id, count))

    def read_agent_events(self, agent_id: AgentId | Any, last_id: str = "-",
                          count: int = 100) -> list[tuple[str, TownEvent]]:
        """Like :meth:`read_town_events`, on the agent's stream
        ``tt:<town>:events:agent:<agent>``.

        ``XRANGE tt:<town>:events:agent:<agent> (<last_id> + COUNT <count>`` (``-``/``0``
        sent as they are, as :meth:`read_town_events` does). Raises
        :class:`InvalidArgumentError` for a bad id, a malformed ``last_id`` or a
        ``count`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE)
        if the key holds another type, :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.read_agent_events(self._keys, agent_id, last_id, count))

    def read_mission_events(self, mission_id: Any, last_id: str = "-",
                            count: int = 100) -> list[tuple[str, TownEvent]]:
        """Like :meth:`read_town_events`, on the mission's stream
        ``tt:<town>:events:mission:<mission>`` (``mission_id``: a UUID).

        ``XRANGE tt:<town>:events:mission:<mission> (<last_id> + COUNT <count>`` (``-``/``0``
        sent as they are, as :meth:`read_town_events` does). Raises
        :class:`InvalidArgumentError` for a bad mission id, a malformed ``last_id`` or a
        ``count`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (WRONGTYPE)
        if the key holds another type, :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.read_mission_events(self._keys, mission_id, last_id, count))

    def read_recent_town_events(self, count: int = 100) -> list[tuple[str, TownEvent]]:
        """The ``count`` newest events of ``tt:<town>:events``, oldest first, as
        ``(entry_id, TownEvent)`` (``XREVRANGE <key> + - COUNT <count>``);
        undecodable entries skipped. The last id can start a
        :meth:`read_town_events` follow loop.

        Raises :class:`InvalidArgumentError` for a ``count`` outside 1..2**63-1 (nothing
        is sent), :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.read_recent_town_events(self._keys, count))

    def backlog_push(self, task_id: TaskId | Any) -> None:
        """Queue a task id at the end of the town's backlog (``RPUSH tt:<town>:backlog``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        self._run(_streams.backlog_push(self._keys, task_id))

    def backlog_list(self) -> list[TaskId]:
        """Every task id in the backlog, front first (``LRANGE tt:<town>:backlog 0 -1``);
        entries that are not task ids are skipped (logged), as Tinytown does.

        Raises :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.backlog_list(self._keys))

    def backlog_len(self) -> int:
        """Number of entries in the backlog (``LLEN``), unreadable ones included.

        Key: ``tt:<town>:backlog``. Raises :class:`ReplyError` (WRONGTYPE) if the key
        holds another type, :class:`ConnectionError` if the connection is lost or cannot
        be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.backlog_len(self._keys))

    def backlog_pop(self) -> TaskId | None:
        """Take the task id at the front of the backlog (``LPOP``); None if empty.

        An entry that is not a task id is moved to ``tt:<town>:dead:backlog``
        and :class:`DecodeError` is raised with it in ``.raw`` (Tinytown drops
        it, spec §9.9); the next call goes on with the following entry. If a
        signal handler raises (Ctrl-C) the task id just taken goes back to
        the front of the backlog first: nothing is lost.

        Raises :class:`DecodeError` for an entry that is not a task id (as above),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.backlog_pop(self._keys))

    def backlog_remove(self, task_id: TaskId | Any) -> bool:
        """Remove the first occurrence of ``task_id`` from the backlog; True if
        it was there (``LREM tt:<town>:backlog 1 <task_id>``).

        Raises :class:`InvalidArgumentError` for a bad id (nothing is sent),
        :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.backlog_remove(self._keys, task_id))

    def docket_ensure_group(self) -> None:
        """Create the docket stream and its consumer group ``workers`` if missing
        (``XGROUP CREATE tt:<town>:docket:tasks workers $ MKSTREAM``; the
        BUSYGROUP error of an existing group is ignored). Entries pushed
        before the group existed are not delivered to it (``$``), as in Tinytown.

        Raises :class:`ReplyError` for an error other than BUSYGROUP (e.g. WRONGTYPE if
        the key holds another type), :class:`ConnectionError` if the connection is lost
        or cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        self._run(_streams.docket_ensure_group(self._keys))

    def docket_push(self, task_id: TaskId | Any, description: str, priority: str,
                    from_: str, to: str) -> str:
        """Offer a task on the docket; returns the stream entry id.

        ``XADD tt:<town>:docket:tasks * task_id <id> type task_assign message
        <description> priority <priority> from <from_> to <to> timestamp
        <now, RFC 3339 with +00:00>``, as Tinytown writes it (never trimmed).
        The strings are written verbatim (``priority`` may be a
        :class:`Priority`). Raises :class:`InvalidArgumentError` for a bad
        task id or a non-str argument.
        """
        return self._run(_streams.docket_push(self._keys, task_id, description,
                                              priority, from_, to))

    def docket_read(self, consumer: str, block_ms: int) -> tuple[str, dict[str, str]] | None:
        """Wait up to ``block_ms`` milliseconds for a docket entry never
        delivered to the group; returns ``(entry_id, fields)`` or None.

        ``XREADGROUP GROUP workers <consumer> COUNT 1 BLOCK <block_ms>
        STREAMS tt:<town>:docket:tasks >``, with the GIL released. The entry
        stays pending for ``consumer`` until :meth:`docket_ack`. ``fields``
        maps field names to values (bytes that are not UTF-8 read as U+FFFD).
        ``block_ms`` must be an int in 1..2**63-1: Tinytown's ``0`` would wait forever. If a
        signal handler raises (Ctrl-C) during the wait, the XREADGROUP is
        ended (CLIENT UNBLOCK) and an entry it already took stays pending
        for ``consumer``: :meth:`docket_reclaim` returns it. A missing group
        raises :class:`ReplyError` (NOGROUP; see :meth:`docket_ensure_group`).

        Raises :class:`InvalidArgumentError` for a non-str ``consumer`` or a
        ``block_ms`` outside 1..2**63-1 (nothing is sent), :class:`ReplyError` (NOGROUP,
        WRONGTYPE), :class:`ConnectionError` if the connection is lost or cannot be
        made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        keys = self._keys
        ms = _streams.docket_block_ms(block_ms)
        command = _streams.docket_read_command(keys, consumer, ms)
        conn = self._main()
        client_id = self._client_id
        conn.send_command(*command)
        try:
            reply = conn.read_reply(ms / 1000 + _BLPOP_GRACE)
        except TimeoutError:
            conn.close()
            raise ConnectionError(
                f"Redis at {self._address} did not answer XREADGROUP within {ms} ms "
                f"+ {_BLPOP_GRACE:g} s; connection dropped") from None
        except ReplyError:
            raise
        except BaseException:
            if not conn.is_closed:
                self._unblock(conn, client_id)
            raise
        return _streams.docket_read_reply(reply)

    def _unblock(self, conn: SyncConnection, client_id: int | None) -> None:
        """End an interrupted blocking read whose reply needs no hand-back (an
        entry XREADGROUP delivered stays pending): CLIENT UNBLOCK from a side
        connection, then read the reply so the connection stays in step."""
        try:
            if client_id is None:
                conn.close()  # without CLIENT, dropping the connection ends the wait
                return
            side, _ = self._open_connection()
            try:
                side.execute(b"CLIENT", b"UNBLOCK", client_id)
            finally:
                side.close()
            conn.read_reply(_BLPOP_GRACE)
        except BaseException as exc:
            log.error("tinytown: an interrupted blocking read could not be ended cleanly (%s)", exc)
            conn.close()

    def docket_ack(self, entry_id: str) -> bool:
        """Mark a docket entry as done for the group (``XACK tt:<town>:docket:tasks
        workers <entry_id>``); True if it was pending (Tinytown returns nothing).
        Raises :class:`InvalidArgumentError` for a malformed id."""
        return self._run(_streams.docket_ack(self._keys, entry_id))

    def docket_len(self) -> int:
        """Entries in the docket stream, acked ones included (``XLEN``; 0 when absent).

        Key: ``tt:<town>:docket:tasks``. Raises :class:`ReplyError` (WRONGTYPE) if the
        key holds another type, :class:`ConnectionError` if the connection is lost or
        cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.docket_len(self._keys))

    def docket_pending_count(self) -> int:
        """Entries delivered to the group and not yet acked (``XPENDING tt:<town>:docket:tasks
        workers``). A missing stream or group raises :class:`ReplyError` (NOGROUP).

        Raises :class:`ReplyError` (NOGROUP, WRONGTYPE), :class:`ConnectionError` if the
        connection is lost or cannot be made, :class:`ChannelClosedError` after
        :meth:`close`, :class:`ConcurrentUseError` if another thread is in a call on
        this channel.
        """
        return self._run(_streams.docket_pending_count(self._keys))

    def docket_group_lag(self) -> int | None:
        """Entries of the docket not yet delivered to the group (``lag`` of
        ``XINFO GROUPS``); None when the group is missing or Redis cannot
        tell (Redis < 7). A missing stream raises :class:`ReplyError`.

        Raises :class:`ReplyError` (missing stream: ``ERR no such key``; WRONGTYPE),
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.docket_group_lag(self._keys))

    def docket_log_event(self, task_id: TaskId | Any, event_type: str, detail: str) -> str:
        """Append to the docket's event log; returns the entry id (``XADD
        tt:<town>:docket:events * task_id <id> event <event_type> detail <detail>
        timestamp <now, +00:00>``, never trimmed).

        Raises :class:`InvalidArgumentError` for a bad task id or a non-str
        ``event_type``/``detail``, :class:`EncodeError` for text that is not valid
        Unicode, :class:`ReplyError` (WRONGTYPE) if the key holds another type,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
        """
        return self._run(_streams.docket_log_event(self._keys, task_id, event_type, detail))

    def docket_reclaim(self, consumer: str, min_idle_ms: int,
                       count: int = 10) -> list[tuple[str, dict[str, str]]]:
        """Take over docket entries left pending (delivered, never acked) for
        at least ``min_idle_ms`` milliseconds by any consumer: a crashed
        worker's, or a :meth:`docket_read` interrupted after delivery. They
        become pending for ``consumer`` and are returned as ``(entry_id,
        fields)``, oldest first, at most ``count`` (``XAUTOCLAIM
        tt:<town>:docket:tasks workers <consumer> <min_idle_ms> <cursor> COUNT
        <n>``, repeated until Redis's scan wraps or ``count`` came back).
        Not in Tinytown, which never reclaims; needs Redis >= 6.2.

        Raises :class:`InvalidArgumentError` for a non-str ``consumer``, a
        ``min_idle_ms`` (milliseconds) outside 0..2**63-1 or a ``count`` outside
        1..2**63-1 (nothing is sent), :class:`ReplyError` (NOGROUP; ``ERR unknown
        command`` before Redis 6.2), :class:`ConnectionError` if the connection is lost
        or cannot be made, :class:`ChannelClosedError` after :meth:`close`,
        :class:`ConcurrentUseError` if another thread is in a call on this channel.
        """
        return self._run(_streams.docket_reclaim(self._keys, consumer, min_idle_ms, count))

    # -- raw access and lifetime ------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Run one raw Redis command and return its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`ReplyError`. Do not send
        subscribing commands (SUBSCRIBE, MONITOR) here.

        No Redis command of its own: ``args`` is sent as the command, e.g.
        ``execute("GET", key)``; each argument bytes, str (UTF-8), int or float.
        Raises :class:`InvalidArgumentError` (nothing is sent) for another argument
        type (bool included), for a command that changes the connection's protocol
        state (the SUBSCRIBE family, MONITOR, RESET, QUIT, HELLO 3, CLIENT REPLY
        OFF/SKIP) or one of 2 GiB - 64 KiB or more; :class:`ReplyError` for an error reply,
        :class:`ConnectionError` if the connection is lost or cannot be made,
        :class:`ChannelClosedError` after :meth:`close`, :class:`ConcurrentUseError` if
        another thread is in a call on this channel.
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
        """Close every connection of the channel (from any thread); idempotent.

        No Redis command: the connections are closed without QUIT. Idempotent. Raises
        nothing.
        """
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
    """Messages published on the channel's broadcast channel (``tt:<town>:broadcast``,
    or ``tt:broadcast`` in the json layout), as a blocking iterator.

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
            conn.send_command(b"SUBSCRIBE", self._channel._broadcast_name)
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
        and returns None if nothing came. Raises ChannelClosedError once closed.

        Subscribes first if needed (``SUBSCRIBE <channel>``, as :meth:`start`); then
        reads the ``message`` pushes of that connection, sending no command. Raises
        :class:`InvalidArgumentError` for a negative or non-number ``timeout``
        (seconds), :class:`DecodeError` (with ``raw``) for a broadcast that is not a
        Message (the next call goes on), :class:`ConnectionError` if the connection is
        lost or cannot be made, :class:`ChannelClosedError` once closed.
        """
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        conn = self._conn
        assert conn is not None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # (on a subscribed connection: [kind, channel, payload] lists)
                item = cast(list[Any], conn.read_reply(left))
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



# signal.pthread_sigmask turns every signal of a mask into an enum member, on
# the way in and out (~120 conversions, ~40 us a call: it made a
# SyncChannel.try_receive 3x redis-py's). _signal, the C module that signal
# wraps, takes and returns plain ints; the set of all signals is made once.
try:
    import _signal  # type: ignore[import-not-found,unused-ignore]  # typeshed has no stub for it
    _sigmask: Callable[[int, Iterable[int]], set[int]] | None = _signal.pthread_sigmask
    _ALL_SIGNALS: frozenset[int] = frozenset(_signal.valid_signals())
except (ImportError, AttributeError):  # not CPython, or no pthread_sigmask (not POSIX)
    _sigmask = None
    _ALL_SIGNALS = frozenset()


def _hold_signals() -> set[int] | None:
    """Hold back every signal (pthread_sigmask) for a call that must not be
    cut between taking something from Redis and returning it; the previous
    mask, to be set back with ``_set_signal_mask``. None where there is no
    pthread_sigmask (not POSIX): then nothing is held."""
    if _sigmask is None:
        return None
    # Each call changes the mask, then runs the handlers of pending signals,
    # which may raise: read the mask first, so that it can be put back.
    old = _sigmask(signal.SIG_BLOCK, ())
    try:
        _sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    except BaseException:
        _sigmask(signal.SIG_SETMASK, old)
        raise
    return old


def _set_signal_mask(mask: set[int]) -> None:
    """Set the calling thread's signal mask back to ``mask`` (from
    ``_hold_signals``); the handlers of signals held meanwhile run here."""
    assert _sigmask is not None  # a mask exists only where _hold_signals made one
    _sigmask(signal.SIG_SETMASK, mask)


def _pop_reply(pop: _ops.Pop, box: list[Any]) -> Any:
    """A Pop step's reply from its replies in ``box``: the one reply of a
    command, the list of a transaction's; an error reply is raised."""
    if type(pop.step) is tuple:
        if isinstance(box[0], ReplyError):
            raise box[0]
        return box[0]
    for reply in box:
        if isinstance(reply, ReplyError):
            raise reply
    return box


def _pop_reply_or_error(pop: _ops.Pop, box: list[Any]) -> Any:
    """What ``restore`` gets for a Pop step whose replies are all in ``box``."""
    try:
        return _pop_reply(pop, box)
    except ReplyError as exc:
        return exc
