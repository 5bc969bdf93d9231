"""The tinytown command as an operator meets it (issue 13) and its 0.10 commands
(issue 9): subprocesses and a pseudo-terminal against real redis-servers."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import MODULE, _env, _run_on_pty, one_line_error, run, tt  # noqa: F401 - tt is a fixture
from test_town import alive
from tinytown import Agent, AgentId, Message, MessageType, SyncChannel, Task, Town
from tinytown import ConnectionError as TTConnectionError
from tinytown import cli

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "wire" / "tinytown-0.10"
if not GOLDEN.is_dir():  # the worktree layout: ../shared/wire beside the checkout
    GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "wire" / "tinytown-0.10"


def _kill(pid: int | None) -> None:
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def _status(cwd: Path) -> dict:
    return json.loads(run("server", "status", "--json", cwd=cwd).stdout)


# ------------------------------------------------------------ 1. the right town


def test_town_start_records_the_name_and_the_cli_takes_it(tmp_path):
    """The README's Town.start("./town", "my-town"), then `cd town && tinytown ...`."""
    town = asyncio.run(Town.start(tmp_path / "town", "my-town"))
    try:
        assert json.loads((tmp_path / "town" / "town.json").read_text()) == {"name": "my-town"}
        agent = AgentId.new()
        sent = run("send", "--to", agent, "--type", "ping", cwd=tmp_path / "town")
        assert sent.returncode == 0, sent.stderr
        assert "town 'my-town'" in sent.stdout
        # from elsewhere, by socket: the socket's town, not the current directory's name
        elsewhere = tmp_path / "x"
        elsewhere.mkdir()
        assert run("--socket", "../town/redis.sock", "send", "--to", agent, "--type", "ping",
                   cwd=elsewhere).returncode == 0
        with SyncChannel.connect(town.url, town="my-town") as channel:
            assert channel.inbox_len(agent) == 2
            assert channel.execute("EXISTS", f"tt:x:inbox:{agent}") == 0
        # a second start with another name keeps the recorded one
        asyncio.run(Town.start(tmp_path / "town", "other"))
        assert json.loads((tmp_path / "town" / "town.json").read_text()) == {"name": "my-town"}
        # --town still wins
        assert run("--town", "other", "inbox", agent, cwd=tmp_path / "town").stdout.strip() == "0"
    finally:
        asyncio.run(town.stop())


def test_without_a_record_the_town_is_the_sockets_directory_name(redis_url, redis_server, tmp_path):
    agent = AgentId.new()
    cwd = tmp_path / "hamlet"
    cwd.mkdir()
    assert run("--url", redis_url, "send", "--to", agent, "--type", "ping", cwd=cwd).returncode == 0
    socket_town = Path(redis_server.unix_path).parent.name
    assert redis_server.command("LLEN", f"tt:{socket_town}:inbox:{agent}") == 1
    assert redis_server.command("EXISTS", f"tt:hamlet:inbox:{agent}") == 0


def test_a_bad_town_file_is_named(tmp_path):
    (tmp_path / "town.json").write_text("{not json")
    result = run("--socket", str(tmp_path / "redis.sock"), "inbox")
    assert result.returncode == 1
    assert "town.json" in one_line_error(result) and "fix or delete" in result.stderr


def test_warns_when_the_town_is_empty_but_another_is_not(tt, redis_server):
    with SyncChannel.connect(redis_server.url, town="real") as channel:
        channel.send(Message.new(AgentId.supervisor(), AgentId.new(), MessageType.Ping()))
    ghost = tt("inbox")          # town "cli": nothing there
    assert ghost.returncode == 0
    warning = one_line_error(ghost)
    assert "warning" in warning and "'real'" in warning and "--town real" in warning
    assert "(from --town)" in warning
    # a town with keys: no warning
    real = run("--url", redis_server.url, "--town", "real", "inbox")
    assert real.returncode == 0 and real.stderr == ""


