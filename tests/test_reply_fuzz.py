"""The transports' reply path against a misbehaving peer (tests/resp_fake.py).

Whatever bytes come back, a command ends with a value, a ReplyError or a
ConnectionError: never a crash, a hang or a leak. hiredis itself assert()s
(aborting the process) on a reply that no command waits for, so these tests
also prove the guard of ext/tt_reply_guard.h. Every test runs on both
transports (the extension, and the pure-Python one of _pytransport).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import LOOP_KINDS, new_event_loop
from memory import memory_growth
from resp_fake import FakeRedis, is_reply_value, random_stream, same_reply, split
from tinytown._transports import TRANSPORTS, connection_class
from tinytown.errors import ConnectionError, ReplyError

# hiredis 0.14 refuses a "*" header (array or nil array) below 8 levels of
# arrays: a protocol error. Newer hiredis releases allow deeper nesting.
HIREDIS_MAX_DEPTH = 8
SAFETY_TIMEOUT = 10.0
# Examples per fuzz run; scripts/valgrind.sh asks for fewer (valgrind is ~50x slower).
FUZZ_EXAMPLES = int(os.environ.get("TT_FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module", params=LOOP_KINDS)
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop per kind for the whole module (hypothesis runs many examples)."""
    loop = new_event_loop(request.param)
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Any:
    """The Connection class of each transport."""
    return connection_class(request.param)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRedis]:
    server = FakeRedis(str(tmp_path_factory.mktemp("fake") / "fake.sock"))
    try:
        yield server
    finally:
        server.close()


async def _one_command(transport: Any, fake: FakeRedis, chunks: list[bytes],
                       pause: float = 0.0) -> tuple[str, Any]:
    """Run GET on a new connection answered by ``chunks``: ("value"|"reply_error"|"conn_error", x)."""
    fake.play(*chunks, pause=pause)
    conn = transport(asyncio.get_running_loop())
    await asyncio.wait_for(conn.connect_unix(fake.path), SAFETY_TIMEOUT)
    try:
        value = await asyncio.wait_for(conn.execute("GET", "k"), SAFETY_TIMEOUT)
        return "value", value
    except ReplyError as exc:
        return "reply_error", exc
    except ConnectionError as exc:
        return "conn_error", exc
    finally:
        conn.close()


def _check(mode: str, first: Any, outcome: tuple[str, Any]) -> None:
    kind, got = outcome
    # Whatever happened, it is one of the three documented outcomes.
    assert kind in ("value", "reply_error", "conn_error")
    if kind == "value":
        assert is_reply_value(got) and type(got) is not ReplyError, got
    if mode in ("valid", "extra"):
        # The first reply is complete: it must come through exactly (an extra
        # reply after it only closes the connection), unless hiredis refuses
        # its nesting depth.
        if first.depth > HIREDIS_MAX_DEPTH and kind == "conn_error":
            assert "depth" in str(got), outcome
        elif first.depth > HIREDIS_MAX_DEPTH and kind == "value":  # a newer hiredis
            assert same_reply(got, first.value), (got, first.value)
        elif isinstance(first.value, ReplyError):
            assert kind == "reply_error" and str(got) == str(first.value), outcome
        else:
            assert kind == "value" and same_reply(got, first.value), (outcome, first.value)
    if mode == "truncated":
        assert kind == "conn_error", outcome


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
@example(random.Random(0))
def test_any_reply_stream_ends_in_a_value_or_typed_error(loop, transport, fake, rng: random.Random) -> None:
    mode, first, stream = random_stream(rng)
    chunks = split(rng, stream)
    outcome = loop.run_until_complete(
        _one_command(transport, fake, chunks, pause=rng.choice([0, 0, 0.001])))
    _check(mode, first, outcome)


@pytest.mark.parametrize("stream", [
    b"+OK\r\n+EXTRA\r\n",                 # a second reply nobody asked for
    b"+OK\r\n:1\r\n",
    b"+OK\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"+OK\r\n$-1\r\n",
    b"+OK\r\n*0\r\n",
])
def test_unsolicited_reply_closes_the_connection_instead_of_aborting(loop, transport, fake, stream):
    async def run() -> None:
        fake.play(stream, hold=True)  # the server keeps the connection open
        conn = transport(asyncio.get_running_loop())
        await conn.connect_unix(fake.path)
        assert await asyncio.wait_for(conn.execute("GET", "k"), SAFETY_TIMEOUT) == b"OK"
        for _ in range(200):  # the extra reply closes the connection from the client side
            if conn.is_closed:
                break
            await asyncio.sleep(0.01)
        assert conn.is_closed
        with pytest.raises(ConnectionError):
            conn.execute("PING")
        conn.close()

    loop.run_until_complete(run())


