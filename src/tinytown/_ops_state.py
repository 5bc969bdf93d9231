"""Agent and task state operations of Tinytown 0.10's Channel, in both layouts,
as sans-I/O generators (see :mod:`tinytown._ops`).

Layouts: ``"hash"`` (Tinytown 0.7-0.10 as released: each agent and task is
a Redis Hash, spec section 6) and ``"json"`` (the Channels page: one JSON
string per key). Writes use the channel's layout and replace a key holding
the other one in a single atomic step; reads accept both.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from ._commands import check_agent, check_task, decode_agent, decode_task, is_wrongtype, too_big
from ._ops import Command, Op, Pipeline
from .agent import Agent
from .errors import (
    AgentNotFoundError,
    AmbiguousAgentRefError,
    DecodeError,
    EncodeError,
    InvalidArgumentError,
    ReplyError,
)
from .ids import AgentId, TaskId
from .keys import TownKeys
from .task import Task
from .timestamp import Timestamp

log = logging.getLogger("tinytown")

LAYOUTS = ("hash", "json")
U64_MAX = 2**64 - 1
# SCAN's COUNT, as Tinytown's reset uses; DEL takes at most this many keys at once.
SCAN_COUNT = 100
DEL_BATCH = 1000

_S = TypeVar("_S", Agent, Task)


def check_layout(layout: object) -> str:
    """``layout`` if it is ``"hash"`` or ``"json"``, else InvalidArgumentError."""
    if layout not in LAYOUTS or not isinstance(layout, str):
        raise InvalidArgumentError(f"layout must be 'hash' or 'json', not {layout!r}")
    return layout


# -- writing state -------------------------------------------------------------

def _hash_fields(value: Agent | Task) -> tuple[list[bytes], list[bytes]]:
    """``(hdel, pairs)``: the optional fields to delete and the flat field/value
    list to HMSET, in Tinytown's order, values byte for byte (spec section 6)."""
    return value.hash_fields()


def set_agent_state(keys: TownKeys, layout: str, agent: Agent, max_bytes: int | None) -> Op[None]:
    key = keys.agent_prefix + AgentId(check_agent(agent).id)
    return (yield from _set_state(key, layout, agent, max_bytes, "agent state"))


def set_task(keys: TownKeys, layout: str, task: Task, max_bytes: int | None) -> Op[None]:
    key = keys.task_prefix + TaskId(check_task(task).id)
    return (yield from _set_state(key, layout, task, max_bytes, "task"))


def _set_state(key: str, layout: str, value: Agent | Task, max_bytes: int | None,
               what: str) -> Op[None]:
    if layout == "json":
        payload = value.to_json()
        if max_bytes is not None and len(payload) > max_bytes:
            raise too_big(what, payload, max_bytes)
        # SET replaces a key of any type, atomically.
        yield (b"SET", key, payload)
        return
    hdel, pairs = _hash_fields(value)
    if max_bytes is not None:
        size = sum(map(len, pairs))
        if size > max_bytes:
            raise InvalidArgumentError(
                f"the {what} is {size} bytes of Hash fields, more than max_message_bytes="
                f"{max_bytes} (see Channel.connect); nothing was written")
    hmset = (b"HMSET", key, *pairs)
    txn: list[Command] = [(b"MULTI",)]
    if hdel:
        txn.append((b"HDEL", key, *hdel))
    txn += [hmset, (b"EXEC",)]
    done = (yield txn)[-1]
    errors = [r for r in done if isinstance(r, ReplyError)]
    if not errors:
        return
    if not all(is_wrongtype(e) for e in errors):
        raise errors[0]
    # The key holds the JSON layout (a String): both commands failed, nothing
    # changed. Replace it in one step.
    done = (yield [(b"MULTI",), (b"DEL", key), hmset, (b"EXEC",)])[-1]
    for reply in done:
        if isinstance(reply, ReplyError):
            raise reply


# -- reading state -------------------------------------------------------------

def get_state(layout: str, key: str) -> Op[bytes | list[bytes] | None]:
    """The raw state at ``key``: a GET reply (bytes), an HGETALL reply (a flat
    list) or None. The layout's own type is tried first."""
    first, second = (b"HGETALL", b"GET") if layout == "hash" else (b"GET", b"HGETALL")
    try:
        return (yield (first, key))  # type: ignore[no-any-return]
    except ReplyError as exc:
        if not is_wrongtype(exc):
            raise
    return (yield (second, key))  # type: ignore[no-any-return]


