"""The futures of the Python transports, and their guard against fork().

The leaf of the transport package: it imports nothing from it (only
:mod:`tinytown.errors`), so :mod:`.pyasync` and :mod:`.cluster` use it and
:mod:`.choose` loads them without an import cycle.

* :class:`PyReplyFuture` and :func:`deliver`: the future of one reply in the
  pure-Python transport and the cluster router (the extension has its own
  ``ReplyFuture``, in C), and how a reply settles it;
* ``FORKS`` and :func:`check_loop`: the count of fork()s this process came
  out of, and the check that a connection is opened on its own, un-forked
  event loop.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import EventLoopError

__all__ = ["FORKS", "PyReplyFuture", "check_loop", "deliver"]

# FORKS[0] counts the os.fork()s this process came out of: a connection
# records it when it connects, and in the child of a fork (where it differs)
# drops the inherited socket, untouched, instead of using it. (The extension
# counts with pthread_atfork, which also sees forks made from C.)
FORKS = [0]


def _after_fork_in_child() -> None:
    FORKS[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)

# Event loops that connections were opened on -> FORKS[0] then (see check_loop).
_loop_generations: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = \
    weakref.WeakKeyDictionary()


def check_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Raise :class:`EventLoopError` unless a connection may be opened on ``loop``
    now: the running loop (if any) must be ``loop``, and ``loop`` must not come
    from before a fork() (a child's inherited loop shares its epoll set with
    the parent's: sockets registered there would be watched by both)."""
    running = asyncio._get_running_loop()
    if running is not None and running is not loop:
        raise EventLoopError(
            "this tinytown connection belongs to another event loop: use a Channel only "
            "from the loop it was connected on")
    try:
        seen = _loop_generations.setdefault(loop, FORKS[0])
    except TypeError:  # a loop that takes no weak reference: not tracked
        return
    if seen != FORKS[0]:
        raise EventLoopError(
            "this event loop was inherited across fork(): its epoll set is shared with the "
            "parent process, so a child may not connect on it; run the child's code in a new "
            "event loop (asyncio.run) with a new Channel")


class PyReplyFuture(asyncio.Future[Any]):
    """The future of one reply in the Python transport and the cluster router.

    An asyncio Future with the extension's ``orphan`` hook: a caller that
    cancels a blocking command may set ``orphan`` to a callable, which then
    receives the reply that still arrives (or the error that ends the
    connection) instead of it being dropped.
    """

    orphan: Callable[[Any], None] | None = None


def deliver(fut: asyncio.Future[Any], value: Any, failed: bool) -> None:
    """Settle ``fut`` with a reply (``failed``: ``value`` is the exception).

    A future cancelled by its caller is done already: its reply goes to its
    ``orphan`` handler if it has one, else it is dropped; either way the
    reply stream stays in step with the commands.
    """
    if not fut.done():
        if failed:
            fut.set_exception(value)
        else:
            fut.set_result(value)
        return
    handler = getattr(fut, "orphan", None)
    if handler is None or not fut.cancelled():
        return
    fut.orphan = None  # type: ignore[attr-defined]
    try:
        handler(value)
    except BaseException as exc:  # like a callback's: reported, not raised into the transport
        fut.get_loop().call_exception_handler({
            "message": "tinytown: exception in the orphan handler of a cancelled command",
            "exception": exc, "future": fut})
