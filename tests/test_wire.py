"""Wire compatibility with Tinytown's Rust code: the golden vectors and the JSON rules.

The vectors in the shared wire directory were written by serde_json; every
line must decode and re-encode to the very same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from tinytown.agent import Agent
from tinytown.enums import AgentState, AgentType, Priority, SpawnMode, TaskState
from tinytown.ids import AgentId, MessageId, TaskId
from tinytown.message import ConfirmationType, Message, MessageType
from tinytown.task import Task
from tinytown.timestamp import Timestamp

# A copy of the golden vectors of shared/wire/ (Tinytown's serde_json output).
WIRE_DIR = Path(os.environ.get("TINYTOWN_WIRE_DIR", Path(__file__).parent / "data" / "wire"))
KINDS = {"messages.jsonl": Message, "agents.jsonl": Agent, "tasks.jsonl": Task}


SHARED_WIRE_DIR = Path(__file__).resolve().parents[2] / "shared" / "wire"


# Tinytown 0.10.0's own vectors (spec: shared/wire/tinytown-0.10.md), used by
# test_events_model.py and test_hash_model.py.
WIRE_010_FILES = [f"tinytown-0.10/{name}.jsonl" for name in
                  ("activity", "docket", "events", "hash-agents", "hash-tasks", "methods")]


@pytest.mark.skipif(not SHARED_WIRE_DIR.is_dir(), reason="no shared/ checkout beside the repo")
@pytest.mark.parametrize("name", sorted(KINDS) + WIRE_010_FILES)
def test_vector_copy_matches_shared(name: str) -> None:
    """tests/data/wire must stay byte-identical to the project's shared/wire vectors."""
    assert (WIRE_DIR / name).read_bytes() == (SHARED_WIRE_DIR / name).read_bytes()


@pytest.mark.skipif(not SHARED_WIRE_DIR.is_dir(), reason="no shared/ checkout beside the repo")
def test_every_shared_010_vector_file_is_copied() -> None:
    shared = sorted(f"tinytown-0.10/{p.name}" for p in (SHARED_WIRE_DIR / "tinytown-0.10").glob("*.jsonl"))
    assert shared == WIRE_010_FILES


def _lines(name: str) -> list[str]:
    text = (WIRE_DIR / name).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line]


def _vectors() -> list[pytest.param]:
    params = []
    for name, cls in KINDS.items():
        for number, line in enumerate(_lines(name), 1):
            params.append(pytest.param(cls, line, id=f"{name}:{number}"))
    return params


VECTORS = _vectors()
AGENT_LINES = _lines("agents.jsonl")
TASK_LINES = _lines("tasks.jsonl")
MESSAGE_LINES = _lines("messages.jsonl")


def test_vector_files_are_all_there() -> None:
    assert len(MESSAGE_LINES) == 54
    assert len(AGENT_LINES) == 20
    assert len(TASK_LINES) == 20


@pytest.mark.parametrize("cls, line", VECTORS)
def test_vector_round_trips_byte_for_byte(cls: type, line: str) -> None:
    raw = line.encode("utf-8")
    obj = cls.from_json(raw)
    assert obj.to_json() == raw
    # str input decodes to the same value, and the output decodes back to it.
    assert cls.from_json(line) == obj
    assert cls.from_json(obj.to_json()) == obj


@pytest.mark.parametrize("cls, line", VECTORS)
def test_vector_keys_in_declaration_order(cls: type, line: str) -> None:
    out = orjson.loads(cls.from_json(line).to_json())
    assert list(out) == list(orjson.loads(line))


def test_field_order_matches_the_wire_readme() -> None:
    from dataclasses import fields

    assert [f.name for f in fields(Agent)] == [
        "id", "name", "nickname", "role_id", "parent_agent_id", "spawn_mode", "agent_type", "state",
        "cli", "current_task", "created_at", "last_heartbeat", "tasks_completed", "rounds_completed",
        "last_active_at",
    ]
    assert [f.name for f in fields(Task)] == [
        "id", "description", "state", "assigned_to", "created_at", "updated_at", "started_at",
        "completed_at", "result", "parent_id", "tags",
    ]


def test_decoded_vector_has_model_types() -> None:
    msg = Message.from_json(MESSAGE_LINES[9])  # task_done, low priority, correlated
    assert type(msg.id) is MessageId and type(msg.from_) is AgentId and type(msg.to) is AgentId
    assert msg.from_ == AgentId.supervisor()
    assert msg.msg_type == MessageType.TaskDone(
        task_id="78e51061-7311-48a3-82ce-6f447ed4d57b", result="line1\nline2\ttab"
    )
    assert msg.priority is Priority.LOW
    assert type(msg.created_at) is Timestamp
    assert type(msg.correlation_id) is MessageId

    agent = Agent.from_json(AGENT_LINES[0])
    assert type(agent.id) is AgentId and type(agent.current_task) is TaskId
    assert agent.agent_type is AgentType.SUPERVISOR and agent.state is AgentState.IDLE
    assert agent.spawn_mode is SpawnMode.FRESH and agent.tasks_completed == 806060565721

    task = Task.from_json(TASK_LINES[3])
    assert task.state is TaskState.FAILED and task.tags == ["a", "b", "ü"]
    assert type(task.completed_at) is Timestamp and task.started_at is None


