"""Cancelling a blocking receive (receive, receive_reliable): the cancellation
is never swallowed, the receiver slot frees at once and nothing is lost or
reordered (issue 10, items 2-4). On asyncio and uvloop, both transports."""

from __future__ import annotations

import asyncio

import pytest

from channel_cases import msg, text_of
from tinytown import AgentId, Channel

CALLS = ["receive", "receive_reliable"]


async def call(channel: Channel, name: str, agent: AgentId, timeout: float) -> str | None:
    """Run receive or receive_reliable (acked); the text of what came, or None."""
    got = await getattr(channel, name)(agent, timeout)
    if got is None:
        return None
    if name == "receive_reliable":
        await channel.ack(got)
        got = got.message
    return text_of(got)


async def blocked_clients(channel: Channel) -> int:
    info = (await channel.execute("INFO", "clients")).decode()
    return int(info.split("blocked_clients:")[1].split()[0])


async def wait_blocked(channel: Channel, n: int) -> None:
    while await blocked_clients(channel) != n:
        await asyncio.sleep(0.002)


# ------------------------------------------------------------------ item 2


@pytest.mark.parametrize("name", CALLS)
async def test_cancel_while_the_receiver_connection_opens_is_not_swallowed(redis_url, name):
    """Cancel after k loop iterations, for every k while a fresh channel opens
    and logs in its receiver connection: the task must end cancelled, never
    run on to return None at its timeout."""
    agent = AgentId.new()
    swallowed = []
    for k in range(40):
        async with await Channel.connect(redis_url, town="alpha") as channel:
            task = asyncio.ensure_future(call(channel, name, agent, 1))
            for _ in range(k):
                await asyncio.sleep(0)
            assert task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                continue
            swallowed.append((k, result))
    assert swallowed == []


@pytest.mark.parametrize("name", CALLS)
async def test_tiny_wait_for_raises_timeout_error(redis_url, name):
    """``wait_for(receive(a, 1), 0.0002)`` on a channel whose receiver is not
    open yet must raise TimeoutError, not return None a second later."""
    agent = AgentId.new()
    results = []
    for i in range(40):
        async with await Channel.connect(redis_url, town="alpha") as channel:
            try:
                results.append(await asyncio.wait_for(call(channel, name, agent, 1), 0.0002 * (i % 8)))
            except asyncio.TimeoutError:
                pass
    assert results == []


# ------------------------------------------------------------------ item 3


@pytest.mark.parametrize("name", CALLS)
async def test_cancelled_blocked_receives_do_not_reorder_the_inbox(redis_url, name):
    """Three receives blocked on the server are cancelled, then m0, m1, m2 are
    sent one by one: they come out m0, m1, m2, every round."""
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for _ in range(30):
            tasks = [asyncio.ensure_future(call(channel, name, agent, 20)) for _ in range(3)]
            await wait_blocked(channel, 3)
            for task in tasks:
                task.cancel()
            for i in range(3):
                await channel.send(msg(agent, f"m{i}"))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            got = [await call(channel, name, agent, 2) for _ in range(3)]
            assert got == ["m0", "m1", "m2"]
            assert await channel.inbox_len(agent) == 0
            assert await channel.processing_len(agent) == 0


@pytest.mark.parametrize("name", CALLS)
async def test_messages_taken_by_several_cancelled_receives_go_back_in_order(redis_url, name):
    """m0, m1, m2 reach three blocked receives in one pipeline and all three
    are cancelled as the messages arrive: whichever were taken go back in front
    of the inbox in the order they were sent, nothing lost or doubled."""
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for _ in range(30):
            # the bare call: a cancel must not land in call()'s ack
            tasks = [asyncio.ensure_future(getattr(channel, name)(agent, 20)) for _ in range(3)]
            await wait_blocked(channel, 3)
            await channel.send_many([msg(agent, f"m{i}") for i in range(3)] + [msg(agent, "tail")])
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            delivered = []
            for r in results:
                if name == "receive_reliable" and not isinstance(r, BaseException):
                    await channel.ack(r)
                    r = r.message
                if not isinstance(r, BaseException):
                    delivered.append(text_of(r))
            assert all(not isinstance(r, BaseException) or isinstance(r, asyncio.CancelledError)
                       for r in results), results
            left = []
            while (m := await call(channel, name, agent, 0.01)) is not None:
                left.append(m)
            # what the callers did not get is back, in the order it was sent
            assert left == [m for m in ["m0", "m1", "m2", "tail"] if m not in delivered]
            assert await channel.processing_len(agent) == 0


# ------------------------------------------------------------------ item 4


@pytest.mark.parametrize("name", CALLS)
async def test_cancelled_receive_frees_its_slot_at_once(redis_url, name):
    a, b = AgentId.new(), AgentId.new()
    async with await Channel.connect(redis_url, town="alpha", max_receivers=1) as channel:
        await channel.send(msg(b, "waiting"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call(channel, name, a, 10), 0.3)
        assert await call(channel, name, b, 2) == "waiting"
        # the cancelled BLPOP is gone from the server: a's next message stays
        await channel.send(msg(a, "for a"))
        assert await blocked_clients(channel) == 0
        assert await channel.inbox_len(a) == 1


async def test_wait_for_receive_loop_does_not_starve_other_agents(redis_url):
    """The common loop ``wait_for(receive(me, 30), t)`` must leave no BLPOP
    behind: 40 of them with the default 16 receivers, then b still gets its
    message at once."""
    me, b = AgentId.new(), AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for _ in range(40):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(channel.receive(me, 30), 0.01)
        assert await blocked_clients(channel) == 0
        await channel.send(msg(b, "hello"))
        assert text_of(await channel.receive(b, 2)) == "hello"


@pytest.mark.parametrize("name", CALLS)
async def test_cancel_without_client_permission_frees_the_slot(redis_server_factory, name):
    """A user denied CLIENT: the cancelled receive's connection is closed
    instead, which also frees the slot; a message it was handed still goes back."""
    server = redis_server_factory(tcp=True)
    server.command("ACL", "SETUSER", "agent", "on", ">pw", "~*", "&*", "+@all", "-client")
    url = f"redis://agent:pw@127.0.0.1:{server.port}"
    a, b = AgentId.new(), AgentId.new()
    async with await Channel.connect(url, town="alpha", max_receivers=1) as channel:
        await channel.send(msg(b, "waiting"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call(channel, name, a, 10), 0.3)
        assert await call(channel, name, b, 2) == "waiting"
        for _ in range(10):  # cancelled right after the message was sent
            task = asyncio.ensure_future(getattr(channel, name)(a, 5))
            await asyncio.sleep(0.01)
            await channel.send(msg(a, "precious"))
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            if got is not None and name == "receive_reliable":
                await channel.ack(got)
            back = await call(channel, name, a, 0.01)
            assert (got is None) != (back is None), "message lost or duplicated"