def get_agent_state(keys: TownKeys, layout: str, agent_id: Any) -> Op[Agent | None]:
    key = keys.agent_prefix + AgentId(agent_id)
    return decode_agent((yield from get_state(layout, key)))


def get_task(keys: TownKeys, layout: str, task_id: Any) -> Op[Task | None]:
    key = keys.task_prefix + TaskId(task_id)
    return decode_task((yield from get_state(layout, key)))


# -- scanning ------------------------------------------------------------------

_GLOB = re.compile(rb"([*?\[\]\\])")
_UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What follows ``tt:<town>:`` in every key a town's Channel (Tinytown's or
# this package's) writes, plus Tinytown's mission keys. A town's name may
# contain ':' in Rust, so ``tt:golden:*`` also matches town ``golden:sub``'s
# keys; only these shapes are this town's.
_TOWN_KEY = re.compile(
    rb"(?:agent|inbox|urgent|activity|stop|task|dead|processing|events:agent|events:mission)"
    rb":" + _UUID + rb"|backlog|docket:tasks|docket:events|events|mission:active"
    rb"|mission:" + _UUID + rb"(?::work|:watch|:events|:control|:dispatch_lock)?")
_AGENT_KINDS = (b"agent", b"inbox", b"urgent", b"stop", b"activity", b"dead", b"processing")
_ID_KEY = re.compile(_UUID)


def glob_escape(text: bytes) -> bytes:
    """``text`` with Redis glob characters (``* ? [ ] \\``) escaped."""
    return _GLOB.sub(rb"\\\1", text)


def scan(pattern: bytes) -> Op[list[bytes]]:
    """Every key matching ``pattern``: ``SCAN <cursor> MATCH <pattern> COUNT 100``
    until the cursor is 0; duplicates removed, first-seen order."""
    found: dict[bytes, None] = {}
    cursor: bytes = b"0"
    while True:
        cursor, batch = yield (b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT)
        found.update(dict.fromkeys(batch))
        if cursor == b"0":
            return list(found)


def _scan_ids(prefix: str) -> Op[list[bytes]]:
    """Keys ``<prefix><uuid>`` (canonical lowercase UUID only)."""
    raw = prefix.encode()
    keys = yield from scan(glob_escape(raw) + b"*")
    return [k for k in keys if k.startswith(raw) and _ID_KEY.fullmatch(k, len(raw))]


def _list_states(prefix: str, layout: str, decode: Callable[[Any], _S | None],
                 what: str) -> Op[list[_S]]:
    keys = yield from _scan_ids(prefix)
    if not keys:
        return []
    first, second = (b"HGETALL", b"GET") if layout == "hash" else (b"GET", b"HGETALL")
    replies = yield Pipeline((first, k) for k in keys)
    retry = [i for i, r in enumerate(replies) if isinstance(r, ReplyError) and is_wrongtype(r)]
    if retry:
        again = yield Pipeline((second, keys[i]) for i in retry)
        for i, reply in zip(retry, again):
            replies[i] = reply
    out: list[_S] = []
    for key, reply in zip(keys, replies):
        if isinstance(reply, ReplyError):
            log.warning("tinytown: %s: skipped %r: %s", what, key, reply)
            continue
        try:
            value = decode(reply)
        except DecodeError as exc:
            log.warning("tinytown: %s: skipped %r, which is not a valid %s: %s",
                        what, key, what.split("_")[-1][:-1], exc)
            continue
        if value is not None:
            out.append(value)
    return out


def list_agents(keys: TownKeys, layout: str) -> Op[list[Agent]]:
    return (yield from _list_states(keys.agent_prefix, layout, decode_agent, "list_agents"))


def list_tasks(keys: TownKeys, layout: str) -> Op[list[Task]]:
    return (yield from _list_states(keys.task_prefix, layout, decode_task, "list_tasks"))


def get_agent_by_name(keys: TownKeys, layout: str, name: str) -> Op[Agent | None]:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"get_agent_by_name() takes a str, not {type(name).__name__}")
    for agent in (yield from list_agents(keys, layout)):
        if agent.name == name:
            return agent
    return None


