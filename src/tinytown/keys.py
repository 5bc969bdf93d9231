"""Tinytown's Redis key layout: everything a town owns lives under ``tt:<town>:``.

Several towns can share one Redis because every key carries the town name;
the broadcast channel is the one name shared by all towns, as in Tinytown's
Rust code.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

__all__ = ["BROADCAST_CHANNEL", "TownKeys", "validate_town_name"]

#: The pub/sub channel of :meth:`Channel.broadcast` (shared by all towns).
BROADCAST_CHANNEL = "tt:broadcast"

# ':' would let one town's keys alias another's; '*', '?', '[' are glob
# characters that would make SCAN patterns over the town match too much.
_BAD_TOWN_CHARS = re.compile(r"[:*?\[\s]")


def validate_town_name(town: object) -> str:
    """Return ``town`` if it is a usable town name, else raise InvalidArgumentError."""
    if not isinstance(town, str) or not town:
        raise InvalidArgumentError(f"town name must be a non-empty string, not {town!r}")
    bad = _BAD_TOWN_CHARS.search(town)
    if bad:
        raise InvalidArgumentError(
            f"town name {town!r} contains {bad.group()!r}; "
            "':', '*', '?', '[' and whitespace are not allowed")
    return town


class TownKeys:
    """Key builders of one town. Ids must already be canonical (AgentId/TaskId)."""

    __slots__ = ("town", "prefix", "inbox_prefix", "agent_prefix", "task_prefix",
                 "dead_prefix", "processing_prefix")

    def __init__(self, town: str) -> None:
        self.town = validate_town_name(town)
        self.prefix = f"tt:{town}:"
        self.inbox_prefix = self.prefix + "inbox:"
        self.agent_prefix = self.prefix + "agent:"
        self.task_prefix = self.prefix + "task:"
        self.dead_prefix = self.prefix + "dead:"
        self.processing_prefix = self.prefix + "processing:"

    def inbox(self, agent_id: str) -> str:
        """``tt:<town>:inbox:<agent>``: the agent's message queue (a List)."""
        return self.inbox_prefix + agent_id

    def agent(self, agent_id: str) -> str:
        """``tt:<town>:agent:<agent>``: the agent's state."""
        return self.agent_prefix + agent_id

    def task(self, task_id: str) -> str:
        """``tt:<town>:task:<task>``: the task's state."""
        return self.task_prefix + task_id

    def dead(self, agent_id: str) -> str:
        """``tt:<town>:dead:<agent>``: undecodable messages taken from the agent's inbox."""
        return self.dead_prefix + agent_id

    def processing(self, agent_id: str) -> str:
        """``tt:<town>:processing:<agent>``: messages received reliably but not yet acked."""
        return self.processing_prefix + agent_id
