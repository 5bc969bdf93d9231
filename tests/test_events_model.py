"""TownEvent and EventType against Tinytown 0.10.0's events.jsonl (no Redis needed).

Every ``event`` string in the vectors was printed by upstream's serde_json;
it must decode and re-encode to the same bytes, and :meth:`TownEvent.agent_streams`
must name exactly the per-agent streams upstream's ``EventStream::emit`` XADDed to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import tinytown
from tinytown import (
    AgentId, DecodeError, EncodeError, EventType, InvalidArgumentError, MissionId, SpawnMode, TaskId, TownEvent,
)
from tinytown.timestamp import Timestamp

WIRE_010 = Path(os.environ.get("TINYTOWN_WIRE_DIR", Path(__file__).parent / "data" / "wire")) / "tinytown-0.10"


def _records() -> list[dict[str, Any]]:
    text = (WIRE_010 / "events.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


RECORDS = _records()
PARAMS = [pytest.param(r, id=f"events.jsonl:{i}") for i, r in enumerate(RECORDS, 1)]
A1 = "00000000-0000-0000-0000-0000000000a1"
A2 = "00000000-0000-0000-0000-0000000000a2"
A3 = "00000000-0000-0000-0000-0000000000a3"


def test_vector_count_and_event_types() -> None:
    assert len(RECORDS) == 348
    seen = {json.loads(r["event"])["event_type"] for r in RECORDS}
    assert seen == {e.value for e in EventType}
    assert len(EventType) == 22


@pytest.mark.parametrize("record", PARAMS)
def test_event_round_trips_byte_for_byte(record: dict[str, Any]) -> None:
    raw = record["event"].encode("utf-8")
    event = TownEvent.from_json(raw)
    assert event.to_json() == raw
    assert TownEvent.from_json(record["event"]) == event
    # The XADD fields are event_type then data, as upstream sends them.
    assert record["fields"] == [["event_type", event.event_type.value], ["data", record["event"]]]


@pytest.mark.parametrize("record", PARAMS)
def test_agent_streams_match_the_xadds(record: dict[str, Any]) -> None:
    event = TownEvent.from_json(record["event"])
    town = record["town"]
    streams = [x["stream"] for x in record["xadds"]]
    expected = [f"tt:{town}:events"] + [f"tt:{town}:events:agent:{a}" for a in event.agent_streams()]
    if event.mission_id is not None:
        expected.append(f"tt:{town}:events:mission:{event.mission_id}")
    assert streams == expected
    maxlens = [x["maxlen"]["n"] for x in record["xadds"]]
    assert maxlens == [1000] + [100] * len(event.agent_streams()) + ([500] if event.mission_id else [])


def test_agent_streams_deduplicate() -> None:
    ts = Timestamp.parse("2024-01-01T00:00:00Z")
    mk = lambda **kw: TownEvent(event_type=EventType.TASK_DELEGATED, message="m", timestamp=ts, **kw)  # noqa: E731
    assert mk().agent_streams() == []
    assert mk(agent_id=A1, parent_agent_id=A1, child_agent_id=A1).agent_streams() == [A1]
    assert mk(agent_id=A1, parent_agent_id=A2, child_agent_id=A2).agent_streams() == [A1, A2]
    assert mk(agent_id=A1, parent_agent_id=A2, child_agent_id=A3).agent_streams() == [A1, A2, A3]
    assert mk(parent_agent_id=A2, child_agent_id=A3).agent_streams() == [A2, A3]
    assert mk(child_agent_id=A3).agent_streams() == [A3]
    assert all(type(a) is AgentId for a in mk(agent_id=A1, child_agent_id=A3).agent_streams())


def test_decoded_types_and_public_names() -> None:
    line = next(r["event"] for r in RECORDS if '"spawn_mode"' in r["event"] and '"mission_id"' in r["event"]
                and '"task_id"' in r["event"])
    event = TownEvent.from_json(line)
    assert type(event.event_type) is EventType
    assert type(event.task_id) is TaskId and type(event.mission_id) is MissionId
    assert type(event.spawn_mode) is SpawnMode and type(event.timestamp) is Timestamp
    assert tinytown.TownEvent is TownEvent and "TownEvent" in tinytown.__all__
    assert "EventType" in tinytown.__all__ and "MissionId" in tinytown.__all__


def test_reading_rules() -> None:
    base = '{"event_type":"agent_stopped","message":"bye","timestamp":"2024-01-01T00:00:00Z"'
    event = TownEvent.from_json(base + ',"unknown":[1,{"x":2}],"agent_id":null,"spawn_mode":null}')
    assert event.agent_id is None and event.spawn_mode is None and event.scope is None
    assert event.to_json() == (base + "}").encode()
    # Optional keys in any order are read; the output is in declaration order.
    shuffled = ('{"scope":"s","timestamp":"2024-01-01T00:00:00.5+01:00","message":"m",'
                f'"agent_id":"{A1.upper()}","event_type":"agent_spawned","spawn_mode":"forkedcontext"}}')
    assert TownEvent.from_json(shuffled).to_json() == (
        f'{{"event_type":"agent_spawned","agent_id":"{A1}","message":"m",'
        '"timestamp":"2023-12-31T23:00:00.500Z","scope":"s","spawn_mode":"forkedcontext"}'
    ).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'"x"',
        b"\xff",
        b'{"message":"m","timestamp":"2024-01-01T00:00:00Z"}',
        b'{"event_type":"agent_stopped","timestamp":"2024-01-01T00:00:00Z"}',
        b'{"event_type":"agent_stopped","message":"m"}',
        b'{"event_type":"AgentStopped","message":"m","timestamp":"2024-01-01T00:00:00Z"}',
        b'{"event_type":"agent_stopped","message":1,"timestamp":"2024-01-01T00:00:00Z"}',
        b'{"event_type":"agent_stopped","message":"m","timestamp":"yesterday"}',
        b'{"event_type":"agent_stopped","message":"m","timestamp":"2024-01-01T00:00:00Z","agent_id":"x"}',
        b'{"event_type":"agent_stopped","message":"m","timestamp":"2024-01-01T00:00:00Z","scope":3}',
        b'{"event_type":"agent_stopped","message":"m","timestamp":"2024-01-01T00:00:00Z","spawn_mode":"forked_context"}',
    ],
)
def test_bad_json_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        TownEvent.from_json(data)
    assert info.value.raw == data


def test_new_stamps_now_and_checks_arguments() -> None:
    before = Timestamp.now()
    event = TownEvent.new("agent_spawned", "hello", agent_id=A1, spawn_mode="resumed", scope="x")
    assert before <= event.timestamp <= Timestamp.now()
    assert event.event_type is EventType.AGENT_SPAWNED and event.spawn_mode is SpawnMode.RESUMED
    assert type(event.agent_id) is AgentId
    assert TownEvent.from_json(event.to_json()) == event
    with pytest.raises(InvalidArgumentError):
        TownEvent.new("agent_spawned", "m", colour="red")
    with pytest.raises(InvalidArgumentError):
        TownEvent.new("no_such_event", "m")
    with pytest.raises(InvalidArgumentError):
        TownEvent.new("agent_spawned", "m", agent_id="not-a-uuid")
    with pytest.raises(InvalidArgumentError):
        TownEvent.new("agent_spawned", b"m")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        TownEvent.new("agent_spawned", "m", old_state=1)


def test_to_json_rejects_bad_fields_set_after_construction() -> None:
    event = TownEvent.new(EventType.MISSION_EVENT, "m")
    event.scope = "\ud800"  # a lone surrogate cannot be UTF-8
    with pytest.raises(EncodeError):
        event.to_json()
    event.scope = 5  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        event.to_json()
    event.scope = None
    event.mission_id = "nope"  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        event.to_json()
