"""The public docstrings of Channel and SyncChannel keep the project's standard:
each method names the Redis command behind it (or says why there is none) and
has a "Raises" sentence naming the errors it raises. No server needed."""

from __future__ import annotations

import inspect
import re

import pytest

import tinytown
from tinytown import Channel, SyncChannel

# Redis commands a docstring may name (uppercase, as the docs write them).
COMMANDS = frozenset("""
    APPEND AUTH BLMOVE BLPOP CLIENT DEL EVAL EVALSHA EXEC EXISTS EXPIRE GET HDEL
    HELLO HGETALL HINCRBY HMSET HSET LLEN LMOVE LPOP LPUSH LRANGE LREM LTRIM MULTI
    PING PUBLISH PSUBSCRIBE RPUSH SCAN SELECT SET SETEX SUBSCRIBE UNSUBSCRIBE UNBLOCK
    XACK XADD XAUTOCLAIM XGROUP XINFO XLEN XPENDING XRANGE XREADGROUP XREVRANGE
""".split())
COMMAND = re.compile(r"\b(" + "|".join(sorted(COMMANDS)) + r")\b")
NO_COMMAND = re.compile(r"[Nn]o Redis command")
# A "Raises" sentence naming at least one exception class, or saying it raises nothing.
RAISES = re.compile(r"\bRaises\b(?:[^.]|\.(?!\s))*?(\w+Error\b|nothing)", re.S)


def public_methods(cls: type) -> list[str]:
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value):
            names.append(name)
    return sorted(names)


CASES = [(cls, name) for cls in (Channel, SyncChannel) for name in public_methods(cls)]


def test_the_methods_are_found():
    # The check below would pass vacuously if the introspection found nothing.
    names = {name for _, name in CASES}
    assert {"send", "receive", "get_task", "close", "connect"} <= names
    assert len(CASES) > 100


@pytest.mark.parametrize("cls, name", CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_docstring_names_command_and_errors(cls: type, name: str):
    doc = inspect.getdoc(getattr(cls, name)) or ""
    assert doc, f"{cls.__name__}.{name} has no docstring"
    assert COMMAND.search(doc) or NO_COMMAND.search(doc), \
        f"{cls.__name__}.{name}: the docstring names no Redis command (nor says 'no Redis command')"
    match = RAISES.search(doc)
    assert match, f"{cls.__name__}.{name}: no 'Raises' sentence naming an error"
    if match.group(1) != "nothing":
        assert isinstance(getattr(tinytown, match.group(1), None), type), \
            f"{cls.__name__}.{name}: {match.group(1)} is not a tinytown error"


@pytest.mark.parametrize("cls, name", [(c, n) for c, n in CASES
                                       if any(k in p for p in inspect.signature(getattr(c, n)).parameters
                                              for k in ("timeout", "_ms"))])
def test_docstring_gives_time_unit(cls: type, name: str):
    doc = inspect.getdoc(getattr(cls, name)) or ""
    assert re.search(r"second|millisecond|\bms\b|timedelta", doc), f"{cls.__name__}.{name}: no unit"
