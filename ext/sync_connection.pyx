# A blocking Redis connection on hiredis's plain redisContext (no event loop),
# for tinytown.SyncChannel.
#
# hiredis formats commands and parses replies; the socket I/O is driven here
# rather than by redisGetReply so that it can be interrupted: the GIL is
# released around every call that may block (connect, redisBufferWrite,
# redisBufferRead, poll), and when a read or write is interrupted by a signal
# (EINTR) the GIL is taken back to run Python's signal handlers, so Ctrl-C
# stops a call that waits on Redis. redisGetReply would retry the read itself.
#
# Threads: a connection belongs to one thread at a time. A second thread
# calling in while the first is inside a call gets ConcurrentUseError; close()
# is the exception: it may come from any thread, and wakes a thread blocked on
# the socket (shutdown(2)), which then frees the context itself, so the
# context is never freed while hiredis works on it.
#
# Needs from the .pyx files included before it (see transport.pyx): reply_to_py
# (reply.pyx); _ArgvBuf, _argv_init, _argv_close, _converted,
# _fill_argv, _checked_command (argv.pyx). The tt_misuse.h declarations come
# from includes/misuse.pxd, the POSIX calls from includes/tt_posix.pxd.

from libc.errno cimport EINTR
from cpython.exc cimport PyErr_CheckSignals
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from tt_posix cimport POLLIN, SHUT_RDWR, poll, pollfd, shutdown, tt_clear_errno, tt_coarse_now, tt_errno

from tinytown.errors import ConcurrentUseError

cdef enum:
    IO_OK = 0
    IO_ERR = 1          # hiredis set c.err: the connection is unusable
    IO_EINTR = 2        # a signal interrupted the wait: run the handlers, go on
    IO_TIMEOUT = 3      # nothing came before the deadline (read_reply only)

# is_usable() probes the socket only after this long without a reply.
cdef double IDLE_PROBE_AFTER = 0.05


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef int _write_all(redisContext *c) noexcept nogil:
    """Write hiredis's output buffer out (blocking socket)."""
    cdef int done = 0
    while True:
        tt_clear_errno()
        if redisBufferWrite(c, &done) != REDIS_OK:
            return IO_ERR
        if done:
            return IO_OK
        if tt_errno() == EINTR:
            return IO_EINTR


cdef int _read_one(redisContext *c, void **reply, double deadline) noexcept nogil:
    """Read until hiredis has one whole reply; ``deadline`` < 0 waits forever."""
    cdef pollfd pfd
    cdef int ms, n
    cdef double left
    while True:
        if redisGetReplyFromReader(c, reply) != REDIS_OK:
            return IO_ERR
        if reply[0] != NULL:
            return IO_OK
        if deadline >= 0:
            left = deadline - _now()
            if left <= 0:
                return IO_TIMEOUT
            ms = <int>(left * 1000.0) + 1 if left < 2000000.0 else 2000000000
            pfd.fd = c.fd
            pfd.events = POLLIN
            pfd.revents = 0
            n = poll(&pfd, 1, ms)
            if n == 0:
                continue            # re-checks the deadline
            if n < 0:
                if tt_errno() == EINTR:
                    return IO_EINTR
                # poll failing on a valid fd is not expected; let read() report it
        tt_clear_errno()
        if redisBufferRead(c) != REDIS_OK:
            return IO_ERR
        if tt_errno() == EINTR:
            return IO_EINTR


# The longest connect wait handed to hiredis, in seconds (~24 days): hiredis
# turns it into milliseconds in an int (poll's), and a double too big for a
# long is undefined behaviour to convert (hiredis 1.2 then killed the process).
cdef double LONGEST_CONNECT_WAIT = 2000000.0


cdef timeval _timeval(double seconds):
    cdef timeval tv
    if seconds > LONGEST_CONNECT_WAIT:
        seconds = LONGEST_CONNECT_WAIT
    tv.tv_sec = <long>seconds
    tv.tv_usec = <long>((seconds - <double>tv.tv_sec) * 1e6)
    return tv


