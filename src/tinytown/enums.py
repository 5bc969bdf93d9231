"""The enumerations of the wire format; each member's value is its wire string."""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["Priority", "AgentState", "AgentType", "SpawnMode", "TaskState"]


class WireEnum(str, enum.Enum):
    """A str enum whose ``str()`` and ``format()`` are the wire string.

    The base of the wire enums here and of :class:`tinytown.events.EventType`;
    not part of the public API (``__all__``)."""

    def __str__(self) -> str:
        return self._value_

    def __format__(self, spec: str) -> str:
        return format(self._value_, spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self._name_}"


class Priority(WireEnum):
    """Message priority. ``HIGH`` and ``URGENT`` go to the front of the inbox."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    is_front: bool
    """True for HIGH and URGENT: sent with LPUSH, ahead of everything queued."""


for _p in Priority:
    _p.is_front = _p in (Priority.HIGH, Priority.URGENT)
del _p


class AgentState(WireEnum):
    """Lifecycle state of an agent (default ``STARTING``)."""

    COLD = "cold"
    STARTING = "starting"
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"
    ERROR = "error"

    def is_terminal(self) -> bool:
        """True for STOPPED, ERROR and COLD (no process running)."""
        return self in (AgentState.STOPPED, AgentState.ERROR, AgentState.COLD)

    def can_accept_work(self) -> bool:
        """True only for IDLE."""
        return self is AgentState.IDLE

    def is_active(self) -> bool:
        """True while a process runs: STARTING, IDLE, WORKING, PAUSED, DRAINING."""
        return self in (
            AgentState.STARTING,
            AgentState.IDLE,
            AgentState.WORKING,
            AgentState.PAUSED,
            AgentState.DRAINING,
        )


class AgentType(WireEnum):
    """Kind of agent (default ``WORKER``)."""

    SUPERVISOR = "supervisor"
    WORKER = "worker"


class SpawnMode(WireEnum):
    """How an agent session was created (default ``FRESH``)."""

    FRESH = "fresh"
    FORKED_CONTEXT = "forkedcontext"
    RESUMED = "resumed"


class TaskState(WireEnum):
    """State of a task (default ``PENDING``). ``"in_flight"`` is read as ``RUNNING``."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: Any) -> TaskState | None:
        if value == "in_flight":
            return cls.RUNNING
        return None

    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)
