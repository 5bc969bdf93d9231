"""An agent's registration record, as stored at ``tt:<town>:agent:<id>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from . import _json
from ._json import (
    as_enum,
    as_id,
    as_opt_id,
    as_opt_str,
    as_str,
    as_ts,
    as_u64,
    enc_field_enum,
    enc_field_id,
    enc_field_opt_id,
    enc_field_opt_str,
    enc_field_str,
    enc_field_ts,
    enc_field_u64,
    hash_u64,
)
from .enums import AgentState, AgentType, SpawnMode
from .errors import InvalidArgumentError
from .ids import AgentId, TaskId
from .timestamp import Timestamp

_new = object.__new__

__all__ = ["Agent"]

_SPAWN_MODES = _json.enum_table(SpawnMode)
_AGENT_TYPES = _json.enum_table(AgentType)
_AGENT_STATES = _json.enum_table(AgentState)



def _coerce(value: Any, kind: Any, field_name: str) -> Any:
    """Convert a constructor argument to the field's type, or raise InvalidArgumentError."""
    try:
        if isinstance(kind, type) and issubclass(kind, Timestamp):
            return value if isinstance(value, Timestamp) else Timestamp.from_datetime(value)
        return kind(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"Agent.{field_name}: {exc}") from None
    except ValueError:
        raise InvalidArgumentError(f"Agent.{field_name}: invalid value {value!r}") from None


def _check_str(value: Any, field_name: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"Agent.{field_name} must be a str{' or None' if optional else ''}, got {type(value).__name__}"
        )


