"""Timestamp edge cases chrono accepts (issue 9, "Wire edge cases"), without Redis.

What Tinytown's Rust reader accepts must decode and print back as Rust
prints it: leap seconds, year 0, other separators and offsets, any number of
fraction digits. Years above 9999 are a clean DecodeError.
"""

from __future__ import annotations

import logging
import pickle
from datetime import datetime, timedelta, timezone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytown import Agent, AgentId, DecodeError, Message, MessageType, Task, Timestamp, TownEvent

A = "00000000-0000-0000-0000-0000000000a1"


@pytest.mark.parametrize(
    "given_text, printed",
    [
        ("2016-12-31T23:59:60.500Z", "2016-12-31T23:59:60.500Z"),  # leap second
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60Z"),
        ("2016-12-31T23:59:60.5+00:00", "2016-12-31T23:59:60.500Z"),
        ("2017-01-01T00:59:60.123456789+01:00", "2016-12-31T23:59:60.123456789Z"),
        ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),  # year 0
        ("0000-02-29T12:00:00.000001Z", "0000-02-29T12:00:00.000001Z"),  # year 0 is a leap year
        ("0001-01-01T00:30:00+01:00", "0000-12-31T23:30:00Z"),
        ("0000-12-31T23:59:60Z", "0000-12-31T23:59:60Z"),
        ("2024-01-01T00:00:00+0000", "2024-01-01T00:00:00Z"),  # serde's reader takes +HHMM
        ("2024-01-01T05:30:00+0530", "2024-01-01T00:00:00Z"),
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02t03:04:05z", "2024-01-02T03:04:05Z"),
        ("2024-01-02 03:04:05+00:00", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05-00:00", "2024-01-02T03:04:05Z"),
        ("2024-01-01T23:04:05\u221204:00", "2024-01-02T03:04:05Z"),  # U+2212 MINUS SIGN
        ("2024-01-02T08:34:05.5+05:30", "2024-01-02T03:04:05.500Z"),
        ("2024-01-02T03:04:05+23:59", "2024-01-01T03:05:05Z"),
        ("2024-01-02T03:04:05.1Z", "2024-01-02T03:04:05.100Z"),
        ("2024-01-02T03:04:05.1234Z", "2024-01-02T03:04:05.123400Z"),
        ("2024-01-02T03:04:05.123456789123456Z", "2024-01-02T03:04:05.123456789Z"),
        ("2024-01-02T03:04:05.000000000000Z", "2024-01-02T03:04:05Z"),
        ("9999-12-31T23:59:60.999999999Z", "9999-12-31T23:59:60.999999999Z"),
    ],
)
def test_chrono_inputs_decode_and_print_as_rust(given_text: str, printed: str) -> None:
    ts = Timestamp.parse(given_text)
    assert ts.rfc3339() == str(ts) == printed
    assert ts.to_rfc3339() == printed[:-1] + "+00:00"
    assert Timestamp.parse(printed) == ts and Timestamp.parse(ts.to_rfc3339()) == ts
    assert Timestamp(given_text) == ts
    assert pickle.loads(pickle.dumps(ts)) == ts and repr(pickle.loads(pickle.dumps(ts))) == f"Timestamp('{printed}')"


@pytest.mark.parametrize(
    "text",
    [
        "+10000-01-01T00:00:00Z",
        "+10000-01-01T00:00:00+00:00",
        "10000-01-01T00:00:00Z",
        "-0001-12-31T00:00:00Z",
        "9999-12-31T23:30:00-01:00",
        "0000-01-01T00:00:00+00:01",
        "2024-01-01T00:00:61Z",
        "2024-01-01T00:60:00Z",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00+00",
        "2024-01-01T00:00:00.+00:00",
        "2024-01-01T00:00:00UTC",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00Z ",
        "2024-02-30T00:00:00Z",
        "0000-02-30T00:00:00Z",
    ],
)
def test_unreadable_timestamps_are_decode_errors(text: str) -> None:
    with pytest.raises(DecodeError) as info:
        Timestamp.parse(text)
    assert repr(text) in str(info.value)
    msg = (b'{"id":"%s","from":"%s","to":"%s","type":"ping","priority":"low","created_at":"%s",'
           b'"correlation_id":null}') % (A.encode(), A.encode(), A.encode(), text.encode())
    with pytest.raises(DecodeError):
        Message.from_json(msg)


