"""The Redis commands behind each Channel operation.

Shared by the async :class:`~tinytown.channel.Channel` and the blocking
``SyncChannel`` so that both write exactly the same thing to Redis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from .address import Address
from .agent import Agent
from .errors import InvalidArgumentError
from .message import Message
from .task import Task

LPUSH = b"LPUSH"
RPUSH = b"RPUSH"
# Values per LPUSH/RPUSH in send_many: large enough to amortise the command,
# small enough not to stall the server on one huge command.
MAX_VALUES_PER_PUSH = 1000


def check_message(message: object, operation: str) -> Message:
    if not isinstance(message, Message):
        raise InvalidArgumentError(f"{operation}() takes a Message, not {type(message).__name__}")
    return message


def push_verb(message: Message) -> bytes:
    """Urgent/high go to the front of the inbox (LPUSH), normal/low to the back (RPUSH)."""
    return LPUSH if message.priority.is_front else RPUSH


def too_big(what: str, payload: bytes, limit: int) -> InvalidArgumentError:
    """The error for a write over the channel's ``max_message_bytes``."""
    return InvalidArgumentError(
        f"the {what} is {len(payload)} bytes of JSON, more than max_message_bytes={limit} "
        "(see Channel.connect); nothing was written")


def push_commands(messages: Iterable[Message], inbox_prefix: str,
                  max_bytes: int | None = None) -> list[list[Any]]:
    """The pushes of ``send_many``: one variadic push per run of messages with
    the same inbox and end, which leaves every inbox exactly as one push per
    message would. Everything is encoded (and checked against ``max_bytes``)
    before anything is sent."""
    commands: list[list[Any]] = []
    current: list[Any] = []
    for message in messages:
        if type(message) is not Message:
            check_message(message, "send_many")
        verb = push_verb(message)
        key = inbox_prefix + message.to  # a Message's ids are typed and immutable
        payload = message.to_json()
        if max_bytes is not None and len(payload) > max_bytes:
            raise too_big("message", payload, max_bytes)
        if current and current[0] is verb and current[1] == key \
                and len(current) < MAX_VALUES_PER_PUSH + 2:
            current.append(payload)
        else:
            current = [verb, key, payload]
            commands.append(current)
    return commands


def blpop_timeout(timeout: float | timedelta) -> str:
    """BLPOP's timeout argument; rejects values that would block forever by accident."""
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise InvalidArgumentError(
            f"timeout must be seconds (int/float) or a timedelta, not {type(timeout).__name__}")
    if not seconds > 0 or math.isinf(seconds):
        raise InvalidArgumentError(
            f"timeout must be a positive, finite number of seconds, not {timeout!r}"
            " (Redis would read 0 as 'wait forever')")
    # Redis counts blocking timeouts in milliseconds; round tiny ones up so
    # that they do not become 0.
    return f"{max(seconds, 0.001):.3f}"


def check_agent(agent: object) -> Agent:
    if not isinstance(agent, Agent):
        raise InvalidArgumentError(f"set_agent_state() takes an Agent, not {type(agent).__name__}")
    return agent


def check_task(task: object) -> Task:
    if not isinstance(task, Task):
        raise InvalidArgumentError(f"set_task() takes a Task, not {type(task).__name__}")
    return task


def is_wrongtype(error: BaseException) -> bool:
    """True for Redis's WRONGTYPE error: the key holds state in the Hash layout."""
    return str(error).startswith("WRONGTYPE")


def decode_agent(raw: bytes | list[bytes] | None) -> Agent | None:
    """An Agent from a GET reply (JSON) or an HGETALL reply (flat field/value list)."""
    if raw is None or raw == []:
        return None
    if isinstance(raw, list):
        return Agent.from_hash(_pairs(raw))
    return Agent.from_json(raw)


def decode_task(raw: bytes | list[bytes] | None) -> Task | None:
    """A Task from a GET reply (JSON) or an HGETALL reply (flat field/value list)."""
    if raw is None or raw == []:
        return None
    if isinstance(raw, list):
        return Task.from_hash(_pairs(raw))
    return Task.from_json(raw)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it))


def login_commands(address: Address) -> list[tuple[Any, ...]]:
    """AUTH (with the ACL user when there is one) and SELECT for a new connection."""
    commands: list[tuple[Any, ...]] = []
    if address.password is not None:
        if address.username:
            commands.append((b"AUTH", address.username, address.password))
        else:
            commands.append((b"AUTH", address.password))
    if address.db:
        commands.append((b"SELECT", address.db))
    return commands
