"""The data model: ids, timestamps, enums, messages, agents and tasks, and their error paths."""

from __future__ import annotations

import copy
import json.encoder
import logging
import os
import pickle
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinytown import _json
from tinytown.agent import Agent
from tinytown.enums import AgentState, AgentType, Priority, SpawnMode, TaskState
from tinytown.errors import DecodeError, EncodeError, InvalidArgumentError, TinytownError
from tinytown.ids import AgentId, MessageId, TaskId
from tinytown.message import ConfirmationType, Message, MessageType
from tinytown.task import Task
from tinytown.timestamp import Timestamp

U = "c4647159-c324-4985-9b81-0e766ec9d286"
U2 = "e6c3f339-1a2b-4f1f-b1fd-42a29755d4c1"
U3 = "64ac5db9-d707-407e-855c-384429e821a4"
SUPERVISOR = "00000000-0000-0000-0000-000000000001"


# -- ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AgentId, MessageId, TaskId])
@pytest.mark.parametrize(
    "value",
    [
        U,
        U.upper(),
        U.replace("-", ""),
        U.replace("-", "").upper(),
        "{" + U + "}",
        "urn:uuid:" + U,
        "urn:uuid:" + U.upper(),
        "{" + U.upper() + "}",
        uuid.UUID(U),
    ],
    ids=["canonical", "upper", "simple", "simple-upper", "braced", "urn", "urn-upper-hex", "braced-upper",
         "uuid.UUID"],
)
def test_id_accepts_uuid_spellings(cls: type, value: Any) -> None:
    got = cls(value)
    assert type(got) is cls
    assert got == U and str(got) == U
    assert hash(got) == hash(U)
    assert got.uuid == uuid.UUID(U)
    assert repr(got) == f"{cls.__name__}('{U}')"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        U[:-1],
        U + "0",
        U.replace("c", "g"),
        " " + U,
        U.replace("-", "_"),
        "{" + U,
        "{{" + U + "}}",
        "urn:uuid:{" + U + "}",
        # uuid's parse_str: the URN prefix is lowercase only, and braces and
        # the URN only wrap the hyphenated form.
        "URN:UUID:" + U,
        "urn:uuid:" + U.replace("-", ""),
        "{" + U.replace("-", "") + "}",
        "c4647159c3244985-9b81-0e766ec9d286",
        "٤" + U[1:],  # a non-ASCII digit
        12345,
        None,
        b"c4647159-c324-4985-9b81-0e766ec9d286",
        3.5,
        [U],
    ],
)
def test_id_rejects_junk(value: Any) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        AgentId(value)
    assert "AgentId" in str(info.value)
    assert repr(value)[:20] in str(info.value)


def test_id_fast_path_and_helpers() -> None:
    a = AgentId.new()
    assert AgentId(a) is a
    assert uuid.UUID(a).version == 4 and str(uuid.UUID(a)) == a
    ids = {AgentId.new() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert AgentId.supervisor() == SUPERVISOR and type(AgentId.supervisor()) is AgentId
    assert TaskId(AgentId(U)) == U and type(TaskId(AgentId(U))) is TaskId
    assert pickle.loads(pickle.dumps(a)) == a and type(pickle.loads(pickle.dumps(a))) is AgentId
    assert {AgentId(U): 1}[U] == 1  # hashes and compares as its text


# -- timestamps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "microsecond, nanosecond, text",
    [
        (0, 0, "2026-05-06T07:08:09Z"),
        (500_000, 0, "2026-05-06T07:08:09.500Z"),
        (123_000, 0, "2026-05-06T07:08:09.123Z"),
        (100_200, 0, "2026-05-06T07:08:09.100200Z"),
        (1, 0, "2026-05-06T07:08:09.000001Z"),
        (0, 1, "2026-05-06T07:08:09.000000001Z"),
        (123_456, 789, "2026-05-06T07:08:09.123456789Z"),
        (999_999, 999, "2026-05-06T07:08:09.999999999Z"),
        (0, 100, "2026-05-06T07:08:09.000000100Z"),
    ],
)
def test_timestamp_prints_fewest_exact_digits(microsecond: int, nanosecond: int, text: str) -> None:
    ts = Timestamp(2026, 5, 6, 7, 8, 9, microsecond, nanosecond=nanosecond)
    assert ts.rfc3339() == text
    assert str(ts) == text
    parsed = Timestamp.parse(text)
    assert parsed == ts and parsed.rfc3339() == text
    assert (parsed.microsecond, parsed.nanosecond) == (microsecond, nanosecond)
    assert eval(repr(ts)) == ts


def test_timestamp_equality_and_order_use_nanoseconds() -> None:
    a = Timestamp.parse("2026-01-01T00:00:00.123456789Z")
    b = Timestamp.parse("2026-01-01T00:00:00.123456788Z")
    assert a != b and not a == b
    assert b < a and a > b and b <= a and a >= b and not a < b
    assert hash(a) != hash(b) or a != b
    assert a == Timestamp.parse("2026-01-01T02:00:00.123456789+02:00")
    assert hash(a) == hash(Timestamp.parse("2026-01-01T02:00:00.123456789+02:00"))
    plain = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    assert a != plain and plain != a and plain < a and a > plain
    whole = Timestamp.from_datetime(plain)
    assert whole == plain and plain == whole and hash(whole) == hash(plain)
    assert sorted([a, b, whole]) == [whole, b, a]


def test_timestamp_conversions() -> None:
    naive = datetime(2026, 1, 1, 12, 0, 0, 5)
    ts = Timestamp.from_datetime(naive)
    assert ts.tzinfo is timezone.utc and ts.hour == 12 and ts.microsecond == 5
    aware = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert Timestamp.from_datetime(aware).rfc3339() == "2026-01-01T17:00:00Z"
    assert Timestamp(aware) == aware
    ns = Timestamp.parse("2026-01-01T00:00:00.000000007Z")
    assert ns.timestamp_ns() == 1767225600_000000007
    assert Timestamp.from_timestamp_ns(ns.timestamp_ns()) == ns
    later = ns + timedelta(seconds=1)
    assert type(later) is Timestamp and later.rfc3339() == "2026-01-01T00:00:01.000000007Z"
    assert (later - timedelta(seconds=1)) == ns
    assert ns.replace(hour=5).rfc3339() == "2026-01-01T05:00:00.000000007Z"
    assert pickle.loads(pickle.dumps(ns)) == ns and copy.deepcopy(ns) == ns
    with pytest.raises(InvalidArgumentError):
        Timestamp(2026, 1, 1, nanosecond=1000)
    with pytest.raises(InvalidArgumentError):
        Timestamp.from_datetime("2026-01-01")  # type: ignore[arg-type]


