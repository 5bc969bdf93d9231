"""The receive path's fast paths agree with the plain decoders (issue 14).

Message.from_json, timestamp parsing and the canonical-id test take
shortcuts for the usual input (what Rust and Tinytown write): a canonical
timestamp with nine fraction digits and a head seen before, canonical ids
tested with a byte table, agent ids remembered, variants and the Message
built without their setters. Each shortcut is compared here with the plain
path it stands for, on edge cases and on generated input, so that any
accepted or rejected input, value, type or error message that differs fails.
No Redis needed.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinytown import _json, message as message_mod, timestamp as timestamp_mod
from tinytown._json import FieldError, as_enum, as_id, as_opt_str, as_str, as_ts, missing
from tinytown._uuid import is_canonical, match_canonical
from tinytown.enums import Priority
from tinytown.errors import DecodeError
from tinytown.ids import AgentId, MessageId
from tinytown.message import ConfirmationType, Message, MessageType
from tinytown.timestamp import Timestamp, _parse_slow, parse_rfc3339, parse_text

WIRE_DIR = Path(os.environ.get("TINYTOWN_WIRE_DIR", Path(__file__).parent / "data" / "wire"))
U1 = "c4647159-c324-4985-9b81-0e766ec9d286"
U2 = "e6c3f339-1a2b-4f1f-b1fd-42a29755d4c1"
U3 = "64ac5db9-d707-407e-855c-384429e821a4"


# -- timestamps: parse_text (fast paths) against _parse_slow (the full parser) -----


def _outcome(parse: Callable[[str], Timestamp], text: str) -> tuple[Any, ...]:
    """Everything observable of parsing ``text``: the error message, or the
    value's type, fields, exact text and order key."""
    try:
        ts = parse(text)
    except ValueError as exc:
        return ("error", str(exc))
    return (
        "ok", type(ts), ts.rfc3339(), ts.to_rfc3339(), ts.timestamp_ns(), ts.is_leap_second,
        (ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond, ts.nanosecond),
        ts.tzinfo, ts.fold, ts.utcoffset(), hash(ts), ts,
    )


def _check_timestamp(text: str) -> None:
    for strict in (False, True):
        expected = _outcome(functools.partial(_parse_slow, strict=strict), text)
        # Twice: the first call may fill the head caches, the second uses them.
        assert _outcome(functools.partial(parse_text, strict=strict), text) == expected, text
        assert _outcome(functools.partial(parse_text, strict=strict), text) == expected, text
    expected = _outcome(lambda t: _parse_slow(t, True), text)
    assert _outcome(parse_rfc3339, text) == expected


_EDGE_HEADS = [
    "2026-11-30T07:41:05", "0000-01-01T00:00:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59",
    "9999-12-31T23:59:60", "2016-12-31T23:59:60", "2024-02-29T12:00:00", "2023-02-29T12:00:00",
    "2024-02-30T00:00:00", "2024-04-31T00:00:00", "2024-13-01T00:00:00", "2024-00-10T00:00:00",
    "2024-01-00T00:00:00", "2024-01-32T00:00:00", "2024-01-01T24:00:00", "2024-01-01T23:60:00",
    "2024-01-01T23:59:61", "2024-01-01t03:04:05", "2024-01-01 03:04:05", "2024-01-01x03:04:05",
    "1900-02-29T00:00:00", "2000-02-29T00:00:00", "0000-02-29T00:00:00", "2024-1-01T00:00:00",
    "2024-01-01T00:00:0\u0661", "\uff12024-01-01T00:00:00", "+2024-01-01T00:00:0",
    "12024-01-01T00:00:00", "2024-01-01T00:00:00\u00a0",
]
_EDGE_TAILS = [
    "Z", "z", ".Z", ".1Z", ".12Z", ".123Z", ".1234Z", ".12345Z", ".123456Z", ".1234567Z",
    ".12345678Z", ".123456789Z", ".1234567890Z", ".123456789123Z", ".000Z", ".000000Z",
    ".000000000Z", ".000000001Z", ".999999999Z", ".123456000Z", ".123000000Z", ".100000000Z",
    ".123456789z", ".123456789+00:00", ".123456789+0000", ".123456789-00:00", ".123456789+05:30",
    ".123456789\u221201:00", "+00:00", "+23:59", "+24:00", "-00:60", ".12345678\u0661Z",
    ".1234567_8Z", ". 12345678Z", ".+12345678Z", ".-12345678Z", ".12345678 Z", ".１23456789Z",
    ".123456789ZZ", ".123456789", "", ".123456789Z\n", ".123456789Z ", ".12345678\ud800Z",
]


