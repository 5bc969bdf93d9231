"""Reliable receive (receive_reliable / ack / reclaim): at-least-once delivery.

The crash tests SIGKILL real consumer processes (``scripts/load.py consume``)
in the middle of a stream, against a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from channel_cases import msg
from tinytown import (
    AgentId,
    Channel,
    DecodeError,
    Delivery,
    InvalidArgumentError,
    Message,
    MessageType,
    Priority,
)

LOAD = Path(__file__).resolve().parents[1] / "scripts" / "load.py"


def texts(raw_list: list[bytes]) -> list[str]:
    return [Message.from_json(r).msg_type.description for r in raw_list]


async def test_receive_ack_cycle(redis_server, redis_url):
    agent = AgentId.new()
    inbox, processing = f"tt:alpha:inbox:{agent}", f"tt:alpha:processing:{agent}"
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send_many([msg(agent, "one"), msg(agent, "two")])
        first = await channel.receive_reliable(agent, 5)
        assert isinstance(first, Delivery)
        assert first.message.msg_type.description == "one" and first.agent_id == agent
        # moved, not copied: exactly one of the two lists holds it
        assert redis_server.command("LRANGE", processing, 0, -1) == [first.raw]
        assert texts(redis_server.command("LRANGE", inbox, 0, -1)) == ["two"]
        assert await channel.processing_len(agent) == 1
        assert await channel.ack(first) is True
        assert await channel.processing_len(agent) == 0
        assert await channel.ack(first) is False  # already acked
        second = await channel.receive_reliable(agent, 5)
        assert second.message.msg_type.description == "two"
        assert await channel.ack(second)
        assert await channel.receive_reliable(agent, 0.05) is None
        assert redis_server.command("EXISTS", inbox, processing) == 0


async def test_priorities_are_respected(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send(msg(agent, "normal"))
        await channel.send(msg(agent, "urgent", Priority.URGENT))
        got = [(await channel.receive_reliable(agent, 5)).message.msg_type.description for _ in range(2)]
        assert got == ["urgent", "normal"]


async def test_ack_removes_the_exact_bytes_another_client_wrote(redis_server, redis_url):
    """A message written by another client, spelled differently from to_json()."""
    agent = AgentId.new()
    message = msg(agent, "spaced out")
    spaced = json.dumps(json.loads(message.to_json()), indent=2).encode()
    assert spaced != message.to_json()
    redis_server.command("RPUSH", f"tt:alpha:inbox:{agent}", spaced)
    async with await Channel.connect(redis_url, town="alpha") as channel:
        delivery = await channel.receive_reliable(agent, 5)
        assert delivery.message == message and delivery.raw == spaced
        assert await channel.ack(delivery)
        assert await channel.processing_len(agent) == 0


async def test_reclaim_requeues_at_the_front_in_received_order(redis_server, redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send_many([msg(agent, f"m{i}") for i in range(5)])
        taken = [await channel.receive_reliable(agent, 5) for _ in range(3)]  # a consumer dies here
        assert [d.message.msg_type.description for d in taken] == ["m0", "m1", "m2"]
        await channel.send(msg(agent, "m5"))
        assert await channel.reclaim(agent) == 3
        assert await channel.reclaim(agent) == 0
        assert texts(redis_server.command("LRANGE", f"tt:alpha:inbox:{agent}", 0, -1)) == \
            [f"m{i}" for i in range(6)]
        # an ack after the reclaim finds nothing: the message will come again (at-least-once)
        assert await channel.ack(taken[0]) is False


async def test_undecodable_message_moves_from_processing_to_dead_letters(redis_server, redis_url):
    agent = AgentId.new()
    redis_server.command("RPUSH", f"tt:alpha:inbox:{agent}", b"{broken")
    async with await Channel.connect(redis_url, town="alpha") as channel:
        await channel.send(msg(agent, "good"))
        with pytest.raises(DecodeError) as info:
            await channel.receive_reliable(agent, 5)
        assert info.value.raw == b"{broken"
        assert redis_server.command("LRANGE", f"tt:alpha:dead:{agent}", 0, -1) == [b"{broken"]
        assert await channel.processing_len(agent) == 0
        # the receiver loop goes on with the next message
        good = await channel.receive_reliable(agent, 5)
        assert good.message.msg_type.description == "good"
        assert await channel.ack(good)


async def test_cancelled_reliable_receive_loses_nothing(redis_url):
    agent = AgentId.new()
    async with await Channel.connect(redis_url, town="alpha") as channel:
        for _ in range(20):
            task = asyncio.ensure_future(channel.receive_reliable(agent, 5))
            await asyncio.sleep(0.01)
            await channel.send(msg(agent, "precious"))
            task.cancel()  # before or after BLMOVE moved the message
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            await asyncio.sleep(0.05)  # let a move back land
            if got is not None:
                assert await channel.ack(got)
            back = await channel.try_receive(agent)
            assert (got is None) != (back is None), "message lost or duplicated"
            assert await channel.processing_len(agent) == 0


async def test_unacked_message_survives_a_server_crash(redis_server_factory):
    server = redis_server_factory("--appendonly", "yes", "--appendfsync", "always")
    agent = AgentId.new()
    async with await Channel.connect(server.url, town="alpha") as channel:
        await channel.send(msg(agent, "in flight"))
        taken = await channel.receive_reliable(agent, 5)
        server.kill()  # redis-server and the consumer's connection die mid-processing
        await asyncio.sleep(0.05)  # the channel notices the drop
        server.restart()
        assert await channel.processing_len(agent) == 1
        assert await channel.reclaim(agent) == 1  # the restarted consumer reclaims
        again = await channel.receive_reliable(agent, 5)
        assert again.message == taken.message
        assert await channel.ack(again)


async def test_reliable_receive_is_refused_on_a_cluster(cluster_url):
    async with await Channel.connect(cluster_url, town="alpha") as channel:
        with pytest.raises(InvalidArgumentError, match="Cluster"):
            await channel.receive_reliable(AgentId.new(), 1)
        with pytest.raises(InvalidArgumentError, match="Cluster"):
            await channel.reclaim(AgentId.new())


# ----------------------------------------------------- killed consumer processes


def _consumer(url: str, town: str, agent: str, out: Path, work_ms: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(LOAD), "consume", "--url", url, "--town", town, "--agent", agent,
         "--out", str(out), "--mode", "reliable", "--work-ms", str(work_ms)],
        stdout=subprocess.PIPE)


def _ready(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a consumer's start line; returns how many messages it reclaimed."""
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("ready reclaimed="), line
    return int(line.split("=")[1])


