"""tinytown: Tinytown's Channel for Python.

Agent inboxes, broadcasts and agent/task state over Redis, with the keys and
JSON of Tinytown's Rust code, on a Cython transport over hiredis's async
context.
"""

from typing import TYPE_CHECKING, Any

# The public names are imported on first use (PEP 562), so that the
# ``tinytown`` command loads only what its command needs: a command line run
# by hand or by a script pays the start-up cost every time. The mapping
# below is the one list of them: add a name here and to __all__.
_LAZY = {
    "Agent": "agent",
    "Backoff": "backoff",
    "BroadcastSubscription": "channel",
    "Channel": "channel",
    "AgentState": "enums",
    "AgentType": "enums",
    "Priority": "enums",
    "SpawnMode": "enums",
    "TaskState": "enums",
    "AgentNotFoundError": "errors",
    "AmbiguousAgentRefError": "errors",
    "ChannelClosedError": "errors",
    "ConcurrentUseError": "errors",
    "ConnectionError": "errors",
    "DecodeError": "errors",
    "EncodeError": "errors",
    "EventLoopError": "errors",
    "InvalidArgumentError": "errors",
    "ReplyError": "errors",
    "ServerError": "errors",
    "TinytownError": "errors",
    "TransportUnavailableError": "errors",
    "EventType": "events",
    "TownEvent": "events",
    "AgentId": "ids",
    "MessageId": "ids",
    "MissionId": "ids",
    "TaskId": "ids",
    "ConfirmationType": "message",
    "Message": "message",
    "MessageType": "message",
    "Delivery": "reliable",
    "SyncBroadcastSubscription": "sync_channel",
    "SyncChannel": "sync_channel",
    "Task": "task",
    "Timestamp": "timestamp",
    "Town": "town",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .agent import Agent
    from .backoff import Backoff
    from .channel import BroadcastSubscription, Channel
    from .enums import AgentState, AgentType, Priority, SpawnMode, TaskState
    from .errors import (
        AgentNotFoundError,
        AmbiguousAgentRefError,
        ChannelClosedError,
        ConcurrentUseError,
        ConnectionError,
        DecodeError,
        EncodeError,
        EventLoopError,
        InvalidArgumentError,
        ReplyError,
        ServerError,
        TinytownError,
        TransportUnavailableError,
    )
    from .events import EventType, TownEvent
    from .ids import AgentId, MessageId, MissionId, TaskId
    from .message import ConfirmationType, Message, MessageType
    from .reliable import Delivery
    from .sync_channel import SyncBroadcastSubscription, SyncChannel
    from .task import Task
    from .timestamp import Timestamp
    from .town import Town


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tinytown' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value   # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentId",
    "AgentNotFoundError",
    "AgentState",
    "AgentType",
    "AmbiguousAgentRefError",
    "Backoff",
    "BroadcastSubscription",
    "Channel",
    "ChannelClosedError",
    "ConcurrentUseError",
    "ConfirmationType",
    "ConnectionError",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "EventType",
    "EventLoopError",
    "InvalidArgumentError",
    "Message",
    "MessageId",
    "MessageType",
    "MissionId",
    "Priority",
    "ReplyError",
    "ServerError",
    "SpawnMode",
    "SyncBroadcastSubscription",
    "SyncChannel",
    "Task",
    "TaskId",
    "TaskState",
    "Timestamp",
    "TinytownError",
    "Town",
    "TownEvent",
    "TransportUnavailableError",
]
