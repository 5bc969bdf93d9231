"""Parsing of the Redis URLs a Channel accepts, and their TLS settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from .errors import ConnectionError, InvalidArgumentError

__all__ = ["Address", "connect_each_ip", "connect_each_ip_async", "parse_url", "with_tls"]

_T = TypeVar("_T")

_FORMS = ("unix:///absolute/path/redis.sock, redis[s]://[user:password@]host:port[/db] "
          "or redis[s]+cluster://[user:password@]host:port[,host:port...]")


@dataclass(frozen=True)
class Address:
    """Where a Redis server is and how to log in to it."""

    unix_path: str | None = None
    host: str | None = None
    port: int = 6379
    username: str | None = None
    password: str | None = None
    db: int = 0
    #: Seed nodes of a Redis Cluster (``redis+cluster://``), else empty.
    cluster: tuple[tuple[str, int], ...] = ()
    #: TLS (a ``rediss://`` URL).
    tls: bool = False
    #: The TLS settings of a ``tls`` address (set by :func:`with_tls`).
    ssl_context: _ssl.SSLContext | None = dataclasses.field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        if self.cluster:
            return f"{scheme}+cluster://" + ",".join(
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.cluster)
        where = f"unix://{self.unix_path}" if self.unix_path else f"{scheme}://{self.host}:{self.port}"
        return where + (f"/{self.db}" if self.db and not self.unix_path else "")


def parse_url(url: str) -> Address:
    """Parse ``unix:///abs/path``, ``redis://[user:password@]host:port[/db]``
    (``rediss://``: TLS) or ``redis[s]+cluster://...`` (seed nodes of a cluster).

    Anything else raises :class:`InvalidArgumentError` naming the accepted forms.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"Redis URL must be a str, not {type(url).__name__}")
    if url.startswith("redis+cluster://"):
        return _parse_cluster_url(url, "redis+cluster://")
    if url.startswith("rediss+cluster://"):
        return dataclasses.replace(_parse_cluster_url(url, "rediss+cluster://"), tls=True)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"bad Redis URL {url!r}: {exc}; expected {_FORMS}") from None
    if parts.scheme == "unix":
        path = unquote(parts.path)
        if parts.netloc or not os.path.isabs(path):
            raise InvalidArgumentError(
                f"bad Redis URL {url!r}: a unix URL needs an absolute path (unix:///path/redis.sock)")
        return Address(unix_path=path)
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidArgumentError(f"unsupported Redis URL {url!r}; expected {_FORMS}")
    if not parts.hostname:
        raise InvalidArgumentError(f"bad Redis URL {url!r}: no host; expected {_FORMS}")
    db_text = parts.path.lstrip("/")
    if db_text and not db_text.isdigit():
        raise InvalidArgumentError(f"bad Redis URL {url!r}: database {db_text!r} is not a number")
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"bad Redis URL {url!r}: query strings are not supported")
    return Address(
        host=parts.hostname,
        port=port if port is not None else 6379,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=int(db_text) if db_text else 0,
        tls=parts.scheme == "rediss",
    )


def _parse_cluster_url(url: str, scheme: str) -> Address:
    """``redis+cluster://[user:password@]host:port[,host:port...]``: seed nodes of a cluster."""
    rest = url[len(scheme):]
    where, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise InvalidArgumentError(
            f"bad Redis URL {url!r}: a Redis Cluster has only database 0")
    userinfo, _, hosts = where.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        try:
            parts = urlsplit("redis://" + item)
            port = parts.port
        except ValueError as exc:
            raise InvalidArgumentError(f"bad Redis URL {url!r}: {exc}; expected {_FORMS}") from None
        if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in item:
            raise InvalidArgumentError(f"bad Redis URL {url!r}: bad node {item!r}; expected {_FORMS}")
        seeds.append((parts.hostname, port if port is not None else 6379))
    username = password = None
    if userinfo:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    host, port = seeds[0]
    return Address(host=host, port=port, username=username, password=password,
                   cluster=tuple(seeds))


