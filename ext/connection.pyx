# An asyncio transport over hiredis's async context.
#
# hiredis owns the socket and the protocol; the asyncio loop owns the waiting.
# hiredis asks for read/write interest through the ev.* hooks below, which
# map onto loop.add_reader/add_writer. Replies arrive in command order and
# resolve the future (or batch) that was passed to hiredis as privdata; one
# reference to that object is held for every callback hiredis has pending,
# and released in the callback, which hiredis always calls exactly once
# (with a NULL reply when the connection goes away).
#
# Writes are pipelined automatically: a command issued on an idle connection
# is written at once (lowest latency); commands issued while replies are
# outstanding are appended to hiredis's output buffer and written together by
# one call_soon flush at the end of the loop iteration.
#
# hiredis's output buffer is kept small (OBUF_BOUND): after a partial write
# hiredis moves the unsent rest to the front of the buffer, so a buffer of N
# bytes written in pieces costs O(N^2). Commands issued while it is full, and
# large commands, wait formatted in the connection's own queue (in order, with
# their callback data) and are handed to hiredis as the buffer drains, large
# ones in CHUNK pieces. Writing N queued bytes thus costs O(N).
#
# Needs from the .pyx files included before it (see transport.pyx): reply_to_py
# (reply.pyx); ReplyFuture (future.pyx); _ArgvBuf, _argv_init,
# _argv_close, _converted, _fill_argv, _checked_command (argv.pyx). The tt_misuse.h
# declarations come from includes/misuse.pxd.

cdef size_t OBUF_BOUND = 256 * 1024   # hand hiredis more only below this
cdef size_t DIRECT_MAX = 64 * 1024    # larger commands go through the queue
cdef size_t CHUNK = 256 * 1024        # piece of a large command given at once


cdef struct _Queued:
    # A formatted command waiting for hiredis's output buffer to drain.
    char *cmd                 # from redisFormatCommandArgv (redisFreeCommand)
    size_t len
    size_t off                # bytes already handed to hiredis (> 0: its callback is registered)
    redisCallbackFn *fn
    void *privdata            # owns one reference (NULL for _on_push)


# RESP formatting of small commands (also used by sync_connection.pyx).
cdef extern from "tt_format.h" nogil:
    size_t tt_format_command(int argc, const char **argv, const size_t *lens, char *buf, size_t cap)

cdef enum:
    FORMAT_BUF = 4096       # commands up to about this size are formatted here (tt_format.h)

if tt_watch_forks() != 0:
    raise ImportError("tinytown: pthread_atfork failed")

import asyncio as _asyncio_mod
cdef object _get_running_loop = _asyncio_mod._get_running_loop
from tinytown.errors import EventLoopError


# Event loops that connections were opened on, with the fork generation then:
# a loop inherited across fork() shares its epoll set with the parent's, so a
# child may not open connections on it (they would be watched by the parent).
import weakref as _weakref
from collections import deque as _deque
cdef object _loop_generations = _weakref.WeakKeyDictionary()


cdef int _check_loop(object loop, unsigned long generation) except -1:
    running = _get_running_loop()
    if running is not None and running is not loop:
        raise EventLoopError(
            "this tinytown connection belongs to another event loop: use a Channel only "
            "from the loop it was connected on")
    try:
        seen = _loop_generations.get(loop)
        if seen is None:
            _loop_generations[loop] = generation
            return 0
    except TypeError:       # a loop that takes no weak reference: not tracked
        return 0
    if seen != generation:
        raise EventLoopError(
            "this event loop was inherited across fork(): its epoll set is shared with the "
            "parent process, so a child may not connect on it; run the child's code in a new "
            "event loop (asyncio.run) with a new Channel")
    return 0


cdef class _Batch:
    """One future for many commands: resolved when the last reply is in."""
    cdef ReplyFuture future
    cdef Py_ssize_t remaining
    cdef object error          # first error reply or connection error
    cdef list results          # None when the caller does not want replies


cdef object _lost(const redisAsyncContext *ac):
    if ac.data != NULL and (<Connection>ac.data).guard.tripped:
        return ConnectionError(
            "connection to Redis dropped: the server sent a reply that no command was "
            "waiting for (protocol violation)")
    if ac.err:
        return ConnectionError(f"connection to Redis lost: {(<bytes>ac.errstr).decode('utf-8', 'replace')}")
    return ConnectionError("connection to Redis closed")


cdef inline void _settle(object fut, object value, bint failed) noexcept:
    # A future cancelled by its caller is done already: its reply is dropped
    # here, which keeps the reply stream in step with the commands.
    try:
        if fut.done():
            return
        if failed:
            fut.set_exception(value)
        else:
            fut.set_result(value)
    except BaseException:
        # The loop may be closed during interpreter shutdown; nothing to do.
        pass


