"""The public Channel API against real redis-server processes, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

from channel_cases import (
    BAD_IDS,
    BAD_TIMEOUTS,
    BAD_TOWNS,
    BAD_URLS,
    NOT_MESSAGES,
    PRIORITY_ORDER,
    PRIORITY_SENDS,
    UNDECODABLE,
    msg,
    send_many_case,
    text_of,
)
from tinytown import (
    Agent,
    AgentId,
    AgentState,
    Channel,
    ChannelClosedError,
    ConnectionError,
    DecodeError,
    InvalidArgumentError,
    Message,
    MessageType,
    Task,
    TaskState,
)


# ----------------------------------------------------------------- send/receive


async def test_send_writes_rust_layout(redis_server, redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        message = msg(agent, "hello")
        await channel.send(message)
        # checked with an independent client: key and JSON exactly as Rust writes them
        raw = redis_server.command("LRANGE", f"tt:alpha:inbox:{agent}", 0, -1)
        assert raw == [message.to_json()]
        assert await channel.inbox_len(agent) == 1
        got = await channel.try_receive(agent)
        assert got == message
        assert await channel.try_receive(agent) is None
        assert await channel.inbox_len(agent) == 0


async def test_priority_placement(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for text, priority in PRIORITY_SENDS:
            await channel.send(msg(agent, text, priority))
        order = [text_of(await channel.try_receive(agent)) for _ in PRIORITY_SENDS]
        assert order == PRIORITY_ORDER


async def test_ids_accept_id_uuid_and_str(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send(msg(agent, "x"))
        assert await channel.inbox_len(agent) == 1
        assert await channel.inbox_len(uuid.UUID(agent)) == 1
        assert await channel.inbox_len(str(agent)) == 1
        assert await channel.inbox_len(str(agent).upper()) == 1
        assert text_of(await channel.receive(uuid.UUID(agent), 1)) == "x"


async def test_receive_times_out_with_none(redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        start = time.monotonic()
        assert await channel.receive(AgentId.new(), 0.2) is None
        assert await channel.receive(AgentId.new(), timedelta(milliseconds=150)) is None
        # it did wait (lower bound only: never an upper bound on this shared machine)
        assert time.monotonic() - start >= 0.3


async def test_receive_wakes_when_a_message_arrives(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as receiver, \
            await Channel.connect(redis_url, town="alpha") as sender:
        waiting = asyncio.ensure_future(receiver.receive(agent, 30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await sender.send(msg(agent, "wake up"))
        got = await asyncio.wait_for(waiting, 10)
        assert text_of(got) == "wake up"


async def test_receive_does_not_block_other_calls(redis_url):
    """A receive() waiting 30 s must not delay send()/inbox_len() on the same Channel."""
    waiting_agent, other = AgentId.new(), AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        blocked = [asyncio.ensure_future(channel.receive(waiting_agent, 30)) for _ in range(3)]
        await asyncio.sleep(0.1)
        # these complete while three BLPOPs are parked on the server
        await asyncio.wait_for(channel.send(msg(other, "through")), 5)
        assert await asyncio.wait_for(channel.inbox_len(other), 5) == 1
        assert text_of(await asyncio.wait_for(channel.receive(other, 30), 5)) == "through"
        assert all(not b.done() for b in blocked)
        for b in blocked:
            b.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)


async def test_concurrent_receives_each_get_one_message(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha", max_receivers=4) as channel:
        receivers = [asyncio.ensure_future(channel.receive(agent, 20)) for _ in range(10)]
        await asyncio.sleep(0.05)
        await channel.send_many([msg(agent, f"m{i}") for i in range(10)])
        got = await asyncio.wait_for(asyncio.gather(*receivers), 15)
        assert sorted(text_of(m) for m in got) == sorted(f"m{i}" for i in range(10))


async def test_cancelled_receive_loses_nothing(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for _ in range(20):
            task = asyncio.ensure_future(channel.receive(agent, 5))
            await asyncio.sleep(0.01)
            await channel.send(msg(agent, "precious"))
            task.cancel()  # may land before or after BLPOP popped the message
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            await asyncio.sleep(0.05)  # let a requeue land
            back = await channel.try_receive(agent)
            assert (got is None) != (back is None), "message lost or duplicated"
            assert text_of(got or back) == "precious"


async def test_send_many_keeps_order_and_placement(redis_server, redis_url):
    a, b = AgentId.new(), AgentId.new()
    messages, inbox_a, pops_b = send_many_case(a, b)
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send_many(messages)
        await channel.send_many([])
        assert await channel.inbox_len(a) == len(inbox_a)
        raw_a = redis_server.command("LRANGE", f"tt:alpha:inbox:{a}", 0, -1)
        assert [text_of(Message.from_json(r)) for r in raw_a] == inbox_a
        got_b = [text_of(await channel.try_receive(b)) for _ in pops_b]
        # each HIGH/URGENT went to the front, as individual sends would have put them
        assert got_b == pops_b


async def test_send_many_encodes_everything_before_sending(redis_url):
    agent = AgentId.new()
    bad = msg(agent, "lone \ud800")
    async with await Channel.connect(redis_url, town="alpha") as channel:
        with pytest.raises(Exception) as info:
            await channel.send_many([msg(agent, "ok"), bad])
        assert isinstance(info.value, ValueError)
        assert await channel.inbox_len(agent) == 0


# -------------------------------------------------------------------- broadcast


async def test_broadcast_reaches_several_subscribers(redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        subs = [await channel.broadcasts().start() for _ in range(3)]
        sent = [Message.new(AgentId.supervisor(), AgentId.new(), MessageType.Ping()) for _ in range(3)]
        for m in sent:
            assert await channel.broadcast(m) == 3
        for sub in subs:
            got = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(3)]
            assert got == sent
        for sub in subs:
            await sub.close()
        assert await channel.broadcast(sent[0]) == 0


async def test_broadcast_async_for_and_bad_payload(redis_server, redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        async with channel.broadcasts() as sub:
            good = Message.new(AgentId.new(), AgentId.new(), MessageType.Shutdown())
            redis_server.command("PUBLISH", "tt:alpha:broadcast", b"{not json")
            await channel.broadcast(good)
            with pytest.raises(DecodeError) as info:
                await asyncio.wait_for(sub.__anext__(), 5)
            assert info.value.raw == b"{not json"
            async for received in sub:  # the subscription goes on after a bad payload
                assert received == good
                break


# ------------------------------------------------------------------------ state


async def test_agent_state_round_trip(redis_server, redis_url):
    agent = Agent.new("worker-1", "claude")
    async with await Channel.connect(redis_url, town="alpha", layout="json") as channel:
        assert await channel.get_agent_state(agent.id) is None
        await channel.set_agent_state(agent)
        assert redis_server.command("GET", f"tt:alpha:agent:{agent.id}") == agent.to_json()
        assert await channel.get_agent_state(agent.id) == agent
        agent.state = AgentState.WORKING
        await channel.set_agent_state(agent)
        assert (await channel.get_agent_state(str(agent.id))).state is AgentState.WORKING


async def test_task_round_trip(redis_server, redis_url):
    task = Task.new("Refactor the scheduler")
    async with await Channel.connect(redis_url, town="alpha", layout="json") as channel:
        assert await channel.get_task(task.id) is None
        await channel.set_task(task)
        assert redis_server.command("GET", f"tt:alpha:task:{task.id}") == task.to_json()
        assert await channel.get_task(uuid.UUID(task.id)) == task
        task.assign(AgentId.new())
        await channel.set_task(task)
        assert (await channel.get_task(task.id)).state is TaskState.ASSIGNED


async def test_state_written_as_hash_by_newer_rust_is_read(redis_server, redis_url):
    agent = Agent.new("hash-agent", "codex")
    task = Task.new("hashed")
    flat_agent = [x for kv in agent.to_hash().items() for x in kv]
    flat_task = [x for kv in task.to_hash().items() for x in kv]
    redis_server.command("HSET", f"tt:alpha:agent:{agent.id}", *flat_agent)
    redis_server.command("HSET", f"tt:alpha:task:{task.id}", *flat_task)
    async with await Channel.connect(redis_url, town="alpha") as channel:
        assert await channel.get_agent_state(agent.id) == agent
        assert await channel.get_task(task.id) == task


# ------------------------------------------------------------- towns and errors


async def test_towns_are_isolated_on_one_server(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as alpha, \
            await Channel.connect(redis_url, town="beta") as beta:
        await alpha.send(msg(agent, "for alpha"))
        a = Agent.new("same-id", "claude")
        await alpha.set_agent_state(a)
        assert await beta.inbox_len(agent) == 0
        assert await beta.try_receive(agent) is None
        assert await beta.get_agent_state(a.id) is None
        assert await alpha.inbox_len(agent) == 1


async def test_undecodable_message_goes_to_dead_letters(redis_server, redis_url):
    agent = AgentId.new()
    inbox = f"tt:alpha:inbox:{agent}"
    redis_server.command("RPUSH", inbox, *UNDECODABLE)
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send(msg(agent, "good"))
        with pytest.raises(DecodeError) as first:
            await channel.try_receive(agent)
        assert first.value.raw == UNDECODABLE[0]
        with pytest.raises(DecodeError) as second:
            await channel.receive(agent, 1)
        assert second.value.raw == UNDECODABLE[1]
        assert text_of(await channel.receive(agent, 1)) == "good"
        assert redis_server.command("LRANGE", f"tt:alpha:dead:{agent}", 0, -1) == UNDECODABLE


@pytest.mark.parametrize("url", BAD_URLS)
async def test_bad_urls(url):
    with pytest.raises(InvalidArgumentError):
        await Channel.connect(url, town="alpha")


@pytest.mark.parametrize("town", BAD_TOWNS)
async def test_bad_town_names(redis_url, town):
    with pytest.raises(InvalidArgumentError):
        await Channel.connect(redis_url, town=town)


async def test_bad_arguments(redis_url):
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for bad_id in BAD_IDS:
            with pytest.raises(InvalidArgumentError):
                await channel.inbox_len(bad_id)
            with pytest.raises(InvalidArgumentError):
                await channel.get_agent_state(bad_id)
        for bad_timeout in BAD_TIMEOUTS:
            with pytest.raises(InvalidArgumentError):
                await channel.receive(AgentId.new(), bad_timeout)
        for not_a_message in NOT_MESSAGES:
            with pytest.raises(InvalidArgumentError):
                await channel.send(not_a_message)
            with pytest.raises(InvalidArgumentError):
                await channel.broadcast(not_a_message)
        with pytest.raises(InvalidArgumentError):
            await channel.set_agent_state(Task.new("not an agent"))
        with pytest.raises(InvalidArgumentError):
            await channel.set_task(Agent.new("not a task", "x"))
        assert await channel.execute("DBSIZE") == 0  # nothing was written


async def test_use_after_close(redis_url):
    channel = await Channel.connect(redis_url, town="alpha")
    await channel.close()
    await channel.close()  # idempotent
    assert channel.is_closed
    with pytest.raises(ChannelClosedError):
        await channel.send(msg(AgentId.new(), "late"))
    with pytest.raises(ChannelClosedError):
        await channel.receive(AgentId.new(), 1)
    with pytest.raises(ChannelClosedError):
        channel.broadcasts()


async def test_unreachable_server(tmp_path):
    with pytest.raises(ConnectionError):
        await Channel.connect(f"unix://{tmp_path}/none.sock", town="alpha")


# ------------------------------------------------------------------ reconnects


async def test_pending_calls_fail_and_next_call_reconnects(fresh_redis):
    agent = AgentId.new()
    async with await Channel.connect(fresh_redis.url, town="alpha", reconnect_timeout=0.5) as channel:
        await channel.send(msg(agent, "before"))
        blocked = asyncio.ensure_future(channel.receive(AgentId.new(), 30))
        await asyncio.sleep(0.1)
        fresh_redis.kill()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(blocked, 5)
        with pytest.raises(ConnectionError):
            await channel.inbox_len(agent)
        fresh_redis.restart()
        # persistence is off on this server: the restart lost the data, not the channel
        await channel.send(msg(agent, "after"))
        assert await channel.inbox_len(agent) == 1
        assert text_of(await channel.receive(agent, 5)) == "after"


async def test_tcp_with_acl_user_password_and_db(redis_server_factory):
    server = redis_server_factory("--requirepass", "s3cret", tcp=True)
    server.command("ACL", "SETUSER", "agent", "on", ">pw:with@chars", "~*", "&*", "+@all")
    agent = AgentId.new()
    async with await Channel.connect(f"redis://agent:pw%3Awith%40chars@127.0.0.1:{server.port}/3",
                                     town="alpha") as channel:
        await channel.send(msg(agent, "in db 3"))
        assert await channel.inbox_len(agent) == 1
        keyspace = server.command("INFO", "keyspace")
        assert b"db3:keys=1" in keyspace and b"db0:" not in keyspace
    async with await Channel.connect(f"redis://:s3cret@localhost:{server.port}/3", town="alpha") as c2:
        assert await c2.inbox_len(agent) == 1
    with pytest.raises(ConnectionError, match="refused the login"):
        await Channel.connect(f"redis://:wrong@127.0.0.1:{server.port}", town="alpha")


# -- backpressure (issue 14) ----------------------------------------------------

async def test_a_flood_of_sends_waits_above_the_high_water_mark_and_loses_nothing(fresh_redis):
    """With the server stopped, 3,000 concurrent sends of ~1 KB (3 MB) queue
    at most high + one command on the connection; the rest wait; once the
    server resumes every message arrives, each once."""
    import os
    import signal

    high, low = 128 * 1024, 32 * 1024
    async with await Channel.connect(fresh_redis.url, town="alpha",
                                     write_buffer_limits=(high, low)) as channel:
        agent = AgentId.new()
        messages = [Message.new(AgentId.supervisor(), agent, MessageType.Custom(
            kind="flood", payload=f"{i:05d}" + "p" * 1000)) for i in range(3000)]
        conn = channel._conn
        assert conn.get_write_buffer_limits() == (high, low)
        one_command = 2 * len(messages[0].to_json()) + 200
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            sends = [asyncio.ensure_future(channel.send(m)) for m in messages[:2000]]
            sends.append(asyncio.ensure_future(channel.send_many(messages[2000:2500])))
            sends += [asyncio.ensure_future(channel.execute("RPUSH", f"tt:alpha:inbox:{agent}",
                                                            m.to_json())) for m in messages[2500:]]
            peak = 0
            for _ in range(40):
                await asyncio.sleep(0.005)
                peak = max(peak, conn.write_buffer_size)
            assert not any(s.done() for s in sends)
            assert conn.pending_replies < 1000  # most sends wait before queueing anything
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        while not all(s.done() for s in sends):
            peak = max(peak, conn.write_buffer_size)
            await asyncio.sleep(0.001)
        await asyncio.gather(*sends)
        assert peak <= high + one_command + 500 * one_command  # the send_many is one command
        assert await channel.inbox_len(agent) == 3000
        got = {(await channel.try_receive(agent)).id for _ in range(3000)}
        assert got == {m.id for m in messages}


async def test_write_buffer_limits_are_checked(redis_url):
    for bad in [(1, 2), (-1, -1), (1.5, 1), "big", (1, 1, 1)]:
        with pytest.raises(InvalidArgumentError, match="write_buffer_limits"):
            await Channel.connect(redis_url, town="alpha", write_buffer_limits=bad)
    async with await Channel.connect(redis_url, town="alpha", write_buffer_limits=None) as channel:
        assert channel._conn.wait_writable() is None
        await channel.send(msg(AgentId.new(), "hi"))


@pytest.mark.parametrize("call", ["send_urgent", "broadcast", "set_task", "execute"])
async def test_every_write_waits_above_the_high_water_mark(fresh_redis, call):
    """Not only send: every call that writes waits while the queue is over
    the high-water mark, so the queue stays under high plus one command."""
    import os
    import signal

    high = 64 * 1024
    async with await Channel.connect(fresh_redis.url, town="alpha",
                                     write_buffer_limits=(high, 16 * 1024)) as channel:
        agent = AgentId.new()
        message = Message.new(AgentId.supervisor(), agent,
                              MessageType.Custom(kind="flood", payload="p" * 1000))
        one_command = 2 * len(message.to_json()) + 200
        pid = fresh_redis.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            if call == "set_task":
                args: list[object] = [Task.new("t" * 1000)]
            elif call == "execute":
                args = ["RPUSH", "flood", message.to_json()]
            else:
                args = [message]
            calls = [asyncio.ensure_future(getattr(channel, call)(*args)) for _ in range(20_000)]
            peak = 0
            for _ in range(20):
                await asyncio.sleep(0.005)
                peak = max(peak, channel._conn.write_buffer_size)
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.gather(*calls)
        assert peak <= high + one_command, f"{peak:,} bytes queued"
        if call == "send_urgent":   # and every one of them arrived
            assert await channel.execute("LLEN", f"tt:alpha:urgent:{agent}") == 20_000
        elif call == "execute":
            assert await channel.execute("LLEN", "flood") == 20_000
