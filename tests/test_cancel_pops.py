"""Calls that pop hand back what they took when their caller goes away
(issue 10, item 1): a cancelled try_receive / receive_urgent / drain_inbox,
and a SyncChannel one interrupted by a signal, lose nothing and reorder
nothing. Both transports (the suite runs once per transport), asyncio and uvloop.

Determinism: ``CLIENT PAUSE <ms> WRITE`` (from a side connection) holds the
pop on the server, so the caller is surely gone when its reply arrives; the
sweep over loop iterations covers the moments in between.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest

from channel_cases import msg, text_of
from tinytown import AgentId, Channel, DecodeError, Message, SyncChannel

TOWN = "cancel"


def inbox_texts(redis_server: Any, key: str) -> list[str]:
    return [text_of(Message.from_json(raw)) for raw in redis_server.command("LRANGE", key, 0, -1)]


async def settle(channel: Channel) -> None:
    # Two round trips on the main connection: any reply that was in flight
    # when the caller left has been handled, and what its orphan handler
    # wrote has been executed, before the second reply comes back.
    await channel.execute("PING")
    await channel.execute("PING")


def _pops(agent: AgentId) -> dict[str, Any]:
    return {
        "try_receive": (lambda ch: ch.try_receive(agent), "inbox", 1),
        "drain_inbox": (lambda ch: ch.drain_inbox(agent), "inbox", 3),
        "receive_urgent": (lambda ch: ch.receive_urgent(agent), "urgent", 3),
    }


async def _fill(channel: Channel, agent: AgentId, where: str) -> list[str]:
    texts = ["m0", "m1", "m2"]
    for text in texts:
        if where == "inbox":
            await channel.send(msg(agent, text))
        else:
            await channel.execute("RPUSH", channel.keys.urgent(agent), msg(agent, text).to_json())
    return texts


def _returned(result: Any) -> list[str]:
    if result is None:
        return []
    if isinstance(result, list):
        return [text_of(m) for m in result]
    return [text_of(result)]


@pytest.mark.parametrize("op", ["try_receive", "drain_inbox", "receive_urgent"])
async def test_cancelled_pop_held_by_server_hands_back(redis_server, redis_url, op):
    agent = AgentId.new()
    call, where, _ = _pops(agent)[op]
    async with await Channel.connect(redis_url, town=TOWN) as channel:
        texts = await _fill(channel, agent, where)
        key = channel.keys.inbox(agent) if where == "inbox" else channel.keys.urgent(agent)
        redis_server.command("CLIENT", "PAUSE", 1000, "WRITE")
        task = asyncio.ensure_future(call(channel))
        for _ in range(3):
            await asyncio.sleep(0)  # the pop is written and waits on the paused server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(channel)  # returns once the pause is over and the pop ran
        assert inbox_texts(redis_server, key) == texts


@pytest.mark.parametrize("op", ["try_receive", "drain_inbox", "receive_urgent"])
@pytest.mark.parametrize("iterations", range(6))
async def test_cancel_at_any_moment_loses_and_reorders_nothing(redis_server, redis_url, op, iterations):
    agent = AgentId.new()
    call, where, _ = _pops(agent)[op]
    async with await Channel.connect(redis_url, town=TOWN) as channel:
        texts = await _fill(channel, agent, where)
        key = channel.keys.inbox(agent) if where == "inbox" else channel.keys.urgent(agent)
        task = asyncio.ensure_future(call(channel))
        for _ in range(iterations):
            await asyncio.sleep(0)
        task.cancel()
        try:
            got = _returned(await task)
        except asyncio.CancelledError:
            got = []
        await settle(channel)
        # What the caller got, then what is left: exactly the original list.
        assert got + inbox_texts(redis_server, key) == texts


# -- SyncChannel, interrupted by a signal ----------------------------------------

class Interrupted(Exception):
    pass


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted


def _sync_pops(agent: AgentId) -> dict[str, tuple[Callable[[SyncChannel], Any], str]]:
    return {
        "try_receive": (lambda ch: ch.try_receive(agent), "inbox"),
        "drain_inbox": (lambda ch: ch.drain_inbox(agent), "inbox"),
        "receive_urgent": (lambda ch: ch.receive_urgent(agent), "urgent"),
    }


@pytest.mark.parametrize("op", ["try_receive", "drain_inbox", "receive_urgent"])
def test_sync_pop_interrupted_by_signal_hands_back(redis_server, redis_url, op):
    agent = AgentId.new()
    call, where = _sync_pops(agent)[op]
    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        with SyncChannel.connect(redis_url, town=TOWN) as channel:
            key = channel.keys.inbox(agent) if where == "inbox" else channel.keys.urgent(agent)
            texts = ["m0", "m1", "m2"]
            for text in texts:
                channel.execute("RPUSH", key, msg(agent, text).to_json())
            redis_server.command("CLIENT", "PAUSE", 1000, "WRITE")
            # The alarm rings while the pop waits on the paused server.
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupted):
                call(channel)
            assert inbox_texts(redis_server, key) == texts
            # The channel is still usable, and in step.
            assert len(_returned(call(channel))) >= 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("op", ["try_receive", "drain_inbox", "receive_urgent"])
@pytest.mark.parametrize("iterations", range(8))
async def test_cancel_while_dead_lettering_loses_nothing(redis_server, redis_url, op, iterations):
    # A malformed element first: the call pops, then moves it to the dead
    # letters in a second step; a cancel anywhere loses no good message and
    # leaves the bad one in exactly one place.
    agent = AgentId.new()
    call, where, _ = _pops(agent)[op]
    bad = b"\xffnot a message"
    async with await Channel.connect(redis_url, town=TOWN) as channel:
        key = channel.keys.inbox(agent) if where == "inbox" else channel.keys.urgent(agent)
        good = ["m0", "m1"] if op != "try_receive" else []
        redis_server.command("RPUSH", key, bad, *[msg(agent, t).to_json() for t in good])
        task = asyncio.ensure_future(call(channel))
        for _ in range(iterations):
            await asyncio.sleep(0)
        task.cancel()
        try:
            got = _returned(await task)
        except asyncio.CancelledError:
            got = []
        except DecodeError as exc:  # try_receive: dead-lettered, then raised
            assert exc.raw == bad
            got = []
        await settle(channel)
        left = redis_server.command("LRANGE", key, 0, -1)
        dead = redis_server.command("LRANGE", channel.keys.dead(agent), 0, -1)
        assert (left + dead).count(bad) == 1
        assert got + [text_of(Message.from_json(raw)) for raw in left if raw != bad] == good


@pytest.mark.parametrize("op", ["try_receive", "drain_inbox", "receive_urgent"])
@pytest.mark.parametrize("api", ["async", "sync"])
async def test_interrupt_after_the_reply_hands_back(redis_server, redis_url, monkeypatch, op, api):
    # A signal handler can raise between any two bytecodes, also after the
    # pop's reply is in and before the call returns (here: while decoding).
    agent = AgentId.new()
    key = f"tt:{TOWN}:{'urgent' if op == 'receive_urgent' else 'inbox'}:{agent}"
    texts = ["m0", "m1", "m2"]
    redis_server.command("RPUSH", key, *[msg(agent, t).to_json() for t in texts])
    import tinytown._ops_inbox as ops_inbox

    class FakeMessage:
        @staticmethod
        def from_json(raw: bytes) -> Message:
            raise Interrupted

    monkeypatch.setattr(ops_inbox, "Message", FakeMessage)
    if api == "async":
        async with await Channel.connect(redis_url, town=TOWN) as channel:
            with pytest.raises(Interrupted):
                await getattr(channel, op)(agent)
            await settle(channel)
    else:
        with SyncChannel.connect(redis_url, town=TOWN) as channel:
            with pytest.raises(Interrupted):
                getattr(channel, op)(agent)
    monkeypatch.undo()
    assert inbox_texts(redis_server, key) == texts