cdef inline void _resolve(Connection conn, ReplyFuture fut, object value, bint failed) noexcept:
    if not fut._settle(value, failed):
        if fut._state == CANCELLED and fut.orphan is not None:
            handler, fut.orphan = fut.orphan, None
            _run_later(conn, fut._loop, _run_orphan, fut._loop, handler, value)
        return
    if not fut._has_callbacks():
        return
    if conn is not None and conn.in_read:
        # Woken at the end of the reader callback, in this loop iteration.
        try:
            conn.wakeups.append(fut)
            return
        except BaseException:
            pass
    fut._schedule_callbacks()


cdef void _on_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept:
    cdef ReplyFuture fut = <ReplyFuture>privdata
    Py_DECREF(fut)                      # the reference taken in Connection.execute
    cdef Connection conn = None
    cdef object value
    if ac.data != NULL:
        conn = <Connection>ac.data
        conn.pending -= 1
    if reply == NULL:
        _resolve(conn, fut, _lost(ac), True)
        return
    try:
        value = reply_to_py(<redisReply *>reply)
    except BaseException as exc:
        _resolve(conn, fut, exc, True)
        return
    _resolve(conn, fut, value, type(value) is ReplyError)


cdef void _on_batch_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept:
    cdef _Batch batch = <_Batch>privdata
    Py_DECREF(batch)                    # one reference per command of the batch
    cdef Connection conn = None
    cdef object value
    if ac.data != NULL:
        conn = <Connection>ac.data
        conn.pending -= 1
    try:
        if reply == NULL:
            value = _lost(ac)
        else:
            value = reply_to_py(<redisReply *>reply)
    except BaseException as exc:
        value = exc
    _batch_step(conn, batch, value)


cdef void _batch_step(Connection conn, _Batch batch, object value) noexcept:
    if isinstance(value, BaseException):
        if batch.error is None:
            batch.error = value
    if batch.results is not None:
        try:
            batch.results.append(value)
        except BaseException as exc:
            if batch.error is None:
                batch.error = exc
    batch.remaining -= 1
    if batch.remaining == 0:
        if batch.error is not None:
            _resolve(conn, batch.future, batch.error, True)
        else:
            _resolve(conn, batch.future, batch.results, False)


cdef void _report(object loop, str message, object exc, object where) noexcept:
    """An exception of a handler called from inside hiredis, given to the
    loop's exception handler (as asyncio does for callbacks)."""
    try:
        loop.call_exception_handler({"message": message, "exception": exc, "connection": where})
    except BaseException as exc2:  # a broken exception handler: last resort
        PyErr_WriteUnraisable(exc2)


def _run_push_handler(Connection conn, object handler, object item):
    try:
        handler(item)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report(conn.loop, "tinytown: exception in a pub/sub handler", exc, conn)


cdef void _run_later(Connection conn, object loop, object fn, object a, object b, object c) noexcept:
    """Run ``fn(a, b, c)``, a handler given a reply (an orphan or pub/sub
    handler: the caller's code, which may write), outside hiredis: hiredis
    still holds the reply and its callback list while it calls us, and a
    write from there (a put-back hitting EPIPE) once freed them under it. In
    a read: right after redisAsyncHandleRead returns, in order, before the
    woken tasks run; else (a write error, close) through call_soon."""
    try:
        if conn is not None and conn.in_read:
            conn.due.append((fn, a, b, c))
        else:
            loop.call_soon(fn, a, b, c)
    except BaseException as exc:    # the loop is closed: nobody is listening
        _report(loop, "tinytown: a reply was dropped (its event loop is closed)", exc, conn)


def _run_orphan(loop, handler, value):
    try:
        handler(value)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report(loop, "tinytown: exception in the orphan handler of a cancelled command",
                exc, None)


cdef void _call_push_handler(Connection conn, object handler, object item) noexcept:
    _run_later(conn, conn.loop, _run_push_handler, conn, handler, item)


cdef void _on_push(redisAsyncContext *ac, void *reply, void *privdata) noexcept:
    # Pub/sub replies; the handler lives on the Connection, so no reference
    # is held in privdata (hiredis keeps this callback for the whole session).
    if reply == NULL or ac.data == NULL:
        return
    cdef Connection conn = <Connection>ac.data
    if conn.push_handler is None:
        return
    try:
        item = reply_to_py(<redisReply *>reply)
    except BaseException as exc:
        item = exc
    _call_push_handler(conn, conn.push_handler, item)


cdef void _on_connect(const redisAsyncContext *ac, int status) noexcept:
    if ac.data != NULL:
        (<Connection>ac.data)._connected(status)


cdef void _on_disconnect(const redisAsyncContext *ac, int status) noexcept:
    if ac.data != NULL:
        (<Connection>ac.data)._disconnected(_lost(ac) if status != REDIS_OK else None)


