"""The test harness itself: real servers come and go, async tests really run."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servers import RedisProcess, RespError, resp_command

HERE = Path(__file__).resolve().parent


def test_shared_server_answers(redis_server: RedisProcess, redis_url: str) -> None:
    assert redis_server.ping()
    assert redis_url == redis_server.url
    assert redis_url.startswith("unix:///") and redis_url.endswith("/redis.sock")
    assert resp_command(redis_server.unix_path, "PING") == "PONG"
    mode = stat.S_IMODE(os.stat(redis_server.unix_path).st_mode)
    assert mode == 0o700


def test_redis_url_is_flushed_1(redis_server: RedisProcess, redis_url: str) -> None:
    # Whichever of these two tests runs second sees an empty database.
    assert redis_server.command("DBSIZE") == 0
    redis_server.command("SET", "harness:leftover", "1")


def test_redis_url_is_flushed_2(redis_server: RedisProcess, redis_url: str) -> None:
    assert redis_server.command("DBSIZE") == 0
    redis_server.command("SET", "harness:leftover", "1")


def test_error_reply_raises(redis_server: RedisProcess, redis_url: str) -> None:
    with pytest.raises(RespError, match="unknown command"):
        redis_server.command("NOSUCHCOMMAND")


def test_kill_then_restart(fresh_redis: RedisProcess) -> None:
    assert fresh_redis.ping()
    pid = fresh_redis.pid
    fresh_redis.kill()
    assert not fresh_redis.running
    assert not fresh_redis.ping()
    with pytest.raises(OSError):
        fresh_redis.command("PING")
    # the crash left its socket file behind; restart copes with that
    assert os.path.exists(fresh_redis.unix_path)
    fresh_redis.restart()
    assert fresh_redis.ping()
    assert fresh_redis.pid != pid


def test_restart_reuses_dir(fresh_redis: RedisProcess) -> None:
    fresh_redis.command("SET", "k", "v")
    fresh_redis.stop(save=True)
    assert (fresh_redis.dir / "dump.rdb").exists()
    fresh_redis.restart()
    assert fresh_redis.command("GET", "k") == b"v"
    # and NOSAVE really does not save
    fresh_redis.command("SET", "k", "changed")
    fresh_redis.restart(save=False)
    assert fresh_redis.command("GET", "k") == b"v"


def test_close_removes_everything() -> None:
    server = RedisProcess().start()
    pid, directory = server.pid, server.dir
    assert pid is not None and directory.is_dir()
    server.close()
    assert not server.running
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_tcp_server(tcp_redis: RedisProcess) -> None:
    assert tcp_redis.unix_path is None
    assert tcp_redis.port and tcp_redis.url == f"redis://127.0.0.1:{tcp_redis.port}"
    assert resp_command(("127.0.0.1", tcp_redis.port), "PING") == "PONG"
    tcp_redis.kill()
    tcp_redis.restart()
    assert resp_command(("127.0.0.1", tcp_redis.port), "PING") == "PONG"


def test_factory_extra_args(redis_server_factory) -> None:
    secured = redis_server_factory("--requirepass", "s3cret")
    with pytest.raises(RespError, match="NOAUTH"):
        resp_command(secured.unix_path, "GET", "x")
    assert secured.ping()  # NOAUTH still means "up"
    assert secured.command("PING") == "PONG"  # .command authenticates
    saving = redis_server_factory("--save", "60 1", "--appendonly", "yes")
    assert saving.command("CONFIG", "GET", "save") == [b"save", b"60 1"]
    assert saving.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
    assert secured.dir != saving.dir


def test_bad_args_fail_with_log(redis_server_factory) -> None:
    with pytest.raises(RuntimeError, match="exited with code"):
        redis_server_factory("--no-such-option", "1")


# ------------------------------------------------------------- event loops


async def test_async_runs_on_requested_loop(loop_kind: str) -> None:
    import uvloop

    loop = asyncio.get_running_loop()
    if loop_kind == "uvloop":
        assert isinstance(loop, uvloop.Loop)
    else:
        assert loop_kind == "asyncio"
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)
    await asyncio.sleep(0.01)


async def test_async_without_loop_kind_is_parametrized(request: pytest.FixtureRequest) -> None:
    assert request.node.callspec.params["loop_kind"] in ("asyncio", "uvloop")
    assert request.node.name.endswith(("[asyncio]", "[uvloop]"))


async def test_async_talks_to_redis(redis_server: RedisProcess, redis_url: str) -> None:
    reader, writer = await asyncio.open_unix_connection(redis_server.unix_path)
    writer.write(b"*1\r\n$4\r\nPING\r\n")
    assert await reader.readline() == b"+PONG\r\n"
    writer.close()
    await writer.wait_closed()


def test_sync_tests_are_not_parametrized(request: pytest.FixtureRequest) -> None:
    assert not hasattr(request.node, "callspec")


INNER_TESTS = '''
import asyncio
import pytest

async def test_passes():
    await asyncio.sleep(0)

async def test_fails():
    await asyncio.sleep(0)
    assert False, "inner failure"

@pytest.mark.async_timeout(0.3)
async def test_hangs():
    await asyncio.sleep(30)

@pytest.mark.parametrize("loop_kind", ["uvloop"])
async def test_only_uvloop(loop_kind):
    import uvloop
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)

def test_sync():
    pass
'''


def test_harness_can_fail(tmp_path: Path) -> None:
    """A failing or hanging async test really fails (the coroutine is awaited)."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(HERE / "servers.py", tmp_path / "servers.py")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
         "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    for name in ("test_passes[asyncio]", "test_passes[uvloop]",
                 "test_only_uvloop[uvloop]", "test_sync"):
        assert f"PASSED test_inner.py::{name}" in out, out
    for name in ("test_fails[asyncio]", "test_fails[uvloop]",
                 "test_hangs[asyncio]", "test_hangs[uvloop]"):
        assert f"FAILED test_inner.py::{name}" in out, out
    assert "safety timeout" in out
    assert "4 failed, 4 passed" in out, out
