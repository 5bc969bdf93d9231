"""Reading Redis MONITOR output for ``tinytown monitor``.

MONITOR prints each command a server runs as one status line::

    1700000000.123456 [0 unix:/path/redis.sock] "RPUSH" "tt:town:inbox:<id>" "{\\"id\\":...}"

with every argument quoted the way Redis's ``sdscatrepr`` quotes: ``\\\\``,
``\\"``, ``\\n``, ``\\r``, ``\\t``, ``\\a``, ``\\b`` and ``\\xHH`` for other
bytes. :func:`parse_line` turns it back into bytes; :func:`events` keeps the
commands that touch one town (its ``tt:<town>:`` keys, ``tt:broadcast`` and
``tt:<town>:broadcast``) and decodes the messages and state they carry. Reads
(GET, LLEN, SCAN...: other ``tinytown`` commands' lookups, among others) are
left out unless asked for, so that the traffic that changes the town shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from datetime import datetime, timezone

from .agent import Agent
from .errors import DecodeError
from .keys import BROADCAST_CHANNEL
from .message import Message
from .task import Task

__all__ = ["MonitorLine", "Event", "parse_line", "events"]

_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8,
            ord("\\"): 92, ord('"'): 34}
_BROADCAST = BROADCAST_CHANNEL.encode()
_PUSHES = (b"LPUSH", b"RPUSH", b"LPUSHX", b"RPUSHX")
_HASH_WRITES = (b"HSET", b"HMSET")
#: Commands that only read: left out of :func:`events` unless ``reads=True``.
READS = frozenset(c.encode() for c in (
    "GET", "MGET", "STRLEN", "EXISTS", "TYPE", "TTL", "PTTL", "HGET", "HGETALL", "HMGET",
    "HKEYS", "HVALS", "HLEN", "HEXISTS", "LLEN", "LRANGE", "LINDEX", "LPOS", "SCAN", "KEYS",
    "XRANGE", "XREVRANGE", "XLEN", "XREAD", "XINFO", "XPENDING", "SMEMBERS", "SCARD",
    "SISMEMBER", "ZRANGE", "ZCARD", "DBSIZE", "INFO", "PING", "ECHO", "SELECT", "AUTH",
    "HELLO", "CLIENT", "OBJECT", "MEMORY", "DUMP", "COMMAND", "CONFIG", "MONITOR"))


@dataclass(frozen=True)
class MonitorLine:
    """One command as MONITOR reported it."""

    time: float
    client: str
    args: list[bytes]


@dataclass
class Event:
    """One operation on the town, ready to print."""

    time: float              # Unix seconds, as MONITOR gives it
    command: str
    key: str                 # the full key (or channel), "" when the command names none first
    message: Message | None = None
    state: Agent | Task | None = None
    detail: str = ""         # undecodable payloads, the other arguments in order

    @property
    def iso_time(self) -> str:
        """The time as ISO 8601 in UTC with microseconds (``...T01:02:03.123456Z``)."""
        stamp = datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="microseconds")
        return stamp.replace("+00:00", "Z")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``time`` in ISO 8601, the full key, messages and
        state as their wire JSON objects."""
        out: dict[str, Any] = {"time": self.iso_time, "command": self.command, "key": self.key}
        if self.message is not None:
            out["message"] = json.loads(self.message.to_json())
        if self.state is not None:
            out["state"] = json.loads(self.state.to_json())
        if self.detail:
            out["detail"] = self.detail
        return out


def parse_line(line: bytes) -> MonitorLine | None:
    """Parse one MONITOR line; None for anything else (the initial +OK)."""
    stamp, _, rest = line.partition(b" ")
    try:
        when = float(stamp)
    except ValueError:
        return None
    if not rest.startswith(b"["):
        return None
    end = rest.find(b'] "')
    if end < 0:
        return None
    client = rest[1:end].decode(errors="replace")
    try:
        args = _unquote_all(rest[end + 2:])
    except ValueError:
        return None
    return MonitorLine(when, client, args) if args else None


def _unquote_all(text: bytes) -> list[bytes]:
    args: list[bytes] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == 32:        # the space between arguments
            i += 1
            continue
        if text[i] != 34:        # '"'
            raise ValueError("unquoted MONITOR argument")
        i += 1
        out = bytearray()
        while True:
            if i >= n:
                raise ValueError("unterminated MONITOR argument")
            c = text[i]
            if c == 34:
                i += 1
                break
            if c == 92 and i + 1 < n:    # backslash
                e = text[i + 1]
                if e == ord("x") and i + 3 < n:
                    out.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                out.append(_ESCAPES.get(e, e))
                i += 2
                continue
            out.append(c)
            i += 1
        args.append(bytes(out))
    return args


def events(line: MonitorLine, town: str, *, reads: bool = False) -> list[Event]:
    """The operations of ``line`` on ``town`` (none if it touches other keys only).

    A push of several messages gives one event per message. Commands that
    only read are left out unless ``reads`` is true.
    """
    prefix = f"tt:{town}:".encode()
    args = line.args
    verb = args[0].upper()
    command = verb.decode(errors="replace")
    if not reads and verb in READS:
        return []
    channels = (_BROADCAST, prefix + b"broadcast")
    if verb == b"PUBLISH" and len(args) >= 3 and args[1] in channels:
        return [_with_payload(line.time, command, args[1].decode(), args[2], Message)]
    if verb in (b"SUBSCRIBE", b"UNSUBSCRIBE") and any(c in args[1:] for c in channels):
        return [Event(line.time, command, " ".join(a.decode(errors="replace") for a in args[1:]))]
    if not any(a.startswith(prefix) for a in args[1:]):
        return []
    first = len(args) >= 2 and args[1].startswith(prefix)
    key = args[1].decode(errors="replace") if first else ""
    if first and verb in _PUSHES and len(args) >= 3:
        return [_with_payload(line.time, command, key, raw, Message) for raw in args[2:]]
    kind = Agent if key.startswith(f"tt:{town}:agent:") else Task if key.startswith(f"tt:{town}:task:") else None
    if first and kind is not None and verb == b"SET" and len(args) >= 3:
        return [_with_payload(line.time, command, key, args[2], kind)]
    if first and kind is not None and verb in _HASH_WRITES and len(args) >= 4 and len(args) % 2 == 0:
        pairs = dict(zip(args[2::2], args[3::2]))
        whole = b"id" in pairs and (b"name" if kind is Agent else b"description") in pairs
        if whole:   # a whole state (set_agent_state/set_task), not one field
            try:
                return [Event(line.time, command, key, state=kind.from_hash(pairs))]
            except (DecodeError, ValueError):
                pass
    # Anything else: the arguments in the order they were given.
    rest = args[2:] if first else args[1:]
    return [Event(line.time, command, key, detail=" ".join(_show(a) for a in rest))]


def _show(arg: bytes) -> str:
    text = arg.decode(errors="replace")
    if len(text) > 120:
        text = text[:119] + "…"
    return text if text and not any(c.isspace() for c in text) else json.dumps(text, ensure_ascii=False)


def _with_payload(when: float, command: str, key: str, raw: bytes, kind: Any) -> Event:
    try:
        value = kind.from_json(raw)
    except DecodeError:
        return Event(when, command, key, detail="undecodable: " + raw[:200].decode(errors="replace"))
    if kind is Message:
        return Event(when, command, key, message=value)
    return Event(when, command, key, state=value)