def with_tls(address: Address, *, ssl: _ssl.SSLContext | None = None,
             ssl_ca_file: str | os.PathLike[str] | None = None,
             ssl_certfile: str | os.PathLike[str] | None = None,
             ssl_keyfile: str | os.PathLike[str] | None = None,
             ssl_check_hostname: bool = True) -> Address:
    """``address`` with the TLS context its connections use.

    For a ``rediss://`` address: ``ssl``, an :class:`ssl.SSLContext` used as
    it is, or else a context made here with the server's certificate verified
    (always) against ``ssl_ca_file`` (a PEM file of CA certificates; default:
    the system's CAs) and its host name checked unless ``ssl_check_hostname``
    is False; ``ssl_certfile``/``ssl_keyfile`` (PEM) are the client
    certificate and key, for a server that requires one
    (``tls-auth-clients``). Raises :class:`InvalidArgumentError` for TLS
    options given with a URL that is not ``rediss://``, for ``ssl`` given
    with the other options, and for a file that cannot be read or used.
    """
    options = {"ssl_ca_file": ssl_ca_file, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    given = [name for name, value in options.items() if value is not None]
    if ssl_check_hostname is not True:
        given.append("ssl_check_hostname")
    if not address.tls:
        if ssl is not None or given:
            raise InvalidArgumentError(
                f"TLS options ({', '.join((['ssl'] if ssl is not None else []) + given)}) need a "
                f"rediss:// URL, not {address}")
        return address
    if ssl is not None:
        if given:
            raise InvalidArgumentError(
                f"pass either ssl (an SSLContext) or {', '.join(given)}, not both")
        if not isinstance(ssl, _ssl.SSLContext):
            raise InvalidArgumentError(f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}")
        return dataclasses.replace(address, ssl_context=ssl)
    if not isinstance(ssl_check_hostname, bool):
        raise InvalidArgumentError(
            f"ssl_check_hostname must be a bool, not {type(ssl_check_hostname).__name__}")
    if ssl_keyfile is not None and ssl_certfile is None:
        raise InvalidArgumentError("ssl_keyfile needs ssl_certfile (the client certificate)")
    try:
        context = _ssl.create_default_context(
            cafile=os.fspath(ssl_ca_file) if ssl_ca_file is not None else None)
        # check_hostname first: verify_mode cannot be relaxed while it is on,
        # and the certificate itself stays verified (CERT_REQUIRED) either way.
        context.check_hostname = ssl_check_hostname
        if ssl_certfile is not None:
            context.load_cert_chain(
                os.fspath(ssl_certfile), os.fspath(ssl_keyfile) if ssl_keyfile is not None else None)
    except (OSError, TypeError, ValueError) as exc:   # ssl.SSLError is an OSError
        raise InvalidArgumentError(f"bad TLS settings for {address}: {exc}") from None
    return dataclasses.replace(address, ssl_context=context)


# ------------------------------------------------------------ connecting to a host
# The rule of Channel and SyncChannel for a host name: resolve it (SOCK_STREAM),
# try each address it gives once, in order ("localhost" may give ::1 first,
# where nothing listens), keep the first that connects, else raise the last
# failure. The two functions below differ only in awaiting the attempt.


def _unresolved(address: Address, why: object = None) -> ConnectionError:
    return ConnectionError(f"cannot resolve Redis host {address.host!r}"
                           + ("" if why is None else f": {why}"))


def _ips(infos: Sequence[tuple[Any, ...]]) -> list[str]:
    return list(dict.fromkeys(info[4][0] for info in infos))


def connect_each_ip(address: Address, connect: Callable[[str], _T]) -> _T:
    """``connect(ip)`` for each IP the TCP ``address``'s host resolves to, in
    order, until one returns; its result. Raises tinytown's
    :class:`ConnectionError`: the host does not resolve, or the last
    attempt's error (an attempt fails only by raising ConnectionError).
    Blocks while resolving."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolved(address, exc) from None
    error: ConnectionError | None = None
    for ip in _ips(infos):
        try:
            return connect(ip)
        except ConnectionError as exc:
            error = exc
    raise error or _unresolved(address)


async def connect_each_ip_async(address: Address, connect: Callable[[str], Awaitable[_T]],
                                loop: asyncio.AbstractEventLoop) -> _T:
    """:func:`connect_each_ip` on an event loop: the host is resolved by
    ``loop.getaddrinfo`` (in the loop's executor) and each attempt awaited."""
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _unresolved(address, exc) from None
    error: ConnectionError | None = None
    for ip in _ips(infos):
        try:
            return await connect(ip)
        except ConnectionError as exc:
            error = exc
    raise error or _unresolved(address)