def test_warns_about_old_layout_keys(tt, redis_server):
    redis_server.command("SET", f"tt:agent:{AgentId.new()}", "{}")
    result = tt("agents")
    assert result.returncode == 0
    assert "tinytown migrate --dry-run" in one_line_error(result)


# ------------------------------------------------------------ 2. --socket typos


def test_server_start_refuses_a_missing_directory_unless_create(tmp_path):
    target = tmp_path / "nope"
    result = run("--socket", str(target / "redis.sock"), "server", "start")
    assert result.returncode == 2
    assert "--create" in one_line_error(result) and str(target) in result.stderr
    assert not target.exists()
    pid = None
    try:
        made = run("--socket", str(target / "redis.sock"), "server", "start", "--create", "--no-aof")
        assert made.returncode == 0, made.stderr
        assert "append-only off" in made.stdout
        pid = _status(target)["pid"]
        assert json.loads((target / "town.json").read_text()) == {"name": "nope"}
        assert json.loads((target / "persistence.json").read_text())["appendonly"] is False
        other = run("--town", "other", "server", "start", cwd=target)
        assert other.returncode == 0 and "already running" in other.stdout
        assert "records town 'nope'" in one_line_error(other)       # the record stays
        assert json.loads((target / "town.json").read_text()) == {"name": "nope"}
        assert run("server", "stop", cwd=target).returncode == 0
        pid = None
    finally:
        _kill(pid)


# ------------------------------------------------------------ 3. names


def test_register_agents_stop_and_names_everywhere(tt, redis_server):
    assert "no agents registered" in tt("agents").stdout
    registered = tt("register", "worker-1", "--json")
    assert registered.returncode == 0, registered.stderr
    worker = json.loads(registered.stdout)
    assert worker["name"] == "worker-1" and worker["state"] == "starting"
    again = tt("register", "worker-1")
    assert again.returncode == 1 and "already has an agent named 'worker-1'" in one_line_error(again)

    sent = tt("send", "--to", "worker-1", "--type", "task", "--description", "Fix the build")
    assert sent.returncode == 0, sent.stderr
    assert f"to worker-1 ({worker['id']})" in sent.stdout
    reply = tt("send", "--to", "supervisor", "--from", "worker-1", "--type", "pong")
    assert reply.returncode == 0
    assert "from=worker-1" in tt("peek", "supervisor").stdout

    stop = tt("stop", "worker-1")
    assert stop.returncode == 0 and "asked worker-1" in stop.stdout
    assert redis_server.command("GET", f"tt:cli:stop:{worker['id']}") == b"1"
    assert 3590 < redis_server.command("TTL", f"tt:cli:stop:{worker['id']}") <= 3600

    listing = tt("agents")
    header, row, *rest = listing.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "STATE", "INBOX", "URGENT", "STOP", "HEARTBEAT"]
    assert row.split()[:6] == ["worker-1", worker["id"], "starting", "1", "0", "requested"]
    assert re.fullmatch(r"\d+[smhd] ago", " ".join(row.split()[6:]))
    assert "1 inbox(es) of unregistered agents" in rest[0]   # the supervisor's
    data = json.loads(tt("agents", "--json").stdout)
    assert [(a["name"], a["id"], a["inbox"], a["urgent"], a["stop_requested"]) for a in data["agents"]] \
        == [("worker-1", worker["id"], 1, 0, True)]
    assert data["unregistered_inboxes"] == [
        {"agent": "00000000-0000-0000-0000-000000000001", "length": 1, "urgent": 0}]

    cleared = tt("stop", "worker-1", "--clear", "--json")
    assert json.loads(cleared.stdout)["stop_requested"] is False
    assert redis_server.command("EXISTS", f"tt:cli:stop:{worker['id']}") == 0
    missing = tt("stop", "worker-9")
    assert missing.returncode == 1
    assert "'tinytown agents'" in one_line_error(missing) and "register worker-9" in missing.stderr


