"""RESP encoding of commands, with the argument rules of the hiredis extension.

Used by the pure-Python transport to write commands, by the cluster router to
reject bad arguments before it waits for a node connection, and by the code
that speaks to a redis-server without a transport: the managed town
(:func:`encode_command`) and the benchmark's servers (:func:`call`).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from ..errors import ConnectionError, EncodeError, InvalidArgumentError, ReplyError

__all__ = ["MAX_COMMAND_BYTES", "PLAIN_NAMES", "RESP2_SCALARS", "call", "check_args", "check_command", "coerce_arg",
           "command_bytes", "encode_command", "resp2_shaped"]

_CRLF = b"\r\n"

# A command must stay under this many bytes on the wire (2 GiB - 64 KiB):
# hiredis 0.14 sizes a formatted command with an int. The extension has the
# same limit (TT_MAX_COMMAND_BYTES in ext/tt_misuse.h).
MAX_COMMAND_BYTES = 2**31 - 2**16

# Commands that change a connection's protocol state, refused by both
# transports' execute/execute_many (ext/tt_misuse.h has the same table).
_REFUSED_ALWAYS = frozenset([
    b"QUIT", b"RESET", b"MONITOR", b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE",
    b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE"])
_REFUSED_LENGTHS = frozenset([4, 5, 6, 7, 9, 10, 11, 12])
# Command names (bytes or str, as given) that check_command found fine
# whatever their arguments: the next check is one set lookup. Bounded.
PLAIN_NAMES: set[bytes | str] = set()
_PLAIN_NAMES_MAX = 4096


def coerce_arg(arg: object) -> bytes:
    """Bytes for an argument that is neither bytes nor str.

    The one statement of which other types a command takes; the hiredis
    extension calls it too (only for such arguments, off its fast path).
    """
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, bool):
        raise InvalidArgumentError("cannot send a bool to Redis; send 0/1 or text")
    # int.__repr__/float.__repr__, not repr(): an IntEnum (or any subclass) is
    # sent as its number, and no code of the subclass runs.
    if isinstance(arg, int):
        return int.__repr__(arg).encode("ascii")
    if isinstance(arg, float):
        return float.__repr__(arg).encode("ascii")
    raise InvalidArgumentError(
        f"cannot send a {type(arg).__name__} to Redis; send bytes, str, int or float")


def _arg_bytes(arg: object) -> bytes:
    if type(arg) is bytes:
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8", "surrogatepass")
    return coerce_arg(arg)


def _word(arg: object) -> bytes:
    return _arg_bytes(arg).upper()  # bytes.upper(): ASCII only, as Redis compares


def check_command(args: Sequence[Any]) -> None:
    """Raise :class:`InvalidArgumentError` if ``args`` is a command that would
    change the connection's protocol state: the SUBSCRIBE family, MONITOR,
    RESET, QUIT, HELLO with a protocol version other than 2, CLIENT REPLY
    OFF/SKIP. (Cheap for every other command: one length test.)"""
    if not args:
        return
    name = args[0]
    kind = type(name)
    if (kind is bytes or kind is str) and name in PLAIN_NAMES:
        return
    if isinstance(name, (bytes, str)) and len(name) not in _REFUSED_LENGTHS:
        return
    word = _word(name)
    what = None
    if word in _REFUSED_ALWAYS:
        what = word.decode()
    elif word == b"HELLO" and len(args) >= 2 and _arg_bytes(args[1]) != b"2":
        what = "HELLO with a protocol version other than 2"
    elif word == b"CLIENT" and len(args) >= 3 and _word(args[1]) == b"REPLY" \
            and _word(args[2]) in (b"OFF", b"SKIP"):
        what = "CLIENT REPLY OFF/SKIP"
    if what is None:
        if (kind is bytes or kind is str) and word not in (b"HELLO", b"CLIENT") \
                and len(PLAIN_NAMES) < _PLAIN_NAMES_MAX:
            PLAIN_NAMES.add(name)
        return
    if what is not None:
        raise InvalidArgumentError(
            f"{what} cannot be sent on a tinytown connection: it changes the connection's "
            "protocol state (pub/sub or MONITOR mode, RESP3, replies off, reset, quit), "
            "which would desynchronise or crash it. Use Channel.broadcasts() to "
            "subscribe, close() to disconnect, `tinytown monitor` to watch commands.")


def _too_big() -> None:
    raise InvalidArgumentError(
        f"this Redis command would be {MAX_COMMAND_BYTES} bytes or more on the wire "
        "(2 GiB - 64 KiB, the most a command may take); nothing was sent: split it "
        "(e.g. fewer messages per send_many)")


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings.

    Raises :class:`InvalidArgumentError` for an empty command, an argument
    of another type or a command of :data:`MAX_COMMAND_BYTES` or more,
    :class:`EncodeError` for a str that is not valid UTF-8 (a lone surrogate).
    """
    # Not hiredis.pack_command: it is faster on small commands but 30 to 200
    # times slower on arguments of 1 MiB or more (benches/pack_command.py).
    if not args:
        raise InvalidArgumentError("empty Redis command")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    # The size, as ext/tt_misuse.h counts it (at least the wire size), is
    # only added up when it may matter: for arguments over 64 KiB, plus a
    # bound for the others (one test per argument on the hot path).
    big = 0
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
        n = len(data)
        if n > 65536:
            big += n
            if big >= MAX_COMMAND_BYTES:  # (stop before encoding the rest)
                _too_big()
        append(b"$%d\r\n" % n)
        append(data)
        append(_CRLF)
    if big + 65560 * len(args) + 16 >= MAX_COMMAND_BYTES \
            and 16 + sum(len(p) + 24 for p in parts[2::3]) >= MAX_COMMAND_BYTES:
        _too_big()
    return b"".join(parts)


