"""Inbox operations of Tinytown 0.10's Channel (urgent inbox, peek, drain, move),
as sans-I/O generators (see :mod:`tinytown._ops`).

Every operation that pops yields a :class:`~tinytown._ops.Pop`, so a caller
that goes away (cancelled, or interrupted by a signal) before the result
reaches it gets its messages put back at the front of the list they came
from, in their original order. A malformed element that was popped is moved
to ``tt:<town>:dead:<agent>`` (as :meth:`Channel.receive` does) and never
dropped.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from ._commands import LPUSH, RPUSH, check_message, push_verb, too_big
from ._ops import Command, Op, Pop, int_reply
from .errors import DecodeError, InvalidArgumentError, ReplyError
from .ids import AgentId
from .keys import TownKeys
from .message import Message

log = logging.getLogger("tinytown")


def _push_back(key: str, elements: list[bytes]) -> list[Command]:
    """Commands that put ``elements`` (taken from the front of ``key``, in
    list order) back at its front, in the same order."""
    if not elements:
        return []
    return [(LPUSH, key, *reversed(elements))]


# -- single pops ---------------------------------------------------------------

def try_receive(keys: TownKeys, agent_id: Any) -> Op[Message | None]:
    agent = AgentId(agent_id)
    key = keys.inbox_prefix + agent
    raw = yield Pop((b"LPOP", key),
                    lambda reply: [(LPUSH, key, reply)] if isinstance(reply, bytes) else [])
    if raw is None:
        return None
    # Decoded here rather than in a sub-generator: none to make per message.
    try:
        return Message.from_json(raw)
    except DecodeError as exc:
        return (yield from undecodable(keys, agent, key, raw, exc))


def undecodable(keys: TownKeys, agent: AgentId, key: str, raw: bytes, exc: DecodeError) -> Op[Message]:
    """A popped message that did not decode (``exc``): it goes to the dead
    letters (or back to the front of ``key`` if that fails) before ``exc``,
    with ``raw``, is raised."""
    _raise_if_interrupted(exc, raw)
    exc.raw = raw
    return (yield from dead_letter(keys.dead(agent), key, raw, exc))  # raises exc


def _raise_if_interrupted(exc: DecodeError, raw: bytes) -> None:
    """The decoder turns any Exception raised inside it into a DecodeError,
    a signal handler's too (SyncChannel): if ``raw`` decodes on a second
    try, the first failure was an interruption, which is raised instead
    (the driver then gives back what was taken)."""
    try:
        Message.from_json(raw)
    except DecodeError:
        return
    raise exc.__context__ or exc


def dead_letter(dead_key: str, key: str, raw: bytes, error: DecodeError) -> Op[NoReturn]:
    """Keep ``raw``, popped from ``key`` and unreadable, at the end of
    ``dead_key`` (RPUSH), then raise ``error``. If that write fails (say a
    foreign key of another type), ``raw`` goes back to the front of ``key``
    instead: what was popped is never dropped."""
    try:
        yield Pop((RPUSH, dead_key, raw),
                  lambda reply: [] if isinstance(reply, int) else [(LPUSH, key, raw)])
    except ReplyError as store_exc:
        log.error("tinytown: could not dead-letter %r (%s); put back in %s", raw, store_exc, key)
        yield Pop((LPUSH, key, raw), lambda reply: [] if isinstance(reply, int) else [(LPUSH, key, raw)])
    raise error


# -- whole lists -----------------------------------------------------------------

def _take_all(keys: TownKeys, agent: AgentId, key: str, what: str) -> Op[list[Message]]:
    """Empty the list ``key`` in one atomic step and decode it, front first.

    ``MULTI, LRANGE key 0 -1, LTRIM key 1 0, EXEC``: LTRIM with start > end
    empties (deletes) the list; unlike DEL it fails with WRONGTYPE, as
    LRANGE does, on a key of another type, so such a key is left alone and
    the WRONGTYPE reaches the caller.
    """
    replies = yield Pop([(b"MULTI",), (b"LRANGE", key, 0, -1), (b"LTRIM", key, 1, 0), (b"EXEC",)],
                        lambda reply: _push_back(key, _exec_list(reply)))
    taken = replies[-1][0]
    if isinstance(taken, ReplyError):
        raise taken
    good: list[Message] = []
    good_raw: list[bytes] = []
    bad: list[bytes] = []
    for raw in taken:
        try:
            good.append(Message.from_json(raw))
            good_raw.append(raw)
        except DecodeError as exc:
            _raise_if_interrupted(exc, raw)
            bad.append(raw)
    if bad:
        log.warning("tinytown: %s: %d malformed element(s) of %s moved to %s",
                    what, len(bad), key, keys.dead(agent))
        # Until the dead letters are stored, everything taken is still ours to give back.
        try:
            yield Pop((RPUSH, keys.dead(agent), *bad),
                      lambda reply: _push_back(key, good_raw if isinstance(reply, int) else taken))
        except ReplyError as store_exc:
            log.error("tinytown: could not dead-letter %d element(s) of %s (%s); put back",
                      len(bad), key, store_exc)
            yield Pop(_push_back(key, bad)[0], lambda reply: _push_back(key, good_raw))
    return good


def _exec_list(reply: Any) -> list[bytes]:
    """The LRANGE result inside a ``MULTI, LRANGE, LTRIM, EXEC`` reply ([] if none)."""
    if type(reply) is list and reply and type(reply[-1]) is list and reply[-1] \
            and type(reply[-1][0]) is list:
        return reply[-1][0]
    return []


def receive_urgent(keys: TownKeys, agent_id: Any) -> Op[list[Message]]:
    agent = AgentId(agent_id)
    return (yield from _take_all(keys, agent, keys.urgent(agent), "receive_urgent"))


def drain_inbox(keys: TownKeys, agent_id: Any) -> Op[list[Message]]:
    agent = AgentId(agent_id)
    return (yield from _take_all(keys, agent, keys.inbox(agent), "drain_inbox"))


# -- writes and reads that take nothing ----------------------------------------

def send_urgent(keys: TownKeys, message: Message, max_bytes: int | None) -> Op[None]:
    payload = check_message(message, "send_urgent").to_json()
    if max_bytes is not None and len(payload) > max_bytes:
        raise too_big("message", payload, max_bytes)
    yield (LPUSH, keys.urgent_prefix + message.to, payload)


def urgent_len(keys: TownKeys, agent_id: Any) -> Op[int]:
    return int_reply((yield (b"LLEN", keys.urgent(AgentId(agent_id)))), "LLEN")


def move_message_to_inbox(keys: TownKeys, message: Message, to: Any,
                          max_bytes: int | None) -> Op[None]:
    check_message(message, "move_message_to_inbox")
    moved = Message(message.id, message.from_, AgentId(to), message.msg_type, message.priority,
                    message.created_at, message.correlation_id)
    payload = moved.to_json()
    if max_bytes is not None and len(payload) > max_bytes:
        raise too_big("message", payload, max_bytes)
    yield (push_verb(moved), keys.inbox_prefix + moved.to, payload)


def peek_inbox(keys: TownKeys, agent_id: Any, count: int) -> Op[list[Message]]:
    agent = AgentId(agent_id)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 2**63 - 1:
        raise InvalidArgumentError(f"peek_inbox() count must be an int in 1..2**63-1, not {count!r}")
    raws = yield (b"LRANGE", keys.inbox(agent), 0, count - 1)
    out: list[Message] = []
    for raw in raws:
        try:
            out.append(Message.from_json(raw))
        except DecodeError:
            log.warning("tinytown: peek_inbox: skipped a malformed element of %s: %r",
                        keys.inbox(agent), raw[:200])
    return out