@pytest.mark.parametrize("head", _EDGE_HEADS)
def test_timestamp_fast_paths_agree_on_edge_cases(head: str) -> None:
    for tail in _EDGE_TAILS:
        _check_timestamp(head + tail)


def _two_digits(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: f"{n:02d}")


_HEAD_TEXT = st.builds(
    lambda y, mo, d, sep, h, mi, s: f"{y}-{mo}-{d}{sep}{h}:{mi}:{s}",
    st.one_of(st.integers(0, 9999).map(lambda n: f"{n:04d}"), st.sampled_from(["0000", "9999", "2024", "10000"])),
    _two_digits(0, 13), _two_digits(0, 32), st.sampled_from(["T", "T", "T", "t", " ", "_"]),
    _two_digits(0, 25), _two_digits(0, 61), _two_digits(0, 61),
)
_TAIL_TEXT = st.builds(
    lambda frac, zone: frac + zone,
    st.one_of(
        st.just(""),
        st.text("0123456789", min_size=0, max_size=12).map(lambda s: "." + s),
        st.text("0123456789+-_ \u0661\uff11", min_size=1, max_size=10).map(lambda s: "." + s),
    ),
    st.sampled_from(["Z", "Z", "Z", "z", "+00:00", "+0000", "-05:30", "+23:59", "+24:00", "\u221200:30",
                     "", "ZZ", " Z"]),
)


@settings(max_examples=3000, deadline=None)
@given(head=_HEAD_TEXT, tail=_TAIL_TEXT)
def test_timestamp_fast_paths_agree_on_generated_text(head: str, tail: str) -> None:
    _check_timestamp(head + tail)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_timestamp_fast_paths_agree_on_any_text(text: str) -> None:
    _check_timestamp(text)


def test_timestamp_head_caches_refill_after_clearing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timestamp_mod, "_HEAD_CACHE_MAX", 3)
    texts = [f"2024-01-02T03:04:{s:02d}.{s:09d}Z" for s in range(1, 12)]
    for text in texts * 3:
        assert _outcome(parse_text, text) == _outcome(_parse_slow, text)
    assert len(timestamp_mod._HEAD_CACHE) <= 3
    assert timestamp_mod._HEAD_STATE.keys() == timestamp_mod._HEAD_CACHE.keys()


def test_nine_digit_fast_path_keeps_the_text_only_when_canonical() -> None:
    head = "2025-06-07T08:09:10"
    parse_text(head + ".5Z")  # head cached
    ts = parse_text(head + ".123456789Z")
    assert ts.rfc3339() == head + ".123456789Z" and (ts.microsecond, ts.nanosecond) == (123456, 789)
    zero_ns = parse_text(head + ".123456000Z")  # chrono prints six digits for it
    assert zero_ns.rfc3339() == head + ".123456Z" and zero_ns == _parse_slow(head + ".123456000Z")
    assert parse_text(head + ".000000000Z").rfc3339() == head + "Z"


# -- canonical ids: is_canonical (a byte table) against the regex --------------------


_ID_EDGES = [
    U1, U1.upper(), U1[:-1], U1 + "0", U1.replace("-", ""), "{" + U1 + "}", "urn:uuid:" + U1,
    U1.replace("-", "_"), U1[:8] + "-" + U1[9:] + "-", U1.replace("c", "g"), U1.replace("4", "\u0664"),
    U1.replace("4", "\uff14"), U1[:35] + "\ud800", U1[:35] + "\u00e9", U1[:35] + "\x00", U1[:35] + "A",
    U1[:35] + "\n", "", "-" * 36, "0" * 36, "00000000-0000-0000-0000-000000000001", U1[:8] + U1[9:] + "-",
    " " + U1[1:], U1[:-1] + " ",
]


@pytest.mark.parametrize("text", _ID_EDGES)
def test_is_canonical_agrees_with_the_regex_on_edge_cases(text: str) -> None:
    assert is_canonical(text) is (match_canonical(text) is not None)


_ID_CHARS = "0123456789abcdefABCDEFgxz-{}_ :\u0661\uff10\u00e9\ud800\x00"


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.text(_ID_CHARS, min_size=34, max_size=38),
        st.uuids().map(str),
        st.builds(
            lambda u, i, c: u[:i] + c + u[i + 1:],
            st.uuids().map(str), st.integers(0, 35), st.sampled_from(_ID_CHARS),
        ),
    )
)
def test_is_canonical_agrees_with_the_regex(text: str) -> None:
    assert is_canonical(text) is (match_canonical(text) is not None)


