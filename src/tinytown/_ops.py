"""Channel operations as sans-I/O generators, shared by Channel and SyncChannel.

Each operation is a generator that *yields* what it wants sent and is *sent*
the reply back, so the async :class:`~tinytown.channel.Channel` and the
blocking :class:`~tinytown.sync_channel.SyncChannel` run the very same code
and write exactly the same bytes. A step is either

* a ``tuple``: one command (``(b"LLEN", key)``); the reply comes back as the
  value of the ``yield``, and an error reply is raised *inside* the generator
  as :class:`~tinytown.ReplyError` (so an operation can catch WRONGTYPE);
* a ``list`` of tuples: several commands in one write (a pipeline, or a
  MULTI ... EXEC transaction when the operation lists those); the value is
  the list of replies; if one of them is an error reply, the first one is
  raised inside the generator instead (errors inside an EXEC reply are
  ReplyError instances in its list);
* a :class:`Pipeline` (a list subclass): several commands in one write,
  whose replies come back as a list with error replies *in* it as ReplyError
  instances (a plain list step raises the first error instead);
* a :class:`Pop`: a step that takes data out of Redis, with the commands
  that put it back if the caller goes away before the operation returns.

The generator's return value is the operation's result. Drivers:
``Channel._run`` and ``SyncChannel._run``. Operations check their arguments
before their first ``yield``, so bad input raises before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from .errors import DecodeError
from .ids import AgentId
from .keys import TownKeys

T = TypeVar("T")
Command = tuple[Any, ...]


class Pipeline(list[Command]):
    """A step of several commands in one write whose error replies are
    returned in the reply list (as ReplyError instances), not raised."""

    __slots__ = ()


class Pop:
    """A step that takes something out of Redis (LPOP, a MULTI that empties
    a list...), or that runs while the operation holds what an earlier Pop
    took.

    ``step`` is a command (tuple) or a transaction (list, as a list step).
    ``restore(reply)`` returns the commands that put back what would be lost
    if the caller went away now; ``reply`` is the step's reply, or the
    exception that ended it (a lost connection), since a caller that is
    cancelled (or interrupted by a signal, in SyncChannel) before the
    operation returns never sees the result. The drivers run those commands
    in that case: when the reply arrives after the caller left (the
    transports' ``orphan`` hook), or at once if it was already in. From the
    reply until the next Pop step or the operation's return, the driver
    keeps ``restore(reply)`` and runs it if the operation ends with an
    exception instead (so an operation that raises after a Pop must have
    made ``restore`` of its last Pop return only what is still to give
    back; a Pop that settles what was taken, such as the dead-letter
    write, returns ``[]`` once done).
    """

    __slots__ = ("step", "restore")

    def __init__(self, step: Command | list[Command],
                 restore: Callable[[Any], list[Command]]) -> None:
        self.step = step
        self.restore = restore


Step = Command | list[Command] | Pipeline | Pop
Op = Generator[Step, Any, T]

def int_reply(reply: Any, command: str) -> int:
    """``reply`` if it is an integer reply; else :class:`~tinytown.DecodeError`
    (a peer that is not Redis answered ``command`` with another type)."""
    if type(reply) is int:
        return reply
    raise DecodeError(f"Redis answered {command} with a {type(reply).__name__} "
                      f"({reply!r:.60}), not an integer")


#: Seconds a stop flag lives (Tinytown's ``SETEX ... 3600 1``).
STOP_TTL = 3600


# -- stop flag ---------------------------------------------------------------

def request_stop(keys: TownKeys, agent_id: Any) -> Op[None]:
    key = keys.stop(AgentId(agent_id))
    yield (b"SETEX", key, STOP_TTL, b"1")


def should_stop(keys: TownKeys, agent_id: Any) -> Op[bool]:
    key = keys.stop(AgentId(agent_id))
    return int_reply((yield (b"EXISTS", key)), "EXISTS") > 0


def clear_stop(keys: TownKeys, agent_id: Any) -> Op[None]:
    key = keys.stop(AgentId(agent_id))
    yield (b"DEL", key)
