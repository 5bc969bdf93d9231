"""tinytown._transport.resp.call: one command on a blocking socket, its reply read whole.

The benchmark's server setup (tinytown.bench.RedisServer.cli) talks to
redis-server through it; it once read a reply with one recv(), which returns
whatever part of a reply has arrived.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from resp_fake import FakeRedis

from tinytown import ConnectionError, InvalidArgumentError, ReplyError
from tinytown._transport.resp import call, check_args, encode_command
from tinytown.bench import RedisServer


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def test_a_reply_larger_than_one_read(redis_server, redis_url):
    big = bytes(range(256)) * 8192  # 2 MiB: many reads of the socket
    with _connect(redis_server.unix_path) as sock:
        assert call(sock, "SET", "big", big) == b"OK"
        assert call(sock, "GET", "big") == big
        assert call(sock, "STRLEN", "big") == len(big)
        assert call(sock, "LRANGE", "nothing", 0, -1) == []
        assert call(sock, "GET", "nothing") is None
        error = call(sock, "INCR", "big")  # an error reply is returned, not raised
        assert type(error) is ReplyError and "not an integer" in str(error)
        assert call(sock, "PING") == b"PONG"  # the connection is still in step


@pytest.fixture
def fake(tmp_path: Path):
    server = FakeRedis(str(tmp_path / "fake.sock"))
    try:
        yield server
    finally:
        server.close()


def test_a_reply_split_across_reads(fake):
    # The reply arrives in pieces, with pauses between them: every piece is a
    # separate read, cut inside a header, inside a value and between elements.
    fake.play(b"*3\r\n$5\r\nhel", b"lo\r\n:4", b"2\r\n", b"$-1\r\n", pause=0.05)
    with _connect(fake.path) as sock:
        assert call(sock, "GET", "x") == [b"hello", 42, None]


def test_a_connection_closed_mid_reply_or_garbage(fake):
    fake.play(b"$10\r\nhalf")
    with _connect(fake.path) as sock, pytest.raises(ConnectionError, match="closed"):
        call(sock, "GET", "x")
    fake.play(b"?what\r\n")
    with _connect(fake.path) as sock, pytest.raises(ConnectionError, match="not a RESP reply"):
        call(sock, "GET", "x")


def test_bad_arguments_send_nothing(redis_server, redis_url):
    with _connect(redis_server.unix_path) as sock:
        with pytest.raises(InvalidArgumentError):
            call(sock, "SET", "k", True)
        with pytest.raises(InvalidArgumentError):
            call(sock)
        assert call(sock, "EXISTS", "k") == 0


def test_bench_server_cli_reads_whole_replies(tmp_path):
    server = RedisServer(tmp_path)
    try:
        value = "x" * 300_000
        assert server.cli("SET", "k", value) == b"OK"
        assert server.cli("GET", "k") == value.encode()
        assert server.cli("DEL", "k") == 1
        with pytest.raises(ReplyError, match="unknown command"):
            server.cli("NOSUCHCOMMAND")
    finally:
        server.stop()


@pytest.mark.parametrize("args", [
    (), ("GET", "k"), (b"SET", b"k", b"x" * 70_000), ("SET", "k", "caf\u00e9 \U0001f600" * 100), ("a\ud800",),
    ("SET", "k", "ok", "bad \udfff"), (True,), ("GET", None), (1.5, 3, -7), (bytearray(b"x"), memoryview(b"y")),
    ("GET", object()), ("SET", "k", False), (b"",),
], ids=range(13))
def test_check_args_refuses_what_encode_command_refuses(args: tuple[object, ...]) -> None:
    """Channel.execute checks a command that must wait for backpressure with
    check_args (measuring, not encoding): the same errors, the same messages."""
    def outcome(check: object) -> tuple[type, str] | None:
        try:
            check(args)  # type: ignore[operator]
        except Exception as exc:
            return type(exc), str(exc)
        return None

    assert outcome(check_args) == outcome(encode_command)
