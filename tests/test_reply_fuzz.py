"""The transports' reply path against a misbehaving peer (tests/resp_fake.py).

Whatever bytes come back, a command ends with a value, a ReplyError or a
ConnectionError: never a crash, a hang or a leak. hiredis itself assert()s
(aborting the process) on a reply that no command waits for, so these tests
also prove the guard of ext/tt_reply_guard.h. Every test runs on both
transports (the extension, and the pure-Python one of _transport.pyasync).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import LOOP_KINDS, new_event_loop
from memory import memory_growth
from resp_fake import FakeRedis, is_reply_value, random_stream, random_value, same_reply, split
from tinytown._transport.choose import TRANSPORTS, connection_class
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


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
@example(random.Random(0))
def test_any_resp3_reply_stream_ends_in_a_value_or_typed_error(loop, transport, fake, rng: random.Random) -> None:
    """RESP3 types (which a RESP2 connection never gets: HELLO 3 is refused)
    from a hostile peer: doubles, booleans, maps and pushes drop the
    connection on both transports (hiredis 1.x aborted the process on some);
    sets, big numbers, verbatim strings and nulls convert to RESP2 shapes
    where the parser knows them (hiredis 0.14 refuses them: a protocol error)."""
    mode, first, stream = random_stream(rng, resp3=True)
    outcome = loop.run_until_complete(_one_command(transport, fake, split(rng, stream)))
    kind, got = outcome
    if mode in ("valid", "extra") and first.strict3:
        assert kind == "conn_error", (outcome, first.wire)
    elif mode in ("valid", "extra") and first.resp3:
        assert kind == "conn_error" or same_reply(got, first.value), (outcome, first.wire)
    else:
        _check(mode, first, outcome)


@pytest.mark.parametrize("stream, want", [
    (b",1.5\r\n", "conn_error"),
    (b"#t\r\n", "conn_error"),
    (b"%1\r\n+a\r\n:1\r\n", "conn_error"),
    (b">2\r\n+a\r\n+b\r\n", "conn_error"),
    (b"*2\r\n:1\r\n,1.5\r\n", "conn_error"),      # inside a successful array
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b"(12345678901234567890123\r\n", b"12345678901234567890123"),
    (b"=8\r\ntxt:abcd\r\n", b"abcd"),
    (b"_\r\n", None),
])
def test_resp3_replies_are_refused_or_converted(loop, transport, fake, stream, want):
    kind, got = loop.run_until_complete(_one_command(transport, fake, [stream]))
    if want == "conn_error":
        assert kind == "conn_error" and "protocol" in str(got).lower(), (kind, got)
    else:  # (hiredis 0.14 does not parse RESP3 at all: a protocol error)
        assert (kind == "value" and same_reply(got, want)) or (
            kind == "conn_error" and "Protocol error" in str(got)), (kind, got)


@pytest.mark.parametrize("stream", [
    b"+OK\r\n+EXTRA\r\n",                 # a second reply nobody asked for
    b"+OK\r\n:1\r\n",
    b"+OK\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"+OK\r\n$-1\r\n",
    b"+OK\r\n*0\r\n",
    b"+OK\r\n,1.5\r\n",                   # RESP3: hiredis 1.x aborted on these
    b"+OK\r\n#t\r\n",
    b"+OK\r\n%1\r\n+a\r\n:1\r\n",
    b"+OK\r\n~1\r\n:1\r\n",
    b"+OK\r\n_\r\n",
    b"+OK\r\n>3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n",
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


@pytest.mark.parametrize("bad, python_closes", [
    (b"*3\r\n$11\r\nunsubscribe\r\n$12\r\ntt:broadcast\r\n:0\r\n", False),  # forged unsubscribe
    (b"*3\r\n$12\r\nPUNSUBSCRIBE\r\n$12\r\ntt:broadcast\r\n:0\r\n", False),
    (b"*3\r\n$14\r\nunsubscribe\x00xy\r\n$12\r\ntt:broadcast\r\n:0\r\n", False),  # (C string)
    (b"*3\r\n:1\r\n$12\r\ntt:broadcast\r\n$1\r\nx\r\n", False),             # kind is not a string
    (b"*3\r\n$7\r\nmessage\r\n*0\r\n$1\r\nx\r\n", False),                    # channel is not a string
    (b"*1\r\n$7\r\nmessage\r\n", False),                                     # too short
    (b"+OK\r\n", False),                                                     # not an array
    (b":5\r\n", False),
    # subscribe confirmations for channels never subscribed (hiredis 1.x aborted)
    (b"*3\r\n$9\r\nsubscribe\r\n$5\r\nother\r\n:2\r\n", False),
    (b"*3\r\n$9\r\nSUBSCRIBE\r\n$5\r\nother\r\n:2\r\n", False),
    (b"*3\r\n$13\r\nsubscribe\x00xyz\r\n$5\r\nother\r\n:2\r\n", False),
    (b"*3\r\n$10\r\npsubscribe\r\n$2\r\nx*\r\n:2\r\n", False),
    # RESP3 types in a push (hiredis 1.x aborted on a non-string kind)
    (b"*3\r\n,1.5\r\n$12\r\ntt:broadcast\r\n$1\r\nx\r\n", True),
    (b"*3\r\n#t\r\n$12\r\ntt:broadcast\r\n$1\r\nx\r\n", True),
    (b"*3\r\n$7\r\nmessage\r\n#f\r\n$1\r\nx\r\n", True),
    (b"*3\r\n$7\r\nmessage\r\n$12\r\ntt:broadcast\r\n,2.5\r\n", True),
    (b">3\r\n$7\r\nmessage\r\n$12\r\ntt:broadcast\r\n$1\r\nx\r\n", True),
    (b"%1\r\n$7\r\nmessage\r\n$1\r\nx\r\n", True),
    (b",1.5\r\n", True),
])
def test_malformed_push_closes_or_passes_through(loop, transport, fake, bad, python_closes):
    """hiredis would assert on these: the extension's guard closes the
    connection. The Python transport hands each to the handler as a value
    (BroadcastSubscription ignores what is not a message) and goes on,
    except for RESP3 types, which both transports refuse."""
    extension = transport.__module__ == "tinytown._transport.ext"
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
    if extension or python_closes:
        # ("Protocol error": hiredis 0.14 does not parse RESP3 types at all)
        assert isinstance(got[-1], ConnectionError), got
        assert "protocol violation" in str(got[-1]) or "Protocol error" in str(got[-1]), got
        assert AFTER not in got
    else:
        assert len(got) == 3 and got[2] == AFTER and not isinstance(got[1], BaseException)


@settings(max_examples=max(10, FUZZ_EXAMPLES // 3), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
@example(random.Random(0))
def test_any_traffic_on_a_subscribed_connection_ends_in_items_or_a_typed_error(
        loop, transport, fake, rng: random.Random) -> None:
    """Subscribed-mode fuzz: after the subscribe confirmation, a random mix of
    messages (RESP2 and RESP3 payloads), malformed pushes, forged
    confirmations, replies and garbage, then the server hangs up. The handler
    gets RESP2-shaped lists (or other RESP2 values: the Python transport
    passes them through) and, last, one ConnectionError; never a crash."""
    pieces = [SUBSCRIBED]
    for _ in range(rng.randrange(1, 6)):
        choice = rng.random()
        if choice < 0.35:
            pieces.append(_push(b"message", rng.randbytes(rng.randrange(0, 20))))
        elif choice < 0.5:
            payload = random_value(rng, 1, resp3=True).wire
            pieces.append(b"*3\r\n$7\r\nmessage\r\n$12\r\ntt:broadcast\r\n" + payload)
        elif choice < 0.65:
            kind = rng.choice([b"subscribe", b"psubscribe", b"unsubscribe", b"message",
                               b"pmessage", b"ssubscribe", b"smessage", b"Subscribe\x00"])
            channel = rng.choice([b"tt:broadcast", b"other", b""])
            pieces.append(b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:1\r\n"
                          % (len(kind), kind, len(channel), channel))
        elif choice < 0.9:
            pieces.append(random_value(rng, resp3=rng.random() < 0.5).wire)
        else:
            pieces.append(rng.randbytes(rng.randrange(1, 30)))

    async def run() -> list[Any]:
        got: list[Any] = []
        done = asyncio.get_running_loop().create_future()

        def handler(item: Any) -> None:
            got.append(item)
            if isinstance(item, ConnectionError) and not done.done():
                done.set_result(None)

        fake.play(*split(rng, b"".join(pieces)))
        conn = transport(asyncio.get_running_loop())
        await conn.connect_unix(fake.path)
        conn.subscribe(handler, b"tt:broadcast")
        await asyncio.wait_for(done, SAFETY_TIMEOUT)
        conn.close()
        return got

    got = loop.run_until_complete(run())
    assert isinstance(got[-1], ConnectionError), got
    # (an error reply is a value too: the Python transport passes it through)
    assert not any(isinstance(item, ConnectionError) for item in got[:-1]), got
    assert all(is_reply_value(item) for item in got[:-1]), got


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