# Unicode White_Space, which Rust's str::trim removes (str.strip() would
# also remove U+001C..U+001F).
_RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _ascii_fold(text: str) -> bytes:
    # eq_ignore_ascii_case: only A-Z fold; bytes.lower() touches ASCII only.
    return text.encode("utf-8", "surrogatepass").lower()


def display_name(agent: Agent) -> str:
    """Tinytown's ``Agent::display_name``: the nickname, else the name."""
    return agent.nickname if agent.nickname is not None else agent.name


def display_label(agent: Agent) -> str:
    """Tinytown's ``Agent::display_label``: ``"<display name> [<role>]"``, with
    the agent's name in place of the role when the role is ``default``."""
    role = agent.role_id if agent.role_id is not None else "default"
    return f"{display_name(agent)} [{agent.name if role == 'default' else role}]"


def resolve_agent_ref(keys: TownKeys, layout: str, ref: str) -> Op[Agent | None]:
    if not isinstance(ref, str):
        raise InvalidArgumentError(f"resolve_agent_ref() takes a str, not {type(ref).__name__}")
    ref = ref.strip(_RUST_WHITESPACE)
    if not ref:
        return None
    try:
        agent_id = AgentId(ref)
    except InvalidArgumentError:
        pass
    else:
        return (yield from get_agent_state(keys, layout, agent_id))
    want = _ascii_fold(ref)
    matches = [agent for agent in (yield from list_agents(keys, layout))
               if _ascii_fold(agent.name) == want
               or _ascii_fold(display_name(agent)) == want
               or _ascii_fold(display_label(agent)) == want
               or _ascii_fold(agent.id[:4]) == want]
    if not matches:
        return None
    if len(matches) > 1:
        labels = ", ".join(f"{display_label(a)} ({a.id[:4]})" for a in matches)
        raise AmbiguousAgentRefError(f"Agent reference {ref!r} is ambiguous: {labels}", matches)
    return matches[0]


# -- deleting ------------------------------------------------------------------

def delete_agent(keys: TownKeys, agent_id: Any) -> Op[None]:
    agent = AgentId(agent_id)
    # Tinytown's five DELs, in its order, in one write.
    yield [(b"DEL", keys.agent(agent)), (b"DEL", keys.inbox(agent)), (b"DEL", keys.urgent(agent)),
           (b"DEL", keys.activity(agent)), (b"DEL", keys.stop(agent))]


def delete_task(keys: TownKeys, task_id: Any) -> Op[bool]:
    deleted: int = yield (b"DEL", keys.task(TaskId(task_id)))
    return deleted > 0


def _delete(keys: list[bytes]) -> Op[int]:
    deleted = 0
    for start in range(0, len(keys), DEL_BATCH):
        deleted += yield (b"DEL", *keys[start:start + DEL_BATCH])
    return deleted


def reset_all(keys: TownKeys) -> Op[int]:
    prefix = keys.prefix.encode()
    found = yield from scan(glob_escape(prefix) + b"*")
    return (yield from _delete([k for k in found
                                if k.startswith(prefix) and _TOWN_KEY.fullmatch(k, len(prefix))]))


def reset_agents_only(keys: TownKeys) -> Op[int]:
    prefix = keys.prefix.encode()
    found: list[bytes] = []
    for kind in _AGENT_KINDS:
        found += yield from _scan_ids(prefix.decode() + kind.decode() + ":")
    return (yield from _delete(found))


# -- single-field updates of an existing agent ---------------------------------

# Compare-and-set of one agent, in either layout, atomically. KEYS[1]: the
# agent key. ARGV: the type the client read ('hash' or 'string'; 'hash?':
# nothing was read, write the field if the key is a Hash, answer 2 if it is a
# String), the field (hash), what to check ('none', 'value' or 'absent'; a
# string is always compared whole), the value read, the value to write.
# Returns 1 if written, 0 if the key changed since it was read (the client
# reads again) or is gone (or, for 'hash?', is absent or has no id).
CAS_SCRIPT = b"""
local k = KEYS[1]
local t = redis.call('TYPE', k)['ok']
local want = ARGV[1]
if want == 'hash?' then
  if t == 'string' then return 2 end
  want = 'hash'
end
if t ~= want then return 0 end
if t == 'hash' then
  if redis.call('HEXISTS', k, 'id') == 0 then return 0 end
  local cur = redis.call('HGET', k, ARGV[2])
  if ARGV[3] == 'value' and cur ~= ARGV[4] then return 0 end
  if ARGV[3] == 'absent' and cur ~= false then return 0 end
  redis.call('HSET', k, ARGV[2], ARGV[5])
  return 1
end
if redis.call('GET', k) ~= ARGV[4] then return 0 end
redis.call('SET', k, ARGV[5])
return 1
"""