# -- Message.from_json against a plain decoder ---------------------------------------

# The plain decoder: the field helpers of tinytown._json, one field at a time,
# in the order Message.from_json reports errors (id, from, to, type and the
# variant's fields, priority, correlation_id, created_at); the variants made
# with their public constructors.

_PLAIN_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "task": ("Task", ("description",)),
    "query": ("Query", ("question",)),
    "informational": ("Informational", ("summary",)),
    "task_assign": ("TaskAssign", ("task_id",)),
    "task_done": ("TaskDone", ("task_id", "result")),
    "task_failed": ("TaskFailed", ("task_id", "error")),
    "status_request": ("StatusRequest", ()),
    "ping": ("Ping", ()),
    "pong": ("Pong", ()),
    "shutdown": ("Shutdown", ()),
    "custom": ("Custom", ("kind", "payload")),
}
_PRIORITY_TABLE = _json.enum_table(Priority)
_TAGS = ", ".join(repr(t) for t in [*_PLAIN_VARIANTS, "confirmation", "status_response"])
_TAG_ORDER = ("task", "query", "informational", "confirmation", "task_assign", "task_done",
              "task_failed", "status_request", "status_response", "ping", "pong", "shutdown", "custom")


def _required(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        missing(key)
    return obj[key]


def _plain_msg_type(obj: dict[str, Any]) -> MessageType:
    tag = _required(obj, "type")
    if type(tag) is not str:
        raise FieldError("type", f"expected a string, got {_json.describe(tag)}")
    if tag == "confirmation":
        return MessageType.Confirmation(message_mod._decode_ack(_required(obj, "ack_type")))
    if tag == "status_response":
        state = as_str(_required(obj, "state"), "state")
        return MessageType.StatusResponse(state, as_opt_str(obj.get("current_task"), "current_task"))
    if tag not in _PLAIN_VARIANTS:
        expected = ", ".join(repr(t) for t in _TAG_ORDER)
        raise FieldError("type", f"unknown message type {tag!r}, expected one of {expected}")
    name, fields = _PLAIN_VARIANTS[tag]
    return getattr(MessageType, name)(*[as_str(_required(obj, f), f) for f in fields])  # type: ignore[no-any-return]


def plain_from_json(cls: type[Message], data: Any) -> Message:
    obj = _json.load_object(data, "Message")
    try:
        for key in ("id", "from", "to", "created_at"):
            _required(obj, key)
        mid = as_id(obj["id"], MessageId, "id")
        from_ = as_id(obj["from"], AgentId, "from")
        to = as_id(obj["to"], AgentId, "to")
        msg_type = _plain_msg_type(obj)
        priority = as_enum(obj["priority"], _PRIORITY_TABLE, "priority") if "priority" in obj else Priority.NORMAL
        corr = obj.get("correlation_id")
        corr = None if corr is None else as_id(corr, MessageId, "correlation_id")
        created_at = as_ts(obj["created_at"], "created_at")
        return cls(mid, from_, to, msg_type, priority, created_at, corr)
    except Exception as exc:
        raise _json.wrap_error("Message", exc, data) from None


def _decoded(decode: Callable[[Any], Message], data: Any) -> tuple[Any, ...]:
    try:
        m = decode(data)
    except DecodeError as exc:
        return ("error", type(exc), str(exc), exc.raw)
    return (
        "ok", type(m), m,
        [type(v) for v in (m.id, m.from_, m.to, m.msg_type, m.priority, m.created_at, m.correlation_id)],
        [str.__str__(v) for v in (m.id, m.from_, m.to)], m.created_at.rfc3339(),
        repr(m), m.to_json(),
    )


def _check_message(data: Any, cls: type[Message] = Message) -> None:
    expected = _decoded(lambda d: plain_from_json(cls, d), data)
    assert _decoded(cls.from_json, data) == expected, data
    assert _decoded(cls.from_json, data) == expected, data  # caches filled by the first


def test_plain_decoder_sees_every_tag() -> None:
    assert _TAGS.count("'") == 2 * len(_TAG_ORDER) == 2 * len(message_mod._DECODERS)
    assert set(_TAG_ORDER) == set(message_mod._DECODERS)


_BASE: dict[str, Any] = {
    "id": U1, "from": U2, "to": U3, "type": "task", "description": "d", "priority": "normal",
    "created_at": "2026-11-30T07:41:05.966132904Z", "correlation_id": None,
}
_BODIES: list[dict[str, Any]] = [
    {"type": "task", "description": "Review the pull request #1234 " * 8},
    {"type": "query", "question": "q?"},
    {"type": "informational", "summary": "s"},
    {"type": "confirmation", "ack_type": {"type": "received"}},
    {"type": "confirmation", "ack_type": {"type": "rejected", "reason": "r"}},
    {"type": "confirmation", "ack_type": {"type": "nope"}},
    {"type": "confirmation", "ack_type": "received"},
    {"type": "confirmation"},
    {"type": "task_assign", "task_id": "t"},
    {"type": "task_done", "task_id": "t", "result": "r"},
    {"type": "task_failed", "task_id": "t", "error": "e"},
    {"type": "status_request"},
    {"type": "status_response", "state": "idle", "current_task": None},
    {"type": "status_response", "state": "busy", "current_task": "t"},
    {"type": "status_response", "state": "busy"},
    {"type": "status_response", "state": 1},
    {"type": "status_response", "state": "s", "current_task": 5},
    {"type": "ping"}, {"type": "pong"}, {"type": "shutdown"},
    {"type": "custom", "kind": "k", "payload": "{\"a\":1}"},
    {"type": "custom", "kind": "k"},
    {"type": "custom", "payload": "p"},
    {"type": "custom", "kind": None, "payload": 3},
    {"type": "task", "description": None},
    {"type": "task"},
    {"type": "task_done", "task_id": 1},
    {"type": "Task", "description": "d"},
    {"type": None},
    {"type": ["task"]},
    {"type": {"a": 1}},
    {},
]
_BAD_VALUES: list[Any] = [
    None, 0, 1.5, True, [], ["x"], {}, {"a": 1}, "", "x", U1.upper(), "{" + U1 + "}", "urn:uuid:" + U1,
    U1.replace("-", ""), U1[:-1], U1.replace("c", "g"), "2026-11-30T07:41:05Z", "normal", "NORMAL",
    "urgent", "2024-02-30T00:00:00.123456789Z", "2016-12-31T23:59:60.123456789Z",
    "0000-01-01T00:00:00.123456789Z", "2026-11-30T07:41:05.9661329Z", "2026-11-30t07:41:05.966132904z",
    "2026-11-30T07:41:05.966132904+00:00", "2026-11-30T08:41:05.966132904+01:00",
    "2026-11-30T07:41:05.96613290\u0664Z", "2026-11-30T07:41:05.9661_2904Z", "2026-11-30T24:00:00.000000001Z",
    "10000-01-01T00:00:00Z", "2026-11-30T07:41:05.966132904Z", "2026-11-30T07:41:05.000000000Z",
]
_KEYS = ["id", "from", "to", "created_at", "priority", "correlation_id", "type"]


@pytest.mark.parametrize("body", _BODIES, ids=lambda b: repr(b)[:40])
def test_from_json_agrees_with_the_plain_decoder_on_each_variant(body: dict[str, Any]) -> None:
    obj = {k: v for k, v in _BASE.items() if k not in ("type", "description")}
    obj.update(body)
    for priority in ("low", "normal", "high", "urgent", None, "missing"):
        for corr in (None, U1, U2.upper(), "bad"):
            doc = dict(obj, priority=priority, correlation_id=corr)
            if priority == "missing":
                del doc["priority"]
            raw = orjson.dumps(doc)
            _check_message(raw)
            _check_message(raw.decode())


@pytest.mark.parametrize("key", _KEYS)
def test_from_json_agrees_with_the_plain_decoder_on_each_bad_field(key: str) -> None:
    for value in [*_BAD_VALUES, "missing"]:
        doc = dict(_BASE)
        if value == "missing":
            del doc[key]
        else:
            doc[key] = value
        _check_message(orjson.dumps(doc))


def test_from_json_reports_the_first_bad_field_as_before() -> None:
    # Every pair of bad fields: the error names the same one as the plain decoder.
    bad: dict[str, Any] = {"id": "x", "from": 1, "to": [], "created_at": "2024-02-30T00:00:00Z",
                           "priority": "nope", "correlation_id": {}, "type": "nope"}
    for a, b in itertools.combinations(_KEYS, 2):
        for missing_a in (False, True):
            doc = dict(_BASE, **{b: bad[b]})
            if missing_a:
                del doc[a]
            else:
                doc[a] = bad[a]
            _check_message(orjson.dumps(doc))


def test_from_json_non_objects_and_broken_json() -> None:
    for data in [b"", b"{", b"[]", b"null", b"1", b'"x"', b"\xff", "{\ud800}", b'{"id":1}{}', bytearray(b"[]"),
                 memoryview(orjson.dumps(_BASE)), bytearray(orjson.dumps(_BASE)), 5, None, [], object()]:
        _check_message(data)


_JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False), st.sampled_from(_BAD_VALUES),
    st.sampled_from([U1, U2, U3, str(AgentId.supervisor())]), st.uuids().map(str),
    st.lists(st.integers(0, 1), max_size=1), st.dictionaries(st.sampled_from(["type", "reason"]),
                                                               st.sampled_from(["rejected", "x", "received"])),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.sampled_from(_BODIES),
    changes=st.dictionaries(st.sampled_from(_KEYS + ["description", "state", "ack_type", "kind"]),
                            _JSON_VALUE, max_size=3),
    removed=st.sets(st.sampled_from(_KEYS), max_size=2),
    as_text=st.booleans(),
)
def test_from_json_agrees_with_the_plain_decoder_on_generated_messages(
    body: dict[str, Any], changes: dict[str, Any], removed: set[str], as_text: bool
) -> None:
    doc = {k: v for k, v in _BASE.items() if k not in ("type", "description")}
    doc.update(body)
    doc.update(changes)
    for key in removed:
        doc.pop(key, None)
    raw = orjson.dumps(doc)
    _check_message(raw.decode() if as_text else raw)


