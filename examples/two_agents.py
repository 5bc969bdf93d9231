"""Two agents coordinating through a tinytown town.

A supervisor assigns a task to a worker; the worker, blocked on its inbox,
receives it, does the work, and answers TaskDone correlated with the
assignment; the supervisor receives the answer and reads the worker's stored
state back. Everything goes through a redis-server that the example starts in
a temporary directory and stops at the end.

Run it with ``scripts/example.sh`` (or ``.venv/bin/python examples/two_agents.py
[--loop uvloop]``). It exits non-zero if any step does not happen as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

from tinytown import Agent, AgentId, AgentState, Channel, Message, MessageType, TaskId, Town

RECEIVE_TIMEOUT = 10.0  # seconds a blocking receive waits
T0 = time.perf_counter()


def say(who: str, text: str) -> None:
    elapsed = (time.perf_counter() - T0) * 1000
    print(f"[{elapsed:8.2f} ms] {who:<10} {text}", flush=True)


def short(message_id: object) -> str:
    return str(message_id)[:8]


class ExampleFailed(Exception):
    pass


async def worker_loop(channel: Channel, worker: Agent) -> None:
    """The worker: wait for one assignment, do it, report back."""
    worker.state = AgentState.IDLE
    await channel.set_agent_state(worker)
    say(worker.name, f"state {worker.state}; waiting on its inbox (blocking receive)")

    message = await channel.receive(worker.id, RECEIVE_TIMEOUT)
    if message is None:
        raise ExampleFailed(f"{worker.name} received nothing in {RECEIVE_TIMEOUT:g} s")
    if not isinstance(message.msg_type, MessageType.TaskAssign):
        raise ExampleFailed(f"{worker.name} expected a task_assign, got {message.msg_type!r}")
    task_id = message.msg_type.task_id
    say(worker.name, f"<- task_assign task={short(task_id)} (message {short(message.id)})")

    worker.state = AgentState.WORKING
    worker.current_task = TaskId(task_id)
    await channel.set_agent_state(worker)
    say(worker.name, f"state {worker.state} on task {short(task_id)}")
    await asyncio.sleep(0.01)  # the "work"
    result = "counted 3 files"

    worker.state = AgentState.IDLE
    worker.current_task = None
    worker.tasks_completed += 1
    await channel.set_agent_state(worker)
    reply = Message.new(
        worker.id, message.from_, MessageType.TaskDone(task_id=task_id, result=result)
    ).with_correlation(message.id)
    say(worker.name, f"-> task_done result={result!r} (correlation {short(reply.correlation_id)})")
    await channel.send(reply)


async def supervisor(channel: Channel, worker: Agent) -> None:
    """The supervisor: assign a task, wait for the answer, check the worker's state."""
    me = AgentId.supervisor()
    task_id = TaskId.new()
    assign = Message.new(me, worker.id, MessageType.TaskAssign(task_id=str(task_id)))
    # Log first, then send: once sent, the worker may log its receipt before
    # this coroutine runs again.
    say("supervisor", f"-> {worker.name}: task_assign task={short(task_id)} (message {short(assign.id)})")
    await channel.send(assign)

    answer = await channel.receive(me, RECEIVE_TIMEOUT)
    if answer is None:
        raise ExampleFailed(f"no answer from {worker.name} in {RECEIVE_TIMEOUT:g} s")
    if not isinstance(answer.msg_type, MessageType.TaskDone):
        raise ExampleFailed(f"expected task_done, got {answer.msg_type!r}")
    correlated = answer.correlation_id == assign.id
    say(
        "supervisor",
        f"<- {worker.name}: task_done result={answer.msg_type.result!r}, "
        f"answers message {short(answer.correlation_id)}: {'yes' if correlated else 'NO'}",
    )
    if not correlated or answer.msg_type.task_id != str(task_id):
        raise ExampleFailed("the answer does not correlate with the assignment")

    stored = await channel.get_agent_state(worker.id)
    if stored is None:
        raise ExampleFailed(f"no stored state for {worker.name}")
    say(
        "supervisor",
        f"reads {stored.name}'s state: {stored.state}, "
        f"tasks_completed={stored.tasks_completed}, current_task={stored.current_task}",
    )
    if stored != worker:
        raise ExampleFailed(f"stored state differs from the worker's:\n{stored!r}\n{worker!r}")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tinytown-example-") as directory:
        town = await Town.start(directory, "example")
        try:
            say("town", f"{town.name!r} up at {town.url} (redis-server pid {town.pid})")
            worker = Agent.new("worker-1", "claude")
            async with await town.channel() as supervisor_channel, await town.channel() as worker_channel:
                working = asyncio.create_task(worker_loop(worker_channel, worker))
                await asyncio.sleep(0.05)  # let the worker block on its inbox first
                try:
                    await supervisor(supervisor_channel, worker)
                finally:
                    await working
        finally:
            await town.stop()
            say("town", "stopped (SHUTDOWN: snapshot written)")


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    print(f"tinytown example: a supervisor and a worker on one town ({args.loop} loop)")
    try:
        if args.loop == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()
        else:
            asyncio.run(main())
    except ExampleFailed as exc:
        print(f"example FAILED: {exc}", file=sys.stderr)
        return 1
    print("done: message sent, received, answered with correlation; state stored and read back")
    return 0


if __name__ == "__main__":
    sys.exit(run())
