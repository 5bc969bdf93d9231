"""Reading Redis MONITOR output for ``tinytown monitor``.

MONITOR prints each command a server runs as one status line::

    1700000000.123456 [0 unix:/path/redis.sock] "RPUSH" "tt:town:inbox:<id>" "{\\"id\\":...}"

with every argument quoted the way Redis's ``sdscatrepr`` quotes: ``\\\\``,
``\\"``, ``\\n``, ``\\r``, ``\\t``, ``\\a``, ``\\b`` and ``\\xHH`` for other
bytes. :func:`parse_line` turns it back into bytes; :func:`events` keeps the
commands that touch one town (its ``tt:<town>:`` keys and ``tt:broadcast``)
and decodes the messages and state they carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class MonitorLine:
    """One command as MONITOR reported it."""

    time: float
    client: str
    args: list[bytes]


@dataclass
class Event:
    """One operation on the town, ready to print."""

    time: float
    command: str
    key: str                 # the key (or channel) without the "tt:<town>:" prefix
    message: Message | None = None
    state: Agent | Task | None = None
    detail: str = ""         # undecodable payloads, other arguments

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (messages and state as their wire JSON objects)."""
        out: dict[str, Any] = {"time": self.time, "command": self.command, "key": self.key}
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


def events(line: MonitorLine, town: str) -> list[Event]:
    """The operations of ``line`` on ``town`` (none if it touches other keys only).

    A push of several messages gives one event per message.
    """
    prefix = f"tt:{town}:".encode()
    args = line.args
    command = args[0].decode(errors="replace").upper()
    verb = command.encode()
    if verb == b"PUBLISH" and len(args) >= 3 and args[1] == _BROADCAST:
        return [_with_payload(line.time, command, BROADCAST_CHANNEL, args[2], Message)]
    if verb in (b"SUBSCRIBE", b"UNSUBSCRIBE") and _BROADCAST in args[1:]:
        return [Event(line.time, command, BROADCAST_CHANNEL)]
    keys = [a for a in args[1:] if a.startswith(prefix)]
    if not keys:
        return []
    key = keys[0][len(prefix):].decode(errors="replace")
    if verb in _PUSHES and len(args) >= 3 and args[1].startswith(prefix):
        return [_with_payload(line.time, command, key, raw, Message) for raw in args[2:]]
    if verb == b"SET" and len(args) >= 3 and args[1].startswith(prefix):
        kind = Agent if key.startswith("agent:") else Task if key.startswith("task:") else None
        if kind is not None:
            return [_with_payload(line.time, command, key, args[2], kind)]
    others = [a.decode(errors="replace") for a in args[1:] if not a.startswith(prefix)]
    detail = " ".join(others)
    if len(keys) > 1:
        detail = " ".join([k[len(prefix):].decode(errors="replace") for k in keys[1:]] + others)
    return [Event(line.time, command, key, detail=detail)]


def _with_payload(when: float, command: str, key: str, raw: bytes, kind: Any) -> Event:
    try:
        value = kind.from_json(raw)
    except DecodeError:
        return Event(when, command, key, detail="undecodable: " + raw[:200].decode(errors="replace"))
    if kind is Message:
        return Event(when, command, key, message=value)
    return Event(when, command, key, state=value)
