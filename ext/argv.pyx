# Command arguments to hiredis's argv, shared by Connection
# (connection.pyx) and SyncConnection (sync_connection.pyx).
#
# Needs (transport.pyx): the cimports of cpython.bytes/unicode/mem,
# tt_misuse.h's declarations (includes/misuse.pxd), coerce_arg
# (tinytown._transport.resp), EncodeError and InvalidArgumentError.
# Included before connection.pyx and sync_connection.pyx, which use
# _ArgvBuf, _argv_init, _argv_close, _converted, _fill_argv, _checked_command.

cdef enum:
    STACK_ARGS = 8


cdef tuple _converted(tuple args):
    """``args`` with every argument bytes or str: other types are converted
    once, by coerce_arg. That is the only place where Python code can run for
    an argument (a bytes subclass's ``__bytes__``), so callers convert every
    argument before they touch hiredis, and check the connection again after.
    Returns ``args`` itself when nothing needs converting (the fast path)."""
    cdef Py_ssize_t i, n = len(args)
    cdef object arg
    for i in range(n):
        arg = args[i]
        if not PyBytes_CheckExact(arg) and not PyUnicode_CheckExact(arg):
            break
    else:
        return args
    cdef list out = list(args)
    for i in range(i, n):
        arg = out[i]
        if not PyBytes_CheckExact(arg) and not isinstance(arg, str):
            out[i] = coerce_arg(arg)
    return tuple(out)


cdef int _fill_argv(tuple args, const char **ptrs, size_t *lens, bint refuse=True) except -1:
    """Point ptrs/lens at the buffers of ``args`` (bytes or str only: see
    _converted; UTF-8 for str, no copy, no Python code). Then refuse what
    hiredis must not see: a command that changes the connection's protocol
    state (tt_misuse.h; unless ``refuse`` is false: SyncConnection.send_command
    is how subscriptions and MONITOR are made) or one of 2 GiB or more."""
    cdef Py_ssize_t i, n
    cdef object arg
    cdef const char *text
    cdef const char *refused
    for i in range(len(args)):
        arg = args[i]
        if PyBytes_CheckExact(arg):
            ptrs[i] = PyBytes_AS_STRING(arg)
            lens[i] = <size_t>PyBytes_GET_SIZE(arg)
        else:
            try:
                text = PyUnicode_AsUTF8AndSize(arg, &n)
            except UnicodeEncodeError as exc:
                raise EncodeError(f"argument {i} is not encodable as UTF-8: {exc}") from None
            ptrs[i] = text
            lens[i] = <size_t>n
    n = len(args)
    refused = tt_refused(<int>n, ptrs, lens) if refuse else NULL
    if refused != NULL:
        raise InvalidArgumentError(_refusal((<bytes>refused).decode()))
    if tt_wire_size(<int>n, lens) >= TT_MAX_COMMAND_BYTES:
        raise InvalidArgumentError(
            f"this Redis command would be {TT_MAX_COMMAND_BYTES} bytes or more on the wire "
            "(2 GiB - 64 KiB, the most a command may take); nothing was sent: split it "
            "(e.g. fewer messages per send_many)")
    return 0


cdef str _refusal(str what):
    return (f"{what} cannot be sent on a tinytown connection: it changes the connection's "
            "protocol state (pub/sub or MONITOR mode, RESP3, replies off, reset, quit), "
            "which would desynchronise or crash it. Use Channel.broadcasts() to "
            "subscribe, close() to disconnect, `tinytown monitor` to watch commands.")


cdef struct _ArgvBuf:
    # argv/argvlen of one command: on the stack for up to STACK_ARGS arguments
    const char *stack_ptrs[STACK_ARGS]
    size_t stack_lens[STACK_ARGS]
    const char **ptrs
    size_t *lens
    int argc


cdef inline tuple _argv_init(_ArgvBuf *buf, object args):
    """Size ``buf`` for the command ``args``; returns it as a tuple.

    Then, in a try whose finally calls _argv_close: _fill_argv(the tuple,
    buf.ptrs, buf.lens), keeping what it returns alive until hiredis has
    formatted the command. On an exception here there is nothing to close.
    """
    if not isinstance(args, tuple):
        args = tuple(args)
    cdef Py_ssize_t argc = len(<tuple>args)
    if argc == 0:
        raise InvalidArgumentError("empty Redis command")
    buf.argc = <int>argc
    buf.ptrs = buf.stack_ptrs
    buf.lens = buf.stack_lens
    if argc > STACK_ARGS:
        buf.ptrs = <const char **>PyMem_Malloc(argc * sizeof(char *))
        buf.lens = <size_t *>PyMem_Malloc(argc * sizeof(size_t))
        if buf.ptrs == NULL or buf.lens == NULL:
            _argv_close(buf)
            raise MemoryError()
    return <tuple>args


cdef inline void _argv_close(_ArgvBuf *buf) noexcept:
    if buf.ptrs != buf.stack_ptrs:
        PyMem_Free(<void *>buf.ptrs)
        PyMem_Free(buf.lens)
    buf.ptrs = buf.stack_ptrs
    buf.lens = buf.stack_lens


cdef tuple _checked_command(object command):
    """``command`` as a tuple whose arguments hiredis takes as they are
    (bytes or str; str checked for UTF-8, which CPython then keeps cached);
    raises InvalidArgumentError/EncodeError otherwise, and for a command
    refused by _fill_argv."""
    cdef _ArgvBuf argv
    cdef tuple args = _argv_init(&argv, command)
    try:
        args = _converted(args)
        _fill_argv(args, argv.ptrs, argv.lens)
    finally:
        _argv_close(&argv)
    return args
