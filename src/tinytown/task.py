"""A unit of work, as stored at ``tt:<town>:task:<id>``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import _json
from ._json import (
    as_enum,
    as_id,
    as_opt_id,
    as_opt_str,
    as_opt_ts,
    as_str,
    as_str_list,
    as_ts,
    enc_field_enum,
    enc_field_id,
    enc_field_opt_id,
    enc_field_opt_str,
    enc_field_opt_ts,
    enc_field_str,
    enc_field_str_list,
    enc_field_ts,
    hash_str_list,
)
from .enums import TaskState
from .errors import InvalidArgumentError
from .ids import AgentId, TaskId
from .timestamp import Timestamp

_new = object.__new__

__all__ = ["Task"]

# "in_flight" is what some Rust releases call RUNNING; it is read, never written.
_TASK_STATES = _json.enum_table(TaskState, in_flight=TaskState.RUNNING)



def _bad(field_name: str, expected: str, value: Any) -> InvalidArgumentError:
    return InvalidArgumentError(f"Task.{field_name} must be {expected}, got {type(value).__name__}: {value!r}")


def _to_id(value: Any, cls: type[Any], field_name: str) -> Any:
    try:
        return cls(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"Task.{field_name}: {exc}") from None


def _to_ts(value: Any, field_name: str) -> Timestamp:
    try:
        return Timestamp.from_datetime(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"Task.{field_name}: {exc}") from None


@dataclass(slots=True, kw_only=True)
class Task:
    """A task: what to do, its state, who does it, and the outcome.

    Fields are keyword-only and in wire order. Ids may be given as text or
    :class:`uuid.UUID`, the state as its wire string, timestamps as any
    :class:`datetime.datetime` (naive = UTC); they are converted. The
    lifecycle methods (:meth:`assign`, :meth:`start`, :meth:`complete`,
    :meth:`fail`, :meth:`cancel`) update the task in place.
    """

    id: TaskId
    description: str
    state: TaskState = TaskState.PENDING
    assigned_to: AgentId | None = None
    created_at: Timestamp = field(default_factory=Timestamp.now)
    updated_at: Timestamp = field(default_factory=Timestamp.now)
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    result: str | None = None
    parent_id: TaskId | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if type(self.id) is not TaskId:
            self.id = _to_id(self.id, TaskId, "id")
        if not isinstance(self.description, str):
            raise _bad("description", "a str", self.description)
        if type(self.state) is not TaskState:
            try:
                self.state = TaskState(self.state)
            except ValueError:
                raise _bad("state", "a TaskState", self.state) from None
        if self.assigned_to is not None and type(self.assigned_to) is not AgentId:
            self.assigned_to = _to_id(self.assigned_to, AgentId, "assigned_to")
        if not isinstance(self.created_at, Timestamp):
            self.created_at = _to_ts(self.created_at, "created_at")
        if not isinstance(self.updated_at, Timestamp):
            self.updated_at = _to_ts(self.updated_at, "updated_at")
        if self.started_at is not None and not isinstance(self.started_at, Timestamp):
            self.started_at = _to_ts(self.started_at, "started_at")
        if self.completed_at is not None and not isinstance(self.completed_at, Timestamp):
            self.completed_at = _to_ts(self.completed_at, "completed_at")
        if self.result is not None and not isinstance(self.result, str):
            raise _bad("result", "a str or None", self.result)
        if self.parent_id is not None and type(self.parent_id) is not TaskId:
            self.parent_id = _to_id(self.parent_id, TaskId, "parent_id")
        if isinstance(self.tags, str) or not isinstance(self.tags, Iterable):
            raise _bad("tags", "a list of str", self.tags)
        if type(self.tags) is not list:
            self.tags = list(self.tags)
        for tag in self.tags:
            if not isinstance(tag, str):
                raise _bad("tags", "a list of str", tag)

    @classmethod
    def new(cls, description: str, tags: Iterable[str] = ()) -> Task:
        """A new PENDING task with a fresh id, created now."""
        now = Timestamp.now()
        return cls(id=TaskId.new(), description=description, created_at=now, updated_at=now, tags=list(tags))

    # -- lifecycle ------------------------------------------------------------

    def assign(self, agent_id: AgentId | Any) -> None:
        """Assign the task to an agent (state ASSIGNED)."""
        self.assigned_to = _to_id(agent_id, AgentId, "assigned_to")
        self.state = TaskState.ASSIGNED
        self.updated_at = Timestamp.now()

    def start(self) -> None:
        """Mark the task RUNNING and record when it started."""
        now = Timestamp.now()
        self.state = TaskState.RUNNING
        self.started_at = now
        self.updated_at = now

    def complete(self, result: str) -> None:
        """Mark the task COMPLETED with its result."""
        if not isinstance(result, str):
            raise _bad("result", "a str", result)
        now = Timestamp.now()
        self.state = TaskState.COMPLETED
        self.result = result
        self.completed_at = now
        self.updated_at = now

    def fail(self, error: str) -> None:
        """Mark the task FAILED; the error goes into ``result``."""
        if not isinstance(error, str):
            raise _bad("result", "a str", error)
        now = Timestamp.now()
        self.state = TaskState.FAILED
        self.result = error
        self.completed_at = now
        self.updated_at = now

    def cancel(self) -> None:
        """Mark the task CANCELLED (``completed_at`` records when)."""
        now = Timestamp.now()
        self.state = TaskState.CANCELLED
        self.completed_at = now
        self.updated_at = now

    # -- JSON -----------------------------------------------------------------

    def to_json(self) -> bytes:
        """The task as compact JSON, byte-identical to Rust's serde_json."""
        o = "Task"
        text = (
            '{"id":' + enc_field_id(self.id, TaskId, o, "id")
            + ',"description":' + enc_field_str(self.description, o, "description")
            + ',"state":' + enc_field_enum(self.state, TaskState, o, "state")
            + ',"assigned_to":' + enc_field_opt_id(self.assigned_to, AgentId, o, "assigned_to")
            + ',"created_at":' + enc_field_ts(self.created_at, o, "created_at")
            + ',"updated_at":' + enc_field_ts(self.updated_at, o, "updated_at")
            + ',"started_at":' + enc_field_opt_ts(self.started_at, o, "started_at")
            + ',"completed_at":' + enc_field_opt_ts(self.completed_at, o, "completed_at")
            + ',"result":' + enc_field_opt_str(self.result, o, "result")
            + ',"parent_id":' + enc_field_opt_id(self.parent_id, TaskId, o, "parent_id")
            + ',"tags":' + enc_field_str_list(self.tags, o, "tags")
            + "}"
        )
        return _json.encode_bytes(text, o)

    @classmethod
    def from_json(cls, data: bytes | str) -> Task:
        """Parse a task. Raises :class:`~tinytown.DecodeError` on anything
        Rust would reject; the error's ``raw`` holds ``data``."""
        obj = _json.load_object(data, "Task")
        try:
            get = obj.get
            # Every field is validated here, so the instance is filled
            # directly instead of going through __init__/__post_init__ again.
            task = _new(cls)
            task.id = as_id(obj["id"], TaskId, "id")
            task.description = as_str(obj["description"], "description")
            task.state = as_enum(obj["state"], _TASK_STATES, "state")
            task.assigned_to = as_opt_id(get("assigned_to"), AgentId, "assigned_to")
            task.created_at = as_ts(obj["created_at"], "created_at")
            task.updated_at = as_ts(obj["updated_at"], "updated_at")
            task.started_at = as_opt_ts(get("started_at"), "started_at")
            task.completed_at = as_opt_ts(get("completed_at"), "completed_at")
            task.result = as_opt_str(get("result"), "result")
            task.parent_id = as_opt_id(get("parent_id"), TaskId, "parent_id")
            task.tags = as_str_list(obj["tags"], "tags") if "tags" in obj else []
            return task
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.wrap_error("Task", exc, data) from None

    # -- Redis Hash layout ----------------------------------------------------

    def to_hash(self) -> dict[bytes, bytes]:
        """The task as a Redis Hash: one field per struct field, plain string
        values, ``tags`` as a JSON array, absent optionals left out."""
        self.to_json()  # validates every field
        out: dict[bytes, bytes] = {
            b"id": TaskId(self.id).encode(),
            b"description": self.description.encode(),
            b"state": self.state._value_.encode(),
        }
        if self.assigned_to is not None:
            out[b"assigned_to"] = AgentId(self.assigned_to).encode()
        out[b"created_at"] = self.created_at.rfc3339().encode()
        out[b"updated_at"] = self.updated_at.rfc3339().encode()
        if self.started_at is not None:
            out[b"started_at"] = self.started_at.rfc3339().encode()
        if self.completed_at is not None:
            out[b"completed_at"] = self.completed_at.rfc3339().encode()
        if self.result is not None:
            out[b"result"] = self.result.encode()
        if self.parent_id is not None:
            out[b"parent_id"] = TaskId(self.parent_id).encode()
        out[b"tags"] = enc_field_str_list(self.tags, "Task", "tags").encode()
        return out

    @classmethod
    def from_hash(cls, mapping: Mapping[Any, Any]) -> Task:
        """Read the Hash layout (keys and values bytes or str). Raises
        :class:`~tinytown.DecodeError`; its ``raw`` is the bad field's value
        (None when a field is missing)."""
        fields = _json.hash_to_str_dict(mapping, "Task")
        try:
            get = fields.get
            tags = get("tags")
            return cls(
                id=as_id(fields["id"], TaskId, "id"),
                description=fields["description"],
                state=as_enum(fields["state"], _TASK_STATES, "state"),
                assigned_to=as_opt_id(get("assigned_to"), AgentId, "assigned_to"),
                created_at=as_ts(fields["created_at"], "created_at"),
                updated_at=as_ts(fields["updated_at"], "updated_at"),
                started_at=as_opt_ts(get("started_at"), "started_at"),
                completed_at=as_opt_ts(get("completed_at"), "completed_at"),
                result=get("result"),
                parent_id=as_opt_id(get("parent_id"), TaskId, "parent_id"),
                tags=[] if tags is None else hash_str_list(tags, "tags"),
            )
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.hash_error("Task", exc, fields) from None