CAS_SHA = hashlib.sha1(CAS_SCRIPT).hexdigest().encode()


def _cas(key: str, *args: bytes) -> Op[int]:
    """Run CAS_SCRIPT (EVALSHA; EVAL once if the server does not have it yet)."""
    try:
        return (yield (b"EVALSHA", CAS_SHA, 1, key, *args))  # type: ignore[no-any-return]
    except ReplyError as exc:
        if not str(exc).startswith("NOSCRIPT"):
            raise
    return (yield (b"EVAL", CAS_SCRIPT, 1, key, *args))  # type: ignore[no-any-return]


_RUST_U64 = re.compile(rb"\+?[0-9]+")


def rust_u64(raw: bytes | None) -> int:
    """A Hash counter as Tinytown's reader reads it (``str::parse::<u64>``, 0 on failure)."""
    if raw is None or not _RUST_U64.fullmatch(raw):
        return 0
    value = int(raw)
    return value if value <= U64_MAX else 0


def _hash_ts(ts: Timestamp) -> str:
    """A timestamp as Tinytown writes it in a Hash (``+00:00``, not ``Z``)."""
    return ts.to_rfc3339()


@overload
def update_agent(keys: TownKeys, layout: str, agent_id: Any, field: str,
                 counter: Literal[True]) -> Op[int]: ...
@overload
def update_agent(keys: TownKeys, layout: str, agent_id: Any, field: str,
                 counter: Literal[False]) -> Op[None]: ...
def update_agent(keys: TownKeys, layout: str, agent_id: Any, field: str,
                 counter: bool) -> Op[int | None]:
    """Add 1 to the counter ``field`` (``counter``) or set ``last_heartbeat``
    to now, on an existing agent of either layout; the new counter value."""
    agent = AgentId(agent_id)
    key = keys.agent_prefix + agent
    name = field.encode()
    if not counter and layout == "hash":
        # One round trip for a Hash: nothing to read first.
        done = yield from _cas(key, b"hash?", name, b"none", b"",
                               _hash_ts(Timestamp.now()).encode())
        if done == 1:
            return None
        # 2: a JSON agent: read, modify, compare-and-set below. 0: no agent
        # Hash; the read below tells "not found" from a key of another type
        # (WRONGTYPE, as the counters answer), off the hot path.
    while True:
        raw = yield from get_state(layout, key)
        if isinstance(raw, list):
            fields = dict(zip(raw[::2], raw[1::2]))
            if b"id" not in fields:
                raise AgentNotFoundError(f"Agent not found: {agent}", agent)
            if counter:
                old = fields.get(name)
                value = rust_u64(old) + 1
                if value > U64_MAX:
                    raise EncodeError(f"Agent.{field} of {agent} is 2**64-1 and cannot grow")
                new = str(value).encode()
                check = (b"absent", b"") if old is None else (b"value", old)
            else:
                value = None
                new = _hash_ts(Timestamp.now()).encode()
                check = (b"none", b"")
            args = (b"hash", name, *check, new)
        elif raw is None:
            raise AgentNotFoundError(f"Agent not found: {agent}", agent)
        else:
            state = Agent.from_json(raw)
            if counter:
                value = getattr(state, field) + 1
                if value > U64_MAX:
                    raise EncodeError(f"Agent.{field} of {agent} is 2**64-1 and cannot grow")
                setattr(state, field, value)
            else:
                value = None
                state.last_heartbeat = Timestamp.now()
            args = (b"string", b"", b"value", raw, state.to_json())
        if (yield from _cas(key, *args)) == 1:
            return value
        # Changed between the read and the write: read it again.