def _check_u64(value: Any, field_name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _json.U64_MAX:
        raise InvalidArgumentError(f"Agent.{field_name} must be an int in 0..2**64-1, got {value!r}")


@dataclass(slots=True, kw_only=True)
class Agent:
    """An agent: identity, kind, lifecycle state and counters.

    Fields are keyword-only and in wire order. Ids may be given as text or
    :class:`uuid.UUID`, enums as their wire strings, timestamps as any
    :class:`datetime.datetime` (naive = UTC); they are converted.
    """

    id: AgentId
    name: str
    nickname: str | None = None
    role_id: str | None = None
    parent_agent_id: AgentId | None = None
    spawn_mode: SpawnMode = SpawnMode.FRESH
    agent_type: AgentType = AgentType.WORKER
    state: AgentState = AgentState.STARTING
    cli: str
    current_task: TaskId | None = None
    created_at: Timestamp = field(default_factory=Timestamp.now)
    last_heartbeat: Timestamp = field(default_factory=Timestamp.now)
    tasks_completed: int = 0
    rounds_completed: int = 0
    last_active_at: Timestamp = field(default_factory=Timestamp.now)

    def __post_init__(self) -> None:
        if type(self.id) is not AgentId:
            self.id = _coerce(self.id, AgentId, "id")
        _check_str(self.name, "name")
        _check_str(self.nickname, "nickname", optional=True)
        _check_str(self.role_id, "role_id", optional=True)
        if self.parent_agent_id is not None and type(self.parent_agent_id) is not AgentId:
            self.parent_agent_id = _coerce(self.parent_agent_id, AgentId, "parent_agent_id")
        if type(self.spawn_mode) is not SpawnMode:
            self.spawn_mode = _coerce(self.spawn_mode, SpawnMode, "spawn_mode")
        if type(self.agent_type) is not AgentType:
            self.agent_type = _coerce(self.agent_type, AgentType, "agent_type")
        if type(self.state) is not AgentState:
            self.state = _coerce(self.state, AgentState, "state")
        _check_str(self.cli, "cli")
        if self.current_task is not None and type(self.current_task) is not TaskId:
            self.current_task = _coerce(self.current_task, TaskId, "current_task")
        if not isinstance(self.created_at, Timestamp):
            self.created_at = _coerce(self.created_at, Timestamp, "created_at")
        if not isinstance(self.last_heartbeat, Timestamp):
            self.last_heartbeat = _coerce(self.last_heartbeat, Timestamp, "last_heartbeat")
        _check_u64(self.tasks_completed, "tasks_completed")
        _check_u64(self.rounds_completed, "rounds_completed")
        if not isinstance(self.last_active_at, Timestamp):
            self.last_active_at = _coerce(self.last_active_at, Timestamp, "last_active_at")

    @classmethod
    def new(cls, name: str, cli: str, agent_type: AgentType | str = AgentType.WORKER) -> Agent:
        """A new agent with a fresh id, state STARTING, counters at 0, timestamps now."""
        now = Timestamp.now()
        return cls(
            id=AgentId.new(),
            name=name,
            agent_type=agent_type,  # type: ignore[arg-type]
            cli=cli,
            created_at=now,
            last_heartbeat=now,
            last_active_at=now,
        )

    # -- JSON -----------------------------------------------------------------

    def to_json(self) -> bytes:
        """The agent as compact JSON, byte-identical to Rust's serde_json."""
        o = "Agent"
        text = (
            '{"id":' + enc_field_id(self.id, AgentId, o, "id")
            + ',"name":' + enc_field_str(self.name, o, "name")
            + ',"nickname":' + enc_field_opt_str(self.nickname, o, "nickname")
            + ',"role_id":' + enc_field_opt_str(self.role_id, o, "role_id")
            + ',"parent_agent_id":' + enc_field_opt_id(self.parent_agent_id, AgentId, o, "parent_agent_id")
            + ',"spawn_mode":' + enc_field_enum(self.spawn_mode, SpawnMode, o, "spawn_mode")
            + ',"agent_type":' + enc_field_enum(self.agent_type, AgentType, o, "agent_type")
            + ',"state":' + enc_field_enum(self.state, AgentState, o, "state")
            + ',"cli":' + enc_field_str(self.cli, o, "cli")
            + ',"current_task":' + enc_field_opt_id(self.current_task, TaskId, o, "current_task")
            + ',"created_at":' + enc_field_ts(self.created_at, o, "created_at")
            + ',"last_heartbeat":' + enc_field_ts(self.last_heartbeat, o, "last_heartbeat")
            + ',"tasks_completed":' + enc_field_u64(self.tasks_completed, o, "tasks_completed")
            + ',"rounds_completed":' + enc_field_u64(self.rounds_completed, o, "rounds_completed")
            + ',"last_active_at":' + enc_field_ts(self.last_active_at, o, "last_active_at")
            + "}"
        )
        return _json.encode_bytes(text, o)

    @classmethod
    def from_json(cls, data: bytes | str) -> Agent:
        """Parse an agent. Raises :class:`~tinytown.DecodeError` on anything
        Rust would reject; the error's ``raw`` holds ``data``."""
        obj = _json.load_object(data, "Agent")
        try:
            get = obj.get
            spawn_mode = get("spawn_mode", SpawnMode.FRESH)
            if spawn_mode is not SpawnMode.FRESH:
                spawn_mode = as_enum(spawn_mode, _SPAWN_MODES, "spawn_mode")
            # Every field is validated here, so the instance is filled
            # directly instead of going through __init__/__post_init__ again.
            agent = _new(cls)
            agent.id = as_id(obj["id"], AgentId, "id")
            agent.name = as_str(obj["name"], "name")
            agent.nickname = as_opt_str(get("nickname"), "nickname")
            agent.role_id = as_opt_str(get("role_id"), "role_id")
            agent.parent_agent_id = as_opt_id(get("parent_agent_id"), AgentId, "parent_agent_id")
            agent.spawn_mode = spawn_mode
            agent.agent_type = as_enum(obj["agent_type"], _AGENT_TYPES, "agent_type")
            agent.state = as_enum(obj["state"], _AGENT_STATES, "state")
            agent.cli = as_str(obj["cli"], "cli")
            agent.current_task = as_opt_id(get("current_task"), TaskId, "current_task")
            agent.created_at = as_ts(obj["created_at"], "created_at")
            agent.last_heartbeat = as_ts(obj["last_heartbeat"], "last_heartbeat")
            agent.tasks_completed = as_u64(obj["tasks_completed"], "tasks_completed")
            agent.rounds_completed = as_u64(get("rounds_completed", 0), "rounds_completed")
            # serde's default for a missing last_active_at is "now"; null is an error.
            agent.last_active_at = (Timestamp.now() if "last_active_at" not in obj
                                    else as_ts(obj["last_active_at"], "last_active_at"))
            return agent
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.wrap_error("Agent", exc, data) from None

    # -- Redis Hash layout ----------------------------------------------------

    def to_hash(self) -> dict[bytes, bytes]:
        """The agent as a Redis Hash: one field per struct field, plain string
        values, absent optionals left out."""
        # to_json validates every field; reuse its checks instead of repeating them.
        self.to_json()
        out: dict[bytes, bytes] = {
            b"id": AgentId(self.id).encode(),
            b"name": self.name.encode(),
        }
        if self.nickname is not None:
            out[b"nickname"] = self.nickname.encode()
        if self.role_id is not None:
            out[b"role_id"] = self.role_id.encode()
        if self.parent_agent_id is not None:
            out[b"parent_agent_id"] = AgentId(self.parent_agent_id).encode()
        out[b"spawn_mode"] = self.spawn_mode._value_.encode()
        out[b"agent_type"] = self.agent_type._value_.encode()
        out[b"state"] = self.state._value_.encode()
        out[b"cli"] = self.cli.encode()
        if self.current_task is not None:
            out[b"current_task"] = TaskId(self.current_task).encode()
        out[b"created_at"] = self.created_at.rfc3339().encode()
        out[b"last_heartbeat"] = self.last_heartbeat.rfc3339().encode()
        out[b"tasks_completed"] = int.__repr__(self.tasks_completed).encode()
        out[b"rounds_completed"] = int.__repr__(self.rounds_completed).encode()
        out[b"last_active_at"] = self.last_active_at.rfc3339().encode()
        return out

    @classmethod
    def from_hash(cls, mapping: Mapping[Any, Any]) -> Agent:
        """Read the Hash layout (keys and values bytes or str). Raises
        :class:`~tinytown.DecodeError`; its ``raw`` is the bad field's value
        (None when a field is missing)."""
        fields = _json.hash_to_str_dict(mapping, "Agent")
        try:
            get = fields.get
            spawn_mode = get("spawn_mode")
            rounds = get("rounds_completed")
            last_active = get("last_active_at")
            return cls(
                id=as_id(fields["id"], AgentId, "id"),
                name=fields["name"],
                nickname=get("nickname"),
                role_id=get("role_id"),
                parent_agent_id=as_opt_id(get("parent_agent_id"), AgentId, "parent_agent_id"),
                spawn_mode=SpawnMode.FRESH if spawn_mode is None else as_enum(spawn_mode, _SPAWN_MODES, "spawn_mode"),
                agent_type=as_enum(fields["agent_type"], _AGENT_TYPES, "agent_type"),
                state=as_enum(fields["state"], _AGENT_STATES, "state"),
                cli=fields["cli"],
                current_task=as_opt_id(get("current_task"), TaskId, "current_task"),
                created_at=as_ts(fields["created_at"], "created_at"),
                last_heartbeat=as_ts(fields["last_heartbeat"], "last_heartbeat"),
                tasks_completed=hash_u64(fields["tasks_completed"], "tasks_completed"),
                rounds_completed=0 if rounds is None else hash_u64(rounds, "rounds_completed"),
                last_active_at=Timestamp.now() if last_active is None else as_ts(last_active, "last_active_at"),
            )
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.hash_error("Agent", exc, fields) from None

