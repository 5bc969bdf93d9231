"""RESP encoding of commands, with the argument rules of the hiredis extension.

Used by the pure-Python transport to write commands, and by the cluster
router to reject bad arguments before it waits for a node connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import EncodeError, InvalidArgumentError

__all__ = ["coerce_arg", "encode_command"]

_CRLF = b"\r\n"


def coerce_arg(arg: object) -> bytes:
    """Bytes for an argument that is neither bytes nor str.

    The one statement of which other types a command takes; the hiredis
    extension calls it too (only for such arguments, off its fast path).
    """
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, bool):
        raise InvalidArgumentError("cannot send a bool to Redis; send 0/1 or text")
    if isinstance(arg, (int, float)):
        return repr(arg).encode("ascii")
    raise InvalidArgumentError(
        f"cannot send a {type(arg).__name__} to Redis; send bytes, str, int or float")


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings.

    Raises :class:`InvalidArgumentError` for an empty command or an argument
    of another type, :class:`EncodeError` for a str that is not valid UTF-8
    (a lone surrogate).
    """
    if not args:
        raise InvalidArgumentError("empty Redis command")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for i, arg in enumerate(args):
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif isinstance(arg, str):
            try:
                data = arg.encode()
            except UnicodeEncodeError as exc:
                raise EncodeError(f"argument {i} is not encodable as UTF-8: {exc}") from None
        else:
            data = coerce_arg(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(_CRLF)
    return b"".join(parts)