def _push(kind: bytes, *rest: bytes) -> bytes:
    items = (kind, b"tt:broadcast") + rest
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)


SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n$12\r\ntt:broadcast\r\n:1\r\n"


@pytest.mark.parametrize("bad", [
    b"*3\r\n$11\r\nunsubscribe\r\n$12\r\ntt:broadcast\r\n:0\r\n",  # forged unsubscribe
    b"*3\r\n$12\r\nPUNSUBSCRIBE\r\n$12\r\ntt:broadcast\r\n:0\r\n",
    b"*3\r\n:1\r\n$12\r\ntt:broadcast\r\n$1\r\nx\r\n",             # kind is not a string
    b"*3\r\n$7\r\nmessage\r\n*0\r\n$1\r\nx\r\n",                    # channel is not a string
    b"*1\r\n$7\r\nmessage\r\n",                                     # too short
    b"+OK\r\n",                                                     # not an array
    b":5\r\n",
])
def test_malformed_push_closes_or_passes_through(loop, transport, fake, bad):
    """hiredis would assert on these: the extension's guard closes the
    connection. The Python transport hands each to the handler as a value
    (BroadcastSubscription ignores what is not a message) and goes on."""
    extension = transport.__module__ == "tinytown._transport"
    AFTER = [b"message", b"tt:broadcast", b"after"]

    async def run() -> list[Any]:
        got: list[Any] = []
        done = asyncio.get_running_loop().create_future()

        def handler(item: Any) -> None:
            got.append(item)
            if (isinstance(item, BaseException) or item == AFTER) and not done.done():
                done.set_result(None)

        fake.play(SUBSCRIBED, bad, _push(b"message", b"after"), pause=0.01, hold=True)
        conn = transport(asyncio.get_running_loop())
        await conn.connect_unix(fake.path)
        conn.subscribe(handler, b"tt:broadcast")
        await asyncio.wait_for(done, SAFETY_TIMEOUT)
        conn.close()
        return got

    got = loop.run_until_complete(run())
    assert got[0][0] == b"subscribe"
    if extension:
        assert isinstance(got[-1], ConnectionError) and "protocol violation" in str(got[-1])
        assert AFTER not in got
    else:
        assert len(got) == 3 and got[2] == AFTER and not isinstance(got[1], BaseException)


def test_message_push_with_odd_payload_types_is_delivered_as_a_list(loop, transport, fake):
    async def run() -> list[Any]:
        got: list[Any] = []
        fake.play(SUBSCRIBED, b"*3\r\n$7\r\nmessage\r\n$12\r\ntt:broadcast\r\n:7\r\n",
                  pause=0.01)
        conn = transport(asyncio.get_running_loop())
        await conn.connect_unix(fake.path)
        done = asyncio.get_running_loop().create_future()
        conn.subscribe(lambda item: (got.append(item), isinstance(item, BaseException)
                                     and not done.done() and done.set_result(None)), b"tt:broadcast")
        await asyncio.wait_for(done, SAFETY_TIMEOUT)
        conn.close()
        return got

    got = loop.run_until_complete(run())
    assert got[1] == [b"message", b"tt:broadcast", 7]
    assert isinstance(got[-1], ConnectionError)


# ----------------------------------------------------------------------- leaks


def test_reply_path_does_not_leak(loop, transport, fake):
    """Many rounds of random streams (big bulk strings included): Python
    allocations (tracemalloc) and RSS stay flat after a warm-up."""
    rng = random.Random(1234)

    def rounds(n: int) -> None:
        for _ in range(n):
            mode, first, stream = random_stream(rng, big=True)
            _check(mode, first, loop.run_until_complete(_one_command(transport, fake, split(rng, stream))))

    rounds(200)  # warm-up: caches, free lists, the loop's internals
    with memory_growth() as grown:
        rounds(800)
    # A leaked reply per round would be ~800 objects (tracemalloc) or, for the
    # 70 kB bulk strings, tens of MB (RSS).
    assert grown.python < 200_000, f"Python allocations grew by {grown.python} bytes over 800 rounds"
    assert grown.rss < 16 * 2**20, f"RSS grew by {grown.rss} bytes over 800 rounds"
