"""The process survives misuse (issue 10, items 5 and 7-12): no call crashes or
hangs it, and bad use gets a typed tinytown error before anything is written.

Cases that crashed (SIGSEGV) or hung the process run in a child interpreter
(``run_child``): a crash shows there as a negative exit status instead of
killing the test session. Every test runs on both transports (the hiredis
extension and the pure-Python one); the reply-path cases of item 6 (hostile
peers) are in tests/test_reply_fuzz.py.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from conftest import new_event_loop
from tinytown._transport import ext, pyasync
from tinytown.errors import ConnectionError, InvalidArgumentError, ReplyError, TinytownError

CLASSES = {"hiredis": ext.Connection, "python": pyasync.PyConnection}
TRANSPORTS = list(CLASSES)


@pytest.fixture(params=TRANSPORTS)
def Connection(request: pytest.FixtureRequest) -> Any:
    """The Connection class of one transport (each test runs with both)."""
    return CLASSES[request.param]


async def connect(Connection: Any, server: Any) -> Any:
    conn = Connection(asyncio.get_running_loop())
    await conn.connect_unix(server.unix_path)
    return conn


def run_child(code: str, *args: str, transport: str = "hiredis", timeout: float = 60,
              stderr: bool = False) -> str:
    """Run ``code`` in a new interpreter (the same tinytown build: the
    environment is inherited) and return its output (with ``stderr``: its
    standard output, then its standard error); fail the test if it crashed,
    failed or hung."""
    env = dict(os.environ, TINYTOWN_TRANSPORT=transport, PYTHONFAULTHANDLER="1")
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung ({timeout:g} s); output: {exc.stdout!r} {exc.stderr!r}")
    if proc.returncode != 0:
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        pytest.fail(f"the child failed ({how})\nstdout:\n{proc.stdout[-3000:]}\n"
                    f"stderr:\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr if stderr else proc.stdout


# ------------------------------------------- 5. commands that change the connection's state

REFUSED = [
    ("SUBSCRIBE", "x"), ("subscribe", "x", "y"), (b"PSUBSCRIBE", b"x*"), ("SSUBSCRIBE", "x"),
    ("UNSUBSCRIBE",), ("punsubscribe", "x*"), ("SUNSUBSCRIBE", "x"), (bytearray(b"Subscribe"), "x"),
    ("MONITOR",), ("monitor",), ("RESET",), ("QUIT",),
    ("HELLO", "3"), ("HELLO", 3), ("hello", "3", "SETNAME", "x"), ("HELLO", "1"),
    ("CLIENT", "REPLY", "OFF"), ("client", "reply", "skip"), (b"CLIENT", b"Reply", b"Off"),
]
ALLOWED = [("HELLO",), ("HELLO", "2"), ("HELLO", 2), ("CLIENT", "REPLY", "ON"),
           ("ECHO", "SUBSCRIBE"), ("PUBSUB", "CHANNELS")]


async def test_state_changing_commands_are_refused_before_anything_is_sent(
        Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    for command in REFUSED:
        with pytest.raises(InvalidArgumentError, match="protocol state"):
            conn.execute(*command)
        with pytest.raises(InvalidArgumentError, match="protocol state"):
            conn.execute_many([("RPUSH", "l", "sent?"), command])
        assert conn.pending_replies == 0
    for command in ALLOWED:
        assert not isinstance(await conn.execute(*command), ReplyError), command
    # nothing reached Redis, and the connection is still in step
    assert await conn.execute("LLEN", "l") == 0
    assert await conn.execute("ECHO", "after") == b"after"
    conn.close()


async def test_a_subscribed_connection_takes_no_other_command(Connection, redis_server, redis_url):
    sub = await connect(Connection, redis_server)
    got: list[Any] = []
    sub.subscribe(got.append, "news")
    for call in (lambda: sub.execute("PING"), lambda: sub.execute_many([("PING",)]),
                 lambda: sub.subscribe(got.append, "more")):
        with pytest.raises(InvalidArgumentError, match="subscribed"):
            call()
    while not got:
        await asyncio.sleep(0.01)
    assert got == [[b"subscribe", b"news", 1]]
    sub.close()


def test_sync_connection_refuses_them_too_but_send_command_does_not(redis_server, redis_url):
    conn = ext.SyncConnection()
    conn.connect_unix(redis_server.unix_path)
    for command in REFUSED:
        with pytest.raises(InvalidArgumentError, match="protocol state"):
            conn.execute(*command)
        with pytest.raises(InvalidArgumentError, match="protocol state"):
            conn.execute_many([("RPUSH", "l", "sent?"), command])
        assert conn.pending_replies == 0
    assert conn.execute("LLEN", "l") == 0
    assert conn.execute("ECHO", "after") == b"after"
    # send_command is how SyncChannel's subscriptions and `tinytown monitor` work
    conn.send_command("SUBSCRIBE", "news")
    assert conn.read_reply(5) == [b"subscribe", b"news", 1]
    conn.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_channel_execute_of_subscribe_or_monitor_then_close_does_not_crash(transport, redis_url):
    out = run_child("""
        import asyncio, sys
        from tinytown import Channel, InvalidArgumentError

        COMMANDS = [("SUBSCRIBE", "x"), ("PSUBSCRIBE", "x*"), ("SSUBSCRIBE", "x"), ("MONITOR",),
                    ("RESET",), ("HELLO", "3"), ("CLIENT", "REPLY", "OFF"), ("QUIT",)]

        async def main(url):
            for command in COMMANDS:
                channel = await Channel.connect(url, "misuse")
                try:
                    await asyncio.wait_for(channel.execute(*command), 5)
                    print("sent", command)
                except InvalidArgumentError:
                    print("refused", command)
                assert await asyncio.wait_for(channel.execute("PING"), 5) == b"PONG"
                await channel.close()
            print("done")

        asyncio.run(main(sys.argv[1]))
    """, redis_url, transport=transport)
    assert "sent" not in out and out.count("refused") == 8 and "done" in out, out


# ------------------------------------------------------------ 7. commands of 2 GiB or more


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_command_of_2_gib_or_more_is_refused_and_the_connection_stays_usable(
        transport, redis_server, redis_url):
    # 130 arguments of 16 MiB (2.03 GiB on the wire) that are one bytes object:
    # 16 MiB of memory for the test itself. hiredis 0.14 sized the command with
    # an int: it crashed, or failed with a wrong error and leaked.
    out = run_child("""
        import asyncio, sys
        from tinytown._transport.ext import SyncConnection
        from tinytown._transport.choose import connection_class
        from tinytown.errors import InvalidArgumentError

        path = sys.argv[1]
        blob = b"m" * (16 * 2**20)
        big = ("RPUSH", "big") + (blob,) * 130
        many = ("RPUSH", "big") + (b"s" * 60000,) * 36000  # 2.01 GiB in small arguments
        small = ("RPUSH", "big", blob)

        async def main():
            conn = connection_class()(asyncio.get_running_loop())
            await conn.connect_unix(path)
            for call in (lambda: conn.execute(*big), lambda: conn.execute_many([small, big]),
                         lambda: conn.execute(*many)):
                try:
                    call()
                    print("accepted")
                except InvalidArgumentError as exc:
                    assert "2 GiB" in str(exc), exc
                    print("refused")
            assert conn.pending_replies == 0
            assert await conn.execute("LLEN", "big") == 0
            assert await conn.execute("RPUSH", "big", blob) == 1     # still usable
            conn.close()

        asyncio.run(main())
        sync = SyncConnection()
        sync.connect_unix(path)
        for call in (lambda: sync.execute(*big), lambda: sync.execute_many([small, big]),
                     lambda: sync.execute(*many)):
            try:
                call()
                print("accepted")
            except InvalidArgumentError:
                print("refused")
        assert sync.execute("LLEN", "big") == 1
        assert sync.execute("DEL", "big") == 1
        print("done")
    """, redis_server.unix_path, transport=transport, timeout=120)
    assert out.split() == ["refused"] * 6 + ["done"], out


# ---------------------------------------- 8. SystemExit out of a task woken by a reply


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("exit_with", ["SystemExit(3)", "KeyboardInterrupt()"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exit_from_a_task_woken_by_a_reply_does_not_hang_asyncio_run(
        transport, exit_with, loop_name, redis_server, redis_url):
    out = run_child(f"""
        import asyncio, sys
        from tinytown._transport.choose import connection_class

        if "{loop_name}" == "uvloop":
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

        async def main(path):
            conn = connection_class()(asyncio.get_running_loop())
            await conn.connect_unix(path)

            async def leaver():
                await conn.execute("PING")
                raise {exit_with}

            async def other(i):
                return await conn.execute("ECHO", str(i))

            # The first command is written at once, the others together at
            # the end of the iteration: their replies come in one read, and
            # the leaver's is not the last of them.
            tasks = [asyncio.ensure_future(other(i)) for i in range(3)]
            tasks += [asyncio.ensure_future(leaver())]
            tasks += [asyncio.ensure_future(other(i)) for i in range(3, 8)]
            await asyncio.gather(*tasks)

        try:
            asyncio.run(main(sys.argv[1]))
        except (SystemExit, KeyboardInterrupt) as exc:
            print("left with", type(exc).__name__)
    """, redis_server.unix_path, transport=transport, timeout=30, stderr=True)
    # (asyncio.run either hung or, on asyncio's loop, gave up on the tasks
    # whose replies had come: "Task was destroyed but it is pending!")
    assert "left with" in out and "destroyed but it is pending" not in out, out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exit_from_a_pub_sub_handler_stops_the_loop(transport, redis_server, redis_url):
    """A push handler is called from inside hiredis, where nothing can be
    raised: the extension raises SystemExit once the read is over."""
    out = run_child("""
        import asyncio, sys
        from tinytown._transport.choose import connection_class

        async def main(path):
            loop = asyncio.get_running_loop()
            sub = connection_class()(loop)
            await sub.connect_unix(path)
            pub = connection_class()(loop)
            await pub.connect_unix(path)

            def handler(item):
                if isinstance(item, list) and item[0] == b"message":
                    raise SystemExit(4)

            sub.subscribe(handler, "news")
            while await pub.execute("PUBLISH", "news", "x") == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(5)
            print("still running")

        try:
            asyncio.run(main(sys.argv[1]))
        except SystemExit as exc:
            print("left with", exc.code)
    """, redis_server.unix_path, transport=transport, timeout=30)
    assert out.split() == ["left", "with", "4"], out


# --------------------------------------- 9. Python code running inside argument conversion


class Color(enum.IntEnum):
    RED = 1


class Ratio(float):
    def __repr__(self) -> str:
        return "Ratio!"


async def test_int_and_float_subclasses_are_sent_as_their_number(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    await conn.execute("SET", "c", Color.RED)
    await conn.execute("SET", "r", Ratio(1.5))
    await conn.execute_many([("SET", "c2", Color.RED), ("RPUSH", "l", Color.RED, Ratio(0.25))])
    assert await conn.execute("MGET", "c", "r", "c2") == [b"1", b"1.5", b"1"]
    assert await conn.execute("LRANGE", "l", 0, -1) == [b"1", b"0.25"]
    assert await conn.execute("INCRBY", "c", Color.RED) == 2
    conn.close()
    sync = ext.SyncConnection()
    sync.connect_unix(redis_server.unix_path)
    sync.execute("SET", "s", Color.RED)
    assert sync.execute("GET", "s") == b"1"
    sync.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_argument_that_closes_the_connection_while_converted_does_not_crash(
        transport, redis_server, redis_url):
    out = run_child("""
        import asyncio, sys
        from tinytown._transport.ext import SyncConnection
        from tinytown._transport.choose import connection_class
        from tinytown.errors import ConnectionError, TinytownError

        current = None

        class ClosingInt(int):
            def __repr__(self):
                current.close(); return "1"
            __str__ = __repr__
            def __index__(self):
                current.close(); return 1

        class ClosingFloat(float):
            def __repr__(self):
                current.close(); return "1.5"

        class ClosingBytes(bytes):
            def __bytes__(self):
                current.close(); return b"x"

        def closing_commands():
            yield ("SET", "a", "1")
            current.close()
            yield ("SET", "b", "2")

        BAD = [ClosingInt(1), ClosingFloat(1.5), ClosingBytes(b"x")]

        async def main(path):
            global current
            loop = asyncio.get_running_loop()
            for bad in BAD + ["many"]:
                conn = current = connection_class()(loop)
                await conn.connect_unix(path)
                try:
                    if bad == "many":
                        await asyncio.wait_for(conn.execute_many(closing_commands()), 5)
                    else:
                        await asyncio.wait_for(conn.execute("SET", "k", bad), 5)
                    print("sent", type(bad).__name__)
                except ConnectionError:
                    print("closed", type(bad).__name__)
                try:
                    await asyncio.wait_for(conn.execute("PING"), 5)   # uses the context again
                    print("used", type(bad).__name__)
                except ConnectionError:
                    pass
                conn.close()

        asyncio.run(main(sys.argv[1]))
        for bad in BAD:
            conn = current = SyncConnection()
            conn.connect_unix(sys.argv[1])
            try:
                conn.execute("SET", "k", bad)
                print("sync sent")
            except TinytownError:
                print("sync closed")
            try:
                conn.execute("PING")
            except TinytownError:
                pass
            conn.close()
        print("done")
    """, redis_server.unix_path, transport=transport)
    assert "done" in out, out
    # int/float subclasses are converted without running their code; the
    # bytes subclass and the generator close the connection before the send.
    assert "sent ClosingInt" in out and "sent ClosingFloat" in out, out
    assert "closed ClosingBytes" in out and "closed str" in out, out


# ------------------------------------------------- 10. exceptions of push and orphan handlers


async def test_handler_exceptions_go_to_the_loop_exception_handler(Connection, redis_server, redis_url):
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        sub = await connect(Connection, redis_server)
        conn = await connect(Connection, redis_server)

        def push_handler(item: Any) -> None:
            if isinstance(item, list) and item[0] == b"message":
                raise ValueError("push handler bug")

        sub.subscribe(push_handler, "news")
        while await conn.execute("PUBSUB", "NUMSUB", "news") != [b"news", 1]:
            await asyncio.sleep(0.01)
        await conn.execute("PUBLISH", "news", "x")

        def orphan(reply: Any) -> None:
            raise KeyError("orphan handler bug")

        blocked = conn.execute("BLPOP", "q", 5)
        blocked.orphan = orphan
        blocked.cancel()
        await asyncio.sleep(0.05)
        redis_server.command("RPUSH", "q", "v")
        assert await conn.execute("PING") == b"PONG"
        for _ in range(100):
            if len(reported) >= 2:
                break
            await asyncio.sleep(0.01)
        errors = sorted((type(c["exception"]).__name__, str(c["exception"])) for c in reported)
        assert errors == [("KeyError", "'orphan handler bug'"), ("ValueError", "push handler bug")]
        sub.close()
        conn.close()
    finally:
        loop.set_exception_handler(None)


# ----------------------------------------------------------------------------- 11. fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_forked_child_closing_an_inherited_channel_leaves_the_parent_alone(
        transport, loop_name, redis_server, redis_url):
    out = run_child(f"""
        import asyncio, os, sys
        from tinytown import Channel, EventLoopError

        if "{loop_name}" == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        channel = loop.run_until_complete(Channel.connect(sys.argv[1], "fork"))
        conn = channel._conn
        assert loop.run_until_complete(channel.execute("PING")) == b"PONG"
        pid = os.fork()
        if pid == 0:
            # the child: runs the loop it inherited (its epoll set is the
            # parent's), closes the channel, and may not connect on that loop
            try:
                loop.run_until_complete(asyncio.sleep(0.05))
                assert conn.is_closed
                try:
                    loop.run_until_complete(channel.execute("PING"))
                    os._exit(3)
                except EventLoopError:
                    pass
                loop.run_until_complete(channel.close())
                os._exit(0)
            except BaseException:
                import traceback; traceback.print_exc()
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        for i in range(100):
            reply = loop.run_until_complete(asyncio.wait_for(channel.execute("ECHO", str(i)), 5))
            assert reply == str(i).encode(), (i, reply)
        assert channel._conn is conn      # the parent's connection was never disturbed
        loop.run_until_complete(channel.close())
        print("parent ok")
    """, redis_url, transport=transport)
    assert "child 0" in out and "parent ok" in out, out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_sync_channel_used_by_parent_and_child_after_fork_does_not_cross_replies(redis_url):
    out = run_child("""
        import os, sys
        from tinytown import SyncChannel

        channel = SyncChannel.connect(sys.argv[1], "fork")
        assert channel.execute("PING") == b"PONG"
        pid = os.fork()
        who = "child" if pid == 0 else "parent"
        bad = 0
        for i in range(2000):
            token = f"{who}-{i}"
            if channel.execute("ECHO", token) != token.encode():
                bad += 1
        if pid == 0:
            os._exit(0 if bad == 0 else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "parent crossed", bad)
        channel.close()
    """, redis_url, transport="hiredis")
    assert "child 0 parent crossed 0" in out, out


async def test_a_connection_used_in_a_forked_child_is_dropped_there(Connection, redis_server, redis_url):
    conn = await connect(Connection, redis_server)
    sync = ext.SyncConnection()
    sync.connect_unix(redis_server.unix_path)
    # The child's verdict comes through a pipe: under scripts/valgrind.sh the
    # child's exit status reports CPython's own after-fork leaks instead.
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for call in (lambda: conn.execute("PING"), lambda: sync.execute("PING")):
                try:
                    call()
                    code = 3
                except ConnectionError as exc:
                    if "fork" not in str(exc):
                        code = 4
            if not (conn.is_closed and sync.is_closed):
                code = 5
            conn.close()
            sync.close()
        except BaseException:
            code = 6
        os.write(writable, bytes([code]))
        os._exit(0)
    os.close(writable)
    verdict = os.read(readable, 1)
    os.close(readable)
    os.waitpid(pid, 0)
    assert verdict == b"\x00", verdict
    assert await conn.execute("ECHO", "parent") == b"parent"
    assert sync.execute("ECHO", "parent") == b"parent"
    conn.close()
    sync.close()


# ------------------------------------------------------------ 12. a second event loop


def test_a_connection_used_from_another_loop_raises_a_tinytown_error_and_sends_nothing(
        Connection, redis_server, redis_url):
    first = new_event_loop("asyncio")
    second = new_event_loop("asyncio")
    try:
        conn = first.run_until_complete(connect(Connection, redis_server))

        async def use_from_second() -> None:
            with pytest.raises(TinytownError, match="another event loop"):
                await conn.execute("RPUSH", "l", "x")
            with pytest.raises(TinytownError, match="another event loop"):
                await conn.execute_many([("RPUSH", "l", "y")])
            with pytest.raises(TinytownError, match="another event loop"):
                Connection(first).connect_unix(redis_server.unix_path)

        second.run_until_complete(use_from_second())
        assert redis_server.command("LLEN", "l") == 0
        assert first.run_until_complete(conn.execute("RPUSH", "l", "z")) == 1
        conn.close()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_channel_used_from_a_second_loop_writes_nothing(transport, redis_server, redis_url):
    from channel_cases import msg
    from tinytown import AgentId, Channel

    first = new_event_loop("asyncio")
    second = new_event_loop("uvloop")
    agent = AgentId.new()
    try:
        channel = first.run_until_complete(Channel.connect(redis_url, "alpha", transport=transport))
        with pytest.raises(TinytownError, match="another event loop"):
            second.run_until_complete(channel.send(msg(agent, "hello")))
        assert redis_server.command("LLEN", f"tt:alpha:inbox:{agent}") == 0
        first.run_until_complete(channel.send(msg(agent, "hello")))
        assert redis_server.command("LLEN", f"tt:alpha:inbox:{agent}") == 1
        first.run_until_complete(channel.close())
    finally:
        first.close()
        second.close()
