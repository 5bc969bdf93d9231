"""Channel over a real Redis Cluster (``redis+cluster://``).

The cluster is started by the ``redis_cluster`` fixture (three masters with
a replica each, ``redis-cli --cluster create``); every check of where data
landed asks the node that the cluster itself says owns the key. The tests at
the end kill masters, fail them over and move slots under load.
"""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter

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
from tinytown._transport.choose import connection_class
from tinytown._transport.cluster import _Overlap, command_slot, key_slot


def agents_on_every_node(cluster, town: str, per_node: int = 2) -> list[AgentId]:
    """Agent ids whose inboxes cover every node of the cluster."""
    found: dict[int, list[AgentId]] = {n.port: [] for n in cluster.masters()}
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
                {n.port for n in redis_cluster.masters()}:
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
    for node in [target] + [n for n in cluster.masters() if n is not target]:
        node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def inbox_slot_and_nodes(cluster):
    """A new agent, its inbox key and slot, the node owning it and another node."""
    agent = AgentId.new()
    key = f"tt:metro:inbox:{agent}"
    owner = cluster.node_for(key)
    return agent, key, key_slot(key.encode()), owner, next(n for n in cluster.masters() if n is not owner)


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


# -- failover, outage and resharding --------------------------------------------
#
# These tests break the shared cluster on purpose (kill a master, fail one
# over, move slots) and leave it whole again (servers.RedisCluster.heal; the
# cluster_url fixture heals too). They measure what tinytown does to the
# servers through the servers' own counters (INFO stats, errorstats,
# commandstats), read over one probe connection per node, never by timing.
# They run on one event loop kind each: the loop makes no difference to the
# cluster router, and each failover costs seconds.

ONE_LOOP = pytest.mark.parametrize("loop_kind", ["asyncio"])
#: The pub/sub channel of town "metro" in the default (hash) layout.
METRO_BROADCAST = "tt:metro:broadcast"


class NodeCounters:
    """Counters of some nodes: connections accepted, error replies by prefix,
    CLUSTER SLOTS calls; one probe connection per node, opened here so that
    later snapshots do not count it."""

    def __init__(self, nodes) -> None:
        from servers import RespConnection

        self._conns = [RespConnection(n.address) for n in nodes]

    def snapshot(self) -> Counter:
        total: Counter = Counter()
        for conn in self._conns:
            total["connections"] += int(conn.info("stats")["total_connections_received"])
            for name, value in conn.info("errorstats").items():  # errorstat_CLUSTERDOWN:count=3
                total[name.removeprefix("errorstat_")] += int(value.split("=")[1].split(",")[0])
            slots = conn.info("commandstats").get("cmdstat_cluster|slots")
            if slots is not None:
                total["cluster slots"] += int(slots.split("calls=")[1].split(",")[0])
        return total

    def state(self) -> set[str]:
        """cluster_state of each of these nodes."""
        return {conn.command("CLUSTER", "INFO").decode().split("cluster_state:")[1].split()[0]
                for conn in self._conns}

    def serve_all_without(self, dead) -> bool:
        """True when these nodes all say cluster_state:ok and ``dead`` serves no slot."""
        if self.state() != {"ok"}:
            return False
        return all(entry[2][1] != dead.port for conn in self._conns
                   for entry in conn.command("CLUSTER", "SLOTS"))

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


class Unretrieved:
    """Collects what the event loop's exception handler is given (e.g.
    "Future exception was never retrieved")."""

    def __init__(self) -> None:
        self.contexts: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: self.contexts.append(ctx))

    def messages(self) -> list[str]:
        gc.collect()  # unretrieved exceptions are reported when their future is freed
        return [ctx.get("message", "") for ctx in self.contexts]


