"""Choosing the transport: argument, TINYTOWN_TRANSPORT, automatic fallback; the
transport package's layering (futures is a leaf, no import cycle, distinct class names)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tinytown import (
    Channel,
    InvalidArgumentError,
    SyncChannel,
    TransportUnavailableError,
)
from tinytown._transport import choose, cluster, ext, futures, pyasync, pysync


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("TINYTOWN_TRANSPORT", raising=False)
    monkeypatch.setattr(choose, "_warned_fallback", False)


@pytest.mark.parametrize("name, cls", [("hiredis", ext.Connection),
                                       ("python", pyasync.PyConnection)])
async def test_explicit_transport(redis_url, no_env, name, cls):
    async with await Channel.connect(redis_url, town="t", transport=name) as channel:
        assert type(channel._conn) is cls
        assert await channel.execute("PING") == b"PONG"


async def test_environment_variable_and_argument_precedence(redis_url, no_env, monkeypatch):
    monkeypatch.setenv("TINYTOWN_TRANSPORT", "python")
    async with await Channel.connect(redis_url, town="t") as channel:
        assert type(channel._conn) is pyasync.PyConnection
    async with await Channel.connect(redis_url, town="t", transport="hiredis") as channel:
        assert type(channel._conn) is ext.Connection
    monkeypatch.setenv("TINYTOWN_TRANSPORT", "hiredis")
    async with await Channel.connect(redis_url, town="t") as channel:
        assert type(channel._conn) is ext.Connection


async def test_default_is_the_extension(redis_url, no_env):
    async with await Channel.connect(redis_url, town="t") as channel:
        assert type(channel._conn) is ext.Connection


async def test_unknown_names(redis_url, no_env, monkeypatch):
    with pytest.raises(InvalidArgumentError, match="'cython' is not a tinytown transport"):
        await Channel.connect(redis_url, town="t", transport="cython")
    monkeypatch.setenv("TINYTOWN_TRANSPORT", "fast")
    with pytest.raises(InvalidArgumentError, match="TINYTOWN_TRANSPORT='fast'"):
        await Channel.connect(redis_url, town="t")


async def test_falls_back_to_python_when_the_extension_cannot_load(redis_url, no_env, monkeypatch, caplog):
    # None in sys.modules makes `import tinytown._transport.ext` raise ImportError,
    # as a wheel whose libhiredis is missing would.
    monkeypatch.setitem(sys.modules, "tinytown._transport.ext", None)
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        async with await Channel.connect(redis_url, town="t") as channel:
            assert type(channel._conn) is pyasync.PyConnection
            assert await channel.execute("PING") == b"PONG"
    assert "using the pure-Python transport" in caplog.text
    with pytest.raises(TransportUnavailableError, match="'hiredis' cannot be loaded.*tinytown wheel"):
        await Channel.connect(redis_url, town="t", transport="hiredis")


async def test_no_transport_at_all_says_what_to_install(redis_url, no_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "tinytown._transport.ext", None)
    # and the hiredis package missing: pyasync's own import fails
    monkeypatch.delitem(sys.modules, "tinytown._transport.pyasync")
    monkeypatch.setitem(sys.modules, "hiredis", None)
    with pytest.raises(TransportUnavailableError, match=r"hiredis.*pip install 'tinytown\[python\]'") as info:
        await Channel.connect(redis_url, town="t")
    assert isinstance(info.value, ImportError)
    with pytest.raises(TransportUnavailableError, match=r"'python' cannot be loaded"):
        await Channel.connect(redis_url, town="t", transport="python")


# ---------------------------------------------------------------- SyncChannel


@pytest.mark.parametrize("name, cls", [("hiredis", ext.SyncConnection),
                                       ("python", pysync.PySyncConnection)])
def test_sync_explicit_transport(redis_url, no_env, name, cls):
    with SyncChannel.connect(redis_url, town="t", transport=name) as channel:
        assert type(channel._conn) is cls
        assert channel._conn.execute("PING") == b"PONG"


def test_sync_environment_variable_and_argument_precedence(redis_url, no_env, monkeypatch):
    monkeypatch.setenv("TINYTOWN_TRANSPORT", "python")
    with SyncChannel.connect(redis_url, town="t") as channel:
        assert type(channel._conn) is pysync.PySyncConnection
    with SyncChannel.connect(redis_url, town="t", transport="hiredis") as channel:
        assert type(channel._conn) is ext.SyncConnection
    monkeypatch.delenv("TINYTOWN_TRANSPORT")
    with SyncChannel.connect(redis_url, town="t") as channel:
        assert type(channel._conn) is ext.SyncConnection
    with pytest.raises(InvalidArgumentError, match="'cython' is not a tinytown transport"):
        SyncChannel.connect(redis_url, town="t", transport="cython")


async def test_one_fallback_warning_for_both_channel_kinds(redis_url, no_env, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tinytown._transport.ext", None)
    with caplog.at_level(logging.WARNING, logger="tinytown"):
        with SyncChannel.connect(redis_url, town="t") as sync_channel:
            assert type(sync_channel._conn) is pysync.PySyncConnection
            assert sync_channel._conn.execute("PING") == b"PONG"
        async with await Channel.connect(redis_url, town="t") as channel:
            assert type(channel._conn) is pyasync.PyConnection
    assert caplog.text.count("using the pure-Python transport") == 1
    with pytest.raises(TransportUnavailableError, match="'hiredis' cannot be loaded"):
        SyncChannel.connect(redis_url, town="t", transport="hiredis")


def test_python_sync_connection_has_the_extensions_interface():
    def public(cls):
        return {name for name in dir(cls()) if not name.startswith("_")}
    assert public(ext.SyncConnection) <= public(pysync.PySyncConnection)


@pytest.mark.parametrize("cls", [ext.SyncConnection, pysync.PySyncConnection])
def test_sync_connection_contract(redis_server, redis_url, cls):
    # The same calls and outcomes on both SyncConnections, directly.
    from tinytown import ConnectionError, ReplyError
    conn = cls()
    conn.connect_unix(redis_server.unix_path, 2.0)
    assert conn.execute("SET", "k", b"\x00\xff") == b"OK"
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        conn.execute_many([("GET", "k"), ("LPUSH", "k", 1), ("INCR", "n")])
    assert conn.execute("GET", "n") == b"1"          # every reply was read
    assert conn.execute_many([("GET", "k"), ("GET", "nope")]) == [b"\x00\xff", None]
    with pytest.raises(InvalidArgumentError):
        conn.execute("SET", "k", True)               # nothing sent, connection in step
    conn.send_command("BLPOP", "empty", 0.2)
    assert conn.pending_replies == 1
    with pytest.raises(TimeoutError):
        conn.read_reply(0.01)
    assert conn.read_reply(5) is None                # the BLPOP's nil, still in step
    assert conn.execute("PING") == b"PONG"
    assert conn.is_usable() and conn.fileno() >= 0 and not conn.is_closed
    conn.close()
    assert conn.is_closed and not conn.is_usable() and conn.fileno() == -1
    with pytest.raises(ConnectionError, match="closed"):
        conn.execute("PING")
    with pytest.raises(ConnectionError, match="cannot connect"):
        cls().connect_unix(redis_server.unix_path + ".missing", 1.0)


# ---------------------------------------------------------------- layering


def test_transport_modules_import_without_a_cycle():
    # futures is the leaf: the Python transports and the cluster router load
    # without the chooser (which loads them), and nothing loads the extension.
    code = (
        "import sys\n"
        "import tinytown._transport.futures\n"
        "assert not [m for m in sys.modules if m.startswith('tinytown._transport.')\n"
        "            and m != 'tinytown._transport.futures'], sorted(sys.modules)\n"
        "import tinytown._transport.pyasync, tinytown._transport.pysync, tinytown._transport.cluster\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tinytown._transport.'))\n"
        "assert 'tinytown._transport.choose' not in loaded, loaded\n"
        "assert 'tinytown._transport.ext' not in loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_each_connection_class_has_its_own_name():
    classes = [ext.Connection, ext.SyncConnection, ext.ReplyFuture, pyasync.PyConnection,
               pysync.PySyncConnection, futures.PyReplyFuture, cluster.ClusterConnection,
               choose.OpenConnection]
    names = [cls.__name__ for cls in classes]
    assert len(set(names)) == len(names), names
