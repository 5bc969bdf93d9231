"""TLS (``rediss://``) against a real ``redis-server --tls-port``.

A throwaway CA is made at test time (trustme); the server's certificate
names ``localhost`` only, so ``rediss://localhost:P`` verifies and
``rediss://127.0.0.1:P`` fails the host name check. The server also listens
on a Unix socket, which the tests use to look at it and to kill clients.
Both channel kinds, every async test on asyncio and uvloop; TLS always runs
on the Python transports (the extension has no TLS), whatever
TINYTOWN_TRANSPORT says.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from channel_cases import msg, text_of
from servers import RedisProcess, free_tcp_port
from tinytown import (
    AgentId,
    Channel,
    ConnectionError,
    InvalidArgumentError,
    SyncChannel,
)
from tinytown._transport import pyasync, pysync
from tinytown._transport.cluster import ClusterTopology
from tinytown.address import parse_url, with_tls


class TlsServer:
    """A redis-server with a TLS port (and its Unix socket), and the files to reach it."""

    def __init__(self, server: RedisProcess, port: int, ca_file: Path, client: tuple[Path, Path]) -> None:
        self.server = server
        self.port = port
        self.ca_file = ca_file
        self.client_cert, self.client_key = client

    @property
    def url(self) -> str:
        return f"rediss://localhost:{self.port}"

    def tls_clients(self) -> int:
        """Connections the server has on its TLS port (CLIENT LIST laddr)."""
        listing = self.server.command("CLIENT", "LIST")
        assert isinstance(listing, bytes)
        return sum(f":{self.port} " in line for line in listing.decode().splitlines())

    def kill_clients(self) -> None:
        self.server.command("CLIENT", "KILL", "TYPE", "normal")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    files = {name: folder / f"{name}.pem" for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key", "other_ca")}
    ca.cert_pem.write_to_path(files["ca"])
    server = ca.issue_cert("localhost")
    server.private_key_pem.write_to_path(files["server_key"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    client = ca.issue_cert("tinytown-test-client")
    client.private_key_pem.write_to_path(files["client_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    trustme.CA().cert_pem.write_to_path(files["other_ca"])
    return files


@pytest.fixture
def tls_server_factory(redis_server_factory: Callable[..., RedisProcess],
                       tls_files: dict[str, Path]) -> Callable[..., TlsServer]:
    def factory(auth_clients: bool = False) -> TlsServer:
        port = free_tcp_port()
        try:
            server = start(port, auth_clients)
        except RuntimeError as exc:
            # Only a redis-server built without TLS (BUILD_TLS) is excused;
            # Debian's, which CI uses, has it.
            if re.search(r"TLS.*not supported|not supported.*TLS|Bad directive", str(exc)):
                pytest.skip(f"this redis-server has no TLS: {exc}")
            raise
        return TlsServer(server, port, tls_files["ca"], (tls_files["client_cert"], tls_files["client_key"]))

    def start(port: int, auth_clients: bool) -> RedisProcess:
        return redis_server_factory(
            "--bind", "127.0.0.1", "--tls-port", str(port),
            "--tls-cert-file", str(tls_files["server_cert"]),
            "--tls-key-file", str(tls_files["server_key"]),
            "--tls-ca-cert-file", str(tls_files["ca"]),
            "--tls-auth-clients", "yes" if auth_clients else "no")
    return factory


@pytest.fixture
def tls_server(tls_server_factory: Callable[..., TlsServer]) -> TlsServer:
    return tls_server_factory()


@pytest.fixture
def sync_connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., SyncChannel]]:
    opened: list[SyncChannel] = []

    def connect(url: str, **options: Any) -> SyncChannel:
        channel = SyncChannel.connect(url, town="tls", **options)
        opened.append(channel)
        return channel

    yield connect
    for channel in opened:
        channel.close()


# ---------------------------------------------------------------- round trips


async def test_round_trip_over_tls(tls_server: TlsServer, caplog: pytest.LogCaptureFixture) -> None:
    agent = AgentId.new()
    with caplog.at_level(logging.INFO, logger="tinytown"):
        channel = await Channel.connect(tls_server.url, town="tls", ssl_ca_file=tls_server.ca_file)
    async with channel:
        assert type(channel._conn) is pyasync.PyConnection
        await channel.send(msg(agent, "over tls"))
        assert await channel.inbox_len(agent) == 1
        assert text_of(await channel.receive(agent, 1)) == "over tls"
        assert tls_server.tls_clients() >= 1
    assert "TLS to rediss://localhost" in caplog.text and "pure-Python transport" in caplog.text


def test_sync_round_trip_over_tls(tls_server: TlsServer, sync_connect: Callable[..., SyncChannel]) -> None:
    agent = AgentId.new()
    channel = sync_connect(tls_server.url, ssl_ca_file=str(tls_server.ca_file))
    assert type(channel._conn) is pysync.PySyncConnection
    assert isinstance(channel._conn._sock, ssl.SSLSocket)
    channel.send(msg(agent, "sync over tls"))
    assert text_of(channel.receive(agent, 1)) == "sync over tls"
    # a blocking receive that times out
    assert channel.receive(agent, 0.1) is None
    # a broadcast subscription: a second TLS connection
    with channel.broadcasts() as sub:
        assert channel.broadcast(msg(agent, "to all")) == 1
        assert text_of(sub.get(5)) == "to all"
        assert tls_server.tls_clients() == 2


def test_an_ssl_context_instead_of_files(tls_server: TlsServer, sync_connect: Callable[..., SyncChannel]) -> None:
    context = ssl.create_default_context(cafile=str(tls_server.ca_file))
    channel = sync_connect(tls_server.url, ssl=context)
    assert channel._conn.execute("PING") == b"PONG"


async def test_async_ssl_context_and_many_pipelined_commands(tls_server: TlsServer) -> None:
    context = ssl.create_default_context(cafile=str(tls_server.ca_file))
    agent = AgentId.new()
    async with await Channel.connect(tls_server.url, town="tls", ssl=context) as channel:
        # bigger than one TLS record, many at once
        await asyncio.gather(*(channel.send(msg(agent, f"{i}:" + "x" * 20000)) for i in range(50)))
        assert await channel.inbox_len(agent) == 50
        got = [text_of(await channel.try_receive(agent)).split(":")[0] for _ in range(50)]
        assert got == [str(i) for i in range(50)]


# ---------------------------------------------------------------- verification


async def test_unknown_ca_fails_verification(tls_server: TlsServer, tls_files: dict[str, Path]) -> None:
    with pytest.raises(ConnectionError, match="certificate verify failed|TLS handshake failed"):
        await Channel.connect(tls_server.url, town="tls", ssl_ca_file=tls_files["other_ca"])
    # the default: the system's CAs, which do not know the throwaway one
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        await Channel.connect(tls_server.url, town="tls")


def test_sync_unknown_ca_fails_verification(tls_server: TlsServer, tls_files: dict[str, Path]) -> None:
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        SyncChannel.connect(tls_server.url, town="tls", ssl_ca_file=tls_files["other_ca"])
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        SyncChannel.connect(tls_server.url, town="tls")


async def test_wrong_hostname_fails_unless_the_check_is_off(tls_server: TlsServer) -> None:
    url = f"rediss://127.0.0.1:{tls_server.port}"   # the certificate names localhost only
    with pytest.raises(ConnectionError, match="TLS handshake failed.*(Hostname mismatch|IP address mismatch)"):
        await Channel.connect(url, town="tls", ssl_ca_file=tls_server.ca_file)
    async with await Channel.connect(url, town="tls", ssl_ca_file=tls_server.ca_file,
                                     ssl_check_hostname=False) as channel:
        assert await channel.execute("PING") == b"PONG"


def test_sync_wrong_hostname_fails_unless_the_check_is_off(
        tls_server: TlsServer, sync_connect: Callable[..., SyncChannel]) -> None:
    url = f"rediss://127.0.0.1:{tls_server.port}"
    with pytest.raises(ConnectionError, match="TLS handshake failed.*(Hostname mismatch|IP address mismatch)"):
        SyncChannel.connect(url, town="tls", ssl_ca_file=tls_server.ca_file)
    channel = sync_connect(url, ssl_ca_file=tls_server.ca_file, ssl_check_hostname=False)
    assert channel._conn.execute("PING") == b"PONG"


# In TLS 1.3 the server refuses a client without a certificate after the
# handshake, with an alert: the login then fails on that alert or on the EOF
# that follows it, whichever the client reads first.


async def test_client_certificate_required(tls_server_factory: Callable[..., TlsServer]) -> None:
    server = tls_server_factory(auth_clients=True)
    with pytest.raises(ConnectionError, match="certificate required|connection to Redis lost"):
        await Channel.connect(server.url, town="tls", ssl_ca_file=server.ca_file, connect_timeout=5)
    async with await Channel.connect(server.url, town="tls", ssl_ca_file=server.ca_file,
                                     ssl_certfile=server.client_cert,
                                     ssl_keyfile=server.client_key) as channel:
        assert await channel.execute("PING") == b"PONG"


def test_sync_client_certificate_required(tls_server_factory: Callable[..., TlsServer],
                                          sync_connect: Callable[..., SyncChannel]) -> None:
    server = tls_server_factory(auth_clients=True)
    with pytest.raises(ConnectionError, match="certificate required|connection to Redis lost"):
        SyncChannel.connect(server.url, town="tls", ssl_ca_file=server.ca_file)
    channel = sync_connect(server.url, ssl_ca_file=server.ca_file,
                           ssl_certfile=server.client_cert, ssl_keyfile=server.client_key)
    assert channel._conn.execute("PING") == b"PONG"


# ---------------------------------------------------------------- reconnect


async def test_reconnect_over_tls(tls_server: TlsServer) -> None:
    agent = AgentId.new()
    async with await Channel.connect(tls_server.url, town="tls", ssl_ca_file=tls_server.ca_file) as channel:
        await channel.send(msg(agent, "before"))
        first = channel._conn
        tls_server.kill_clients()
        while not first.is_closed:   # the loop sees the connection go
            await asyncio.sleep(0.01)
        await channel.send(msg(agent, "after"))   # reconnects, over TLS again
        assert channel._conn is not first and channel._conn._tls is not None
        assert [text_of(await channel.try_receive(agent)) for _ in range(2)] == ["before", "after"]


def test_sync_reconnect_over_tls(tls_server: TlsServer, sync_connect: Callable[..., SyncChannel]) -> None:
    agent = AgentId.new()
    channel = sync_connect(tls_server.url, ssl_ca_file=tls_server.ca_file)
    channel.send(msg(agent, "before"))
    first = channel._conn
    tls_server.kill_clients()
    sent = False
    for _ in range(200):   # the first call after the kill may fail; a later one reconnects
        try:
            channel.send(msg(agent, "after"))
            sent = True
            break
        except ConnectionError:
            time.sleep(0.01)
    assert sent
    assert channel._conn is not first and isinstance(channel._conn._sock, ssl.SSLSocket)
    assert [text_of(channel.try_receive(agent)) for _ in range(2)] == ["before", "after"]


# ---------------------------------------------------------------- options


def test_tls_options_are_checked(tls_server: TlsServer, tls_files: dict[str, Path]) -> None:
    context = ssl.create_default_context()
    bad = [
        ("redis://localhost:6379", {"ssl_ca_file": tls_files["ca"]}, "need a rediss:// URL"),
        ("redis://localhost:6379", {"ssl": context}, "need a rediss:// URL"),
        ("unix:///tmp/x.sock", {"ssl_check_hostname": False}, "need a rediss:// URL"),
        (tls_server.url, {"ssl": context, "ssl_ca_file": tls_files["ca"]}, "not both"),
        (tls_server.url, {"ssl": "yes"}, "must be an ssl.SSLContext"),
        (tls_server.url, {"ssl_ca_file": "/nonexistent/ca.pem"}, "bad TLS settings"),
        (tls_server.url, {"ssl_ca_file": tls_files["ca"], "ssl_certfile": tls_files["server_key"],
                          "ssl_keyfile": tls_files["client_key"]}, "bad TLS settings"),
        (tls_server.url, {"ssl_keyfile": tls_files["client_key"]}, "needs ssl_certfile"),
        (tls_server.url, {"ssl_check_hostname": "no"}, "must be a bool"),
        (tls_server.url, {"transport": "hiredis"}, "the extension has no TLS"),
    ]
    for url, options, message in bad:
        with pytest.raises(InvalidArgumentError, match=message):
            SyncChannel.connect(url, town="tls", **options)
        with pytest.raises(InvalidArgumentError, match=message):
            asyncio.run(Channel.connect(url, town="tls", **options))


def test_tls_urls() -> None:
    address = parse_url("rediss://user:pw@redis.example:6380/2")
    assert (address.tls, address.host, address.port, address.db, address.username) == \
        (True, "redis.example", 6380, 2, "user")
    assert str(address) == "rediss://redis.example:6380/2"
    assert not parse_url("redis://redis.example").tls
    cluster = with_tls(parse_url("rediss+cluster://a.example:7000,b.example:7001"), ssl_check_hostname=False)
    assert cluster.tls and cluster.cluster == (("a.example", 7000), ("b.example", 7001))
    assert cluster.ssl_context is not None and not cluster.ssl_context.check_hostname
    assert cluster.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert str(cluster) == "rediss+cluster://a.example:7000,b.example:7001"
    # every node of the cluster is reached with the seeds' TLS settings
    node = ClusterTopology(cluster, lambda a: None).node_address("10.0.0.5:7002")   # type: ignore[arg-type,return-value]
    assert (node.host, node.port, node.tls, node.cluster) == ("10.0.0.5", 7002, True, ())
    assert node.ssl_context is cluster.ssl_context
