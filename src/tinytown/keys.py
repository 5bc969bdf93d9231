"""Tinytown's Redis key layout: everything a town owns lives under ``tt:<town>:``.

Several towns can share one Redis because every key carries the town name;
the broadcast channel is the one name shared by all towns, as in Tinytown's
Rust code.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

__all__ = ["BROADCAST_CHANNEL", "TownKeys", "validate_town_name"]

#: The pub/sub channel of :meth:`Channel.broadcast` in the ``json`` layout
#: (shared by all towns); the ``hash`` layout uses :attr:`TownKeys.broadcast`.
BROADCAST_CHANNEL = "tt:broadcast"

# ':' would let one town's keys alias another's; '*', '?', '[' are glob
# characters that would make SCAN/KEYS patterns over the town match too much.
_BAD_TOWN_CHARS = re.compile(r"[:*?\[\s]")


def validate_town_name(name: object) -> str:
    """Return ``name`` if it is a valid town name, else raise InvalidArgumentError.

    A town name is part of every Redis key (``tt:<town>:inbox:<id>``), so it
    must be a non-empty str without ``:`` (the key separator), without the
    glob characters ``*``, ``?`` and ``[`` (so ``KEYS tt:<town>:*`` matches
    only that town) and without whitespace. The one statement of the rule:
    :class:`TownKeys`, :class:`~tinytown.town.Town` and the CLI use it.
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(f"town name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("town name must not be empty")
    if _BAD_TOWN_CHARS.search(name):
        bad = sorted(set(_BAD_TOWN_CHARS.findall(name)))
        raise InvalidArgumentError(
            f"invalid town name {name!r}: it must not contain {' '.join(map(repr, bad))} "
            "(':', '*', '?', '[' and whitespace are not allowed)")
    return name


class TownKeys:
    """Key builders of one town, as Tinytown 0.10's ``RedisKeys`` spells them.

    Ids must already be canonical (AgentId/TaskId). ``T`` below is
    ``tt:<town>``. ``dead:`` and ``processing:`` are this package's own
    (dead letters and :meth:`Channel.receive_reliable`); Tinytown has none.
    """

    __slots__ = ("town", "prefix", "inbox_prefix", "urgent_prefix", "agent_prefix",
                 "task_prefix", "activity_prefix", "stop_prefix", "dead_prefix",
                 "processing_prefix", "events_agent_prefix", "events_mission_prefix",
                 "backlog", "docket_tasks", "docket_events", "events", "broadcast")

    def __init__(self, town: str) -> None:
        self.town = validate_town_name(town)
        self.prefix = f"tt:{town}:"
        self.inbox_prefix = self.prefix + "inbox:"
        self.urgent_prefix = self.prefix + "urgent:"
        self.agent_prefix = self.prefix + "agent:"
        self.task_prefix = self.prefix + "task:"
        self.activity_prefix = self.prefix + "activity:"
        self.stop_prefix = self.prefix + "stop:"
        self.dead_prefix = self.prefix + "dead:"
        self.processing_prefix = self.prefix + "processing:"
        self.events_agent_prefix = self.prefix + "events:agent:"
        self.events_mission_prefix = self.prefix + "events:mission:"
        #: ``T:backlog``: task ids waiting for an agent (a List).
        self.backlog = self.prefix + "backlog"
        #: ``T:docket:tasks``: the docket stream (consumer group ``workers``).
        self.docket_tasks = self.prefix + "docket:tasks"
        #: ``T:docket:events``: the docket's event log (a Stream).
        self.docket_events = self.prefix + "docket:events"
        #: ``T:events``: the town's event stream (``MAXLEN ~ 1000``).
        self.events = self.prefix + "events"
        #: ``T:broadcast``: the town's pub/sub channel in Tinytown 0.7-0.10.
        self.broadcast = self.prefix + "broadcast"

    def inbox(self, agent_id: str) -> str:
        """``T:inbox:<agent>``: the agent's message queue (a List)."""
        return self.inbox_prefix + agent_id

    def urgent(self, agent_id: str) -> str:
        """``T:urgent:<agent>``: the agent's urgent inbox (a List, newest first)."""
        return self.urgent_prefix + agent_id

    def agent(self, agent_id: str) -> str:
        """``T:agent:<agent>``: the agent's state (a Hash, or JSON in the ``json`` layout)."""
        return self.agent_prefix + agent_id

    def task(self, task_id: str) -> str:
        """``T:task:<task>``: the task's state (a Hash, or JSON in the ``json`` layout)."""
        return self.task_prefix + task_id

    def activity(self, agent_id: str) -> str:
        """``T:activity:<agent>``: the agent's last 10 activity lines (a List, TTL 1 h)."""
        return self.activity_prefix + agent_id

    def stop(self, agent_id: str) -> str:
        """``T:stop:<agent>``: the agent's stop flag (``"1"``, TTL 1 h)."""
        return self.stop_prefix + agent_id

    def events_agent(self, agent_id: str) -> str:
        """``T:events:agent:<agent>``: events about one agent (a Stream, ``MAXLEN ~ 100``)."""
        return self.events_agent_prefix + agent_id

    def events_mission(self, mission_id: str) -> str:
        """``T:events:mission:<mission>``: events of one mission (a Stream, ``MAXLEN ~ 500``)."""
        return self.events_mission_prefix + mission_id

    def dead(self, agent_id: str) -> str:
        """``T:dead:<agent>``: undecodable messages taken from the agent's inboxes."""
        return self.dead_prefix + agent_id

    def processing(self, agent_id: str) -> str:
        """``T:processing:<agent>``: messages received reliably but not yet acked."""
        return self.processing_prefix + agent_id
