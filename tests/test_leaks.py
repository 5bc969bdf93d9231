"""No leak on the transport's paths: every reference and hiredis callback is released.

tracemalloc sees the Python objects (futures, replies, batches); RSS sees
hiredis's own mallocs (commands, reply trees, callback entries).
"""

from __future__ import annotations

import asyncio

from memory import memory_growth
from tinytown import AgentId, Channel, Message, MessageType, ReplyError


async def exercise(channel: Channel, agent: AgentId, rounds: int) -> None:
    conn = channel._conn
    message = Message.new(AgentId.supervisor(), agent, MessageType.Ping())
    for _ in range(rounds):
        await channel.send(message)
        assert await channel.receive(agent, 1) == message
        await channel.send_many([message, message])
        assert await channel.try_receive(agent) == message
        assert await channel.try_receive(agent) == message
        assert await channel.inbox_len(agent) == 0
        try:
            await conn.execute("LPUSH")  # error reply
        except ReplyError:
            pass
        assert await conn.execute("MGET", "a", "b", "c") == [None, None, None]
        cancelled = conn.execute("PING")
        cancelled.cancel()
        orphaned = conn.execute("ECHO", "x")
        orphaned.orphan = lambda reply: None
        orphaned.cancel()
        await conn.execute_many([("PING",), ("ECHO", "y")])


async def test_no_growth_over_many_operations(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="leaks") as channel:
        await exercise(channel, agent, 2_000)  # warm up caches and freelists
        with memory_growth() as grown:
            await exercise(channel, agent, 10_000)
            await asyncio.sleep(0)
    # 10,000 rounds are 120,000 commands: a leak of one object per command would be MBs.
    assert grown.python < 200_000, grown.python
    assert grown.rss < 4_000_000, grown.rss
