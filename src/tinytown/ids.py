"""Agent, message, task and mission ids: UUIDs kept as their canonical text.

Each id is a :class:`str` holding the lowercase hyphenated UUID, exactly as it
appears in Redis keys and JSON, so it can be concatenated into a key or
written into JSON without conversion.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from ._uuid import match_canonical, new_uuid4_text, normalize
from .errors import InvalidArgumentError

__all__ = ["AgentId", "MessageId", "MissionId", "TaskId", "SUPERVISOR_ID"]

_IdT = TypeVar("_IdT", bound="UuidId")

_str_new = str.__new__

SUPERVISOR_ID = "00000000-0000-0000-0000-000000000001"


class UuidId(str):
    """Base of the id types: a str holding a canonical lowercase hyphenated UUID.

    Named by the JSON readers (``tinytown._json``); not part of the public
    API (``__all__``)."""

    __slots__ = ()

    def __new__(cls: type[_IdT], value: Any) -> _IdT:
        if type(value) is cls:
            return value
        if isinstance(value, str):
            if match_canonical(value) is not None:
                return _str_new(cls, value)
            text = normalize(value)
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
        return _str_new(cls, new_uuid4_text())

    @property
    def uuid(self) -> uuid.UUID:
        """The id as a :class:`uuid.UUID`."""
        return uuid.UUID(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{str.__str__(self)}')"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str.__str__(self),))


class AgentId(UuidId):
    """Id of an agent (``tt:<town>:inbox:<id>``, ``tt:<town>:agent:<id>``)."""

    __slots__ = ()

    @classmethod
    def supervisor(cls) -> AgentId:
        """The supervisor's well-known id, ``00000000-0000-0000-0000-000000000001``."""
        return _SUPERVISOR


class MessageId(UuidId):
    """Id of a message (also used as a correlation id)."""

    __slots__ = ()


class TaskId(UuidId):
    """Id of a task (``tt:<town>:task:<id>``)."""

    __slots__ = ()


class MissionId(UuidId):
    """Id of a mission (``tt:<town>:events:mission:<id>``, ``tt:<town>:mission:<id>``)."""

    __slots__ = ()


_SUPERVISOR = AgentId(SUPERVISOR_ID)