def test_timestamp_now_has_nanoseconds_and_round_trips() -> None:
    stamps = [Timestamp.now() for _ in range(200)]
    assert all(s.tzinfo is timezone.utc for s in stamps)
    assert any(s.nanosecond for s in stamps)  # the clock has sub-microsecond digits
    for s in stamps:
        assert Timestamp.parse(s.rfc3339()) == s
    assert stamps == sorted(stamps)
    assert abs(stamps[0].timestamp() - datetime.now(timezone.utc).timestamp()) < 5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-01-01",
        "2026-01-01T00:00:00",  # no offset
        "2026-01-01T00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:00:61Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00.12a4Z",
        "2026-01-01T00:00:00+2:00",
        "2026-01-01T00:00:00+24:00",
        "+10000-01-01T00:00:00Z",  # chrono writes years > 9999 so; nobody reads them
        "-0001-01-01T00:00:00Z",
        "9999-12-31T23:00:00-01:00",  # year 10000 in UTC
        "0000-01-01T00:00:00+00:01",  # year -1 in UTC
        "９０２６-01-01T00:00:00Z",
        "2026-01-01T00:00:00Zjunk",
        " 2026-01-01T00:00:00Z",
    ],
)
def test_timestamp_parse_rejects(text: str) -> None:
    with pytest.raises(DecodeError) as info:
        Timestamp.parse(text)
    assert info.value.raw == text.encode()
    assert repr(text) in str(info.value)


# -- enums ---------------------------------------------------------------------------


def test_enums_are_wire_strings() -> None:
    assert [p.value for p in Priority] == ["low", "normal", "high", "urgent"]
    assert [p.is_front for p in Priority] == [False, False, True, True]
    assert SpawnMode.FORKED_CONTEXT == "forkedcontext" and str(SpawnMode.FORKED_CONTEXT) == "forkedcontext"
    assert f"{AgentState.IDLE}" == "idle"
    assert [s.value for s in AgentState] == [
        "cold", "starting", "idle", "working", "paused", "draining", "stopped", "error"
    ]
    assert [s.value for s in TaskState] == ["pending", "assigned", "running", "completed", "failed", "cancelled"]
    assert TaskState("in_flight") is TaskState.RUNNING
    assert [t.value for t in AgentType] == ["supervisor", "worker"]
    assert TaskState.CANCELLED.is_terminal() and not TaskState.RUNNING.is_terminal()
    assert AgentState.IDLE.can_accept_work() and not AgentState.WORKING.can_accept_work()


# -- MessageType -----------------------------------------------------------------------

ALL_VARIANTS: list[tuple[MessageType, bool, str]] = [
    (MessageType.Task("do it"), True, "task"),
    (MessageType.Query("why?"), True, "query"),
    (MessageType.Informational("fyi"), False, "informational"),
    (MessageType.Confirmation(ConfirmationType.Received()), False, "confirmation"),
    (MessageType.Confirmation(ConfirmationType.Rejected("no")), False, "confirmation"),
    (MessageType.TaskAssign(task_id=U), True, "task_assign"),
    (MessageType.TaskDone(U, "ok"), False, "task_done"),
    (MessageType.TaskFailed(U, "boom"), False, "task_failed"),
    (MessageType.StatusRequest(), True, "status_request"),
    (MessageType.StatusResponse("idle", None), False, "status_response"),
    (MessageType.Ping(), True, "ping"),
    (MessageType.Pong(), False, "pong"),
    (MessageType.Shutdown(), True, "shutdown"),
    (MessageType.Custom("k", "{}"), True, "custom"),
]


@pytest.mark.parametrize("variant, actionable, tag", ALL_VARIANTS,
                         ids=[v[2] + str(i) for i, v in enumerate(ALL_VARIANTS)])
def test_is_actionable_and_tag(variant: MessageType, actionable: bool, tag: str) -> None:
    assert isinstance(variant, MessageType)
    assert variant.is_actionable() is actionable
    assert variant.is_informational_or_confirmation() is (not actionable)
    assert variant.tag == tag
    msg = Message.new(AgentId.new(), AgentId.new(), variant)
    assert msg.is_actionable() is actionable
    assert orjson.loads(msg.to_json())["type"] == tag
    assert Message.from_json(msg.to_json()).msg_type == variant


def _describe(mt: MessageType) -> str:
    match mt:
        case MessageType.Task(description=d):
            return f"task:{d}"
        case MessageType.Query(question):
            return f"query:{question}"
        case MessageType.Informational(summary=s):
            return f"info:{s}"
        case MessageType.Confirmation(ack_type=ConfirmationType.Rejected(reason=r)):
            return f"rejected:{r}"
        case MessageType.Confirmation(ack_type=ConfirmationType.Received()):
            return "received"
        case MessageType.Confirmation():
            return "other-confirmation"
        case MessageType.TaskAssign(task_id=t):
            return f"assign:{t}"
        case MessageType.TaskDone(task_id=t, result=r):
            return f"done:{t}:{r}"
        case MessageType.TaskFailed(task_id=t, error=e):
            return f"failed:{t}:{e}"
        case MessageType.StatusRequest():
            return "status?"
        case MessageType.StatusResponse(state=s, current_task=None):
            return f"status:{s}"
        case MessageType.StatusResponse(state=s, current_task=c):
            return f"status:{s}:{c}"
        case MessageType.Ping():
            return "ping"
        case MessageType.Pong():
            return "pong"
        case MessageType.Shutdown():
            return "shutdown"
        case MessageType.Custom(kind=k, payload=p):
            return f"custom:{k}:{p}"
    return "unmatched"


def test_match_on_message_type() -> None:
    got = [_describe(v) for v, _, _ in ALL_VARIANTS]
    assert got == [
        "task:do it", "query:why?", "info:fyi", "received", "rejected:no", f"assign:{U}",
        f"done:{U}:ok", f"failed:{U}:boom", "status?", "status:idle", "ping", "pong", "shutdown",
        "custom:k:{}",
    ]
    assert _describe(MessageType.StatusResponse("working", "t1")) == "status:working:t1"
    assert _describe(MessageType.Confirmation(ConfirmationType.Thanks())) == "other-confirmation"


