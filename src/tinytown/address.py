"""Parsing of the Redis URLs a Channel accepts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import InvalidArgumentError

__all__ = ["Address", "parse_url"]

_FORMS = ("unix:///absolute/path/redis.sock, redis://[user:password@]host:port[/db] "
          "or redis+cluster://[user:password@]host:port[,host:port...]")


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

    def __str__(self) -> str:
        if self.cluster:
            return "redis+cluster://" + ",".join(
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.cluster)
        where = f"unix://{self.unix_path}" if self.unix_path else f"redis://{self.host}:{self.port}"
        return where + (f"/{self.db}" if self.db and not self.unix_path else "")


def parse_url(url: str) -> Address:
    """Parse ``unix:///abs/path`` or ``redis://[user:password@]host:port[/db]``.

    Anything else raises :class:`InvalidArgumentError` naming the accepted forms.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"Redis URL must be a str, not {type(url).__name__}")
    if url.startswith("redis+cluster://"):
        return _parse_cluster_url(url)
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
    if parts.scheme == "rediss":
        raise InvalidArgumentError(
            f"Redis URL {url!r}: TLS (rediss://) is not supported by this build of tinytown: "
            "TLS needs hiredis built with TLS support (pkg-config hiredis_ssl, hiredis >= 1.0), "
            "and this build has no TLS transport. To reach Redis over TLS, run a local TLS "
            "tunnel (stunnel, or ssh -L) and connect to redis://127.0.0.1:<tunnel port>; on the "
            "same host, prefer a unix:// socket (Town's is mode 700)")
    if parts.scheme != "redis":
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
    )


def _parse_cluster_url(url: str) -> Address:
    """``redis+cluster://[user:password@]host:port[,host:port...]``: seed nodes of a cluster."""
    rest = url[len("redis+cluster://"):]
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
