"""Helpers of test_streams.py: one scenario, run on Channel and on SyncChannel,
and a MONITOR connection recording the exact argv a channel sends."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tinytown import Channel, SyncChannel
from tinytown._monitor import parse_line
from tinytown._transport.ext import SyncConnection

# Copies of ../shared/wire/tinytown-0.10 (test_wire checks they are identical).
VECTORS = Path(__file__).resolve().parent / "data" / "wire" / "tinytown-0.10"

KINDS = ("async", "sync")

# Commands the channels send that are no part of an operation's argv.
_CONNECTION = {b"PING", b"CLIENT", b"ECHO", b"SELECT", b"AUTH", b"HELLO"}
_TRANSACTION = {b"MULTI", b"EXEC"}


def vectors(name: str) -> list[dict[str, Any]]:
    """The lines of a golden vector file (``events.jsonl``...)."""
    with open(VECTORS / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def argv_bytes(argv: list[Any]) -> list[bytes]:
    """A vector's argv as the bytes Redis receives (strings as UTF-8)."""
    out = []
    for arg in argv:
        if isinstance(arg, dict):
            out.append(bytes.fromhex(arg["hex"]))
        else:
            out.append(str(arg).encode("utf-8", "surrogatepass"))
    return out


class AsyncView:
    """A SyncChannel seen through awaitable methods, so that one async scenario
    drives both facades (the sync calls simply block the test's loop)."""

    def __init__(self, channel: SyncChannel) -> None:
        self.sync = channel

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attr(*args, **kwargs)

        return call


@contextlib.asynccontextmanager
async def open_channel(kind: str, url: str, town: str = "golden") -> AsyncIterator[Any]:
    """A Channel (``kind="async"``) or a SyncChannel behind :class:`AsyncView`."""
    if kind == "async":
        channel = await Channel.connect(url, town=town)
        try:
            yield channel
        finally:
            await channel.close()
    else:
        sync = SyncChannel.connect(url, town=town)
        try:
            yield AsyncView(sync)
        finally:
            sync.close()


class Monitor:
    """MONITOR on its own connection: every command the server runs, as argv.

    ``url`` is a ``unix://`` URL or a socket path."""

    def __init__(self, url: str) -> None:
        self.conn = SyncConnection()
        self.conn.connect_unix(url.removeprefix("unix://"))
        self.conn.send_command(b"MONITOR")
        assert self.conn.read_reply(5) == b"OK"

    def _until(self, marker: bytes, skip: frozenset[bytes] | set[bytes]) -> list[list[bytes]]:
        """The argv seen up to the ``ECHO marker``, those named in ``skip`` left out."""
        out = []
        while True:
            line = parse_line(self.conn.read_reply(5))
            if line is None:
                continue
            if line.args == [b"ECHO", marker]:
                return out
            if line.args and line.args[0].upper() not in skip:
                out.append(line.args)

    async def commands(self, channel: Any, transactions: bool = False) -> list[list[bytes]]:
        """The operations' argv run since the last call, in order (MULTI and
        EXEC too if ``transactions``). A marker ECHO sent through ``channel``
        tells when everything before it is in."""
        marker = uuid.uuid4().hex.encode()
        await channel.execute(b"ECHO", marker)
        return self._until(marker, _CONNECTION if transactions else _CONNECTION | _TRANSACTION)

    def commands_run(self, server: Any) -> list[list[bytes]]:
        """Every command run since the last call, MONITOR's own excluded; the
        marker ECHO goes through ``server`` (a tests.servers server)."""
        marker = uuid.uuid4().hex.encode()
        server.command("ECHO", marker)
        return self._until(marker, frozenset())

    def close(self) -> None:
        self.conn.close()
