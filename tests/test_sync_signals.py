"""A signal whose handler raises, interrupting SyncChannel.receive at any
point, loses and duplicates nothing (issue 10, item 15)."""

from __future__ import annotations

import gc
import itertools
import os
import random
import signal
import threading
import time
import uuid

import pytest
from channel_cases import msg, text_of

from tinytown import AgentId, SyncChannel, TaskId

# TT_SIGNAL_ROUNDS: more alarms for a longer soak.
ROUNDS = int(os.environ.get("TT_SIGNAL_ROUNDS", "300"))


class Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise Alarm()


@pytest.fixture
def sigalrm_raises():
    """SIGALRM raises Alarm. Python code that the interpreter runs on its own
    (gc callbacks, such as hypothesis's, and finalizers) reports a handler's
    exception as unraisable instead of propagating it: the collector is
    paused and its callbacks removed meanwhile."""
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    callbacks = gc.callbacks[:]
    gc.callbacks.clear()
    gc.disable()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        gc.enable()
        gc.callbacks.extend(callbacks)


def store_result(into: list, call, *args) -> None:
    """``into.append(call(*args))`` with no bytecode between the return and
    the append (``itertools.starmap`` and ``list.extend`` are C), so that a signal handler
    cannot run there: what ``call`` returned is kept whenever it returned."""
    into.extend(itertools.starmap(call, (args,)))


def test_interrupted_receives_lose_and_duplicate_nothing(redis_url, sigalrm_raises):
    """A sender keeps the inbox busy while the receiver loops on receive();
    an alarm interrupts the loop wherever it is, ROUNDS times (waiting on
    Redis, reading the reply, decoding it...). Every message sent is then
    either returned by a receive or still in the inbox, exactly once."""
    agent = AgentId.new()
    sent: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        with SyncChannel.connect(redis_url, town="alpha") as channel:
            for i in itertools.count():
                if stop.is_set():
                    return
                if i % 8 == 0:
                    time.sleep(0.0005)  # sometimes empty: receive waits in BLPOP
                text = f"m{i}"
                channel.send(msg(agent, text))
                sent.append(text)

    got: list = []
    swallowed = 0
    rng = random.Random(2)
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            for _ in range(ROUNDS):
                try:
                    # Inside the try: on a busy machine the alarm can go off
                    # as soon as setitimer returns.
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0002, 0.002))
                    for _ in range(200):  # far more than fit before the alarm
                        store_result(got, channel.receive, agent, 0.05)
                    swallowed += 1  # the alarm's exception never came out
                except Alarm:
                    pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            stop.set()
            thread.join()
        left = []
        while (m := channel.try_receive(agent)) is not None:
            left.append(text_of(m))
    received = [text_of(m) for m in got if m is not None]
    assert len(received) > ROUNDS  # the loop did receive between the alarms
    assert swallowed == 0
    assert sorted(received + left) == sorted(sent), "lost or duplicated"
    assert len(set(received + left)) == len(sent)


def _soak(redis_url, push, take, args, texts_of, drain_left, *, ordered: bool):
    """The storm above for another popping call: a sender thread ``push``es
    "m0", "m1"... while the main thread loops on ``SyncChannel.<take>(*args)``
    until an alarm interrupts it, ROUNDS times. Every text sent is then
    taken exactly once (``texts_of`` a result: its texts) or still there
    (``drain_left``) and, when ``ordered``, in the order sent."""
    sent: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        with SyncChannel.connect(redis_url, town="alpha") as channel:
            for i in itertools.count():
                if stop.is_set():
                    return
                if i % 8 == 0:
                    time.sleep(0.0005)
                text = f"m{i}"
                push(channel, text)
                sent.append(text)

    got: list = []
    swallowed = 0
    rng = random.Random(3)
    with SyncChannel.connect(redis_url, town="alpha") as channel:
        call = getattr(channel, take)
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            for _ in range(ROUNDS):
                try:
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0002, 0.002))
                    for _ in range(20000):  # far more than fit before the alarm
                        store_result(got, call, *args)
                    swallowed += 1
                except Alarm:
                    pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            stop.set()
            thread.join()
        left = drain_left(channel)
    taken = [text for result in got for text in texts_of(result)]
    assert len(taken) > ROUNDS
    assert swallowed == 0
    assert sorted(taken + left) == sorted(sent), "lost or duplicated"
    if ordered:
        assert taken + left == sent, "reordered"


def _texts(messages) -> list[str]:
    return [text_of(m) for m in messages if m is not None]


_A = [AgentId(f"6a8b7e64-4c1f-4a53-9d8e-0b1c2d3e4f5{i}") for i in range(3)]


def _task(text: str) -> TaskId:
    return TaskId(uuid.uuid5(uuid.NAMESPACE_OID, text))


_TASK_TEXT = {_task(f"m{i}"): f"m{i}" for i in range(200_000)}

POPS = {
    # name: (push, method, its args, texts of a result, drain what is left, FIFO)
    "try_receive": (lambda ch, text: ch.send(msg(_A[0], text)), "try_receive", (_A[0],),
                    lambda m: _texts([m]), lambda ch: _texts(ch.drain_inbox(_A[0])), True),
    "drain_inbox": (lambda ch, text: ch.send(msg(_A[1], text)), "drain_inbox", (_A[1],),
                    _texts, lambda ch: _texts(ch.drain_inbox(_A[1])), True),
    # newest first: the order taken is not the order sent
    "receive_urgent": (lambda ch, text: ch.send_urgent(msg(_A[2], text)), "receive_urgent", (_A[2],),
                       _texts, lambda ch: _texts(ch.receive_urgent(_A[2])), False),
    "backlog_pop": (lambda ch, text: ch.backlog_push(_task(text)), "backlog_pop", (),
                    lambda t: [_TASK_TEXT[t]] if t is not None else [],
                    lambda ch: [_TASK_TEXT[t] for t in ch.backlog_list()], True),
}


@pytest.mark.parametrize("op", sorted(POPS))
def test_interrupted_pops_lose_duplicate_and_reorder_nothing(redis_url, sigalrm_raises, op):
    """Every SyncChannel call that pops, under the storm of alarms of the
    test above (issue 10, item 15: "every call that pops")."""
    _soak(redis_url, *POPS[op][:5], ordered=POPS[op][5])
