#!/usr/bin/env python
"""Drain time of N x 1 KB RPUSHes queued on one transport Connection while redis-server
was stopped (SIGSTOP for 1 s), from SIGCONT to the last reply; and peak RSS of 1,000,000
Channel.send calls in flight. Usage:

    .venv/bin/python benches/write_path.py drain hiredis|python 100000,200000,400000,800000
    .venv/bin/python benches/write_path.py rss hiredis|python default|none concurrent|sequential
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import RedisProcess  # noqa: E402

from tinytown import AgentId, Channel, Message, MessageType  # noqa: E402
from tinytown._transport import pyasync  # noqa: E402


async def drain(kind: str, n: int) -> float:
    server = RedisProcess().start()
    try:
        if kind == "hiredis":
            from tinytown._transport import ext
            conn = ext.Connection(asyncio.get_running_loop())
        else:
            conn = pyasync.PyConnection(asyncio.get_running_loop())
        await conn.connect_unix(server.unix_path)
        value = b"x" * 1024
        os.kill(server.pid, signal.SIGSTOP)
        try:
            futures = [conn.execute("RPUSH", "drain", value) for _ in range(n)]
            await asyncio.sleep(1.0)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        start = time.perf_counter()
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    finally:
        server.close()


async def rss(kind: str, limits: str, mode: str) -> str:
    server = RedisProcess().start()
    try:
        extra = {} if limits == "default" else {"write_buffer_limits": None}
        async with await Channel.connect(server.url, town="rss", transport=kind, **extra) as ch:
            agent = AgentId.new()
            m = Message.new(AgentId.supervisor(), agent, MessageType.Task(description="t" * 400))
            peak, done = 0, False

            async def watch() -> None:
                nonlocal peak
                while not done:
                    peak = max(peak, ch._conn.write_buffer_size)
                    await asyncio.sleep(0.01)

            watcher = asyncio.ensure_future(watch())
            start = time.perf_counter()
            if mode == "concurrent":
                await asyncio.gather(*[asyncio.gather(*[ch.send(m) for _ in range(200_000)])
                                       for _ in range(5)])
            else:
                for _ in range(5):
                    await asyncio.gather(*[ch.send(m) for _ in range(200_000)])
            done = True
            await watcher
            sent = await ch.inbox_len(agent)
            return (f"{kind} limits={limits} {mode}: sent={sent} message={len(m.to_json())} B "
                    f"peak RSS={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
                    f"peak write queue={peak / 2**20:.1f} MiB {time.perf_counter() - start:.1f} s")
    finally:
        server.close()


if __name__ == "__main__":
    if sys.argv[1] == "drain":
        for count in map(int, sys.argv[3].split(",")):
            print(f"{sys.argv[2]} {count:,} x 1 KB: {asyncio.run(drain(sys.argv[2], count)):.2f} s")
    else:
        print(asyncio.run(rss(sys.argv[2], sys.argv[3], sys.argv[4])))