def test_variants_are_frozen_and_validated() -> None:
    v = MessageType.Task("x")
    with pytest.raises(AttributeError):
        v.description = "y"  # type: ignore[misc]
    assert MessageType.Task("x") == v and hash(MessageType.Task("x")) == hash(v)
    assert MessageType.Task("x") != MessageType.Query("x")
    assert repr(v) == "MessageType.Task(description='x')"
    assert repr(ConfirmationType.Rejected("r")) == "ConfirmationType.Rejected(reason='r')"
    for bad in (lambda: MessageType.Task(5), lambda: MessageType.TaskDone("t", None),
                lambda: MessageType.Confirmation("received"), lambda: ConfirmationType.Rejected(b"x"),
                lambda: MessageType.StatusResponse("idle", 3)):
        with pytest.raises(InvalidArgumentError):
            bad()


# -- Message -----------------------------------------------------------------------------


def test_message_new() -> None:
    a, b = AgentId.new(), AgentId.new()
    msg = Message.new(a, str(b).upper(), MessageType.Ping())
    assert msg.from_ is a and msg.to == b and type(msg.to) is AgentId
    assert type(msg.id) is MessageId and msg.priority is Priority.NORMAL
    assert msg.correlation_id is None and isinstance(msg.created_at, Timestamp)
    assert Message.new(uuid.UUID(a), b, MessageType.Ping()).from_ == a
    with pytest.raises(InvalidArgumentError):
        Message.new("nope", b, MessageType.Ping())
    with pytest.raises(InvalidArgumentError):
        Message.new(a, b, "ping")  # type: ignore[arg-type]


def test_with_priority_and_with_correlation_do_not_mutate() -> None:
    msg = Message.new(AgentId.new(), AgentId.new(), MessageType.Task("t"))
    before = msg.to_json()
    urgent = msg.with_priority(Priority.URGENT)
    assert urgent is not msg and urgent.priority is Priority.URGENT
    assert msg.priority is Priority.NORMAL and msg.to_json() == before
    assert urgent.id == msg.id and urgent.created_at == msg.created_at
    assert msg.with_priority("high").priority is Priority.HIGH
    corr = MessageId.new()
    reply = msg.with_correlation(corr)
    assert reply.correlation_id == corr and msg.correlation_id is None
    assert msg.with_correlation(str(corr).upper()).correlation_id == corr
    assert msg.to_json() == before
    with pytest.raises(InvalidArgumentError):
        msg.with_priority("mega")
    with pytest.raises(InvalidArgumentError):
        msg.with_correlation("x")
    with pytest.raises(AttributeError):
        msg.priority = Priority.LOW  # type: ignore[misc]


def test_message_constructor_and_object_protocol() -> None:
    ts = Timestamp.parse("2026-01-01T00:00:00.000000001Z")
    msg = Message(U, SUPERVISOR, U2, MessageType.Query("q"), "high", ts, U3)
    assert msg == Message.from_json(msg.to_json())
    assert msg.to_json() == (
        b'{"id":"' + U.encode() + b'","from":"' + SUPERVISOR.encode() + b'","to":"' + U2.encode()
        + b'","type":"query","question":"q","priority":"high",'
        b'"created_at":"2026-01-01T00:00:00.000000001Z","correlation_id":"' + U3.encode() + b'"}'
    )
    other = Message(U, SUPERVISOR, U2, MessageType.Query("q"), Priority.HIGH,
                    Timestamp.parse("2026-01-01T00:00:00.000000002Z"), U3)
    assert msg != other  # differs only in the nanoseconds
    assert hash(msg) == hash(Message.from_json(msg.to_json()))
    assert pickle.loads(pickle.dumps(msg)) == msg
    assert eval(repr(msg)) == msg
    dt = Message(U, SUPERVISOR, U2, MessageType.Ping(), created_at=datetime(2026, 1, 1))
    assert dt.created_at.rfc3339() == "2026-01-01T00:00:00Z"
    with pytest.raises(InvalidArgumentError):
        Message(U, SUPERVISOR, U2, MessageType.Ping(), created_at="yesterday")


def test_control_characters_escaped_like_serde_json() -> None:
    text = "".join(chr(c) for c in range(0x20)) + '"\\/\x7fé\u2028\U0001f680'
    expected = (
        '"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r'
        "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019"
        '\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\\"\\\\/\x7fé\u2028\U0001f680"'
    )
    assert _json.encode_str(text) == expected
    msg = Message(U, SUPERVISOR, U2, MessageType.Task(text), created_at=Timestamp(2026, 1, 1))
    assert ('"description":' + expected + ",").encode("utf-8") in msg.to_json()
    assert Message.from_json(msg.to_json()).msg_type.description == text  # type: ignore[attr-defined]


def test_both_string_encoders_escape_every_code_point_alike() -> None:
    """encode_str picks orjson for long ASCII text and the stdlib's C encoder
    otherwise: both must write exactly what serde_json writes, for every
    character, alone and inside long ASCII text (orjson's SIMD path)."""
    c_encoder = json.encoder.c_encode_basestring  # type: ignore[attr-defined]
    assert c_encoder is not None
    pad = "x" * 64
    for cp in [*range(0xD800), *range(0xE000, 0x110000)]:
        ch = chr(cp)
        assert orjson.dumps(ch).decode() == c_encoder(ch), hex(cp)
    for cp in range(0x80):  # long ASCII strings take the orjson branch
        text = pad + chr(cp) + pad
        assert _json.encode_str(text) == c_encoder(text), hex(cp)
    long_text = "Review the pull request #1234 and report what breaks. " * 8
    assert _json.encode_str(long_text) == c_encoder(long_text) == json.dumps(long_text)


_TEXTS = ["", "x", 'q"uote\\back\x00\x1f\x7f', "caf\u00e9 \u2028 \U0001f600", "long " * 40,
          "Review the pull request #1234 and report what breaks. " * 8]


