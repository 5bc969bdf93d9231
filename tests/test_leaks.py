"""No leak on the transport's paths: every reference and hiredis callback is released.

tracemalloc sees the Python objects (futures, replies, batches); RSS sees
hiredis's own mallocs (commands, reply trees, callback entries).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from tinytown import AgentId, Channel, Message, MessageType, ReplyError


def rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
        gc.collect()
        tracemalloc.start()
        try:
            before_py = tracemalloc.get_traced_memory()[0]
            before_rss = rss_bytes()
            await exercise(channel, agent, 10_000)
            await asyncio.sleep(0)
            gc.collect()
            growth_py = tracemalloc.get_traced_memory()[0] - before_py
            growth_rss = rss_bytes() - before_rss
        finally:
            tracemalloc.stop()
    # 10,000 rounds are 120,000 commands: a leak of one object per command would be MBs.
    assert growth_py < 200_000, growth_py
    assert growth_rss < 4_000_000, growth_rss
