"""tinytown: Tinytown's Channel for Python.

Agent inboxes, broadcasts and agent/task state over Redis, with the keys and
JSON of Tinytown's Rust code, on a Cython transport over hiredis's async
context.
"""

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