cdef class SyncConnection:
    """One blocking Redis connection on hiredis's redisContext.

    ``SyncConnection()``, then :meth:`connect_unix` or :meth:`connect_tcp`.
    Calls block the calling thread (with the GIL released) until Redis
    answers. If the connection drops, the call raises
    :class:`tinytown.ConnectionError` and the connection is closed.
    """

    cdef redisContext *c
    cdef readonly str where
    cdef readonly Py_ssize_t pending     # commands sent whose replies are unread
    cdef bint busy                       # a thread is inside a call
    cdef bint closing                    # close() came while busy
    cdef double last_reply_at            # coarse monotonic time of the last reply
    cdef unsigned long fork_gen          # tt_fork_generation when connected (tt_misuse.h)

    def __dealloc__(self):
        if self.c != NULL:
            tt_untrack_fd(self.c.fd)
            redisFree(self.c)
            self.c = NULL

    # -- opening ----------------------------------------------------------

    def connect_unix(self, str path, double timeout=5.0):
        """Connect to a Unix socket, waiting at most ``timeout`` seconds."""
        cdef bytes cpath = path.encode()
        cdef const char *p = cpath
        cdef timeval tv = _timeval(timeout)
        cdef redisContext *c
        self._check_unused(timeout)
        with nogil:
            c = redisConnectUnixWithTimeout(p, tv)
        self._attach(c, f"unix:{path}")

    def connect_tcp(self, str host, int port, double timeout=5.0):
        """Connect to ``host`` (a name or an address; hiredis resolves it,
        IPv4 first) and ``port``, waiting at most ``timeout`` seconds."""
        cdef bytes chost = host.encode()
        cdef const char *h = chost
        cdef timeval tv = _timeval(timeout)
        cdef redisContext *c
        self._check_unused(timeout)
        with nogil:
            c = redisConnectWithTimeout(h, port, tv)
        self._attach(c, f"{host}:{port}")

    cdef int _check_unused(self, double timeout) except -1:
        if self.c != NULL or self.where is not None:
            raise InvalidArgumentError("a SyncConnection can be connected only once")
        if not timeout > 0:
            raise InvalidArgumentError(f"connect timeout must be positive, not {timeout!r}")
        return 0

    cdef int _attach(self, redisContext *c, str where) except -1:
        self.where = where
        if c == NULL:
            raise MemoryError()
        if c.err:
            message = (<bytes>c.errstr).decode("utf-8", "replace")
            redisFree(c)
            raise ConnectionError(f"cannot connect to Redis at {where}: {message}")
        # No read/write timeout on the socket (some hiredis versions keep the
        # connect timeout there): calls wait as long as Redis takes, and
        # read_reply() bounds its own wait with poll().
        redisSetTimeout(c, _timeval(0.0))
        if tt_track_fd(c.fd) != 0:
            redisFree(c)
            raise MemoryError()
        self.c = c
        self.fork_gen = tt_fork_generation
        return 0

    # -- state --------------------------------------------------------------

    cdef inline int _enter(self) except -1:
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
            raise ConnectionError(
                "this connection to Redis was inherited across fork(): the child may not "
                "use it (the parent's replies would be read here); open a new one")
        if self.busy:
            raise ConcurrentUseError(
                "this tinytown connection is in use by another thread: "
                "give each thread its own SyncChannel")
        if self.c == NULL:
            raise ConnectionError(
                "connection to Redis is closed" if self.where is not None
                else "connection to Redis is not open")
        self.busy = True
        return 0

    cdef inline void _leave(self) noexcept:
        self.busy = False
        if self.closing:
            self.closing = False
            self._free()

    cdef void _drop_forked(self) noexcept:
        """In the child of a fork: close this process's copy of the socket,
        nothing else (never shutdown(2), which would cut the parent's)."""
        self.busy = False
        self.closing = False
        self._free()

    cdef void _free(self) noexcept:
        cdef redisContext *c = self.c
        self.c = NULL
        self.pending = 0
        if c != NULL:
            tt_untrack_fd(c.fd)
            redisFree(c)

    cdef object _lost(self):
        """The ConnectionError for a failed call; frees the context."""
        cdef redisContext *c = self.c
        if self.closing or c == NULL:
            error = ConnectionError("connection to Redis closed")
        elif c.err:
            error = ConnectionError(
                f"connection to Redis lost ({self.where}): "
                f"{(<bytes>c.errstr).decode('utf-8', 'replace')}")
        else:
            error = ConnectionError(f"connection to Redis lost ({self.where})")
        self.closing = False
        self._free()
        return error

    # -- commands ---------------------------------------------------------

    cdef int _append(self, object args, bint refuse=True) except -1:
        """Format one command into hiredis's output buffer (nothing is written yet)."""
        cdef _ArgvBuf argv
        cdef int rc
        cdef size_t n
        cdef char formatted[FORMAT_BUF]
        cdef tuple targs = _argv_init(&argv, args)
        try:
            # Python code may run while converting (a close() from it only
            # marks the connection: it is busy): convert first, then look.
            targs = _converted(targs)
            _fill_argv(targs, argv.ptrs, argv.lens, refuse)
            if self.closing or self.c == NULL:
                raise self._lost()
            n = tt_format_command(argv.argc, argv.ptrs, argv.lens, formatted, FORMAT_BUF)
            if n:
                rc = redisAppendFormattedCommand(self.c, formatted, n)
            else:
                rc = redisAppendCommandArgv(self.c, argv.argc, argv.ptrs, argv.lens)
        finally:
            _argv_close(&argv)
        if rc != REDIS_OK:
            raise MemoryError()
        self.pending += 1
        return 0

    cdef int _flush(self) except -1:
        """Write out what _append queued; on a signal, the handler's exception
        propagates (the caller decides what becomes of the connection)."""
        cdef int rc
        cdef redisContext *c = self.c
        while True:
            with nogil:
                rc = _write_all(c)
            if rc == IO_OK and not self.closing:
                return 0
            if rc == IO_EINTR and not self.closing:
                PyErr_CheckSignals()
                continue
            raise self._lost()

    cdef object _read(self, double deadline):
        """The next reply as a Python object (an error reply as a ReplyError
        instance); TimeoutError at ``deadline`` (monotonic seconds, < 0: none)."""
        cdef void *reply = NULL
        cdef int rc
        cdef redisContext *c = self.c
        while True:
            with nogil:
                rc = _read_one(c, &reply, deadline)
            if rc == IO_OK:
                break
            if self.closing:
                raise self._lost()
            if rc == IO_EINTR:
                PyErr_CheckSignals()
                continue
            if rc == IO_TIMEOUT:
                raise TimeoutError("no reply from Redis in time")
            raise self._lost()
        if self.pending:            # pub/sub messages answer no command
            self.pending -= 1
        self.last_reply_at = tt_coarse_now()
        try:
            return reply_to_py(<redisReply *>reply)
        except ConnectionError:     # a RESP3 reply: the stream cannot be trusted
            self._free()
            raise
        finally:
            freeReplyObject(reply)

    def execute(self, *args):
        """Send one command and wait for its reply.

        Replies: bulk/status -> bytes, integer -> int, nil -> None, array ->
        list; an error reply raises :class:`tinytown.ReplyError`. If a signal
        handler raises (Ctrl-C), the connection is closed (its reply would
        arrive out of step) and the exception propagates.
        """
        cdef object value
        self._enter()
        try:
            if self.pending:
                raise InvalidArgumentError(
                    f"{self.pending} replies are still unread on this connection (read_reply)")
            self._append(args)
            try:
                self._flush()
                value = self._read(-1.0)
            except BaseException:
                if self.c != NULL and self.pending:
                    self._free()
                raise
        finally:
            self._leave()
        if type(value) is ReplyError:
            raise value
        return value

    def execute_many(self, commands, bint replies=True):
        """Send many commands in one write, then read every reply.

        Returns the list of replies (error replies included as ReplyError
        instances) or, with ``replies=False``, None; if any reply is an
        error, raises the first one once every reply is in. An argument that
        cannot be sent raises before anything is queued or written.
        """
        cdef list results = [] if replies else None
        cdef object error = None
        cdef object value
        cdef Py_ssize_t n
        self._enter()
        try:
            if self.pending:
                raise InvalidArgumentError(
                    f"{self.pending} replies are still unread on this connection (read_reply)")
            # Check every command before formatting any: a bad argument in
            # the middle must not leave the ones before it in the buffer.
            checked = [_checked_command(command) for command in commands]
            try:
                for command in checked:
                    self._append(command)
            except BaseException:   # out of memory while formatting
                if self.pending:
                    self._free()    # drops the formatted, unsent commands
                raise
            n = self.pending
            try:
                if n:
                    self._flush()
                while self.pending:
                    value = self._read(-1.0)
                    if type(value) is ReplyError and error is None:
                        error = value
                    if results is not None:
                        results.append(value)
            except BaseException:
                if self.c != NULL and self.pending:
                    self._free()
                raise
        finally:
            self._leave()
        if error is not None:
            raise error
        return results

    def send_command(self, *args):
        """Send one command without reading its reply (see :meth:`read_reply`).

        For blocking and subscribing commands (BLPOP, SUBSCRIBE, MONITOR),
        whose reply the caller wants to wait for in an interruptible way:
        unlike :meth:`execute`, it does send the commands that change the
        connection's protocol state (the caller then owns that state).
        """
        self._enter()
        try:
            self._append(args, False)
            try:
                self._flush()
            except BaseException:
                if self.c != NULL:
                    self._free()
                raise
        finally:
            self._leave()

    def read_reply(self, timeout=None):
        """Wait for the next reply (or pub/sub message, or MONITOR line).

        ``timeout`` is in seconds (None waits forever); when it passes,
        :class:`TimeoutError` is raised and the connection stays usable. An
        error reply raises :class:`tinytown.ReplyError`. If a signal handler
        raises (Ctrl-C), the exception propagates and the connection is left
        as it was: the reply can still be read.
        """
        cdef double deadline = -1.0
        cdef object value
        if timeout is not None:
            if not timeout >= 0:
                raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
            deadline = _now() + <double>timeout
        self._enter()
        try:
            value = self._read(deadline)
        finally:
            self._leave()
        if type(value) is ReplyError:
            raise value
        return value

    def close(self):
        """Close the connection. Safe from any thread: a call blocked in
        another thread wakes up with ConnectionError. In the child of a
        fork(), only the child's copy of the socket is closed."""
        if self.c == NULL:
            return
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
            return
        if self.busy:
            # The thread inside hiredis frees the context when it leaves.
            self.closing = True
            shutdown(self.c.fd, SHUT_RDWR)
        else:
            self._free()

    @property
    def is_closed(self):
        """True once the connection is closed or lost (or inherited across fork())."""
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()
        return self.c == NULL

    def is_usable(self):
        """False if the connection is closed, or was closed by the server while idle.

        An idle connection has nothing to read: if poll(2) says it has, the
        server closed it (or it broke), so it is closed here and False is
        returned, and the caller can reconnect before sending a command that
        would fail. The probe (one non-blocking poll) is made only when the
        last reply is more than 50 ms old, to keep syscalls off back-to-back
        calls; a server that died in between fails one call instead.
        """
        cdef pollfd pfd
        if self.fork_gen != tt_fork_generation:
            self._drop_forked()     # inherited across fork(): the parent's, not ours
        if self.c == NULL:
            return False
        if self.busy or self.pending or tt_coarse_now() - self.last_reply_at < IDLE_PROBE_AFTER:
            return True
        pfd.fd = self.c.fd
        pfd.events = POLLIN
        pfd.revents = 0
        if poll(&pfd, 1, 0) > 0:
            self._free()
            return False
        return True

    @property
    def pending_replies(self):
        """Number of commands sent whose replies have not been read."""
        return self.pending

    def fileno(self):
        return self.c.fd if self.c != NULL else -1

    def __repr__(self):
        state = "closed" if self.c == NULL else "open"
        return f"<tinytown SyncConnection {self.where} {state} pending={self.pending}>"
