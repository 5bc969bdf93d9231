"""Tinytown 0.10's inbox and state operations, both layouts, Channel and
SyncChannel, against a real redis-server (issue 9).

Each behavioural test runs on ``api`` = Channel (async) and SyncChannel (its
calls wrapped so one test body serves both), and where state is involved on
both layouts. Interop: the golden Hash vectors written and read byte for
byte, and the argv of the ``methods.jsonl`` cases captured with MONITOR.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from channel_cases import msg, text_of
from streams_harness import Monitor
from tinytown import (
    Agent,
    AgentId,
    AgentNotFoundError,
    AmbiguousAgentRefError,
    Channel,
    DecodeError,
    EncodeError,
    InvalidArgumentError,
    Message,
    Priority,
    ReplyError,
    SyncChannel,
    Task,
    TaskId,
)

WIRE = Path(__file__).resolve().parent / "data" / "wire" / "tinytown-0.10"

APIS = ("async", "sync")
LAYOUTS = ("hash", "json")
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


class SyncProxy:
    """A SyncChannel whose methods can be awaited, so one test body serves both APIs."""

    def __init__(self, channel: SyncChannel) -> None:
        self.sync = channel

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return attr(*args, **kwargs)

        return call

    async def __aenter__(self) -> SyncProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.close()


_DEFAULT: Any = object()


async def connect(api: str, url: str, town: str = "t010", layout: Any = _DEFAULT) -> Any:
    kwargs = {} if layout is _DEFAULT else {"layout": layout}
    if api == "async":
        return await Channel.connect(url, town=town, **kwargs)
    return SyncProxy(SyncChannel.connect(url, town=town, **kwargs))


def texts(messages: list[Message]) -> list[str]:
    return [text_of(m) for m in messages]


def agent_named(name: str, **kw: Any) -> Agent:
    agent = Agent.new(name, "claude")
    for k, v in kw.items():
        setattr(agent, k, v)
    return agent


@pytest.fixture
def monitor(redis_server, redis_url):
    m = Monitor(redis_server.unix_path)
    try:
        yield m
    finally:
        m.close()


# ------------------------------------------------------------------- layout

@pytest.mark.parametrize("api", APIS)
async def test_layout_default_and_choice(redis_url, api):
    async with await connect(api, redis_url) as ch:
        assert ch.layout == "hash"
    async with await connect(api, redis_url, layout="json") as ch:
        assert ch.layout == "json"
    for bad in ("HASH", "", None, 1, "xml"):
        with pytest.raises(InvalidArgumentError):
            await connect(api, redis_url, layout=bad)


async def test_town_channel_passes_layout():
    import shutil
    import tempfile

    from tinytown import Town

    directory = Path(tempfile.mkdtemp(prefix="tt-lay-"))  # short: a Unix socket path
    town = await Town.start(directory, "lay")
    try:
        async with await town.channel() as ch:
            assert ch.layout == "hash"
        async with await town.channel(layout="json") as ch:
            assert ch.layout == "json"
        with pytest.raises(InvalidArgumentError):
            await town.channel(layout="yaml")
    finally:
        await town.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("api", APIS)
async def test_broadcast_channel_follows_layout(redis_server, redis_url, api):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="bc") as hashed, \
            await Channel.connect(redis_url, town="bc", layout="json") as flat:
        async with hashed.broadcasts() as hsub, flat.broadcasts() as fsub:
            async with await connect(api, redis_url, town="bc") as ch:
                assert await ch.broadcast(msg(agent, "to-town")) == 1
            async with await connect(api, redis_url, town="bc", layout="json") as ch:
                assert await ch.broadcast(msg(agent, "to-all")) == 1
            # A Rust 0.10 agent publishes on tt:<town>:broadcast.
            assert redis_server.command("PUBLISH", "tt:bc:broadcast", msg(agent, "rust").to_json()) == 1
            assert text_of(await asyncio.wait_for(hsub.__anext__(), 5)) == "to-town"
            assert text_of(await asyncio.wait_for(hsub.__anext__(), 5)) == "rust"
            assert text_of(await asyncio.wait_for(fsub.__anext__(), 5)) == "to-all"


def test_sync_subscription_follows_layout(redis_server, redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="bc") as ch, ch.broadcasts() as sub:
        assert redis_server.command("PUBLISH", "tt:bc:broadcast", msg(agent, "rust").to_json()) == 1
        assert text_of(sub.get(5)) == "rust"


# -------------------------------------------------------------------- state

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("api", APIS)
async def test_state_round_trip_in_layout(redis_server, redis_url, api, layout):
    agent = agent_named("w", nickname="Fred", current_task=TaskId.new())
    task = Task.new("fix it", tags=["a", "b"])
    async with await connect(api, redis_url, layout=layout) as ch:
        await ch.set_agent_state(agent)
        await ch.set_task(task)
        kind = b"hash" if layout == "hash" else b"string"
        assert redis_server.command("TYPE", f"tt:t010:agent:{agent.id}") == kind.decode()
        assert redis_server.command("TYPE", f"tt:t010:task:{task.id}") == kind.decode()
        assert await ch.get_agent_state(agent.id) == agent
        assert await ch.get_task(task.id) == task
        # optionals that become absent are removed (HDEL), not left behind
        agent.nickname = None
        agent.current_task = None
        await ch.set_agent_state(agent)
        assert await ch.get_agent_state(agent.id) == agent
        if layout == "hash":
            fields = redis_server.command("HKEYS", f"tt:t010:agent:{agent.id}")
            assert b"nickname" not in fields and b"current_task" not in fields
        assert await ch.get_agent_state(AgentId.new()) is None
        assert await ch.get_task(TaskId.new()) is None


@pytest.mark.parametrize("api", APIS)
async def test_writes_replace_the_other_layout_atomically(redis_server, redis_url, api):
    agent = agent_named("swap", role_id="reviewer")
    task = Task.new("swap")
    async with await connect(api, redis_url, layout="json") as flat, \
            await connect(api, redis_url, layout="hash") as hashed:
        for writer, kind in ((flat, "string"), (hashed, "hash"), (flat, "string"), (hashed, "hash")):
            await writer.set_agent_state(agent)  # never WRONGTYPE
            await writer.set_task(task)
            assert redis_server.command("TYPE", f"tt:t010:agent:{agent.id}") == kind
            assert redis_server.command("TYPE", f"tt:t010:task:{task.id}") == kind
            for reader in (flat, hashed):  # reads accept both layouts
                assert await reader.get_agent_state(agent.id) == agent
                assert await reader.get_task(task.id) == task


async def test_hash_write_is_one_transaction(redis_server, redis_url, monitor):
    agent = agent_named("txn")
    async with await Channel.connect(redis_url, town="t010") as ch:
        key = f"tt:t010:agent:{agent.id}".encode()
        monitor.commands_run(redis_server)
        await ch.set_agent_state(agent)
        seen = monitor.commands_run(redis_server)
        assert [c[0] for c in seen] == [b"MULTI", b"HDEL", b"HMSET", b"EXEC"]
        assert seen[1] == [b"HDEL", key, b"current_task", b"nickname", b"role_id", b"parent_agent_id"]
        redis_server.command("SET", key, b"{}")
        monitor.commands_run(redis_server)
        await ch.set_agent_state(agent)
        seen = monitor.commands_run(redis_server)
        assert [c[0] for c in seen] == [b"MULTI", b"HDEL", b"HMSET", b"EXEC",
                                        b"MULTI", b"DEL", b"HMSET", b"EXEC"]
        assert await ch.get_agent_state(agent.id) == agent


@pytest.mark.parametrize("api", APIS)
async def test_other_errors_are_not_hidden(redis_server, redis_url, api):
    # Only WRONGTYPE is handled; a read of a key of a third type still fails.
    agent = AgentId.new()
    redis_server.command("RPUSH", f"tt:t010:agent:{agent}", "x")
    async with await connect(api, redis_url) as ch:
        with pytest.raises(ReplyError):
            await ch.get_agent_state(agent)
        with pytest.raises(InvalidArgumentError):
            await ch.set_agent_state("not an agent")


# ----------------------------------------------------------- urgent inbox

@pytest.mark.parametrize("api", APIS)
async def test_urgent_inbox(redis_server, redis_url, api, caplog):
    agent = AgentId.new()
    async with await connect(api, redis_url) as ch:
        assert await ch.receive_urgent(agent) == []
        for i, priority in enumerate((Priority.LOW, Priority.NORMAL, Priority.HIGH)):
            await ch.send_urgent(msg(agent, f"u{i}", priority))
        assert await ch.urgent_len(agent) == 3
        assert await ch.inbox_len(agent) == 0
        # a malformed element in the middle: dead-lettered, the good ones all returned
        key = f"tt:t010:urgent:{agent}"
        redis_server.command("LINSERT", key, "BEFORE", redis_server.command("LINDEX", key, 1),
                             b"\xffgarbage")
        assert redis_server.command("LLEN", key) == 4
        with caplog.at_level(logging.WARNING, logger="tinytown"):
            got = await ch.receive_urgent(agent)
        assert texts(got) == ["u2", "u1", "u0"]  # newest first
        assert "malformed" in caplog.text
        assert redis_server.command("LRANGE", f"tt:t010:dead:{agent}", 0, -1) == [b"\xffgarbage"]
        assert await ch.urgent_len(agent) == 0
        assert redis_server.command("EXISTS", f"tt:t010:urgent:{agent}") == 0
        with pytest.raises(InvalidArgumentError):
            await ch.send_urgent("nope")


@pytest.mark.parametrize("api", APIS)
async def test_pops_leave_a_foreign_key_alone(redis_server, redis_url, api):
    agent = AgentId.new()
    redis_server.command("SET", f"tt:t010:urgent:{agent}", "not a list")
    redis_server.command("SET", f"tt:t010:inbox:{agent}", "not a list")
    async with await connect(api, redis_url) as ch:
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await ch.receive_urgent(agent)
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await ch.drain_inbox(agent)
    assert redis_server.command("GET", f"tt:t010:urgent:{agent}") == b"not a list"
    assert redis_server.command("GET", f"tt:t010:inbox:{agent}") == b"not a list"


# ------------------------------------------------------- peek, drain, move

@pytest.mark.parametrize("api", APIS)
async def test_peek_and_drain_inbox(redis_server, redis_url, api):
    agent = AgentId.new()
    async with await connect(api, redis_url) as ch:
        assert await ch.drain_inbox(agent) == []
        for text, priority in (("n0", Priority.NORMAL), ("h", Priority.HIGH), ("n1", Priority.LOW)):
            await ch.send(msg(agent, text, priority))
        redis_server.command("RPUSH", f"tt:t010:inbox:{agent}", "{not json")
        await ch.send(msg(agent, "n2"))
        assert texts(await ch.peek_inbox(agent, 2)) == ["h", "n0"]
        assert texts(await ch.peek_inbox(agent, 100)) == ["h", "n0", "n1", "n2"]  # malformed skipped
        assert await ch.inbox_len(agent) == 5  # peek removes nothing
        for bad in (0, -1, True, 1.5, "2"):
            with pytest.raises(InvalidArgumentError):
                await ch.peek_inbox(agent, bad)
        assert texts(await ch.drain_inbox(agent)) == ["h", "n0", "n1", "n2"]
        assert redis_server.command("LRANGE", f"tt:t010:dead:{agent}", 0, -1) == [b"{not json"]
        assert await ch.inbox_len(agent) == 0


@pytest.mark.parametrize("api", APIS)
async def test_move_message_to_inbox(redis_server, redis_url, api):
    a, b = AgentId.new(), AgentId.new()
    async with await connect(api, redis_url) as ch:
        await ch.send(msg(b, "first"))
        original = msg(a, "moved", Priority.HIGH)
        await ch.move_message_to_inbox(original, b)
        got = await ch.drain_inbox(b)
        assert texts(got) == ["moved", "first"]  # high goes to the front, as send does
        assert got[0].id == original.id and got[0].to == b and got[0].from_ == original.from_
        assert await ch.inbox_len(a) == 0
        with pytest.raises(InvalidArgumentError):
            await ch.move_message_to_inbox(original, "not-a-uuid")


# ------------------------------------------------------------ list, resolve

@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_list_agents_and_tasks_skip_strays(redis_server, redis_url, api, layout, caplog):
    w1 = agent_named("worker-1")
    w2 = agent_named("worker-2", nickname="Fred")
    t1, t2 = Task.new("one"), Task.new("two")
    async with await connect(api, redis_url, layout="json") as flat, \
            await connect(api, redis_url, layout="hash") as hashed, \
            await connect(api, redis_url, layout=layout) as ch:
        await flat.set_agent_state(w1)
        await hashed.set_agent_state(w2)
        await flat.set_task(t1)
        await hashed.set_task(t2)
        stray = AgentId.new()
        redis_server.command("RPUSH", f"tt:t010:agent:{stray}", "x")          # a List
        redis_server.command("HSET", f"tt:t010:agent:{AgentId.new()}", "rounds_completed", "1")  # id-less
        redis_server.command("SET", "tt:t010:agent:not-a-uuid", "{}")
        redis_server.command("SET", f"tt:t010:task:{TaskId.new()}", "{broken")
        redis_server.command("SET", f"tt:t010x:agent:{AgentId.new()}", w1.to_json())  # another town
        with caplog.at_level(logging.WARNING, logger="tinytown"):
            agents = await ch.list_agents()
            tasks = await ch.list_tasks()
        assert sorted(a.name for a in agents) == ["worker-1", "worker-2"]
        assert {a.id: a for a in agents} == {w1.id: w1, w2.id: w2}
        assert {t.id: t for t in tasks} == {t1.id: t1, t2.id: t2}
        assert "skipped" in caplog.text
        assert (await ch.get_agent_by_name("worker-2")) == w2
        assert await ch.get_agent_by_name("Worker-2") is None  # exact, case-sensitive
        assert await ch.get_agent_by_name("Fred") is None


@pytest.mark.parametrize("api", APIS)
async def test_list_agents_many(redis_url, api):
    async with await connect(api, redis_url) as ch:
        agents = [agent_named(f"a{i}") for i in range(250)]  # several SCAN pages
        for agent in agents:
            await ch.set_agent_state(agent)
        assert sorted(a.name for a in await ch.list_agents()) == sorted(a.name for a in agents)


@pytest.mark.parametrize("api", APIS)
async def test_resolve_agent_ref(redis_url, api):
    fred = agent_named("worker-1", nickname="Fred", role_id="reviewer")
    plain = agent_named("Builder")
    async with await connect(api, redis_url) as ch:
        await ch.set_agent_state(fred)
        await ch.set_agent_state(plain)
        assert await ch.resolve_agent_ref(str(fred.id)) == fred
        assert await ch.resolve_agent_ref(str(fred.id).upper().replace("-", "")) == fred
        assert await ch.resolve_agent_ref(str(AgentId.new())) is None  # a UUID: no name fallback
        assert await ch.resolve_agent_ref("  WORKER-1\n") == fred      # trimmed, ASCII case
        assert await ch.resolve_agent_ref("fred") == fred              # display name
        assert await ch.resolve_agent_ref("FRED [Reviewer]") == fred   # display label
        assert await ch.resolve_agent_ref("builder [builder]") == plain  # default role: name
        assert await ch.resolve_agent_ref("") is None
        assert await ch.resolve_agent_ref(" \t ") is None
        assert await ch.resolve_agent_ref("nobody") is None
        # \x1c is whitespace to Python's strip(), not to Rust's trim()
        assert await ch.resolve_agent_ref("\x1cfred") is None
        twin = agent_named("fred")
        await ch.set_agent_state(twin)
        with pytest.raises(AmbiguousAgentRefError) as err:
            await ch.resolve_agent_ref("Fred")
        assert {a.id for a in err.value.matches} == {fred.id, twin.id}
        with pytest.raises(InvalidArgumentError):
            await ch.resolve_agent_ref(None)


@pytest.mark.parametrize("api", APIS)
async def test_resolve_by_short_id(redis_url, api):
    agent = Agent(id="abcd0000-0000-4000-8000-000000000001", name="x", cli="c")
    other = Agent(id="abce0000-0000-4000-8000-000000000001", name="y", cli="c")
    async with await connect(api, redis_url) as ch:
        await ch.set_agent_state(agent)
        await ch.set_agent_state(other)
        assert await ch.resolve_agent_ref("ABCD") == agent
        assert await ch.resolve_agent_ref("abc") is None


# ------------------------------------------------------------------ delete

@pytest.mark.parametrize("api", APIS)
async def test_delete_agent_and_task(redis_server, redis_url, api):
    agent = agent_named("gone")
    task = Task.new("gone")
    async with await connect(api, redis_url) as ch:
        await ch.set_agent_state(agent)
        await ch.set_task(task)
        await ch.send(msg(agent.id, "x"))
        await ch.send_urgent(msg(agent.id, "y"))
        await ch.request_stop(agent.id)
        for suffix in ("activity", "events:agent", "dead"):
            redis_server.command("RPUSH", f"tt:t010:{suffix}:{agent.id}", "kept?")
        await ch.delete_agent(agent.id)
        for kind in ("agent", "inbox", "urgent", "activity", "stop"):
            assert redis_server.command("EXISTS", f"tt:t010:{kind}:{agent.id}") == 0
        for kind in ("events:agent", "dead"):  # as Tinytown 0.10: left behind
            assert redis_server.command("EXISTS", f"tt:t010:{kind}:{agent.id}") == 1
        await ch.delete_agent(agent.id)  # again: fine
        assert await ch.delete_task(task.id) is True
        assert await ch.delete_task(task.id) is False
        redis_server.command("RPUSH", f"tt:t010:task:{task.id}", "any type")
        assert await ch.delete_task(task.id) is True


# ------------------------------------------------- counters and heartbeat

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("api", APIS)
async def test_counters_and_heartbeat(redis_server, redis_url, api, layout):
    agent = agent_named("count")
    agent.rounds_completed = 2**53
    agent.tasks_completed = I64_MAX
    async with await connect(api, redis_url, layout=layout) as ch:
        await ch.set_agent_state(agent)
        assert await ch.increment_agent_rounds(agent.id) == 2**53 + 1  # exact beyond 2**53
        assert await ch.increment_agent_tasks_completed(agent.id) == I64_MAX + 1  # HINCRBY would fail
        before = agent.last_heartbeat
        await ch.update_agent_heartbeat(agent.id)
        stored = await ch.get_agent_state(agent.id)
        assert stored.rounds_completed == 2**53 + 1 and stored.tasks_completed == I64_MAX + 1
        assert stored.last_heartbeat >= before
        assert stored.name == "count" and stored.created_at == agent.created_at
        key = f"tt:t010:agent:{agent.id}"
        if layout == "hash":
            assert redis_server.command("HGET", key, "rounds_completed") == str(2**53 + 1).encode()
            assert redis_server.command("HGET", key, "last_heartbeat").endswith(b"+00:00")
            assert redis_server.command("TYPE", key) == "hash"
        else:
            assert redis_server.command("TYPE", key) == "string"
        agent.tasks_completed = U64_MAX
        await ch.set_agent_state(agent)
        with pytest.raises(EncodeError):
            await ch.increment_agent_tasks_completed(agent.id)
        assert (await ch.get_agent_state(agent.id)).tasks_completed == U64_MAX


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("api", APIS)
async def test_updates_of_an_absent_agent_create_nothing(redis_server, redis_url, api, layout):
    absent = AgentId.new()
    idless = AgentId.new()
    redis_server.command("HSET", f"tt:t010:agent:{idless}", "name", "partial")
    async with await connect(api, redis_url, layout=layout) as ch:
        for agent_id in (absent, idless):
            for call in (ch.increment_agent_rounds, ch.increment_agent_tasks_completed,
                         ch.update_agent_heartbeat):
                with pytest.raises(AgentNotFoundError) as err:
                    await call(agent_id)
                assert err.value.agent_id == agent_id
                assert isinstance(err.value, LookupError)
    assert redis_server.command("EXISTS", f"tt:t010:agent:{absent}") == 0
    assert redis_server.command("HGETALL", f"tt:t010:agent:{idless}") == [b"name", b"partial"]


async def test_rust_written_counters(redis_server, redis_url):
    agent = agent_named("rust")
    async with await Channel.connect(redis_url, town="t010") as ch:
        await ch.set_agent_state(agent)
        key = f"tt:t010:agent:{agent.id}"
        redis_server.command("HSET", key, "rounds_completed", "+007")  # Rust's reader: 7
        assert await ch.increment_agent_rounds(agent.id) == 8
        redis_server.command("HDEL", key, "tasks_completed")
        assert await ch.increment_agent_tasks_completed(agent.id) == 1


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_concurrent_increments_lose_nothing(redis_server, redis_url, layout):
    agent = agent_named("busy")
    channels = [await Channel.connect(redis_url, town="t010", layout=layout) for _ in range(3)]
    try:
        await channels[0].set_agent_state(agent)
        n = 40
        calls = [ch.increment_agent_rounds(agent.id) for ch in channels for _ in range(n)]
        calls += [ch.update_agent_heartbeat(agent.id) for ch in channels for _ in range(5)]

        def rust_writer() -> None:  # Tinytown's HINCRBY on the Hash, from another client
            for _ in range(n):
                redis_server.command("HINCRBY", f"tt:t010:agent:{agent.id}", "rounds_completed", 1)

        writer = asyncio.get_running_loop().run_in_executor(None, rust_writer) \
            if layout == "hash" else asyncio.sleep(0)
        results = (await asyncio.gather(*calls, writer))[:-1]
        expected = 3 * n + (n if layout == "hash" else 0)
        assert (await channels[0].get_agent_state(agent.id)).rounds_completed == expected
        counts = [r for r in results if r is not None]
        assert len(set(counts)) == len(counts) == 3 * n  # every increment saw its own value
    finally:
        for ch in channels:
            await ch.close()


# ------------------------------------------------------------------- reset

@pytest.mark.parametrize("api", APIS)
async def test_reset_never_touches_another_town(redis_server, redis_url, api):
    a = agent_named("a")
    task = Task.new("t")
    other = AgentId.new()
    foreign = {
        f"tt:golden:sub:agent:{other}": "x",  # Rust town "golden:sub"
        "tt:golden:sub:backlog": "x",
        f"tt:goldenx:agent:{other}": "x",
        f"tt:golden:agent:{other}:extra": "x",
        "tt:golden:unrelated": "x",
        "tt:broadcast": "x",
    }
    for key, value in foreign.items():
        redis_server.command("SET", key, value)
    async with await connect(api, redis_url, town="golden") as ch:
        await ch.set_agent_state(a)
        await ch.set_task(task)
        await ch.send(msg(a.id, "m"))
        await ch.send_urgent(msg(a.id, "u"))
        await ch.request_stop(a.id)
        for key in ("backlog", "events", f"events:agent:{a.id}", "docket:tasks",
                    f"activity:{a.id}", f"dead:{a.id}", f"processing:{a.id}"):
            redis_server.command("RPUSH", f"tt:golden:{key}", "v")
        assert await ch.reset_agents_only() == 7  # agent inbox urgent stop activity dead processing
        assert redis_server.command("EXISTS", f"tt:golden:task:{task.id}", "tt:golden:backlog",
                                    "tt:golden:events", f"tt:golden:events:agent:{a.id}") == 4
        assert await ch.reset_all() == 5  # task backlog events events:agent docket:tasks
        assert await ch.reset_all() == 0
    left = sorted(k.decode() for k in redis_server.command("KEYS", "*"))
    assert left == sorted(foreign)


# --------------------------------------------------------------- vectors

def _lines(name: str) -> list[dict[str, Any]]:
    # split on "\n" only: the vectors hold U+2028 and other characters splitlines() breaks on
    return [json.loads(line) for line in (WIRE / name).read_text().split("\n") if line.strip()]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["agents", "tasks"])
async def test_hash_vectors_written_and_read(redis_server, redis_url, api, kind):
    model = Agent if kind == "agents" else Task
    vectors = _lines(f"hash-{kind}.jsonl")
    assert len(vectors) > 200
    async with await connect(api, redis_url, town="golden") as ch:
        write = ch.set_agent_state if kind == "agents" else ch.set_task
        read = ch.get_agent_state if kind == "agents" else ch.get_task
        for vector in vectors:
            value = model.from_json(vector["json"])
            key = vector["key"]
            # stale fields that must go: every optional set, then the vector written
            if vector["hdel"]:
                redis_server.command("HSET", key, *[x for f in vector["hdel"] for x in (f, "stale")])
            await write(value)
            stored = redis_server.command("HGETALL", key)
            assert dict(zip(stored[::2], stored[1::2])) == {
                f.encode(): v.encode() for f, v in vector["hset"]}, key
            # as Rust wrote it: HSET of the pairs, read back equal
            redis_server.command("DEL", key)
            redis_server.command("HSET", key, *[x for pair in vector["hset"] for x in pair])
            assert await read(value.id) == value, key
            redis_server.command("DEL", key)


def _hash_fields(value: Any) -> tuple[list[bytes], list[bytes]]:
    from tinytown._ops_state import _hash_fields as fields
    return fields(value)


@pytest.mark.parametrize("kind", ["agents", "tasks"])
def test_hash_field_order_is_tinytowns(kind):
    model = Agent if kind == "agents" else Task
    for vector in _lines(f"hash-{kind}.jsonl"):
        hdel, pairs = _hash_fields(model.from_json(vector["json"]))
        assert hdel == [f.encode() for f in vector["hdel"]]
        assert pairs == [x.encode() for pair in vector["hset"] for x in pair]


# -------------------------------------------------- methods.jsonl argv

_AS_SENT = {  # methods whose commands are Tinytown's exactly
    "send_urgent", "urgent_len", "try_receive", "move_message_to_inbox", "broadcast",
    "delete_agent", "delete_task", "set_agent_state", "set_task", "peek_inbox", "reset_all",
}


def _method_cases() -> list[dict[str, Any]]:
    cases = []
    for case in _lines("methods.jsonl"):
        if case.get("method") not in _AS_SENT or "err" in case.get("result", {}):
            continue
        if case["method"] == "peek_inbox" and case["input"]["count"] < 1:
            continue  # rejected here (Tinytown reads 0 as "all", negatives from the end)
        if case["method"] == "reset_all" and case["result"]["ok"]:
            continue  # deletes only this town's keys: another DEL (test_reset_never_touches_another_town)
        cases.append(case)
    return cases


def _argv(sent: list[dict[str, Any]]) -> list[list[bytes]]:
    return [[a.encode() for a in argv] for step in sent for argv in step["argv"]]


@pytest.mark.parametrize("case", _method_cases(), ids=lambda c: f"{c['method']}:{c['case']}")
async def test_methods_send_tinytowns_argv(redis_server, redis_url, monitor, case):
    method, given = case["method"], case["input"]
    async with await Channel.connect(redis_url, town="golden") as ch:
        expected = _argv(case["sent"])
        # Put in place what the call acts on.
        if method == "try_receive":
            key, value = expected[0][1], case["sent"][0]["replies"][0]
            redis_server.command("RPUSH", key, value)
        elif method == "delete_task" and case["result"]["ok"]:
            redis_server.command("SET", expected[0][1], "x")
        elif method == "peek_inbox":
            redis_server.command("RPUSH", expected[0][1], *case["sent"][0]["replies"][0])
        elif method == "urgent_len":
            for _ in range(case["result"]["ok"]):
                redis_server.command("RPUSH", expected[0][1], "x")
        monitor.commands_run(redis_server)
        if method in ("send_urgent", "broadcast"):
            result = await getattr(ch, method)(Message.from_json(given["message"]))
        elif method == "move_message_to_inbox":
            result = await ch.move_message_to_inbox(Message.from_json(given["message"]), given["to_agent"])
        elif method == "set_agent_state":
            result = await ch.set_agent_state(Agent.from_json(given["agent"]))
        elif method == "set_task":
            result = await ch.set_task(Task.from_json(given["task"]))
        elif method == "delete_task":
            result = await ch.delete_task(given["task_id"])
        elif method == "peek_inbox":
            result = await ch.peek_inbox(given["agent_id"], given["count"])
        elif method == "reset_all":
            result = await ch.reset_all()
        else:
            result = await getattr(ch, method)(given["agent_id"])
        seen = monitor.commands_run(redis_server)
        if method in ("set_agent_state", "set_task"):  # the same, inside MULTI/EXEC
            expected = [[b"MULTI"]] + expected + [[b"EXEC"]]
        assert seen == expected
        want = case["result"]["ok"]
        if method == "try_receive":
            assert json.loads(result.to_json()) == want
        elif method == "peek_inbox":
            assert [json.loads(m.to_json()) for m in result] == want
        elif method == "reset_all":
            assert result == want
        elif method == "broadcast":
            assert result == 0  # Tinytown drops the receiver count; nobody listens here
        elif method in ("urgent_len", "delete_task"):
            assert result == want
        else:
            assert result is None


@pytest.mark.parametrize("api", APIS)
async def test_reset_escapes_glob_characters(redis_server, redis_url, api):
    # Town "b\": unescaped, its pattern tt:b\:* would mean tt:b:* and miss
    # its own keys (tt:b\:...) while matching town "b"'s and Rust town "b:"'s.
    agent = AgentId.new()
    foreign = [f"tt:b:agent:{agent}", f"tt:b::agent:{agent}", f"tt:b]:agent:{agent}"]
    for key in foreign:
        redis_server.command("SET", key, "x")
    async with await connect(api, redis_url, town="b\\") as ch:
        await ch.set_agent_state(agent_named("own"))
        await ch.send(msg(agent, "own"))
        assert await ch.reset_agents_only() == 2
        await ch.set_task(Task.new("own"))
        assert await ch.reset_all() == 1
    assert redis_server.command("EXISTS", *foreign) == 3
    assert redis_server.command("KEYS", "tt:b\\\\*") == []


@pytest.mark.parametrize("api", APIS)
async def test_dead_letters_unwritable_keeps_everything_once(redis_server, redis_url, api):
    # The dead-letter key holds another type: the malformed element stays in
    # its list (once), the good messages are returned.
    agent = AgentId.new()
    redis_server.command("SET", f"tt:t010:dead:{agent}", "not a list")
    inbox, urgent = f"tt:t010:inbox:{agent}", f"tt:t010:urgent:{agent}"
    async with await connect(api, redis_url) as ch:
        redis_server.command("RPUSH", inbox, b"{bad", msg(agent, "after").to_json())
        with pytest.raises(DecodeError) as err:
            await ch.try_receive(agent)
        assert err.value.raw == b"{bad"
        assert redis_server.command("LRANGE", inbox, 0, -1)[0] == b"{bad"
        assert redis_server.command("LLEN", inbox) == 2
        assert texts(await ch.drain_inbox(agent)) == ["after"]
        assert redis_server.command("LRANGE", inbox, 0, -1) == [b"{bad"]
        redis_server.command("RPUSH", urgent, msg(agent, "u").to_json(), b"{bad2")
        assert texts(await ch.receive_urgent(agent)) == ["u"]
        assert redis_server.command("LRANGE", urgent, 0, -1) == [b"{bad2"]


def _id_calls(ch: Any, bad: Any) -> list[Any]:
    return [
        lambda: ch.receive_urgent(bad), lambda: ch.urgent_len(bad), lambda: ch.drain_inbox(bad),
        lambda: ch.peek_inbox(bad, 1), lambda: ch.try_receive(bad), lambda: ch.delete_agent(bad),
        lambda: ch.delete_task(bad), lambda: ch.increment_agent_rounds(bad),
        lambda: ch.increment_agent_tasks_completed(bad), lambda: ch.update_agent_heartbeat(bad),
        lambda: ch.get_agent_state(bad), lambda: ch.get_task(bad),
        lambda: ch.move_message_to_inbox(msg(AgentId.new(), "x"), bad),
    ]


@pytest.mark.parametrize("api", APIS)
async def test_bad_input_is_typed_and_writes_nothing(redis_server, redis_url, api):
    from channel_cases import BAD_IDS
    async with await connect(api, redis_url) as ch:
        for bad in BAD_IDS:
            for call in _id_calls(ch, bad):
                with pytest.raises(InvalidArgumentError):
                    await call()
        for bad in (None, "text", {"id": 1}, Task.new("not a message")):
            with pytest.raises(InvalidArgumentError):
                await ch.send_urgent(bad)
            with pytest.raises(InvalidArgumentError):
                await ch.move_message_to_inbox(bad, AgentId.new())
        for bad in (None, 1, b"bytes"):
            with pytest.raises(InvalidArgumentError):
                await ch.get_agent_by_name(bad)
            with pytest.raises(InvalidArgumentError):
                await ch.resolve_agent_ref(bad)
        with pytest.raises(InvalidArgumentError):
            await ch.peek_inbox(AgentId.new(), 2**63)
        with pytest.raises(InvalidArgumentError):
            await ch.set_task(agent_named("not a task"))
    assert redis_server.command("DBSIZE") == 0


@pytest.mark.parametrize("api", APIS)
async def test_closed_channel(redis_url, api):
    from tinytown import ChannelClosedError
    ch = await connect(api, redis_url)
    await ch.close()
    agent = AgentId.new()
    for call in [lambda: ch.send_urgent(msg(agent, "x")), lambda: ch.list_agents(),
                 lambda: ch.reset_all(), lambda: ch.increment_agent_rounds(agent),
                 *_id_calls(ch, agent)]:
        with pytest.raises(ChannelClosedError):
            await call()


@pytest.mark.parametrize("api", APIS)
async def test_updates_across_layouts_and_script_cache(redis_server, redis_url, api, monitor):
    agent = agent_named("other-layout")
    async with await connect(api, redis_url, layout="json") as flat, \
            await connect(api, redis_url, layout="hash") as hashed:
        await flat.set_agent_state(agent)  # a String, updated by a hash-layout channel
        before = (await flat.get_agent_state(agent.id)).last_heartbeat
        await hashed.update_agent_heartbeat(agent.id)
        assert redis_server.command("TYPE", f"tt:t010:agent:{agent.id}") == "string"
        assert (await hashed.get_agent_state(agent.id)).last_heartbeat > before
        assert await hashed.increment_agent_rounds(agent.id) == 1
        await hashed.set_agent_state(await hashed.get_agent_state(agent.id))  # now a Hash
        redis_server.command("SCRIPT", "FLUSH")
        monitor.commands_run(redis_server)
        assert await flat.increment_agent_rounds(agent.id) == 2  # NOSCRIPT: EVAL once
        await hashed.update_agent_heartbeat(agent.id)
        seen = [c[0] for c in monitor.commands_run(redis_server)  # (MONITOR also shows the script's own calls)
                if c[0] in (b"GET", b"HGETALL", b"EVALSHA", b"EVAL", b"HSET")]
        assert seen == [b"GET", b"HGETALL", b"EVALSHA", b"EVAL", b"HSET", b"EVALSHA", b"HSET"]
        assert redis_server.command("HGET", f"tt:t010:agent:{agent.id}", "rounds_completed") == b"2"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("api", APIS)
async def test_counters_and_heartbeat_on_a_key_of_another_type(redis_server, redis_url, api, layout):
    # A list, set, sorted set or stream where the agent's state should be:
    # the heartbeat answers as the counters do (WRONGTYPE, as Tinytown's HSET
    # and HINCRBY would), not "agent not found", and the key is left as it is.
    agent = AgentId.new()
    key = f"tt:t010:agent:{agent}"
    writes = {"list": ("RPUSH", key, "x"), "set": ("SADD", key, "x"),
              "zset": ("ZADD", key, "1", "x"), "stream": ("XADD", key, "1-1", "f", "v")}
    async with await connect(api, redis_url, layout=layout) as ch:
        for kind, write in writes.items():
            redis_server.command("DEL", key)
            redis_server.command(*write)
            for call in (ch.update_agent_heartbeat, ch.increment_agent_rounds,
                         ch.increment_agent_tasks_completed):
                with pytest.raises(ReplyError, match="WRONGTYPE"):
                    await call(agent)
            assert redis_server.command("TYPE", key) in (kind, kind.encode())
        redis_server.command("DEL", key)
        for call in (ch.update_agent_heartbeat, ch.increment_agent_rounds):
            with pytest.raises(AgentNotFoundError):
                await call(agent)
        assert redis_server.command("EXISTS", key) == 0
