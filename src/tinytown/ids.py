"""Agent, message, task and mission ids: UUIDs kept as their canonical text.

Each id is a :class:`str` holding the lowercase hyphenated UUID, exactly as it
appears in Redis keys and JSON, so it can be concatenated into a key or
written into JSON without conversion.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, TypeVar

from .errors import InvalidArgumentError

__all__ = ["AgentId", "MessageId", "MissionId", "TaskId", "SUPERVISOR_ID"]

_IdT = TypeVar("_IdT", bound="_UuidId")

_canonical = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_simple = re.compile(r"[0-9a-f]{32}").fullmatch
_str_new = str.__new__

SUPERVISOR_ID = "00000000-0000-0000-0000-000000000001"

# Random version-4 UUID texts, made in batches: one getrandom() call, two
# translate() calls for the version and variant bits, and one hex() per batch
# is much cheaper than uuid.uuid4() per id.
_pool: list[str] = []
_BATCH = 128
_SET_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_SET_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _refill() -> None:
    raw = bytearray(os.urandom(16 * _BATCH))
    raw[6::16] = raw[6::16].translate(_SET_VERSION)
    raw[8::16] = raw[8::16].translate(_SET_VARIANT)
    h = raw.hex()
    _pool.extend([
        f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
        for i in range(0, 32 * _BATCH, 32)
    ])


def _new_uuid4_text() -> str:
    try:
        return _pool.pop()
    except IndexError:
        _refill()
        return _pool.pop()


if hasattr(os, "register_at_fork"):
    # A forked child must not hand out the ids its parent also holds.
    os.register_at_fork(after_in_child=_pool.clear)


def _normalize(value: str) -> str | None:
    """Canonical text of a UUID spelled as Rust's ``Uuid::parse_str`` accepts
    (uuid 1.x): 32 hex digits, or hyphenated either bare, ``{braced}`` or
    after a lowercase ``urn:uuid:``; hex digits in either case. None if it
    is not one of those."""
    if not value.isascii():
        return None
    n = len(value)
    if n == 32:
        text = value.lower()
        if _simple(text) is not None:
            return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
        return None
    if n == 38 and value[0] == "{" and value[-1] == "}":
        value = value[1:-1]
    elif n == 45 and value[:9] == "urn:uuid:":
        value = value[9:]
    elif n != 36:
        return None
    text = value.lower()
    return text if _canonical(text) is not None else None


class _UuidId(str):
    """Base of the id types: a str holding a canonical lowercase hyphenated UUID."""

    __slots__ = ()

    def __new__(cls: type[_IdT], value: Any) -> _IdT:
        if type(value) is cls:
            return value
        if isinstance(value, str):
            if _canonical(value) is not None:
                return _str_new(cls, value)
            text = _normalize(value)
            if text is None:
                raise InvalidArgumentError(f"{cls.__name__}: not a UUID: {value!r}")
            return _str_new(cls, text)
        if isinstance(value, uuid.UUID):
            return _str_new(cls, str(value))
        raise InvalidArgumentError(
            f"{cls.__name__}: expected a UUID string or uuid.UUID, got {type(value).__name__}: {value!r}"
        )

    @classmethod
    def new(cls: type[_IdT]) -> _IdT:
        """A new random (version 4) id."""
        return _str_new(cls, _new_uuid4_text())

    @property
    def uuid(self) -> uuid.UUID:
        """The id as a :class:`uuid.UUID`."""
        return uuid.UUID(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{str.__str__(self)}')"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str.__str__(self),))


class AgentId(_UuidId):
    """Id of an agent (``tt:<town>:inbox:<id>``, ``tt:<town>:agent:<id>``)."""

    __slots__ = ()

    @classmethod
    def supervisor(cls) -> AgentId:
        """The supervisor's well-known id, ``00000000-0000-0000-0000-000000000001``."""
        return _SUPERVISOR


class MessageId(_UuidId):
    """Id of a message (also used as a correlation id)."""

    __slots__ = ()


class TaskId(_UuidId):
    """Id of a task (``tt:<town>:task:<id>``)."""

    __slots__ = ()


class MissionId(_UuidId):
    """Id of a mission (``tt:<town>:events:mission:<id>``, ``tt:<town>:mission:<id>``)."""

    __slots__ = ()


_SUPERVISOR = AgentId(SUPERVISOR_ID)
