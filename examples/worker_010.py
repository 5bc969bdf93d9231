"""A Python worker in a Tinytown 0.10 town, using only documented calls.

The worker does what a Tinytown 0.10 worker does: it registers
(``set_agent_state``), heartbeats (``update_agent_heartbeat``), drains its
urgent inbox (``receive_urgent``), honours the stop flag (``should_stop``),
takes work from the docket (``docket_read`` / ``docket_ack``), logs activity
(``log_agent_activity``), emits events (``emit_event``), counts its rounds
and tasks (``increment_agent_rounds`` / ``increment_agent_tasks_completed``)
and exits when asked to stop. A supervisor on another channel pushes two
tasks on the docket, sends an urgent message, waits until both tasks are
done, asks the worker to stop (``request_stop``) and then checks every trace
the worker left: its stored state, activity log, event stream, the docket's
counters and the answer to the urgent message.

The town (keys in the hash layout of Tinytown 0.7-0.10, the default) runs on
a redis-server that the example starts in a temporary directory and stops at
the end. Run it with ``.venv/bin/python examples/worker_010.py [--loop uvloop]``
(``scripts/example.sh worker_010`` sets things up first). It exits non-zero
if any step does not happen as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

from tinytown import (
    Agent,
    AgentId,
    AgentState,
    Channel,
    EventType,
    Message,
    MessageType,
    TaskId,
    Town,
    TownEvent,
)

DEADLINE = 30.0          # seconds the whole example may take before it fails
POLL_MS = 200            # milliseconds a docket_read waits for an entry
T0 = time.perf_counter()


def say(who: str, text: str) -> None:
    elapsed = (time.perf_counter() - T0) * 1000
    print(f"[{elapsed:8.2f} ms] {who:<10} {text}", flush=True)


class ExampleFailed(Exception):
    pass


async def set_state(channel: Channel, agent_id: AgentId, state: AgentState) -> None:
    """Change the stored state only: read, modify, write (the counters and the
    heartbeat are updated in Redis, so a stale local copy must not be written)."""
    me = await channel.get_agent_state(agent_id)
    if me is None:
        raise ExampleFailed(f"agent {agent_id} has no stored state")
    me.state = state
    await channel.set_agent_state(me)


async def worker(channel: Channel, name: str, registered: asyncio.Event) -> AgentId:
    """The worker's loop; returns its id once it stopped."""
    me = Agent.new(name, "claude")
    me.state = AgentState.IDLE
    await channel.set_agent_state(me)                              # register
    await channel.emit_event(TownEvent.new(EventType.AGENT_SPAWNED, f"{name} joined",
                                           agent_id=me.id))
    await channel.docket_ensure_group()
    say(name, f"registered as {me.id} (hash layout), listening on the docket")
    registered.set()
    while not await channel.should_stop(me.id):                    # the stop flag
        await channel.update_agent_heartbeat(me.id)
        for urgent in await channel.receive_urgent(me.id):         # newest first
            say(name, f"<- urgent {urgent.msg_type!r}")
            await channel.log_agent_activity(me.id, f"urgent from {urgent.from_}")
            answer = Message.new(me.id, urgent.from_, MessageType.Pong()).with_correlation(urgent.id)
            await channel.send(answer)
        got = await channel.docket_read(name, POLL_MS)             # XREADGROUP ... BLOCK
        if got is not None:
            entry_id, fields = got
            task_id = TaskId(fields["task_id"])
            say(name, f"<- docket {entry_id}: {fields['message']!r}")
            await set_state(channel, me.id, AgentState.WORKING)
            await channel.log_agent_activity(me.id, f"working on {task_id}")
            await asyncio.sleep(0.01)  # the "work"
            await channel.docket_ack(entry_id)
            done = await channel.increment_agent_tasks_completed(me.id)
            await channel.emit_event(TownEvent.new(EventType.TASK_COMPLETED,
                                                   f"{name} finished {fields['message']}",
                                                   agent_id=me.id, task_id=task_id))
            await set_state(channel, me.id, AgentState.IDLE)
            say(name, f"-> acked {entry_id}; tasks_completed={done}")
        await channel.increment_agent_rounds(me.id)
    say(name, "stop requested: leaving")
    await channel.clear_stop(me.id)                                # a restart starts afresh
    await set_state(channel, me.id, AgentState.STOPPED)
    await channel.log_agent_activity(me.id, "stopped")
    await channel.emit_event(TownEvent.new(EventType.AGENT_STOPPED, f"{name} stopped",
                                           agent_id=me.id))
    return me.id