@settings(max_examples=300, deadline=None)
@given(st.builds(
    lambda y, mo, d, h, mi, s, frac: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}Z",
    st.sampled_from([0, 1, 1970, 2024, 2026, 9999]), st.integers(1, 12), st.integers(1, 31), st.integers(0, 23),
    st.integers(0, 59), st.integers(58, 60), st.sampled_from(["", ".5", ".123", ".123456", ".123456789", ".000000001"]),
))
def test_from_json_agrees_on_generated_timestamps(text: str) -> None:
    _check_message(orjson.dumps(dict(_BASE, created_at=text)))


def test_from_json_of_a_subclass_builds_the_subclass() -> None:
    class Sub(Message):
        pass

    raw = orjson.dumps(_BASE)
    got = Sub.from_json(raw)
    assert type(got) is Sub and got == Message.from_json(raw)
    _check_message(raw, Sub)
    assert type(Message.from_json(raw)) is Message


def test_from_json_messages_are_immutable_messages() -> None:
    m = Message.from_json(orjson.dumps(_BASE))
    assert type(m) is Message and type(m).__setattr__ is Message.__setattr__
    with pytest.raises(AttributeError, match="immutable"):
        m.priority = Priority.HIGH  # type: ignore[misc]
    assert not hasattr(m, "__dict__")
    assert m == Message(U1, U2, U3, MessageType.Task("d"), Priority.NORMAL, Timestamp(_BASE["created_at"]))
    assert m.with_priority("high").priority is Priority.HIGH