@pytest.mark.parametrize("text", _TEXTS, ids=range(len(_TEXTS)))
def test_message_bytes_encoder_matches_the_text_encoder(text: str) -> None:
    # to_json builds bytes (variants' _body_json, encode_str_bytes): it must
    # write exactly the JSON text of _body() and encode_str, for every variant.
    assert _json.encode_str_bytes(text) == _json.encode_str(text).encode()
    variants = [v for v, _, _ in ALL_VARIANTS] + [
        MessageType.Task(text), MessageType.Query(text), MessageType.Informational(text),
        MessageType.TaskAssign(text), MessageType.TaskDone(text, text), MessageType.TaskFailed(text, text),
        MessageType.StatusResponse(text, text), MessageType.Custom(text, text),
        MessageType.Confirmation(ConfirmationType.Rejected(text))]
    for variant in variants:
        assert variant._body_json() == variant._body().encode()
        for corr in (None, MessageId.new()):
            m = Message.new(AgentId.new(), AgentId.new(), variant).with_correlation(corr) \
                if corr is not None else Message.new(AgentId.new(), AgentId.new(), variant)
            expected = (f'{{"id":"{m.id}","from":"{m.from_}","to":"{m.to}",{variant._body()},'
                        f'"priority":"{m.priority.value}","created_at":"{m.created_at.rfc3339()}",'
                        f'"correlation_id":{"null" if corr is None else chr(34) + corr + chr(34)}}}')
            assert m.to_json() == expected.encode()
            assert Message.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    "variant",
    [MessageType.Query("\ud800"), MessageType.Informational("x" * 50 + "\udfff"),
     MessageType.TaskAssign("\ud800"), MessageType.TaskDone("t", "\ud800"), MessageType.TaskFailed("\ud800", "e"),
     MessageType.StatusResponse("s", "\ud800"), MessageType.Custom("k", "\ud800")],
    ids=["query", "informational", "task_assign", "task_done", "task_failed", "status_response", "custom"])
def test_lone_surrogate_in_any_variant_cannot_be_encoded(variant: MessageType) -> None:
    with pytest.raises(EncodeError, match="lone surrogate"):
        Message.new(AgentId.new(), AgentId.new(), variant).to_json()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Message.new(AgentId.new(), AgentId.new(), MessageType.Task("bad \ud800")),
        lambda: Message.new(AgentId.new(), AgentId.new(),
                            MessageType.Confirmation(ConfirmationType.Rejected("\udfff"))),
        lambda: Agent.new("name\ud83d", "cli"),
        lambda: Task.new("ok", tags=["\ud800"]),
    ],
    ids=["message", "ack-reason", "agent", "task-tags"],
)
def test_lone_surrogates_cannot_be_encoded(make: Any) -> None:
    obj = make()
    with pytest.raises(EncodeError):
        obj.to_json()
    if not isinstance(obj, Message):
        with pytest.raises(EncodeError):
            obj.to_hash()


@pytest.mark.parametrize("value", [-1, 2**64, True, 1.0, "5", None])
def test_u64_out_of_range_cannot_be_encoded(value: Any) -> None:
    agent = Agent.from_json(AGENT_SAMPLE)
    agent.tasks_completed = value
    with pytest.raises(EncodeError) as info:
        agent.to_json()
    assert "tasks_completed" in str(info.value)
    with pytest.raises(InvalidArgumentError):
        Agent(**{**_agent_kwargs(agent), "tasks_completed": value})


def _agent_kwargs(agent: Agent) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(agent, f.name) for f in fields(agent)}


def test_u64_limits_are_accepted() -> None:
    obj = orjson.loads(AGENT_SAMPLE)
    obj["tasks_completed"] = 2**64 - 1
    obj["rounds_completed"] = 0
    raw = orjson.dumps(obj)
    agent = Agent.from_json(raw)
    assert agent.tasks_completed == 2**64 - 1
    assert agent.to_json() == raw


# -- bad input: every path raises DecodeError naming the field, with .raw ------------

MSG: dict[str, Any] = {
    "id": U, "from": SUPERVISOR, "to": U2, "type": "task", "description": "d",
    "priority": "high", "created_at": "2026-01-01T20:34:00Z", "correlation_id": None,
}
AGENT_SAMPLE = (
    '{"id":"4406d47f-ae6a-489a-8bb3-835bfa85459d","name":"worker-1","nickname":null,"role_id":"worker",'
    '"parent_agent_id":null,"spawn_mode":"fresh","agent_type":"supervisor","state":"idle","cli":"auggie",'
    '"current_task":"9721c6e5-0597-4bc1-ae9d-7077dca1284f","created_at":"2026-08-23T09:14:57.100200Z",'
    '"last_heartbeat":"2026-10-16T07:27:28.123Z","tasks_completed":806060565721,"rounds_completed":557,'
    '"last_active_at":"2026-08-24T02:52:53.123Z"}'
)
AGENT: dict[str, Any] = orjson.loads(AGENT_SAMPLE)
TASK: dict[str, Any] = {
    "id": U, "description": "d", "state": "pending", "assigned_to": None,
    "created_at": "2026-01-01T20:34:00Z", "updated_at": "2026-01-01T20:34:00Z", "started_at": None,
    "completed_at": None, "result": None, "parent_id": None, "tags": ["a"],
}
_DROP = object()


def _variant(base: dict[str, Any], **changes: Any) -> bytes:
    obj = dict(base)
    for key, value in changes.items():
        key = key.rstrip("_")
        if value is _DROP:
            obj.pop(key, None)
        else:
            obj[key] = value
    return orjson.dumps(obj)


def _msg(**changes: Any) -> bytes:
    return _variant(MSG, **changes)


def _ack(ack: Any) -> bytes:
    return _msg(type="confirmation", description=_DROP, ack_type=ack)


