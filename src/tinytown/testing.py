"""A pytest plugin for testing code that uses tinytown against a real Redis.

Installed with tinytown and loaded by pytest on its own (the ``pytest11``
entry point ``tinytown``; with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it
with ``-p tinytown.testing``). It gives three fixtures:

``town``          a :class:`tinytown.Town`: a throwaway ``redis-server`` on a
                  Unix socket in a fresh temporary directory, town name
                  ``"test"``, stopped and removed after the test. If the test
                  fails, the server's log is shown in the report (section
                  ``redis-server log``).
``channel``       an async :class:`tinytown.Channel` connected to ``town``,
                  closed after the test. An async fixture: the test needs an
                  asyncio test runner (pytest-asyncio, or anyio's plugin).
``sync_channel``  a :class:`tinytown.SyncChannel` connected to ``town``,
                  closed after the test; for plain ``def`` tests.

Every test gets its own server, so tests cannot see each other's data.
``redis-server`` (or ``valkey-server``, or ``$TINYTOWN_REDIS_SERVER``) must
be on ``PATH``; if it is missing, the fixture fails with
:class:`tinytown.ServerError` naming the install command.

Example::

    from tinytown import AgentId, Message, MessageType

    def test_task_reaches_the_worker(sync_channel):
        worker = AgentId.new()
        task = Message.new(AgentId.supervisor(), worker, MessageType.Task(description="build"))
        sync_channel.send(task)
        assert sync_channel.receive(worker, 1) == task
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from typing import Any, TypeVar

import pytest

from .channel import Channel
from .sync_channel import SyncChannel
from .town import Town

__all__ = ["TOWN_NAME", "channel", "sync_channel", "town"]

#: The town name of the ``town`` fixture (the ``<town>`` in ``tt:<town>:...`` keys).
TOWN_NAME = "test"
# Lines of redis.log put in the report of a failed test.
_LOG_LINES = 200

_T = TypeVar("_T")

try:  # pytest-asyncio in strict mode runs only async fixtures marked as its own
    from pytest_asyncio import fixture as _async_fixture
except ImportError:
    _async_fixture = pytest.fixture  # type: ignore[assignment]


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a loop of its own.

    Town's start and stop only wait on the server (which runs on its own),
    so they need no particular loop; a thread keeps asyncio.run away from a
    loop that a plugin may be running in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[_T] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name="tinytown.testing")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def town() -> Iterator[Town]:
    """A throwaway redis-server (Unix socket, temporary directory), stopped after the test."""
    # A short directory under the system's temp folder: a Unix socket path
    # has at most 107 bytes, which pytest's tmp_path may exceed.
    directory = tempfile.mkdtemp(prefix="tinytown-test-")
    try:
        started = _run(Town.start(directory, TOWN_NAME))
        try:
            yield started
        finally:
            _run(started.stop())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@_async_fixture
async def channel(town: Town) -> AsyncIterator[Channel]:
    """A :class:`tinytown.Channel` on ``town``, closed after the test."""
    opened = await Channel.connect(town.url, town=town.name)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def sync_channel(town: Town) -> Iterator[SyncChannel]:
    """A :class:`tinytown.SyncChannel` on ``town``, closed after the test."""
    opened = SyncChannel.connect(town.url, town=town.name)
    try:
        yield opened
    finally:
        opened.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Put the redis-server log of a failed test's town in its report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    used = getattr(item, "funcargs", {}).get("town")
    if not isinstance(used, Town):
        return
    try:
        with open(used.log_path, encoding="utf-8", errors="replace") as log:
            lines = log.read().splitlines()[-_LOG_LINES:]
    except OSError as exc:
        lines = [f"(cannot read {used.log_path}: {exc})"]
    report.sections.append((f"redis-server log ({used.log_path})", "\n".join(lines)))
