"""tinytown.Town: the managed local redis-server, against real redis-server processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from servers import resp_command
from tinytown.errors import InvalidArgumentError, ReplyError, ServerError, TinytownError
from tinytown.town import Town, validate_town_name


@pytest.fixture
def town_dir() -> Iterator[Path]:
    """A short temporary directory for a town; any server left in it is killed."""
    path = Path(tempfile.mkdtemp(prefix="tt-town-"))
    try:
        yield path
    finally:
        for pidfile in path.rglob("redis.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                if b"redis" in cmdline or b"valkey" in cmdline:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        shutil.rmtree(path, ignore_errors=True)


def raw(town: Town, *args: object) -> object:
    """A raw command on the town's socket, independent of tinytown."""
    return resp_command(str(town.socket_path), *args)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def wait_dead(pid: int, timeout: float = 10.0) -> None:
    """Wait for ``pid`` to exit; a liveness guard, not a speed check."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            pytest.fail(f"pid {pid} still alive after {timeout} s")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ lifecycle


async def test_start_and_stop(town_dir: Path) -> None:
    town = await Town.start(town_dir, "my-town")
    assert town.name == "my-town"
    assert town.directory == town_dir.absolute()
    assert town.socket_path == town_dir.absolute() / "redis.sock"
    assert town.url == f"unix://{town_dir.absolute()}/redis.sock"
    assert town.owns_server
    pid = town.pid
    assert isinstance(pid, int) and alive(pid)
    assert await town.ping()
    assert raw(town, "PING") == "PONG"
    # no TCP listener: port 0
    assert raw(town, "CONFIG", "GET", "port") == [b"port", b"0"]

    await town.stop()
    assert not alive(pid)
    assert town.pid is None
    assert not town.socket_path.exists()
    assert not await town.ping()
    await town.stop()  # idempotent
    with pytest.raises(ServerError):
        await town.channel()


async def test_directory_is_created_and_accepts_str(town_dir: Path) -> None:
    target = town_dir / "nested" / "town"
    town = await Town.start(str(target), "t")
    try:
        assert town.directory == target
        assert target.is_dir()
    finally:
        await town.stop()


async def test_pidfile_and_socket_permissions(town_dir: Path) -> None:
    town = await Town.start(town_dir, "perm")
    try:
        assert (town_dir / "redis.pid").read_text().strip() == str(town.pid)
        mode = stat.S_IMODE(os.stat(town.socket_path).st_mode)
        assert mode == 0o700, oct(mode)
        assert (town_dir / "redis.log").exists()
        assert raw(town, "CONFIG", "GET", "dir") == [b"dir", str(town_dir).encode()]
    finally:
        await town.stop()
    assert not (town_dir / "redis.pid").exists()


async def test_async_with_stops(town_dir: Path) -> None:
    async with await Town.start(town_dir, "ctx") as town:
        pid = town.pid
        assert pid is not None and alive(pid)
    assert not alive(pid)
    assert town.pid is None


async def test_keeps_default_snapshot_rules(town_dir: Path) -> None:
    async with await Town.start(town_dir, "rdb") as town:
        save = raw(town, "CONFIG", "GET", "save")
        assert isinstance(save, list) and save[1] != b"", save  # RDB not disabled
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]


# ------------------------------------------------------------------ reuse


async def test_reuses_live_server(town_dir: Path) -> None:
    first = await Town.start(town_dir, "shared")
    try:
        second = await Town.start(town_dir, "shared")
        assert not second.owns_server
        assert second.pid == first.pid
        assert second.url == first.url
        raw(first, "SET", "k", "v")
        await second.stop()  # does nothing to a reused server
        assert alive(first.pid)
        assert raw(first, "GET", "k") == b"v"
    finally:
        await first.stop()


async def test_concurrent_starts_share_one_server(town_dir: Path) -> None:
    towns = await asyncio.gather(*(Town.start(town_dir, "race") for _ in range(3)))
    try:
        assert sorted(t.owns_server for t in towns) == [False, False, True]
        assert len({t.pid for t in towns}) == 1
    finally:
        for town in towns:
            await town.stop()


async def test_stale_socket_file_is_removed(town_dir: Path) -> None:
    # a socket file nobody listens on, as a crashed server leaves behind
    stale = town_dir / "redis.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    assert stat.S_ISSOCK(os.lstat(stale).st_mode)
    async with await Town.start(town_dir, "stale") as town:
        assert town.owns_server
        assert await town.ping()


async def test_restart_after_crash(town_dir: Path) -> None:
    town = await Town.start(town_dir, "crash")
    pid = town.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_dead(pid)
    assert town.socket_path.exists()  # left behind by the crash
    again = await Town.start(town_dir, "crash")
    try:
        assert again.owns_server and again.pid != pid
        assert await again.ping()
    finally:
        await again.stop()
        await town.stop()  # its server is gone: nothing to do, no error


async def test_refuses_non_socket_file(town_dir: Path) -> None:
    (town_dir / "redis.sock").write_text("not a socket")
    with pytest.raises(ServerError, match="not a socket"):
        await Town.start(town_dir, "t")
    assert (town_dir / "redis.sock").read_text() == "not a socket"


async def test_socket_path_too_long() -> None:
    base = Path(tempfile.mkdtemp(prefix="tt-long-"))
    try:
        deep = base / ("d" * 120)
        with pytest.raises(ServerError, match="longer than"):
            await Town.start(deep, "t")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ binary


def test_find_server_binary_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINYTOWN_REDIS_SERVER", raising=False)
    found = Town.find_server_binary()
    assert os.path.basename(found) in ("redis-server", "valkey-server")
    assert os.access(found, os.X_OK)


def test_find_server_binary_env(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which("redis-server") or shutil.which("valkey-server")
    assert real
    monkeypatch.setenv("TINYTOWN_REDIS_SERVER", real)
    monkeypatch.setenv("PATH", "")
    assert Town.find_server_binary() == real


@pytest.mark.parametrize("env", ["/nonexistent/redis-server", None])
def test_binary_not_found(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("TINYTOWN_REDIS_SERVER", raising=False)
    else:
        monkeypatch.setenv("TINYTOWN_REDIS_SERVER", env)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ServerError) as info:
        Town.find_server_binary()
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install redis-server" in message
    if env:
        assert env in message


async def test_start_without_binary(town_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYTOWN_REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ServerError, match="apt-get install redis-server"):
        await Town.start(town_dir, "t")
    assert not (town_dir / "redis.sock").exists()


async def test_early_exit_reports_log(town_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = town_dir / "broken-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: cannot start, disk on fire' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TINYTOWN_REDIS_SERVER", str(fake))
    with pytest.raises(ServerError) as info:
        await Town.start(town_dir / "t", "t")
    assert "code 3" in str(info.value)
    assert "disk on fire" in str(info.value)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "name", ["", "a:b", "tt:x", "a*", "a?", "a[b", "a b", "tab\tname", "new\nline", " "]
)
async def test_bad_town_names(town_dir: Path, name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        await Town.start(town_dir, name)
    assert not (town_dir / "redis.sock").exists()


@pytest.mark.parametrize("name", [None, 3, b"bytes"])
def test_town_name_must_be_str(name: object) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_town_name(name)


async def test_one_town_name_rule_and_message(town_dir: Path, redis_url: str) -> None:
    # Town, TownKeys (every Channel) and the CLI apply the same rule and say the same.
    from tinytown import Channel
    from tinytown.keys import TownKeys

    messages = set()
    for attempt in (lambda: TownKeys("a b:c"), lambda: validate_town_name("a b:c")):
        with pytest.raises(InvalidArgumentError) as info:
            attempt()
        messages.add(str(info.value))
    with pytest.raises(InvalidArgumentError) as info:
        await Town.start(town_dir, "a b:c")
    messages.add(str(info.value))
    with pytest.raises(InvalidArgumentError) as info:
        await Channel.connect(redis_url, town="a b:c")
    messages.add(str(info.value))
    assert messages == {"invalid town name 'a b:c': it must not contain ' ' ':' "
                        "(':', '*', '?', '[' and whitespace are not allowed)"}
    with pytest.raises(InvalidArgumentError, match="^town name must be a str, not bytes$"):
        TownKeys(b"t")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="^town name must not be empty$"):
        TownKeys("")


@pytest.mark.parametrize("name", ["my-town", "town_1", "T.2", "ünïcödé", "a]b"])
def test_good_town_names(name: str) -> None:
    assert validate_town_name(name) == name


def test_errors_are_tinytown_errors() -> None:
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(ServerError, TinytownError)


# ------------------------------------------------------------------ persistence


async def test_configure_persistence(town_dir: Path) -> None:
    async with await Town.start(town_dir, "persist") as town:
        default_save = raw(town, "CONFIG", "GET", "save")
        await town.configure_persistence()  # nothing to change
        assert raw(town, "CONFIG", "GET", "save") == default_save

        await town.configure_persistence(save="60 1")
        assert raw(town, "CONFIG", "GET", "save") == [b"save", b"60 1"]
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]

        await town.configure_persistence(appendonly=True)
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
        assert raw(town, "CONFIG", "GET", "save") == [b"save", b"60 1"]
        info = raw(town, "INFO", "persistence")
        assert b"aof_rewrite_in_progress:0" in info

        await town.configure_persistence(save="", appendonly=False)
        assert raw(town, "CONFIG", "GET", "save") == [b"save", b""]
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]

        with pytest.raises(ReplyError):
            await town.configure_persistence(save="not numbers")
        with pytest.raises(InvalidArgumentError):
            await town.configure_persistence(appendonly="yes")  # type: ignore[arg-type]


async def test_stop_while_first_aof_is_written(town_dir: Path) -> None:
    # CONFIG SET appendonly yes starts an AOF rewrite during which Redis refuses
    # SHUTDOWN; stop() must retry rather than give up or kill it.
    town = await Town.start(town_dir, "aof")
    raw(town, "SET", "k", "v")
    raw(town, "CONFIG", "SET", "appendonly", "yes")
    await town.stop()
    async with await Town.start(town_dir, "aof") as again:
        assert raw(again, "GET", "k") == b"v"


async def test_snapshot_survives_stop_and_start(town_dir: Path) -> None:
    town = await Town.start(town_dir, "snap")
    raw(town, "SET", "tt:snap:probe", "42")
    await town.stop()  # SHUTDOWN saves with the default save rules
    assert (town_dir / "dump.rdb").exists()
    async with await Town.start(town_dir, "snap") as again:
        assert again.owns_server
        assert raw(again, "GET", "tt:snap:probe") == b"42"


async def test_aof_survives_crash(town_dir: Path) -> None:
    town = await Town.start(town_dir, "aof-crash")
    await town.configure_persistence(appendonly=True)
    raw(town, "SET", "written", "before the crash")
    assert town.pid is not None
    os.kill(town.pid, signal.SIGKILL)  # no snapshot written
    await wait_dead(town.pid)
    assert not (town_dir / "dump.rdb").exists()
    again = await Town.start(town_dir, "aof-crash")
    try:
        assert again.owns_server
        assert raw(again, "CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
        assert raw(again, "GET", "written") == b"before the crash"
    finally:
        await again.stop()
        await town.stop()  # its server is gone: only reaps the process


async def test_persistence_choices_remembered(town_dir: Path) -> None:
    async with await Town.start(town_dir, "remember") as town:
        await town.configure_persistence(save="60 1")
    assert json.loads((town_dir / "persistence.json").read_text()) == {"save": "60 1"}
    async with await Town.start(town_dir, "remember") as town:
        assert raw(town, "CONFIG", "GET", "save") == [b"save", b"60 1"]
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        await town.configure_persistence(appendonly=True)
        await town.configure_persistence(appendonly=False)
        with pytest.raises(ReplyError):
            await town.configure_persistence(save="bogus")
    assert json.loads((town_dir / "persistence.json").read_text()) == {
        "save": "60 1",
        "appendonly": False,
    }
    async with await Town.start(town_dir, "remember") as town:
        assert raw(town, "CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]


async def test_bad_persistence_file(town_dir: Path) -> None:
    (town_dir / "persistence.json").write_text('{"save": 60}')
    with pytest.raises(ServerError, match="persistence.json"):
        await Town.start(town_dir, "t")


# ------------------------------------------------------------------ channel


async def test_channel_for_town(town_dir: Path) -> None:
    from tinytown.channel import Channel

    async with await Town.start(town_dir, "chan") as town:
        channel = await town.channel()
        async with channel:
            assert isinstance(channel, Channel)
            assert await channel.execute("PING") in (b"PONG", "PONG")
            await channel.execute("SET", "via-channel", "1")
        assert raw(town, "GET", "via-channel") == b"1"


async def test_configure_persistence_seen_by_channel(town_dir: Path) -> None:
    async with await Town.start(town_dir, "cfg") as town:
        await town.configure_persistence(save="60 1", appendonly=True)
        async with await town.channel() as channel:
            assert await channel.execute("CONFIG", "GET", "save") == [b"save", b"60 1"]
            assert await channel.execute("CONFIG", "GET", "appendonly") == [
                b"appendonly",
                b"yes",
            ]


async def test_agent_state_recovered_from_rdb(town_dir: Path) -> None:
    from tinytown.agent import Agent

    town = await Town.start(town_dir, "recover")
    agent = Agent.new("worker-1", "claude")
    async with await town.channel() as channel:
        await channel.set_agent_state(agent)
    await town.stop()  # SHUTDOWN writes dump.rdb (default save rules)
    assert (town_dir / "dump.rdb").exists()

    again = await Town.start(town_dir, "recover")
    try:
        assert again.owns_server
        async with await again.channel() as channel:
            restored = await channel.get_agent_state(agent.id)
        assert restored == agent
    finally:
        await again.stop()