BAD_MESSAGES: list[tuple[str, Any, str | None]] = [
    ("not-json", b"{", None),
    ("empty", b"", None),
    ("trailing", _msg() + b"x", None),
    ("array", b"[1, 2]", "object"),
    ("string", b'"hello"', "object"),
    ("null", b"null", "object"),
    ("invalid-utf8", b'{"id":"\xff"}', None),
    ("lone-surrogate-escape", _msg().replace(b'"d"', b'"\\ud800"'), None),
    ("missing-id", _msg(id=_DROP), "id"),
    ("missing-from", _msg(from_=_DROP), "from"),
    ("missing-to", _msg(to=_DROP), "to"),
    ("missing-type", _msg(type=_DROP), "type"),
    ("missing-created_at", _msg(created_at=_DROP), "created_at"),
    ("id-int", _msg(id=5), "id"),
    ("id-bad-uuid", _msg(id="1234"), "id"),
    ("from-null", _msg(from_=None), "from"),
    ("to-bool", _msg(to=True), "to"),
    ("to-object", _msg(to={"a": 1}), "to"),
    ("type-unknown", _msg(type="mega"), "type"),
    ("type-int", _msg(type=3), "type"),
    ("type-list", _msg(type=["task"]), "type"),
    ("type-wrong-case", _msg(type="Task"), "type"),
    ("task-no-description", _msg(description=_DROP), "description"),
    ("task-description-int", _msg(description=1), "description"),
    ("task-description-null", _msg(description=None), "description"),
    ("query-no-question", _msg(type="query"), "question"),
    ("info-summary-list", _msg(type="informational", summary=["x"]), "summary"),
    ("confirmation-no-ack", _msg(type="confirmation"), "ack_type"),
    ("ack-string", _ack("received"), "ack_type"),
    ("ack-no-type", _ack({}), "ack_type.type"),
    ("ack-unknown", _ack({"type": "maybe"}), "ack_type.type"),
    ("ack-type-int", _ack({"type": 1}), "ack_type.type"),
    ("ack-rejected-no-reason", _ack({"type": "rejected"}), "ack_type.reason"),
    ("ack-rejected-reason-int", _ack({"type": "rejected", "reason": 2}), "ack_type.reason"),
    ("task_assign-id-int", _msg(type="task_assign", task_id=7), "task_id"),
    ("task_done-no-result", _msg(type="task_done", task_id="t"), "result"),
    ("task_failed-no-error", _msg(type="task_failed", task_id="t"), "error"),
    ("task_failed-no-task_id", _msg(type="task_failed", error="e"), "task_id"),
    ("status_response-no-state", _msg(type="status_response"), "state"),
    ("status_response-current_task-int", _msg(type="status_response", state="s", current_task=1), "current_task"),
    ("custom-no-payload", _msg(type="custom", kind="k"), "payload"),
    ("custom-kind-float", _msg(type="custom", kind=1.5, payload="p"), "kind"),
    ("priority-unknown", _msg(priority="mega"), "priority"),
    ("priority-upper", _msg(priority="HIGH"), "priority"),
    ("priority-null", _msg(priority=None), "priority"),
    ("priority-int", _msg(priority=2), "priority"),
    ("created_at-bad", _msg(created_at="yesterday"), "created_at"),
    ("created_at-no-offset", _msg(created_at="2026-01-01T20:34:00"), "created_at"),
    ("created_at-int", _msg(created_at=1767299640), "created_at"),
    ("created_at-null", _msg(created_at=None), "created_at"),
    ("created_at-month-13", _msg(created_at="2026-13-01T20:34:00Z"), "created_at"),
    ("correlation_id-bad", _msg(correlation_id="nope"), "correlation_id"),
    ("correlation_id-int", _msg(correlation_id=1), "correlation_id"),
]

BAD_AGENTS: list[tuple[str, Any, str | None]] = [
    ("missing-name", _variant(AGENT, name=_DROP), "name"),
    ("missing-cli", _variant(AGENT, cli=_DROP), "cli"),
    ("missing-agent_type", _variant(AGENT, agent_type=_DROP), "agent_type"),
    ("missing-state", _variant(AGENT, state=_DROP), "state"),
    ("missing-created_at", _variant(AGENT, created_at=_DROP), "created_at"),
    ("missing-last_heartbeat", _variant(AGENT, last_heartbeat=_DROP), "last_heartbeat"),
    ("missing-tasks_completed", _variant(AGENT, tasks_completed=_DROP), "tasks_completed"),
    ("missing-id", _variant(AGENT, id=_DROP), "id"),
    ("name-int", _variant(AGENT, name=1), "name"),
    ("nickname-int", _variant(AGENT, nickname=1), "nickname"),
    ("role_id-list", _variant(AGENT, role_id=[]), "role_id"),
    ("parent-bad", _variant(AGENT, parent_agent_id="x"), "parent_agent_id"),
    ("current_task-bad", _variant(AGENT, current_task="zz"), "current_task"),
    ("spawn_mode-upper", _variant(AGENT, spawn_mode="Fresh"), "spawn_mode"),
    ("spawn_mode-null", _variant(AGENT, spawn_mode=None), "spawn_mode"),
    ("spawn_mode-snake", _variant(AGENT, spawn_mode="forked_context"), "spawn_mode"),
    ("agent_type-unknown", _variant(AGENT, agent_type="boss"), "agent_type"),
    ("state-unknown", _variant(AGENT, state="zombie"), "state"),
    ("tasks_completed-bool", _variant(AGENT, tasks_completed=True), "tasks_completed"),
    ("tasks_completed-float", _variant(AGENT, tasks_completed=5.0), "tasks_completed"),
    ("tasks_completed-negative", _variant(AGENT, tasks_completed=-1), "tasks_completed"),
    ("tasks_completed-2**64", AGENT_SAMPLE.replace("806060565721", str(2**64)).encode(), "tasks_completed"),
    ("tasks_completed-huge", AGENT_SAMPLE.replace("806060565721", "9" * 30).encode(), "tasks_completed"),
    ("tasks_completed-string", _variant(AGENT, tasks_completed="5"), "tasks_completed"),
    ("rounds_completed-null", _variant(AGENT, rounds_completed=None), "rounds_completed"),
    ("last_active_at-null", _variant(AGENT, last_active_at=None), "last_active_at"),
    ("last_heartbeat-bad", _variant(AGENT, last_heartbeat="2026-01-01"), "last_heartbeat"),
    ("not-object", b"[]", "object"),
]

BAD_TASKS: list[tuple[str, Any, str | None]] = [
    ("missing-id", _variant(TASK, id=_DROP), "id"),
    ("missing-description", _variant(TASK, description=_DROP), "description"),
    ("missing-state", _variant(TASK, state=_DROP), "state"),
    ("missing-updated_at", _variant(TASK, updated_at=_DROP), "updated_at"),
    ("state-hyphen", _variant(TASK, state="in-flight"), "state"),
    ("state-upper", _variant(TASK, state="Pending"), "state"),
    ("description-int", _variant(TASK, description=3), "description"),
    ("assigned_to-bad", _variant(TASK, assigned_to="x"), "assigned_to"),
    ("parent_id-int", _variant(TASK, parent_id=1), "parent_id"),
    ("started_at-bad", _variant(TASK, started_at="yesterday"), "started_at"),
    ("completed_at-int", _variant(TASK, completed_at=0), "completed_at"),
    ("result-int", _variant(TASK, result=5), "result"),
    ("tags-string", _variant(TASK, tags="a"), "tags"),
    ("tags-null", _variant(TASK, tags=None), "tags"),
    ("tags-int-item", _variant(TASK, tags=["a", 1]), "tags[1]"),
    ("not-object", b"1", "object"),
]


