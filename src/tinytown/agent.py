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
    put_enum,
    put_id,
    put_str,
    put_ts,
    put_u64,
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
        """A new agent with a fresh id, state STARTING, counters at 0, timestamps now.

        Raises :class:`~tinytown.InvalidArgumentError` for a non-str ``name`` or ``cli``
        or an ``agent_type`` that is not an AgentType (or its value).
        """
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

    # -- Redis Hash layout (Tinytown 0.7-0.10, spec sections 6 and 7) -------------

    def hash_fields(self) -> tuple[list[bytes], list[bytes]]:
        """The agent as Tinytown 0.10's ``set_agent_state`` writes it: ``(hdel, pairs)``.

        ``pairs`` is the flat HMSET argument list ``[field1, value1, ...]``
        (bytes): ``id, name, agent_type, state, cli, created_at,
        last_heartbeat, tasks_completed, rounds_completed, last_active_at,
        spawn_mode``, then those of ``current_task, nickname, role_id,
        parent_agent_id`` that are not None. ``hdel`` lists (in that same
        order) the optional fields that are None, to be removed with HDEL
        first; it is empty when all four are set. Values: UUIDs lowercase
        hyphenated, raw strings as their UTF-8 bytes, enums bare,
        timestamps in the ``+00:00`` form (:meth:`Timestamp.to_rfc3339`),
        counters in decimal. Raises :class:`~tinytown.EncodeError` for a bad
        field, exactly as :meth:`to_json` does.
        """
        o = "Agent"
        pairs = [
            b"id", put_id(self.id, AgentId, o, "id"),
            b"name", put_str(self.name, o, "name"),
            b"agent_type", put_enum(self.agent_type, AgentType, o, "agent_type"),
            b"state", put_enum(self.state, AgentState, o, "state"),
            b"cli", put_str(self.cli, o, "cli"),
            b"created_at", put_ts(self.created_at, o, "created_at"),
            b"last_heartbeat", put_ts(self.last_heartbeat, o, "last_heartbeat"),
            b"tasks_completed", put_u64(self.tasks_completed, o, "tasks_completed"),
            b"rounds_completed", put_u64(self.rounds_completed, o, "rounds_completed"),
            b"last_active_at", put_ts(self.last_active_at, o, "last_active_at"),
            b"spawn_mode", put_enum(self.spawn_mode, SpawnMode, o, "spawn_mode"),
        ]
        hdel: list[bytes] = []
        if self.current_task is None:
            hdel.append(b"current_task")
        else:
            pairs += (b"current_task", put_id(self.current_task, TaskId, o, "current_task"))
        if self.nickname is None:
            hdel.append(b"nickname")
        else:
            pairs += (b"nickname", put_str(self.nickname, o, "nickname"))
        if self.role_id is None:
            hdel.append(b"role_id")
        else:
            pairs += (b"role_id", put_str(self.role_id, o, "role_id"))
        if self.parent_agent_id is None:
            hdel.append(b"parent_agent_id")
        else:
            pairs += (b"parent_agent_id", put_id(self.parent_agent_id, AgentId, o, "parent_agent_id"))
        return hdel, pairs

    def to_hash(self) -> dict[bytes, bytes]:
        """The fields :meth:`hash_fields` writes, as a dict in HMSET order
        (absent optionals left out). Raises :class:`~tinytown.EncodeError`."""
        pairs = self.hash_fields()[1]
        return dict(zip(pairs[::2], pairs[1::2]))

    @classmethod
    def from_hash(cls, mapping: Mapping[Any, Any]) -> Agent:
        """Read an agent Hash (an HGETALL reply as a mapping; keys and values
        bytes or str) the way Tinytown 0.10's ``parse_agent_from_hash`` does.

        Only ``id`` is required: a missing or non-UUID ``id``, a value that is
        not UTF-8, or a non-mapping raises :class:`~tinytown.DecodeError`.
        Everything else falls back to upstream's defaults: ``name``/``cli``
        ``""``; ``agent_type`` WORKER, ``state`` STARTING, ``spawn_mode``
        FRESH (an enum is read as the JSON string ``"<value>"``, so escapes
        count and ``Idle`` is not a state); counters 0 (Rust's u64 syntax:
        ``+5`` and ``007`` are read, ``-1``, ``5.0``, `` 5`` are not);
        ``created_at``/``last_heartbeat`` the reader's current time and
        ``last_active_at`` the resolved ``created_at`` (RFC 3339 as chrono's
        ``parse_from_rfc3339`` reads it); ``current_task``/``parent_agent_id``
        None when not a UUID; ``nickname``/``role_id`` None only when absent
        (an empty value stays ``""``). Unknown fields are ignored.

        Upstream's defaults hide data loss (spec §9.6): when a field that is
        *present* is replaced by its default, one warning naming the fields
        is logged on the ``tinytown`` logger; absent fields are not reported.
        """
        fields = _json.hash_to_str_dict(mapping, "Agent")
        get = fields.get
        agent_id = _json.hash_required_id(fields, AgentId, "Agent")
        bad: list[str] = []
        now = None
        created_text = get("created_at")
        created_at = None if created_text is None else _json.hash_ts(created_text, "created_at", bad)
        if created_at is None:
            created_at = now = Timestamp.now()
        heartbeat_text = get("last_heartbeat")
        last_heartbeat = None if heartbeat_text is None else _json.hash_ts(heartbeat_text, "last_heartbeat", bad)
        if last_heartbeat is None:
            last_heartbeat = now or Timestamp.now()
        active_text = get("last_active_at")
        last_active_at = None if active_text is None else _json.hash_ts(active_text, "last_active_at", bad)
        agent = _new(cls)
        agent.id = agent_id
        agent.name = get("name", "")
        agent.nickname = get("nickname")
        agent.role_id = get("role_id")
        agent.parent_agent_id = _json.hash_opt_id(get("parent_agent_id"), AgentId, "parent_agent_id", bad)
        agent.spawn_mode = _json.hash_enum(get("spawn_mode"), _SPAWN_MODES, SpawnMode.FRESH, "spawn_mode", bad)
        agent.agent_type = _json.hash_enum(get("agent_type"), _AGENT_TYPES, AgentType.WORKER, "agent_type", bad)
        agent.state = _json.hash_enum(get("state"), _AGENT_STATES, AgentState.STARTING, "state", bad)
        agent.cli = get("cli", "")
        agent.current_task = _json.hash_opt_id(get("current_task"), TaskId, "current_task", bad)
        agent.created_at = created_at
        agent.last_heartbeat = last_heartbeat
        agent.tasks_completed = _json.hash_counter(get("tasks_completed"), "tasks_completed", bad)
        agent.rounds_completed = _json.hash_counter(get("rounds_completed"), "rounds_completed", bad)
        agent.last_active_at = created_at if last_active_at is None else last_active_at
        if bad:
            _json.warn_defaults("Agent", agent_id, bad, fields)
        return agent
