"""The Redis Hash layout of Agent and Task against Tinytown 0.10.0's own vectors (no Redis).

hash-agents.jsonl / hash-tasks.jsonl: what ``set_agent_state``/``set_task``
send (HDEL fields, HMSET pairs) for a value given as JSON. methods.jsonl:
upstream's ``get_agent_state``/``get_task`` fed a scripted HGETALL reply (the
"reader probes"); ``"<now>"`` marks values taken from the reader's clock.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tinytown import Agent, DecodeError, EncodeError, Task, Timestamp

WIRE_010 = Path(os.environ.get("TINYTOWN_WIRE_DIR", Path(__file__).parent / "data" / "wire")) / "tinytown-0.10"


def _records(name: str) -> list[dict[str, Any]]:
    text = (WIRE_010 / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


AGENT_VECTORS = _records("hash-agents.jsonl")
TASK_VECTORS = _records("hash-tasks.jsonl")
HASH_PARAMS = [pytest.param(Agent, r, id=f"hash-agents.jsonl:{i}") for i, r in enumerate(AGENT_VECTORS, 1)] + [
    pytest.param(Task, r, id=f"hash-tasks.jsonl:{i}") for i, r in enumerate(TASK_VECTORS, 1)
]


def _flat(pairs: list[list[str]]) -> list[bytes]:
    return [item.encode() for pair in pairs for item in pair]


def test_vector_counts() -> None:
    assert len(AGENT_VECTORS) == 226 and len(TASK_VECTORS) == 242


@pytest.mark.parametrize("cls, record", HASH_PARAMS)
def test_hash_writer_matches_upstream(cls: type, record: dict[str, Any]) -> None:
    value = cls.from_json(record["json"])
    hdel, pairs = value.hash_fields()
    assert hdel == [f.encode() for f in record["hdel"]]
    assert pairs == _flat(record["hset"])
    assert all(type(x) is bytes for x in hdel + pairs)
    assert record["commands"] == (["HDEL", "HMSET"] if hdel else ["HMSET"])
    assert list(value.to_hash().items()) == [(k.encode(), v.encode()) for k, v in record["hset"]]


@pytest.mark.parametrize("cls, record", HASH_PARAMS)
def test_hash_reader_gives_back_the_value(cls: type, record: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    expected = cls.from_json(record["json"])
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        as_bytes = cls.from_hash({k.encode(): v.encode() for k, v in record["hset"]})
        as_str = cls.from_hash(dict(record["hset"]))
    assert as_bytes == expected and as_str == expected
    assert as_bytes.to_json() == record["json"].encode()
    assert caplog.records == []  # nothing was replaced by a default


def test_hash_writer_rejects_what_to_json_rejects() -> None:
    agent = Agent.from_json(AGENT_VECTORS[0]["json"])
    for field, bad in [("name", "\ud800"), ("cli", 3), ("tasks_completed", -1), ("created_at", "2024"),
                       ("state", "idle"), ("parent_agent_id", "x"), ("nickname", b"n")]:
        broken = Agent.from_json(AGENT_VECTORS[0]["json"])
        setattr(broken, field, bad)
        with pytest.raises(EncodeError):
            broken.to_json()
        with pytest.raises(EncodeError) as info:
            broken.hash_fields()
        assert field in str(info.value)
    assert agent.hash_fields()  # the untouched one still encodes
    task = Task.from_json(TASK_VECTORS[0]["json"])
    for field, bad in [("tags", ["\udc00"]), ("tags", "ab"), ("result", 5), ("completed_at", 0), ("id", "x")]:
        broken = Task.from_json(TASK_VECTORS[0]["json"])
        setattr(broken, field, bad)
        with pytest.raises(EncodeError):
            broken.to_json()
        with pytest.raises(EncodeError):
            broken.hash_fields()
    assert task.hash_fields()


# -- reader probes of methods.jsonl -------------------------------------------------

# methods.jsonl was recorded with chrono 0.4.23; Tinytown 0.10.0's lock file
# has chrono 0.4.44, whose parse_from_rfc3339 differs on three inputs (spec
# section 7). We follow 0.4.44.
CHRONO_0_4_44 = {
    "2024-01-02 03:04:05+00:00": "2024-01-02T03:04:05Z",  # space separator accepted
    "2024-01-01T23:04:05\u221204:00": "2024-01-02T03:04:05Z",  # U+2212 minus accepted
    "2024-01-02T03:04:05UTC": "<now> (rejected)",  # UTC suffix rejected
}


def _reply_item(item: Any) -> bytes:
    if isinstance(item, dict):
        return bytes.fromhex(item["hex"])
    return item.encode()


def _probes() -> list[Any]:
    params = []
    for number, record in enumerate(_records("methods.jsonl"), 1):
        if record.get("method") not in ("get_agent_state", "get_task"):
            continue
        reply = record["sent"][0]["replies"][0]
        if not isinstance(reply, list) or not reply:
            continue  # a Redis error or an absent key: not the reader's business
        cls = Agent if record["method"] == "get_agent_state" else Task
        params.append(pytest.param(cls, reply, record["result"], id=f"methods.jsonl:{number}"))
    return params


PROBES = _probes()


def test_probe_count() -> None:
    assert len(PROBES) >= 45


def _check_time(text: str, expected: str, before: Timestamp, after: Timestamp) -> None:
    if expected.startswith("<now>"):
        assert before <= Timestamp.parse(text) <= after, text
    else:
        assert text == expected


@pytest.mark.parametrize("cls, reply, result", PROBES)
def test_reader_probe(cls: type, reply: list[Any], result: dict[str, Any]) -> None:
    flat = [_reply_item(x) for x in reply]
    mapping = dict(zip(flat[::2], flat[1::2]))
    if "err" in result:
        with pytest.raises(DecodeError):
            cls.from_hash(mapping)
        return
    before = Timestamp.now()
    value = cls.from_hash(mapping)
    after = Timestamp.now()
    got = orjson.loads(value.to_json())
    if "ok_created_at" in result:
        given = mapping[b"created_at"].decode()
        _check_time(got["created_at"], CHRONO_0_4_44.get(given, result["ok_created_at"]), before, after)
        return
    expected = result["ok"]
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        if isinstance(want, str) and want.startswith("<now>"):
            _check_time(got[key], want, before, after)
        else:
            assert got[key] == want, key


def test_reader_now_is_shared_and_last_active_follows_created_at() -> None:
    agent = Agent.from_hash({"id": "00000000-0000-0000-0000-0000000000b1"})
    assert agent.created_at == agent.last_heartbeat == agent.last_active_at
    task = Task.from_hash({b"id": b"00000000-0000-0000-0000-00000000007a"})
    assert task.created_at == task.updated_at


def test_reader_warns_once_naming_every_replaced_field(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        Agent.from_hash({"id": "00000000-0000-0000-0000-0000000000b1", "state": "Idle", "created_at": "soon",
                         "rounds_completed": "-1", "current_task": "nope", "name": "kept"})
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    for field in ("state", "created_at", "rounds_completed", "current_task"):
        assert field in text
    assert "name" not in text.replace("rounds", "")


@pytest.mark.parametrize("mapping", [
    {},
    {"name": "x"},
    {"id": "worker-1"},
    {"id": b"00000000-0000-0000-0000-0000000000b1", "name": b"\xff"},
    {b"\xfe": b"x", "id": "00000000-0000-0000-0000-0000000000b1"},
    {"id": 5},
    [("id", "00000000-0000-0000-0000-0000000000b1")],
    None,
])
def test_reader_errors_are_decode_errors(mapping: Any) -> None:
    for cls in (Agent, Task):
        with pytest.raises(DecodeError):
            cls.from_hash(mapping)


def _inspected_hashes() -> list[Any]:
    return [
        pytest.param(r["reply"], id=f"methods.jsonl:{i}")
        for i, r in enumerate(_records("methods.jsonl"), 1)
        if r.get("inspect", [None])[0] == "HGETALL"
    ]


INSPECTED = _inspected_hashes()


def test_inspected_hash_count() -> None:
    assert len(INSPECTED) >= 1


@pytest.mark.parametrize("reply", INSPECTED)
def test_inspected_hash_reads_and_writes_back_the_same_pairs(
        reply: list[str], caplog: pytest.LogCaptureFixture) -> None:
    # An HGETALL taken after upstream's set_agent_state: our reader takes
    # every field, and our writer produces the very same HMSET pairs.
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        agent = Agent.from_hash(dict(zip(reply[::2], reply[1::2])))
    assert caplog.records == []
    assert agent.hash_fields()[1] == [x.encode() for x in reply]
