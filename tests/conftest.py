"""Test harness: real redis-server fixtures and async tests on two event loops.

Fixtures (all synchronous; async tests open their own channels):

``redis_server``           session-scoped shared :class:`servers.RedisProcess`
                           (Unix socket, persistence off).
``redis_url``              function-scoped: FLUSHALL on the shared server, then
                           its URL (``unix:///.../redis.sock``).
``fresh_redis``            function-scoped private server (Unix socket), for
                           tests that kill, restart or reconfigure it.
``tcp_redis``              function-scoped private server on a free TCP port
                           of 127.0.0.1 (``.url`` is ``redis://127.0.0.1:N``).
``redis_server_factory``   function-scoped ``factory(*extra_args, tcp=False)``
                           starting more servers; all closed at test end.
``redis_cluster``          session-scoped :class:`servers.RedisCluster` on 127.0.0.1:
                           three masters with a replica each (started on first use).
``cluster_url``            function-scoped: the cluster healed (killed nodes
                           restarted), FLUSHALL on every master, then
                           ``redis+cluster://127.0.0.1:P1,...``.
``loop_kind``              ``"asyncio"`` or ``"uvloop"`` for async tests.

Every ``async def test_*`` is parametrized over ``loop_kind`` (ids
``[asyncio]`` and ``[uvloop]``) and run by :func:`pytest_pyfunc_call` on a new
loop of that kind, under a safety timeout (60 s; change it per test with
``@pytest.mark.async_timeout(seconds)``). No pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator

import pytest

from servers import RedisCluster, RedisProcess

LOOP_KINDS = ("asyncio", "uvloop")
# cluster-node-timeout of the shared cluster: long enough that a busy 2-core
# machine does not fail a master over by accident, short enough for the tests.
CLUSTER_NODE_TIMEOUT_MS = 2000
DEFAULT_ASYNC_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "async_timeout(seconds): safety timeout of an async test (default 60 s)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    # scripts/test.sh runs the suite once per transport (TINYTOWN_TRANSPORT).
    from tinytown._transport.choose import connection_class

    cls = connection_class()
    return f"tinytown transport: {cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------- event loops


def _is_async_test(obj: object) -> bool:
    return inspect.iscoroutinefunction(obj)


def _already_parametrized(metafunc: pytest.Metafunc) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "loop_kind" in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _is_async_test(metafunc.function) or _already_parametrized(metafunc):
        return
    if "loop_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("loop_kind")
    metafunc.parametrize("loop_kind", LOOP_KINDS, ids=list(LOOP_KINDS))


@pytest.fixture
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop kind an async test runs on (parametrized automatically)."""
    return getattr(request, "param", "asyncio")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the given kind ("asyncio" or "uvloop")."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        import uvloop  # a missing uvloop is an error: scripts/bootstrap.sh installs it

        return uvloop.new_event_loop()
    raise ValueError(f"unknown loop kind {kind!r}")


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        shutdown_executor = getattr(loop, "shutdown_default_executor", None)
        if shutdown_executor is not None:
            loop.run_until_complete(shutdown_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not _is_async_test(pyfuncitem.obj):
        return None
    funcargs = pyfuncitem.funcargs
    kind = funcargs.get("loop_kind", "asyncio")
    testargs = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker else DEFAULT_ASYNC_TIMEOUT

    loop = new_event_loop(kind)
    asyncio.set_event_loop(loop)
    try:
        coro = pyfuncitem.obj(**testargs)
        try:
            loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except asyncio.TimeoutError:
            pytest.fail(
                f"async test did not finish within its {timeout:g} s safety timeout "
                f"(loop: {kind})",
                pytrace=False,
            )
    finally:
        _finish_loop(loop)
    return True


# ------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One redis-server shared by the whole session (Unix socket, no persistence)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """URL of the shared server, FLUSHALLed just before the test."""
    if not redis_server.running:  # a test broke it: bring it back
        redis_server.restart()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def fresh_redis() -> Iterator[RedisProcess]:
    """A private redis-server (Unix socket) that the test may kill or restart."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tcp_redis() -> Iterator[RedisProcess]:
    """A private redis-server on a free TCP port of 127.0.0.1."""
    server = RedisProcess(tcp=True).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisProcess]]:
    """``factory(*extra_args, tcp=False)``: start more servers, closed at test end.

    ``extra_args`` go to redis-server's command line after the defaults, e.g.
    ``factory("--requirepass", "secret")`` or ``factory("--save", "60 1")``.
    """
    started: list[RedisProcess] = []

    def factory(*extra_args: str, tcp: bool = False) -> RedisProcess:
        server = RedisProcess(*extra_args, tcp=tcp)
        started.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in started:
            server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of three masters and three replicas, shared by the
    session (started on first use). A short node timeout keeps the failover
    tests short: a killed master is replaced in about 3 s."""
    cluster = RedisCluster(masters=3, replicas=1, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """URL of the shared cluster, whole again and every master FLUSHALLed
    just before the test."""
    if not redis_cluster.ready():  # a failover test left a node down or a replica syncing
        redis_cluster.heal()
    redis_cluster.flushall()
    return redis_cluster.url
