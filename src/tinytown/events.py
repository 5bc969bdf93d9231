"""Town events: the records Tinytown 0.9+ appends to its Redis Streams.

A :class:`TownEvent` serializes exactly as Rust's ``serde_json`` prints
``tinytown::events::TownEvent``: ``event_type``, then the optional fields
``agent_id, task_id, mission_id, old_state, new_state`` (left out when None),
``message``, ``timestamp`` (RFC 3339 with ``Z``), then the optional
``parent_agent_id, child_agent_id, scope, spawn_mode``.

Streams (``EventStream::emit``): ``XADD tt:<town>:events MAXLEN ~ 1000 *
event_type <et> data <json>``, the same into ``tt:<town>:events:agent:<id>``
(``MAXLEN ~ 100``) for each id of :meth:`TownEvent.agent_streams`, and into
``tt:<town>:events:mission:<id>`` (``MAXLEN ~ 500``) when ``mission_id`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _json
from ._json import as_enum, as_opt_id, as_opt_str, as_str, as_ts, checked_id, encode_str
from .enums import SpawnMode, WireEnum
from .errors import EncodeError, InvalidArgumentError
from .ids import AgentId, MissionId, TaskId
from .timestamp import Timestamp

__all__ = ["EventType", "TownEvent"]

_new = object.__new__


class EventType(WireEnum):
    """Kind of a town event; the value is the snake_case wire name (the
    Stream field ``event_type`` and the JSON ``"event_type"``)."""

    AGENT_STATE_CHANGED = "agent_state_changed"
    AGENT_SPAWNED = "agent_spawned"
    AGENT_STOPPED = "agent_stopped"
    TASK_ASSIGNED = "task_assigned"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    MISSION_STATE_CHANGED = "mission_state_changed"
    MISSION_WORK_PROMOTED = "mission_work_promoted"
    MISSION_WORK_ASSIGNED = "mission_work_assigned"
    MISSION_WORK_COMPLETED = "mission_work_completed"
    MISSION_WORK_BLOCKED = "mission_work_blocked"
    MISSION_HELP_NEEDED = "mission_help_needed"
    MISSION_WATCH_TRIGGERED = "mission_watch_triggered"
    MISSION_EVENT = "mission_event"
    TASK_DELEGATED = "task_delegated"
    AGENT_INTERRUPTED = "agent_interrupted"
    AGENT_RESUMED = "agent_resumed"
    AGENT_COMPLETED = "agent_completed"
    AGENT_FAILED = "agent_failed"
    REVIEWER_HANDOFF = "reviewer_handoff"
    REVIEWER_APPROVAL = "reviewer_approval"
    CONDUCTOR_ESCALATION = "conductor_escalation"


_EVENT_TYPES = _json.enum_table(EventType)
_SPAWN_MODES = _json.enum_table(SpawnMode)

# (field, id class) of the optional id fields, for the constructor checks.
_ID_FIELDS = (
    ("agent_id", AgentId),
    ("task_id", TaskId),
    ("mission_id", MissionId),
    ("parent_agent_id", AgentId),
    ("child_agent_id", AgentId),
)
_STR_FIELDS = ("old_state", "new_state", "scope")


def _id(value: Any, cls: type[Any], field: str) -> str:
    """``,"field":"<uuid>"`` for a set optional id; EncodeError if it is not one."""
    if type(value) is not cls:
        value = checked_id(value, cls, "TownEvent", field, optional=True)
    return f',"{field}":"{value}"'


def _str(value: Any, field: str) -> str:
    if isinstance(value, str):
        return f',"{field}":' + encode_str(value)
    raise EncodeError(f"TownEvent.{field} must be a str or None, got {type(value).__name__}")


@dataclass(slots=True, kw_only=True)
class TownEvent:
    """One town event (Rust's ``TownEvent``); fields keyword-only, in wire order.

    Ids may be given as text or :class:`uuid.UUID`, ``event_type`` and
    ``spawn_mode`` as their wire strings, ``timestamp`` as any
    :class:`datetime.datetime` (naive = UTC); they are converted, and a bad
    value raises :class:`~tinytown.InvalidArgumentError`. ``old_state`` and
    ``new_state`` are free text (upstream writes capitalised agent states such
    as ``"Paused"``); ``scope`` is free text.
    """

    event_type: EventType
    agent_id: AgentId | None = None
    task_id: TaskId | None = None
    mission_id: MissionId | None = None
    old_state: str | None = None
    new_state: str | None = None
    message: str
    timestamp: Timestamp
    parent_agent_id: AgentId | None = None
    child_agent_id: AgentId | None = None
    scope: str | None = None
    spawn_mode: SpawnMode | None = None

    def __post_init__(self) -> None:
        if type(self.event_type) is not EventType:
            try:
                self.event_type = EventType(self.event_type)
            except ValueError:
                raise InvalidArgumentError(f"TownEvent.event_type: unknown event type {self.event_type!r}") from None
        for name, cls in _ID_FIELDS:
            value = getattr(self, name)
            if value is not None and type(value) is not cls:
                try:
                    setattr(self, name, cls(value))
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"TownEvent.{name}: {exc}") from None
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"TownEvent.{name} must be a str or None, got {type(value).__name__}")
        if not isinstance(self.message, str):
            raise InvalidArgumentError(f"TownEvent.message must be a str, got {type(self.message).__name__}")
        if not isinstance(self.timestamp, Timestamp):
            try:
                self.timestamp = Timestamp.from_datetime(self.timestamp)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"TownEvent.timestamp: {exc}") from None
        if self.spawn_mode is not None and type(self.spawn_mode) is not SpawnMode:
            try:
                self.spawn_mode = SpawnMode(self.spawn_mode)
            except ValueError:
                raise InvalidArgumentError(f"TownEvent.spawn_mode: unknown spawn mode {self.spawn_mode!r}") from None

    @classmethod
    def new(cls, event_type: EventType | str, message: str, **optional: Any) -> TownEvent:
        """An event stamped with :meth:`Timestamp.now` (Rust's ``TownEvent::new``).

        ``optional`` takes any of the optional fields by name (``agent_id=``,
        ``task_id=``, ``mission_id=``, ``old_state=``, ``new_state=``,
        ``parent_agent_id=``, ``child_agent_id=``, ``scope=``, ``spawn_mode=``).
        Raises :class:`~tinytown.InvalidArgumentError` for a bad value or an
        unknown field name.
        """
        unknown = set(optional) - {name for name, _ in _ID_FIELDS} - set(_STR_FIELDS) - {"spawn_mode"}
        if unknown:
            raise InvalidArgumentError(f"TownEvent.new: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(event_type=event_type, message=message, timestamp=Timestamp.now(), **optional)

    def agent_streams(self) -> list[AgentId]:
        """The agents whose stream ``tt:<town>:events:agent:<id>`` gets this
        event, in XADD order: ``agent_id``; ``parent_agent_id`` unless equal to
        ``agent_id``; ``child_agent_id`` unless equal to either (spec §5.8)."""
        out: list[AgentId] = []
        agent, parent, child = self.agent_id, self.parent_agent_id, self.child_agent_id
        if agent is not None:
            out.append(agent)
        if parent is not None and parent != agent:
            out.append(parent)
        if child is not None and child != agent and child != parent:
            out.append(child)
        return out

    # -- JSON -----------------------------------------------------------------

    def to_json(self) -> bytes:
        """The event as compact JSON, byte-identical to Rust's serde_json
        (absent optional fields are left out, not null). Raises
        :class:`~tinytown.EncodeError` for a field of the wrong type or a
        lone surrogate in a string."""
        o = "TownEvent"
        parts = ['{"event_type":' + _json.enc_field_enum(self.event_type, EventType, o, "event_type")]
        if self.agent_id is not None:
            parts.append(_id(self.agent_id, AgentId, "agent_id"))
        if self.task_id is not None:
            parts.append(_id(self.task_id, TaskId, "task_id"))
        if self.mission_id is not None:
            parts.append(_id(self.mission_id, MissionId, "mission_id"))
        if self.old_state is not None:
            parts.append(_str(self.old_state, "old_state"))
        if self.new_state is not None:
            parts.append(_str(self.new_state, "new_state"))
        parts.append(',"message":' + _json.enc_field_str(self.message, o, "message"))
        parts.append(',"timestamp":' + _json.enc_field_ts(self.timestamp, o, "timestamp"))
        if self.parent_agent_id is not None:
            parts.append(_id(self.parent_agent_id, AgentId, "parent_agent_id"))
        if self.child_agent_id is not None:
            parts.append(_id(self.child_agent_id, AgentId, "child_agent_id"))
        if self.scope is not None:
            parts.append(_str(self.scope, "scope"))
        if self.spawn_mode is not None:
            parts.append(',"spawn_mode":' + _json.enc_field_enum(self.spawn_mode, SpawnMode, o, "spawn_mode"))
        parts.append("}")
        return _json.encode_bytes("".join(parts), o)

    @classmethod
    def from_json(cls, data: bytes | str) -> TownEvent:
        """Parse an event (bytes or str). Unknown keys are ignored; absent or
        null optional fields are None. Raises :class:`~tinytown.DecodeError`
        on anything Rust's serde would reject (bad JSON, a missing
        ``event_type``/``message``/``timestamp``, a wrong type, an unknown
        event type); the error's ``raw`` holds ``data``."""
        obj = _json.load_object(data, "TownEvent")
        try:
            get = obj.get
            event = _new(cls)
            event.event_type = as_enum(obj["event_type"], _EVENT_TYPES, "event_type")
            event.agent_id = as_opt_id(get("agent_id"), AgentId, "agent_id")
            event.task_id = as_opt_id(get("task_id"), TaskId, "task_id")
            event.mission_id = as_opt_id(get("mission_id"), MissionId, "mission_id")
            event.old_state = as_opt_str(get("old_state"), "old_state")
            event.new_state = as_opt_str(get("new_state"), "new_state")
            event.message = as_str(obj["message"], "message")
            event.timestamp = as_ts(obj["timestamp"], "timestamp")
            event.parent_agent_id = as_opt_id(get("parent_agent_id"), AgentId, "parent_agent_id")
            event.child_agent_id = as_opt_id(get("child_agent_id"), AgentId, "child_agent_id")
            event.scope = as_opt_str(get("scope"), "scope")
            mode = get("spawn_mode")
            event.spawn_mode = None if mode is None else as_enum(mode, _SPAWN_MODES, "spawn_mode")
            return event
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.wrap_error("TownEvent", exc, data) from None