cdef void _hook_add_read(void *data) noexcept:
    if data != NULL:
        (<Connection>data)._want_read(True)


cdef void _hook_del_read(void *data) noexcept:
    if data != NULL:
        (<Connection>data)._want_read(False)


cdef void _hook_add_write(void *data) noexcept:
    if data != NULL:
        (<Connection>data)._want_write(True)


cdef void _hook_del_write(void *data) noexcept:
    if data != NULL:
        (<Connection>data)._want_write(False)


cdef void _hook_cleanup(void *data) noexcept:
    if data != NULL:
        (<Connection>data)._detach_from_loop()


cdef class Connection:
    """One Redis connection on hiredis's async context, driven by an asyncio loop.

    ``Connection(loop)``, then ``await conn.connect_unix(path)`` or
    ``await conn.connect_tcp(ip, port)``. Every command method returns
    an asyncio future. Not thread-safe: use it from its loop's thread only.
    """

    cdef redisAsyncContext *ac
    cdef object loop
    cdef int fd
    cdef str where
    cdef readonly Py_ssize_t pending
    cdef bint connected
    cdef bint closed
    cdef bint reading          # registered with loop.add_reader
    cdef bint writing          # registered with loop.add_writer
    cdef bint in_command       # inside redisAsyncCommandArgv
    cdef bint needs_flush      # hiredis has output waiting
    cdef bint flush_scheduled  # a call_soon flush is queued
    cdef bint in_read          # inside redisAsyncHandleRead
    cdef list wakeups          # futures settled by this read, woken after it
    cdef list due              # (fn, a, b, c) handlers of replies of this read, run after it
    cdef object connect_waiter
    cdef object push_handler
    cdef object _create_future
    cdef object _call_soon
    cdef object _read_cb
    cdef object _write_cb
    cdef object _flush_cb
    cdef tt_guard guard        # refuses replies nobody waits for (tt_reply_guard.h)
    cdef _Queued *q            # commands waiting for hiredis's buffer: q[q_head : q_head + q_len]
    cdef Py_ssize_t q_head
    cdef Py_ssize_t q_len
    cdef Py_ssize_t q_cap
    cdef size_t q_bytes        # bytes of q not yet handed to hiredis
    cdef size_t high_water     # wait_writable() waits above this many queued bytes ...
    cdef size_t low_water      # ... until they are down to this many
    cdef object drain_waiters  # deque of (future, bytes) of wait_writable(), first come first
    cdef bint recheck_scheduled  # a call_soon _recheck_writers is queued
    cdef object _recheck_cb
    cdef tuple sub_names       # the channels of subscribe(), whose buffers the guard reads
    cdef const char **sub_ptrs
    cdef size_t *sub_lens
    cdef unsigned long fork_gen  # tt_fork_generation when connected (tt_misuse.h)
    cdef int tracked_fd        # the socket, in tt_misuse.h's list of open ones (or -1)
    cdef unsigned long loop_thread  # the thread last seen running the loop (_check_open)
    cdef object _loop_is_running
    cdef bint loop_has_tid         # an asyncio.BaseEventLoop: _thread_id tells (see _in_own_loop)

    def __cinit__(self, loop):
        self.loop = loop
        self.fd = -1
        self.tracked_fd = -1
        self.fork_gen = tt_fork_generation
        self._loop_is_running = loop.is_running
        # Never through loop.__dict__: on CPython 3.11+ taking an object's
        # __dict__ moves its attributes out of their inline slots into a
        # dict, which slows every attribute access of asyncio's own loop code
        # (~4k instructions per loop iteration, so per send).
        if isinstance(loop, _asyncio_mod.BaseEventLoop) and hasattr(loop, "_thread_id"):
            self.loop_has_tid = True
        self._create_future = loop.create_future
        self._call_soon = loop.call_soon
        self._read_cb = self._on_readable
        self._write_cb = self._on_writable
        self._flush_cb = self._flush
        self.wakeups = []
        self.due = []
        self.drain_waiters = _deque()
        self._recheck_cb = self._recheck_writers
        self.high_water = 4 * 2**20
        self.low_water = 2**20
        self.guard.pending = &self.pending

    cdef inline void _untrack(self) noexcept:
        if self.tracked_fd >= 0:
            tt_untrack_fd(self.tracked_fd)
            self.tracked_fd = -1

    def __dealloc__(self):
        cdef redisAsyncContext *ac = self.ac
        self._untrack()
        if ac != NULL:
            # The object is going away: detach it so that hiredis's final
            # callbacks (run by redisAsyncFree) do not touch it.
            self.ac = NULL
            ac.data = NULL
            ac.ev.data = NULL
            tt_guard_remove(ac)
            redisAsyncFree(ac)
        self._fail_queued(ConnectionError("connection to Redis closed"), True)
        PyMem_Free(self.q)
        PyMem_Free(self.sub_ptrs)
        PyMem_Free(self.sub_lens)

    # -- opening ----------------------------------------------------------

    def connect_unix(self, str path):
        """Start connecting to a Unix socket; returns a future resolved when connected.

        Call :meth:`close` to abandon a connect that takes too long.
        """
        cdef bytes cpath = path.encode()
        return self._attach(redisAsyncConnectUnix(cpath), f"unix:{path}")

    def connect_tcp(self, str host, int port):
        """Start connecting to a numeric IP address and port (resolve names first:
        hiredis would resolve them with a blocking call)."""
        cdef bytes chost = host.encode()
        return self._attach(redisAsyncConnect(chost, port), f"{host}:{port}")

    cdef object _attach(self, redisAsyncContext *ac, str where):
        if self.ac != NULL or self.closed or self.connect_waiter is not None:
            if ac != NULL:
                redisAsyncFree(ac)
            raise InvalidArgumentError("a Connection can be connected only once")
        try:
            _check_loop(self.loop, tt_fork_generation)
        except BaseException:
            if ac != NULL:
                redisAsyncFree(ac)
            raise
        self.fork_gen = tt_fork_generation
        if ac == NULL:
            raise MemoryError()
        if ac.err:
            message = (<bytes>ac.errstr).decode("utf-8", "replace")
            redisAsyncFree(ac)
            raise ConnectionError(f"cannot connect to Redis at {where}: {message}")
        if tt_track_fd(ac.c.fd) != 0:
            redisAsyncFree(ac)
            raise MemoryError()
        self.tracked_fd = ac.c.fd
        self.where = where
        self.ac = ac
        self.fd = ac.c.fd
        ac.data = <void *>self
        ac.ev.data = <void *>self
        ac.ev.addRead = _hook_add_read
        ac.ev.delRead = _hook_del_read
        ac.ev.addWrite = _hook_add_write
        ac.ev.delWrite = _hook_del_write
        ac.ev.cleanup = _hook_cleanup
        tt_guard_install(ac, &self.guard)
        self.connect_waiter = self._create_future()
        redisAsyncSetDisconnectCallback(ac, _on_disconnect)
        # Setting the connect callback asks for write interest: the socket
        # turning writable is how hiredis learns the connect finished.
        redisAsyncSetConnectCallback(ac, _on_connect)
        return self.connect_waiter

    cdef void _connected(self, int status) noexcept:
        waiter = self.connect_waiter
        self.connect_waiter = None
        if status == REDIS_OK:
            self.connected = True
            if waiter is not None:
                _settle(waiter, self, False)
            return
        # hiredis frees the context right after this callback returns.
        self._untrack()
        error = ConnectionError(
            f"cannot connect to Redis at {self.where}: "
            f"{(<bytes>self.ac.errstr).decode('utf-8', 'replace')}")
        self.ac = NULL
        self.closed = True
        if waiter is not None:
            _settle(waiter, error, True)

    cdef void _disconnected(self, object error) noexcept:
        self._untrack()         # hiredis closes the socket after this callback
        self.ac = NULL
        self.closed = True
        self.connected = False
        self._fail_queued(error if error is not None else ConnectionError("connection to Redis closed"))
        handler = self.push_handler
        if handler is not None:
            _call_push_handler(self, handler,
                               error if error is not None else ConnectionError("connection to Redis closed"))

    # -- event loop hooks -------------------------------------------------

    cdef void _want_read(self, bint on) noexcept:
        try:
            if on and not self.reading:
                self.loop.add_reader(self.fd, self._read_cb)
                self.reading = True
            elif not on and self.reading:
                self.reading = False
                self.loop.remove_reader(self.fd)
        except BaseException as exc:
            PyErr_WriteUnraisable(exc)

    cdef void _want_write(self, bint on) noexcept:
        self.needs_flush = on
        if on and self.in_command:
            return      # the caller decides between writing now and a batched flush
        try:
            if on and not self.writing:
                self.loop.add_writer(self.fd, self._write_cb)
                self.writing = True
            elif not on and self.writing:
                self.writing = False
                self.loop.remove_writer(self.fd)
        except BaseException as exc:
            PyErr_WriteUnraisable(exc)

    cdef void _detach_from_loop(self) noexcept:
        self._want_read(False)
        self.needs_flush = False
        self._want_write(False)

    def _on_readable(self):
        cdef list woken
        cdef Py_ssize_t i = 0
        if self.ac == NULL:
            return
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()     # an inherited loop in a forked child: not ours to read
            return
        self.in_read = True
        try:
            redisAsyncHandleRead(self.ac)
        finally:
            self.in_read = False
        if self.due:
            self._run_due()
        if self.wakeups:
            woken, self.wakeups = self.wakeups, []
            try:
                for i in range(len(woken)):
                    (<ReplyFuture>woken[i])._run_callbacks()
            except BaseException:
                # SystemExit or KeyboardInterrupt out of a woken task (the
                # rest is caught in _run_one): the other futures settled by
                # this read still wake, through call_soon, or whoever awaits
                # them (asyncio.run's shutdown, say) would wait forever.
                for i in range(i + 1, len(woken)):
                    (<ReplyFuture>woken[i])._schedule_callbacks()
                raise

    cdef int _run_due(self) except -1:
        # The handlers of this read's replies (see _run_later), in order;
        # SystemExit/KeyboardInterrupt out of one: the rest, and the
        # futures to wake, go through call_soon, then it propagates.
        cdef list due = self.due
        cdef Py_ssize_t i = 0
        self.due = []
        try:
            for i in range(len(due)):
                fn, a, b, c = due[i]
                fn(a, b, c)
        except BaseException:
            try:
                for fn, a, b, c in due[i + 1:]:
                    self._call_soon(fn, a, b, c)
                woken, self.wakeups = self.wakeups, []
                for fut in woken:
                    (<ReplyFuture>fut)._schedule_callbacks()
            except BaseException as exc:
                PyErr_WriteUnraisable(exc)
            raise
        return 0

    def _on_writable(self):
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
            return
        if self.ac != NULL:
            redisAsyncHandleWrite(self.ac)
            self._after_write()

    def _flush(self):
        self.flush_scheduled = False
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
            return
        if self.ac != NULL and self.needs_flush and not self.writing:
            redisAsyncHandleWrite(self.ac)
            self._after_write()

    cdef inline void _after_issue(self, bint was_idle) noexcept:
        if not self.needs_flush or self.writing or self.flush_scheduled or self.ac == NULL:
            return
        # Inside a reply callback (a command issued by an orphan handler that
        # hiredis's read called), hiredis must not be re-entered: 1.x asserts
        # in redisAsyncHandleWrite. The command is queued already, so the
        # order of the stream holds; only its write waits for the loop.
        if was_idle and not (self.ac.c.flags & REDIS_IN_CALLBACK):
            redisAsyncHandleWrite(self.ac)
            self._after_write()
        else:
            self.flush_scheduled = True
            try:
                self._call_soon(self._flush_cb)
            except BaseException as exc:
                self.flush_scheduled = False
                PyErr_WriteUnraisable(exc)

    # -- commands ---------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
        if self.ac == NULL or not self.connected:
            if self.fork_gen != tt_fork_generation:
                raise ConnectionError(
                    "this connection to Redis was inherited across fork(): the child may not "
                    "use it (its socket belongs to the parent); open a new one")
            raise ConnectionError(
                "connection to Redis is closed" if self.closed else "connection to Redis is not open")
        # The caller is in this connection's loop when that loop is running
        # in this thread (a thread runs one loop at a time). Else, the exact
        # test: asyncio._get_running_loop() costs a getpid() system call
        # (Python 3.11), too much for every command.
        if not self._in_own_loop():
            running = _get_running_loop()
            if running is not None:
                if running is not self.loop:
                    raise EventLoopError(
                        "this tinytown connection belongs to another event loop: use a "
                        "Channel only from the loop it was connected on (nothing was sent)")
                self.loop_thread = PyThread_get_thread_ident()
        return 0

    cdef inline bint _in_own_loop(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if self.loop_has_tid:
            # asyncio's loops keep the thread running them in _thread_id
            # (None when idle): reading it is cheaper than calling the Python
            # method is_running().
            tid = getattr(self.loop, "_thread_id", None)
            return PyLong_CheckExact(tid) and PyLong_AsUnsignedLong(tid) == me
        return me == self.loop_thread and self._loop_is_running()

    cdef void _drop_forked(self) noexcept:
        """In the child of a fork: let go of the inherited context without a
        word to the event loop (its epoll set is shared with the parent:
        unregistering the socket would unregister the parent's) and without
        writing. redisAsyncFree only closes this process's copy of the
        socket; pending calls fail with ConnectionError."""
        cdef redisAsyncContext *ac = self.ac
        self.push_handler = None
        self.reading = self.writing = False
        if ac == NULL:
            return
        ac.ev.data = NULL           # the ev hooks do nothing from now on
        self._untrack()
        self.ac = NULL
        self.closed = True
        self.connected = False
        redisAsyncFree(ac)

    cdef int _issue(self, object args, redisCallbackFn *fn, void *privdata) except -1:
        cdef _ArgvBuf argv
        cdef int rc
        cdef size_t n
        cdef char formatted[FORMAT_BUF]
        cdef tuple targs = _argv_init(&argv, args)
        try:
            # Python code may run while converting (and close this
            # connection): convert everything first, then look again.
            targs = _converted(targs)
            _fill_argv(targs, argv.ptrs, argv.lens)
            if self.ac == NULL or not self.connected:
                raise ConnectionError("connection to Redis closed while the command was prepared")
            if self.q_len or sdslen(self.ac.c.obuf) >= OBUF_BOUND \
                    or tt_wire_size(argv.argc, argv.lens) > DIRECT_MAX:
                self._enqueue(argv.argc, argv.ptrs, argv.lens, fn, privdata)
                return 0
            self.in_command = True
            n = tt_format_command(argv.argc, argv.ptrs, argv.lens, formatted, FORMAT_BUF)
            if n:
                rc = redisAsyncFormattedCommand(self.ac, fn, privdata, formatted, n)
            else:
                rc = redisAsyncCommandArgv(self.ac, fn, privdata, argv.argc, argv.ptrs, argv.lens)
        finally:
            self.in_command = False
            _argv_close(&argv)
        if rc != REDIS_OK:
            raise ConnectionError("connection to Redis is closing; command not sent")
        if privdata != NULL:
            Py_INCREF(<object>privdata)     # released by the callback
        self.pending += 1
        return 0

    cdef int _enqueue(self, int argc, const char **ptrs, const size_t *lens,
                      redisCallbackFn *fn, void *privdata) except -1:
        """Format a command into the queue (after everything queued), then
        hand hiredis what fits. Takes a reference to ``privdata``."""
        cdef char *cmd = NULL
        cdef int n
        cdef _Queued *grown
        cdef Py_ssize_t cap
        if self.q_head + self.q_len == self.q_cap:
            if self.q_len and self.q_head >= self.q_len:    # half free or more: slide
                memmove(self.q, self.q + self.q_head, self.q_len * sizeof(_Queued))
                self.q_head = 0                 # (amortised O(1): a slide frees q_len slots)
            else:
                cap = self.q_cap * 2 if self.q_cap else 64
                grown = <_Queued *>PyMem_Realloc(self.q, cap * sizeof(_Queued))
                if grown == NULL:
                    raise MemoryError()
                self.q = grown
                self.q_cap = cap
        n = redisFormatCommandArgv(&cmd, argc, ptrs, lens)
        if n < 0 or cmd == NULL:
            raise MemoryError()
        cdef _Queued *e = &self.q[self.q_head + self.q_len]
        e.cmd = cmd
        e.len = <size_t>n
        e.off = 0
        e.fn = fn
        e.privdata = privdata
        if privdata != NULL:
            Py_INCREF(<object>privdata)     # the entry's; passed on to hiredis's callback
        self.q_len += 1
        self.q_bytes += <size_t>n
        self._pump()
        return 0

    cdef void _pump(self) noexcept:
        """Hand queued commands to hiredis while its buffer is under OBUF_BOUND."""
        cdef _Queued *e
        cdef size_t n
        cdef int rc
        while self.q_len and self.ac != NULL and sdslen(self.ac.c.obuf) < OBUF_BOUND:
            e = &self.q[self.q_head]
            n = e.len - e.off
            if n > CHUNK:
                n = CHUNK
            if e.off == 0:
                # hiredis reads the command's name (and a SUBSCRIBE's channels)
                # from e.cmd, which holds the whole command, NUL-terminated.
                self.in_command = True
                rc = redisAsyncFormattedCommand(self.ac, e.fn, e.privdata, e.cmd, n)
                self.in_command = False
                if rc != REDIS_OK:
                    return      # disconnecting: _disconnected fails the entry
                self.pending += 1
            else:
                if redisAppendFormattedCommand(&self.ac.c, e.cmd + e.off, n) != REDIS_OK:
                    return      # out of memory: try again on the next write
                self.needs_flush = True
            e.off += n
            self.q_bytes -= n
            if e.off == e.len:
                redisFreeCommand(e.cmd)
                e.cmd = NULL
                self.q_head += 1
                self.q_len -= 1
                if self.q_len == 0:
                    self.q_head = 0

    cdef void _after_write(self) noexcept:
        # After hiredis wrote: refill its buffer from the queue, keep write
        # interest while anything is unsent, wake wait_writable() callers.
        if self.q_len and self.ac != NULL:
            self._pump()
            if self.ac != NULL and sdslen(self.ac.c.obuf) > 0 and not self.writing:
                self._want_write(True)
        if self.drain_waiters:
            self._wake_writers()

    cdef inline size_t _buffered(self) noexcept:
        if self.ac == NULL:
            return self.q_bytes
        return sdslen(self.ac.c.obuf) + self.q_bytes

    cdef void _wake_writers(self) noexcept:
        # Down to the low-water mark: wake the first waiting writers, in
        # order, as many as the bytes they announced fit under the high mark
        # (at least one). Waking them all would have each look again and
        # wait again: O(waiters) per drain, quadratic in a flood.
        cdef Py_ssize_t size = <Py_ssize_t>self._buffered()
        cdef Py_ssize_t budget
        cdef bint woke = False
        if size > <Py_ssize_t>self.low_water or self.recheck_scheduled:
            return      # (writers woken before have not written yet: wait for them)
        budget = <Py_ssize_t>self.high_water - size
        try:
            waiters = self.drain_waiters
            while waiters:
                fut, n = waiters[0]
                if fut.done():          # its caller was cancelled
                    waiters.popleft()
                    continue
                if woke and n > budget:
                    break
                waiters.popleft()
                _settle(fut, None, False)
                budget -= n
                woke = True
            if woke and waiters and not self.recheck_scheduled:
                # Once the woken writers have run: more room (one was
                # cancelled, or wrote less), wake more; else the next write does.
                self.recheck_scheduled = True
                self._call_soon(self._recheck_cb)
        except BaseException as exc:
            PyErr_WriteUnraisable(exc)

    def _recheck_writers(self):
        self.recheck_scheduled = False
        if self.drain_waiters and self.ac != NULL:
            self._wake_writers()

    cdef void _fail_writers(self, object error) noexcept:
        waiters, self.drain_waiters = self.drain_waiters, _deque()
        for fut, n in waiters:
            _settle(fut, error, True)

    cdef void _fail_queued(self, object error, bint detached=False) noexcept:
        """Fail every queued command with ``error``, in order (the one whose
        first piece hiredis has is failed by hiredis), and free the queue."""
        cdef _Queued e
        cdef object obj
        cdef Connection conn = None if detached else self
        while self.q_len:
            e = self.q[self.q_head]
            self.q_head += 1
            self.q_len -= 1
            redisFreeCommand(e.cmd)
            if e.off != 0 or e.privdata == NULL:
                continue
            obj = <object>e.privdata
            Py_DECREF(obj)              # the entry's reference (obj holds another)
            if e.fn == _on_batch_reply:
                _batch_step(conn, <_Batch>obj, error)
            else:
                _resolve(conn, <ReplyFuture>obj, error, True)
        self.q_head = 0
        self.q_bytes = 0
        if self.drain_waiters:
            self._fail_writers(error)

    def execute(self, *args):
        """Send one command; returns a :class:`ReplyFuture` of its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list. An error reply sets :class:`tinytown.ReplyError` on the future.
        """
        self._check_open()
        if self.guard.subscribed:
            raise InvalidArgumentError("this connection is subscribed: it takes no other command")
        cdef bint was_idle = self.pending == 0
        cdef ReplyFuture fut = ReplyFuture.__new__(ReplyFuture, self.loop)
        self._issue(args, _on_reply, <void *>fut)
        self._after_issue(was_idle)
        return fut

    def execute_many(self, commands, bint replies=True):
        """Send many commands in one write; returns one future.

        It resolves to the list of replies (error replies included as
        ReplyError instances) or, with ``replies=False``, to None; if any
        reply is an error, the future fails with the first one, once every
        reply is in. Commands are sent in order.
        """
        self._check_open()
        if self.guard.subscribed:
            raise InvalidArgumentError("this connection is subscribed: it takes no other command")
        cdef _Batch batch = _Batch.__new__(_Batch)
        # Check every command before queueing any: a bad argument in the
        # middle must not leave the commands before it in hiredis's buffer.
        cdef list checked = [_checked_command(command) for command in commands]
        self._check_open()      # converting ran Python code, which may have closed it
        cdef bint was_idle = self.pending == 0
        batch.future = ReplyFuture.__new__(ReplyFuture, self.loop)
        batch.results = [] if replies else None
        for command in checked:
            self._issue(command, _on_batch_reply, <void *>batch)
            batch.remaining += 1
        if batch.remaining == 0:
            batch.future.set_result(batch.results)
        else:
            self._after_issue(was_idle)
        return batch.future

    def subscribe(self, handler, *channels):
        """Turn this connection into a subscriber of ``channels``.

        Every pub/sub reply (subscribe confirmations and messages, as lists)
        is passed to ``handler``; when the connection goes away, ``handler``
        receives the ConnectionError instead. No other command may be sent
        on a subscribed connection.
        """
        cdef Py_ssize_t i, n = len(channels)
        self._check_open()
        if not channels:
            raise InvalidArgumentError("subscribe needs at least one channel")
        if self.guard.subscribed:
            raise InvalidArgumentError("subscribe: this connection is subscribed already")
        try:
            names = tuple([a if PyBytes_CheckExact(a) else (<str>a).encode() if isinstance(a, str)
                           else coerce_arg(a) for a in channels])
        except UnicodeEncodeError as exc:
            raise EncodeError(f"a channel name is not encodable as UTF-8: {exc}") from None
        self._check_open()
        # The guard lets through subscribe confirmations for these channels
        # only (hiredis 1.x aborts on any other).
        self.sub_ptrs = <const char **>PyMem_Malloc(n * sizeof(char *))
        self.sub_lens = <size_t *>PyMem_Malloc(n * sizeof(size_t))
        if self.sub_ptrs == NULL or self.sub_lens == NULL:
            raise MemoryError()
        self.sub_names = names
        for i in range(n):
            self.sub_ptrs[i] = PyBytes_AS_STRING(names[i])
            self.sub_lens[i] = <size_t>PyBytes_GET_SIZE(names[i])
        self.guard.sub_names = self.sub_ptrs
        self.guard.sub_lens = self.sub_lens
        self.guard.sub_count = <int>n
        self.push_handler = handler
        self.guard.subscribed = 1
        try:
            self._issue_subscribe((b"SUBSCRIBE",) + names)
        except BaseException:
            self.guard.subscribed = 0
            self.push_handler = None
            raise
        self._after_issue(True)

    cdef int _issue_subscribe(self, tuple args) except -1:
        # _issue without the refusal of SUBSCRIBE (the arguments are bytes)
        cdef _ArgvBuf argv
        cdef int rc
        cdef Py_ssize_t i
        args = _argv_init(&argv, args)
        try:
            for i in range(argv.argc):
                argv.ptrs[i] = PyBytes_AS_STRING(args[i])
                argv.lens[i] = <size_t>PyBytes_GET_SIZE(args[i])
            if self.q_len:              # after the commands still queued
                self._enqueue(argv.argc, argv.ptrs, argv.lens, _on_push, NULL)
                return 0
            self.in_command = True
            rc = redisAsyncCommandArgv(self.ac, _on_push, NULL, argv.argc, argv.ptrs, argv.lens)
        finally:
            self.in_command = False
            _argv_close(&argv)
        if rc != REDIS_OK:
            raise ConnectionError("connection to Redis is closing; command not sent")
        return 0

    def close(self):
        """Close now; every pending call fails with ConnectionError."""
        cdef redisAsyncContext *ac = self.ac
        self.push_handler = None
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
            return
        if ac == NULL:
            return
        waiter = self.connect_waiter
        self.connect_waiter = None
        self.closed = True
        self._untrack()
        # redisAsyncFree runs every pending callback with a NULL reply, then
        # the cleanup hook and the disconnect callback, then frees.
        redisAsyncFree(ac)
        self.ac = NULL
        self.connected = False
        if waiter is not None:
            _settle(waiter, ConnectionError("connection closed before it was established"), True)

    @property
    def is_closed(self):
        """True once the connection is closed or lost, or in the child of a
        fork() (the inherited connection is dropped there, untouched)."""
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
        return self.closed or self.ac == NULL

    @property
    def pending_replies(self):
        """Number of commands issued whose replies have not arrived."""
        return self.pending + self.q_len

    @property
    def write_buffer_size(self):
        """Bytes issued but not yet written to the socket (hiredis's output
        buffer plus the connection's queue); int."""
        return self._buffered()

    @property
    def output_buffer_size(self):
        """Bytes in hiredis's own output buffer (a debugging aid: kept under
        about 512 KiB, the rest waits in the connection's queue)."""
        return sdslen(self.ac.c.obuf) if self.ac != NULL else 0

    def set_write_buffer_limits(self, high, low=None):
        """Set the high- and low-water marks (bytes) of :meth:`wait_writable`.

        ``low`` defaults to ``high // 4``; raises InvalidArgumentError unless
        ``0 <= low <= high``.
        """
        if low is None:
            low = high // 4
        if not (0 <= low <= high):
            raise InvalidArgumentError(f"write buffer limits need 0 <= low <= high, got high={high}, low={low}")
        self.high_water = high
        self.low_water = low

    def get_write_buffer_limits(self):
        """``(high, low)`` in bytes."""
        return (self.high_water, self.low_water)

    def wait_writable(self, Py_ssize_t nbytes=0):
        """None while :attr:`write_buffer_size` is at most the high-water mark
        and no writer waits; else a future, resolved (first come, first
        served) once the size is down to the low-water mark and the
        ``nbytes`` (int, the caller's estimate of what it will write) of the
        writers before it and its own fit under the high-water mark (the
        first writer always goes). Failed with ConnectionError if the
        connection goes first. A woken writer writes without asking again."""
        if self.ac == NULL or (not self.drain_waiters and self._buffered() <= self.high_water):
            return None
        fut = self._create_future()
        self.drain_waiters.append((fut, nbytes))
        if not self.recheck_scheduled and self._buffered() <= self.low_water:
            self.recheck_scheduled = True       # nothing left to write that would wake it
            self._call_soon(self._recheck_cb)
        return fut

    def fileno(self):
        return self.fd

    def __repr__(self):
        state = "closed" if self.is_closed else ("open" if self.connected else "connecting")
        return f"<tinytown Connection {self.where} {state} pending={self.pending}>"
