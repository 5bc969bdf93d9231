"""A fake Redis for the reply-path tests: it answers with scripted bytes.

A real redis-server only ever sends well-formed replies, one per command;
this server sends whatever a test scripted (valid, nested, truncated, garbage,
too many replies), so that the extension's reply path can be tested against
a misbehaving peer. It speaks on a Unix socket in a temporary directory and
serves one scripted connection at a time, from a thread.

It stands in for a broken server or proxy, not for Redis: tests of Redis
behaviour use real redis-server processes (tests/servers.py).
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tinytown.errors import ReplyError

__all__ = ["FakeRedis", "Script", "RespValue", "random_value", "random_stream", "same_reply"]


@dataclass
class Script:
    """What the fake server does on one connection: wait for the first
    command, send ``chunks`` (pausing ``pause`` seconds between them), then
    close the connection, or keep it open until the client closes it."""

    chunks: list[bytes]
    pause: float = 0.0
    hold: bool = False


class FakeRedis:
    """Serves :class:`Script` s, one per accepted connection, in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.scripts: queue.Queue[Script] = queue.Queue()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                script = self.scripts.get(timeout=5)
                self._play(client, script)
            except (OSError, queue.Empty):
                pass
            finally:
                client.close()

    @staticmethod
    def _play(client: socket.socket, script: Script) -> None:
        client.settimeout(10)
        if not client.recv(65536):
            return  # the client went away before sending a command
        for i, chunk in enumerate(script.chunks):
            if i and script.pause:
                time.sleep(script.pause)
            client.sendall(chunk)
        if script.hold:
            while client.recv(65536):
                pass

    def play(self, *chunks: bytes, pause: float = 0.0, hold: bool = False) -> None:
        """Script the next connection."""
        self.scripts.put(Script(list(chunks), pause, hold))

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)


# ------------------------------------------------------------ RESP generation


@dataclass
class RespValue:
    """One reply: its bytes, the Python value the extension must make of it,
    and ``depth``: the most ``*`` headers (arrays, nil arrays) on one path
    from the top, which is what hiredis limits.

    With RESP3 types (``random_value(..., resp3=True)``): ``strict3`` marks a
    reply holding a double, boolean, map or push, which a RESP2 connection
    never gets and both transports refuse (the connection is dropped);
    ``resp3`` marks one holding any RESP3 type (sets, big numbers, verbatim
    strings and the null ``_`` convert to RESP2 shapes where the parser knows
    them: hiredis 1.x and hiredis-py; hiredis 0.14 refuses them all)."""

    wire: bytes
    value: Any
    depth: int = 0
    children: list[RespValue] = field(default_factory=list)
    strict3: bool = False
    resp3: bool = False


_LINE_CHARS = "abcdefghijklmnopqrstuvwxyzABC 0123456789_:-éß\t"


def _line(rng: random.Random) -> str:
    return "".join(rng.choice(_LINE_CHARS) for _ in range(rng.randrange(0, 12)))


_RESP3_SCALARS = ["double", "bool", "bignum", "verbatim", "null"]
_RESP3_AGGREGATES = ["map", "set", "push"]


def random_value(rng: random.Random, depth: int = 0, *, big: bool = False,
                 resp3: bool = False) -> RespValue:
    """A random well-formed RESP2 reply (arrays up to 10 levels deep); with
    ``resp3``, RESP3 types too."""
    kinds = ["status", "error", "int", "bulk", "nil", "nil_array"]
    if depth < 10:
        kinds += ["array"] * 2
    if resp3:
        kinds += _RESP3_SCALARS + (_RESP3_AGGREGATES if depth < 10 else [])
    kind = rng.choice(kinds)
    if kind in _RESP3_SCALARS or kind in _RESP3_AGGREGATES:
        return _resp3_value(rng, kind, depth, big)
    if kind == "status":
        text = _line(rng)
        return RespValue(b"+" + text.encode() + b"\r\n", text.encode())
    if kind == "error":
        text = "ERR " + _line(rng)
        return RespValue(b"-" + text.encode() + b"\r\n", ReplyError(text))
    if kind == "int":
        n = rng.choice([0, -1, 1, 2**63 - 1, -(2**63), rng.randrange(-(10**12), 10**12)])
        return RespValue(b":%d\r\n" % n, n)
    if kind == "bulk":
        size = rng.choice([0, 1, 5, 100, 70_000]) if big else rng.choice([0, 1, 5, 40])
        data = rng.randbytes(size)  # binary: CR, LF and NUL included
        return RespValue(b"$%d\r\n%s\r\n" % (size, data), data)
    if kind == "nil":
        return RespValue(b"$-1\r\n", None)
    if kind == "nil_array":
        return RespValue(b"*-1\r\n", None, 1)
    items = [random_value(rng, depth + 1, big=big, resp3=resp3) for _ in range(rng.randrange(0, 4))]
    wire = b"*%d\r\n" % len(items) + b"".join(i.wire for i in items)
    return RespValue(wire, [i.value for i in items], 1 + max((i.depth for i in items), default=0),
                     items, any(i.strict3 for i in items), any(i.resp3 for i in items))