# -- timestamps ------------------------------------------------------------------


def _message_with_time(created_at: str) -> bytes:
    obj = orjson.loads(MESSAGE_LINES[0])
    obj["created_at"] = created_at
    return orjson.dumps(obj)


def test_reencoding_keeps_nanoseconds() -> None:
    line = next(line for line in MESSAGE_LINES if ".000000001Z" in line)
    msg = Message.from_json(line)
    assert msg.created_at.nanosecond == 1
    assert msg.created_at.microsecond == 0
    assert b'"created_at":"' + msg.created_at.rfc3339().encode() + b'"' in msg.to_json()
    assert msg.to_json() == line.encode()
    again = Message.from_json(msg.with_priority(Priority.LOW).to_json())
    assert again.created_at == msg.created_at and again.created_at.nanosecond == 1


@pytest.mark.parametrize(
    "given, written",
    [
        ("2026-01-01T22:34:00+02:00", "2026-01-01T20:34:00Z"),
        ("2026-01-01T18:04:00-02:30", "2026-01-01T20:34:00Z"),
        ("2026-01-01T00:30:00.5+01:00", "2025-12-31T23:30:00.500Z"),
        ("2026-01-01T20:34:00.000+00:00", "2026-01-01T20:34:00Z"),
        ("2026-01-01T20:34:00-00:00", "2026-01-01T20:34:00Z"),
        ("2026-01-01t20:34:00z", "2026-01-01T20:34:00Z"),
        ("2026-01-01 20:34:00Z", "2026-01-01T20:34:00Z"),
        ("2026-01-01T20:34:00.500000Z", "2026-01-01T20:34:00.500Z"),
        ("2026-01-01T20:34:00.1234567Z", "2026-01-01T20:34:00.123456700Z"),
        ("2026-01-01T20:34:00.123456789999Z", "2026-01-01T20:34:00.123456789Z"),
        ("2026-01-01T20:34:00.12Z", "2026-01-01T20:34:00.120Z"),
        ("2026-03-01T01:00:00.000000001+01:00", "2026-03-01T00:00:00.000000001Z"),
    ],
)
def test_any_offset_and_precision_accepted_and_written_canonically(given: str, written: str) -> None:
    msg = Message.from_json(_message_with_time(given))
    assert msg.created_at.rfc3339() == written
    assert f'"created_at":"{written}"'.encode() in msg.to_json()


# -- reading leniently: unknown fields, defaults, aliases ---------------------------


def test_unknown_fields_are_ignored() -> None:
    obj = orjson.loads(MESSAGE_LINES[7])  # confirmation / rejected
    obj["extra"] = {"nested": [1, 2, 3]}
    obj["ack_type"]["also"] = None
    obj["zzz"] = "ignored"
    msg = Message.from_json(orjson.dumps(obj))
    assert msg.to_json() == MESSAGE_LINES[7].encode()

    for lines, cls in ((AGENT_LINES, Agent), (TASK_LINES, Task)):
        obj = orjson.loads(lines[0])
        obj["future_field"] = [True, None]
        assert cls.from_json(orjson.dumps(obj)).to_json() == lines[0].encode()


def test_message_defaults() -> None:
    obj = orjson.loads(MESSAGE_LINES[12])  # status_response with a current_task
    del obj["priority"], obj["correlation_id"], obj["current_task"]
    msg = Message.from_json(orjson.dumps(obj))
    assert msg.priority is Priority.NORMAL
    assert msg.correlation_id is None
    assert msg.msg_type == MessageType.StatusResponse(state="working", current_task=None)
    out = orjson.loads(msg.to_json())
    assert out["priority"] == "normal" and out["correlation_id"] is None and out["current_task"] is None


def test_agent_defaults() -> None:
    obj = orjson.loads(AGENT_LINES[3])
    for key in ("nickname", "role_id", "parent_agent_id", "spawn_mode", "rounds_completed", "last_active_at"):
        del obj[key]
    before = Timestamp.now()
    agent = Agent.from_json(orjson.dumps(obj))
    after = Timestamp.now()
    assert agent.nickname is None and agent.role_id is None and agent.parent_agent_id is None
    assert agent.spawn_mode is SpawnMode.FRESH
    assert agent.rounds_completed == 0
    assert before <= agent.last_active_at <= after
    assert agent.current_task == "6efa083b-460f-423d-b0fa-62166bb685a0"  # present, kept


def test_agent_optional_fields_may_be_missing() -> None:
    obj = orjson.loads(AGENT_LINES[0])
    del obj["current_task"]
    assert Agent.from_json(orjson.dumps(obj)).current_task is None


