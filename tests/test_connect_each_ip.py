"""address.connect_each_ip(_async): the one rule of Channel and SyncChannel for
connecting to a host name (each resolved IP once, in order; the last error)."""

from __future__ import annotations

import asyncio

import pytest

from tinytown import ConnectionError
from tinytown.address import Address, connect_each_ip, connect_each_ip_async

LOCALHOST = Address(host="localhost", port=1)


def test_the_first_ip_that_connects_wins_else_the_last_error():
    tried: list[str] = []

    def refuse(ip: str) -> str:
        tried.append(ip)
        raise ConnectionError(f"refused by {ip}")

    with pytest.raises(ConnectionError, match="refused by 127.0.0.1"):
        connect_each_ip(LOCALHOST, refuse)
    assert tried == ["127.0.0.1"]  # each IP once (this machine's localhost has one)
    assert connect_each_ip(LOCALHOST, lambda ip: f"connected to {ip}") == "connected to 127.0.0.1"
    with pytest.raises(ZeroDivisionError):  # only ConnectionError means "try the next IP"
        connect_each_ip(LOCALHOST, lambda ip: 1 // 0)


async def test_the_same_rule_on_an_event_loop():
    loop = asyncio.get_running_loop()

    async def refuse(ip: str) -> str:
        raise ConnectionError(f"refused by {ip}")

    async def accept(ip: str) -> str:
        return f"connected to {ip}"

    with pytest.raises(ConnectionError, match="refused by 127.0.0.1"):
        await connect_each_ip_async(LOCALHOST, refuse, loop)
    assert await connect_each_ip_async(LOCALHOST, accept, loop) == "connected to 127.0.0.1"


def test_a_port_that_does_not_resolve():
    # A service name getaddrinfo cannot map: a resolution error, raised before any attempt.
    bad = Address(host="localhost", port="no-such-service")  # type: ignore[arg-type]
    with pytest.raises(ConnectionError, match="cannot resolve Redis host 'localhost'"):
        connect_each_ip(bad, lambda ip: pytest.fail("no attempt"))
