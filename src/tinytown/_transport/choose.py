"""Choosing the transport behind a Channel or SyncChannel.

Two implementations of one interface (:class:`OpenConnection` below, and the
blocking SyncConnection of SyncChannel):

``"hiredis"``  the Cython extension ``tinytown._transport.ext`` over hiredis's
               async context and its redisContext (the default; in every wheel);
``"python"``   ``tinytown._transport.pyasync`` (pure Python on asyncio) and
               ``tinytown._transport.pysync`` (a blocking socket), with the hiredis
               parser of redis-py's ``redis[hiredis]`` (``hiredis`` package;
               ``pip install 'tinytown[python]'``).

``Channel.connect(..., transport=...)`` (and SyncChannel's) picks one; without it the
environment variable ``TINYTOWN_TRANSPORT`` does; without that, the
extension is used when it loads and the Python transport otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import InvalidArgumentError, TransportUnavailableError
from .futures import PyReplyFuture

if TYPE_CHECKING:
    from .ext import SyncConnection

__all__ = ["TRANSPORTS", "Connectable", "OpenConnection", "connection_class",
           "sync_connection_class", "tls_connection_class", "tls_sync_connection_class"]

log = logging.getLogger("tinytown")

TRANSPORTS = ("hiredis", "python")
ENV_VAR = "TINYTOWN_TRANSPORT"

_PYTHON_HINT = "install it with: pip install 'tinytown[python]' (the hiredis package)"
_EXTENSION_HINT = (
    "install a tinytown wheel, or build from source with libhiredis installed "
    "(apt-get install libhiredis-dev / brew install hiredis)")


class OpenConnection(Protocol):
    """What Channel needs from an open connection (both transports and the
    cluster connection provide it)."""

    # (the extension's ReplyFuture: the same Future protocol, with orphan)
    def execute(self, *args: Any) -> PyReplyFuture: ...
    def execute_many(self, commands: Iterable[Sequence[Any]],
                     replies: bool = True) -> asyncio.Future[Any]: ...
    def subscribe(self, handler: Callable[[Any], None], *channels: Any) -> None: ...
    def close(self) -> None: ...
    @property
    def is_closed(self) -> bool: ...
    @property
    def pending_replies(self) -> int: ...
    @property
    def write_buffer_size(self) -> int: ...
    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None: ...
    def wait_writable(self, nbytes: int = 0) -> asyncio.Future[None] | None: ...


class Connectable(OpenConnection, Protocol):
    """A transport connection before it is open: ``Connection(loop)``, then one connect."""

    def connect_unix(self, path: str) -> asyncio.Future[Any]: ...
    def connect_tcp(self, host: str, port: int) -> asyncio.Future[Any]: ...


ConnectionClass = Callable[[asyncio.AbstractEventLoop], Connectable]

_warned_fallback = False


def _load(name: str) -> ConnectionClass:
    if name == "hiredis":
        from .ext import Connection
        return Connection  # type: ignore[return-value]
    from .pyasync import PyConnection
    return PyConnection


def _load_sync(name: str) -> type[SyncConnection]:
    if name == "hiredis":
        from .ext import SyncConnection
        return SyncConnection
    from .pysync import PySyncConnection
    return PySyncConnection  # type: ignore[return-value]


def connection_class(name: str | None = None) -> ConnectionClass:
    """The Connection class of transport ``name`` (None: the environment, then automatic).

    Raises :class:`InvalidArgumentError` for an unknown name and
    :class:`TransportUnavailableError` (an ImportError too) when the chosen
    transport, or with automatic choice both of them, cannot be loaded; the
    message says what to install.
    """
    return _choose(name, _load)


def sync_connection_class(name: str | None = None) -> type[SyncConnection]:
    """The SyncConnection class (blocking, for SyncChannel) of transport
    ``name``, chosen and reported as :func:`connection_class` does:
    ``tinytown._transport.ext.SyncConnection`` or
    ``tinytown._transport.pysync.PySyncConnection``."""
    return _choose(name, _load_sync)


_T = TypeVar("_T")


def _choose(name: str | None, load: Callable[[str], _T]) -> _T:
    global _warned_fallback
    source = "transport"
    if name is None:
        name = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if name is not None:
        if name not in TRANSPORTS:
            raise InvalidArgumentError(
                f"{source}={name!r} is not a tinytown transport; choose 'hiredis' or 'python'")
        try:
            return load(name)
        except ImportError as exc:
            hint = _EXTENSION_HINT if name == "hiredis" else _PYTHON_HINT
            raise TransportUnavailableError(
                f"tinytown transport {name!r} cannot be loaded ({exc}); {hint}") from exc
    try:
        return load("hiredis")
    except ImportError as ext_exc:
        try:
            cls = load("python")
        except ImportError as py_exc:
            raise TransportUnavailableError(
                "tinytown has no usable transport: the hiredis extension cannot be loaded "
                f"({ext_exc}) and the pure-Python transport needs the hiredis package "
                f"({py_exc}); {_PYTHON_HINT}, or {_EXTENSION_HINT}") from py_exc
        # One warning per process, whichever channel kind meets it first.
        if not _warned_fallback:
            _warned_fallback = True
            log.warning("tinytown: the hiredis extension cannot be loaded (%s); "
                        "using the pure-Python transport", ext_exc)
        return cls


def tls_connection_class(name: str | None, where: object) -> ConnectionClass:
    """The Connection class for a TLS (``rediss://``) connection: the Python
    transport, whose TLS is asyncio's (the extension's hiredis has none)."""
    return _choose_tls(name, _load, where)


def tls_sync_connection_class(name: str | None, where: object) -> type[SyncConnection]:
    """The SyncConnection class for TLS: the Python one (``ssl.SSLSocket``)."""
    return _choose_tls(name, _load_sync, where)


def _choose_tls(name: str | None, load: Callable[[str], _T], where: object) -> _T:
    # hiredis gets TLS from a separate library (hiredis_ssl, hiredis >= 1.0)
    # that the extension is not built with, so TLS always takes the Python
    # transport. TINYTOWN_TRANSPORT=hiredis, a process-wide preference, gives
    # way; the argument, a request for this very channel, does not.
    if name == "hiredis":
        raise InvalidArgumentError(
            f"transport='hiredis' cannot connect to {where}: the extension has no TLS; "
            "leave transport unset (TLS then uses the pure-Python transport) or pass 'python'")
    if name is None:
        env = os.environ.get(ENV_VAR) or None
        if env is not None and env not in TRANSPORTS:
            raise InvalidArgumentError(
                f"{ENV_VAR}={env!r} is not a tinytown transport; choose 'hiredis' or 'python'")
    elif name not in TRANSPORTS:
        raise InvalidArgumentError(
            f"transport={name!r} is not a tinytown transport; choose 'hiredis' or 'python'")
    try:
        cls = load("python")
    except ImportError as exc:
        raise TransportUnavailableError(
            f"TLS to {where} needs the pure-Python transport, which cannot be loaded ({exc}); "
            f"{_PYTHON_HINT}") from exc
    log.info("tinytown: TLS to %s: using the pure-Python transport "
             "(the hiredis extension has no TLS)", where)
    return cls
