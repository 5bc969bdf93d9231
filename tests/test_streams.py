"""Activity log, backlog, docket and events of Tinytown 0.10 on Channel and
SyncChannel, against real redis-server processes: every golden vector of
activity.jsonl and docket.jsonl (and the backlog/activity cases of
methods.jsonl) replayed, the argv each call sends compared byte for byte with
a MONITOR connection, plus the choices made where upstream loses data."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time

import pytest

from streams_harness import KINDS, Monitor, argv_bytes, open_channel, vectors
from tinytown import (
    AgentId,
    Channel,
    DecodeError,
    EncodeError,
    InvalidArgumentError,
    Priority,
    ReplyError,
    SyncChannel,
    TaskId,
)

RFC3339_PLUS00 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00")
ENTRY_ID = re.compile(r"\d+-\d+")

kinds = pytest.mark.parametrize("kind", KINDS)


async def ttl_ms(channel, key: str) -> int:
    return await channel.execute(b"PTTL", key)


# ------------------------------------------------------------------ activity


@kinds
async def test_activity_vectors_byte_for_byte(redis_url, kind):
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            for case in vectors("activity.jsonl"):
                if case["op"] == "log_agent_activity":
                    agent = case["agent_id"]
                    assert await channel.log_agent_activity(agent, case["activity"]) is None
                    sent = await monitor.commands(channel)
                    assert sent == [argv_bytes(s["argv"][0]) for s in case["sent"]]
                    key = channel.keys.activity(agent)
                    head = await channel.execute(b"LINDEX", key, 0)
                    assert head == bytes.fromhex(case["element_hex"])
                    await monitor.commands(channel)  # not the operation's: skip
                else:
                    argv = argv_bytes(case["sent"][0]["argv"][0])
                    agent = argv[1].decode().rsplit(":", 1)[1]
                    got = await channel.get_agent_activity(agent)
                    assert got == case["result"]["ok"]
                    assert await monitor.commands(channel) == [argv]
                    if "list_after" in case:
                        whole = await channel.execute(b"LRANGE", argv[1], 0, -1)
                        assert [x.decode() for x in whole] == case["list_after"]
                        # TTL refreshed to 3600 s by the last push (a few ms ago)
                        assert 3_590_000 < await ttl_ms(channel, argv[1].decode()) <= 3_600_000
                        await monitor.commands(channel)
    finally:
        monitor.close()


@kinds
async def test_activity_push_is_one_transaction(redis_url, kind):
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            agent = AgentId.new()
            await channel.log_agent_activity(agent, "Round 1: ✅ completed")
            marker_seen = [argv[0] for argv in await monitor.commands(channel, True)]
            assert marker_seen == [b"MULTI", b"LPUSH", b"LTRIM", b"EXPIRE", b"EXEC"]
    finally:
        monitor.close()


@kinds
async def test_activity_methods_vector_keeps_ten_shows_five(redis_url, kind):
    (push,) = [c for c in vectors("methods.jsonl") if c["case"] == "activity"]
    (show,) = [c for c in vectors("methods.jsonl")
               if c["case"].startswith("activity: 5 newest")]
    agent = push["input"]["agent_id"]
    async with open_channel(kind, redis_url) as channel:
        for n in range(1, 13):
            await channel.log_agent_activity(agent, f"Round {n}: ✅ completed")
        assert await channel.get_agent_activity(agent) == show["result"]["ok"]
        key = channel.keys.activity(AgentId(agent))
        assert await channel.execute(b"LLEN", key) == 10
        assert await channel.get_agent_activity_lines(agent) == show["result"]["ok"].split("\n")
        lines = await channel.get_agent_activity_lines(agent, 10)
        assert lines == [f"Round {n}: ✅ completed" for n in range(12, 2, -1)]


@kinds
async def test_activity_lines_keep_newlines_and_empty_is_none(redis_url, kind):
    async with open_channel(kind, redis_url) as channel:
        agent = AgentId.new()
        assert await channel.get_agent_activity(agent) is None
        assert await channel.get_agent_activity_lines(agent) == []
        await channel.log_agent_activity(agent, "two\nlines")
        await channel.log_agent_activity(agent, "")
        assert await channel.get_agent_activity_lines(agent) == ["", "two\nlines"]
        assert await channel.get_agent_activity(agent) == "\ntwo\nlines"


@kinds
async def test_activity_on_a_wrong_type_key_raises_the_error_inside_exec(redis_url, redis_server, kind):
    # LPUSH fails inside MULTI/EXEC (WRONGTYPE): EXEC's reply holds the error.
    async with open_channel(kind, redis_url) as channel:
        agent = AgentId.new()
        key = f"tt:golden:activity:{agent}"
        redis_server.command("SADD", key, "foreign")
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await channel.log_agent_activity(agent, "line")
        assert redis_server.command("TYPE", key) == "set"
        redis_server.command("DEL", key)


@kinds
async def test_activity_bad_arguments_send_nothing(redis_url, kind):
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            agent = AgentId.new()
            for bad_id in ("not-a-uuid", None, 12):
                with pytest.raises(InvalidArgumentError):
                    await channel.log_agent_activity(bad_id, "x")
                with pytest.raises(InvalidArgumentError):
                    await channel.get_agent_activity(bad_id)
            for bad_text in (None, b"bytes", 3):
                with pytest.raises(InvalidArgumentError):
                    await channel.log_agent_activity(agent, bad_text)
            with pytest.raises(EncodeError):
                await channel.log_agent_activity(agent, "lone \ud800 surrogate")
            for bad_count in (0, -1, True, 2.5):
                with pytest.raises(InvalidArgumentError):
                    await channel.get_agent_activity_lines(agent, bad_count)
            assert await monitor.commands(channel) == []
    finally:
        monitor.close()


# ------------------------------------------------------------------ backlog


@kinds
async def test_backlog_methods_vectors_byte_for_byte(redis_url, kind):
    cases = [c for c in vectors("methods.jsonl") if c["case"].startswith("backlog")]
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            for case in cases:
                method, args = case["method"], case["input"]
                argv = argv_bytes(case["sent"][0]["argv"][0])
                if method == "backlog_list":
                    # the vector's server held a foreign entry: put it there too
                    await channel.execute(b"RPUSH", channel.keys.backlog, b"not-a-uuid")
                    await monitor.commands(channel)
                if method == "backlog_remove" and not args:
                    args = {"task_id": argv[3].decode()}
                call = getattr(channel, method)
                result = case["result"]
                if "err" in result:
                    with pytest.raises(DecodeError) as info:
                        await call(**args)
                    assert info.value.raw == b"not-a-uuid"
                    sent = await monitor.commands(channel)
                    # popped, then kept as a dead letter (upstream drops it)
                    assert sent == [argv, [b"RPUSH", b"tt:golden:dead:backlog", b"not-a-uuid"]]
                    continue
                got = await call(**args)
                assert got == result["ok"]
                assert await monitor.commands(channel) == [argv]
            assert await channel.backlog_len() == 0
            assert await channel.execute(b"LRANGE", "tt:golden:dead:backlog", 0, -1) == [b"not-a-uuid"]
    finally:
        monitor.close()


@kinds
async def test_backlog_round_trip_and_forms(redis_url, kind):
    async with open_channel(kind, redis_url) as channel:
        tasks = [TaskId.new() for _ in range(4)]
        for t in tasks:
            await channel.backlog_push(t)
        await channel.backlog_push(tasks[0].uuid)           # uuid.UUID
        await channel.backlog_push(str(tasks[1]).upper())    # any case: written canonical
        assert await channel.backlog_len() == 6
        listed = await channel.backlog_list()
        assert listed == tasks + [tasks[0], tasks[1]]
        assert all(type(t) is TaskId for t in listed)
        assert await channel.backlog_remove(tasks[0]) is True   # first occurrence only
        assert await channel.backlog_list() == tasks[1:] + [tasks[0], tasks[1]]
        assert await channel.backlog_remove(TaskId.new()) is False
        popped = [await channel.backlog_pop() for _ in range(5)]
        assert popped == tasks[1:] + [tasks[0], tasks[1]]
        assert await channel.backlog_pop() is None
        with pytest.raises(InvalidArgumentError):
            await channel.backlog_push("nope")
        with pytest.raises(InvalidArgumentError):
            await channel.backlog_remove(None)
        assert await channel.backlog_len() == 0


@kinds
async def test_backlog_pop_dead_letters_and_goes_on(redis_url, kind):
    async with open_channel(kind, redis_url) as channel:
        good = TaskId.new()
        await channel.execute(b"RPUSH", channel.keys.backlog, b"\xff\xfe", b"", good)
        for raw in (b"\xff\xfe", b""):
            with pytest.raises(DecodeError) as info:
                await channel.backlog_pop()
            assert info.value.raw == raw
        assert await channel.backlog_pop() == good
        dead = await channel.execute(b"LRANGE", channel.keys.dead("backlog"), 0, -1)
        assert dead == [b"\xff\xfe", b""]
        # the list skips what pop refuses, and never fails on it
        await channel.execute(b"RPUSH", channel.keys.backlog, b"junk", good)
        assert await channel.backlog_list() == [good]


async def test_cancelled_backlog_pop_loses_nothing(redis_url):
    async with await Channel.connect(redis_url, town="golden") as channel:
        tasks = [TaskId.new() for _ in range(40)]
        for t in tasks:
            await channel.backlog_push(t)
        got: list[TaskId] = []
        for i in range(40):
            pop = asyncio.ensure_future(channel.backlog_pop())
            for _ in range(i % 4):  # cancel at different points of the round trip
                await asyncio.sleep(0)
            pop.cancel()
            try:
                got.append(await pop)
            except asyncio.CancelledError:
                pass
        await asyncio.sleep(0.05)  # let hand-backs land
        while (t := await channel.backlog_pop()) is not None:
            got.append(t)
        assert sorted(got) == sorted(tasks), "a task id was lost or duplicated"


def test_backlog_pop_interrupted_by_signal_loses_nothing(redis_url):
    class Interrupted(Exception):
        pass

    armed = [False]  # raise only inside the call: the test's own code must not be cut

    def on_signal(signum, frame):
        if armed[0]:
            raise Interrupted

    # A signal every ~0.3 ms, sent to this thread (pthread_kill: a
    # process-wide one could land in any thread the suite left running).
    me = threading.get_ident()
    stop = threading.Event()

    def signaller():
        while not stop.is_set():
            signal.pthread_kill(me, signal.SIGUSR1)
            time.sleep(0.0003)

    mask_before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    tasks = [TaskId.new() for _ in range(300)]
    got: list[TaskId] = []
    interrupted = 0
    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with SyncChannel.connect(redis_url, town="golden") as channel:
            for t in tasks:
                channel.backlog_push(t)
            thread = threading.Thread(target=signaller)
            thread.start()
            try:
                while True:
                    try:
                        armed[0] = True
                        t = channel.backlog_pop()
                        armed[0] = False
                    except Interrupted:
                        armed[0] = False
                        interrupted += 1
                        continue
                    if t is None:
                        break
                    got.append(t)
            finally:
                stop.set()
                thread.join()
                armed[0] = False
            while (t := channel.backlog_pop()) is not None:
                got.append(t)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sorted(got) == sorted(tasks), f"lost or duplicated ({interrupted} interruptions)"
    assert interrupted > 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == mask_before, "signals left blocked"


# ------------------------------------------------------------------- docket


def _docket_call(case, ids):
    """(method name, kwargs) of a docket.jsonl line, vector entry ids mapped to ours."""
    op, args = case["op"], case["args"]
    if op == "docket_push":
        return op, dict(task_id=args["task_id"], description=args["description"],
                        priority=args["priority"], from_=args["from"], to=args["to"])
    if op == "docket_read":
        return op, dict(consumer=args["consumer_name"], block_ms=args["block_ms"])
    if op == "docket_ack":
        return op, dict(entry_id=ids.get(args["entry_id"], args["entry_id"]))
    if op == "docket_log_event":
        return op, dict(task_id=args["task_id"], event_type=args["event_type"],
                        detail=args["detail"])
    return op, {}


def _expected_argv(case, ids):
    argv = argv_bytes(case["sent"][0]["argv"][0])
    if case["op"] == "docket_ack":
        argv[3] = ids.get(argv[3].decode(), argv[3].decode()).encode()
    return argv


@kinds
async def test_docket_vectors_byte_for_byte(redis_url, kind):
    ids: dict[str, str] = {}  # the vectors' entry ids -> this run's
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            for case in vectors("docket.jsonl"):
                op, kwargs = _docket_call(case, ids)
                expected = _expected_argv(case, ids)
                result = case["result"]
                if op == "docket_ack" and not ENTRY_ID.fullmatch(kwargs["entry_id"]):
                    # upstream sends it and gets ERR; refused here before sending
                    with pytest.raises(InvalidArgumentError):
                        await channel.docket_ack(**kwargs)
                    assert await monitor.commands(channel) == []
                    continue
                call = getattr(channel, op)
                if "err" in result:
                    with pytest.raises(ReplyError) as info:
                        await call(**kwargs)
                    assert str(info.value) == case["sent"][0]["replies"][0]["error"]
                    assert await monitor.commands(channel) == [expected]
                    continue
                got = await call(**kwargs)
                (sent,) = await monitor.commands(channel)
                want = result["ok"]
                if op in ("docket_push", "docket_log_event"):
                    assert sent[:-1] == expected[:-1]
                    assert RFC3339_PLUS00.fullmatch(sent[-1].decode()), sent[-1]
                    assert ENTRY_ID.fullmatch(got)
                    ids[want] = got
                    # the stream entry holds exactly these fields, in this order
                    (entry,) = await channel.execute(b"XRANGE", sent[1], got, got)
                    assert entry[1] == sent[3:]
                    await monitor.commands(channel)
                    continue
                assert sent == expected
                if op == "docket_read":
                    if want is None:
                        assert got is None
                    else:
                        entry_id, fields = got
                        assert entry_id == ids[want["entry_id"]]
                        stamp = fields.pop("timestamp")
                        assert RFC3339_PLUS00.fullmatch(stamp)
                        assert fields == {k: v for k, v in want["fields"] if k != "timestamp"}
                elif op == "docket_ack":
                    assert got is (case["sent"][0]["replies"][0] == 1)
                else:
                    assert got == want
    finally:
        monitor.close()


@kinds
async def test_docket_reclaim_takes_over_abandoned_entries(redis_url, kind):
    async with open_channel(kind, redis_url) as channel:
        await channel.docket_ensure_group()
        tasks = [TaskId.new() for _ in range(30)]
        pushed = [await channel.docket_push(t, f"task {i}", Priority.HIGH, "supervisor", "w")
                  for i, t in enumerate(tasks)]
        read = [await channel.docket_read("crashed", 50) for _ in range(30)]
        assert [r[0] for r in read] == pushed
        assert read[0][1]["priority"] == "high"
        assert await channel.docket_pending_count() == 30
        assert await channel.docket_reclaim("rescuer", 60_000) == []  # not idle long enough
        first = await channel.docket_reclaim("rescuer", 0, 25)
        assert [e for e, _ in first] == pushed[:25]
        assert [f["task_id"] for _, f in first] == [str(t) for t in tasks[:25]]
        rest = await channel.docket_reclaim("rescuer", 0, 25)
        # the 25 just claimed are pending for rescuer now (idle ~0): all 30 again
        assert [e for e, _ in rest] == pushed[:25]
        rest = await channel.docket_reclaim("rescuer", 0, 100)
        assert [e for e, _ in rest] == pushed
        for entry_id in pushed:
            assert await channel.docket_ack(entry_id) is True
        assert await channel.docket_ack(pushed[0]) is False
        assert await channel.docket_pending_count() == 0
        assert await channel.docket_reclaim("rescuer", 0) == []
        # entries deleted from the stream while pending are not returned
        extra = await channel.docket_push(TaskId.new(), "gone", "low", "s", "w")
        assert (await channel.docket_read("crashed", 50))[0] == extra
        await channel.execute(b"XDEL", channel.keys.docket_tasks, extra)
        assert await channel.docket_reclaim("rescuer", 0) == []


@kinds
async def test_docket_errors_and_bad_arguments(redis_url, kind):
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            with pytest.raises(ReplyError, match="NOGROUP"):
                await channel.docket_read("w", 10)
            await monitor.commands(channel)
            bad_calls = [
                ("docket_read", ("w", 0)), ("docket_read", ("w", -5)), ("docket_read", ("w", True)),
                ("docket_read", ("w", 1.5)), ("docket_read", ("w", "5")), ("docket_read", (None, 5)),
                ("docket_read", ("\ud800", 5)),
                ("docket_push", ("not-a-task", "d", "p", "f", "t")),
                ("docket_push", (TaskId.new(), None, "p", "f", "t")),
                ("docket_push", (TaskId.new(), "d", 1, "f", "t")),
                ("docket_ack", ("1-2-3",)), ("docket_ack", (None,)), ("docket_ack", ("",)),
                ("docket_log_event", ("x", "e", "d")), ("docket_log_event", (TaskId.new(), "e", 5)),
                ("docket_reclaim", ("w", -1)), ("docket_reclaim", ("w", 0, 0)),
                ("docket_reclaim", (b"w", 0)),
            ]
            for name, args in bad_calls:
                with pytest.raises((InvalidArgumentError, EncodeError)):
                    await getattr(channel, name)(*args)
            assert await monitor.commands(channel) == []
            # a stream without the group: no lag to tell
            await channel.execute(b"XADD", channel.keys.docket_tasks, b"*", b"a", b"b")
            assert await channel.docket_group_lag() is None
            with pytest.raises(ReplyError, match="NOGROUP"):
                await channel.docket_pending_count()
            await channel.docket_ensure_group()
            await channel.docket_ensure_group()  # BUSYGROUP swallowed
            assert await channel.docket_group_lag() == 0
            assert await channel.docket_len() == 1
            # an error other than BUSYGROUP is not swallowed
            await channel.execute(b"DEL", channel.keys.docket_tasks)
            await channel.execute(b"SET", channel.keys.docket_tasks, b"x")
            with pytest.raises(ReplyError, match="WRONGTYPE"):
                await channel.docket_ensure_group()
    finally:
        monitor.close()


async def test_docket_read_waits_for_a_push(redis_url):
    async with await Channel.connect(redis_url, town="golden") as channel:
        await channel.docket_ensure_group()
        reader = asyncio.ensure_future(channel.docket_read("w", 10_000))
        await asyncio.sleep(0.1)
        assert not reader.done()
        assert await channel.docket_len() == 0  # the main connection is not held up
        entry = await channel.docket_push(TaskId.new(), "late", "normal", "s", "w")
        got = await asyncio.wait_for(reader, 5)
        assert got is not None and got[0] == entry and got[1]["message"] == "late"


async def test_cancelled_docket_read_leaves_the_entry_for_reclaim(redis_url):
    async with await Channel.connect(redis_url, town="golden") as channel:
        await channel.docket_ensure_group()
        for round_ in range(20):
            reader = asyncio.ensure_future(channel.docket_read("w", 5_000))
            await asyncio.sleep(0.01)
            entry = await channel.docket_push(TaskId.new(), f"r{round_}", "normal", "s", "w")
            reader.cancel()  # before or after Redis delivered the entry
            try:
                got = await reader
            except asyncio.CancelledError:
                got = None
            if got is not None:
                assert await channel.docket_ack(got[0]) is True  # done with it
            await asyncio.sleep(0.02)
            reclaimed = await channel.docket_reclaim("rescuer", 0)
            later = await channel.docket_read("w", 1)
            seen = ([got[0]] if got else []) + [e for e, _ in reclaimed] + ([later[0]] if later else [])
            assert seen == [entry], "an entry was lost or delivered twice"
            await channel.docket_ack(entry)  # (again, for the first case: False)
        assert await channel.docket_pending_count() == 0


def test_sync_docket_read_interrupted_by_signal(redis_url):
    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with SyncChannel.connect(redis_url, town="golden") as channel:
            channel.docket_ensure_group()
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                channel.docket_read("w", 30_000)   # ended by CLIENT UNBLOCK, not after 30 s
            # the connection is in step: the next calls work
            entry = channel.docket_push(TaskId.new(), "after", "low", "s", "w")
            got = channel.docket_read("w", 1000)
            assert got is not None and got[0] == entry
            assert channel.docket_ack(entry) is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_sync_docket_read_blocks_with_other_threads_running(redis_url):
    with SyncChannel.connect(redis_url, town="golden") as channel:
        channel.docket_ensure_group()
        ticks = []
        stop = threading.Event()

        def tick():
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.005)

        ticker = threading.Thread(target=tick)
        ticker.start()
        try:
            assert channel.docket_read("w", 200) is None
        finally:
            stop.set()
            ticker.join()
        assert ticks, "the GIL was held during XREADGROUP"


# ------------------------------------------------------------------ cluster


async def test_activity_backlog_docket_on_a_cluster(redis_cluster, cluster_url):
    # Keys of one town land on several nodes: the multi-command writes go as
    # pipelines there (MULTI/EXEC cannot span nodes), each routed by its key.
    async with await Channel.connect(cluster_url, town="metro") as channel:
        agents = [AgentId.new() for _ in range(6)]
        for agent in agents:
            for n in range(12):
                await channel.log_agent_activity(agent, f"Round {n}")
        for agent in agents:
            assert await channel.get_agent_activity_lines(agent, 10) == \
                [f"Round {n}" for n in range(11, 1, -1)]
            assert 3_590_000 < await channel.execute(b"PTTL", channel.keys.activity(agent)) <= 3_600_000
        tasks = [TaskId.new() for _ in range(5)]
        for t in tasks:
            await channel.backlog_push(t)
        assert await channel.backlog_pop() == tasks[0]
        assert await channel.backlog_list() == tasks[1:]
        await channel.docket_ensure_group()
        entry = await channel.docket_push(tasks[1], "d", "high", "s", "w")
        got = await channel.docket_read("w", 1000)
        assert got is not None and got[0] == entry
        assert await channel.docket_pending_count() == 1
        assert [e for e, _ in await channel.docket_reclaim("x", 0)] == [entry]
        assert await channel.docket_ack(entry) is True
        assert await channel.docket_group_lag() == 0
        # an event's streams live on several nodes: one XADD to each
        mission = AgentId.new()
        for n in range(3):
            await channel.emit_event(town_event(f"e{n}", agent_id=agents[n], mission_id=mission,
                                                child_agent_id=agents[n + 1]))
        assert [e.message for _, e in await channel.read_town_events()] == ["e0", "e1", "e2"]
        assert [e.message for _, e in await channel.read_mission_events(mission)] == ["e0", "e1", "e2"]
        assert [e.message for _, e in await channel.read_agent_events(agents[1])] == ["e0", "e1"]
        assert [e.message for _, e in await channel.read_recent_town_events(1)] == ["e2"]


# ------------------------------------------------------------------- events


def town_event(message: str, **fields: str):
    """A TownEvent (task_completed unless ``event_type`` is given) from its JSON."""
    import json

    from tinytown.events import TownEvent

    doc = {"event_type": fields.pop("event_type", "task_completed")}
    doc.update({k: v for k, v in fields.items() if k in ("agent_id", "task_id", "mission_id")})
    doc["message"] = message
    doc["timestamp"] = "2023-11-14T22:13:21Z"
    doc.update({k: v for k, v in fields.items()
                if k in ("parent_agent_id", "child_agent_id", "scope", "spawn_mode")})
    return TownEvent.from_json(json.dumps(doc, separators=(",", ":")).encode())


@kinds
async def test_event_vectors_byte_for_byte(redis_url, kind):
    from tinytown.events import TownEvent

    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            for case in vectors("events.jsonl"):
                assert case["town"] == "golden"
                event = TownEvent.from_json(case["event"].encode())
                entry_id = await channel.emit_event(event)
                sent = await monitor.commands(channel)
                assert sent == [argv_bytes(argv) for argv in case["wire"]]
                # the entries as stored: field order and values as upstream's XADDs
                for xadd in case["xadds"]:
                    (last,) = await channel.execute(b"XREVRANGE", xadd["stream"], b"+", b"-",
                                                    b"COUNT", 1)
                    assert last[1] == [v.encode() for pair in xadd["fields"] for v in pair]
                (first,) = await channel.execute(b"XREVRANGE", case["stream"], b"+", b"-", b"COUNT", 1)
                assert first[0].decode() == entry_id
                await monitor.commands(channel)
            # every event reads back equal through the town stream
            read = await channel.read_town_events("-", 1000)
            assert [e.to_json() for _, e in read] == \
                [TownEvent.from_json(c["event"].encode()).to_json() for c in vectors("events.jsonl")]
    finally:
        monitor.close()


@kinds
async def test_emit_event_is_one_transaction_and_raises(redis_url, kind):
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            agent, child, mission = AgentId.new(), AgentId.new(), AgentId.new()
            event = town_event("spawned", event_type="agent_spawned", agent_id=agent,
                               mission_id=mission, parent_agent_id=agent, child_agent_id=child)
            await channel.emit_event(event)
            names = [(argv[0], argv[1].rsplit(b":", 1)[-1] if len(argv) > 1 else b"")
                     for argv in await monitor.commands(channel, True)]
            assert names == [(b"MULTI", b""), (b"XADD", b"events"),
                             (b"XADD", agent.encode()), (b"XADD", child.encode()),
                             (b"XADD", mission.encode()), (b"EXEC", b"")]
            # upstream swallows errors (spec 9.15): raised here
            await channel.execute(b"SET", channel.keys.events_agent(agent), b"not a stream")
            with pytest.raises(ReplyError, match="WRONGTYPE"):
                await channel.emit_event(event)
            # no rollback in Redis: the other streams have it
            assert len(await channel.read_agent_events(child)) == 2
            assert len(await channel.read_town_events()) == 2
            await monitor.commands(channel)
            for bad in (None, "event", {"event_type": "x"}):
                with pytest.raises(InvalidArgumentError):
                    await channel.emit_event(bad)
            assert await monitor.commands(channel) == []
    finally:
        monitor.close()


@kinds
async def test_follow_loop_sees_each_event_once(redis_url, kind):
    async with open_channel(kind, redis_url) as channel:
        for n in range(7):
            await channel.emit_event(town_event(f"e{n}"))
        seen, last = [], "-"
        for _ in range(10):  # a `tt events --follow` loop, 3 at a time
            batch = await channel.read_town_events(last, 3)
            if not batch:
                break
            seen += [e.message for _, e in batch]
            last = batch[-1][0]
        assert seen == [f"e{n}" for n in range(7)]
        assert await channel.read_town_events(last, 3) == []
        await channel.emit_event(town_event("e7"))
        assert [e.message for _, e in await channel.read_town_events(last, 3)] == ["e7"]
        # "0" and "0-0" are the start too; an id already written "(id" is kept
        assert len(await channel.read_town_events("0", 100)) == 8
        assert len(await channel.read_town_events("0-0", 100)) == 8
        ids = [i for i, _ in await channel.read_town_events("-", 100)]
        assert [i for i, _ in await channel.read_town_events("(" + ids[5], 100)] == ids[6:]
        recent = await channel.read_recent_town_events(3)
        assert [e.message for _, e in recent] == ["e5", "e6", "e7"]
        assert [i for i, _ in recent] == ids[5:]


@kinds
async def test_event_reads_skip_undecodable_entries(redis_url, kind):
    (case,) = [c for c in vectors("methods.jsonl")
               if c["case"] == "events: entries whose data is not a TownEvent are dropped"]
    async with open_channel(kind, redis_url) as channel:
        await channel.emit_event(town_event("event 4"))
        # what that vector's stream held after its good entry, plus other bad shapes
        stream = channel.keys.events
        await channel.execute(b"XADD", stream, b"*", b"event_type", b"x", b"data", b"{bad json")
        await channel.execute(b"XADD", stream, b"*", b"data", b"{}", b"event_type", b"x")
        await channel.execute(b"XADD", stream, b"*", b"event_type", b"x")
        await channel.execute(b"XADD", stream, b"*", b"data", b"\xff\xfe")
        recent = await channel.read_recent_town_events(3)
        assert [e.message for _, e in recent] == []
        recent = await channel.read_recent_town_events(5)
        assert [e.message for _, e in recent] == case["result"]["ok"]
        assert [e.message for _, e in await channel.read_town_events()] == ["event 4"]


@kinds
async def test_agent_and_mission_streams(redis_url, kind):
    (dedup,) = [c for c in vectors("methods.jsonl")
                if c["case"].startswith("events: agent==parent deduplicated")]
    from tinytown.events import TownEvent

    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            event = TownEvent.from_json(dedup["input"]["event"].encode())
            await channel.emit_event(event)
            assert await monitor.commands(channel) == \
                [argv_bytes(s["argv"][0]) for s in dedup["sent"]]
            a2, a3 = "00000000-0000-0000-0000-0000000000a2", "00000000-0000-0000-0000-0000000000a3"
            for agent in (a2, a3):
                (got,) = await channel.read_agent_events(agent, "-", 10)
                assert got[1].to_json() == event.to_json()
            await monitor.commands(channel)
            mission = AgentId.new()
            for n in range(3):
                await channel.emit_event(town_event(f"m{n}", mission_id=mission))
            got = await channel.read_mission_events(mission, "-", 2)
            assert [e.message for _, e in got] == ["m0", "m1"]
            got = await channel.read_mission_events(str(mission).upper(), got[-1][0], 2)
            assert [e.message for _, e in got] == ["m2"]
            assert await channel.read_agent_events(AgentId.new()) == []
            await monitor.commands(channel)
            bad_calls = [
                ("read_town_events", ("garbage", 10)), ("read_town_events", ("1-2-3", 10)),
                ("read_town_events", ("-", 0)), ("read_town_events", (None, 1)),
                ("read_town_events", ("(", 1)), ("read_recent_town_events", (-1,)),
                ("read_agent_events", ("not-an-id", "-", 1)),
                ("read_mission_events", ("nope", "-", 1)),
            ]
            for name, args in bad_calls:
                with pytest.raises(InvalidArgumentError):
                    await getattr(channel, name)(*args)
            assert await monitor.commands(channel) == []
    finally:
        monitor.close()


@kinds
async def test_every_method_refuses_a_closed_channel(redis_url, kind):
    from tinytown import ChannelClosedError

    task, agent = TaskId.new(), AgentId.new()
    calls = [
        ("log_agent_activity", (agent, "x")), ("get_agent_activity", (agent,)),
        ("get_agent_activity_lines", (agent,)), ("emit_event", (town_event("x"),)),
        ("read_town_events", ()), ("read_agent_events", (agent,)),
        ("read_mission_events", (agent,)), ("read_recent_town_events", ()),
        ("backlog_push", (task,)), ("backlog_list", ()), ("backlog_len", ()),
        ("backlog_pop", ()), ("backlog_remove", (task,)), ("docket_ensure_group", ()),
        ("docket_push", (task, "d", "p", "f", "t")), ("docket_read", ("w", 10)),
        ("docket_ack", ("1-0",)), ("docket_len", ()), ("docket_pending_count", ()),
        ("docket_group_lag", ()), ("docket_log_event", (task, "e", "d")),
        ("docket_reclaim", ("w", 0)),
    ]
    async with open_channel(kind, redis_url) as channel:
        await channel.close()
        for name, args in calls:
            with pytest.raises(ChannelClosedError):
                await getattr(channel, name)(*args)


@kinds
async def test_event_read_argv_match_methods_vectors(redis_url, kind):
    cases = {c["case"] + c["method"]: c for c in vectors("methods.jsonl")
             if c.get("method", "").startswith("EventStream::read")}
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            town = cases["eventsEventStream::read_town_events"]
            await channel.read_town_events(town["input"]["last_id"], town["input"]["count"])
            agent = cases["eventsEventStream::read_agent_events"]
            await channel.read_agent_events(agent["input"]["agent_id"], agent["input"]["last_id"], 10)
            recent = cases["eventsEventStream::read_recent_town_events"]
            await channel.read_recent_town_events(recent["input"]["count"])
            assert await monitor.commands(channel) == \
                [argv_bytes(c["sent"][0]["argv"][0]) for c in (town, agent, recent)]
            # a real last id: upstream's inclusive start (spec 9.14) made exclusive
            inclusive = cases["events: start id is inclusive (the last seen entry comes back)"
                              "EventStream::read_town_events"]
            argv = argv_bytes(inclusive["sent"][0]["argv"][0])
            await channel.read_town_events(argv[2].decode(), 10)
            assert await monitor.commands(channel) == [argv[:2] + [b"(" + argv[2]] + argv[3:]]
    finally:
        monitor.close()


@kinds
async def test_numbers_beyond_redis_range_are_refused_before_sending(redis_url, kind):
    """A count, block or idle time above 2**63-1 (Redis's long long) is bad
    input: InvalidArgumentError and nothing sent, not a server error reply."""
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url) as channel:
            agent, mission, huge = AgentId.new(), AgentId.new(), 2**63
            calls = [
                ("get_agent_activity_lines", (agent, huge)),
                ("read_town_events", ("-", huge)),
                ("read_agent_events", (agent, "-", huge)),
                ("read_mission_events", (mission, "-", huge)),
                ("read_recent_town_events", (huge,)),
                ("docket_read", ("w", huge)),
                ("docket_reclaim", ("w", huge)),
                ("docket_reclaim", ("w", 0, huge)),
                ("peek_inbox", (agent, huge)),
            ]
            for name, args in calls:
                with pytest.raises(InvalidArgumentError):
                    await getattr(channel, name)(*args)
            assert await monitor.commands(channel) == []
            # the largest value Redis takes is still accepted
            assert await channel.get_agent_activity_lines(agent, huge - 1) == []
            assert await channel.read_recent_town_events(huge - 1) == []
    finally:
        monitor.close()


@kinds
async def test_docket_read_with_the_longest_block_takes_the_waiting_entry(redis_url, kind):
    """block_ms up to 2**63-1 is valid (Redis takes it): with an entry waiting,
    the read returns it at once on both channels, whatever the transport's
    own limit on one wait."""
    async with open_channel(kind, redis_url, town="long-block") as channel:
        await channel.execute(b"DEL", channel.keys.docket_tasks)
        await channel.docket_ensure_group()
        for block_ms in (2**63 - 1, 10**12, 3 * 10**9):
            task = TaskId.new()
            entry = await channel.docket_push(task, "d", "high", "f", "t")
            got = await channel.docket_read("w", block_ms)
            assert got is not None and got[0] == entry and got[1]["task_id"] == str(task)
            assert await channel.docket_ack(entry)
        assert await channel.docket_pending_count() == 0


@kinds
async def test_entry_ids_at_and_beyond_the_largest(redis_url, kind):
    """Stream ids are two u64: one above 2**64-1 is bad input (nothing sent);
    the largest id is valid and nothing can follow it."""
    monitor = Monitor(redis_url)
    try:
        async with open_channel(kind, redis_url, town="max-id") as channel:
            u64 = 2**64 - 1
            await monitor.commands(channel)
            for bad in (f"{u64 + 1}-0", f"0-{u64 + 1}", f"({u64 + 1}-0", f"{u64 + 1}"):
                with pytest.raises(InvalidArgumentError):
                    await channel.read_town_events(bad)
                with pytest.raises(InvalidArgumentError):
                    await channel.docket_ack(bad.lstrip("("))
            assert await monitor.commands(channel) == []
            agent = AgentId.new()
            for last in (f"{u64}-{u64}", f"({u64}-{u64}"):
                assert await channel.read_town_events(last) == []
                assert await channel.read_agent_events(agent, last) == []
    finally:
        monitor.close()
