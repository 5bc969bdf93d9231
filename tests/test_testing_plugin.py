"""tinytown.testing, the pytest plugin for users' own tests.

The first tests use its fixtures here, as the project's suite; the others
run pytest on example test files (pytester) as a user would, with the
plugin loaded by its ``pytest11`` entry point.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from channel_cases import msg, text_of
from tinytown import AgentId, SyncChannel, Town

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _user_ini(request: pytest.FixtureRequest) -> None:
    # A user's configuration for pytest-asyncio (which warns without it).
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester").makeini(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def test_town_is_a_running_server_in_a_temporary_directory(town: Town) -> None:
    assert town.owns_server and town.pid is not None
    assert town.socket_path.is_socket()
    assert town.name == "test"
    os.kill(town.pid, 0)   # alive


def test_sync_channel_fixture_round_trip(sync_channel: SyncChannel, town: Town) -> None:
    agent = AgentId.new()
    sync_channel.send(msg(agent, "hello"))
    assert sync_channel.inbox_len(agent) == 1
    assert text_of(sync_channel.receive(agent, 1)) == "hello"
    assert sync_channel.town == town.name


USER_TESTS = '''
import json, os, pytest
from tinytown import AgentId, Message, MessageType

SEEN = os.environ["SEEN_FILE"]

def record(town):
    with open(SEEN, "a") as f:
        f.write(json.dumps({"pid": town.pid, "dir": str(town.directory)}) + "\\n")

def test_sync(sync_channel, town):
    record(town)
    worker = AgentId.new()
    task = Message.new(AgentId.supervisor(), worker, MessageType.Task(description="build"))
    sync_channel.send(task)
    assert sync_channel.receive(worker, 1) == task
    sync_channel.execute("SET", "left-over", "1")

def test_each_test_has_its_own_server(sync_channel, town):
    record(town)
    assert sync_channel.execute("GET", "left-over") is None

@pytest.mark.asyncio
async def test_async(channel, town):
    record(town)
    worker = AgentId.new()
    task = Message.new(AgentId.supervisor(), worker, MessageType.Task(description="async"))
    await channel.send(task)
    assert await channel.receive(worker, 1) == task
'''


def test_plugin_fixtures_in_a_users_tests(pytester: pytest.Pytester, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("SEEN_FILE", str(seen))
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=3)
    import json
    towns = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(towns) == 3
    assert len({t["pid"] for t in towns}) == 3, "each test gets its own server"
    for t in towns:
        assert not Path(t["dir"]).exists(), "the town's directory is removed after the test"
        with pytest.raises(ProcessLookupError):
            os.kill(t["pid"], 0)


def test_a_failing_test_shows_the_server_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user='''
def test_fails(sync_channel):
    sync_channel.execute("SET", "k", "v")
    assert False, "the user's assertion"

def test_passes(sync_channel):
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*the user's assertion*",
        "*redis-server log (*redis.log)*",
        "*accept connections*",
    ])
    assert result.stdout.str().count("redis-server log") == 1, "only the failed test's log"


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(town): pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    result.stdout.fnmatch_lines(["*town*", "*sync_channel*", "*tinytown*testing*"])