def command_bytes(args: Sequence[Any]) -> int:
    """About the bytes of ``args`` on the wire (an estimate for wait_writable)."""
    n = 16 * len(args)
    for a in args:  # (a loop, not sum() of a generator: a third of the time)
        n += len(a) if isinstance(a, (bytes, str)) else 20
    return n


def check_args(args: Sequence[Any]) -> None:
    """Raise what :func:`encode_command` raises for ``args``, without building
    the command: ASCII text and bytes are only measured (a caller checking
    its command before it waits for backpressure; encoding a 1 KiB command
    costs several times this)."""
    if not args:
        raise InvalidArgumentError("empty Redis command")
    big = 0
    for i, arg in enumerate(args):
        if type(arg) is bytes:
            n = len(arg)
        elif isinstance(arg, str):
            if arg.isascii():   # O(1): no surrogate possible, UTF-8 as long as the text
                n = len(arg)
            else:
                try:
                    n = len(arg.encode())
                except UnicodeEncodeError as exc:
                    raise EncodeError(f"argument {i} is not encodable as UTF-8: {exc}") from None
        else:
            n = len(coerce_arg(arg))
        if n > 65536:
            big += n
            if big >= MAX_COMMAND_BYTES:
                _too_big()
    if big + 65560 * len(args) + 16 >= MAX_COMMAND_BYTES:
        encode_command(args)    # near the limit: the exact count


def call(sock: socket.socket, *args: object) -> object:
    """Send one command on a connected blocking socket and return its reply.

    The reply is read until it is complete, however the server's bytes are
    split across reads. Replies as the Python transport gives them: bulk and
    status -> bytes, integer -> int, nil -> None, array -> list; an error
    reply is returned as a :class:`ReplyError` instance (not raised).

    Raises what :func:`encode_command` raises for a bad command,
    :class:`ConnectionError` if the server closes the connection before the
    reply is complete or sends bytes that are not RESP, and the socket's own
    ``OSError`` (``TimeoutError`` after the socket's timeout, in seconds).
    Needs the ``hiredis`` package (its ``Reader``).
    """
    import hiredis  # the parser of the Python transport; only this helper needs it here

    sock.sendall(encode_command(args))
    reader = hiredis.Reader(replyError=ReplyError)
    while True:
        try:
            reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise ConnectionError(f"not a RESP reply from the server: {exc}") from None
        if reply is not False:  # False: not enough data yet (RESP2 has no false)
            return reply
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"the server closed the connection before replying to {args[0]!r}")
        reader.feed(data)


RESP2_SCALARS = (bytes, int, type(None), ReplyError)


def resp2_shaped(reply: Any) -> bool:
    """True if ``reply`` (as hiredis-py's Reader parsed it) has a RESP2 shape.
    hiredis-py also returns RESP3 doubles, booleans, maps and pushes, which a
    RESP2 connection never gets: both Python transports drop the connection
    on them, as the extension's guard does."""
    kind = type(reply)
    if kind in RESP2_SCALARS:
        return True
    return kind is list and all(resp2_shaped(item) for item in reply)
