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
    put_enum,
    put_id,
    put_str,
    put_ts,
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
        """A new PENDING task with a fresh id, created now.

        Raises :class:`~tinytown.InvalidArgumentError` for a non-str ``description`` or
        a tag that is not a str.
        """
        now = Timestamp.now()
        return cls(id=TaskId.new(), description=description, created_at=now, updated_at=now, tags=list(tags))

    # -- lifecycle ------------------------------------------------------------

    def assign(self, agent_id: AgentId | Any) -> None:
        """Assign the task to an agent (state ASSIGNED).

        Raises :class:`~tinytown.InvalidArgumentError` for a malformed agent id (the
        task is left unchanged).
        """
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
        """Mark the task COMPLETED with its result.

        Raises :class:`~tinytown.InvalidArgumentError` if ``result`` is not a str (the
        task is left unchanged).
        """
        if not isinstance(result, str):
            raise _bad("result", "a str", result)
        now = Timestamp.now()
        self.state = TaskState.COMPLETED
        self.result = result
        self.completed_at = now
        self.updated_at = now

    def fail(self, error: str) -> None:
        """Mark the task FAILED; the error goes into ``result``.

        Raises :class:`~tinytown.InvalidArgumentError` if ``error`` is not a str (the
        task is left unchanged).
        """
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

    # -- Redis Hash layout (Tinytown 0.7-0.10, spec sections 6 and 7) -------------

    def hash_fields(self) -> tuple[list[bytes], list[bytes]]:
        """The task as Tinytown 0.10's ``set_task`` writes it: ``(hdel, pairs)``.

        ``pairs`` is the flat HMSET argument list ``[field1, value1, ...]``
        (bytes): ``id, description, state, created_at, updated_at, tags``,
        then those of ``assigned_to, started_at, completed_at, result,
        parent_id`` that are not None. ``hdel`` lists (in that same order)
        the optional fields that are None, to be removed with HDEL first;
        it is empty when all five are set. Values: UUIDs lowercase
        hyphenated, raw strings as their UTF-8 bytes, the state bare,
        timestamps in the ``+00:00`` form (:meth:`Timestamp.to_rfc3339`),
        ``tags`` a compact JSON array (``[]`` when empty). Raises
        :class:`~tinytown.EncodeError` for a bad field, as :meth:`to_json` does.
        """
        o = "Task"
        pairs = [
            b"id", put_id(self.id, TaskId, o, "id"),
            b"description", put_str(self.description, o, "description"),
            b"state", put_enum(self.state, TaskState, o, "state"),
            b"created_at", put_ts(self.created_at, o, "created_at"),
            b"updated_at", put_ts(self.updated_at, o, "updated_at"),
            b"tags", _json.encode_bytes(enc_field_str_list(self.tags, o, "tags"), o),
        ]
        hdel: list[bytes] = []
        if self.assigned_to is None:
            hdel.append(b"assigned_to")
        else:
            pairs += (b"assigned_to", put_id(self.assigned_to, AgentId, o, "assigned_to"))
        if self.started_at is None:
            hdel.append(b"started_at")
        else:
            pairs += (b"started_at", put_ts(self.started_at, o, "started_at"))
        if self.completed_at is None:
            hdel.append(b"completed_at")
        else:
            pairs += (b"completed_at", put_ts(self.completed_at, o, "completed_at"))
        if self.result is None:
            hdel.append(b"result")
        else:
            pairs += (b"result", put_str(self.result, o, "result"))
        if self.parent_id is None:
            hdel.append(b"parent_id")
        else:
            pairs += (b"parent_id", put_id(self.parent_id, TaskId, o, "parent_id"))
        return hdel, pairs

    def to_hash(self) -> dict[bytes, bytes]:
        """The fields :meth:`hash_fields` writes, as a dict in HMSET order
        (absent optionals left out). Raises :class:`~tinytown.EncodeError`."""
        pairs = self.hash_fields()[1]
        return dict(zip(pairs[::2], pairs[1::2]))

    @classmethod
    def from_hash(cls, mapping: Mapping[Any, Any]) -> Task:
        """Read a task Hash (an HGETALL reply as a mapping; keys and values
        bytes or str) the way Tinytown 0.10's ``parse_task_from_hash`` does.

        Only ``id`` is required: a missing or non-UUID ``id``, a value that is
        not UTF-8, or a non-mapping raises :class:`~tinytown.DecodeError`.
        Everything else falls back to upstream's defaults: ``description``
        ``""``; ``state`` PENDING (read as the JSON string ``"<value>"``;
        ``in_flight`` is RUNNING); ``created_at``/``updated_at`` the reader's
        current time (RFC 3339 as chrono's ``parse_from_rfc3339`` reads it);
        ``started_at``/``completed_at``, ``assigned_to``/``parent_id`` None
        when unreadable; ``result`` None only when absent (an empty value
        stays ``""``); ``tags`` ``[]`` unless a JSON array of strings.
        Unknown fields are ignored.

        Upstream's defaults hide data loss (spec §9.6): when a field that is
        *present* is replaced by its default, one warning naming the fields
        is logged on the ``tinytown`` logger; absent fields are not reported.
        """
        fields = _json.hash_to_str_dict(mapping, "Task")
        get = fields.get
        task_id = _json.hash_required_id(fields, TaskId, "Task")
        bad: list[str] = []
        now = None
        created_text = get("created_at")
        created_at = None if created_text is None else _json.hash_ts(created_text, "created_at", bad)
        if created_at is None:
            created_at = now = Timestamp.now()
        updated_text = get("updated_at")
        updated_at = None if updated_text is None else _json.hash_ts(updated_text, "updated_at", bad)
        if updated_at is None:
            updated_at = now or Timestamp.now()
        started_text = get("started_at")
        completed_text = get("completed_at")
        task = _new(cls)
        task.id = task_id
        task.description = get("description", "")
        task.state = _json.hash_enum(get("state"), _TASK_STATES, TaskState.PENDING, "state", bad)
        task.assigned_to = _json.hash_opt_id(get("assigned_to"), AgentId, "assigned_to", bad)
        task.created_at = created_at
        task.updated_at = updated_at
        task.started_at = None if started_text is None else _json.hash_ts(started_text, "started_at", bad)
        task.completed_at = None if completed_text is None else _json.hash_ts(completed_text, "completed_at", bad)
        task.result = get("result")
        task.parent_id = _json.hash_opt_id(get("parent_id"), TaskId, "parent_id", bad)
        task.tags = _json.hash_tags(get("tags"), bad)
        if bad:
            _json.warn_defaults("Task", task_id, bad, fields)
        return task