@pytest.mark.timeout(180)
def test_consumer_processes_killed_mid_stream_lose_nothing(redis_server, redis_url, tmp_path):
    """Two agents, their consumer processes SIGKILLed again and again while they
    work (2 ms per message): every message is processed at least once."""
    town, agents, count = "crash", [AgentId.new(), AgentId.new()], 600
    sent = [msg(agents[i % 2], f"m{i}") for i in range(count)]
    rng = random.Random(7)

    async def send_all() -> None:
        async with await Channel.connect(redis_url, town=town) as channel:
            await channel.send_many(sent)

    asyncio.run(send_all())
    generation = Counter[str]()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(agent: str) -> int:
        generation[agent] += 1
        procs[agent] = _consumer(redis_url, town, agent, tmp_path / f"{agent}-{generation[agent]}.ids", 2)
        return _ready(procs[agent])

    reclaimed = [start(a) for a in agents]
    kills = 0
    processed = lambda: sum(p.stat().st_size for p in tmp_path.glob("*.ids")) // 37  # noqa: E731
    while processed() < count and kills < 40:
        time.sleep(rng.uniform(0.02, 0.12))
        victim = rng.choice(agents)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        kills += 1
        reclaimed.append(start(victim))

    async def finish() -> tuple[int, int]:
        async with await Channel.connect(redis_url, town=town) as channel:
            # let the last consumers drain their inboxes, then stop them
            deadline = time.monotonic() + 60
            while processed() < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await channel.send_many([Message.new(AgentId.supervisor(), a, MessageType.Shutdown())
                                     for a in agents])
            for proc in procs.values():
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            left = [await channel.inbox_len(a) + await channel.processing_len(a) for a in agents]
            return sum(left), sum(p.returncode != 0 for p in procs.values())

    left, failed = asyncio.run(finish())
    counts = Counter(line for p in tmp_path.glob("*.ids") for line in p.read_text().split())
    print(f"kills={kills} reclaimed={sum(reclaimed)} duplicates={sum(counts.values()) - count}")
    assert kills >= 5
    assert sum(reclaimed) >= 1, "no kill landed mid-message: the test proved nothing"
    assert set(counts) == {m.id for m in sent}, "a message was lost"
    assert failed == 0 and left == 0
    # at-least-once: a duplicate needs a kill between "processed" and ack
    assert sum(counts.values()) - count <= kills
