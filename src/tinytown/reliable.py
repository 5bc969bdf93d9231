"""Reliable receive: at-least-once delivery through a processing list.

An opt-in addition to Tinytown's channel (the Rust side has no equivalent;
it never touches these keys). :meth:`Channel.receive_reliable
<tinytown.Channel.receive_reliable>` moves a message from the agent's inbox
to ``tt:<town>:processing:<agent>`` in one atomic BLMOVE, so a message is at
every moment in exactly one of the two lists, whatever crashes.
:meth:`~tinytown.Channel.ack` removes it once processed;
:meth:`~tinytown.Channel.reclaim` puts what a crashed consumer left back at
the front of the inbox, in its original order. A message is thus processed
at least once; one that was processed but not acked before a crash is
processed again (deduplicate by ``message.id`` if that matters).

Needs Redis >= 6.2 (BLMOVE, LMOVE).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import AgentId
from .message import Message

__all__ = ["Delivery"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message taken by :meth:`Channel.receive_reliable
    <tinytown.Channel.receive_reliable>`; pass it to :meth:`Channel.ack
    <tinytown.Channel.ack>` once it is processed.

    ``raw`` holds the exact bytes stored in the processing list: ``ack``
    removes the entry by value, which needs them byte for byte (a message
    written by another client may not be spelled as ``message.to_json()``
    would spell it).
    """

    message: Message
    agent_id: AgentId
    raw: bytes


# KEYS[1] processing list, KEYS[2] inbox. LMOVE RIGHT LEFT takes the newest
# entry first and pushes it to the front, so the oldest ends up first: the
# inbox starts again with the messages in the order they were received.
RECLAIM_SCRIPT = b"""
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do
  n = n + 1
end
return n
"""

# KEYS[1] processing list, KEYS[2] destination, ARGV[1] the entry, ARGV[2]
# 'LPUSH' (back to the inbox's front) or 'RPUSH' (to the dead-letter list).
# Atomic, so the entry is never in neither list nor in both; if it is no
# longer in the processing list (reclaimed meanwhile), nothing moves.
MOVE_ENTRY_SCRIPT = b"""
if redis.call('LREM', KEYS[1], -1, ARGV[1]) > 0 then
  redis.call(ARGV[2], KEYS[2], ARGV[1])
  return 1
end
return 0
"""
