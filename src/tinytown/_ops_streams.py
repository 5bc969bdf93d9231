"""Activity log, events, backlog and docket of Tinytown 0.10, as sans-I/O operations.

The same protocol as :mod:`tinytown._ops` (a step is a command tuple or a list
of them; the reply is sent back; error replies are thrown in as ReplyError),
driven by ``Channel._run`` and ``SyncChannel._run``. Commands, keys, argument
order, MAXLEN and field order follow Tinytown 0.10.0 byte for byte (spec
§5.7-5.9, §5.11); where upstream loses data or repeats itself (spec §9) the
choice made here is stated on the operation.

Argument checks run before the first ``yield``, so bad input raises
:class:`~tinytown.InvalidArgumentError` (or EncodeError) and sends nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ._ops import Op, Pop, int_reply
from ._ops_inbox import dead_letter
from .errors import DecodeError, EncodeError, InvalidArgumentError, ReplyError
from .events import TownEvent
from .ids import AgentId, MissionId, TaskId
from .keys import TownKeys
from .timestamp import Timestamp

log = logging.getLogger("tinytown")

#: Seconds an activity list lives after its last push (``EXPIRE ... 3600``).
ACTIVITY_TTL = 3600
#: Entries kept in an activity list (``LTRIM ... 0 9``).
ACTIVITY_KEEP = 10
#: Entries :meth:`get_agent_activity` returns (``LRANGE ... 0 4``).
ACTIVITY_SHOWN = 5
#: Approximate lengths the event streams are trimmed to (``MAXLEN ~ n``).
EVENTS_MAXLEN = 1000
AGENT_EVENTS_MAXLEN = 100
MISSION_EVENTS_MAXLEN = 500
#: The docket's consumer group (a constant upstream).
DOCKET_GROUP = b"workers"

_MULTI = (b"MULTI",)
_EXEC = (b"EXEC",)
# A stream entry id as XACK/XRANGE take it: "ms" or "ms-seq" (u64 each).
_STREAM_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?", re.ASCII)
#: Stream ids are two u64 (milliseconds, sequence).
U64_MAX = 2**64 - 1
#: The largest entry id: nothing can follow it.
_LAST_ID = f"{U64_MAX}-{U64_MAX}"


# -- argument checks ----------------------------------------------------------

def _text(value: object, what: str) -> bytes:
    """A str argument as UTF-8 (str subclasses such as Priority by their text)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, not {type(value).__name__}")
    try:
        return str.__str__(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{what} cannot be written as UTF-8: {exc}") from None


def _consumer(value: object) -> bytes:
    """A docket consumer name: a non-empty str (XREADGROUP/XAUTOCLAIM would
    take "" as a consumer of its own, and XAUTOCLAIM moves entries to it)."""
    name = _text(value, "consumer")
    if not name:
        raise InvalidArgumentError("consumer must be a non-empty str (the worker's name)")
    return name


#: The largest number Redis takes as a count or a time (a C long long).
REDIS_INT_MAX = 2**63 - 1


def _count(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= REDIS_INT_MAX:
        raise InvalidArgumentError(
            f"{what} must be an int in {minimum}..2**63-1, not {value!r}")
    return value


def _entry_id(value: object, what: str = "entry_id") -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if (not isinstance(value, str) or not _STREAM_ID.fullmatch(value)
            or any(int(part) > U64_MAX for part in value.split("-"))):
        raise InvalidArgumentError(
            f"{what} must be a stream entry id such as '1700000000000-0' (two parts"
            f" of at most 2**64-1), not {value!r}")
    return value


def _start_id(last_id: object) -> str | None:
    """XRANGE's start for "entries after ``last_id``".

    Upstream passes ``last_id`` as XRANGE's start, which is inclusive, so a
    follow loop sees its last entry again on every read (spec §9.14). Here a
    real entry id becomes the exclusive ``(<id>`` (Redis >= 6.2); ``-`` (and
    ``0``/``0-0``, below every possible entry) still mean "from the start";
    an id already written ``(<id>`` is passed as it is. None after the
    largest id (Redis would refuse the empty interval).
    """
    if isinstance(last_id, bytes):
        last_id = last_id.decode("ascii", "replace")
    if not isinstance(last_id, str):
        raise InvalidArgumentError(f"last_id must be a str, not {type(last_id).__name__}")
    if last_id in ("-", "0", "0-0"):
        return last_id
    bare = last_id[1:] if last_id.startswith("(") else last_id
    _entry_id(bare, "last_id")
    return None if bare == _LAST_ID else "(" + bare


def now_rfc3339() -> str:
    """Now as Tinytown writes it in Hash and Stream fields: ``...+00:00`` (spec §3.2)."""
    return Timestamp.now().to_rfc3339()


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- activity log (spec §5.7) -------------------------------------------------

def log_agent_activity(keys: TownKeys, agent_id: Any, text: object, *,
                       transaction: bool = True) -> Op[None]:
    key = keys.activity(AgentId(agent_id))
    element = _text(text, "text")
    commands: list[tuple[Any, ...]] = [
        (b"LPUSH", key, element),
        (b"LTRIM", key, 0, ACTIVITY_KEEP - 1),
        (b"EXPIRE", key, ACTIVITY_TTL),
    ]
    if transaction:
        # Redis answers WRONGTYPE for LPUSH *inside* EXEC's reply: raise it.
        _exec_results((yield [_MULTI, *commands, _EXEC]), "activity line")
    else:
        yield commands


def get_agent_activity_lines(keys: TownKeys, agent_id: Any,
                             count: object = ACTIVITY_SHOWN) -> Op[list[str]]:
    key = keys.activity(AgentId(agent_id))
    n = _count(count, "count")
    items = yield (b"LRANGE", key, 0, n - 1)
    return [_as_str(item) for item in items]


def get_agent_activity(keys: TownKeys, agent_id: Any) -> Op[str | None]:
    lines = yield from get_agent_activity_lines(keys, agent_id)
    return "\n".join(lines) if lines else None


# -- events (spec §5.8) ---------------------------------------------------------

def _xadd(stream: str, maxlen: int, event_type: bytes, data: bytes) -> tuple[Any, ...]:
    return (b"XADD", stream, b"MAXLEN", b"~", maxlen, b"*",
            b"event_type", event_type, b"data", data)


def emit_commands(keys: TownKeys, event: TownEvent) -> list[tuple[Any, ...]]:
    """The XADDs of one event, in upstream's order: the town stream, each
    distinct agent stream (agent, parent, child), then the mission stream."""
    if not isinstance(event, TownEvent):
        raise InvalidArgumentError(f"emit_event() takes a TownEvent, not {type(event).__name__}")
    data = event.to_json()
    if isinstance(data, str):
        data = data.encode("utf-8")
    event_type = str(event.event_type).encode("utf-8")
    commands = [_xadd(keys.events, EVENTS_MAXLEN, event_type, data)]
    for agent in event.agent_streams():
        commands.append(_xadd(keys.events_agent(agent), AGENT_EVENTS_MAXLEN, event_type, data))
    if event.mission_id is not None:
        commands.append(_xadd(keys.events_mission(event.mission_id),
                              MISSION_EVENTS_MAXLEN, event_type, data))
    return commands


def emit_event(keys: TownKeys, event: TownEvent, *, transaction: bool = True) -> Op[str]:
    """Every XADD in one write; with ``transaction`` inside MULTI/EXEC, so no
    reader sees the event in one stream and not yet in another. An error
    reply is raised (upstream swallows it, spec §9.15); inside EXEC Redis
    does not roll back, so the XADDs that succeeded stay."""
    commands = emit_commands(keys, event)
    if transaction:
        results = _exec_results((yield [_MULTI, *commands, _EXEC]), "event")
    else:
        results = yield commands
    return _as_str(results[0])


def _exec_results(replies: Any, what: str) -> list[Any]:
    """The replies inside EXEC's (the last of a ``MULTI ... EXEC`` list step);
    the first error reply inside it is raised (Redis does not roll back: the
    commands before it stay done)."""
    results = replies[-1]
    if results is None:  # EXEC of an aborted transaction
        raise ReplyError(f"EXECABORT the {what}'s transaction was discarded")
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[no-any-return]


def _decode_entries(entries: Any) -> list[tuple[str, TownEvent]]:
    """XRANGE-shaped entries as (id, TownEvent); an entry whose first ``data``
    field is missing, not a string or not a TownEvent is skipped (as upstream)."""
    out: list[tuple[str, TownEvent]] = []
    for entry in entries or ():
        if not isinstance(entry, list) or len(entry) != 2:
            continue
        entry_id, fields = entry
        entry_id = _as_str(entry_id)
        data = None
        if isinstance(fields, list):
            for i in range(0, len(fields) - 1, 2):
                if fields[i] == b"data":
                    data = fields[i + 1]
                    break
        if not isinstance(data, bytes):
            log.warning("tinytown: event %s has no data field; skipped", entry_id)
            continue
        try:
            event = TownEvent.from_json(data)
        except DecodeError as exc:
            log.warning("tinytown: event %s is not a TownEvent (%s); skipped", entry_id, exc)
            continue
        out.append((entry_id, event))
    return out


def _read_events(stream: str, last_id: object, count: object) -> Op[list[tuple[str, TownEvent]]]:
    start = _start_id(last_id)
    n = _count(count, "count")
    if start is None:  # after the largest id: nothing to read
        return []
    entries = yield (b"XRANGE", stream, start, b"+", b"COUNT", n)
    return _decode_entries(entries)


def read_town_events(keys: TownKeys, last_id: object, count: object) -> Op[list[tuple[str, TownEvent]]]:
    return (yield from _read_events(keys.events, last_id, count))


def read_agent_events(keys: TownKeys, agent_id: Any, last_id: object,
                      count: object) -> Op[list[tuple[str, TownEvent]]]:
    return (yield from _read_events(keys.events_agent(AgentId(agent_id)), last_id, count))


def read_mission_events(keys: TownKeys, mission_id: Any, last_id: object,
                        count: object) -> Op[list[tuple[str, TownEvent]]]:
    return (yield from _read_events(keys.events_mission(MissionId(mission_id)), last_id, count))


def read_recent_town_events(keys: TownKeys, count: object) -> Op[list[tuple[str, TownEvent]]]:
    n = _count(count, "count")
    entries = yield (b"XREVRANGE", keys.events, b"+", b"-", b"COUNT", n)
    return _decode_entries(list(reversed(entries or [])))


# -- backlog (spec §5.9) ----------------------------------------------------------

def backlog_push(keys: TownKeys, task_id: Any) -> Op[None]:
    yield (b"RPUSH", keys.backlog, TaskId(task_id))


def _task_id_or_none(raw: Any) -> TaskId | None:
    if not isinstance(raw, bytes):
        return None
    try:
        return TaskId(raw.decode("ascii"))
    except (UnicodeDecodeError, InvalidArgumentError):
        return None


def backlog_list(keys: TownKeys) -> Op[list[TaskId]]:
    items = yield (b"LRANGE", keys.backlog, 0, -1)
    out = []
    for raw in items:
        task = _task_id_or_none(raw)
        if task is None:
            log.warning("tinytown: backlog entry %r is not a task id; skipped", raw)
        else:
            out.append(task)
    return out


def backlog_len(keys: TownKeys) -> Op[int]:
    return int_reply((yield (b"LLEN", keys.backlog)), "LLEN")


def backlog_pop(keys: TownKeys) -> Op[TaskId | None]:
    """LPOP the backlog's front entry. A caller that goes away gets it put
    back at the front (a Pop step); an entry that is not a task id goes to
    ``tt:<town>:dead:backlog`` and DecodeError (``.raw`` set) is raised
    (upstream drops it, spec §9.9)."""
    key = keys.backlog
    raw = yield Pop((b"LPOP", key),
                    lambda reply: [(b"LPUSH", key, reply)] if isinstance(reply, bytes) else [])
    if raw is None:
        return None
    task = _task_id_or_none(raw)
    if task is not None:
        return task
    error = DecodeError(f"backlog entry is not a task id: {raw!r}", raw)
    return (yield from dead_letter(keys.dead("backlog"), key, raw, error))


def backlog_remove(keys: TownKeys, task_id: Any) -> Op[bool]:
    removed: int = yield (b"LREM", keys.backlog, 1, TaskId(task_id))
    return removed > 0


# -- docket (spec §5.11) ------------------------------------------------------------

def docket_ensure_group(keys: TownKeys) -> Op[None]:
    try:
        yield (b"XGROUP", b"CREATE", keys.docket_tasks, DOCKET_GROUP, b"$", b"MKSTREAM")
    except ReplyError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def docket_push(keys: TownKeys, task_id: Any, description: object, priority: object,
                from_: object, to: object) -> Op[str]:
    task = TaskId(task_id)
    fields = (_text(description, "description"), _text(priority, "priority"),
              _text(from_, "from_"), _text(to, "to"))
    entry = yield (b"XADD", keys.docket_tasks, b"*", b"task_id", task, b"type", b"task_assign",
                   b"message", fields[0], b"priority", fields[1], b"from", fields[2],
                   b"to", fields[3], b"timestamp", now_rfc3339())
    return _as_str(entry)


def docket_block_ms(block_ms: object) -> int:
    """``block_ms`` checked: upstream's ``BLOCK 0`` waits forever (spec §9.16)."""
    if (isinstance(block_ms, bool) or not isinstance(block_ms, int)
            or not 1 <= block_ms <= REDIS_INT_MAX):
        raise InvalidArgumentError(
            f"block_ms must be an int in 1..2**63-1 (milliseconds), not {block_ms!r}"
            " (Redis would read 0 as 'wait forever')")
    return block_ms


def docket_read_command(keys: TownKeys, consumer: object, block_ms: int) -> tuple[Any, ...]:
    # "" is sent as upstream does (the wire vectors): it only names a
    # consumer; docket_reclaim, which moves entries to one, refuses it.
    return (b"XREADGROUP", b"GROUP", DOCKET_GROUP, _text(consumer, "consumer"),
            b"COUNT", b"1", b"BLOCK", block_ms, b"STREAMS", keys.docket_tasks, b">")


def _fields(flat: Any) -> dict[str, str]:
    """An entry's fields: non-string items skipped, bytes decoded lossily, a
    repeated field keeps its last value (as upstream)."""
    out: dict[str, str] = {}
    if isinstance(flat, list):
        for i in range(0, len(flat) - 1, 2):
            name, value = flat[i], flat[i + 1]
            if isinstance(name, bytes) and isinstance(value, bytes):
                out[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def docket_read_reply(reply: Any) -> tuple[str, dict[str, str]] | None:
    """The first entry of an XREADGROUP reply, or None."""
    if not reply:
        return None
    try:
        entries = reply[0][1]
        entry_id, flat = entries[0]
    except (IndexError, TypeError, ValueError):
        return None
    return _as_str(entry_id), _fields(flat)


def docket_ack(keys: TownKeys, entry_id: object) -> Op[bool]:
    entry = _entry_id(entry_id)
    acked: int = yield (b"XACK", keys.docket_tasks, DOCKET_GROUP, entry)
    return acked > 0


def docket_len(keys: TownKeys) -> Op[int]:
    return int_reply((yield (b"XLEN", keys.docket_tasks)), "XLEN")


def docket_pending_count(keys: TownKeys) -> Op[int]:
    summary = yield (b"XPENDING", keys.docket_tasks, DOCKET_GROUP)
    if isinstance(summary, list) and summary and isinstance(summary[0], int):
        return summary[0]
    return 0


def docket_group_lag(keys: TownKeys) -> Op[int | None]:
    groups = yield (b"XINFO", b"GROUPS", keys.docket_tasks)
    for group in groups or ():
        if not isinstance(group, list):
            continue
        info = dict(zip(group[::2], group[1::2]))
        if info.get(b"name") != DOCKET_GROUP:
            continue
        lag = info.get(b"lag")
        if isinstance(lag, int):
            return lag if lag >= 0 else None
        if isinstance(lag, bytes) and lag.isdigit():
            return int(lag)
        return None  # nil: Redis < 7, or a lag Redis cannot tell
    return None


def docket_log_event(keys: TownKeys, task_id: Any, event_type: object, detail: object) -> Op[str]:
    task = TaskId(task_id)
    event = _text(event_type, "event_type")
    text = _text(detail, "detail")
    entry = yield (b"XADD", keys.docket_events, b"*", b"task_id", task, b"event", event,
                   b"detail", text, b"timestamp", now_rfc3339())
    return _as_str(entry)


def docket_reclaim(keys: TownKeys, consumer: object, min_idle_ms: object,
                   count: object) -> Op[list[tuple[str, dict[str, str]]]]:
    """XAUTOCLAIM (Redis >= 6.2; upstream has no reclaim, spec §9.16): entries
    pending for more than ``min_idle_ms`` in any consumer of the group move to
    ``consumer`` and are returned, up to ``count``, oldest first. Entries
    deleted from the stream meanwhile are dropped from the pending list by
    Redis and not returned."""
    name = _consumer(consumer)
    idle = _count(min_idle_ms, "min_idle_ms", 0)
    wanted = _count(count, "count")
    out: list[tuple[str, dict[str, str]]] = []
    cursor: Any = b"0-0"
    while True:
        reply = yield (b"XAUTOCLAIM", keys.docket_tasks, DOCKET_GROUP, name, idle, cursor,
                       b"COUNT", wanted - len(out))
        cursor, entries = reply[0], reply[1]
        for entry in entries or ():
            if isinstance(entry, list) and len(entry) == 2 and entry[1] is not None:
                out.append((_as_str(entry[0]), _fields(entry[1])))
        # XAUTOCLAIM looks at no more than COUNT*10 pending entries per call:
        # go on from its cursor until it wraps (0-0) or enough came back.
        if cursor in (b"0-0", "0-0") or len(out) >= wanted:
            return out
