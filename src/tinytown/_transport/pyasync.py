"""tinytown's pure-Python transport: the fallback for the hiredis extension.

Same interface and behaviour as :class:`tinytown._transport.ext.Connection`
(the Cython transport over hiredis's async context): one Redis connection
driven by an asyncio loop, futures for replies, automatic pipelining,
cancellation that cannot desynchronise the reply stream, and the same typed
errors for bad arguments.

Why not redis-py's own connection classes: ``redis.asyncio.Connection``
sends one command and awaits its reply under a lock, so concurrent callers
cannot share one pipelined connection, and it drops the connection when a
caller is cancelled mid-command. Channel relies on the opposite (every
non-blocking command shares one connection, pipelined; a cancelled caller
just loses interest in its reply). So this transport is an asyncio
:class:`~asyncio.Protocol` that keeps a FIFO of waiting futures itself, and
takes from redis-py's stack the part that matters for speed: the hiredis
parser (``hiredis.Reader``, what redis-py uses when installed as
``redis[hiredis]``), a C parser fed with the bytes asyncio reads. Commands
are encoded here (RESP is a few lines) because the argument rules must be
exactly the extension's: str as UTF-8, int/float as their repr, bool and
other types rejected with :class:`InvalidArgumentError`.

Needs the ``hiredis`` package: ``pip install 'tinytown[python]'``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import weakref
from collections import deque
from threading import get_ident
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis

from ..errors import ConnectionError, EventLoopError, InvalidArgumentError, ReplyError
from .futures import FORKS, PyReplyFuture, check_loop, deliver
from .resp import PLAIN_NAMES, check_command, encode_command
from .resp import RESP2_SCALARS as _RESP2_SCALARS
from .resp import resp2_shaped as _resp2_shaped

__all__ = ["PyConnection"]

_get_running_loop = asyncio._get_running_loop

# The sockets of open connections. In the child of a fork each is pointed at
# /dev/null (dup2 over the same descriptor number), as the extension does:
# whatever the child does with an inherited connection -- its inherited
# event loop reading it (that loop's epoll set is shared with the parent's),
# writing, unregistering it -- cannot reach the parent's socket.
_open_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    if not _open_sockets:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for sock in list(_open_sockets):
            fd = sock.fileno()
            if fd >= 0 and fd != null:
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Batch:
    """One future for many commands: resolved when the last reply is in."""

    __slots__ = ("error", "future", "remaining", "results")

    def __init__(self, future: asyncio.Future[Any], remaining: int, replies: bool) -> None:
        self.future = future
        self.remaining = remaining
        self.error: BaseException | None = None
        self.results: list[Any] | None = [] if replies else None

    def add(self, value: Any) -> None:
        if isinstance(value, BaseException) and self.error is None:
            self.error = value
        if self.results is not None:
            self.results.append(value)
        self.remaining -= 1
        if self.remaining == 0:
            if self.error is not None:
                deliver(self.future, self.error, True)
            else:
                deliver(self.future, self.results, False)


# Marks the place of SUBSCRIBE in the reply queue: every reply from there on
# goes to the push handler.
_SUBSCRIBED = object()


class PyConnection(asyncio.Protocol):
    """One Redis connection driven by an asyncio loop, in pure Python (+ hiredis's parser).

    ``PyConnection(loop)``, then ``await conn.connect_unix(path)`` or
    ``await conn.connect_tcp(ip, port)``. Every command method returns an
    asyncio future. Not thread-safe: use it from its loop's thread only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._create_future = loop.create_future
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: deque[Any] = deque()   # futures, batches and _SUBSCRIBED, in command order
        self._pending = 0
        self._out: list[bytes] = []           # commands waiting for the end-of-iteration flush
        self._out_bytes = 0                   # their length
        # Backpressure (wait_writable): high- and low-water marks in bytes, and
        # the futures of writers waiting for the low one. asyncio's transport
        # is told to pause at the low mark (pause_writing/resume_writing), so
        # that its resume_writing says when the buffer is down to it.
        self._high_water = 4 * 2**20
        self._low_water = 2**20
        self._drain_waiters: deque[tuple[asyncio.Future[None], int]] = deque()  # first come first
        self._recheck_scheduled = False
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._tls: tuple[ssl.SSLContext, str] | None = None   # context, server name
        self._tls_loss: ConnectionError | None = None         # why a TLS connection ended
        self._where: str | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._connect_waiter: asyncio.Future[PyConnection] | None = None
        self._push_handler: Callable[[Any], None] | None = None
        self._subscribed = False
        self._connected = False
        self._closed = False
        self._fork_gen = FORKS[0]
        self._loop_thread = 0  # the thread last seen running the loop (_check_open)
        self._loop_has_thread_id = isinstance(loop, asyncio.BaseEventLoop) and hasattr(loop, "_thread_id")

    # -- opening ----------------------------------------------------------

    def connect_unix(self, path: str) -> asyncio.Future[PyConnection]:
        """Start connecting to a Unix socket; returns a future resolved when connected.

        Call :meth:`close` to abandon a connect that takes too long.
        """
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        sock = self._new_socket(socket.AF_UNIX, f"unix:{path}")
        # A Unix connect completes or fails at once (as in hiredis, a missing
        # socket file is reported here, not through the future).
        try:
            sock.connect(path)
            done = True
        except (BlockingIOError, InterruptedError):
            done = False
        except OSError as exc:
            sock.close()
            raise self._cannot_connect(exc) from None
        return self._attach(sock, None if done else path)

    def connect_tcp(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                    server_hostname: str | None = None) -> asyncio.Future[PyConnection]:
        """Start connecting to a numeric IP address and port (resolve names first).

        With ``tls``, the connection is TLS with that context (asyncio's TLS);
        ``server_hostname`` (default ``host``) is the name the server's
        certificate is checked against. A failed handshake or certificate
        check fails the future with ConnectionError.
        """
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        try:
            # Resolves at once for a numeric address; a name is resolved with
            # a blocking call, as hiredis does (Channel passes numbers).
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, OverflowError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {host}:{port}: {exc}") from None
        family, _, _, _, sockaddr = info[0]
        sock = self._new_socket(family, f"{host}:{port}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self._tls = (tls, server_hostname or host)
        return self._attach(sock, sockaddr)

    def _new_socket(self, family: int, where: str) -> socket.socket:
        if self._where is not None or self._closed:
            raise InvalidArgumentError("a Connection can be connected only once")
        check_loop(self._loop)
        self._fork_gen = FORKS[0]
        self._where = where
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        _open_sockets.add(sock)
        return sock

    def _cannot_connect(self, exc: OSError) -> ConnectionError:
        # asyncio's sock_connect words its errors its own way ("Connect call
        # failed ..."); report the system's text for the errno, as hiredis does.
        if isinstance(exc, ssl.SSLError):   # its errno is OpenSSL's, not the system's
            reason = f"TLS handshake failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
        else:
            reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        return ConnectionError(f"cannot connect to Redis at {self._where}: {reason}")

    def _attach(self, sock: socket.socket, address: Any) -> asyncio.Future[PyConnection]:
        self._sock = sock
        waiter = self._connect_waiter = self._create_future()
        self._connect_task = self._loop.create_task(self._finish_connect(sock, address))
        return waiter

    async def _finish_connect(self, sock: socket.socket, address: Any) -> None:
        try:
            if address is not None:
                await self._loop.sock_connect(sock, address)
            if sock.family == socket.AF_UNIX:
                await self._loop.create_unix_connection(lambda: self, sock=sock)
            elif self._tls is not None:
                # The handshake is bounded by the caller's connect timeout.
                context, hostname = self._tls
                await self._loop.create_connection(
                    lambda: self, sock=sock, ssl=context, server_hostname=hostname)
            else:
                await self._loop.create_connection(lambda: self, sock=sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as exc:
            self._fail_connect(self._cannot_connect(exc))
            return
        except BaseException as exc:  # the loop refused the socket: report, do not hide
            self._fail_connect(ConnectionError(f"cannot connect to Redis at {self._where}: {exc!r}"))
            return
        finally:
            self._connect_task = None
        waiter = self._connect_waiter
        self._connect_waiter = None
        if self._closed:  # closed while the loop was setting up the transport
            return
        self._connected = True
        if waiter is not None:
            deliver(waiter, self, False)

    def _fail_connect(self, error: ConnectionError) -> None:
        if self._sock is not None:
            self._sock.close()
        self._closed = True
        waiter = self._connect_waiter
        self._connect_waiter = None
        if waiter is not None:
            deliver(waiter, error, True)

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._closed:  # close() came while the loop was wrapping the socket
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport  # type: ignore[assignment]
        self._set_transport_limits()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._lose(ConnectionError(f"connection to Redis lost: protocol error: {exc}"))
            return
        waiting = self._waiting
        while reply is not False:
            if type(reply) not in _RESP2_SCALARS and not _resp2_shaped(reply):
                self._lose(ConnectionError(
                    "connection to Redis dropped: the server sent a RESP3 reply "
                    f"({type(reply).__name__}) on a RESP2 connection (protocol violation)"))
                return
            if self._subscribed:
                self._push(reply)
            else:
                slot = waiting.popleft() if waiting else None
                if slot is _SUBSCRIBED:
                    self._subscribed = True
                    self._push(reply)
                elif slot is None:
                    self._lose(ConnectionError(
                        "connection to Redis lost: a reply came for no command"))
                    return
                else:
                    self._pending -= 1
                    if type(slot) is _Batch:
                        slot.add(reply)
                    elif not slot.done():
                        if type(reply) is ReplyError:
                            slot.set_exception(reply)
                        else:
                            slot.set_result(reply)
                    else:  # cancelled by its caller: to its orphan handler, if any
                        deliver(slot, reply, type(reply) is ReplyError)
            if self._closed:
                return
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._lose(ConnectionError(f"connection to Redis lost: protocol error: {exc}"))
                return

    def eof_received(self) -> bool:
        # Redis closing its side ends the connection; returning False lets
        # asyncio close ours, and connection_lost reports it.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else (
            str(exc) if exc is not None else "Server closed the connection")
        self._lose(ConnectionError(f"connection to Redis lost: {reason}"))

    def _push(self, reply: Any, handler: Callable[[Any], None] | None = None) -> None:
        """Give a pub/sub reply (or the final error) to the subscriber's handler."""
        handler = handler or self._push_handler
        if handler is None:
            return
        try:
            handler(reply)
        except (SystemExit, KeyboardInterrupt):
            raise  # stops the loop, as from any callback (the extension does the same)
        except BaseException as exc:  # the handler's bug: reported, not raised into the loop's reader
            self._loop.call_exception_handler({
                "message": "tinytown: exception in a pub/sub handler",
                "exception": exc, "protocol": self})

    def _lose(self, error: ConnectionError) -> None:
        """The connection is gone: fail everything pending, tell the subscriber."""
        handler = self._push_handler
        self._shut(error)
        self._push(error, handler)

    def _shut(self, error: ConnectionError) -> None:
        if self._tls is not None and not self._closed:
            self._tls_loss = error
        self._closed = True
        self._connected = False
        self._push_handler = None
        self._out.clear()
        self._out_bytes = 0
        transport = self._transport
        sock = self._sock
        if sock is not None:
            _open_sockets.discard(sock)
        if self._fork_gen != FORKS[0]:
            # Inherited across fork(): the event loop's epoll set is the
            # parent's too, so the transport is left alone (no unregistering);
            # the socket already points at /dev/null (_after_fork_in_child).
            transport = None
        if transport is not None:
            # asyncio closes the socket on its next iteration; hang up now, as
            # the extension does, so that Redis sees the client gone before
            # anything this loop sends next (e.g. a PUBLISH counting subscribers).
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            except OSError:
                pass
            transport.abort()
        elif self._sock is not None:
            self._sock.close()
        task = self._connect_task
        if task is not None:
            task.cancel()
        waiter = self._connect_waiter
        self._connect_waiter = None
        if waiter is not None:
            deliver(waiter, ConnectionError("connection closed before it was established"), True)
        waiting = self._waiting
        self._waiting = deque()
        self._pending = 0
        for slot in waiting:
            if slot is _SUBSCRIBED:
                continue
            if type(slot) is _Batch:
                slot.add(error)
            else:
                deliver(slot, error, True)
        waiters, self._drain_waiters = self._drain_waiters, deque()
        for fut, _ in waiters:
            deliver(fut, error, True)

    # -- writing ----------------------------------------------------------

    def _send(self, data: bytes, was_idle: bool) -> None:
        # An idle connection writes at once (lowest latency); commands issued
        # while replies are outstanding are written together by one flush at
        # the end of the loop iteration, like the extension does.
        if was_idle:
            if self._out:
                self._out.append(data)
                data = b"".join(self._out)
                self._out.clear()
                self._out_bytes = 0
            self._transport.write(data)  # type: ignore[union-attr]
            if self._drain_waiters:
                self._wake_writers()
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._transport is None or self._closed:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        self._transport.write(data)
        if self._drain_waiters:
            self._wake_writers()

    # -- backpressure -----------------------------------------------------

    def _set_transport_limits(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.set_write_buffer_limits(high=self._low_water, low=self._low_water)

    def pause_writing(self) -> None:
        pass  # writers look at write_buffer_size (wait_writable)

    def resume_writing(self) -> None:
        # The transport's buffer is down to the low-water mark.
        if self._drain_waiters:
            self._wake_writers()

    def _wake_writers(self) -> None:
        # Down to the low-water mark: wake the first waiting writers, in
        # order, as many as the bytes they announced fit under the high mark
        # (at least one); waking all would have each look again: quadratic.
        size = self.write_buffer_size
        if size > self._low_water or self._recheck_scheduled:
            # Above: the transport calls resume_writing when it is down to
            # it. Recheck pending: writers woken before have not written yet.
            return
        budget = self._high_water - size
        woke = False
        waiters = self._drain_waiters
        while waiters:
            fut, n = waiters[0]
            if fut.done():  # its caller was cancelled
                waiters.popleft()
                continue
            if woke and n > budget:
                break
            waiters.popleft()
            deliver(fut, None, False)
            budget -= n
            woke = True
        if woke and waiters and not self._recheck_scheduled:
            # Once the woken writers have run: wake more if there is room.
            self._recheck_scheduled = True
            self._loop.call_soon(self._recheck_writers)

    def _recheck_writers(self) -> None:
        self._recheck_scheduled = False
        if self._drain_waiters and not self._closed:
            self._wake_writers()

    @property
    def write_buffer_size(self) -> int:
        """Bytes issued but not yet written to the socket (this connection's
        pending flush plus asyncio's transport buffer)."""
        transport = self._transport
        if transport is None or self._closed:
            return self._out_bytes
        return self._out_bytes + transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
        """Set the high- and low-water marks (bytes) of :meth:`wait_writable`.

        ``low`` defaults to ``high // 4``; raises InvalidArgumentError unless
        ``0 <= low <= high``.
        """
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise InvalidArgumentError(
                f"write buffer limits need 0 <= low <= high, got high={high}, low={low}")
        self._high_water, self._low_water = high, low
        self._set_transport_limits()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(high, low)`` in bytes."""
        return (self._high_water, self._low_water)

    def wait_writable(self, nbytes: int = 0) -> asyncio.Future[None] | None:
        """None while :attr:`write_buffer_size` is at most the high-water mark
        and no writer waits; else a future, resolved (first come, first
        served) once the size is down to the low-water mark and the
        ``nbytes`` (int, the caller's estimate of what it will write) of the
        writers before it and its own fit under the high-water mark (the
        first writer always goes). Failed with ConnectionError if the
        connection goes first. A woken writer writes without asking again."""
        if self._closed or (not self._drain_waiters and self.write_buffer_size <= self._high_water):
            return None
        fut: asyncio.Future[None] = self._create_future()
        self._drain_waiters.append((fut, nbytes))
        if not self._recheck_scheduled and self.write_buffer_size <= self._low_water:
            self._recheck_scheduled = True  # nothing left to write that would wake it
            self._loop.call_soon(self._recheck_writers)
        return fut

    # -- commands ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._fork_gen != FORKS[0]:
            self._drop_forked()
            raise ConnectionError(
                "this connection to Redis was inherited across fork(): the child may not "
                "use it (its socket belongs to the parent); open a new one")
        if self._closed or not self._connected:
            if self._tls is not None and self._tls_loss is not None:
                # A TLS server refuses a client (no client certificate) with an
                # alert right after the handshake: say why, not just "closed".
                raise ConnectionError(str(self._tls_loss))
            raise ConnectionError(
                "connection to Redis is closed" if self._closed else "connection to Redis is not open")
        if not self._in_own_loop():
            running = _get_running_loop()
            if running is not None:
                if running is not self._loop:
                    raise EventLoopError(
                        "this tinytown connection belongs to another event loop: use a "
                        "Channel only from the loop it was connected on (nothing was sent)")
                self._loop_thread = get_ident()

    def _in_own_loop(self) -> bool:
        """True if the caller is in this connection's loop: that loop is
        running in this thread (a thread runs one loop at a time). Else
        _check_open makes the exact test (asyncio._get_running_loop() costs a
        getpid() system call: too much for every command)."""
        if self._loop_has_thread_id:  # asyncio's loops: the thread running them, or None
            # (private to asyncio's loops, so undeclared in typeshed)
            return self._loop._thread_id == get_ident()  # type: ignore[attr-defined, no-any-return]
        return self._loop_thread == get_ident() and self._loop.is_running()

    def _drop_forked(self) -> None:
        if not self._closed:
            self._shut(ConnectionError("connection to Redis inherited across fork(): dropped"))

    def execute(self, *args: Any) -> PyReplyFuture:
        """Send one command; returns a future of its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list. An error reply sets :class:`tinytown.ReplyError` on the future.
        """
        # (the loop test of _in_own_loop: the caller is in the thread running
        # this connection's loop; a call from another thread's loop would
        # write here and then await a future of the wrong loop)
        if self._closed or self._push_handler is not None or self._fork_gen != FORKS[0] \
                or not self._connected or (self._loop._thread_id != get_ident() if self._loop_has_thread_id  # type: ignore[attr-defined]
                                           else not self._in_own_loop()):
            self._check_open()  # the exact tests, which raise the right error
            if self._push_handler is not None:
                raise InvalidArgumentError("this connection is subscribed: it takes no other command")
        data = encode_command(args)
        name = args[0]
        if type(name) is not bytes or name not in PLAIN_NAMES:
            check_command(args)
        if self._closed:  # converting an argument ran code that closed it
            raise ConnectionError("connection to Redis closed while the command was prepared")
        was_idle = self._pending == 0
        fut = PyReplyFuture(loop=self._loop)
        self._waiting.append(fut)
        self._pending += 1
        self._send(data, was_idle)
        return fut

    def execute_many(self, commands: Iterable[Sequence[Any]],
                     replies: bool = True) -> asyncio.Future[list[Any] | None]:
        """Send many commands in one write; returns one future.

        It resolves to the list of replies (error replies included as
        ReplyError instances) or, with ``replies=False``, to None; if any
        reply is an error, the future fails with the first one, once every
        reply is in. Commands are sent in order. Every command is encoded
        before anything is sent, so a bad argument sends nothing.
        """
        self._check_open()
        if self._push_handler is not None:
            raise InvalidArgumentError("this connection is subscribed: it takes no other command")
        encoded = []
        for command in commands:
            command = command if isinstance(command, (tuple, list)) else tuple(command)
            encoded.append(encode_command(command))
            check_command(command)
        if self._closed:  # converting an argument ran code that closed it
            raise ConnectionError("connection to Redis closed while the commands were prepared")
        future = PyReplyFuture(loop=self._loop)
        if not encoded:
            future.set_result([] if replies else None)
            return future
        batch = _Batch(future, len(encoded), replies)
        was_idle = self._pending == 0
        self._waiting.extend([batch] * len(encoded))
        self._pending += len(encoded)
        self._send(b"".join(encoded), was_idle)
        return future

    def subscribe(self, handler: Callable[[Any], None], *channels: Any) -> None:
        """Turn this connection into a subscriber of ``channels``.

        Every pub/sub reply (subscribe confirmations and messages, as lists)
        is passed to ``handler``; when the connection goes away, ``handler``
        receives the ConnectionError instead. No other command may be sent
        on a subscribed connection.
        """
        self._check_open()
        if not channels:
            raise InvalidArgumentError("subscribe needs at least one channel")
        if self._push_handler is not None or self._subscribed:
            raise InvalidArgumentError("subscribe: this connection is subscribed already")
        data = encode_command((b"SUBSCRIBE",) + channels)
        if self._closed:
            raise ConnectionError("connection to Redis closed while the command was prepared")
        if handler is None:
            raise InvalidArgumentError("subscribe needs a handler")
        self._push_handler = handler
        self._waiting.append(_SUBSCRIBED)
        self._send(data, True)

    def close(self) -> None:
        """Close now; every pending call fails with ConnectionError. In the
        child of a fork(), the inherited connection is dropped untouched."""
        self._push_handler = None
        if self._closed or self._where is None:
            self._closed = True
            return
        self._shut(ConnectionError("connection to Redis closed"))

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed or lost (or before any connect),
        or in the child of a fork() (the inherited connection is dropped there)."""
        if self._fork_gen != FORKS[0] and not self._closed:
            self._drop_forked()
        return self._closed or self._where is None

    @property
    def pending_replies(self) -> int:
        """Number of commands sent whose replies have not arrived."""
        return self._pending

    pending = pending_replies

    def fileno(self) -> int:
        sock = self._sock
        return -1 if sock is None or self._closed else sock.fileno()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else ("open" if self._connected else "connecting")
        return f"<tinytown python Connection {self._where} {state} pending={self._pending}>"

