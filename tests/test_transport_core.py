"""Both transports against a real redis-server, case for case.

Every test runs with the Cython transport (``tinytown._transport.ext``) and the
pure-Python one (``tinytown._transport.pyasync``): the ``Connection`` fixture is
parametrized, so the two are checked against the same expectations.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading

import pytest
from memory import memory_growth

from tinytown._transport import ext, pyasync
from tinytown.errors import ConnectionError, EncodeError, InvalidArgumentError, ReplyError

CLASSES = {"hiredis": ext.Connection, "python": pyasync.PyConnection}


@pytest.fixture(params=list(CLASSES))
def Connection(request):
    """The Connection class of one transport (each test runs with both)."""
    return CLASSES[request.param]


async def connect(Connection, server):
    conn = Connection(asyncio.get_running_loop())
    await conn.connect_unix(server.unix_path)
    return conn


async def test_reply_types(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    try:
        assert await conn.execute("PING") == b"PONG"
        assert await conn.execute(b"SET", "k", "v\x00\xff".encode("latin-1")) == b"OK"
        assert await conn.execute("GET", "k") == b"v\x00\xff"
        assert await conn.execute("GET", "missing") is None
        assert await conn.execute("INCRBY", "n", 41) == 41
        assert await conn.execute("INCRBYFLOAT", "f", 0.5) == b"0.5"
        assert await conn.execute("RPUSH", "l", "a", "é", b"c") == 3
        assert await conn.execute("LRANGE", "l", 0, -1) == [b"a", "é".encode(), b"c"]
        assert await conn.execute("LRANGE", "nothing", 0, -1) == []
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await conn.execute("LPUSH", "k", "x")
        with pytest.raises(ReplyError, match="unknown command"):
            await conn.execute("NO-SUCH-COMMAND")
        # the connection is still in step after error replies
        assert await conn.execute("ECHO", "still here") == b"still here"
    finally:
        conn.close()


async def test_many_arguments_use_heap_argv(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    values = [str(i) for i in range(500)]
    assert await conn.execute("RPUSH", "big", *values) == 500
    assert await conn.execute("LRANGE", "big", 0, -1) == [v.encode() for v in values]
    conn.close()


async def test_large_values_cross_partial_writes_and_reads(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    blob = bytes(range(256)) * 40_000  # 10 MB: several partial writes and reads
    assert await conn.execute("SET", "blob", blob) == b"OK"
    assert await conn.execute("GET", "blob") == blob
    conn.close()


async def test_bad_arguments_raise_typed_errors_and_send_nothing(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    with pytest.raises(InvalidArgumentError):
        conn.execute()
    with pytest.raises(InvalidArgumentError):
        conn.execute("SET", "k", object())
    with pytest.raises(InvalidArgumentError):
        conn.execute("SET", "k", True)
    with pytest.raises(EncodeError):
        conn.execute("SET", "k", "lone \ud800 surrogate")
    assert conn.pending_replies == 0
    assert await conn.execute("EXISTS", "k") == 0
    conn.close()


async def test_replies_resolve_in_order_under_concurrency(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    futures = [conn.execute("INCR", "counter") for _ in range(2000)]
    assert conn.pending_replies == 2000
    assert await asyncio.gather(*futures) == list(range(1, 2001))
    assert conn.pending_replies == 0
    conn.close()


async def test_cancelled_caller_does_not_desynchronise(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    await conn.execute("SET", "a", "A")
    await conn.execute("SET", "b", "B")
    first = conn.execute("GET", "a")
    first.cancel()
    second = conn.execute("GET", "b")
    assert await second == b"B"

    async def slow_get():
        return await conn.execute("GET", "a")

    tasks = [asyncio.ensure_future(slow_get()) for _ in range(50)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r == b"A" for r in done[1::2])
    assert await conn.execute("GET", "b") == b"B"
    conn.close()


async def test_execute_many_returns_all_replies_or_first_error(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    assert await conn.execute_many([("SET", "s", "1"), ("INCR", "s"), ("GET", "s")]) == [b"OK", 2, b"2"]
    assert await conn.execute_many([], False) is None
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await conn.execute_many([("RPUSH", "l", "x"), ("LPUSH", "s", "y"), ("RPUSH", "l", "z")], False)
    # the commands after the failing one still ran, in order
    assert await conn.execute("LRANGE", "l", 0, -1) == [b"x", b"z"]
    conn.close()


async def test_execute_many_with_a_bad_argument_sends_nothing(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    for bad in (object(), True, "lone \ud800"):
        with pytest.raises((InvalidArgumentError, EncodeError)):
            conn.execute_many([("RPUSH", "l", "a"), ("RPUSH", "l", 1, bad), ("RPUSH", "l", "c")])
        assert conn.pending_replies == 0
    # nothing was queued either: the next command is the first to reach Redis
    assert await conn.execute("LLEN", "l") == 0
    assert redis_server.command("LLEN", "l") == 0
    conn.close()


async def test_connection_refused_is_a_connection_error(Connection, tmp_path):
    conn = Connection(asyncio.get_running_loop())
    with pytest.raises(ConnectionError, match="No such file"):
        conn.connect_unix(str(tmp_path / "nothing.sock"))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there now
    conn = Connection(asyncio.get_running_loop())
    with pytest.raises(ConnectionError, match="cannot connect"):
        await conn.connect_tcp("127.0.0.1", port)
    assert conn.is_closed


async def test_tcp_connection(Connection, tcp_redis):
    conn = Connection(asyncio.get_running_loop())
    await conn.connect_tcp("127.0.0.1", tcp_redis.port)
    assert await conn.execute("PING") == b"PONG"
    conn.close()


async def test_close_fails_pending_calls(Connection, fresh_redis):
    conn = await connect(Connection, fresh_redis)
    blocked = conn.execute("BLPOP", "never", 10)
    await asyncio.sleep(0.05)
    conn.close()
    with pytest.raises(ConnectionError):
        await blocked
    assert conn.is_closed
    with pytest.raises(ConnectionError, match="closed"):
        conn.execute("PING")
    conn.close()  # idempotent


async def test_server_death_fails_pending_calls_at_once(Connection, fresh_redis):
    conn = await connect(Connection, fresh_redis)
    blocked = conn.execute("BLPOP", "never", 30)
    await asyncio.sleep(0.05)
    fresh_redis.kill()
    with pytest.raises(ConnectionError, match="lost"):
        await asyncio.wait_for(blocked, 5)  # far less than BLPOP's 30 s
    assert conn.is_closed


async def test_killed_by_client_kill(Connection, fresh_redis):
    conn = await connect(Connection, fresh_redis)
    pending = conn.execute("BLPOP", "never", 30)
    await asyncio.sleep(0.05)
    fresh_redis.command("CLIENT", "KILL", "TYPE", "normal")
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(pending, 5)


class _CountingProxy:
    """Forwards a Unix socket to redis-server, counting the chunks the client writes."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.path, self.chunks = target, path, 0
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.target)

        def back() -> None:
            while data := upstream.recv(65536):
                client.sendall(data)

        threading.Thread(target=back, daemon=True).start()
        while data := client.recv(1 << 20):
            self.chunks += 1
            upstream.sendall(data)