def test_agent_id_cache_is_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_mod, "_AGENT_IDS_MAX", 4)
    agents = [str(AgentId.new()) for _ in range(10)]
    for sender, recipient in itertools.product(agents, repeat=2):
        raw = orjson.dumps(dict(_BASE, **{"from": sender, "to": recipient}))
        m = Message.from_json(raw)
        assert (type(m.from_), type(m.to)) == (AgentId, AgentId)
        assert (m.from_, m.to) == (sender, recipient)
    assert len(message_mod._AGENT_IDS) <= 4
    assert all(type(v) is AgentId and v == k and match_canonical(k) for k, v in message_mod._AGENT_IDS.items())
    # Other spellings are normalized, and never remembered under the spelling.
    upper = U2.upper()
    assert Message.from_json(orjson.dumps(dict(_BASE, **{"from": upper}))).from_ == U2
    assert upper not in message_mod._AGENT_IDS


def test_confirmation_type_singletons_survive() -> None:
    raw = orjson.dumps(dict(_BASE, type="confirmation", ack_type={"type": "thanks"}))
    assert Message.from_json(raw).msg_type == MessageType.Confirmation(ConfirmationType.Thanks())


def test_fast_paths_agree_on_the_golden_messages() -> None:
    lines = [line for line in (WIRE_DIR / "messages.jsonl").read_text("utf-8").split("\n") if line]
    assert len(lines) == 54
    for line in lines:
        _check_message(line)
        _check_message(line.encode())
