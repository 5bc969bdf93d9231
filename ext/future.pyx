# ReplyFuture: the future of one command's reply.
#
# It follows asyncio's Future protocol (Tasks await it, gather/shield/
# wait_for accept it), with two differences that matter on the hot path:
#
# - When replies are read, the callbacks of the futures they settle run at
#   the end of that same reader callback instead of through call_soon. The
#   awaiting task resumes one loop iteration (one epoll_wait) earlier.
#   Callbacks still never run inside hiredis or inside another task: only
#   the Connection's reader (a plain loop callback) runs them directly;
#   every other settlement (cancel, close, errors) goes through call_soon.
# - A caller that cancels a blocking command can leave an ``orphan``
#   handler: the reply that still arrives (a popped message, say) is given
#   to it instead of being dropped, once the read is over (never from
#   inside hiredis: the handler writes, and hiredis still holds the reply).
#
# Needs: _report (connection.pyx, included later: a module-level cdef
# function, so the order does not matter to Cython).

import asyncio as _asyncio
from contextvars import copy_context as _copy_context

cdef object _CancelledError = _asyncio.CancelledError
cdef object _InvalidStateError = _asyncio.InvalidStateError

cdef enum FutureState:
    PENDING = 0
    FINISHED = 1
    FAILED = 2
    CANCELLED = 3


cdef class ReplyFuture:
    """Future of a Redis reply, compatible with asyncio's Future protocol."""

    cdef object _loop
    cdef int _state
    cdef object _value
    cdef object _fn0                # the first callback (nearly always the only one:
    cdef object _ctx0               # the awaiting task's wake-up) and its context
    cdef list _callbacks            # further [(fn, context), ...] or None
    cdef object _cancel_message
    cdef public object _asyncio_future_blocking
    cdef public object orphan       # called with the reply of a cancelled command

    def __cinit__(self, loop):
        self._loop = loop
        self._asyncio_future_blocking = False

    def get_loop(self):
        return self._loop

    def done(self):
        return self._state != PENDING

    def cancelled(self):
        return self._state == CANCELLED

    def result(self):
        if self._state == FINISHED:
            return self._value
        if self._state == FAILED:
            raise self._value
        if self._state == CANCELLED:
            raise self._make_cancelled_error()
        raise _InvalidStateError("Result is not ready.")

    def exception(self):
        if self._state == FINISHED:
            return None
        if self._state == FAILED:
            return self._value
        if self._state == CANCELLED:
            raise self._make_cancelled_error()
        raise _InvalidStateError("Exception is not set.")

    def _make_cancelled_error(self):
        if self._cancel_message is None:
            return _CancelledError()
        return _CancelledError(self._cancel_message)

    def add_done_callback(self, fn, *, context=None):
        if context is None:
            context = _copy_context()
        if self._state != PENDING:
            self._loop.call_soon(fn, self, context=context)
        elif self._fn0 is None:
            self._fn0 = fn
            self._ctx0 = context
        elif self._callbacks is None:
            self._callbacks = [(fn, context)]
        else:
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn):
        cdef list entries = self._take_callbacks()
        kept = [(f, c) for f, c in entries if f != fn]
        for f, c in kept:
            self.add_done_callback(f, context=c)
        return len(entries) - len(kept)

    def cancel(self, msg=None):
        if self._state != PENDING:
            return False
        self._state = CANCELLED
        self._cancel_message = msg
        self._schedule_callbacks()
        return True

    def set_result(self, result):
        if self._state != PENDING:
            raise _InvalidStateError("invalid state")
        self._state = FINISHED
        self._value = result
        self._schedule_callbacks()

    def set_exception(self, exception):
        if self._state != PENDING:
            raise _InvalidStateError("invalid state")
        if isinstance(exception, type):
            exception = exception()
        self._state = FAILED
        self._value = exception
        self._schedule_callbacks()

    def __await__(self):
        if self._state == PENDING:
            self._asyncio_future_blocking = True
            yield self
        if self._state == PENDING:
            raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__

    def __repr__(self):
        state = ("pending", "finished", "failed", "cancelled")[self._state]
        return f"<ReplyFuture {state}>"

    # -- settlement by the transport -----------------------------------------

    cdef inline bint _settle(self, object value, bint failed) noexcept:
        """Store the reply; False when the caller had cancelled already."""
        if self._state != PENDING:
            # A cancelled command's reply goes to its orphan handler, run by
            # _resolve (connection.pyx) outside hiredis.
            return False
        self._state = FAILED if failed else FINISHED
        self._value = value
        return True

    cdef inline bint _has_callbacks(self) noexcept:
        return self._fn0 is not None

    cdef list _take_callbacks(self):
        cdef list entries
        if self._fn0 is None:
            return []
        entries = [(self._fn0, self._ctx0)]
        if self._callbacks is not None:
            entries.extend(self._callbacks)
        self._fn0 = self._ctx0 = self._callbacks = None
        return entries

    cdef void _schedule_callbacks(self) noexcept:
        if self._fn0 is None:
            return
        try:
            for fn, context in self._take_callbacks():
                self._loop.call_soon(fn, self, context=context)
        except BaseException as exc:  # the loop is closed: nobody is waiting
            PyErr_WriteUnraisable(exc)

    cdef int _run_callbacks(self) except -1:
        """Run the callbacks now; only from a loop callback with no task running."""
        cdef object fn = self._fn0
        cdef object context = self._ctx0
        cdef list more = self._callbacks
        if fn is None:
            return 0
        cdef Py_ssize_t i, left = 0     # the callbacks of ``more`` run or started
        self._fn0 = self._ctx0 = self._callbacks = None
        try:
            self._run_one(fn, context)
            if more is not None:
                for i in range(len(more)):
                    left = i + 1
                    fn, context = more[i]
                    self._run_one(fn, context)
        except BaseException:
            # SystemExit/KeyboardInterrupt (see _run_one): the callbacks not
            # run yet are not dropped, they run through call_soon.
            if more is not None and left < len(more):
                try:
                    for fn, context in more[left:]:
                        self._loop.call_soon(fn, self, context=context)
                except BaseException as exc:
                    PyErr_WriteUnraisable(exc)
            raise
        return 0

    cdef int _run_one(self, object fn, object context) except -1:
        try:
            context.run(fn, self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "Exception in a callback of a tinytown reply future",
                "exception": exc,
                "future": self,
            })
        return 0
