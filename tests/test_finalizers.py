"""What the garbage collector finds is closed (issue 10, items 13 and 14): a
Channel dropped without close(), a subscription left with ``break``. Counted
in file descriptors and server clients, not in time."""

from __future__ import annotations

import asyncio
import gc
import os
import warnings

from channel_cases import msg, text_of
from tinytown import AgentId, Channel, SyncChannel

ROUNDS = 60


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def server_clients(channel: Channel) -> int:
    return (await channel.execute("CLIENT", "LIST")).count(b"\n")


async def subscribers(channel: Channel) -> int:
    return (await channel.execute("PUBSUB", "NUMSUB", channel.keys.broadcast))[1]


async def settle(counts, target) -> tuple:
    """Collect garbage and run the loop until ``counts()`` is back to
    ``target`` (or 100 tries): closing takes a loop iteration or two."""
    now = None
    for _ in range(100):
        gc.collect()
        await asyncio.sleep(0.01)
        now = await counts()
        if all(n <= t for n, t in zip(now, target)):
            break
    return now


# ------------------------------------------------------------------ item 13


async def test_dropped_channel_is_closed_and_warns(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as control:
        async def counts() -> tuple[int, int]:
            return open_fds(), await server_clients(control)

        gc.collect()
        before = await counts()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(ROUNDS):
                channel = await Channel.connect(redis_url, town="alpha")
                await channel.send(msg(agent, "x"))
                assert await channel.receive(agent, 1) is not None  # a receiver connection too
                del channel
            after = await settle(counts, before)
        # each channel held two connections: 2 * ROUNDS fds and clients if leaked
        assert after[0] - before[0] < 5, (before, after)
        assert after[1] - before[1] < 5, (before, after)
        unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)
                    and "unclosed <tinytown.Channel" in str(w.message)]
        assert len(unclosed) >= ROUNDS - 2


async def test_closed_or_unconnected_channel_does_not_warn(redis_url, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        channel = await Channel.connect(redis_url, town="alpha")
        await channel.close()
        del channel
        try:
            await Channel.connect(f"unix://{tmp_path}/nothing.sock", town="alpha")
        except Exception:
            pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ------------------------------------------------------------------ item 14


async def test_leaving_async_for_with_break_unsubscribes(redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        async def consume_one() -> str:
            async for message in channel.broadcasts():
                return text_of(message)  # leaves the loop like break
            raise AssertionError("no broadcast")

        async def counts() -> tuple[int, int]:
            return open_fds(), await subscribers(channel)

        async def subscribers_become(n: int) -> bool:
            for _ in range(300):
                if await subscribers(channel) == n:
                    return True
                gc.collect()
                await asyncio.sleep(0.005)
            return False

        gc.collect()
        before = await counts()
        for i in range(ROUNDS):
            # the previous loop's subscription is over (Redis saw it close)
            assert await subscribers_become(0), f"round {i}: still subscribed"
            task = asyncio.ensure_future(consume_one())
            assert await subscribers_become(1)
            await channel.broadcast(msg(AgentId.new(), f"b{i}"))
            assert await task == f"b{i}"
            del task
        after = await settle(counts, before)
        assert after[0] - before[0] < 5, (before, after)
        assert after[1] == before[1] == 0, (before, after)
        # nobody listens any more: a broadcast reaches no one, is queued nowhere
        assert await channel.broadcast(msg(AgentId.new(), "late")) == 0
        assert len(channel._subscriptions) == 0


def _sync_subscribers(channel: SyncChannel) -> int:
    return channel.execute("PUBSUB", "NUMSUB", channel.keys.broadcast)[1]


def test_leaving_a_sync_subscription_loop_unsubscribes(redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel, \
            SyncChannel.connect(redis_url, town="alpha") as publisher:
        def subscribed_with_one_waiting(i: int):
            sub = channel.broadcasts().start()
            publisher.broadcast(msg(AgentId.new(), f"b{i}"))
            return sub

        gc.collect()
        fds = open_fds()
        for i in range(ROUNDS):
            for message in subscribed_with_one_waiting(i):
                assert text_of(message) == f"b{i}"
                break
        for _ in range(100):
            gc.collect()
            if _sync_subscribers(channel) == 0:
                break
        assert _sync_subscribers(channel) == 0
        assert open_fds() - fds < 5
        assert publisher.broadcast(msg(AgentId.new(), "late")) == 0