async def supervisor(channel: Channel, name: str, registered: asyncio.Event,
                     working: asyncio.Task[AgentId]) -> None:
    """Give the worker two tasks and an urgent message, stop it, check what it did."""
    me = AgentId.supervisor()
    await channel.docket_ensure_group()      # before the pushes: the group reads from '$'
    await registered.wait()
    worker_agent = await channel.get_agent_by_name(name)
    if worker_agent is None:
        raise ExampleFailed(f"{name} did not register")
    worker_id = worker_agent.id
    tasks = [TaskId.new(), TaskId.new()]
    for task_id, what in zip(tasks, ["count the files", "write the summary"]):
        entry = await channel.docket_push(task_id, what, "high", str(me), name)
        say("supervisor", f"-> docket {entry}: {what!r}")
    ping = Message.new(me, worker_id, MessageType.Ping())
    await channel.send_urgent(ping)
    say("supervisor", f"-> {name}: urgent ping")

    answer = await channel.receive(me, DEADLINE)
    if answer is None or answer.correlation_id != ping.id:
        raise ExampleFailed(f"no answer to the urgent ping: {answer!r}")
    say("supervisor", f"<- {name}: pong to the urgent ping")
    while (await channel.get_agent_state(worker_id)).tasks_completed < len(tasks):  # type: ignore[union-attr]
        if working.done():
            raise ExampleFailed(f"{name} left before finishing its tasks")
        await asyncio.sleep(0.05)
    await channel.request_stop(worker_id)                          # SETEX tt:<town>:stop:<id> 3600 1
    say("supervisor", f"-> {name}: stop")
    await working

    stored = await channel.get_agent_state(worker_id)
    if stored is None:
        raise ExampleFailed(f"{name}'s state is gone")
    say("supervisor", f"reads {name}: state={stored.state}, tasks_completed={stored.tasks_completed}, "
                      f"rounds_completed={stored.rounds_completed}")
    if stored.state != AgentState.STOPPED or stored.tasks_completed != len(tasks):
        raise ExampleFailed(f"unexpected state: {stored!r}")
    if stored.rounds_completed < len(tasks) or stored.last_heartbeat <= worker_agent.last_heartbeat:
        raise ExampleFailed(f"no rounds or no heartbeat recorded: {stored!r}")
    if await channel.should_stop(worker_id) or await channel.urgent_len(worker_id):
        raise ExampleFailed("the stop flag or the urgent inbox was left behind")
    if (await channel.docket_len(), await channel.docket_pending_count()) != (len(tasks), 0):
        raise ExampleFailed("the docket does not show two entries, both acked")
    activity = await channel.get_agent_activity_lines(worker_id, 10)
    say("supervisor", f"reads {name}'s activity, newest first: {activity}")
    expected = ["stopped", f"working on {tasks[1]}", f"working on {tasks[0]}"]  # newest first
    if [line for line in activity if line in expected] != expected or f"urgent from {me}" not in activity:
        raise ExampleFailed(f"activity log: {activity}")
    events = [event.event_type for _, event in await channel.read_agent_events(worker_id)]
    say("supervisor", f"reads {name}'s events: {[str(e) for e in events]}")
    if events != [EventType.AGENT_SPAWNED, EventType.TASK_COMPLETED, EventType.TASK_COMPLETED,
                  EventType.AGENT_STOPPED]:
        raise ExampleFailed(f"events: {events}")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tinytown-example-") as directory:
        town = await Town.start(directory, "example-010")
        try:
            say("town", f"{town.name!r} up at {town.url} (redis-server pid {town.pid})")
            async with await town.channel() as boss, await town.channel() as mine:
                registered = asyncio.Event()
                working = asyncio.create_task(worker(mine, "worker-1", registered))
                try:
                    await asyncio.wait_for(supervisor(boss, "worker-1", registered, working),
                                           DEADLINE)
                except asyncio.TimeoutError:
                    raise ExampleFailed(f"not done in {DEADLINE:g} s") from None
                finally:
                    if not working.done():
                        working.cancel()
                    await asyncio.gather(working, return_exceptions=True)
        finally:
            await town.stop()
            say("town", "stopped")


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    print(f"tinytown example: a 0.10 worker and its supervisor ({args.loop} loop)")
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
    print("done: registered, heartbeat, urgent inbox, docket, activity, events, counters, stop")
    return 0


if __name__ == "__main__":
    sys.exit(run())
