"""Bad input: each case raises a clear TinytownError subclass and writes nothing.

(Dead-lettering of undecodable messages is tested in test_channel.py and
test_reliable.py; URL and town-name basics in test_channel.py.)
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import channel_cases
from channel_cases import msg
from tinytown import (
    Agent,
    AgentId,
    Channel,
    ChannelClosedError,
    Delivery,
    InvalidArgumentError,
    Message,
    MessageType,
    Task,
    TinytownError,
)


def sized_message(to: AgentId, size: int) -> Message:
    """A message whose JSON is exactly ``size`` bytes.

    The padding is computed on the very message that is returned (only its
    description changes): a second ``msg()`` would take a new timestamp,
    whose fraction may print with another number of digits (0, 3, 6 or 9).
    """
    base = msg(to, "")
    padding = "x" * (size - len(base.to_json()))
    padded = Message(base.id, base.from_, base.to, MessageType.Task(description=padding),
                     base.priority, base.created_at, base.correlation_id)
    assert len(padded.to_json()) == size
    return padded


# ------------------------------------------------------------------ oversized


async def test_oversized_writes_are_refused_before_anything_is_written(redis_server, redis_url):
    agent = AgentId.new()
    limit = 2000
    async with await Channel.connect(redis_url, town="alpha", max_message_bytes=limit) as channel:
        at_limit, over = sized_message(agent, limit), sized_message(agent, limit + 1)
        assert len(at_limit.to_json()) == limit and len(over.to_json()) == limit + 1
        sub = await channel.broadcasts().start()

        for attempt in (lambda: channel.send(over),
                        lambda: channel.send_many([msg(agent, "small"), over]),
                        lambda: channel.broadcast(over),
                        lambda: channel.set_agent_state(Agent.new("n" * limit, "claude")),
                        lambda: channel.set_task(Task.new("d" * limit))):
            with pytest.raises(InvalidArgumentError, match="max_message_bytes=2000"):
                await attempt()
        assert redis_server.command("DBSIZE") == 0

        await channel.send(at_limit)  # the limit itself is allowed
        await channel.send_many([at_limit])
        assert await channel.inbox_len(agent) == 2
        assert await channel.broadcast(at_limit) == 1
        # the first broadcast the subscriber sees is this one: the oversized one was not published
        assert await asyncio.wait_for(sub.__anext__(), 5) == at_limit
        await sub.close()


async def test_default_limit_is_16_mib(redis_server, redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        with pytest.raises(InvalidArgumentError, match="max_message_bytes=16777216"):
            await channel.send(sized_message(agent, 16 * 2**20 + 1))
        assert redis_server.command("DBSIZE") == 0
        big = sized_message(agent, 2**20)
        await channel.send(big)  # 1 MiB goes through
        assert await channel.receive(agent, 5) == big


# -------------------------------------------------------------- invalid ids


# channel_cases.BAD_IDS, plus near misses and a key pattern
BAD_IDS = channel_cases.BAD_IDS + ["12345678-1234-1234-1234-12345678901",
                                   "00000000-0000-0000-0000-00000000000g", "tt:alpha:inbox:*"]


async def test_every_id_taking_call_rejects_bad_ids(redis_server, redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        calls = [
            lambda i: channel.receive(i, 0.01),
            lambda i: channel.receive_reliable(i, 0.01),
            lambda i: channel.try_receive(i),
            lambda i: channel.inbox_len(i),
            lambda i: channel.processing_len(i),
            lambda i: channel.reclaim(i),
            lambda i: channel.get_agent_state(i),
            lambda i: channel.get_task(i),
        ]
        for bad in BAD_IDS:
            for call in calls:
                with pytest.raises(InvalidArgumentError):
                    await call(bad)
            with pytest.raises(InvalidArgumentError):
                Message.new(AgentId.supervisor(), bad, MessageType.Ping())
        assert redis_server.command("DBSIZE") == 0


@pytest.mark.parametrize("town", ["a\nb", "a\u00a0b", "tt:x", "*", "[", 42, b"bytes"])
async def test_more_bad_town_names(redis_url, town):
    with pytest.raises(InvalidArgumentError):
        await Channel.connect(redis_url, town=town)


async def test_bad_timeouts_for_reliable_receive(redis_server, redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for bad in [0, -1, -0.001, float("nan"), float("inf"), "1", None, True, timedelta(seconds=-1)]:
            with pytest.raises(InvalidArgumentError):
                await channel.receive_reliable(AgentId.new(), bad)
        for not_a_delivery in [None, msg(AgentId.new(), "x"), b"raw"]:
            with pytest.raises(InvalidArgumentError):
                await channel.ack(not_a_delivery)
        assert redis_server.command("DBSIZE") == 0


def test_tls_options_without_rediss_are_refused_before_connecting(redis_url):
    # rediss:// itself is supported (tests/test_tls.py); TLS options given
    # with another URL would otherwise be silently ignored.
    async def connect():
        return await Channel.connect(redis_url, town="alpha", ssl_ca_file="/etc/ssl/ca.pem")

    with pytest.raises(InvalidArgumentError, match="need a rediss:// URL"):
        asyncio.run(connect())


# --------------------------------------------------------------- after close


async def test_every_call_after_close_raises_and_writes_nothing(redis_server, redis_url):
    agent = AgentId.new()
    channel = await Channel.connect(redis_url, town="alpha")
    await channel.close()
    message = msg(agent, "late")
    delivery = Delivery(message, agent, message.to_json())
    calls = [
        lambda: channel.send(message),
        lambda: channel.send_many([message]),
        lambda: channel.send_many([]),
        lambda: channel.receive(agent, 1),
        lambda: channel.receive_reliable(agent, 1),
        lambda: channel.try_receive(agent),
        lambda: channel.inbox_len(agent),
        lambda: channel.processing_len(agent),
        lambda: channel.reclaim(agent),
        lambda: channel.ack(delivery),
        lambda: channel.broadcast(message),
        lambda: channel.set_agent_state(Agent.new("late", "claude")),
        lambda: channel.get_agent_state(agent),
        lambda: channel.set_task(Task.new("late")),
        lambda: channel.get_task(Task.new("x").id),
        lambda: channel.execute("SET", "k", "v"),
    ]
    for call in calls:
        with pytest.raises(ChannelClosedError):
            await call()
    with pytest.raises(ChannelClosedError):
        channel.broadcasts()
    assert redis_server.command("DBSIZE") == 0
    assert issubclass(ChannelClosedError, TinytownError)


async def test_subscription_after_close(redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        sub = channel.broadcasts()
        await sub.close()
        with pytest.raises(ChannelClosedError):
            await sub.start()
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()


# ------------------------------------------------- the QA battery's leftovers


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_bad_counts_timeouts_and_names_are_refused_before_anything_is_sent(redis_url, kind):
    from streams_harness import Monitor, open_channel

    monitor = Monitor(redis_url)
    agent = AgentId.new()
    try:
        async with open_channel(kind, redis_url, town="alpha") as channel:
            cases = {
                "send_many(None)": lambda: channel.send_many(None),
                "send_many(42)": lambda: channel.send_many(42),
                # Redis counts a blocking timeout in ms on a long long: past it,
                # "ERR timeout is negative" (or "out of range").
                "receive(10**20 s)": lambda: channel.receive(agent, 10**20),
                "receive(1e17 s)": lambda: channel.receive(agent, 1e17),
                "docket_reclaim('')": lambda: channel.docket_reclaim("", 0),
            }
            for name, call in cases.items():
                with pytest.raises(InvalidArgumentError):
                    await call()
                    pytest.fail(f"{name} was accepted")
            assert await monitor.commands(channel, transactions=True) == []
    finally:
        monitor.close()