def _check_decode_error(cls: type, data: Any, field: str | None) -> None:
    with pytest.raises(DecodeError) as info:
        cls.from_json(data)
    err = info.value
    assert isinstance(err, TinytownError)
    message = str(err)
    assert cls.__name__ in message
    if field is not None:
        assert field in message, message
        if field != "object":
            assert f"'{field}'" in message, message
    expected_raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    assert err.raw == expected_raw


@pytest.mark.parametrize("name, data, field", BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES])
def test_message_from_json_rejects(name: str, data: Any, field: str | None) -> None:
    _check_decode_error(Message, data, field)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return
        _check_decode_error(Message, text, field)


@pytest.mark.parametrize("name, data, field", BAD_AGENTS, ids=[c[0] for c in BAD_AGENTS])
def test_agent_from_json_rejects(name: str, data: Any, field: str | None) -> None:
    _check_decode_error(Agent, data, field)


@pytest.mark.parametrize("name, data, field", BAD_TASKS, ids=[c[0] for c in BAD_TASKS])
def test_task_from_json_rejects(name: str, data: Any, field: str | None) -> None:
    _check_decode_error(Task, data, field)


def test_good_bases_of_the_bad_tables_decode() -> None:
    # Each bad case differs from these in one place only.
    assert Message.from_json(_msg()).msg_type == MessageType.Task("d")
    assert Agent.from_json(AGENT_SAMPLE).to_json() == AGENT_SAMPLE.encode()
    assert Task.from_json(_variant(TASK)).tags == ["a"]


@pytest.mark.parametrize("cls", [Message, Agent, Task])
@pytest.mark.parametrize("data", [None, 5, ["{}"], {"id": U}])
def test_from_json_wrong_input_type(cls: type, data: Any) -> None:
    with pytest.raises(DecodeError) as info:
        cls.from_json(data)
    assert "bytes or str" in str(info.value)
    assert info.value.raw is None


def test_from_json_accepts_bytearray_and_memoryview() -> None:
    raw = _msg()
    assert Message.from_json(bytearray(raw)) == Message.from_json(raw)
    assert Message.from_json(memoryview(raw)) == Message.from_json(raw)


AGENT_HASH = Agent.from_json(AGENT_SAMPLE).to_hash()
TASK_HASH = Task.from_json(_variant(TASK, started_at="2026-01-01T20:35:00Z")).to_hash()


def _hash(base: dict[bytes, bytes], **changes: Any) -> dict[bytes, bytes]:
    out = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            del out[key.encode()]
        else:
            out[key.encode()] = value
    return out


# Tinytown's hash reader (spec section 7) fails only on the id; other bad
# values take upstream's defaults, and a present value replaced that way is
# logged as a warning (absent fields are not).
BAD_HASHES: list[tuple[str, type, Any, bytes | None]] = [
    ("agent-id-empty", Agent, _hash(AGENT_HASH, id=b""), b""),
    ("agent-id-missing", Agent, _hash(AGENT_HASH, id=_DROP), None),
    ("agent-id-junk", Agent, _hash(AGENT_HASH, id=b"worker-1"), b"worker-1"),
    ("task-id-braced-simple", Task, _hash(TASK_HASH, id=b"{" + U.replace("-", "").encode() + b"}"),
     b"{" + U.replace("-", "").encode() + b"}"),
    ("agent-not-utf8", Agent, _hash(AGENT_HASH, name=b"\xff\xfe"), b"\xff\xfe"),
    ("task-not-utf8", Task, _hash(TASK_HASH, description=b"\xff\xfe"), b"\xff\xfe"),
]


@pytest.mark.parametrize("name, cls, mapping, raw", BAD_HASHES, ids=[c[0] for c in BAD_HASHES])
def test_from_hash_rejects(name: str, cls: type, mapping: Any, raw: bytes | None) -> None:
    with pytest.raises(DecodeError) as info:
        cls.from_hash(mapping)
    assert cls.__name__ in str(info.value)
    assert info.value.raw == raw


_NOW: Any = object()
DEFAULTED_HASHES: list[tuple[str, type, Any, str, Any, bool]] = [
    # name, class, hash, attribute, value read, warned
    ("agent-missing-name", Agent, _hash(AGENT_HASH, name=_DROP), "name", "", False),
    ("agent-missing-tasks_completed", Agent, _hash(AGENT_HASH, tasks_completed=_DROP), "tasks_completed", 0, False),
    ("agent-count-text", Agent, _hash(AGENT_HASH, tasks_completed=b"lots"), "tasks_completed", 0, True),
    ("agent-count-negative", Agent, _hash(AGENT_HASH, rounds_completed=b"-1"), "rounds_completed", 0, True),
    ("agent-count-2**64", Agent, _hash(AGENT_HASH, tasks_completed=str(2**64).encode()), "tasks_completed", 0, True),
    ("agent-count-float", Agent, _hash(AGENT_HASH, tasks_completed=b"1.0"), "tasks_completed", 0, True),
    ("agent-count-plus", Agent, _hash(AGENT_HASH, tasks_completed=b"+0012"), "tasks_completed", 12, False),
    ("agent-state-quoted", Agent, _hash(AGENT_HASH, state=b'"idle"'), "state", AgentState.STARTING, True),
    ("agent-state-escaped", Agent, _hash(AGENT_HASH, state=b"p\\u0061used"), "state", AgentState.PAUSED, False),
    ("agent-time", Agent, _hash(AGENT_HASH, created_at=b"now"), "created_at", _NOW, True),
    ("agent-parent-empty", Agent, _hash(AGENT_HASH, parent_agent_id=b""), "parent_agent_id", None, True),
    ("agent-nickname-empty", Agent, _hash(AGENT_HASH, nickname=b""), "nickname", "", False),
    ("task-tags-not-json", Task, _hash(TASK_HASH, tags=b"a,b"), "tags", [], True),
    ("task-tags-ints", Task, _hash(TASK_HASH, tags=b"[1]"), "tags", [], True),
    ("task-tags-object", Task, _hash(TASK_HASH, tags=b"{}"), "tags", [], True),
    ("task-state", Task, _hash(TASK_HASH, state=b"done"), "state", TaskState.PENDING, True),
    ("task-missing-created_at", Task, _hash(TASK_HASH, created_at=_DROP), "created_at", _NOW, False),
    ("task-started_at", Task, _hash(TASK_HASH, started_at=b"2026"), "started_at", None, True),
]


