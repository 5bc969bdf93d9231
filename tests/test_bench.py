"""`tinytown bench` (the main job) runs end to end and reports every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tinytown.bench import Result, render_instructions, render_table


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
    for peer in ("redis_py", "glide", "coredis"):  # every peer, latency and client CPU
        assert send[peer] > 0 and send["cpu"][peer] > 0
        assert send[f"cpu_ratio_{peer}"] == pytest.approx(send["cpu"]["tinytown"] / send["cpu"][peer])
    assert send["cpu"]["c_client"] > 0
    for name in ("set_agent_state (hash layout)", "update_agent_heartbeat (hash layout)",
                 "docket_push", "docket_read (entry waiting)", "should_stop", "send_urgent"):
        row = report["results"][names.index(name)]
        for peer in ("redis_py", "glide", "coredis"):
            assert row[peer] > 0, (name, peer)
    hash_set = report["results"][names.index("set_agent_state (hash layout)")]
    assert hash_set["c_client"] is None  # redis-benchmark cannot run MULTI ... EXEC
    docket_read = report["results"][names.index("docket_read (entry waiting)")]
    assert docket_read["c_client"] > 0
    # An entry was waiting for every read: no contender sat out its 1 s BLOCK.
    for peer in ("tinytown", "redis_py", "glide", "coredis", "c_client"):
        assert docket_read[peer] < 500e6, peer
    for row in ("100 coroutines, one Channel", "send_many(10000)"):
        rate = report["results"][names.index(row)]
        assert rate["glide"] > 0 and rate["coredis"] > 0 and rate["cpu"]["tinytown"] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
         "--e2e-messages", "5", "--no-tcp", "--load", "--drain-sizes", "3000",
         "--large-counts", "2", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
    for name in ("drain 3,000 x 1 KB after a stall", "send_many 2 x 1 MB"):
        row = rows[name]
        assert row["unit"] == "s"
        assert row["tinytown"] > 0 and row["python_transport"] > 0 and row["redis_py"] > 0


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
