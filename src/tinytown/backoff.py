"""Reconnecting with bounded exponential backoff.

When Redis goes away, every call in flight fails at once with
:class:`~tinytown.ConnectionError`; the calls that follow reconnect. Between
failed attempts they wait delays that grow exponentially up to a cap, each
shortened by a random fraction (jitter) so that many agents that lost the
same server do not knock on it in lockstep when it comes back.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ConnectionError, InvalidArgumentError

__all__ = ["Backoff"]

T = TypeVar("T")

# Seconds left to the one attempt a call makes when the backoff would put it
# past the call's deadline (a connection to a live server takes far less).
LAST_ATTEMPT = 0.05


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnect attempts: ``initial * multiplier**(n-1)`` after
    the n-th consecutive failure, capped at ``maximum``, each multiplied by a
    random factor in ``[1 - jitter, 1]``.

    The default waits about 50 ms, 100 ms, 200 ms ... and at most 2 s between
    attempts. A successful connection resets the sequence.
    """

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "multiplier", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgumentError(f"Backoff.{name} must be a finite number, not {value!r}")
        if not 0 < self.initial <= self.maximum:
            raise InvalidArgumentError(
                f"Backoff needs 0 < initial <= maximum, got initial={self.initial!r}, "
                f"maximum={self.maximum!r}")
        if self.multiplier < 1:
            raise InvalidArgumentError(f"Backoff.multiplier must be >= 1, not {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgumentError(f"Backoff.jitter must be between 0 and 1, not {self.jitter!r}")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (>= 1).

        ``rand`` returns a float in [0, 1) (the jitter). Raises nothing for an int
        ``failures``; below 1 counts as 1.
        """
        # The exponent is bounded so that the power cannot overflow a float;
        # the cap is reached long before.
        exponent = min(max(failures, 1) - 1, 1000)
        try:
            base = min(self.maximum, self.initial * self.multiplier ** exponent)
        except OverflowError:
            base = self.maximum
        return base * (1.0 - self.jitter * rand())


class ReconnectSchedule:
    """When a channel may try to connect again, shared by all its connections.

    Attempts that fail push the next one back along the :class:`Backoff`;
    concurrent callers that failed in the same round count as one failure, so
    a channel with many receivers does not grow its delay faster than one
    with a single connection.
    """

    def __init__(self, backoff: Backoff, loop: asyncio.AbstractEventLoop) -> None:
        self.backoff = backoff
        self._loop = loop
        self.failures = 0
        self._not_before = 0.0
        self._last_error: BaseException | None = None

    async def connect(self, attempt: Callable[[float], Awaitable[T]], deadline: float,
                      where: str) -> T:
        """``await attempt(timeout)`` until it succeeds, waiting out the backoff
        between failures; raise ConnectionError once ``deadline`` (loop time)
        leaves no room for another attempt.

        Every call makes at least one attempt: when the backoff would put it
        past the deadline, the attempt is made just before the deadline
        instead. So a call never fails without trying (the server may be back),
        and a loop of short calls is still paced by their own timeouts.
        """
        loop = self._loop
        attempted = False
        while True:
            now = loop.time()
            wait = self._not_before - now
            if wait > 0:
                if now + wait >= deadline:
                    if attempted:
                        raise self._give_up(where)
                    wait = max(0.0, deadline - now - LAST_ATTEMPT)
                await asyncio.sleep(wait)
                now = loop.time()
            elif attempted and now >= deadline:
                raise self._give_up(where)
            started = now
            attempted = True
            try:
                result = await attempt(max(deadline - now, LAST_ATTEMPT))
            except ConnectionError as exc:
                self._last_error = exc
                if self._not_before <= started:
                    # First failure of this round: schedule the next one.
                    self.failures += 1
                    self._not_before = loop.time() + self.backoff.delay(self.failures)
                continue
            self.failures = 0
            self._not_before = 0.0
            self._last_error = None
            return result

    def _give_up(self, where: str) -> ConnectionError:
        reason = f": {self._last_error}" if self._last_error is not None else ""
        return ConnectionError(
            f"Redis at {where} is unreachable ({self.failures} failed reconnect attempts){reason}")