@pytest.mark.parametrize("name, cls, mapping, attr, value, warned", DEFAULTED_HASHES,
                         ids=[c[0] for c in DEFAULTED_HASHES])
def test_from_hash_defaults_like_upstream(name: str, cls: type, mapping: Any, attr: str, value: Any,
                                          warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    before = Timestamp.now()
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        got = getattr(cls.from_hash(mapping), attr)
    if value is _NOW:
        assert before <= got <= Timestamp.now()
    else:
        assert got == value and type(got) is type(value)
    records = [r for r in caplog.records if r.name == "tinytown"]
    if warned:
        assert len(records) == 1 and attr in records[0].getMessage(), records
    else:
        assert records == []


def test_from_hash_rejects_non_mappings() -> None:
    for cls in (Agent, Task):
        with pytest.raises(DecodeError):
            cls.from_hash([(b"id", b"x")])
        with pytest.raises(DecodeError):
            cls.from_hash({1: b"x"})


# -- Agent and Task ---------------------------------------------------------------------


def test_agent_new() -> None:
    agent = Agent.new("worker-1", "claude")
    assert type(agent.id) is AgentId and agent.name == "worker-1" and agent.cli == "claude"
    assert agent.agent_type is AgentType.WORKER and agent.state is AgentState.STARTING
    assert agent.spawn_mode is SpawnMode.FRESH
    assert agent.tasks_completed == 0 and agent.rounds_completed == 0
    assert agent.nickname is None and agent.role_id is None
    assert agent.parent_agent_id is None and agent.current_task is None
    assert agent.created_at == agent.last_heartbeat == agent.last_active_at
    assert Agent.new("s", "c", "supervisor").agent_type is AgentType.SUPERVISOR
    assert Agent.from_json(agent.to_json()) == agent
    with pytest.raises(InvalidArgumentError):
        Agent.new("s", "c", "boss")
    with pytest.raises(InvalidArgumentError):
        Agent.new(None, "c")  # type: ignore[arg-type]


def test_agent_constructor_converts() -> None:
    agent = Agent(id=uuid.UUID(U), name="n", cli="c", state="idle", spawn_mode="resumed",
                  current_task=U2.upper(), created_at=datetime(2026, 1, 1))
    assert type(agent.id) is AgentId and agent.state is AgentState.IDLE
    assert agent.spawn_mode is SpawnMode.RESUMED and type(agent.current_task) is TaskId
    assert agent.created_at.rfc3339() == "2026-01-01T00:00:00Z"
    with pytest.raises(InvalidArgumentError):
        Agent(id=U, name="n", cli="c", parent_agent_id="nope")


def test_task_lifecycle() -> None:
    task = Task.new("build it", tags=("ci", "rust"))
    assert task.state is TaskState.PENDING and task.tags == ["ci", "rust"]
    assert task.created_at == task.updated_at and task.started_at is None
    old = Timestamp(2020, 1, 1)

    agent = AgentId.new()
    task.updated_at = old
    task.assign(str(agent))
    assert task.state is TaskState.ASSIGNED and task.assigned_to == agent
    assert type(task.assigned_to) is AgentId and task.updated_at > old

    task.updated_at = old
    task.start()
    assert task.state is TaskState.RUNNING and task.started_at is not None and task.updated_at > old

    task.updated_at = old
    task.complete("all green")
    assert task.state is TaskState.COMPLETED and task.result == "all green"
    assert task.completed_at is not None and task.updated_at > old

    failed = Task.new("x")
    failed.fail("timeout")
    assert failed.state is TaskState.FAILED and failed.result == "timeout" and failed.completed_at

    cancelled = Task.new("y")
    cancelled.updated_at = old
    cancelled.cancel()
    assert cancelled.state is TaskState.CANCELLED and cancelled.updated_at > old

    for t in (task, failed, cancelled):
        assert Task.from_json(t.to_json()) == t
        assert Task.from_hash(t.to_hash()) == t
    with pytest.raises(InvalidArgumentError):
        task.assign("nobody")
    with pytest.raises(InvalidArgumentError):
        task.complete(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        Task.new("z", tags=[1])  # type: ignore[list-item]


def test_mutated_fields_are_checked_on_encode() -> None:
    task = Task.new("x")
    task.state = "running"  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        task.to_json()
    task = Task.new("x")
    task.created_at = datetime(2026, 1, 1)  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        task.to_json()
    agent = Agent.new("a", "b")
    agent.name = 5  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        agent.to_json()
    agent = Agent.new("a", "b")
    agent.current_task = "nope"  # type: ignore[assignment]
    with pytest.raises(EncodeError):
        agent.to_json()


# -- property tests -------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_ids = st.uuids()
_timestamps = st.builds(
    lambda dt, ns: Timestamp.from_datetime(dt).replace(nanosecond=ns),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 999),
)
_acks = st.one_of(
    st.builds(ConfirmationType.Received),
    st.builds(ConfirmationType.Acknowledged),
    st.builds(ConfirmationType.Thanks),
    st.builds(ConfirmationType.Approved),
    st.builds(ConfirmationType.Rejected, _text),
)
_msg_types = st.one_of(
    st.builds(MessageType.Task, _text),
    st.builds(MessageType.Query, _text),
    st.builds(MessageType.Informational, _text),
    st.builds(MessageType.Confirmation, _acks),
    st.builds(MessageType.TaskAssign, _text),
    st.builds(MessageType.TaskDone, _text, _text),
    st.builds(MessageType.TaskFailed, _text, _text),
    st.builds(MessageType.StatusRequest),
    st.builds(MessageType.StatusResponse, _text, st.none() | _text),
    st.builds(MessageType.Ping),
    st.builds(MessageType.Pong),
    st.builds(MessageType.Shutdown),
    st.builds(MessageType.Custom, _text, _text),
)
_messages = st.builds(
    Message,
    _ids, _ids, _ids, _msg_types, st.sampled_from(Priority), _timestamps, st.none() | _ids,
)


@settings(max_examples=400, deadline=None)
@given(_messages)
def test_random_messages_round_trip(msg: Message) -> None:
    raw = msg.to_json()
    back = Message.from_json(raw)
    assert back == msg
    assert back.to_json() == raw
    # serde_json would print the same: compare against a reference JSON encoder.
    assert orjson.loads(raw)["created_at"] == msg.created_at.rfc3339()
    assert json.loads(raw.decode("utf-8")) == orjson.loads(raw)


@settings(max_examples=200, deadline=None)
@given(st.builds(
    Task,
    id=_ids, description=_text, state=st.sampled_from(TaskState), assigned_to=st.none() | _ids,
    created_at=_timestamps, updated_at=_timestamps, started_at=st.none() | _timestamps,
    completed_at=st.none() | _timestamps, result=st.none() | _text, parent_id=st.none() | _ids,
    tags=st.lists(_text, max_size=4),
))
def test_random_tasks_round_trip(task: Task) -> None:
    raw = task.to_json()
    assert Task.from_json(raw) == task
    assert Task.from_json(raw).to_json() == raw
    assert Task.from_hash(task.to_hash()) == task


def _only_decode_errors(cls: type, data: Any) -> None:
    try:
        cls.from_json(data)
    except DecodeError as exc:
        assert exc.raw is not None
    # Anything else propagates and fails the test.


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for cls in (Message, Agent, Task):
        _only_decode_errors(cls, data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | _text | st.sampled_from([U, "2026-01-01T00:00:00Z", "task", "rejected", "high", "idle", "in_flight"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_KEYS = sorted({*MSG, *AGENT, *TASK, "ack_type", "reason", "question", "summary", "task_id", "result",
                "error", "state", "current_task", "kind", "payload"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([MSG, AGENT, TASK]),
    st.dictionaries(st.sampled_from(_KEYS), _json_values, max_size=4),
    st.lists(st.sampled_from(_KEYS), max_size=2),
)
def test_corrupted_documents_raise_only_decode_error(base: dict[str, Any], changes: dict[str, Any],
                                                     drops: list[str]) -> None:
    obj = {**base, **changes}
    for key in drops:
        obj.pop(key, None)
    data = orjson.dumps(obj)
    for cls in (Message, Agent, Task):
        _only_decode_errors(cls, data)
    hash_form = {k: (v if isinstance(v, str) else orjson.dumps(v).decode()) for k, v in obj.items()}
    for cls in (Agent, Task):
        try:
            cls.from_hash(hash_form)
        except DecodeError:
            pass


WIRE_DIR = Path(os.environ.get("TINYTOWN_WIRE_DIR", Path(__file__).parent / "data" / "wire"))
MESSAGE_LINES, AGENT_LINES, TASK_LINES = (
    [line for line in (WIRE_DIR / name).read_text(encoding="utf-8").split("\n") if line]
    for name in ("messages.jsonl", "agents.jsonl", "tasks.jsonl")
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_golden_bytes_raise_only_decode_error(data: st.DataObject) -> None:
    cls, lines = data.draw(st.sampled_from([(Message, MESSAGE_LINES), (Agent, AGENT_LINES), (Task, TASK_LINES)]))
    raw = bytearray(data.draw(st.sampled_from(lines)).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    _only_decode_errors(cls, bytes(raw))


# -- more fuzz (tinytown reliability): agents, text input, pathological documents ----


@settings(max_examples=200, deadline=None)
@given(st.builds(
    Agent,
    id=_ids, name=_text, nickname=st.none() | _text, role_id=st.none() | _text,
    parent_agent_id=st.none() | _ids, spawn_mode=st.sampled_from(SpawnMode),
    agent_type=st.sampled_from(AgentType), state=st.sampled_from(AgentState), cli=_text,
    current_task=st.none() | _ids, created_at=_timestamps, last_heartbeat=_timestamps,
    tasks_completed=st.integers(0, 2**64 - 1), rounds_completed=st.integers(0, 2**64 - 1),
    last_active_at=_timestamps,
))
def test_random_agents_round_trip(agent: Agent) -> None:
    raw = agent.to_json()
    assert Agent.from_json(raw) == agent
    assert Agent.from_json(raw).to_json() == raw
    assert Agent.from_hash(agent.to_hash()) == agent


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_decode_error(text: str) -> None:
    for cls in (Message, Agent, Task):
        _only_decode_errors(cls, text)


_MSG_JSON = orjson.dumps(MSG)


@pytest.mark.parametrize("data", [
    b"[" * 100_000,                                # nesting far beyond any parser's limit
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"{" + b'"k":1,' * 100_000 + b'"k":2}',       # huge object, duplicate keys
    b"[" + b"1," * 200_000 + b"1]",
    _MSG_JSON[:-1] + b',"extra":' + b"9" * 5000 + b"}",   # a 5000-digit number
    _MSG_JSON[:-1] + b',"extra":1e999999}',
    _MSG_JSON[:-1] + b',"extra":NaN}',
    _MSG_JSON.replace(b'"description":"', b'"description":"' + b"x" * 2_000_000),
    _MSG_JSON.replace(b'"description":"', b'"description":"\\ud800'),  # lone surrogate escape
    _MSG_JSON.replace(b'"description":"', b'"description":"\xff\xfe'),  # invalid UTF-8
    _MSG_JSON.replace(b'"description":"', b'"description":"\x00'),      # raw control character
    b"\xef\xbb\xbf" + _MSG_JSON,                  # UTF-8 byte order mark
    _MSG_JSON + b"\x00",
    _MSG_JSON + _MSG_JSON,
    _MSG_JSON.replace(b'"id":"', b'"id":"', 1).replace(b"{", b'{"id":"' + U.encode() + b'",', 1),
    b"\x00" * 1000,
    b"",
    b" ",
])
def test_pathological_documents_raise_only_decode_error(data: bytes) -> None:
    for cls in (Message, Agent, Task):
        _only_decode_errors(cls, data)
        _only_decode_errors(cls, data.decode("utf-8", "surrogateescape"))