def test_task_defaults() -> None:
    obj = orjson.loads(TASK_LINES[7])  # has every optional set
    for key in ("started_at", "tags", "assigned_to", "completed_at", "result", "parent_id"):
        del obj[key]
    task = Task.from_json(orjson.dumps(obj))
    assert task.started_at is None and task.tags == []
    assert task.assigned_to is None and task.completed_at is None
    assert task.result is None and task.parent_id is None
    out = orjson.loads(task.to_json())
    assert out["tags"] == [] and out["started_at"] is None


def test_in_flight_is_read_as_running_and_written_as_running() -> None:
    obj = orjson.loads(TASK_LINES[0])
    obj["state"] = "in_flight"
    task = Task.from_json(orjson.dumps(obj))
    assert task.state is TaskState.RUNNING
    assert task.to_json() == TASK_LINES[0].encode()
    assert TaskState("in_flight") is TaskState.RUNNING


def test_uuid_spellings_rust_accepts_are_normalized() -> None:
    obj = orjson.loads(MESSAGE_LINES[8])
    canonical = obj["to"]
    obj["to"] = canonical.upper()
    obj["from"] = "{" + obj["from"] + "}"
    obj["correlation_id"] = obj["correlation_id"].replace("-", "")
    msg = Message.from_json(orjson.dumps(obj))
    assert msg.to_json() == MESSAGE_LINES[8].encode()


# -- Redis Hash layout --------------------------------------------------------------


@pytest.mark.parametrize("line", AGENT_LINES, ids=[f"agents.jsonl:{i}" for i in range(1, 21)])
def test_agent_hash_round_trip(line: str) -> None:
    agent = Agent.from_json(line)
    h = agent.to_hash()
    assert all(type(k) is bytes and type(v) is bytes for k, v in h.items())
    src = orjson.loads(line)
    for key, value in src.items():
        if value is None:
            assert key.encode() not in h  # absent optionals are simply missing
        elif isinstance(value, int):
            assert h[key.encode()] == str(value).encode()
        elif key.endswith(("_at", "_heartbeat")):
            assert h[key.encode()] == value.replace("Z", "+00:00").encode()  # chrono's to_rfc3339()
        else:
            assert h[key.encode()] == value.encode()  # enums bare, strings raw
    assert Agent.from_hash(h) == agent
    as_text = {k.decode(): v.decode() for k, v in h.items()}
    assert Agent.from_hash(as_text) == agent
    assert Agent.from_hash(h).to_json() == line.encode()


@pytest.mark.parametrize("line", TASK_LINES, ids=[f"tasks.jsonl:{i}" for i in range(1, 21)])
def test_task_hash_round_trip(line: str) -> None:
    task = Task.from_json(line)
    h = task.to_hash()
    src = orjson.loads(line)
    for key, value in src.items():
        if value is None:
            assert key.encode() not in h
        elif key == "tags":
            assert orjson.loads(h[b"tags"]) == value
        elif key.endswith("_at"):
            assert h[key.encode()] == value.replace("Z", "+00:00").encode()
        else:
            assert h[key.encode()] == value.encode()
    assert Task.from_hash(h) == task
    mixed = {k.decode(): v for k, v in h.items()}  # str keys, bytes values
    assert Task.from_hash(mixed) == task
    assert Task.from_hash(h).to_json() == line.encode()


def test_hash_tags_are_a_json_array_string() -> None:
    task = Task.new("x", tags=["a", 'q"uote', "ü"])
    assert task.to_hash()[b"tags"] == '["a","q\\"uote","ü"]'.encode()
    assert Task.new("y").to_hash()[b"tags"] == b"[]"


def test_hash_defaults_and_alias() -> None:
    agent = Agent.from_json(AGENT_LINES[2])
    h = agent.to_hash()
    for key in (b"spawn_mode", b"rounds_completed", b"last_active_at", b"nickname"):
        h.pop(key, None)
    got = Agent.from_hash(h)
    assert got.spawn_mode is SpawnMode.FRESH and got.rounds_completed == 0 and got.nickname is None
    assert got.last_active_at == got.created_at == agent.created_at  # upstream's fallback

    th = Task.from_json(TASK_LINES[0]).to_hash()
    th[b"state"] = b"in_flight"
    del th[b"tags"]
    task = Task.from_hash(th)
    assert task.state is TaskState.RUNNING and task.tags == []


def test_every_variant_appears_in_the_vectors() -> None:
    tags = {orjson.loads(line)["type"] for line in MESSAGE_LINES}
    assert tags == {
        "task", "query", "informational", "confirmation", "task_assign", "task_done", "task_failed",
        "status_request", "status_response", "ping", "pong", "shutdown", "custom",
    }
    acks = {
        type(Message.from_json(line).msg_type.ack_type)
        for line in MESSAGE_LINES
        if '"confirmation"' in line
    }
    assert acks == {
        ConfirmationType.Received, ConfirmationType.Acknowledged, ConfirmationType.Thanks,
        ConfirmationType.Approved, ConfirmationType.Rejected,
    }
