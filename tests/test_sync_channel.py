"""SyncChannel against real redis-server processes: the behavioural cases of
test_channel.py (same data, from channel_cases.py), plus threads and signals."""

from __future__ import annotations

import signal
import threading
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
    ChannelClosedError,
    ConcurrentUseError,
    ConnectionError,
    DecodeError,
    EncodeError,
    InvalidArgumentError,
    Message,
    MessageType,
    ReplyError,
    SyncChannel,
    Task,
    TaskState,
)


class Worker(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result or exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "thread still blocked"
        if self.error is not None:
            raise self.error
        return self.result


# ----------------------------------------------------------------- send/receive


def test_send_writes_rust_layout(redis_server, redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        message = msg(agent, "hello")
        channel.send(message)
        raw = redis_server.command("LRANGE", f"tt:alpha:inbox:{agent}", 0, -1)
        assert raw == [message.to_json()]
        assert channel.inbox_len(agent) == 1
        assert channel.try_receive(agent) == message
        assert channel.try_receive(agent) is None
        assert channel.inbox_len(agent) == 0


def test_priority_placement(redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        for text, priority in PRIORITY_SENDS:
            channel.send(msg(agent, text, priority))
        assert [text_of(channel.try_receive(agent)) for _ in PRIORITY_SENDS] == PRIORITY_ORDER


def test_ids_accept_id_uuid_and_str(redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        channel.send(msg(agent, "x"))
        for form in (agent, uuid.UUID(agent), str(agent), str(agent).upper()):
            assert channel.inbox_len(form) == 1
        assert text_of(channel.receive(uuid.UUID(agent), 1)) == "x"


def test_receive_times_out_with_none(redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        start = time.monotonic()
        assert channel.receive(AgentId.new(), 0.2) is None
        assert channel.receive(AgentId.new(), timedelta(milliseconds=150)) is None
        assert time.monotonic() - start >= 0.3  # it did wait (lower bound only)


def test_receive_wakes_when_another_thread_sends(redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as receiver, \
            SyncChannel.connect(redis_url, town="alpha") as sender:
        waiting = Worker(receiver.receive, agent, 30)
        waiting.start()
        time.sleep(0.1)
        assert waiting.is_alive()
        sender.send(msg(agent, "wake up"))
        assert text_of(waiting.outcome()) == "wake up"


def test_send_many_keeps_order_and_placement(redis_server, redis_url):
    a, b = AgentId.new(), AgentId.new()
    messages, inbox_a, pops_b = send_many_case(a, b)
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        channel.send_many(messages)
        channel.send_many([])
        assert channel.inbox_len(a) == len(inbox_a)
        raw_a = redis_server.command("LRANGE", f"tt:alpha:inbox:{a}", 0, -1)
        assert [text_of(Message.from_json(r)) for r in raw_a] == inbox_a
        assert [text_of(channel.try_receive(b)) for _ in pops_b] == pops_b


def test_send_many_encodes_everything_before_sending(redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        with pytest.raises(ValueError):
            channel.send_many([msg(agent, "ok"), msg(agent, "lone \ud800")])
        assert channel.inbox_len(agent) == 0


# -------------------------------------------------------------------- broadcast


def test_broadcast_reaches_several_subscribers(redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        subs = [channel.broadcasts().start() for _ in range(3)]
        sent = [Message.new(AgentId.supervisor(), AgentId.new(), MessageType.Ping()) for _ in range(3)]
        for m in sent:
            assert channel.broadcast(m) == 3
        for sub in subs:
            assert [sub.get(5) for _ in range(3)] == sent
            assert sub.get(0.05) is None  # nothing more: get() returns None at its timeout
        for sub in subs:
            sub.close()
        assert channel.broadcast(sent[0]) == 0


def test_broadcast_iteration_and_bad_payload(redis_server, redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        with channel.broadcasts() as sub:
            good = Message.new(AgentId.new(), AgentId.new(), MessageType.Shutdown())
            redis_server.command("PUBLISH", "tt:alpha:broadcast", b"{not json")
            channel.broadcast(good)
            with pytest.raises(DecodeError) as info:
                next(sub)
            assert info.value.raw == b"{not json"
            for received in sub:  # the subscription goes on after a bad payload
                assert received == good
                break


def test_broadcast_iteration_ends_when_closed_from_another_thread(redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        sub = channel.broadcasts().start()
        reader = Worker(lambda: list(sub))
        reader.start()
        time.sleep(0.1)
        assert reader.is_alive()
        sub.close()
        assert reader.outcome() == []
        with pytest.raises(ChannelClosedError):
            sub.get(1)


def test_broadcast_subscription_resubscribes_after_a_drop(fresh_redis):
    with SyncChannel.connect(fresh_redis.url, town="alpha") as channel:
        sub = channel.broadcasts().start()
        fresh_redis.kill()
        with pytest.raises(ConnectionError):
            sub.get(5)
        fresh_redis.restart()
        sub.start()
        ping = Message.new(AgentId.new(), AgentId.new(), MessageType.Ping())
        assert fresh_redis.command("PUBLISH", "tt:alpha:broadcast", ping.to_json()) == 1
        assert sub.get(5) == ping


# ------------------------------------------------------------------------ state


def test_agent_state_round_trip(redis_server, redis_url):
    agent = Agent.new("worker-1", "claude")
    with SyncChannel.connect(redis_url, town="alpha", layout="json") as channel:
        assert channel.get_agent_state(agent.id) is None
        channel.set_agent_state(agent)
        assert redis_server.command("GET", f"tt:alpha:agent:{agent.id}") == agent.to_json()
        assert channel.get_agent_state(agent.id) == agent
        agent.state = AgentState.WORKING
        channel.set_agent_state(agent)
        assert channel.get_agent_state(str(agent.id)).state is AgentState.WORKING


def test_task_round_trip(redis_server, redis_url):
    task = Task.new("Refactor the scheduler")
    with SyncChannel.connect(redis_url, town="alpha", layout="json") as channel:
        assert channel.get_task(task.id) is None
        channel.set_task(task)
        assert redis_server.command("GET", f"tt:alpha:task:{task.id}") == task.to_json()
        assert channel.get_task(uuid.UUID(task.id)) == task
        task.assign(AgentId.new())
        channel.set_task(task)
        assert channel.get_task(task.id).state is TaskState.ASSIGNED


def test_state_written_as_hash_by_newer_rust_is_read(redis_server, redis_url):
    agent = Agent.new("hash-agent", "codex")
    task = Task.new("hashed")
    redis_server.command("HSET", f"tt:alpha:agent:{agent.id}", *[x for kv in agent.to_hash().items() for x in kv])
    redis_server.command("HSET", f"tt:alpha:task:{task.id}", *[x for kv in task.to_hash().items() for x in kv])
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        assert channel.get_agent_state(agent.id) == agent
        assert channel.get_task(task.id) == task


# ------------------------------------------------------------- towns and errors


def test_towns_are_isolated_on_one_server(redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as alpha, \
            SyncChannel.connect(redis_url, town="beta") as beta:
        alpha.send(msg(agent, "for alpha"))
        a = Agent.new("same-id", "claude")
        alpha.set_agent_state(a)
        assert beta.inbox_len(agent) == 0
        assert beta.try_receive(agent) is None
        assert beta.get_agent_state(a.id) is None
        assert alpha.inbox_len(agent) == 1
        assert alpha.town == "alpha" and beta.keys.inbox(agent) == f"tt:beta:inbox:{agent}"


def test_undecodable_message_goes_to_dead_letters(redis_server, redis_url):
    agent = AgentId.new()
    redis_server.command("RPUSH", f"tt:alpha:inbox:{agent}", *UNDECODABLE)
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        channel.send(msg(agent, "good"))
        with pytest.raises(DecodeError) as first:
            channel.try_receive(agent)
        assert first.value.raw == UNDECODABLE[0]
        with pytest.raises(DecodeError) as second:
            channel.receive(agent, 1)
        assert second.value.raw == UNDECODABLE[1]
        assert text_of(channel.receive(agent, 1)) == "good"
        assert redis_server.command("LRANGE", f"tt:alpha:dead:{agent}", 0, -1) == UNDECODABLE


def test_batch_with_a_bad_argument_sends_nothing(redis_server, redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        conn = channel._conn
        for bad in (object(), True, "lone \ud800"):
            with pytest.raises((InvalidArgumentError, EncodeError)):
                conn.execute_many([("RPUSH", "l", "a"), ("RPUSH", "l", 1, bad)])
            assert redis_server.command("LLEN", "l") == 0
        # the same connection goes on working: nothing was left half-queued
        assert conn.execute("RPUSH", "l", "b") == 1
        assert channel._conn is conn


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls(url):
    with pytest.raises(InvalidArgumentError):
        SyncChannel.connect(url, town="alpha")


@pytest.mark.parametrize("town", BAD_TOWNS)
def test_bad_town_names(redis_url, town):
    with pytest.raises(InvalidArgumentError):
        SyncChannel.connect(redis_url, town=town)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", None, True])
def test_bad_connect_timeouts(redis_url, timeout):
    with pytest.raises(InvalidArgumentError):
        SyncChannel.connect(redis_url, town="alpha", connect_timeout=timeout)


@pytest.mark.parametrize("timeout", [1e300, 10**30])
def test_a_huge_finite_connect_timeout_connects(redis_url, timeout):
    # (socket.settimeout overflowed on the Python transport: OverflowError.)
    # The transport is the suite's (TINYTOWN_TRANSPORT): the suite runs over
    # both, and also with the extension blocked (test_no_extension).
    with SyncChannel.connect(redis_url, town="alpha", connect_timeout=timeout) as channel:
        assert channel.execute("PING") == b"PONG"


def test_bad_arguments(redis_url):
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        for bad_id in BAD_IDS:
            with pytest.raises(InvalidArgumentError):
                channel.inbox_len(bad_id)
            with pytest.raises(InvalidArgumentError):
                channel.get_agent_state(bad_id)
            with pytest.raises(InvalidArgumentError):
                channel.try_receive(bad_id)
        for bad_timeout in BAD_TIMEOUTS:
            with pytest.raises(InvalidArgumentError):
                channel.receive(AgentId.new(), bad_timeout)
        for not_a_message in NOT_MESSAGES:
            with pytest.raises(InvalidArgumentError):
                channel.send(not_a_message)
            with pytest.raises(InvalidArgumentError):
                channel.broadcast(not_a_message)
            with pytest.raises(InvalidArgumentError):
                channel.send_many([not_a_message])
        with pytest.raises(InvalidArgumentError):
            channel.set_agent_state(Task.new("not an agent"))
        with pytest.raises(InvalidArgumentError):
            channel.set_task(Agent.new("not a task", "x"))
        with pytest.raises(InvalidArgumentError):
            channel.execute("SET", "k", object())
        with pytest.raises(InvalidArgumentError):
            channel.execute()
        assert channel.execute("DBSIZE") == 0  # nothing was written
        with pytest.raises(ReplyError):
            channel.execute("NOSUCHCOMMAND")
        assert channel.execute("PING") == b"PONG"  # an error reply leaves it usable


def test_use_after_close(redis_url):
    channel = SyncChannel.connect(redis_url, town="alpha")
    channel.close()
    channel.close()  # idempotent
    assert channel.is_closed
    with pytest.raises(ChannelClosedError):
        channel.send(msg(AgentId.new(), "late"))
    with pytest.raises(ChannelClosedError):
        channel.receive(AgentId.new(), 1)
    with pytest.raises(ChannelClosedError):
        channel.get_task(AgentId.new())
    with pytest.raises(ChannelClosedError):
        channel.broadcasts()


def test_unreachable_server(tmp_path):
    with pytest.raises(ConnectionError):
        SyncChannel.connect(f"unix://{tmp_path}/none.sock", town="alpha")


# ------------------------------------------------------------------ reconnects


def test_calls_fail_and_next_call_reconnects(fresh_redis):
    agent = AgentId.new()
    with SyncChannel.connect(fresh_redis.url, town="alpha") as channel, \
            SyncChannel.connect(fresh_redis.url, town="alpha") as waiter:
        channel.send(msg(agent, "before"))
        blocked = Worker(waiter.receive, AgentId.new(), 30)
        blocked.start()
        time.sleep(0.1)
        fresh_redis.kill()
        with pytest.raises(ConnectionError):
            blocked.outcome()
        with pytest.raises(ConnectionError):
            channel.inbox_len(agent)
        with pytest.raises(ConnectionError):   # still down: the reconnect fails too
            channel.inbox_len(agent)
        fresh_redis.restart()
        channel.send(msg(agent, "after"))
        assert channel.inbox_len(agent) == 1
        assert text_of(channel.receive(agent, 5)) == "after"


def test_idle_connection_closed_by_the_server_is_reopened(redis_server, redis_url):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        channel.send(msg(agent, "kept"))
        assert redis_server.command("CLIENT", "KILL", "TYPE", "normal") >= 1
        time.sleep(0.1)  # idle: the next call notices the closed connection first
        assert channel.inbox_len(agent) == 1
        assert text_of(channel.try_receive(agent)) == "kept"


def test_tcp_with_acl_user_password_and_db(redis_server_factory):
    server = redis_server_factory("--requirepass", "s3cret", tcp=True)
    server.command("ACL", "SETUSER", "agent", "on", ">pw:with@chars", "~*", "&*", "+@all")
    agent = AgentId.new()
    with SyncChannel.connect(f"redis://agent:pw%3Awith%40chars@127.0.0.1:{server.port}/3",
                             town="alpha") as channel:
        channel.send(msg(agent, "in db 3"))
        assert channel.inbox_len(agent) == 1
        keyspace = server.command("INFO", "keyspace")
        assert b"db3:keys=1" in keyspace and b"db0:" not in keyspace
    with SyncChannel.connect(f"redis://:s3cret@localhost:{server.port}/3", town="alpha") as c2:
        assert c2.inbox_len(agent) == 1
        assert text_of(c2.receive(agent, 5)) == "in db 3"
    with pytest.raises(ConnectionError, match="refused the login"):
        SyncChannel.connect(f"redis://:wrong@127.0.0.1:{server.port}", town="alpha")


# --------------------------------------------------------------------- threads


def test_threads_each_with_their_own_channel(redis_url):
    """Producers and consumers in threads: every message received exactly once."""
    agent = AgentId.new()
    per_producer, producers, consumers = 300, 3, 3
    received: list[str] = []
    lock = threading.Lock()

    def produce(p: int) -> None:
        with SyncChannel.connect(redis_url, town="alpha") as channel:
            for i in range(per_producer):
                channel.send(msg(agent, f"{p}-{i}"))

    def consume() -> None:
        with SyncChannel.connect(redis_url, town="alpha") as channel:
            while (message := channel.receive(agent, 1)) is not None:
                with lock:
                    received.append(text_of(message))

    threads = [Worker(consume) for _ in range(consumers)] + [Worker(produce, p) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.outcome(60)
    assert sorted(received) == sorted(f"{p}-{i}" for p in range(producers) for i in range(per_producer))


def test_a_blocked_receive_does_not_block_other_threads(redis_url):
    """The GIL is released while BLPOP waits: other threads' calls go on meanwhile."""
    agent, other = AgentId.new(), AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as receiver, \
            SyncChannel.connect(redis_url, town="alpha") as busy:
        blocked = Worker(receiver.receive, agent, 30)
        blocked.start()
        time.sleep(0.1)
        for i in range(200):
            busy.send(msg(other, f"m{i}"))
        assert busy.inbox_len(other) == 200
        spin_until = time.monotonic() + 0.2
        spins = 0
        while time.monotonic() < spin_until:  # pure-Python work runs too
            spins += 1
        assert spins > 0 and blocked.is_alive()
        busy.send(msg(agent, "done"))
        assert text_of(blocked.outcome()) == "done"


def test_second_thread_on_one_channel_gets_a_clear_error(redis_url):
    agent = AgentId.new()
    channel = SyncChannel.connect(redis_url, town="alpha")
    blocked = Worker(channel.receive, agent, 30)
    blocked.start()
    time.sleep(0.1)
    with pytest.raises(ConcurrentUseError, match="another thread"):
        channel.inbox_len(agent)
    # close() is allowed from any thread and wakes the blocked receive
    channel.close()
    with pytest.raises(ConnectionError):
        blocked.outcome()
    with pytest.raises(ChannelClosedError):
        channel.inbox_len(agent)


# --------------------------------------------------------------------- signals


class Interrupted(Exception):
    pass


def _interrupt_main_thread_soon(delay: float = 0.2) -> None:
    main = threading.main_thread().ident
    threading.Timer(delay, signal.pthread_kill, (main, signal.SIGUSR1)).start()


@pytest.fixture
def sigusr1_handler():
    """Installs a SIGUSR1 handler (set ``.action``); restores the old one after."""
    class Handler:
        action = staticmethod(lambda: None)

    handler = Handler()

    def on_signal(signum, frame):
        handler.action()
        raise Interrupted()

    old = signal.signal(signal.SIGUSR1, on_signal)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_signal_interrupts_a_blocked_receive(redis_url, sigusr1_handler):
    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        _interrupt_main_thread_soon()
        start = time.monotonic()
        with pytest.raises(Interrupted):
            channel.receive(agent, 30)
        assert time.monotonic() - start >= 0.1
        channel.send(msg(agent, "later"))  # the channel is still usable
        assert text_of(channel.receive(agent, 5)) == "later"


@pytest.mark.parametrize("with_client_command", [True, False], ids=["unblock", "no-client-acl"])
def test_message_popped_by_an_interrupted_receive_is_put_back(redis_server_factory, sigusr1_handler,
                                                              with_client_command):
    if with_client_command:
        server = redis_server_factory()
        url = server.url
    else:
        # a user without the CLIENT command (so no CLIENT UNBLOCK): the fallback path
        server = redis_server_factory(tcp=True)
        server.command("ACL", "SETUSER", "noclient", "on", ">pw", "~*", "&*", "+@all", "-client")
        url = f"redis://noclient:pw@127.0.0.1:{server.port}"
    agent = AgentId.new()
    first, second = msg(agent, "first"), msg(agent, "second")
    inbox = f"tt:alpha:inbox:{agent}"
    # The handler runs while BLPOP waits: it pushes a message, which the
    # server hands to the BLPOP, and raises before the reply is read.
    sigusr1_handler.action = lambda: server.command("RPUSH", inbox, first.to_json())
    with SyncChannel.connect(url, town="alpha") as channel:
        channel.send(second)
        assert channel.try_receive(agent) == second
        _interrupt_main_thread_soon()
        with pytest.raises(Interrupted):
            channel.receive(agent, 30)
        # put back at the front: not lost, not duplicated
        assert server.command("LRANGE", inbox, 0, -1) == [first.to_json()]
        assert channel.receive(agent, 5) == first


# ------------------------------------------------------------------------ leaks


def _exercise(channel: SyncChannel, sub, agent: AgentId, rounds: int) -> None:
    conn = channel._conn
    message = Message.new(AgentId.supervisor(), agent, MessageType.Ping())
    for _ in range(rounds):
        channel.send(message)
        assert channel.receive(agent, 1) == message            # send_command + read_reply
        channel.send_many([message, message])                  # execute_many
        assert channel.try_receive(agent) == message
        assert channel.try_receive(agent) == message
        assert channel.inbox_len(agent) == 0
        with pytest.raises(ReplyError):
            conn.execute("LPUSH")                              # error reply
        assert conn.execute("MGET", "a", "b", "c") == [None, None, None]
        with pytest.raises(ReplyError):
            conn.execute_many([("PING",), ("LPUSH",), ("ECHO", 12345)])
        assert channel.broadcast(message) == 1
        assert sub.get(1) == message                           # pub/sub message
        assert sub.get(0) is None                              # TimeoutError path


def test_no_growth_over_many_operations(redis_url):
    """Every reply tree, argument buffer and exception is released (tracemalloc
    sees Python objects, RSS hiredis's mallocs)."""
    from memory import memory_growth

    agent = AgentId.new()
    with SyncChannel.connect(redis_url, town="leaks") as channel, channel.broadcasts() as sub:
        _exercise(channel, sub, agent, 1_000)  # warm up caches and freelists
        with memory_growth() as grown:
            _exercise(channel, sub, agent, 5_000)
    # 5,000 rounds are 75,000 commands: a leak of one object per command would be MBs.
    assert grown.python < 200_000, grown.python
    assert grown.rss < 4_000_000, grown.rss