def test_agents_in_the_hash_layout_and_a_stray_key(tt, redis_server):
    hashed = Agent.new("hashed", "codex")
    pairs = [x for kv in hashed.to_hash().items() for x in kv]
    redis_server.command("HSET", f"tt:cli:agent:{hashed.id}", *pairs)
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_agent_state(Agent.new("jsoned", "claude"))
    stray = f"tt:cli:agent:{AgentId.new()}"
    redis_server.command("RPUSH", stray, "not state")   # a stray list
    result = tt("agents", "--json")
    assert result.returncode == 0, result.stderr
    assert [a["name"] for a in json.loads(result.stdout)["agents"]] == ["hashed", "jsoned"]
    assert stray in one_line_error(result)     # skipped, with one line saying so
    assert tt("inbox", "hashed").returncode == 0


class CountingConnection:
    """Wraps a channel's real connection and counts its round trips."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.round_trips = 0

    def execute(self, *args):
        self.round_trips += 1
        return self.conn.execute(*args)

    def execute_many(self, commands, replies=True):
        self.round_trips += 1
        return self.conn.execute_many(commands, replies)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_resolving_a_name_among_5000_agents_is_batched(redis_url, redis_server):
    agents = [Agent.new(f"agent-{i}", "claude") for i in range(5000)]
    pairs = [x for a in agents for x in (f"tt:cli:agent:{a.id}", a.to_json())]
    redis_server.command("MSET", *pairs)
    with SyncChannel.connect(redis_url, town="cli") as channel:
        counter = channel._conn = CountingConnection(channel._conn)
        found = cli.AgentBook(channel).resolve("agent-4321")
        trips = counter.round_trips
    assert found == agents[4321].id
    # SCAN pages plus pipelined reads: dozens of round trips, not one per key (5,000+)
    assert 0 < trips <= 125, trips
    result = run("--url", redis_url, "--town", "cli", "send", "--to", "agent-17", "--type", "ping")
    assert result.returncode == 0 and f"to agent-17 ({agents[17].id})" in result.stdout


# ------------------------------------------------------------ 4. errors that say what to do


def test_server_down_names_the_next_step(tmp_path):
    result = run("inbox", cwd=tmp_path)
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"unix://{tmp_path}/redis.sock" in line and "'tinytown server start'" in line
    other = run("--socket", str(tmp_path / "redis.sock"), "agents")
    assert f"'tinytown --socket {tmp_path}/redis.sock server start'" in one_line_error(other)
    nodir = run("--socket", str(tmp_path / "typo" / "redis.sock"), "agents")
    assert "there is no directory" in one_line_error(nodir) and "--create" in nodir.stderr
    tcp = run("--url", "redis://127.0.0.1:1", "--town", "t", "agents")
    assert "is redis-server running there" in one_line_error(tcp)


def test_server_status_after_kill_9_names_the_stale_files(tmp_path):
    town = tmp_path / "burg"
    town.mkdir()
    pid = None
    try:
        assert run("server", "start", cwd=town).returncode == 0
        pid = _status(town)["pid"]
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            pass
        status = run("server", "status", cwd=town)
        assert status.returncode == 1
        assert "not running" in status.stdout
        assert f"{town}/redis.pid (pid {pid}, not running)" in status.stdout
        assert f"{town}/redis.sock" in status.stdout and "'tinytown server start' removes them" in status.stdout
        report = _status(town)
        assert report["stale_pid"] == pid and report["stale_socket"] == str(town / "redis.sock")
        restarted = run("server", "start", cwd=town)
        assert restarted.returncode == 0 and "started" in restarted.stdout
        pid = _status(town)["pid"]
        assert run("server", "stop", cwd=town).returncode == 0
        pid = None
        clean = run("server", "status", cwd=town)
        assert "left" not in clean.stdout and "start it with 'tinytown server start'" in clean.stdout
    finally:
        _kill(pid)


def test_connection_error_is_also_the_builtin_one(tmp_path):
    assert issubclass(TTConnectionError, builtins.ConnectionError)
    assert issubclass(TTConnectionError, OSError)
    with pytest.raises(builtins.ConnectionError) as caught:
        SyncChannel.connect(f"unix://{tmp_path}/redis.sock", town="t", connect_timeout=1.0)
    assert type(caught.value) is TTConnectionError

    async def connect() -> None:
        from tinytown import Channel
        await Channel.connect(f"unix://{tmp_path}/redis.sock", town="t", connect_timeout=1.0)

    with pytest.raises(builtins.ConnectionError):      # Channel.connect too, at once
        asyncio.run(connect())


# ------------------------------------------------------------ 5. consistent output


def test_version():
    result = run("--version")
    assert result.returncode == 0 and re.fullmatch(r"tinytown \d+\.\d+\.\d+\S*\n", result.stdout)


def test_enum_options_take_any_case(tt, redis_server):
    agent = AgentId.new()
    sent = tt("send", "--to", agent, "--type", "Task", "--description", "d", "--priority", "HIGH", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["priority"] == "high"
    assert tt("send", "--to", agent, "--type", "confirmation", "--ack-type", "Thanks").returncode == 0
    assert tt("state", "TASK", str(Task.new("x").id)).returncode == 1   # accepted, then not found


def test_task_ids_take_a_unique_prefix_in_state_and_send(tt, redis_server):
    task = Task.new("Refactor the scheduler")
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_task(task)
        while True:   # a second task sharing no 4-digit prefix with the first
            other = Task.new("other")
            if str(other.id)[:4] != str(task.id)[:4]:
                break
        channel.set_task(other)
    short = str(task.id)[:4]
    state = tt("state", "task", short)
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["id"] == task.id
    sent = tt("send", "--to", "supervisor", "--type", "task_assign", "--task-id", short, "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["task_id"] == task.id          # the full id is sent
    # refused alike by both, with the same next step
    unknown = "ffff" if not str(task.id).startswith("ffff") and not str(other.id).startswith("ffff") else "eeee"
    for args in (["state", "task", unknown],
                 ["send", "--to", "supervisor", "--type", "task_assign", "--task-id", unknown]):
        result = tt(*args)
        assert result.returncode == 1
        assert f"no task in town 'cli' has an id starting with '{unknown}'" in one_line_error(result)
        assert "'tinytown tasks'" in result.stderr
    bad = tt("state", "task", "not-hex!")
    assert bad.returncode == 1 and "is not a task id" in one_line_error(bad)
    assert redis_server.command("LLEN", "tt:cli:inbox:00000000-0000-0000-0000-000000000001") == 1


def test_colour_codes_never_cross_a_newline(tt, redis_server):
    agent = AgentId.new()
    assert tt("send", "--to", agent, "--type", "confirmation", "--ack-type", "rejected",
              "--reason", "line one\nline two", "--priority", "high").returncode == 0
    assert tt("send", "--to", agent, "--type", "task", "--description", "x", "--priority", "low").returncode == 0
    for argv in (["peek", agent], ["inbox"], ["agents"]):
        status, shown = _run_on_pty(MODULE + ["--url", redis_server.url, "--town", "cli", *argv], _env())
        assert status == 0 and "\033[" in shown, shown
        for line in shown.split("\r\n"):
            opened = len(re.findall(r"\033\[[1-9][0-9]*m", line))
            assert opened == line.count("\033[0m"), repr(line)   # every span closed on its line


def test_send_help_explains_priorities_and_urgent():
    text = run("send", "--help").stdout
    flat = " ".join(text.split())
    assert "NEWEST front message is taken first" in flat
    assert "an urgent message sent before a high one is taken after it" in flat
    assert "--urgent" in text and "tt:<town>:urgent:<agent>" in text


def test_send_urgent_goes_to_the_urgent_inbox(tt, redis_server):
    agent = AgentId.new()
    assert tt("send", "--to", agent, "--type", "ping", "--urgent").returncode == 0
    sent = tt("send", "--to", agent, "--type", "task", "--description", "now", "--urgent")
    assert sent.returncode == 0 and "urgent inbox; 2 waiting" in sent.stdout
    raw = redis_server.command("LRANGE", f"tt:cli:urgent:{agent}", 0, -1)
    assert [Message.from_json(r).msg_type.tag for r in raw] == ["task", "ping"]   # LPUSH: newest first
    assert redis_server.command("EXISTS", f"tt:cli:inbox:{agent}") == 0
    assert tt("inbox", agent, "--urgent").stdout.strip() == "2"
    peek = json.loads(tt("peek", agent, "--urgent", "--json").stdout)
    assert peek["urgent"] is True and peek["length"] == 2 and peek["messages"][0]["description"] == "now"


def test_layout_option_and_environment(tt):
    assert tt("--layout", "JSON", "agents").returncode == 0
    bad = tt("--layout", "xml", "agents")
    assert bad.returncode == 2 and "--layout" in one_line_error(bad)
    env = run("--town", "cli", "--url", "redis://127.0.0.1:1", "agents", env=_env(TINYTOWN_LAYOUT="rows"))
    assert env.returncode == 2 and "TINYTOWN_LAYOUT" in one_line_error(env)


def test_monitor_hides_reads_unless_all_and_keeps_argument_order(redis_url, redis_server):
    def start(*extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(MODULE + ["--url", redis_server.url, "--town", "cli", "monitor", "--json", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        assert "monitoring town 'cli'" in proc.stderr.readline()
        return proc

    agent = AgentId.new()
    for extra, expect_reads in (((), False), (("--all",), True)):
        proc = start(*extra)
        try:
            with SyncChannel.connect(redis_server.url, town="cli") as channel:
                channel.inbox_len(agent)
                channel.execute("SCAN", 0, "MATCH", "tt:cli:agent:*", "COUNT", 1000)
                channel.send(Message.new(AgentId.supervisor(), agent, MessageType.Ping()))
            events = []
            while not events or events[-1]["command"] != "RPUSH":
                events.append(json.loads(proc.stdout.readline()))
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
        finally:
            proc.kill()
        commands = [e["command"] for e in events]
        if expect_reads:
            assert commands == ["LLEN", "SCAN", "RPUSH"]
            assert events[1]["key"] == "" and events[1]["detail"] == "0 MATCH tt:cli:agent:* COUNT 1000"
        else:
            assert commands == ["RPUSH"]


# ------------------------------------------------------------ 9. 0.10 commands


def _golden(name: str) -> list[dict]:
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"golden vectors not found at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_tasks_and_backlog(tt, redis_server):
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_agent_state(worker := Agent.new("worker-1", "claude"))
        first = Task.new("first thing")
        first.assign(worker.id)
        channel.set_task(first)
    second = Task.new("second thing")
    pairs = [x for kv in second.to_hash().items() for x in kv]
    redis_server.command("HSET", f"tt:cli:task:{second.id}", *pairs)          # the 0.10 layout
    missing = Task.new("never stored").id
    redis_server.command("RPUSH", "tt:cli:backlog", str(second.id), "not-a-uuid", str(missing))

    tasks = tt("tasks")
    assert tasks.returncode == 0, tasks.stderr
    header, *rows = tasks.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "ASSIGNED", "DESCRIPTION"]
    assert rows[0].split()[:3] == [str(first.id), "assigned", "worker-1"]
    assert rows[1].split()[:3] == [str(second.id), "pending", "-"]
    data = json.loads(tt("tasks", "--json").stdout)
    assert [t["id"] for t in data["tasks"]] == [first.id, second.id]

    backlog = json.loads(tt("backlog", "--json").stdout)
    assert backlog == {"town": "cli", "backlog": [
        {"task_id": second.id, "state": "pending", "description": "second thing"},
        {"task_id": missing, "state": None, "description": None}]}
    text = tt("backlog").stdout
    assert "second thing" in text and "(no stored task)" in text


def test_events_and_follow(tt, redis_server):
    vectors = _golden("events.jsonl")
    datas = [v["event"] for v in vectors[:3]]
    for data in datas:
        redis_server.command("XADD", "tt:cli:events", "*", "event_type", "x", "data", data)
    redis_server.command("XADD", "tt:cli:events", "*", "event_type", "x", "data", "not json")  # dropped
    shown = json.loads(tt("events", "--json").stdout)
    assert [e["event"] for e in shown["events"]] == [json.loads(d) for d in datas]
    text = tt("events", "-n", "2")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 1   # the last two, one dropped
    assert all("\n" not in line and "\x00" not in line for line in text.stdout.splitlines())

    proc = subprocess.Popen(MODULE + ["--url", redis_server.url, "--town", "cli", "events", "-n", "1",
                                      "--follow", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        while "following" not in (line := proc.stderr.readline()):   # after any skipped-entry warning
            assert line, proc.stderr.read()
        for data in datas[:2]:
            redis_server.command("XADD", "tt:cli:events", "*", "event_type", "x", "data", data)
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        rest = proc.stdout.read()
    finally:
        proc.kill()
    assert [line["event"] for line in lines] == [json.loads(d) for d in datas[:2]]   # each once
    assert rest == ""
    assert len({line["id"] for line in lines}) == 2


def test_help_lists_every_new_command():
    for command in ("agents", "register", "tasks", "backlog", "events", "stop"):
        result = run(command, "--help")
        assert result.returncode == 0 and result.stdout.startswith(f"usage: tinytown {command}")


def test_a_command_imports_only_what_it_needs():
    code = ("import sys; from tinytown.cli import main; main(['--help']);"
            "print(sorted(m for m in ('asyncio', 'tinytown.channel', 'tinytown.sync_channel',"
            " 'tinytown.message', 'tinytown.town', 'json') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[]"


def test_the_example_logs_each_send_before_its_receipt():
    example = Path(__file__).resolve().parents[1] / "examples" / "two_agents.py"
    result = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                            env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line.split("] ", 1)[-1].split() for line in result.stdout.splitlines()]
    order = [(who, arrow) for who, arrow, *_ in (line for line in lines if len(line) > 1)
             if arrow in ("->", "<-")]
    assert order == [("supervisor", "->"), ("worker-1", "<-"), ("worker-1", "->"), ("supervisor", "<-")]


def _readme_block(after: str) -> str:
    """The first bash block after ``after`` in docs/cli.md (the README's Command line guide)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    start = text.index("```bash\n", text.index(after)) + len("```bash\n")
    return text[start:text.index("```", start)]


def test_the_readme_walkthrough_works_verbatim_in_a_fresh_town(tmp_path):
    script = _readme_block("A walkthrough, verbatim")
    assert script.startswith("mkdir my-town && cd my-town\n") and "server stop" in script
    env = _env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    pid_file = tmp_path / "my-town" / "redis.pid"
    if result.returncode != 0 and pid_file.exists():   # do not leave a server behind
        _kill(int(pid_file.read_text()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""          # no warning, no error
    out = result.stdout
    assert "registered agent 'worker-1'" in out and "to worker-1 (" in out
    assert re.search(r"worker-1\s+\S{36}\s+starting\s+1\s+0\s+-", out)   # agents
    assert "from=supervisor" in out and "urgent inbox; 1 waiting" in out
    assert re.search(r"worker-1\s+\S{36}\s+1\s+1", out)                  # inbox
    assert "asked worker-1" in out and "stopped" in out


def test_the_readme_python_snippet_on_ids_types_and_priorities():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("Ids, message types, priorities and names")) + 10
    namespace: dict = {}
    exec(compile(text[start:text.index("```", start)], "README", "exec"), namespace)
    assert str(namespace["msg"].priority) == "high"
    assert namespace["text"] == "Fix the build"     # the match took the Task case


def test_monitor_decodes_the_hash_layout_and_the_towns_broadcast(redis_url, redis_server):
    agent = Agent.new("hashed", "codex")
    pairs = [x for kv in agent.to_hash().items() for x in kv]
    ping = Message.new(AgentId.supervisor(), agent.id, MessageType.Ping())
    proc = subprocess.Popen(MODULE + ["--url", redis_server.url, "--town", "cli", "monitor", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert "monitoring town 'cli'" in proc.stderr.readline()
        redis_server.command("HSET", f"tt:cli:agent:{agent.id}", *pairs)        # a whole state
        redis_server.command("HSET", f"tt:cli:agent:{agent.id}", "last_heartbeat", "x")  # one field
        redis_server.command("PUBLISH", "tt:cli:broadcast", ping.to_json())
        events = [json.loads(proc.stdout.readline()) for _ in range(3)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    assert events[0]["command"] == "HSET" and events[0]["state"]["name"] == "hashed"
    assert events[1]["detail"] == "last_heartbeat x" and "state" not in events[1]
    assert events[2]["key"] == "tt:cli:broadcast" and events[2]["message"]["type"] == "ping"


def test_every_public_name_resolves_lazily():
    code = ("import sys, tinytown; assert 'tinytown.channel' not in sys.modules;"
            "names = [n for n in tinytown.__all__ if getattr(tinytown, n) is None];"
            "assert not names, names; assert sorted(tinytown._LAZY) == sorted(tinytown.__all__);"
            "from tinytown import *; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def test_register_writes_the_chosen_layout(tt, redis_server):
    """hash (Tinytown 0.7-0.10) by default; --layout json or $TINYTOWN_LAYOUT=json: a JSON string."""
    assert tt("register", "hashed").returncode == 0
    assert tt("--layout", "json", "register", "jsoned").returncode == 0
    assert run("--url", redis_server.url, "--town", "cli", "register", "envd",
               env=_env(TINYTOWN_LAYOUT="json")).returncode == 0
    agents = {a["name"]: a["id"] for a in json.loads(tt("agents", "--json").stdout)["agents"]}
    types = {name: redis_server.command("TYPE", f"tt:cli:agent:{i}") for name, i in agents.items()}
    assert types == {"hashed": "hash", "jsoned": "string", "envd": "string"}


def test_names_resolve_as_tinytowns_tt_does_after_an_exact_match(tt, redis_server):
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        upper = Agent.new("Worker-One", "claude")
        channel.set_agent_state(upper)
        lower = Agent.new("worker-one", "codex")
    sent = tt("send", "--to", "WORKER-ONE", "--type", "ping")       # ASCII case ignored
    assert sent.returncode == 0, sent.stderr
    assert f"to Worker-One ({upper.id})" in sent.stdout
    with SyncChannel.connect(redis_server.url, town="cli") as channel:
        channel.set_agent_state(lower)
    exact = tt("inbox", "worker-one", "--json")                        # an exact name wins
    assert json.loads(exact.stdout)["agent"] == lower.id
    both = tt("inbox", "WORKER-ONE")
    assert both.returncode == 1 and "2 agents are named 'WORKER-ONE'" in one_line_error(both)


def test_heartbeat_ages_read_at_a_glance():
    ages = [cli._age(s) for s in (0, 59.9, 60, 3599, 3600, 3 * 86400, -5)]
    assert ages == ["0s ago", "59s ago", "1m ago", "59m ago", "1h ago", "3d ago", "in 5s"]