class Load:
    """Producers and consumers on a channel, recording everything they see.

    One producer per agent in ``agents`` sends numbered messages one at a
    time (``send``); one per pair in ``batched`` sends them three per inbox
    per ``send_many``; one consumer per agent loops on ``receive(agent, 30)``
    like the README's agent loop; a broadcast subscriber listens. Only
    tinytown.ConnectionError is expected; anything else is kept in
    ``unexpected``.
    """

    def __init__(self, channel: Channel, agents: list[AgentId],
                 batched: list[tuple[AgentId, AgentId]] = ()) -> None:
        self.channel = channel
        self.agents = list(agents) + [a for pair in batched for a in pair]
        self.acked: dict[AgentId, list[int]] = {a: [] for a in self.agents}
        self.unsure: dict[AgentId, set[int]] = {a: set() for a in self.agents}
        self.received: dict[AgentId, list[int]] = {a: [] for a in self.agents}
        self.errors: Counter = Counter()  # (what, agent) -> ConnectionErrors
        self.unexpected: list[BaseException] = []
        self.broadcasts: list[Message] = []
        self.stopping = False
        self._producers = [asyncio.ensure_future(self._produce(a)) for a in agents]
        self._producers += [asyncio.ensure_future(self._produce_batches(p)) for p in batched]
        self._consumers = [asyncio.ensure_future(self._consume(a)) for a in self.agents]
        self.sub = channel.broadcasts()
        self._listener: asyncio.Future | None = None

    async def start(self) -> Load:
        await self.sub.start()
        self._listener = asyncio.ensure_future(self._listen())
        return self

    async def _produce(self, agent: AgentId) -> None:
        i = 0
        while not self.stopping:
            try:
                await self.channel.send(msg(agent, str(i)))
                self.acked[agent].append(i)
            except ConnectionError:
                self.unsure[agent].add(i)
                self.errors["send", agent] += 1
            except Exception as exc:
                self.unexpected.append(exc)
            i += 1
            await asyncio.sleep(0.01)

    async def _produce_batches(self, pair: tuple[AgentId, AgentId]) -> None:
        i = 0
        while not self.stopping:
            batch = [msg(a, str(i + k)) for a in pair for k in range(3)]
            try:
                await self.channel.send_many(batch)
                written: list[Message] = batch
            except ConnectionError as exc:
                self.errors["send_many", pair[0]] += 1
                # What the caller may rely on: the messages known written;
                # the others may or may not be.
                assert [m for m in batch if m in exc.written or m in exc.unconfirmed] == batch
                assert not set(m.id for m in exc.written) & set(m.id for m in exc.unconfirmed)
                written = list(exc.written)
                for m in exc.unconfirmed:
                    self.unsure[m.to].add(int(text_of(m)))
            except Exception as exc:
                self.unexpected.append(exc)
                written = []
            for m in written:
                self.acked[m.to].append(int(text_of(m)))
            i += 3
            await asyncio.sleep(0.02)

    async def _consume(self, agent: AgentId) -> None:
        while True:
            try:
                message = await self.channel.receive(agent, 30)
            except ConnectionError:
                self.errors["receive", agent] += 1
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.unexpected.append(exc)
                await asyncio.sleep(0.1)
                continue
            if message is not None:
                self.received[agent].append(int(text_of(message)))

    async def _listen(self) -> None:
        while True:
            try:
                self.broadcasts.append(await self.sub.__anext__())
            except ConnectionError:
                self.errors["broadcasts", None] += 1
            except StopAsyncIteration:
                return
            except Exception as exc:
                self.unexpected.append(exc)
                return

    async def finish(self) -> None:
        """Stop producing, let the consumers catch up, stop them, drain the inboxes."""
        self.stopping = True
        await asyncio.gather(*self._producers)
        for _ in range(400):
            if all(set(self.acked[a]) <= set(self.received[a]) for a in self.agents):
                break
            await asyncio.sleep(0.05)
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        await asyncio.sleep(0.1)  # a cancelled receive's message goes back to its inbox
        for agent in self.agents:
            while (message := await self.channel.try_receive(agent)) is not None:
                self.received[agent].append(int(text_of(message)))
        await self.sub.close()
        if self._listener is not None:
            await self._listener

    def check(self) -> None:
        """Nothing acknowledged lost (beyond one per failed receive: plain
        receive is at-most-once), nothing duplicated, every inbox in order,
        and only ConnectionError reached the callers."""
        assert self.unexpected == []
        for agent in self.agents:
            got, acked = self.received[agent], set(self.acked[agent])
            assert len(got) == len(set(got)), f"duplicates for {agent}: {got}"
            assert got == sorted(got), f"out of order for {agent}: {got}"
            assert set(got) <= acked | self.unsure[agent]
            assert len(acked - set(got)) <= self.errors["receive", agent], (agent, acked - set(got))
            assert len(acked) > 20  # the load did run


def wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll ``predicate`` (blocking: run it in a thread) until it is true."""
    import time

    deadline = time.monotonic() + timeout  # a liveness guard, not a measured time
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not reached in {timeout:g} s")
        time.sleep(0.05)


def agents_on(cluster, node, town: str, count: int) -> list[AgentId]:
    found: list[AgentId] = []
    while len(found) < count:
        agent = AgentId.new()
        if cluster.node_for(f"tt:{town}:inbox:{agent}").port == node.port:
            found.append(agent)
    return found


@ONE_LOOP
@pytest.mark.slow
@pytest.mark.async_timeout(90)
async def test_outage_is_retried_with_backoff_then_raises_connection_error(redis_cluster, cluster_url, loop_kind):
    """A master and its replica gone (the replica may not take over): the
    cluster answers CLUSTERDOWN everywhere. Calls retry, paced by the backoff,
    within reconnect_timeout (a blocking receive: its own timeout), then raise
    ConnectionError; the slot map is reloaded over one reused connection; a
    broadcast subscriber reports the outage once."""
    unretrieved = Unretrieved()
    dead = redis_cluster.node_for(METRO_BROADCAST)
    healthy = next(n for n in redis_cluster.masters() if n is not dead)
    redis_cluster.replica_of(dead).command("CONFIG", "SET", "cluster-replica-no-failover", "yes")
    lost_agent = agents_on(redis_cluster, dead, "metro", 1)[0]
    fine_agent = agents_on(redis_cluster, healthy, "metro", 1)[0]
    survivors = [n for n in redis_cluster.nodes if n is not dead]
    counters = NodeCounters(survivors)
    try:
        async with await Channel.connect(cluster_url, town="metro", reconnect_timeout=1.5) as channel:
            load = await Load(channel, []).start()
            for agent in (lost_agent, fine_agent):
                await channel.send(msg(agent, "before"))
                assert text_of(await channel.receive(agent, 1)) == "before"
            before = counters.snapshot()
            dead.kill()
            await asyncio.to_thread(wait_for, lambda: counters.state() == {"fail"})
            outcomes = await asyncio.gather(
                channel.send(msg(fine_agent, "down")),      # CLUSTERDOWN on a live master
                channel.send(msg(lost_agent, "down")),      # its master is gone
                channel.send_many([msg(fine_agent, "d1"), msg(lost_agent, "d2")]),
                channel.receive(fine_agent, 2),
                channel.receive(lost_agent, 2),
                channel.inbox_len(fine_agent),
                return_exceptions=True)
            assert [type(o) for o in outcomes] == [ConnectionError] * len(outcomes), outcomes
            during = counters.snapshot() - before
            # Paced: a handful of attempts per call over 1.5-2 s (50 ms
            # doubling), not one every millisecond.
            assert during["CLUSTERDOWN"] <= 60, during
            assert during["cluster slots"] <= 60, during
            assert during["connections"] <= 12, during
            # The subscriber's node died: one ConnectionError for the outage.
            assert load.errors["broadcasts", None] == 1
            redis_cluster.heal()  # the master comes back as the master
            await channel.send(msg(lost_agent, "after"))
            assert text_of(await channel.receive(lost_agent, 5)) == "after"
            await load.sub.start()  # subscribed again
            assert await channel.broadcast(msg(fine_agent, "news")) == 1
            await load.finish()
            assert [text_of(m) for m in load.broadcasts] == ["news"]
            assert load.errors["broadcasts", None] == 1 and load.unexpected == []
    finally:
        counters.close()
        redis_cluster.heal()
    assert not [m for m in unretrieved.messages() if "never retrieved" in m]


@ONE_LOOP
@pytest.mark.slow
@pytest.mark.async_timeout(120)
async def test_master_killed_under_load(redis_cluster, cluster_url, loop_kind):
    """SIGKILL the master that holds the broadcast channel's slot and some inboxes under
    load; its replica takes over. Nothing acknowledged is lost, nothing
    duplicated or reordered; callers see only ConnectionError, at most one per
    call that was in flight on the dead node; the subscriber follows the
    broadcast slot to the new master, which counts it."""
    unretrieved = Unretrieved()
    dead = redis_cluster.node_for(METRO_BROADCAST)
    others = [n for n in redis_cluster.masters() if n is not dead]
    on_dead = agents_on(redis_cluster, dead, "metro", 3)
    on_live = agents_on(redis_cluster, others[0], "metro", 2) + agents_on(redis_cluster, others[1], "metro", 1)
    counters = NodeCounters([n for n in redis_cluster.nodes if n is not dead])
    try:
        async with await Channel.connect(cluster_url, town="metro") as channel:
            load = await Load(channel, on_dead[:2] + on_live[:2],
                              batched=[(on_dead[2], on_live[2])]).start()
            await asyncio.sleep(1.0)
            before = counters.snapshot()
            dead.kill()
            await asyncio.to_thread(wait_for, lambda: counters.serve_all_without(dead))
            await asyncio.sleep(1.0)
            await load.sub.start()
            assert await channel.broadcast(msg(on_live[0], "after the failover")) == 1
            await load.finish()
            during = counters.snapshot() - before
            load.check()
            assert [text_of(m) for m in load.broadcasts] == ["after the failover"]
            assert load.errors["broadcasts", None] == 1
            for (what, agent), count in load.errors.items():
                # One call in flight on the dead node fails; on the live
                # masters a blocked receive never does, and a send only if
                # CLUSTERDOWN outlasted its reconnect_timeout (5 s) on a
                # very busy machine.
                if what == "receive":
                    assert count <= (1 if agent in on_dead else 0), load.errors
                elif what != "broadcasts":
                    assert count <= 1, load.errors
            assert during["connections"] <= 40, during
            assert during["cluster slots"] <= 100, during
    finally:
        counters.close()
        redis_cluster.heal()
    assert not [m for m in unretrieved.messages() if "never retrieved" in m]


@ONE_LOOP
@pytest.mark.slow
@pytest.mark.async_timeout(120)
async def test_manual_failover_under_load(redis_cluster, cluster_url, loop_kind):
    """CLUSTER FAILOVER of the master holding the broadcast channel and some inboxes:
    a coordinated switch that loses nothing and should show callers nothing
    at all. Receives blocked on the old master (unblocked by Redis with
    UNBLOCKED) are re-sent to the new one; broadcast() still counts the
    subscriber."""
    unretrieved = Unretrieved()
    old = redis_cluster.node_for(METRO_BROADCAST)
    new = redis_cluster.replica_of(old)
    other = next(n for n in redis_cluster.masters() if n is not old)
    on_old = agents_on(redis_cluster, old, "metro", 3)
    on_other = agents_on(redis_cluster, other, "metro", 2)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        load = await Load(channel, on_old[:2] + on_other[:1], batched=[(on_old[2], on_other[1])]).start()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_cluster.failover, new)
        await asyncio.sleep(1.0)
        assert await channel.broadcast(msg(on_other[0], "after the failover")) == 1
        await load.finish()
        load.check()
        assert [text_of(m) for m in load.broadcasts] == ["after the failover"]
        assert load.errors == Counter(), load.errors
    assert not [m for m in unretrieved.messages() if "never retrieved" in m]


class Resharder:
    """Moves slots with their keys between masters as ``redis-cli --cluster
    reshard`` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE), over one
    probe connection per master opened up front."""

    def __init__(self, cluster) -> None:
        from servers import RespConnection

        self.masters = cluster.masters()
        self.ids = {n.port: cluster.node_id(n) for n in self.masters}
        self.conns = {n.port: RespConnection(n.address) for n in self.masters}

    def move(self, slots: list[int], source, target) -> None:
        src, dst = self.conns[source.port], self.conns[target.port]
        for slot in slots:
            dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[source.port])
            src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[target.port])
            while keys := src.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            for port in [target.port, source.port] + [p for p in self.conns if p not in (source.port, target.port)]:
                self.conns[port].command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[target.port])

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


@ONE_LOOP
@pytest.mark.slow
@pytest.mark.async_timeout(120)
async def test_resharding_under_load(redis_cluster, cluster_url, loop_kind):
    """The slots of some inboxes (and their neighbours) move to another master
    and back, twice, with messages in them and receives blocked on them:
    MOVED and ASK are followed, nothing is lost, duplicated or reordered,
    and callers see no error at all."""
    unretrieved = Unretrieved()
    source, target = redis_cluster.masters()[:2]
    moving = agents_on(redis_cluster, source, "metro", 3)
    staying = agents_on(redis_cluster, target, "metro", 2)
    slots = sorted({key_slot(f"tt:metro:inbox:{a}".encode()) for a in moving})
    slots = sorted(set(slots) | {s + d for s in slots for d in range(1, 20)
                                 if redis_cluster.node_for_slot(s + d) is source})
    counters = NodeCounters(redis_cluster.nodes)
    resharder = Resharder(redis_cluster)
    try:
        async with await Channel.connect(cluster_url, town="metro") as channel:
            load = await Load(channel, moving[:2] + staying[:1], batched=[(moving[2], staying[1])]).start()
            before = counters.snapshot()
            for _ in range(2):
                await asyncio.sleep(0.3)
                await asyncio.to_thread(resharder.move, slots, source, target)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(resharder.move, slots, target, source)
            await load.finish()
            during = counters.snapshot() - before
            load.check()
            assert load.errors == Counter(), load.errors
            assert during["connections"] <= 40, during
    finally:
        counters.close()
        resharder.close()
    assert not [m for m in unretrieved.messages() if "never retrieved" in m]


async def test_receive_across_a_slot_move_keeps_its_timeout(redis_cluster, cluster_url):
    """A receive whose (empty) slot moves while it waits: Redis answers the
    blocked BLPOP with MOVED; it is re-sent to the new owner with the time
    that remains, so the receive ends with None, not a false ConnectionError
    from the watchdog (timeout + 1 s)."""
    agent, key, slot, owner, target = inbox_slot_and_nodes(redis_cluster)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        assert await channel.inbox_len(agent) == 0
        waiting = asyncio.ensure_future(channel.receive(agent, 2.5))
        await asyncio.sleep(1.5)  # re-sent with the whole 2.5 s, it would outlive the watchdog
        try:
            await _move_slot(redis_cluster, slot, target)
            assert await waiting is None
            # The re-sent BLPOP waits on the new owner.
            again = asyncio.ensure_future(channel.receive(agent, 5))
            await asyncio.sleep(0.1)
            target.command("RPUSH", key, msg(agent, "moved").to_json())
            assert text_of(await again) == "moved"
        finally:
            await _move_slot(redis_cluster, slot, owner)


async def test_subscription_follows_the_broadcast_slot(redis_cluster, cluster_url):
    """When the broadcast channel's slot changes owner (here: moved, the old owner
    alive), the subscription moves to the new owner, where broadcast() now
    publishes: every broadcast sent meanwhile arrives once and in order, and
    the count includes the subscriber again."""
    slot = key_slot(METRO_BROADCAST.encode())
    owner = redis_cluster.node_for(METRO_BROADCAST)
    target = next(n for n in redis_cluster.masters() if n is not owner)
    async with await Channel.connect(cluster_url, town="metro") as channel:
        sub = await channel.broadcasts().start()
        got: list[Message] = []

        async def listen() -> None:
            async for message in sub:
                got.append(message)

        listener = asyncio.ensure_future(listen())
        sent: list[Message] = []
        try:
            for i in range(60):
                if i == 20:
                    await _move_slot(redis_cluster, slot, target)
                    # A keyed command meets MOVED: the channel learns the new map.
                    assert await channel.execute("GET", METRO_BROADCAST) is None
                sent.append(msg(AgentId.new(), f"news {i}"))
                await channel.broadcast(sent[-1])
                await asyncio.sleep(0.02)
            for _ in range(100):
                if len(got) >= len(sent):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert got == sent
            assert channel._cluster.node_of(slot) == f"127.0.0.1:{target.port}"
            assert await channel.broadcast(msg(AgentId.new(), "counted")) == 1
        finally:
            await _move_slot(redis_cluster, slot, owner)
            await sub.close()
            await listener


@ONE_LOOP
@pytest.mark.slow
@pytest.mark.async_timeout(90)
async def test_send_many_says_what_was_written(redis_cluster, cluster_url, loop_kind):
    """A batch over three inboxes, one on a master that just died (its
    replica may not take over): the pushes to the live masters are
    confirmed, the dead node's are not; the ConnectionError says which."""
    dead = redis_cluster.masters()[0]
    redis_cluster.replica_of(dead).command("CONFIG", "SET", "cluster-replica-no-failover", "yes")
    live = [n for n in redis_cluster.masters() if n is not dead]
    lost = agents_on(redis_cluster, dead, "metro", 1)[0]
    fine = [agents_on(redis_cluster, n, "metro", 1)[0] for n in live]
    batch = [msg(fine[0], "a"), msg(lost, "b"), msg(fine[1], "c"), msg(fine[0], "d")]
    try:
        async with await Channel.connect(cluster_url, town="metro", reconnect_timeout=0.5) as channel:
            assert await channel.inbox_len(lost) == 0  # connected to every node
            assert await channel.inbox_len(fine[0]) == await channel.inbox_len(fine[1]) == 0
            dead.kill()
            with pytest.raises(ConnectionError) as caught:
                await channel.send_many(batch)  # within cluster-node-timeout: no CLUSTERDOWN yet
            assert caught.value.written == (batch[0], batch[2], batch[3])
            assert caught.value.unconfirmed == (batch[1],)
            for agent, texts in ((fine[0], ["a", "d"]), (fine[1], ["c"])):
                key = f"tt:metro:inbox:{agent}"
                raw = redis_cluster.node_for(key).command("LRANGE", key, 0, -1)
                assert [Message.from_json(r).msg_type.description for r in raw] == texts
    finally:
        redis_cluster.heal()


