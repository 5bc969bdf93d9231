"""tinytown's pure-Python blocking transport: the fallback for the extension's SyncConnection.

Same interface and behaviour as :class:`tinytown._transport.ext.SyncConnection`
(the Cython connection on hiredis's redisContext): one blocking Redis
connection, commands encoded with the extension's argument rules
(:func:`tinytown._transport.resp.encode_command`), replies parsed by the ``hiredis``
package's ``Reader`` (the parser the async Python transport uses), typed
errors, a ``read_reply`` whose wait is bounded, and ``close`` from any thread.

It also carries TLS (``ssl.SSLSocket``), which the extension cannot: the
hiredis it is built against may have no TLS (Debian's 0.14 has none).

Signals: Python retries a system call that a signal interrupted after
running the handlers (PEP 475); if a handler raises (Ctrl-C), the exception
propagates out of the wait, as in the extension. A Python signal handler runs
in the main thread between two bytecodes (after a call into C returns, at a
function's start, at a loop's jump back), whichever thread the signal was
delivered to, so ``pthread_sigmask`` in the calling thread cannot hold it
back while another thread runs. Instead, each step that moves data off the
socket or onto it is one chain of C calls that keeps its result in the
connection (``deque.extend(map(sock.recv, ...))``, ``reader.feed`` of a
chunk together with its removal, ``(value,) = islice(...)`` for the reply
handed out): wherever a handler raises, every byte sent is counted and every
byte received is in the connection (socket, ``_rx``, the reader, ``_ready``)
or already returned, so an interrupted reply can still be read. TLS
sockets (``ssl.SSLSocket``) read and write through Python code, where a
handler can drop what was just read or the count just sent: a handler
raising inside a read or write there closes the connection instead.

Needs the ``hiredis`` package: ``pip install 'tinytown[python]'``.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis

from ..errors import ConcurrentUseError, ConnectionError, InvalidArgumentError, ReplyError
from .futures import FORKS
from .resp import RESP2_SCALARS, encode_command, resp2_shaped

__all__ = ["PySyncConnection"]

# is_usable() probes the socket only after this long without a reply.
_IDLE_PROBE_AFTER = 0.05
_READ_SIZE = 65536
# What the reader's gets() returns while no whole reply is buffered (a reply
# can be anything else, 0 and False included).
_NOT_ENOUGH = object()
#: The longest connect wait, in seconds (about 31 years).
_LONGEST_CONNECT_WAIT = 1e9
#: Consumes an iterator in C (a deque of maxlen 0 keeps nothing).
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend
#: The longest single poll(2) wait, in milliseconds (one day).
_POLL_STEP_MS = 86_400_000.0


class PySyncConnection:
    """One blocking Redis connection in pure Python (+ hiredis's parser).

    ``PySyncConnection()``, then :meth:`connect_unix` or :meth:`connect_tcp`.
    Calls block the calling thread until Redis answers. If the connection
    drops, the call raises :class:`tinytown.ConnectionError` and the
    connection is closed. One thread at a time: a second thread calling in
    gets :class:`tinytown.ConcurrentUseError`; :meth:`close` may come from
    any thread and wakes a call blocked in another one.
    """

    def __init__(self) -> None:
        self.where: str | None = None
        self.pending = 0                    # commands sent whose replies are unread
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_NOT_ENOUGH)
        # Replies parsed but not yet handed to a caller. They are moved out of
        # the reader by deque.extend(iter(reader.gets, _NOT_ENOUGH)), all in
        # C: no signal handler can run between parsing a reply and keeping it.
        self._ready: collections.deque[Any] = collections.deque()
        # Chunks received from the socket and not yet fed to the reader
        # (b"": the server closed the connection). recv's result is kept here
        # by deque.extend(map(sock.recv, ...)), in C, so a signal handler
        # that raises right after the recv cannot drop the bytes.
        self._rx: collections.deque[bytes] = collections.deque()
        # What each send() of the current write returned, kept the same way:
        # after an interruption, sum(_sent) says whether the command is out.
        self._sent: list[int] = []
        # {"owner": thread id} while a thread is inside a call. Claimed with one
        # dict.setdefault (atomic under the GIL, no bytecode boundary between
        # the test and the claim), so a signal handler that raises right after
        # it cannot leave a claim its own thread then mistakes for another's.
        self._claim: dict[str, int] = {}
        self._closing = False               # close() came while busy
        self._last_reply_at = 0.0
        self._fork_gen = FORKS[0]           # FORKS[0] when connected (see _drop_forked)

    # -- opening ----------------------------------------------------------

    def connect_unix(self, path: str, timeout: float = 5.0) -> None:
        """Connect to a Unix socket, waiting at most ``timeout`` seconds."""
        self._check_unused(timeout)
        self.where = f"unix:{path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._open(sock, path, timeout)

    def connect_tcp(self, host: str, port: int, timeout: float = 5.0, *,
                    tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        """Connect to ``host`` (a name or an address) and ``port``, waiting at
        most ``timeout`` seconds for the connection (and the TLS handshake).

        With ``tls``, the connection is wrapped in TLS with that context;
        ``server_hostname`` (default ``host``) is the name the server's
        certificate is checked against when the context checks hostnames.
        A failed handshake or certificate check raises ConnectionError.
        """
        self._check_unused(timeout)
        self.where = f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, OverflowError, UnicodeError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {self.where}: {exc}") from None
        # IPv4 first, as hiredis does.
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._open(sock, sockaddr, timeout, tls, server_hostname or host)

    def _check_unused(self, timeout: float) -> None:
        if self._sock is not None or self.where is not None:
            raise InvalidArgumentError("a SyncConnection can be connected only once")
        if not timeout > 0:
            raise InvalidArgumentError(f"connect timeout must be positive, not {timeout!r}")

    def _open(self, sock: socket.socket, address: Any, timeout: float,
              tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> None:
        try:
            # settimeout() overflows (OverflowError) past time_t: a longer
            # wait is as good as forever, as in the extension.
            sock.settimeout(min(timeout, _LONGEST_CONNECT_WAIT))
            sock.connect(address)
            if tls is not None:
                # wrap_socket takes over the socket (sock is detached from it).
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
            # No timeout after the connect: calls wait as long as Redis takes,
            # and read_reply() bounds its own wait with poll().
            sock.settimeout(None)
        except ssl.SSLError as exc:
            sock.close()
            raise ConnectionError(
                f"cannot connect to Redis at {self.where}: TLS handshake failed: "
                f"{getattr(exc, 'verify_message', None) or exc.reason or exc}") from None
        except TimeoutError:
            sock.close()
            raise ConnectionError(f"cannot connect to Redis at {self.where}: Connection timed out") from None
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
            raise ConnectionError(f"cannot connect to Redis at {self.where}: {reason}") from None
        self._sock = sock
        self._fork_gen = FORKS[0]

    # -- state --------------------------------------------------------------

    def _enter(self) -> socket.socket:
        if self._fork_gen != FORKS[0]:
            self._drop_forked()
            raise ConnectionError(
                "this connection to Redis was inherited across fork(): the child may not "
                "use it (the parent's replies would be read here); open a new one")
        me = threading.get_ident()
        if self._claim.setdefault("owner", me) != me:
            raise ConcurrentUseError(
                "this tinytown connection is in use by another thread: "
                "give each thread its own SyncChannel")
        sock = self._sock
        if sock is None:
            self._claim.pop("owner", None)
            raise ConnectionError(
                "connection to Redis is closed" if self.where is not None
                else "connection to Redis is not open")
        return sock

    def _leave(self) -> None:
        self._claim.pop("owner", None)
        if self._closing:
            self._closing = False
            self._free()

    def _drop_forked(self) -> None:
        """In the child of a fork: let go of the inherited socket without any
        I/O on it. Only this process's copy of the descriptor is closed (never
        shutdown(2) nor a TLS close_notify, which would cut the parent's)."""
        sock = self._sock
        self._sock = None
        self._fork_gen = FORKS[0]
        self.pending = 0
        self._ready.clear()
        # Half a reply of the parent's may be buffered: start parsing afresh.
        self._reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_NOT_ENOUGH)
        self._claim.clear()     # a claim of a parent's thread, which the child has not
        self._closing = False
        if sock is not None:
            try:
                # detach() hands over the fd without closing it (for an
                # SSLSocket, without touching the TLS session).
                os.close(sock.detach())
            except OSError:
                pass

    def _free(self) -> None:
        sock = self._sock
        self._sock = None
        self.pending = 0
        self._ready.clear()
        self._rx.clear()
        if sock is not None:
            sock.close()

    def _lost(self, exc: BaseException | None = None) -> ConnectionError:
        """The ConnectionError for a failed call; closes the socket."""
        if self._closing or self._sock is None:
            error = ConnectionError("connection to Redis closed")
        elif isinstance(exc, OSError) and (exc.strerror or str(exc)):
            error = ConnectionError(
                f"connection to Redis lost ({self.where}): {exc.strerror or exc}")
        elif exc is not None:
            error = ConnectionError(f"connection to Redis lost ({self.where}): {exc}")
        else:
            error = ConnectionError(f"connection to Redis lost ({self.where}): Server closed the connection")
        self._closing = False
        self._free()
        return error

    # -- I/O ----------------------------------------------------------------

    def _write(self, sock: socket.socket, data: bytes, commands: int) -> None:
        """Send ``data`` (``commands`` whole commands); ``pending`` counts them
        once they are all out.

        If a signal handler raises meanwhile: when every byte went out, the
        commands count as pending (their replies will come and can be read);
        when none did, nothing changed; part of a command would leave the
        server waiting for the rest, so the connection is closed.
        """
        sent = self._sent
        sent.clear()
        size = len(data)
        view = memoryview(data)
        try:
            done = 0
            while done < size:
                # send()'s count goes into ``sent`` in C: no handler runs
                # between the bytes leaving and their being counted.
                sent.extend(map(sock.send, (view[done:],)))
                done = sum(sent)
        except OSError as exc:
            raise self._lost(exc) from None
        except BaseException:
            done = sum(sent)
            if done == size:
                self.pending += commands
            elif (done or isinstance(sock, ssl.SSLSocket)) and self._sock is not None:
                # (SSLSocket.send returns through Python code, where a handler
                # can drop its count: the write cannot be trusted.)
                self._free()
            raise
        self.pending += commands
        if self._closing:
            raise self._lost()

    def _read(self, sock: socket.socket, deadline: float | None) -> Any:
        """The next reply (an error reply as a ReplyError instance);
        TimeoutError at ``deadline`` (monotonic seconds; None: none)."""
        self._fill(sock, deadline)
        (reply,) = itertools.islice(iter(self._ready.popleft, _NOT_ENOUGH), 1)
        if self.pending:            # pub/sub messages answer no command
            self.pending -= 1
        return reply

    def _fill(self, sock: socket.socket, deadline: float | None) -> None:
        """Read until at least one reply is parsed and kept in ``_ready``.

        A signal handler may raise at any point: the bytes read so far stay
        in ``_rx``, the reader or ``_ready``, for the next call."""
        reader, ready, rx = self._reader, self._ready, self._rx
        while not ready:
            try:
                while rx:
                    if not rx[0]:
                        raise self._lost()
                    # Feeding a chunk and taking it off _rx is one C chain:
                    # never fed twice, never dropped.
                    _consume(map(reader.feed, itertools.islice(iter(rx.popleft, None), 1)))
                ready.extend(iter(reader.gets, _NOT_ENOUGH))
            except hiredis.ProtocolError as exc:
                raise self._lost(ValueError(f"protocol error: {exc}")) from None
            if ready:
                for reply in ready:
                    if type(reply) not in RESP2_SCALARS and not resp2_shaped(reply):
                        self._free()
                        raise ConnectionError(
                            "connection to Redis dropped: the server sent a RESP3 reply "
                            f"({type(reply).__name__}) on a RESP2 connection (protocol violation)")
                break
            if self._closing:
                raise self._lost()
            if deadline is not None and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                left = deadline - time.monotonic()
                if left <= 0 or not self._wait_readable(sock, left):
                    raise TimeoutError("no reply from Redis in time")
            try:
                rx.extend(map(sock.recv, (_READ_SIZE,)))
            except OSError as exc:   # ssl.SSLError is one
                raise self._lost(exc) from None
            except BaseException:
                # SSLSocket.recv returns through Python code, where a handler
                # can drop the bytes read: never go on out of step.
                if isinstance(sock, ssl.SSLSocket) and self._sock is not None:
                    self._free()
                raise
        self._last_reply_at = time.monotonic()

    @staticmethod
    def _wait_readable(sock: socket.socket, seconds: float) -> bool:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        # poll(2) takes an int of milliseconds (OverflowError beyond ~24 days),
        # so a longer wait (a BLOCK of up to 2**63-1 ms) goes in steps of a day.
        deadline = time.monotonic() + seconds
        while True:
            # Retried after a signal with the time left (PEP 475).
            if poller.poll(min(seconds * 1000.0 + 1, _POLL_STEP_MS)):
                return True
            seconds = deadline - time.monotonic()
            if seconds <= 0:
                return False

    # -- commands ---------------------------------------------------------

    def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`tinytown.ReplyError`. If a signal
        handler raises (Ctrl-C), the connection is closed (its reply would
        arrive out of step) and the exception propagates.
        """
        sock = self._enter()
        try:
            if self.pending:
                raise InvalidArgumentError(
                    f"{self.pending} replies are still unread on this connection (read_reply)")
            data = encode_command(args)
            try:
                self._write(sock, data, 1)
                value = self._read(sock, None)
            except BaseException:
                if self._sock is not None and self.pending:
                    self._free()
                raise
        finally:
            self._leave()
        if type(value) is ReplyError:
            raise value
        return value

    def execute_many(self, commands: Iterable[Sequence[Any]], replies: bool = True) -> list[Any] | None:
        """Send many commands in one write, then read every reply.

        Returns the list of replies (error replies included as ReplyError
        instances) or, with ``replies=False``, None; if any reply is an
        error, raises the first one once every reply is in. An argument that
        cannot be sent raises before anything is written.
        """
        sock = self._enter()
        results: list[Any] | None = [] if replies else None
        error: ReplyError | None = None
        try:
            if self.pending:
                raise InvalidArgumentError(
                    f"{self.pending} replies are still unread on this connection (read_reply)")
            encoded = [encode_command(command if isinstance(command, (tuple, list)) else tuple(command))
                       for command in commands]
            if encoded:
                try:
                    self._write(sock, b"".join(encoded), len(encoded))
                    while self.pending:
                        value = self._read(sock, None)
                        if type(value) is ReplyError and error is None:
                            error = value
                        if results is not None:
                            results.append(value)
                except BaseException:
                    if self._sock is not None and self.pending:
                        self._free()
                    raise
        finally:
            self._leave()
        if error is not None:
            raise error
        return results

    def send_command(self, *args: Any) -> None:
        """Send one command without reading its reply (see :meth:`read_reply`).

        For blocking and subscribing commands (BLPOP, SUBSCRIBE, MONITOR),
        whose reply the caller wants to wait for in an interruptible way.
        """
        sock = self._enter()
        try:
            data = encode_command(args)
            # An interruption leaves the connection usable if the command
            # went out whole (pending counts it) or not at all (see _write).
            self._write(sock, data, 1)
        finally:
            self._leave()

    def read_reply(self, timeout: float | None = None) -> Any:
        """Wait for the next reply (or pub/sub message, or MONITOR line).

        ``timeout`` is in seconds (None waits forever); when it passes,
        :class:`TimeoutError` is raised and the connection stays usable. An
        error reply raises :class:`tinytown.ReplyError`. If a signal handler
        raises (Ctrl-C), the exception propagates and the connection is left
        as it was: the reply can still be read.
        """
        deadline = None
        if timeout is not None:
            if not timeout >= 0:
                raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
            deadline = time.monotonic() + float(timeout)
        sock = self._enter()
        try:
            self._fill(sock, deadline)
        finally:
            self._leave()
        return self._deliver()

    def _deliver(self) -> Any:
        """Hand the first kept reply to the caller.

        No signal handler can run between taking the reply off ``_ready``
        and returning it: the take is an unpacking (UNPACK_SEQUENCE calls the
        iterator in C), and what follows has no call, no loop and no function
        start, where CPython runs pending handlers. Called as
        ``box.extend(map(conn.read_reply, ...))`` the caller has the reply
        before any handler can run; interrupted earlier, the reply stays
        here for the next read_reply."""
        (value,) = itertools.islice(iter(self._ready.popleft, _NOT_ENOUGH), 1)
        if self.pending:            # pub/sub messages answer no command
            self.pending -= 1
        if value.__class__ is ReplyError:
            raise value
        return value

    def close(self) -> None:
        """Close the connection. Safe from any thread: a call blocked in
        another thread wakes up with ConnectionError. In the child of a
        fork(), only the child's copy of the socket is closed."""
        sock = self._sock
        if sock is None:
            return
        if self._fork_gen != FORKS[0]:
            self._drop_forked()
            return
        if "owner" in self._claim:
            # The thread inside the call closes the socket when it leaves;
            # shutting the socket down wakes it. socket.socket's own
            # shutdown, not SSLSocket's (which would unwrap TLS under the
            # reading thread's feet).
            self._closing = True
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            self._free()

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed or lost (or inherited across fork())."""
        if self._fork_gen != FORKS[0]:
            self._drop_forked()
        return self._sock is None

    def is_usable(self) -> bool:
        """False if the connection is closed, or was closed by the server while idle.

        An idle connection has nothing to read: if the socket is readable,
        the server closed it (or it broke), so it is closed here and False
        is returned. Probed only when the last reply is more than 50 ms old.
        In the child of a fork() the inherited connection is dropped (False).
        """
        if self._fork_gen != FORKS[0]:
            self._drop_forked()
        sock = self._sock
        if sock is None:
            return False
        if "owner" in self._claim or self.pending \
                or time.monotonic() - self._last_reply_at < _IDLE_PROBE_AFTER:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        if poller.poll(0):
            self._free()
            return False
        return True

    @property
    def pending_replies(self) -> int:
        """Number of commands sent whose replies have not been read."""
        return self.pending

    def fileno(self) -> int:
        sock = self._sock
        return sock.fileno() if sock is not None else -1

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<tinytown python SyncConnection {self.where} {state} pending={self.pending}>"
