"""The exceptions tinytown raises.

Every error tinytown raises on purpose is a :class:`TinytownError`, so one
``except tinytown.TinytownError`` is enough to guard an agent loop.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .agent import Agent
    from .message import Message

__all__ = [
    "TinytownError",
    "ConnectionError",
    "ReplyError",
    "DecodeError",
    "EncodeError",
    "InvalidArgumentError",
    "ChannelClosedError",
    "ServerError",
    "TransportUnavailableError",
    "ConcurrentUseError",
    "AgentNotFoundError",
    "AmbiguousAgentRefError",
    "EventLoopError",
]


class TinytownError(Exception):
    """Base class of every error raised by tinytown."""


class ConnectionError(TinytownError, builtins.ConnectionError):  # noqa: A001 - the public name is part of the API
    """The connection to Redis could not be made or was lost.

    Every call pending on a connection that drops fails with this error; the
    next call on the channel reconnects. It is also a subclass of Python's
    built-in :class:`ConnectionError` (so of :class:`OSError`), so that
    ``except ConnectionError:`` catches it whichever of the two names is in
    scope, as with asyncpg's and redis-py's errors. ``errno`` is None.

    Raised by ``Channel.send_many``, it says what became of the batch:
    ``written`` (tuple of Message, in batch order) holds the messages Redis
    confirmed, ``unconfirmed`` the others, which may or may not have been
    written; resending ``unconfirmed`` completes the batch (possibly
    delivering some twice: deduplicate on ``Message.id``). On one server
    nothing is confirmed before the whole pipeline's replies are in, so
    ``written`` is empty; on a Redis Cluster it holds every message whose
    push a node confirmed. Other calls leave both empty.
    """

    written: tuple[Message, ...] = ()
    unconfirmed: tuple[Message, ...] = ()


class ReplyError(TinytownError):
    """Redis answered a command with an error reply (``WRONGTYPE``, ``NOAUTH``...)."""


class DecodeError(TinytownError, ValueError):
    """Bytes read from Redis (or given to ``from_json``) are not valid tinytown data.

    ``raw`` holds the offending bytes so that nothing is lost.
    """

    def __init__(self, message: str, raw: bytes | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class EncodeError(TinytownError, ValueError):
    """A value cannot be written in Tinytown's wire format (e.g. a lone surrogate)."""


class InvalidArgumentError(TinytownError, ValueError):
    """An argument is malformed: a bad id, town name, URL or timeout."""


class ChannelClosedError(TinytownError):
    """The channel was used after :meth:`Channel.close`."""


class ServerError(TinytownError):
    """The managed local redis-server could not be found, started or stopped."""


class TransportUnavailableError(TinytownError, ImportError):
    """The chosen transport (or, chosen automatically, every transport) cannot be loaded.

    The message says what to install: a wheel or libhiredis for the hiredis
    extension, ``pip install 'tinytown[python]'`` for the Python transport.
    """


class ConcurrentUseError(TinytownError, RuntimeError):
    """A SyncChannel was used by a second thread while another thread was in a call.

    A SyncChannel (and each of its broadcast subscriptions) belongs to one
    thread at a time: give each thread its own. ``close()`` is the exception
    and may be called from any thread.
    """


class AgentNotFoundError(TinytownError, LookupError):
    """The agent has no stored state (``tt:<town>:agent:<id>`` is absent, or
    is a Hash without an ``id`` field).

    Raised by the calls that update one field of an existing agent
    (``increment_agent_rounds``, ``increment_agent_tasks_completed``,
    ``update_agent_heartbeat``) instead of creating a partial agent, as
    Tinytown 0.10 does. ``agent_id`` holds the id asked for.
    """

    def __init__(self, message: str, agent_id: str | None = None) -> None:
        super().__init__(message)
        self.agent_id = agent_id


class AmbiguousAgentRefError(TinytownError, LookupError):
    """``resolve_agent_ref`` matched more than one agent.

    ``matches`` holds the matching agents (:class:`tinytown.Agent`), so the
    caller can ask which one was meant.
    """

    def __init__(self, message: str, matches: list[Agent] | None = None) -> None:
        super().__init__(message)
        self.matches = matches if matches is not None else []


class EventLoopError(InvalidArgumentError, RuntimeError):
    """A Channel (or one of its connections) was used from the wrong event loop.

    A Channel belongs to the loop it was connected on: a call from a task of
    another loop raises this before anything is sent. It is also raised in
    the child of a ``fork()`` that tries to connect on the event loop it
    inherited (that loop's epoll set is shared with the parent): run the
    child's code in a new loop (``asyncio.run``) with a new Channel.
    """