async def test_send_many_on_one_server_confirms_nothing_on_connection_loss(fresh_redis):
    """On one server nothing of a failed batch is known written."""
    async with await Channel.connect(fresh_redis.url, town="metro", reconnect_timeout=0.2) as channel:
        await channel.send(msg(AgentId.new(), "connected"))
        fresh_redis.kill()
        batch = [msg(AgentId.new(), str(i)) for i in range(3)]
        with pytest.raises(ConnectionError) as caught:
            await channel.send_many(batch)
        assert caught.value.written == ()
        assert caught.value.unconfirmed == tuple(batch)


async def test_a_stalled_node_does_not_hold_up_sends_to_the_other_nodes(redis_cluster, cluster_url):
    """Backpressure is per connection: while one master is stopped with more
    than the high-water mark queued for it, a send to a key of another master
    goes through. (The master is stopped well under the cluster's node
    timeout, so no failover starts.)"""
    import os
    import signal

    town = "stall"
    stalled, healthy = agents_on_every_node(redis_cluster, town, per_node=1)[:2]
    async with await Channel.connect(cluster_url, town=town,
                                     write_buffer_limits=(64 * 1024, 16 * 1024)) as channel:
        await channel.send(msg(stalled, "warm"))
        await channel.send(msg(healthy, "warm"))
        pid = redis_cluster.node_for(f"tt:{town}:inbox:{stalled}").pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # 20 MB: more than the loopback socket takes, so writers wait.
            flood = [asyncio.ensure_future(channel.send(msg(stalled, "f" * 1000)))
                     for _ in range(20_000)]
            await asyncio.sleep(0.05)
            assert not all(f.done() for f in flood)
            other = asyncio.ensure_future(channel.send(msg(healthy, "through")))
            for _ in range(10):
                if other.done():
                    break
                await asyncio.sleep(0.05)
            other_went_through = other.done()
        finally:
            os.kill(pid, signal.SIGCONT)
        results = await asyncio.gather(*flood, other, return_exceptions=True)
        assert other_went_through, "a send to a healthy node waited for the stopped one"
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert await channel.inbox_len(stalled) == 20_001   # nothing of the flood lost
        assert [text_of(m) for m in [await channel.try_receive(healthy) for _ in range(2)]] == \
            ["warm", "through"]


def test_a_moving_subscription_hands_on_a_late_twin_once() -> None:
    """The dedup of a subscription's move: the old node delivered a message
    just before the move (counted from the subscriber's recent messages);
    the new node, subscribed meanwhile, gets it again over the cluster bus:
    it is dropped. A message seen on one node only is handed on once, and
    twins arriving on both nodes during the move once each, whichever first."""
    got: list[bytes] = []
    overlap = _Overlap(lambda item: got.append(item[2]))
    late = [b"message", b"tt:metro:broadcast", b"news 19"]
    overlap.seed([_Overlap.key(late)])
    overlap.forward(late, old=False)            # the bus's late copy: dropped
    both = [b"message", b"tt:metro:broadcast", b"news 20"]
    overlap.forward(both, old=False)            # new node first...
    overlap.forward(both, old=True)             # ...its twin from the old: dropped
    again = [b"message", b"tt:metro:broadcast", b"news 21"]
    overlap.forward(again, old=True)
    overlap.forward(again, old=False)
    only = [b"message", b"tt:metro:broadcast", b"news 22"]
    overlap.forward(only, old=True)
    assert got == [b"news 20", b"news 21", b"news 22"]