def test_big_year_error_says_why() -> None:
    with pytest.raises(DecodeError, match="0000-9999"):
        Timestamp.parse("+10000-01-01T00:00:00+00:00")


LEAP = "2016-12-31T23:59:60.500Z"
YEAR0 = "0000-01-01T00:00:00Z"


@pytest.mark.parametrize("text", [LEAP, YEAR0, "0000-06-30T23:59:60.000000001Z"])
def test_edge_values_round_trip_through_every_json_type(text: str) -> None:
    raw = (b'{"id":"%s","from":"%s","to":"%s","type":"ping","priority":"low","created_at":"%s","correlation_id":null}'
           % (A.encode(), A.encode(), A.encode(), text.encode()))
    assert Message.from_json(raw).to_json() == raw
    assert Message.from_json(raw) == Message.from_json(raw)
    event = TownEvent.new("agent_stopped", "m")
    event.timestamp = Timestamp.parse(text)
    assert TownEvent.from_json(event.to_json()).to_json() == event.to_json()
    assert text.encode() in event.to_json()
    agent = Agent.new("a", "cli")
    agent.created_at = agent.last_heartbeat = agent.last_active_at = Timestamp.parse(text)
    assert Agent.from_json(agent.to_json()).to_json() == agent.to_json()
    hdel, pairs = agent.hash_fields()
    assert (text[:-1] + "+00:00").encode() in pairs
    assert Agent.from_hash(dict(zip(pairs[::2], pairs[1::2]))) == agent
    task = Task.new("t")
    task.created_at = task.updated_at = task.started_at = task.completed_at = Timestamp.parse(text)
    assert Task.from_json(task.to_json()).to_json() == task.to_json()
    assert Task.from_hash(task.to_hash()) == task


def test_hash_reader_follows_parse_from_rfc3339(caplog: pytest.LogCaptureFixture) -> None:
    base = {"id": A}
    for text, printed in [("2016-12-31T23:59:60.5+00:00", "2016-12-31T23:59:60.500Z"),
                          ("0000-01-01T00:00:00+00:00", YEAR0),
                          ("2024-01-02 03:04:05+00:00", "2024-01-02T03:04:05Z")]:
        assert Agent.from_hash({**base, "created_at": text}).created_at.rfc3339() == printed
    # parse_from_rfc3339 needs the offset's colon; the value is replaced by now, and logged.
    before = Timestamp.now()
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        for text in ("2024-01-01T00:00:00+0000", "+10000-01-01T00:00:00+00:00"):
            got = Agent.from_hash({**base, "created_at": text}).created_at
            assert before <= got <= Timestamp.now()
    assert len(caplog.records) == 2 and all("created_at" in r.getMessage() for r in caplog.records)


def test_leap_second_orders_between_its_neighbours() -> None:
    before = Timestamp.parse("2016-12-31T23:59:59.999999999Z")
    leap = Timestamp.parse(LEAP)
    leap_start = Timestamp.parse("2016-12-31T23:59:60Z")
    after = Timestamp.parse("2017-01-01T00:00:00Z")
    assert before < leap_start < leap < after
    assert after > leap > before and leap >= leap_start and leap_start <= leap
    assert sorted([after, leap, before, leap_start]) == [before, leap_start, leap, after]
    assert leap.is_leap_second and not before.is_leap_second and not Timestamp.parse(YEAR0).is_leap_second
    assert leap != after and leap != before and leap == Timestamp.parse("2016-12-31T23:59:60.5+00:00")
    assert len({leap, Timestamp.parse("2016-12-31T23:59:60.500000Z"), before, after}) == 3
    # Plain datetimes compare on the same scale.
    aware = datetime(2016, 12, 31, 23, 59, 59, 999999, timezone.utc)
    assert aware < leap and leap > aware and leap != aware and not leap == aware
    assert datetime(2017, 1, 1, tzinfo=timezone(timedelta(hours=1))) < leap  # 2016-12-31T23:00Z
    with pytest.raises(TypeError):
        _ = leap < datetime(2017, 1, 1)  # naive, as datetime itself refuses
    assert leap != datetime(2017, 1, 1)


