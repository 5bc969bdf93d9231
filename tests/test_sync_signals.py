"""A signal whose handler raises, interrupting SyncChannel.receive at any
point, loses and duplicates nothing (issue 10, item 15)."""

from __future__ import annotations

import gc
import os
import itertools
import random
import signal
import threading
import time

import pytest

from channel_cases import msg, text_of
from tinytown import AgentId, SyncChannel

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
    the append (``map`` and ``list.extend`` are C), so that a signal handler
    cannot run there: what ``call`` returned is kept whenever it returned."""
    into.extend(map(call, *([a] for a in args)))


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