def _resp3_value(rng: random.Random, kind: str, depth: int, big: bool) -> RespValue:
    if kind == "double":
        text = rng.choice([b"1.5", b"-0.25", b"3", b"inf", b"-inf", b"1e300"])
        return RespValue(b"," + text + b"\r\n", None, strict3=True, resp3=True)
    if kind == "bool":
        return RespValue(rng.choice([b"#t\r\n", b"#f\r\n"]), None, strict3=True, resp3=True)
    if kind == "bignum":
        digits = str(rng.randrange(10**19, 10**30)).encode()
        return RespValue(b"(" + digits + b"\r\n", digits, resp3=True)
    if kind == "verbatim":
        text = rng.randbytes(rng.choice([0, 1, 5, 40]))
        return RespValue(b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text), text, resp3=True)
    if kind == "null":
        return RespValue(b"_\r\n", None, resp3=True)
    count = rng.randrange(0, 3)
    items = [random_value(rng, depth + 1, big=big, resp3=True)
             for _ in range(count * 2 if kind == "map" else count)]
    marker = {"map": b"%", "set": b"~", "push": b">"}[kind]
    wire = marker + b"%d\r\n" % count + b"".join(i.wire for i in items)
    return RespValue(wire, [i.value for i in items], 1 + max((i.depth for i in items), default=0),
                     items, kind != "set" or any(i.strict3 for i in items), True)


_GARBAGE_ALPHABET = b"+-:$*\r\n0123456789-abc\x00\xff"


def _garbage(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randrange(1, 48))
    return bytes(rng.choice(_GARBAGE_ALPHABET) for _ in range(rng.randrange(1, 48)))


def random_stream(rng: random.Random, *, big: bool = False,
                  resp3: bool = False) -> tuple[str, RespValue, bytes]:
    """``(mode, first_reply, stream)``: what the fake server sends for one command.

    Modes: ``valid`` (exactly one reply), ``truncated`` (a reply cut short),
    ``extra`` (one reply, then more bytes: another reply or garbage),
    ``mutated`` (a reply with a few bytes changed), ``garbage`` (random bytes).
    """
    first = random_value(rng, big=big, resp3=resp3)
    mode = rng.choice(["valid", "valid", "truncated", "extra", "mutated", "garbage"])
    if mode == "valid":
        stream = first.wire
    elif mode == "truncated":
        stream = first.wire[: rng.randrange(0, len(first.wire))]
    elif mode == "extra":
        stream = first.wire + (random_value(rng, resp3=resp3).wire if rng.random() < 0.6
                               else _garbage(rng))
    elif mode == "mutated":
        data = bytearray(first.wire)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(_GARBAGE_ALPHABET)
        stream = bytes(data)
    else:
        stream = _garbage(rng)
    return mode, first, stream


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` in 1 to 4 pieces, so that replies also arrive across reads."""
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(0, 4)))
    pieces, start = [], 0
    for cut in cuts + [len(data)]:
        pieces.append(data[start:cut])
        start = cut
    return [p for p in pieces if p] or [b""]


def same_reply(got: Any, want: Any) -> bool:
    """Equality of converted replies, ReplyError instances compared by text."""
    if isinstance(want, ReplyError):
        return type(got) is ReplyError and str(got) == str(want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            same_reply(g, w) for g, w in zip(got, want))
    return type(got) is type(want) and got == want


def is_reply_value(value: Any) -> bool:
    """True if ``value`` is something the extension may return for a reply."""
    if value is None or type(value) in (bytes, int, ReplyError):
        return True
    return type(value) is list and all(is_reply_value(v) for v in value)