def test_datetime_view_is_clamped_and_documented() -> None:
    leap = Timestamp.parse(LEAP)
    assert (leap.year, leap.second, leap.microsecond, leap.nanosecond) == (2016, 59, 999999, 999)
    year0 = Timestamp.parse("0000-05-05T05:05:05Z")
    assert (year0.year, year0.month, year0.day, year0.hour) == (1, 1, 1, 0)
    assert isinstance(year0, datetime) and isinstance(year0, Timestamp)
    assert year0 < Timestamp.parse("0001-01-01T00:00:00Z") and year0 < datetime(1, 1, 1, tzinfo=timezone.utc)
    assert "clamped" in (Timestamp.__doc__ or "") and "leap second" in (Timestamp.__doc__ or "")


def test_exact_arithmetic_and_epoch_nanoseconds() -> None:
    leap = Timestamp.parse(LEAP)
    assert leap.timestamp_ns() == 1483228800_500000000  # chrono: 23:59:59 plus 1.5 s
    assert (leap + timedelta(seconds=1)).rfc3339() == "2017-01-01T00:00:01.500Z"
    assert (leap - timedelta(milliseconds=500)).rfc3339() == "2017-01-01T00:00:00Z"
    assert leap - Timestamp.parse("2016-12-31T23:59:59Z") == timedelta(seconds=1, milliseconds=500)
    assert Timestamp.parse("2017-01-01T00:00:01Z") - leap == timedelta(milliseconds=500)
    year0 = Timestamp.parse(YEAR0)
    assert year0.timestamp_ns() == -62167219200 * 10**9
    assert (year0 + timedelta(days=366)).rfc3339() == "0001-01-01T00:00:00Z"
    assert (year0 + timedelta(days=59)).rfc3339() == "0000-02-29T00:00:00Z"
    assert Timestamp.parse("0001-01-01T00:00:00Z") - timedelta(days=1) == Timestamp.parse("0000-12-31T00:00:00Z")
    assert Timestamp.from_timestamp_ns(year0.timestamp_ns() + 7) == Timestamp.parse("0000-01-01T00:00:00.000000007Z")
    with pytest.raises(OverflowError):
        _ = year0 - timedelta(microseconds=1)


_parts = st.tuples(
    st.sampled_from([0, 0, 1, 1970, 2016, 9999]), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
    st.integers(0, 59), st.integers(0, 60), st.integers(0, 999_999_999),
)


def _text(p: tuple[int, ...]) -> str:
    return "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % p


@settings(max_examples=300, deadline=None)
@given(_parts, _parts)
def test_order_equality_and_hash_match_the_text(p: tuple[int, ...], q: tuple[int, ...]) -> None:
    # With nine fraction digits the canonical texts sort like chrono's values.
    a, b = Timestamp.parse(_text(p)), Timestamp.parse(_text(q))
    assert Timestamp.parse(a.rfc3339()) == a and a.rfc3339().rstrip("Z").rstrip("0").rstrip(".") in _text(p)
    assert (a < b) == (_text(p) < _text(q)) and (a == b) == (_text(p) == _text(q))
    assert (a > b) == (_text(p) > _text(q)) and (a <= b) == (_text(p) <= _text(q))
    if a == b:
        assert hash(a) == hash(b)
    if p[5] != 60 and q[5] != 60:
        assert b.timestamp_ns() - a.timestamp_ns() == _ns(q) - _ns(p)


def _ns(p: tuple[int, ...]) -> int:
    y, mo, d, h, mi, s, ns = p
    days = datetime(y or 400, mo, d).toordinal() - (146097 if y == 0 else 0)  # 400 years = 146097 days
    return ((days * 24 + h) * 60 + mi) * 60 * 10**9 + s * 10**9 + ns


def test_message_fast_path_unchanged() -> None:
    msg = Message.new(AgentId.new(), AgentId.new(), MessageType.Ping())
    raw = msg.to_json()
    assert Message.from_json(raw) == msg and type(Message.from_json(raw).created_at) is Timestamp
