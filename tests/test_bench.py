"""`tinytown bench` (the main job) runs end to end and reports every row."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from tinytown.bench import Result, TlsFiles, render_instructions, render_table, tls_rows

# The Python peers are optional for `tinytown bench` (the `peers` extra): the
# project's test command installs them; a wheel's test run may not have them.
PEERS = tuple(name for name, module in (("redis_py", "redis"), ("glide", "glide"),
                                        ("coredis", "coredis"))
              if importlib.util.find_spec(module) is not None)


def test_bench_command_json_and_plot(tmp_path):
    chart = tmp_path / "latency.png"
    proc = subprocess.run(
        [sys.executable, "-m", "tinytown.bench", "--rounds", "1", "--per-round", "20",
         "--e2e-messages", "10", "--memory-pairs", "200", "--json", "--plot", str(chart)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"--json printed more than the JSON document:\n{proc.stdout[-3000:]}\n"
                    f"stderr:\n{proc.stderr[-3000:]}")
    names = [r["name"] for r in report["results"]]
    for expected in ["send", "try_receive", "receive (message waiting)", "inbox_len",
                     "set_agent_state", "get_agent_state", "set_task", "get_task", "broadcast",
                     "set_agent_state (hash layout)", "get_agent_state (hash layout)",
                     "send_urgent", "should_stop", "update_agent_heartbeat (hash layout)",
                     "docket_push", "docket_read (entry waiting)",
                     "sync set_agent_state (hash layout)", "sync docket_read (entry waiting)",
                     "100 coroutines, one Channel", "send_many(10000)",
                     "send -> receive, another process"]:
        assert expected in names
    send = report["results"][names.index("send")]
    assert send["tinytown"] > 0 and send["redis_py"] > 0 and send["c_client"] > 0
    assert send["ratio_redis_py"] == pytest.approx(send["tinytown"] / send["redis_py"])
    for peer in PEERS:  # every installed peer, latency and client CPU
        assert send[peer] > 0 and send["cpu"][peer] > 0
        assert send[f"cpu_ratio_{peer}"] == pytest.approx(send["cpu"]["tinytown"] / send["cpu"][peer])
    assert send["cpu"]["c_client"] > 0
    for name in ("set_agent_state (hash layout)", "update_agent_heartbeat (hash layout)",
                 "docket_push", "docket_read (entry waiting)", "should_stop", "send_urgent"):
        row = report["results"][names.index(name)]
        for peer in PEERS:
            assert row[peer] > 0, (name, peer)
    hash_set = report["results"][names.index("set_agent_state (hash layout)")]
    assert hash_set["c_client"] is None  # redis-benchmark cannot run MULTI ... EXEC
    docket_read = report["results"][names.index("docket_read (entry waiting)")]
    assert docket_read["c_client"] > 0
    # An entry was waiting for every read: no contender sat out its 1 s BLOCK.
    for peer in ("tinytown", "c_client", *PEERS):
        assert docket_read[peer] < 500e6, peer
    for row in ("100 coroutines, one Channel", "send_many(10000)"):
        rate = report["results"][names.index(row)]
        assert all(rate[peer] > 0 for peer in PEERS) and rate["cpu"]["tinytown"] > 0
    # The TLS rows: tinytown beside redis-py on the same rediss:// server (Debian's
    # redis-server, which CI uses, has TLS; a build without it is reported, below).
    assert report["tls"] == {"ran": True, "reason": None}, report["tls"]
    for name in ("send (TLS)", "send + receive (TLS)", "sync send (TLS)", "sync send + receive (TLS)"):
        row = report["results"][names.index(name)]
        assert row["tinytown"] > 0 and row["redis_py"] > 0, name
        assert row["cpu"]["tinytown"] > 0 and row["cpu"]["redis_py"] > 0, name
        assert row["ratio_redis_py"] == pytest.approx(row["tinytown"] / row["redis_py"])
        assert row["extra"]["tinytown_transport"] == "python"
    assert report["results"][names.index("send (TLS)")]["c_client"] > 0  # redis-benchmark --tls
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_tls_rows_that_cannot_run_say_why(tmp_path):
    """A redis-server that does not start with --tls-port gives no TLS rows and
    says why, in its own words (here: a certificate it cannot load)."""
    missing = tmp_path / "missing.pem"
    files = TlsFiles(ca=missing, cert=missing, key=missing)
    rows, why = await tls_rows(tmp_path, 1, 5, lambda label: None, files=files)
    assert rows == []
    assert why is not None and "did not start" in why and "certificate" in why, why


def test_table_marks_the_target_and_ratios():
    rows = [Result("send", "ns", 50_000, 90_000, redis_py=100_000, c_client=40_000, tcp=75_000),
            Result("slow", "ns", 150_000),
            Result("send_many(10000)", "ops/s", 800_000, redis_py=100_000, c_client=1_600_000)]
    table = render_table(rows)
    lines = table.splitlines()
    assert "met" in lines[2] and "0.50x" in lines[2] and "1.25x" in lines[2] and "1.50x" in lines[2]
    assert "missed" in lines[3]
    assert "800,000/s" in lines[4] and "8.00x" in lines[4] and "0.50x" in lines[4]


def test_bench_load_rows():
    proc = subprocess.run(
        [sys.executable, "-m", "tinytown.bench", "--rounds", "1", "--per-round", "5",
         "--e2e-messages", "5", "--no-tcp", "--no-tls", "--load", "--drain-sizes", "3000",
         "--large-counts", "2", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["name"]: r for r in report["results"]}
    # TLS rows left out are said to be left out, never dropped silently.
    assert report["tls"] == {"ran": False, "reason": "--no-tls"}
    assert "TLS rows not run: --no-tls" in proc.stderr
    assert not [name for name in rows if "TLS" in name]
    for name in ("drain 3,000 x 1 KB after a stall", "send_many 2 x 1 MB"):
        row = rows[name]
        assert row["unit"] == "s"
        assert row["tinytown"] > 0 and row["python_transport"] > 0 and row["redis_py"] > 0


# Few and short rounds: a bad argument that slipped through would run the
# whole bench before failing; these keep that failure short.
_QUICK = ["--rounds", "1", "--per-round", "5", "--e2e-messages", "5", "--no-tcp", "--no-tls"]


@pytest.mark.parametrize("bad, named", [
    (["--e2e-messages", "0"], "--e2e-messages"),
    (["--e2e-messages", "-3"], "--e2e-messages"),
    (["--memory-pairs", "-5"], "--memory-pairs"),
    (["--plot", "/nonexistent-tinytown-dir/latency.png"], "--plot"),
])
def test_bench_bad_arguments_exit_2_before_measuring(bad, named):
    """Bad usage exits 2 with one message naming the option, before anything is
    measured (no progress line), and prints nothing on stdout even with --json."""
    proc = subprocess.run(
        [sys.executable, "-m", "tinytown.bench", *_QUICK, *bad, "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert f"tinytown bench: error: {named}" in proc.stderr, proc.stderr[-2000:]
    assert not re.search(r"\[[#.]{30}\]", proc.stderr), proc.stderr[-2000:]  # a progress bar


def test_bench_callgrind_without_valgrind_fails_before_measuring(tmp_path):
    """--callgrind where valgrind is not installed: one line saying so, exit 1,
    at once (not after every other row was measured and then thrown away)."""
    import shutil

    server = shutil.which("redis-server") or shutil.which("valkey-server")
    assert server is not None
    # PATH holds only the interpreter's directory: no valgrind on it.
    env = {**os.environ, "NO_COLOR": "1", "PATH": os.path.dirname(sys.executable),
           "TINYTOWN_REDIS_SERVER": server}
    proc = subprocess.run([sys.executable, "-m", "tinytown.bench", *_QUICK, "--callgrind"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "tinytown bench: --callgrind needs valgrind (apt-get install valgrind)"], proc.stderr[-2000:]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_bench_stopped_by_sigterm_leaves_no_redis_server_behind():
    """`timeout`, CI cancelling a job or `kill` send SIGTERM: the bench's own
    redis-servers (Unix and TCP) must go with it, not run on as orphans."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytown.bench", "--rounds", "5", "--per-round", "300", "--no-tls"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    servers: list[int] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:        # measuring has started: both servers are up
            if "round" in line:
                break
        servers = [p for p in _children(proc.pid)
                   if "redis-server" in open(f"/proc/{p}/cmdline").read()]
        assert len(servers) == 2
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode != 0
        for _ in range(100):            # (reparented orphans need a moment to be reaped)
            alive = [p for p in servers if _running(p)]
            if not alive:
                break
            time.sleep(0.05)
        assert not alive, "redis-server left running after the bench was terminated"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in servers:             # the bench's own children, if it left them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_instruction_table():
    table = render_instructions({"hiredis C loop": 10_000, "tinytown SyncChannel": 25_000})
    lines = table.splitlines()
    assert "10.0 k" in lines[2] and "1.00x" in lines[2]
    assert "25.0 k" in lines[3] and "2.50x" in lines[3]


def _ratios_main(tmp_path, rows):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches"))
    try:
        import ratios
    finally:
        sys.path.pop(0)
    for target in ratios.targets():  # the rows' other targets met exactly
        for row in rows:
            if row["name"] == target.row:
                row[target.measure] = target.limit
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"benchmarks": [{"extra_info": r} for r in rows]}))
    return ratios.main([str(report), "--allow-missing"])


def test_ratios_hash_layout_target(tmp_path, capsys):
    """benches/ratios.py: hash-layout set_agent_state at most 1.3x the JSON layout's, same run."""
    rows = [{"name": "set_agent_state", "tinytown": 50_000.0},
            {"name": "set_agent_state (hash layout)", "tinytown": 60_000.0}]
    assert _ratios_main(tmp_path, rows) == 0
    assert "ok       set_agent_state, hash layout vs JSON layout: 1.20x" in capsys.readouterr().out
    rows[1]["tinytown"] = 70_000.0
    assert _ratios_main(tmp_path, rows) == 1
    assert "MISSED   set_agent_state, hash layout vs JSON layout: 1.40x" in capsys.readouterr().out
