"""Channel over a real three-node Redis Cluster (``redis+cluster://``).

The cluster is started by the ``redis_cluster`` fixture (three masters,
``redis-cli --cluster create``); every check of where data landed asks the
node that the cluster itself says owns the key.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from test_channel import msg, text_of  # the same message helpers as the single-server tests

from tinytown import (
    Agent,
    AgentId,
    AgentState,
    Channel,
    ConnectionError,
    InvalidArgumentError,
    Message,
    Priority,
    ReplyError,
    Task,
    TaskId,
)
from tinytown._cluster import command_slot, key_slot
from tinytown._transports import connection_class


def agents_on_every_node(cluster, town: str, per_node: int = 2) -> list[AgentId]:
    """Agent ids whose inboxes cover every node of the cluster."""
    found: dict[int, list[AgentId]] = {n.port: [] for n in cluster.nodes}
    while any(len(v) < per_node for v in found.values()):
        agent = AgentId.new()
        port = cluster.node_for(f"tt:{town}:inbox:{agent}").port
        if len(found[port]) < per_node:
            found[port].append(agent)
    return [a for v in found.values() for a in v]


def test_key_slot_is_the_clusters(redis_cluster):
    rng = random.Random(7)
    keys = [b"", b"a", b"tt:alpha:inbox:" + str(AgentId.new()).encode(), b"{user1000}.following",
            b"foo{}{bar}", b"foo{{bar}}zap", b"foo{bar}{zap}", b"{}x", "é{ü}".encode()]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(200)]
    node = redis_cluster.nodes[0]
    for key in keys:
        assert key_slot(key) == node.command("CLUSTER", "KEYSLOT", key), key


def test_command_slot_finds_the_key():
    assert command_slot((b"LPUSH", "k", "v")) == key_slot(b"k")
    assert command_slot(("EVAL", "return 1", "1", b"k2")) == key_slot(b"k2")
    assert command_slot(("EVAL", "return 1", 0)) is None
    assert command_slot(("PING",)) is None


async def test_send_receive_spread_over_the_nodes(redis_cluster, cluster_url):
    town = "metro"
    agents = agents_on_every_node(redis_cluster, town)
    async with await Channel.connect(cluster_url, town=town) as channel:
        for i, agent in enumerate(agents):
            await channel.send(msg(agent, f"m{i}"))
            await channel.send(msg(agent, f"u{i}", Priority.URGENT))
        for i, agent in enumerate(agents):
            key = f"tt:{town}:inbox:{agent}"
            raw = redis_cluster.node_for(key).command("LRANGE", key, 0, -1)
            assert [Message.from_json(r).msg_type.description for r in raw] == [f"u{i}", f"m{i}"]
            assert await channel.inbox_len(agent) == 2
            assert text_of(await channel.try_receive(agent)) == f"u{i}"
            assert text_of(await channel.receive(agent, 1)) == f"m{i}"
            assert await channel.try_receive(agent) is None
        assert await channel.receive(agents[0], 0.05) is None


async def test_blocking_receives_on_several_nodes_at_once(redis_cluster, cluster_url):
    agents = agents_on_every_node(redis_cluster, "metro", per_node=1)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        waiting = [asyncio.ensure_future(channel.receive(a, 10)) for a in agents]
        await asyncio.sleep(0.1)
        assert not any(w.done() for w in waiting)
        for agent in reversed(agents):
            await channel.send(msg(agent, f"for {agent}"))
        got = await asyncio.gather(*waiting)
        assert [text_of(m) for m in got] == [f"for {a}" for a in agents]


async def test_cancelled_receive_loses_nothing(redis_cluster, cluster_url):
    agent = AgentId.new()
    async with await Channel.connect(cluster_url, town="metro") as channel:
        for _ in range(20):
            task = asyncio.ensure_future(channel.receive(agent, 5))
            await asyncio.sleep(0.01)
            await channel.send(msg(agent, "precious"))
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            if got is None:  # cancelled before or after BLPOP took it: it must be back
                await asyncio.sleep(0.02)
                assert text_of(await channel.try_receive(agent)) == "precious"
            else:
                assert text_of(got) == "precious"
            assert await channel.inbox_len(agent) == 0


async def test_send_many_keeps_each_inbox_in_order(redis_cluster, cluster_url):
    agents = agents_on_every_node(redis_cluster, "metro")
    messages = [msg(a, f"{a}-{i}") for i in range(30) for a in agents]
    async with await Channel.connect(cluster_url, town="metro") as channel:
        await channel.send_many(messages)
        for agent in agents:
            key = f"tt:metro:inbox:{agent}"
            raw = redis_cluster.node_for(key).command("LRANGE", key, 0, -1)
            texts = [Message.from_json(r).msg_type.description for r in raw]
            assert texts == [f"{agent}-{i}" for i in range(30)]


async def test_agent_and_task_state(redis_cluster, cluster_url):
    async with await Channel.connect(cluster_url, town="metro") as channel:
        agents: list[Agent] = []
        while {redis_cluster.node_for(f"tt:metro:agent:{a.id}").port for a in agents} != \
                {n.port for n in redis_cluster.nodes}:
            agents.append(Agent.new(f"worker-{len(agents)}", "claude"))
        for agent in agents:
            agent.state = AgentState.WORKING
            await channel.set_agent_state(agent)
        for agent in agents:
            key = f"tt:metro:agent:{agent.id}"
            # the hash layout's MULTI/HDEL/HMSET/EXEC ran on the node owning the key
            assert redis_cluster.node_for(key).command("HGET", key, "name") == agent.name.encode()
            assert await channel.get_agent_state(agent.id) == agent
        task = Task.new("ship it")
        task.assign(agents[0].id)
        await channel.set_task(task)
        assert await channel.get_task(task.id) == task
        assert await channel.get_task(TaskId.new()) is None


async def test_broadcast_reaches_subscribers_on_every_node(redis_cluster, cluster_url):
    async with await Channel.connect(cluster_url, town="metro", layout="json") as channel:
        subs = [await channel.broadcasts().start() for _ in range(2)]
        # A subscriber of another client on a node that does not own
        # tt:broadcast's slot: classic pub/sub crosses the cluster bus.
        owner = redis_cluster.node_for("tt:broadcast")
        other = next(n for n in redis_cluster.nodes if n is not owner)
        raw_sub = connection_class()(asyncio.get_running_loop())
        await raw_sub.connect_tcp("127.0.0.1", other.port)
        pushed: list = []
        subscribed = asyncio.Event()
        raw_sub.subscribe(lambda item: (pushed.append(item), subscribed.set()), "tt:broadcast")
        await asyncio.wait_for(subscribed.wait(), 5)
        sent = [msg(AgentId.new(), f"news {i}") for i in range(3)]
        for m in sent:
            # PUBLISH counts the subscribers of the node it ran on: both of tinytown's
            assert await channel.broadcast(m) == 2
        for sub in subs:
            assert [await asyncio.wait_for(sub.__anext__(), 5) for _ in sent] == sent
        for _ in range(50):
            if len(pushed) == 1 + len(sent):
                break
            await asyncio.sleep(0.02)
        assert [p[2] for p in pushed[1:]] == [m.to_json() for m in sent]
        raw_sub.close()
        for sub in subs:
            await sub.close()


async def test_raw_commands_are_routed(redis_cluster, cluster_url):
    async with await Channel.connect(cluster_url, town="metro") as channel:
        assert await channel.execute("PING") == b"PONG"
        for i in range(30):
            assert await channel.execute("SET", f"key:{i}", i) == b"OK"
        for i in range(30):
            assert redis_cluster.node_for(f"key:{i}").command("GET", f"key:{i}") == str(i).encode()
            assert await channel.execute("GET", f"key:{i}") == str(i).encode()
        assert await channel.execute("MSET", "{t}a", 1, "{t}b", 2) == b"OK"
        with pytest.raises(ReplyError, match="CROSSSLOT"):
            await channel.execute("MSET", "a1", 1, "b2", 2)
        with pytest.raises(InvalidArgumentError):
            await channel.execute("SET", "k", object())
        assert await channel.execute("GET", "key:1") == b"1"


async def _move_slot(cluster, slot: int, target) -> None:
    target_id = cluster.node_id(target)
    for node in [target] + [n for n in cluster.nodes if n is not target]:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def inbox_slot_and_nodes(cluster):
    """A new agent, its inbox key and slot, the node owning it and another node."""
    agent = AgentId.new()
    key = f"tt:metro:inbox:{agent}"
    owner = cluster.node_for(key)
    return agent, key, key_slot(key.encode()), owner, next(n for n in cluster.nodes if n is not owner)


async def test_moved_is_followed_and_learnt(redis_cluster, cluster_url):
    agent, key, slot, owner, target = inbox_slot_and_nodes(redis_cluster)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        assert await channel.inbox_len(agent) == 0  # the slot map is known now
        await _move_slot(redis_cluster, slot, target)  # the slot is empty: no MIGRATE needed
        try:
            await channel.send(msg(agent, "after the move"))  # MOVED, then the new owner
            assert target.command("LLEN", key) == 1
            assert channel._cluster.node_of(slot) == f"127.0.0.1:{target.port}"
            assert text_of(await channel.receive(agent, 1)) == "after the move"
        finally:
            await _move_slot(redis_cluster, slot, owner)
        assert await channel.inbox_len(agent) == 0  # followed the slot back


async def test_ask_is_followed_during_a_migration(redis_cluster, cluster_url):
    agent, key, slot, source, target = inbox_slot_and_nodes(redis_cluster)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", redis_cluster.node_id(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", redis_cluster.node_id(target))
        try:
            # The key is not on the source any more: it answers ASK, the
            # command is repeated on the target after ASKING.
            await channel.send(msg(agent, "while migrating"))
            assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            assert channel._cluster.node_of(slot) == f"127.0.0.1:{source.port}"  # ASK changes no map
            # Finish the migration as redis-cli would: the message is the target's now.
            await _move_slot(redis_cluster, slot, target)
            assert [Message.from_json(r).msg_type.description
                    for r in target.command("LRANGE", key, 0, -1)] == ["while migrating"]
            assert text_of(await channel.receive(agent, 1)) == "while migrating"  # MOVED, followed
        finally:
            for node in (source, target):
                node.command("CLUSTER", "SETSLOT", slot, "STABLE")
            target.command("CLUSTER", "SETSLOT", slot, "NODE", redis_cluster.node_id(target))
            target.command("DEL", key)
            await _move_slot(redis_cluster, slot, source)


async def test_lost_node_connections_are_reopened(redis_cluster, cluster_url):
    agents = agents_on_every_node(redis_cluster, "metro", per_node=1)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        for agent in agents:
            await channel.send(msg(agent, "one"))
        blocked = asyncio.ensure_future(channel.receive(AgentId.new(), 10))
        await asyncio.sleep(0.1)
        for node in redis_cluster.nodes:
            node.command("CLIENT", "KILL", "TYPE", "normal")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(blocked, 5)
        await asyncio.sleep(0.05)
        for agent in agents:
            await channel.send(msg(agent, "two"))
        for agent in agents:
            assert [text_of(await channel.try_receive(agent)) for _ in range(2)] == ["one", "two"]


async def test_unreachable_or_not_a_cluster(tmp_path, tcp_redis):
    from servers import free_tcp_port

    with pytest.raises(ConnectionError, match="cannot reach any node"):
        await Channel.connect(f"redis+cluster://127.0.0.1:{free_tcp_port()},127.0.0.1:{free_tcp_port()}",
                              town="metro")
    with pytest.raises(ConnectionError, match="not a Redis Cluster node"):
        await Channel.connect(f"redis+cluster://127.0.0.1:{tcp_redis.port}", town="metro")


async def test_second_seed_is_used_when_the_first_is_down(redis_cluster, cluster_url):
    from servers import free_tcp_port

    url = f"redis+cluster://127.0.0.1:{free_tcp_port()},127.0.0.1:{redis_cluster.nodes[1].port}"
    async with await Channel.connect(url, town="metro") as channel:
        agent = AgentId.new()
        await channel.send(msg(agent, "hi"))
        assert text_of(await channel.receive(agent, 1)) == "hi"


async def test_010_operations_on_a_cluster(redis_cluster, cluster_url):
    from tinytown import Agent, InvalidArgumentError

    async with await Channel.connect(cluster_url, town="metro") as channel:
        agent = Agent.new("clustered", "claude")
        await channel.set_agent_state(agent)  # MULTI ... EXEC on the key's node
        assert await channel.increment_agent_rounds(agent.id) == 1  # EVAL on the key's node
        await channel.update_agent_heartbeat(agent.id)
        assert (await channel.get_agent_state(agent.id)).rounds_completed == 1
        for i in range(3):
            await channel.send(msg(agent.id, f"m{i}"))
            await channel.send_urgent(msg(agent.id, f"u{i}"))
        assert [text_of(m) for m in await channel.drain_inbox(agent.id)] == ["m0", "m1", "m2"]
        assert [text_of(m) for m in await channel.receive_urgent(agent.id)] == ["u2", "u1", "u0"]
        for call in (channel.list_agents, channel.list_tasks, channel.reset_all,
                     channel.reset_agents_only):
            with pytest.raises(InvalidArgumentError, match="Cluster"):
                await call()
