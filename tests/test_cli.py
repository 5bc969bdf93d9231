"""The tinytown command, driven as a user would: subprocesses against real servers."""

from __future__ import annotations

import json
import os
import re
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from channel_cases import msg
from test_town import alive
from tinytown import Agent, AgentId, ConfirmationType, Message, MessageType, SyncChannel, Task
from tinytown.migrate import migrate_keys, plan_migration

SCRIPT = str(Path(sys.executable).parent / "tinytown")
MODULE = [sys.executable, "-m", "tinytown"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TINYTOWN_TOWN", "NO_COLOR")}
    env.update(extra)
    return env


def run(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
        script: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command; stdin is /dev/null unless ``input`` is given."""
    argv = ([SCRIPT] if script else MODULE) + list(args)
    return subprocess.run(argv, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed run: exactly one line, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def tt(redis_url):
    """``tt(*args)``: run the command on the shared server for town 'cli'."""
    def call(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return run("--url", redis_url, "--town", "cli", *args, **kwargs)
    return call


# ------------------------------------------------------------------ basics


COMMANDS = [[], ["server"], ["server", "start"], ["server", "stop"], ["server", "status"],
            ["send"], ["inbox"], ["peek"], ["state"], ["monitor"], ["migrate"], ["bench"]]


def test_help_on_every_command():
    procs = [(cmd, subprocess.Popen(MODULE + cmd + ["--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=_env()))
             for cmd in COMMANDS]
    for cmd, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (cmd, err)
        assert out.startswith("usage: tinytown" + "".join(" " + c for c in cmd)), (cmd, out[:200])
    # the installed script is the same command
    result = run("--help", script=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: tinytown")


@pytest.mark.parametrize("args", [
    [], ["nosuch"], ["server"], ["server", "restart"], ["--socket", "a", "--url", "unix:///b", "inbox"],
    ["send", "--type", "ping"], ["peek"], ["state", "agent"], ["state", "robot", "x"],
    ["send", "--to", "supervisor", "--type", "ping", "--priority", "asap"],
])
def test_usage_errors_exit_2_with_one_line(args):
    result = run(*args)
    assert result.returncode == 2
    assert "--help" in one_line_error(result)


def test_unreachable_server_fails_with_one_line(tmp_path):
    result = run("--socket", str(tmp_path / "redis.sock"), "--town", "t", "inbox")
    assert result.returncode == 1
    assert "cannot connect" in one_line_error(result)


# ------------------------------------------------------------ send and look


def test_send_inbox_peek_state(tt, redis_server):
    agent = Agent.new("worker-1", "claude")
    task = Task.new("Refactor the scheduler")
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_agent_state(agent)
        channel.set_task(task)

    sent = tt("send", "--to", agent.id, "--type", "task", "--description", "first", "--json")
    assert sent.returncode == 0, sent.stderr
    first = json.loads(sent.stdout)
    assert first["type"] == "task" and first["to"] == agent.id and first["priority"] == "normal"
    # by name, with priority and a field given with dashes
    assert tt("send", "--to", "worker-1", "--type", "task_assign", "--task-id", task.id,
              "--priority", "urgent").returncode == 0
    assert tt("send", "--to", agent.id, "--type", "custom", "--kind", "k", "--payload", '{"n": 1}',
              "--from", agent.id).returncode == 0
    other = AgentId.new()
    assert tt("send", "--to", other, "--type", "ping").returncode == 0

    listing = tt("inbox", "--json")
    assert listing.returncode == 0
    assert json.loads(listing.stdout) == {"town": "cli", "inboxes": sorted(
        [{"agent": agent.id, "name": "worker-1", "length": 3, "urgent": 0},
         {"agent": other, "name": None, "length": 1, "urgent": 0}], key=lambda d: d["agent"])}
    text = tt("inbox")
    assert agent.id in text.stdout and other in text.stdout
    header, *rows = text.stdout.splitlines()
    assert header.split() == ["NAME", "AGENT", "INBOX", "URGENT"]
    assert [r.split() for r in rows if agent.id in r] == [["worker-1", agent.id, "3", "0"]]
    assert tt("inbox", "worker-1").stdout.strip() == "3"
    one = json.loads(tt("inbox", agent.id, "--json").stdout)
    assert one == {"town": "cli", "agent": agent.id, "name": "worker-1", "length": 3, "urgent": 0}

    peek = tt("peek", "worker-1", "-n", "2", "--json")
    assert peek.returncode == 0
    shown = json.loads(peek.stdout)
    assert shown["length"] == 3 and shown["name"] == "worker-1"
    # the same shape as inbox --json: "length" the count, "messages" a list
    assert set(one) <= set(shown) and isinstance(shown["messages"], list)
    assert [m["type"] for m in shown["messages"]] == ["task_assign", "task"]  # urgent first
    assert shown["messages"][1] == first
    assert redis_server.command("LLEN", f"tt:cli:inbox:{agent.id}") == 3  # nothing removed
    text = tt("peek", agent.id)
    assert "task_assign" in text.stdout and "custom" in text.stdout and text.stdout.count("\n") == 4
    assert "from=worker-1" in text.stdout and "from=supervisor" in text.stdout  # names, not ids
    assert f"from={agent.id}" not in text.stdout

    got = tt("state", "agent", "worker-1")
    assert got.returncode == 0
    assert json.loads(got.stdout) == json.loads(agent.to_json())
    assert got.stdout.startswith("{\n  ")  # pretty
    assert json.loads(tt("state", "task", task.id, "--json").stdout) == json.loads(task.to_json())


def test_send_every_message_type(tt, redis_server):
    agent = AgentId.new()
    task_id = str(Task.new("x").id)
    cases = {
        ("task", "--description", "d"): MessageType.Task("d"),
        ("query", "--question", "q?"): MessageType.Query("q?"),
        ("informational", "--summary", "s"): MessageType.Informational("s"),
        ("confirmation", "--ack-type", "thanks"): MessageType.Confirmation(ConfirmationType.Thanks()),
        ("confirmation", "--ack-type", "rejected", "--reason", "no"): MessageType.Confirmation(
            ConfirmationType.Rejected("no")),
        ("task_assign", "--task-id", task_id): MessageType.TaskAssign(task_id),
        ("task-done", "--task-id", task_id, "--result", "ok"): MessageType.TaskDone(task_id, "ok"),
        ("task_failed", "--task-id", task_id, "--error", "boom"): MessageType.TaskFailed(task_id, "boom"),
        ("status_request",): MessageType.StatusRequest(),
        ("status_response", "--state", "idle"): MessageType.StatusResponse("idle"),
        ("status_response", "--state", "working", "--current-task", task_id):
            MessageType.StatusResponse("working", task_id),
        ("ping",): MessageType.Ping(),
        ("pong",): MessageType.Pong(),
        ("shutdown",): MessageType.Shutdown(),
        ("custom", "--kind", "k", "--payload", "p"): MessageType.Custom("k", "p"),
    }
    procs = [subprocess.Popen(MODULE + ["--url", redis_server.url, "--town", "cli", "send", "--to", agent,
                                        "--type", kind, *fields, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for kind, *fields in cases]
    for (key, expected), proc in zip(cases.items(), procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (key, err)
        assert Message.from_json(out).msg_type == expected, key


@pytest.mark.parametrize("args, needle", [
    (["--type", "task"], "--description"),
    (["--type", "task_done", "--task-id", "x"], "--result"),
    (["--type", "ping", "--description", "d"], "--description"),
    (["--type", "confirmation", "--ack-type", "rejected"], "--reason"),
    (["--type", "confirmation", "--ack-type", "thanks", "--reason", "r"], "--reason"),
    (["--type", "tsk", "--description", "d"], "unknown message type"),
    (["--type", "ping", "--correlation-id", "not-a-uuid"], "not a UUID"),
])
def test_send_usage_errors(tt, redis_server, args, needle):
    result = tt("send", "--to", str(AgentId.new()), *args)
    assert result.returncode == 2
    assert needle in one_line_error(result)
    assert redis_server.command("DBSIZE") == 0  # nothing sent


def test_agent_names_must_resolve_to_one_agent(tt, redis_server):
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_agent_state(Agent.new("twin", "claude"))
        channel.set_agent_state(Agent.new("twin", "codex"))
    for args in (["send", "--to", "twin", "--type", "ping"], ["inbox", "twin"], ["state", "agent", "nobody"]):
        result = tt(*args)
        assert result.returncode == 1
        assert "twin" in one_line_error(result) or "nobody" in result.stderr


def test_state_of_a_missing_agent_or_task_fails(tt):
    for kind in ("agent", "task"):
        result = tt("state", kind, str(AgentId.new()))
        assert result.returncode == 1
        assert "no " + kind in one_line_error(result)


def test_peek_shows_undecodable_messages(tt, redis_server):
    agent = AgentId.new()
    good = msg(agent, "good")
    redis_server.command("RPUSH", f"tt:cli:inbox:{agent}", b"\xffbroken", good.to_json())
    shown = json.loads(tt("peek", agent, "--json").stdout)
    assert shown["messages"][0] == {"undecodable": "\ufffdbroken"}
    assert Message.from_json(json.dumps(shown["messages"][1])) == good
    assert "undecodable" in tt("peek", agent).stdout


def test_town_defaults_to_env_then_directory_name(tcp_redis, tmp_path):
    """Without --town or $TINYTOWN_TOWN, a TCP URL's town is the current directory's name."""
    redis_server = tcp_redis
    agent = AgentId.new()
    town_dir = tmp_path / "hamlet"
    town_dir.mkdir()
    url = tcp_redis.url
    assert run("--url", url, "send", "--to", agent, "--type", "ping", cwd=town_dir).returncode == 0
    assert redis_server.command("LLEN", f"tt:hamlet:inbox:{agent}") == 1
    assert run("--url", url, "send", "--to", agent, "--type", "ping", cwd=town_dir,
               env=_env(TINYTOWN_TOWN="village")).returncode == 0
    assert redis_server.command("LLEN", f"tt:village:inbox:{agent}") == 1
    # options also after the command, and --town beats the environment
    assert run("inbox", agent, "--url", url, "--town", "hamlet",
               env=_env(TINYTOWN_TOWN="village")).stdout.strip() == "1"
    bad = tmp_path / "bad name"
    bad.mkdir()
    result = run("--url", url, "inbox", cwd=bad)
    assert result.returncode == 2 and "--town" in one_line_error(result)


def _run_on_pty(argv: list[str], env: dict[str, str], answer: str | None = None) -> tuple[int, str]:
    """Run with stdin and stdout on a pseudo-terminal; returns (status, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    if answer is not None:
        os.write(master, answer.encode())
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 4096)
        except OSError:     # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(30), b"".join(chunks).decode(errors="replace")


def test_colour_only_on_a_terminal_without_no_color(tt, redis_server):
    agent = AgentId.new()
    assert tt("send", "--to", agent, "--type", "ping", "--priority", "urgent").returncode == 0
    argv = MODULE + ["--url", redis_server.url, "--town", "cli", "peek", agent]
    status, shown = _run_on_pty(argv, _env())
    assert status == 0 and "\033[" in shown
    status, shown = _run_on_pty(argv, _env(NO_COLOR="1"))
    assert status == 0 and "ping" in shown and "\033[" not in shown
    assert "\033[" not in tt("peek", agent).stdout  # a pipe: no colour


# ------------------------------------------------------------------ monitor


def _start_monitor(url: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(MODULE + ["--url", url, "--town", "cli", "monitor", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    ready = proc.stderr.readline()  # printed once MONITOR is on
    assert "monitoring town 'cli'" in ready, ready + proc.stderr.read()
    return proc


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_monitor_shows_another_clients_traffic_then_stops(redis_url, redis_server, stop_signal):
    agent = Agent.new("watched", "claude")
    tricky = 'say "hi"\n\tnaïve ☃ \\o/'
    message = msg(agent.id, tricky)
    proc = _start_monitor(redis_server.url, "--json")
    try:
        with SyncChannel.connect(redis_server.url, town="other") as elsewhere:
            elsewhere.send(msg(agent.id, "not for this town"))
        # The json layout: SET and tt:broadcast (the monitor's view of the
        # hash layout, MULTI/HMSET and tt:<town>:broadcast, is the CLI's work).
        with SyncChannel.connect(redis_server.url, town="cli", layout="json") as channel:
            channel.send(message)
            channel.set_agent_state(agent)
            channel.broadcast(message)
            assert channel.try_receive(agent.id) == message
        events = [json.loads(proc.stdout.readline()) for _ in range(4)]
        proc.send_signal(stop_signal)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    assert [e["command"] for e in events] == ["RPUSH", "SET", "PUBLISH", "LPOP"]
    assert events[0]["key"] == f"tt:cli:inbox:{agent.id}"  # the full key, as everywhere
    for event in events:  # ISO 8601 in UTC, as the wire's timestamps
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["time"]), event
    assert Message.from_json(json.dumps(events[0]["message"])) == message  # decoded, escapes and all
    assert events[1]["state"]["name"] == "watched"
    assert events[2]["key"] == "tt:broadcast" and events[2]["message"]["description"] == tricky
    assert "not for this town" not in proc.stdout.read()
    assert "stopped" in proc.stderr.read()


def test_monitor_text_lines(redis_url, redis_server):
    agent = AgentId.new()
    proc = _start_monitor(redis_server.url)
    try:
        with SyncChannel.connect(redis_server.url, town="cli") as channel:
            channel.send(msg(agent, "hello there"))
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    assert f"RPUSH    tt:cli:inbox:{agent}" in line and 'description="hello there"' in line


# ------------------------------------------------------------------ migrate


def _old_layout(server) -> dict[str, object]:
    """Old keys (and decoys that must not move); returns what each old key held."""
    u1, u2 = str(AgentId.new()), str(AgentId.new())
    t1 = str(Task.new("t").id)
    server.command("SET", f"tt:agent:{u1}", "agent-json")
    server.command("RPUSH", f"tt:inbox:{u1}", "m1", "m2")
    server.command("RPUSH", f"tt:urgent:{u1}", "u1")
    server.command("SET", f"tt:task:{t1}", "task-json")
    server.command("RPUSH", f"tt:activity:{u1}", "a")
    server.command("SET", f"tt:stop:{u1}", "1")
    server.command("RPUSH", "tt:backlog", "b1", "b2")
    # a conflict: the new name exists already and must not be overwritten
    server.command("SET", f"tt:agent:{u2}", "old")
    server.command("SET", f"tt:cli:agent:{u2}", "new")
    # decoys: keys of a town named "agent", other towns, not-a-uuid suffixes
    for decoy in (f"tt:agent:inbox:{u1}", f"tt:other:agent:{u1}", "tt:agent:not-a-uuid", "tt:broadcastx"):
        server.command("SET", decoy, "decoy")
    return {"u1": u1, "u2": u2, "t1": t1}


def _keys(server) -> set[str]:
    return {k.decode() for k in server.command("KEYS", "*")}


def test_migrate_dry_run_force_and_idempotence(tt, redis_server):
    ids = _old_layout(redis_server)
    u1, u2, t1 = ids["u1"], ids["u2"], ids["t1"]
    before = _keys(redis_server)

    preview = tt("migrate", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr  # the preview succeeded, skips and all
    report = json.loads(preview.stdout)
    assert report["dry_run"] is True
    assert {m["old"] for m in report["moved"]} == {
        f"tt:agent:{u1}", f"tt:inbox:{u1}", f"tt:urgent:{u1}", f"tt:task:{t1}",
        f"tt:activity:{u1}", f"tt:stop:{u1}", "tt:backlog"}
    assert {m["new"] for m in report["moved"]} >= {f"tt:cli:inbox:{u1}", "tt:cli:backlog"}
    assert report["skipped"] == [{"old": f"tt:agent:{u2}", "new": f"tt:cli:agent:{u2}"}]
    assert _keys(redis_server) == before  # nothing changed
    text = tt("migrate", "--dry-run")
    assert text.returncode == 0 and "would move" in text.stdout and "would skip" in text.stdout

    refused = tt("migrate")  # stdin is not a terminal and no --force
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert _keys(redis_server) == before

    done = tt("migrate", "--force")
    assert done.returncode == 1, done.stderr  # one key skipped: not complete
    assert "moved 7 key(s), skipped 1" in done.stdout
    assert redis_server.command("LRANGE", f"tt:cli:inbox:{u1}", 0, -1) == [b"m1", b"m2"]
    assert redis_server.command("LRANGE", "tt:cli:backlog", 0, -1) == [b"b1", b"b2"]
    assert redis_server.command("GET", f"tt:cli:task:{t1}") == b"task-json"
    assert redis_server.command("GET", f"tt:cli:agent:{u2}") == b"new"  # not overwritten
    assert redis_server.command("GET", f"tt:agent:{u2}") == b"old"
    for decoy in (f"tt:agent:inbox:{u1}", f"tt:other:agent:{u1}", "tt:agent:not-a-uuid", "tt:broadcastx"):
        assert redis_server.command("GET", decoy) == b"decoy"

    again = tt("migrate", "--force", "--json")  # idempotent: only the conflict is left
    report = json.loads(again.stdout)
    assert (report["moved"], len(report["skipped"]), report["failed"]) == ([], 1, [])
    redis_server.command("DEL", f"tt:cli:agent:{u2}")
    assert tt("migrate", "--force").returncode == 0
    clean = tt("migrate")
    assert clean.returncode == 0 and "nothing to migrate" in clean.stdout


@pytest.mark.parametrize("answer, moved", [("n\n", False), ("y\n", True)])
def test_migrate_asks_on_a_terminal(redis_url, redis_server, answer, moved):
    agent = str(AgentId.new())
    redis_server.command("SET", f"tt:agent:{agent}", "x")
    status, shown = _run_on_pty(MODULE + ["--url", redis_server.url, "--town", "cli", "migrate"],
                                _env(), answer=answer)
    assert "[y/N]" in shown
    assert status == (0 if moved else 1)
    assert redis_server.command("EXISTS", f"tt:cli:agent:{agent}") == int(moved)
    assert redis_server.command("EXISTS", f"tt:agent:{agent}") == int(not moved)


def test_migrate_from_python(redis_url, redis_server):
    agent = str(AgentId.new())
    redis_server.command("SET", f"tt:agent:{agent}", "x")
    with SyncChannel.connect(redis_server.url, town="py") as channel:
        plan = plan_migration(channel)
        assert [str(m) for m in plan] == [f"tt:agent:{agent} -> tt:py:agent:{agent}"]
        redis_server.command("DEL", f"tt:agent:{agent}")  # gone between plan and move
        report = migrate_keys(channel, moves=plan)
    assert report.failed and "no such key" in report.failed[0][1]
    assert not report.complete


# ------------------------------------------------------------------ server


def test_server_start_status_stop(tmp_path):
    town = tmp_path / "burg"
    town.mkdir()
    pid = None
    try:
        started = run("server", "start", cwd=town)
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        # the command has exited; the server it started runs on
        status = run("server", "status", "--json", cwd=town)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        pid = report["pid"]
        assert report["running"] and report["town"] == "burg" and report["aof_enabled"] is False
        again = run("server", "start", cwd=town, script=True)
        assert again.returncode == 0 and "already running" in again.stdout
        assert run("send", "--to", "supervisor", "--type", "ping", cwd=town).returncode == 0
        assert run("inbox", "supervisor", cwd=town).stdout.strip() == "1"

        stopped = run("server", "stop", cwd=town)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stdout
        assert not alive(pid)
        pid = None
        down = run("server", "status", "--json", cwd=town)
        assert down.returncode == 1 and json.loads(down.stdout)["running"] is False
        assert run("server", "stop", cwd=town).returncode == 0  # nothing to stop is fine

        # state survived the stop (SHUTDOWN saves the snapshot); --aof turns on the AOF
        assert run("server", "start", "--aof", cwd=town).returncode == 0
        report = json.loads(run("server", "status", "--json", cwd=town).stdout)
        pid = report["pid"]
        assert report["aof_enabled"] is True and report["messages"] == 1
        assert run("server", "stop", "--socket", str(town / "redis.sock")).returncode == 0
        pid = None
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def test_server_commands_need_a_local_socket(tmp_path):
    result = run("--url", "redis://127.0.0.1:1", "--town", "t", "server", "start")
    assert result.returncode == 2 and "--socket" in one_line_error(result)
    result = run("--socket", str(tmp_path / "other.sock"), "--town", "t", "server", "stop")
    assert result.returncode == 2 and "redis.sock" in one_line_error(result)
    result = run("--socket", str(tmp_path / "redis.sock"), "--town", "t", "server", "status")
    assert result.returncode == 1 and "not running" in result.stdout


def test_bench_is_reachable():
    result = run("bench", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: tinytown bench")


def test_out_of_range_counts_and_empty_names_are_usage_errors(tt, redis_server):
    # Usage errors (exit status 2, one line), refused before any write.
    agent_id = "3f0c1a52-7d0e-4b8a-9c1d-2e5f6a7b8c9d"
    for args in (["peek", agent_id, "-n", "99999999999999999999"],
                 ["peek", agent_id, "-n", "9223372036854775808"],
                 ["events", "-n", "99999999999999999999"],
                 ["register", ""], ["register", "   "]):
        result = tt(*args)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        one_line_error(result)
    keys = redis_server.command("KEYS", "tt:cli:agent:*")
    names = [redis_server.command("HGET", k, "name") for k in keys
             if redis_server.command("TYPE", k) == "hash"]
    assert "" not in names and "   " not in names, names