async def test_commands_of_one_iteration_leave_in_one_write(Connection, redis_server, redis_url, tmp_path):
    proxy = _CountingProxy(redis_server.unix_path, str(tmp_path / "proxy.sock"))
    conn = Connection(asyncio.get_running_loop())
    await conn.connect_unix(proxy.path)
    assert await conn.execute("PING") == b"PONG"
    assert proxy.chunks == 1
    # 200 commands issued in the same loop iteration: the first goes out at
    # once (idle connection), the other 199 together at the end of the iteration.
    futures = [conn.execute("INCR", "n") for _ in range(200)]
    assert (await asyncio.gather(*futures))[-1] == 200
    assert proxy.chunks <= 3, proxy.chunks
    conn.close()


async def test_error_elements_inside_arrays_are_instances(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    await conn.execute("SET", "s", "text")
    replies = await conn.execute_many([("MULTI",), ("INCR", "n"), ("LPUSH", "s", "x"), ("EXEC",)])
    assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
    n, error = replies[3]
    assert n == 1 and type(error) is ReplyError and str(error).startswith("WRONGTYPE")
    with pytest.raises(ReplyError, match="WRONGTYPE"):  # the batch fails with the first error
        await conn.execute_many([("GET", "s"), ("LPUSH", "s", "x")])
    conn.close()


async def test_subscribe_delivers_pubsub_replies_then_the_disconnect(Connection, fresh_redis):
    sub = await connect(Connection, fresh_redis)
    pub = await connect(Connection, fresh_redis)
    got: list = []
    arrived = asyncio.Event()

    def handler(item):
        got.append(item)
        arrived.set()

    with pytest.raises(InvalidArgumentError):
        sub.subscribe(handler)
    sub.subscribe(handler, "news", b"more")
    while len(got) < 2:
        arrived.clear()
        await arrived.wait()
    assert got == [[b"subscribe", b"news", 1], [b"subscribe", b"more", 2]]
    assert await pub.execute("PUBLISH", "news", b"\x00hello") == 1
    while len(got) < 3:
        arrived.clear()
        await arrived.wait()
    assert got[2] == [b"message", b"news", b"\x00hello"]
    fresh_redis.kill()
    while len(got) < 4:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
    assert isinstance(got[3], ConnectionError) and "lost" in str(got[3])
    assert sub.is_closed
    pub.close()


async def test_close_does_not_call_the_subscriber(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    got: list = []
    conn.subscribe(got.append, "news")
    await asyncio.sleep(0.05)
    assert got == [[b"subscribe", b"news", 1]]
    conn.close()
    await asyncio.sleep(0.05)
    assert len(got) == 1 and conn.is_closed


async def test_close_abandons_a_connect_in_progress(Connection, redis_server):
    conn = Connection(asyncio.get_running_loop())
    assert conn.is_closed  # nothing opened yet
    waiter = conn.connect_unix(redis_server.unix_path)
    assert not conn.is_closed
    conn.close()
    with pytest.raises(ConnectionError, match="closed"):
        await waiter
    assert conn.is_closed
    with pytest.raises(InvalidArgumentError, match="only once"):
        conn.connect_unix(redis_server.unix_path)
    with pytest.raises(ConnectionError, match="closed"):
        conn.execute("PING")


async def test_not_connected_yet(Connection, redis_server):
    conn = Connection(asyncio.get_running_loop())
    with pytest.raises(ConnectionError, match="not open"):
        conn.execute("PING")
    waiter = conn.connect_unix(redis_server.unix_path)
    assert await waiter is conn
    assert await conn.execute("PING") == b"PONG"


async def test_reply_future_works_with_asyncio_combinators(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    fut = conn.execute("PING")
    assert asyncio.isfuture(fut)
    assert await asyncio.shield(fut) == b"PONG"
    assert await asyncio.wait_for(conn.execute("ECHO", "x"), 5) == b"x"
    with pytest.raises(asyncio.TimeoutError):
        # (1 s: the commands below wait behind it, and this runs on 2 transports x 2 loops)
        await asyncio.wait_for(conn.execute("BLPOP", "nothing", 1), 0.05)
    # the BLPOP above was cancelled but is still pending on the server
    assert conn.pending_replies == 1
    done, pending = await asyncio.wait([conn.execute("PING"), conn.execute("ECHO", "y")])
    assert sorted(f.result() for f in done) == [b"PONG", b"y"] and not pending
    failing = conn.execute("LPUSH")
    with pytest.raises(ReplyError):
        await failing
    assert isinstance(failing.exception(), ReplyError)
    conn.close()


async def test_callbacks_run_in_their_context(Connection, redis_server, redis_url):
    import contextvars

    var = contextvars.ContextVar("var", default="outer")
    seen = []
    conn = await connect(Connection, redis_server)
    fut = conn.execute("PING")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    fut.add_done_callback(lambda f: seen.append(var.get()), context=ctx)
    fut.add_done_callback(lambda f: seen.append(var.get()))
    await fut
    await asyncio.sleep(0)
    assert seen == ["inner", "outer"]
    conn.close()


async def test_orphan_gets_the_reply_of_a_cancelled_command(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    orphaned = []
    fut = conn.execute("BLPOP", "q", 5)
    fut.orphan = orphaned.append
    waiter = asyncio.ensure_future(fut)
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert fut.cancelled()
    redis_server.command("RPUSH", "q", "kept")
    assert await conn.execute("PING") == b"PONG"  # replies in order: BLPOP's came first
    assert orphaned == [[b"q", b"kept"]]
    conn.close()


# -- write path and backpressure (issue 14) -----------------------------------

OBUF_BOUND = 256 * 1024     # ext/connection.pyx: hiredis's buffer is refilled below this
CHUNK = 256 * 1024          # ... by pieces of at most this


async def test_drain_after_a_stall_keeps_order_and_bounds_hiredis_buffer(Connection, fresh_redis):
    """Commands queued while the server is stopped all arrive, in order, once
    it resumes; the extension keeps hiredis's output buffer (moved in full
    after each partial write) under its bound, queueing the rest itself."""
    conn = await connect(Connection, fresh_redis)
    count, pad = 20_000, "x" * 1000
    os.kill(fresh_redis.pid, signal.SIGSTOP)
    try:
        futures = [conn.execute("RPUSH", "drain", f"{i}:{pad}") for i in range(count)]
        await asyncio.sleep(0.2)
        # 20 MB cannot all be in the socket: the rest waits, counted.
        assert conn.write_buffer_size > 10 * 2**20
        assert conn.pending_replies == count
        biggest = getattr(conn, "output_buffer_size", 0)
    finally:
        os.kill(fresh_redis.pid, signal.SIGCONT)
    while not all(f.done() for f in futures):
        biggest = max(biggest, getattr(conn, "output_buffer_size", 0))
        await asyncio.sleep(0.001)
    assert biggest <= OBUF_BOUND + CHUNK
    assert [f.result() for f in futures] == list(range(1, count + 1))
    assert conn.write_buffer_size == 0 and conn.pending_replies == 0
    values = await conn.execute("LRANGE", "drain", 0, -1)
    assert [int(v.split(b":")[0]) for v in values] == list(range(count))
    conn.close()


async def test_large_commands_interleave_in_order(Connection, redis_server, redis_url):
    """Commands larger than hiredis's buffer bound (handed over in pieces)
    between small ones: every reply in order, every value intact."""
    conn = await connect(Connection, redis_server)
    big = [bytes([65 + i]) * (3 * 2**20 + i) for i in range(4)]
    futures = []
    for i, value in enumerate(big):
        futures.append(conn.execute("SET", f"big{i}", value))
        futures.append(conn.execute("INCR", "n"))
    futures.append(conn.execute_many([("GET", f"big{i}") for i in range(4)]))
    results = await asyncio.gather(*futures)
    assert results[:-1] == [b"OK", 1, b"OK", 2, b"OK", 3, b"OK", 4]
    assert results[-1] == big
    assert conn.write_buffer_size == 0
    conn.close()


async def test_close_fails_queued_commands_and_leaks_nothing(Connection, fresh_redis):
    """close() with thousands of commands queued behind a stopped server fails
    every one with ConnectionError (single commands and batches) and keeps
    no memory or reference."""
    conn = await connect(Connection, fresh_redis)
    pad = b"y" * 1024

    async def round_() -> None:
        c = await connect(Connection, fresh_redis)
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            futures = [c.execute("RPUSH", "q", pad) for _ in range(5000)]
            futures.append(c.execute_many([("RPUSH", "q", pad)] * 500))
            futures.append(c.execute("SET", "big", pad * 4096))
            await asyncio.sleep(0.05)
            assert c.write_buffer_size > 2**20
            c.close()
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        assert c.write_buffer_size == 0 and c.pending_replies == 0

    for _ in range(3):
        await round_()
    with memory_growth() as grown:
        for _ in range(10):
            await round_()
    # A leak would keep 5,500 futures (> 0.5 MB) and 10 MB of commands a round;
    # about 0.8 MB is the last round's, whatever the number of rounds.
    assert grown.python < 2 * 2**20
    assert grown.rss < 32 * 2**20
    conn.close()


async def test_wait_writable_holds_writers_above_the_high_water_mark(Connection, fresh_redis, loop_kind):
    """Past the high-water mark wait_writable() returns a future that
    resolves once the queue is down to the low-water mark; a flood of writers
    that wait on it keeps the queue under high + one command and loses nothing."""
    conn = await connect(Connection, fresh_redis)
    conn.set_write_buffer_limits(256 * 1024, 64 * 1024)
    assert conn.get_write_buffer_limits() == (256 * 1024, 64 * 1024)
    with pytest.raises(InvalidArgumentError):
        conn.set_write_buffer_limits(10, 20)
    assert conn.wait_writable() is None
    command_bytes = len(b"*3\r\n$5\r\nRPUSH\r\n$5\r\nflood\r\n$1030\r\n\r\n") + 1030
    peak = 0

    async def writer(i: int) -> None:
        nonlocal peak
        # First come, first served, as many as fit under the high mark.
        waiter = conn.wait_writable(command_bytes)
        if waiter is not None:
            await waiter
        peak = max(peak, conn.write_buffer_size + command_bytes)
        await conn.execute("RPUSH", "flood", f"{i:06d}".encode() + b"z" * 1024)

    os.kill(fresh_redis.pid, signal.SIGSTOP)
    try:
        tasks = [asyncio.ensure_future(writer(i)) for i in range(3000)]
        await asyncio.sleep(0.2)
        # The socket took what it could; the rest of the writers wait.
        assert conn.write_buffer_size <= 256 * 1024 + command_bytes
        assert sum(t.done() for t in tasks) == 0
        waiting = conn.wait_writable()
        assert waiting is not None and not waiting.done()
    finally:
        os.kill(fresh_redis.pid, signal.SIGCONT)
    await asyncio.gather(*tasks)
    await waiting
    # uvloop's transport does not count what it has handed to libuv's write
    # queue (resume_writing comes early): the Python transport there can
    # reach about twice the high mark.
    slack = 2 if Connection is pyasync.PyConnection and loop_kind == "uvloop" else 1
    assert peak <= slack * 256 * 1024 + command_bytes
    values = await conn.execute("LRANGE", "flood", 0, -1)
    assert len(values) == 3000 and len(set(values)) == 3000
    conn.close()


async def test_close_fails_writers_waiting_for_the_queue(Connection, fresh_redis):
    conn = await connect(Connection, fresh_redis)
    conn.set_write_buffer_limits(64 * 1024, 0)
    os.kill(fresh_redis.pid, signal.SIGSTOP)
    try:
        futures = [conn.execute("RPUSH", "w", b"v" * 4096) for _ in range(2000)]
        await asyncio.sleep(0.05)
        waiter = conn.wait_writable()
        assert waiter is not None
        conn.close()
    finally:
        os.kill(fresh_redis.pid, signal.SIGCONT)
    with pytest.raises(ConnectionError):
        await waiter
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


# Sizes around the extension's own command formatter (tt_format.h): commands
# up to about 4 KiB are formatted by it, larger ones by hiredis; 0-byte and
# 9/10/99/100-byte arguments cross the digit counts of the RESP headers.
_FORMAT_SIZES = [0, 1, 9, 10, 99, 100, 999, 1000, 3990, 4000, 4030, 4040, 4050, 4060, 4096, 5000, 70000]


async def test_commands_round_trip_byte_exact_at_every_size(Connection, redis_server):
    conn = await connect(Connection, redis_server)
    try:
        for size in _FORMAT_SIZES:
            value = bytes(range(256)) * (size // 256) + b"\r\n$*\x00"[: size % 256] + b"x" * max(0, size % 256 - 5)
            assert len(value) == size
            assert await conn.execute(b"SET", b"fmt:%d" % size, value) == b"OK"
            assert await conn.execute("GET", f"fmt:{size}") == value
        many = [b"%d" % i * i for i in range(12)]      # 14 arguments: a two-digit argc
        await conn.execute(b"DEL", b"fmt:list")
        assert await conn.execute(b"RPUSH", b"fmt:list", *many) == 12
        assert await conn.execute(b"LRANGE", b"fmt:list", b"0", b"-1") == many
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["hiredis", "python"])
def test_sync_commands_round_trip_byte_exact_at_every_size(redis_server, kind):
    from tinytown._transport import pysync

    conn = (ext.SyncConnection if kind == "hiredis" else pysync.PySyncConnection)()
    conn.connect_unix(redis_server.unix_path)
    try:
        for size in _FORMAT_SIZES:
            value = b"v\r\n" * (size // 3) + b"w" * (size % 3)
            assert conn.execute(b"SET", b"sfmt:%d" % size, value) == b"OK"
            assert conn.execute("GET", f"sfmt:{size}") == value
        many = [b"%d" % i * i for i in range(12)]
        conn.execute(b"DEL", b"sfmt:list")
        assert conn.execute(b"RPUSH", b"sfmt:list", *many) == 12
        assert conn.execute(b"LRANGE", b"sfmt:list", b"0", b"-1") == many
    finally:
        conn.close()


def _loop_dict_materialized(loop) -> bool:
    import gc

    # CPython 3.11+ keeps an instance's attributes inline until someone takes
    # its __dict__; from then on the dict is an object the instance refers to.
    return any(type(r) is dict and "_ready" in r for r in gc.get_referents(loop))


async def test_connection_leaves_the_loops_attributes_inline(Connection, redis_server):
    # Taking loop.__dict__ (the extension once did, to read _thread_id
    # cheaply) makes every attribute access of asyncio's own loop code go
    # through a dict: ~4k instructions more per loop iteration, per send.
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.BaseEventLoop) or _loop_dict_materialized(loop):
        pytest.skip("this loop keeps no inline attributes")
    conn = await connect(Connection, redis_server)
    try:
        assert await conn.execute("PING") == b"PONG"
    finally:
        conn.close()
    assert not _loop_dict_materialized(loop)
