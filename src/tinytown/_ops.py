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
  the list of replies, error replies included as ReplyError instances.

The generator's return value is the operation's result. Drivers:
``Channel._run`` and ``SyncChannel._run``. Operations check their arguments
before their first ``yield``, so bad input raises before anything is sent.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar, Union

from .ids import AgentId
from .keys import TownKeys

T = TypeVar("T")
Step = Union[tuple[Any, ...], list[tuple[Any, ...]]]
Op = Generator[Step, Any, T]

#: Seconds a stop flag lives (Tinytown's ``SETEX ... 3600 1``).
STOP_TTL = 3600


# -- stop flag ---------------------------------------------------------------

def request_stop(keys: TownKeys, agent_id: Any) -> Op[None]:
    key = keys.stop(AgentId(agent_id))
    yield (b"SETEX", key, STOP_TTL, b"1")


def should_stop(keys: TownKeys, agent_id: Any) -> Op[bool]:
    key = keys.stop(AgentId(agent_id))
    return (yield (b"EXISTS", key)) > 0


def clear_stop(keys: TownKeys, agent_id: Any) -> Op[None]:
    key = keys.stop(AgentId(agent_id))
    yield (b"DEL", key)
