"""Replies of the wrong shape from a peer that is not (quite) Redis.

A command-aware fake server (tests/resp_fake.py plays fixed bytes whatever
the command; the channels' connect handshake needs real answers) answers
the length/count commands with a hostile reply. RESP3 doubles, booleans,
maps and pushes drop the connection (ConnectionError) on every transport,
blocking and async alike (docs/reliability.md); a well-formed RESP2 reply
of the wrong type (a bulk string where Redis answers an integer) raises
DecodeError instead of being returned as the call's result.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from channel_cases import msg
from tinytown import AgentId, Channel, SyncChannel
from tinytown._transport.choose import TRANSPORTS
from tinytown.errors import ConnectionError, DecodeError, TinytownError

HOSTILE = {b"LLEN", b"XLEN", b"EXISTS", b"PUBLISH"}


class ShapeFake:
    """Answers HOSTILE commands with ``payload``, the rest plausibly."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "fake.sock")
        self.payload = b":0\r\n"
        self.stop = threading.Event()
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen(16)
        self.srv.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        buf = b""
        client.settimeout(0.1)
        with client:
            while not self.stop.is_set():
                try:
                    data = client.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:
                    parsed = _parse(buf)
                    if parsed is None:
                        break
                    args, buf = parsed
                    name = args[0].upper()
                    if name in HOSTILE:
                        reply = self.payload
                    elif name == b"PING":
                        reply = b"+PONG\r\n"
                    elif name == b"CLIENT" and len(args) > 1 and args[1].upper() == b"ID":
                        reply = b":7\r\n"
                    elif name == b"HELLO":
                        reply = b"-ERR unknown command\r\n"
                    elif name == b"INFO":
                        reply = b"$22\r\nredis_version:7.0.15\r\n\r\n"
                    else:
                        reply = b"+OK\r\n"
                    try:
                        client.sendall(reply)
                    except OSError:
                        return

    def close(self) -> None:
        self.stop.set()
        self.srv.close()
        self.thread.join(5)


def _parse(buf: bytes) -> tuple[list[bytes], bytes] | None:
    """One RESP array of bulk strings off ``buf``, or None if incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None
    end = buf.index(b"\r\n")
    pos = end + 2
    args = []
    for _ in range(int(buf[1:end])):
        if b"\r\n" not in buf[pos:]:
            return None
        line_end = buf.index(b"\r\n", pos)
        length = int(buf[pos + 1:line_end])
        pos = line_end + 2
        if len(buf) < pos + length + 2:
            return None
        args.append(buf[pos:pos + length])
        pos += length + 2
    return args, buf[pos:]


@pytest.fixture(scope="module")
def fake() -> Iterator[ShapeFake]:
    server = ShapeFake()
    try:
        yield server
    finally:
        server.close()


RESP3_STRICT = [b"%1\r\n+a\r\n+b\r\n", b"#t\r\n", b">2\r\n+a\r\n+b\r\n", b",1.5\r\n",
                b"*2\r\n:1\r\n#f\r\n"]
AGENT = AgentId("3f0c1a52-7d0e-4b8a-9c1d-2e5f6a7b8c9d")


def _calls(channel: Any) -> dict[str, Any]:
    return {
        "inbox_len": lambda: channel.inbox_len(AGENT),
        "urgent_len": lambda: channel.urgent_len(AGENT),
        "processing_len": lambda: channel.processing_len(AGENT),
        "backlog_len": lambda: channel.backlog_len(),
        "docket_len": lambda: channel.docket_len(),
        "should_stop": lambda: channel.should_stop(AGENT),
        "broadcast": lambda: channel.broadcast(msg(AGENT, "hello")),
    }


def _sync_outcome(fake: ShapeFake, transport: str, payload: bytes, call: str) -> Any:
    fake.payload = b":0\r\n"
    channel = SyncChannel.connect("unix://" + fake.path, town="qa", transport=transport)
    try:
        fake.payload = payload
        try:
            return ("value", _calls(channel)[call]())
        except TinytownError as exc:
            return (type(exc), exc)
    finally:
        channel.close()


def _async_outcome(fake: ShapeFake, transport: str, payload: bytes, call: str) -> Any:
    async def run() -> Any:
        fake.payload = b":0\r\n"
        channel = await asyncio.wait_for(
            Channel.connect("unix://" + fake.path, town="qa", transport=transport), 10)
        try:
            fake.payload = payload
            try:
                return ("value", await asyncio.wait_for(_calls(channel)[call](), 10))
            except TinytownError as exc:
                return (type(exc), exc)
        finally:
            await channel.close()
    return asyncio.run(run())


OUTCOMES = {"sync": _sync_outcome, "async": _async_outcome}


@pytest.mark.parametrize("kind", list(OUTCOMES))
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("payload", RESP3_STRICT)
def test_resp3_doubles_booleans_maps_and_pushes_drop_the_connection(fake, kind, transport, payload):
    kind_of, got = OUTCOMES[kind](fake, transport, payload, "inbox_len")
    assert kind_of is ConnectionError, (kind_of, got)


@pytest.mark.parametrize("kind, call", [(kind, call) for kind in OUTCOMES for call in _calls(None)
                                        if not (kind == "sync" and call == "processing_len")])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bulk_string_where_an_integer_is_due_raises_decode_error(fake, kind, transport, call):
    kind_of, got = OUTCOMES[kind](fake, transport, b"$3\r\nabc\r\n", call)
    assert kind_of is DecodeError, (kind_of, got)
