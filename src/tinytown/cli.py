"""The ``tinytown`` command: look inside a town and run its local Redis.

``tinytown [--socket PATH | --url URL] [--town NAME] COMMAND ...`` (also
``python -m tinytown``). Every command has ``--help``. Exit status: 0 done,
1 failed, 2 bad usage. Errors go to stderr as one line. Colour only on a
terminal, and never when ``NO_COLOR`` is set. Data commands take ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from . import _monitor
from .agent import Agent
from .enums import Priority
from .errors import (
    ConnectionError,
    InvalidArgumentError,
    ReplyError,
    TinytownError,
)
from .ids import SUPERVISOR_ID, AgentId, MessageId, TaskId, _normalize
from .keys import validate_town_name
from .message import ConfirmationType, Message, MessageType
from .migrate import migrate_keys, plan_migration
from .sync_channel import SyncChannel

__all__ = ["main"]

PROG = "tinytown"
DEFAULT_SOCKET = "redis.sock"


class UsageError(Exception):
    """Bad command-line usage: exit status 2."""


class Failure(Exception):
    """The command could not do its job (message for stderr): exit status 1."""


# ------------------------------------------------------------------ output


class Style:
    """ANSI colours, on only when stdout is a terminal and NO_COLOR is unset."""

    def __init__(self, stream: Any) -> None:
        self.on = (hasattr(stream, "isatty") and stream.isatty()
                   and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)

    def priority(self, priority: Priority) -> str:
        text = str(priority)
        if priority is Priority.URGENT:
            return self.red(text)
        if priority is Priority.HIGH:
            return self.yellow(text)
        return self.dim(text) if priority is Priority.LOW else text


def _out(text: str = "") -> None:
    print(text, flush=True)


def _json_out(data: Any) -> None:
    _out(json.dumps(data, indent=2, ensure_ascii=False))


def _one_line(error: BaseException) -> str:
    """An error message on one line: its first line, plus its last one when
    it has several (e.g. the last line of redis.log under a ServerError)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


def _short(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def describe_message(message: Message, style: Style) -> str:
    """One line: type, the type's fields, sender, priority."""
    kind = message.msg_type
    parts = [style.bold(kind.tag)]
    for f in dataclasses.fields(kind):  # type: ignore[arg-type]
        value = getattr(kind, f.name)
        if isinstance(value, ConfirmationType):
            value = json.loads(value._json())
            value = value["type"] + (f" ({value['reason']})" if "reason" in value else "")
            parts.append(f"{f.name}={value}")
        elif value is not None:
            parts.append(f"{f.name}={_short(value)}")
    sender = "supervisor" if message.from_ == SUPERVISOR_ID else str(message.from_)
    parts.append(style.dim(f"from={sender}"))
    parts.append(style.priority(message.priority))
    return " ".join(parts)


def describe_state(state: Agent | Any, style: Style) -> str:
    if isinstance(state, Agent):
        return f"{style.bold('agent')} name={_short(state.name)} state={state.state} cli={_short(state.cli)}"
    return (f"{style.bold('task')} description={_short(state.description, 60)} state={state.state}"
            + (f" assigned_to={state.assigned_to}" if state.assigned_to else ""))


# ------------------------------------------------------------------ arguments


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line of stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    # On the top-level parser they have real defaults; repeated on every
    # command (so that `tinytown inbox --town x` works too) they are
    # SUPPRESSed, so that they do not overwrite what came before the command.
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", default=default,
                       help=f"Unix socket of the town's Redis (default: ./{DEFAULT_SOCKET})")
    where.add_argument("--url", metavar="URL", default=default,
                       help="Redis URL instead of a socket: unix:///abs/path/redis.sock or "
                            "redis://[user:password@]host:port[/db]")
    group.add_argument("--town", metavar="NAME", default=default,
                       help="town name (default: $TINYTOWN_TOWN, else the current directory's name)")


def _command(sub: Any, name: str, help: str, description: str | None = None,
             **kwargs: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help,
                            formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    _add_connection_options(parser, top=False)
    return parser


_SEND_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required fields, optional fields)
    "task": (("description",), ()),
    "query": (("question",), ()),
    "informational": (("summary",), ()),
    "confirmation": (("ack_type",), ("reason",)),
    "task_assign": (("task_id",), ()),
    "task_done": (("task_id", "result"), ()),
    "task_failed": (("task_id", "error"), ()),
    "status_request": ((), ()),
    "status_response": (("state",), ("current_task",)),
    "ping": ((), ()),
    "pong": ((), ()),
    "shutdown": ((), ()),
    "custom": (("kind", "payload"), ()),
}
_ALL_FIELDS = ("description", "question", "summary", "ack_type", "reason", "task_id", "result",
               "error", "state", "current_task", "kind", "payload")
_ACK_TYPES = ("received", "acknowledged", "thanks", "approved", "rejected")


def _send_epilog() -> str:
    lines = ["message types and their fields (--FIELD VALUE; [..] optional):"]
    for kind, (required, optional) in _SEND_FIELDS.items():
        fields = [f"--{f.replace('_', '-')}" for f in required]
        fields += [f"[--{f.replace('_', '-')}]" for f in optional]
        lines.append(f"  {kind:16s} {' '.join(fields) or '-'}")
    lines += [
        "",
        "--ack-type is one of: " + ", ".join(_ACK_TYPES) + " (rejected takes --reason).",
        "AGENT is an agent id (UUID), 'supervisor', or the name of an agent whose state",
        "is stored in the town. Example:",
        f"  {PROG} send --to worker-1 --type task_assign --task-id 3f0c... --priority high",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tinytown`` command."""
    parser = _Parser(
        prog=PROG,
        description="Look inside a Tinytown town and run its local Redis.",
        epilog="Exit status: 0 done, 1 failed, 2 bad usage. Run 'tinytown COMMAND --help' for a command.",
    )
    _add_connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    server = _command(sub, "server", "start, stop or inspect the town's local redis-server",
                      "The managed local redis-server of the town, in the directory of its "
                      "socket (./redis.sock by default): socket, pid file, log and snapshots.")
    server_sub = server.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    server_sub.required = True
    start = _command(server_sub, "start", "start the server (or find it running); it keeps running after this command")
    start.add_argument("--aof", action="store_true",
                       help="turn on append-only persistence (every write logged; remembered for later starts)")
    start.add_argument("--timeout", type=float, default=10.0, metavar="S",
                       help="seconds to wait for the server to answer (default 10)")
    start.set_defaults(func=cmd_server_start)
    stop = _command(server_sub, "stop", "stop the server (SHUTDOWN: it saves its snapshot first)")
    stop.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for the server to exit (default 30)")
    stop.set_defaults(func=cmd_server_stop)
    status = _command(server_sub, "status", "is the server running? (exit status 1 if not)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_server_status)

    send = _command(sub, "send", "send a message to an agent's inbox", epilog=_send_epilog())
    send.add_argument("--to", required=True, metavar="AGENT", help="recipient")
    send.add_argument("--type", required=True, metavar="TYPE", dest="msg_type",
                      help="message type: " + ", ".join(_SEND_FIELDS))
    send.add_argument("--from", metavar="AGENT", dest="sender", default="supervisor",
                      help="sender (default: supervisor)")
    send.add_argument("--priority", default="normal", choices=[p.value for p in Priority],
                      help="urgent/high go to the front of the inbox (default: normal)")
    send.add_argument("--correlation-id", metavar="ID", help="id of the message this one answers")
    fields = send.add_argument_group("message fields (which ones depends on --type)")
    for name in _ALL_FIELDS:
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}", metavar="TEXT",
                            **({"choices": _ACK_TYPES} if name == "ack_type" else {}))
    send.add_argument("--json", action="store_true", help="print the sent message as JSON")
    send.set_defaults(func=cmd_send)

    inbox = _command(sub, "inbox", "list the town's inboxes with their lengths, or one agent's length",
                     "Without AGENT: every inbox of the town (found with SCAN) and how many "
                     "messages wait in it. With AGENT: that inbox's length.")
    inbox.add_argument("agent", nargs="?", metavar="AGENT", help="agent id or name")
    inbox.add_argument("--json", action="store_true", help="print JSON")
    inbox.set_defaults(func=cmd_inbox)

    peek = _command(sub, "peek", "show the first messages of an inbox without removing them")
    peek.add_argument("agent", metavar="AGENT", help="agent id or name")
    peek.add_argument("-n", type=int, default=10, metavar="N", help="how many (default 10)")
    peek.add_argument("--json", action="store_true", help="print JSON (the messages' wire JSON)")
    peek.set_defaults(func=cmd_peek)

    state = _command(sub, "state", "print an agent's or a task's stored state as JSON")
    state.add_argument("kind", choices=("agent", "task"), help="agent or task")
    state.add_argument("id", metavar="ID", help="the agent's id or name, or the task's id")
    state.add_argument("--json", action="store_true", help="(the output is JSON either way)")
    state.set_defaults(func=cmd_state)

    monitor = _command(sub, "monitor", "show the town's traffic live, one line per operation",
                       "Uses Redis MONITOR on a connection of its own and shows the commands on "
                       "the town's keys and on tt:broadcast, with messages and state decoded. "
                       "Stops on Ctrl-C or SIGTERM. MONITOR slows a busy server down: use it "
                       "to look, not to run for days.")
    monitor.add_argument("--json", action="store_true", help="one JSON object per line")
    monitor.set_defaults(func=cmd_monitor)

    migrate = _command(sub, "migrate", "move keys of the old layout into the town",
                       "Renames the pre-isolation keys tt:<type>:<uuid> (types: agent, inbox, "
                       "urgent, task, activity, stop) and tt:backlog to tt:<town>:<type>[:<uuid>], "
                       "one RENAMENX per key: atomic, never overwriting an existing key "
                       "(such keys are skipped and reported), idempotent. Asks for "
                       "confirmation on the terminal unless --force. Exit status 1 if a key "
                       "was skipped or failed.")
    migrate.add_argument("--dry-run", action="store_true", help="only show what would move")
    migrate.add_argument("--force", action="store_true", help="do not ask for confirmation")
    migrate.add_argument("--json", action="store_true", help="print the report as JSON")
    migrate.set_defaults(func=cmd_migrate)

    # Everything after "bench" goes to tinytown.bench.main (see _split_bench),
    # --help included.
    bench = _command(sub, "bench", "run the channel benchmarks (tinytown.bench); "
                     "the arguments after 'bench' go to it ('tinytown bench --help')", add_help=False)
    bench.set_defaults(func=cmd_bench, bench_args=[])
    return parser


# ------------------------------------------------------------------ context


class Context:
    """What every command needs: where Redis is, which town, how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.style = Style(sys.stdout)
        self.town = self._town(args.town)
        self.socket: Path | None = None
        if args.url:
            self.url = args.url
        else:
            self.socket = Path(args.socket or DEFAULT_SOCKET).expanduser().absolute()
            self.url = f"unix://{self.socket}"

    @staticmethod
    def _town(given: str | None) -> str:
        if given is not None:
            return validate_town_name(given)
        env = os.environ.get("TINYTOWN_TOWN")
        if env:
            try:
                return validate_town_name(env)
            except InvalidArgumentError as exc:
                raise UsageError(f"$TINYTOWN_TOWN: {exc}") from None
        name = Path.cwd().name
        try:
            return validate_town_name(name)
        except InvalidArgumentError:
            raise UsageError(f"the current directory's name {name!r} is not a valid town name; "
                             "pass --town NAME or set TINYTOWN_TOWN") from None

    def channel(self) -> SyncChannel:
        return SyncChannel.connect(self.url, town=self.town, connect_timeout=5.0)

    def town_directory(self) -> Path:
        """The managed server's directory: the socket's, which must be named redis.sock."""
        if self.socket is None:
            raise UsageError("server start/stop manage a local Unix-socket server: use --socket, not --url")
        if self.socket.name != DEFAULT_SOCKET:
            raise UsageError(f"the managed server's socket is named {DEFAULT_SOCKET} "
                             f"(not {self.socket.name}): pass --socket DIR/{DEFAULT_SOCKET}")
        return self.socket.parent


def resolve_agent(channel: SyncChannel, text: str) -> AgentId:
    """An agent id from a UUID, 'supervisor', or the name (or nickname) of an
    agent stored in the town."""
    if text == "supervisor":
        return AgentId.supervisor()
    if _normalize(text) is not None:
        return AgentId(text)
    matches: list[AgentId] = []
    for key in _scan(channel, channel.keys.agent_prefix + "*"):
        agent_id = key[len(channel.keys.agent_prefix):]
        if _normalize(agent_id) is None:
            continue
        try:
            agent = channel.get_agent_state(agent_id)
        except (TinytownError, ValueError):
            continue        # unreadable state is not this name
        if agent is not None and text in (agent.name, agent.nickname):
            matches.append(agent.id)
    if not matches:
        raise Failure(f"no agent named {text!r} in town {channel.town!r} (and it is not a UUID)")
    if len(matches) > 1:
        raise Failure(f"{len(matches)} agents are named {text!r} in town {channel.town!r}: "
                      f"use an id ({', '.join(sorted(matches))})")
    return matches[0]


def _scan(channel: SyncChannel, pattern: str) -> list[str]:
    """Keys matching ``pattern`` (SCAN, never KEYS), sorted, decoded."""
    keys: set[bytes] = set()
    cursor = b"0"
    while True:
        cursor, batch = channel.execute(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", 1000)
        keys.update(batch)
        if cursor == b"0":
            break
    return sorted(k.decode(errors="replace") for k in keys)


# ------------------------------------------------------------------ server


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def cmd_server_start(ctx: Context) -> int:
    from .town import Town

    directory = ctx.town_directory()
    args = ctx.args
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")

    async def start() -> Town:
        town = await Town.start(directory, ctx.town, timeout=args.timeout)
        if args.aof:
            await town.configure_persistence(appendonly=True)
        return town

    town = _run(start())
    # The Town object is dropped without stop(): the server runs on, in its own
    # session, after this process exits.
    how = "started" if town.owns_server else "already running"
    aof = ", append-only on" if args.aof else ""
    _out(f"redis-server {ctx.style.green(how)} for town {ctx.town!r} (pid {town.pid}{aof}) at {town.url}")
    return 0


def _info(channel: SyncChannel, section: str) -> dict[str, str]:
    raw = channel.execute(b"INFO", section)
    fields: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value.strip()
    return fields


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def cmd_server_stop(ctx: Context) -> int:
    ctx.town_directory()
    timeout = ctx.args.timeout
    if not timeout > 0:
        raise UsageError("--timeout must be positive")
    try:
        channel = SyncChannel.connect(ctx.url, town=ctx.town, connect_timeout=2.0)
    except ConnectionError:
        _out(f"no redis-server is running at {ctx.url}")
        return 0
    deadline = time.monotonic() + timeout
    with channel:
        pid: int | None = None
        try:
            pid = int(_info(channel, "server")["process_id"])
        except (KeyError, ValueError, ReplyError):
            pid = None
        while True:
            try:
                channel.execute(b"SHUTDOWN")
            except ConnectionError:
                break           # it closed the connection: it is exiting
            except ReplyError as exc:
                # e.g. while it writes its first AOF: ask again shortly
                if time.monotonic() > deadline:
                    raise Failure(f"redis-server at {ctx.url} refused SHUTDOWN: {exc}") from None
                time.sleep(0.1)
                continue
            raise Failure(f"redis-server at {ctx.url} answered SHUTDOWN but did not stop")
    while not (_process_gone(pid) if pid is not None else not _answers(ctx.url, ctx.town)):
        if time.monotonic() > deadline:
            raise Failure(f"redis-server (pid {pid}) at {ctx.url} did not exit within {timeout:g} s; "
                          f"see {ctx.town_directory() / 'redis.log'}")
        time.sleep(0.02)
    _out(f"redis-server {ctx.style.green('stopped')} (pid {pid}) at {ctx.url}")
    return 0


def _answers(url: str, town: str) -> bool:
    try:
        with SyncChannel.connect(url, town=town, connect_timeout=1.0) as channel:
            return channel.execute(b"PING") == b"PONG"
    except ConnectionError:
        return False


def cmd_server_status(ctx: Context) -> int:
    report: dict[str, Any] = {"town": ctx.town, "url": ctx.url, "running": False}
    try:
        channel = SyncChannel.connect(ctx.url, town=ctx.town, connect_timeout=2.0)
    except ConnectionError as exc:
        report["error"] = _one_line(exc)
    else:
        with channel:
            server = _info(channel, "server")
            persistence = _info(channel, "persistence")
            inboxes = _inbox_lengths(channel)
            report.update(
                running=True,
                pid=int(server["process_id"]) if server.get("process_id", "").isdigit() else None,
                redis_version=server.get("redis_version"),
                uptime_seconds=int(server.get("uptime_in_seconds", "0") or 0),
                aof_enabled=persistence.get("aof_enabled") == "1",
                inboxes=len(inboxes),
                messages=sum(n for _, n in inboxes if n is not None),
            )
    if ctx.args.json:
        _json_out(report)
    else:
        s = ctx.style
        if report["running"]:
            _out(f"redis-server {s.green('running')} at {ctx.url} (pid {report['pid']}, "
                 f"redis {report['redis_version']}, up {report['uptime_seconds']} s, "
                 f"append-only {'on' if report['aof_enabled'] else 'off'})")
            _out(f"town {ctx.town!r}: {report['inboxes']} inbox(es), {report['messages']} message(s) waiting")
        else:
            _out(f"redis-server {s.red('not running')} at {ctx.url}")
    return 0 if report["running"] else 1


# ------------------------------------------------------------------ messages


def _build_message(args: argparse.Namespace, to: AgentId, sender: AgentId) -> Message:
    kind = args.msg_type.replace("-", "_").lower()
    if kind not in _SEND_FIELDS:
        raise UsageError(f"unknown message type {args.msg_type!r}; one of: {', '.join(_SEND_FIELDS)}")
    required, optional = _SEND_FIELDS[kind]
    given = {name: getattr(args, f"field_{name}") for name in _ALL_FIELDS
             if getattr(args, f"field_{name}") is not None}
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    missing = [flag(n) for n in required if n not in given]
    if missing:
        raise UsageError(f"--type {kind} needs {' and '.join(missing)}")
    extra = [flag(n) for n in given if n not in required + optional]
    if extra:
        raise UsageError(f"{', '.join(extra)} do(es) not apply to --type {kind}")
    if kind == "confirmation":
        ack = given["ack_type"]
        if ack == "rejected":
            if "reason" not in given:
                raise UsageError("--ack-type rejected needs --reason")
            ack_value = ConfirmationType.Rejected(given["reason"])
        elif "reason" in given:
            raise UsageError("--reason only goes with --ack-type rejected")
        else:
            ack_value = getattr(ConfirmationType, ack.capitalize())()
        msg_type = MessageType.Confirmation(ack_type=ack_value)
    else:
        cls = getattr(MessageType, "".join(part.capitalize() for part in kind.split("_")))
        msg_type = cls(**given)
    message = Message.new(sender, to, msg_type).with_priority(args.priority)
    if args.correlation_id:
        message = message.with_correlation(MessageId(args.correlation_id))
    return message


def cmd_send(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        to = resolve_agent(channel, args.to)
        sender = resolve_agent(channel, args.sender)
        message = _build_message(args, to, sender)
        channel.send(message)
        waiting = channel.inbox_len(to)
    if args.json:
        _json_out(json.loads(message.to_json()))
    else:
        _out(f"sent {message.msg_type.tag} {message.id} to {to} in town {ctx.town!r} "
             f"({message.priority}; {waiting} waiting)")
    return 0


def _inbox_lengths(channel: SyncChannel) -> list[tuple[str, int | None]]:
    prefix = channel.keys.inbox_prefix
    out: list[tuple[str, int | None]] = []
    for key in _scan(channel, prefix + "*"):
        try:
            out.append((key[len(prefix):], channel.execute(b"LLEN", key)))
        except ReplyError:
            out.append((key[len(prefix):], None))  # not a list: not an inbox of ours
    return out


def cmd_inbox(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        if args.agent is not None:
            agent = resolve_agent(channel, args.agent)
            length = channel.inbox_len(agent)
            if args.json:
                _json_out({"town": ctx.town, "agent": agent, "messages": length})
            else:
                _out(str(length))
            return 0
        inboxes = _inbox_lengths(channel)
    if args.json:
        _json_out({"town": ctx.town,
                   "inboxes": [{"agent": a, "messages": n} for a, n in inboxes]})
        return 0
    if not inboxes:
        _out(f"no messages waiting in town {ctx.town!r}")
        return 0
    s = ctx.style
    width = max(36, *(len(a) for a, _ in inboxes))
    _out(s.bold(f"{'AGENT':{width}s}  MESSAGES"))
    for agent, n in inboxes:
        _out(f"{agent:{width}s}  {'not a list' if n is None else n}")
    return 0


def cmd_peek(ctx: Context) -> int:
    args = ctx.args
    if args.n < 1:
        raise UsageError("-n must be at least 1")
    with ctx.channel() as channel:
        agent = resolve_agent(channel, args.agent)
        key = channel.keys.inbox(agent)
        length = channel.execute(b"LLEN", key)
        raws = channel.execute(b"LRANGE", key, 0, args.n - 1)
    decoded: list[Message | None] = []
    for raw in raws:
        try:
            decoded.append(Message.from_json(raw))
        except TinytownError:
            decoded.append(None)   # shown as undecodable: peek must not fail on it
    if args.json:
        items = [json.loads(m.to_json()) if m is not None
                 else {"undecodable": raw.decode(errors="replace")} for m, raw in zip(decoded, raws)]
        _json_out({"town": ctx.town, "agent": agent, "length": length, "messages": items})
        return 0
    s = ctx.style
    _out(s.dim(f"inbox of {agent} in town {ctx.town!r}: {length} message(s)"
               + (f", showing the first {len(raws)}" if length > len(raws) else "")))
    for i, (message, raw) in enumerate(zip(decoded, raws)):
        if message is None:
            _out(f"{i:3d} {s.red('undecodable')} {_short(raw.decode(errors='replace'))}")
        else:
            _out(f"{i:3d} {s.dim(message.created_at.rfc3339())} {describe_message(message, s)} "
                 + s.dim(f"id={message.id}"))
    return 0


def cmd_state(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        if args.kind == "agent":
            agent = resolve_agent(channel, args.id)
            state: Any = channel.get_agent_state(agent)
            what = f"agent {agent}"
        else:
            task = TaskId(args.id)
            state = channel.get_task(task)
            what = f"task {task}"
    if state is None:
        raise Failure(f"no {what} in town {ctx.town!r}")
    _json_out(json.loads(state.to_json()))
    return 0


# ------------------------------------------------------------------ monitor


def cmd_monitor(ctx: Context) -> int:
    args = ctx.args
    s = ctx.style
    channel = ctx.channel()
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt, which interrupts the
    # blocking read (SIGINT too: a shell's `&` starts commands ignoring it).
    previous = {sig: signal.signal(sig, signal.default_int_handler)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        conn, _ = channel._open_connection()
        try:
            conn.send_command(b"MONITOR")
            conn.read_reply()           # +OK
            print(f"monitoring town {ctx.town!r} at {ctx.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            while True:
                line = _monitor.parse_line(conn.read_reply())
                if line is None:
                    continue
                for event in _monitor.events(line, ctx.town):
                    if args.json:
                        _out(json.dumps(event.to_dict(), ensure_ascii=False))
                    else:
                        _out(_format_event(event, s))
        finally:
            conn.close()
    except KeyboardInterrupt:
        print("monitor stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        channel.close()


def _format_event(event: _monitor.Event, s: Style) -> str:
    stamp = datetime.fromtimestamp(event.time, timezone.utc).astimezone().strftime("%H:%M:%S.%f")[:-3]
    head = f"{s.dim(stamp)} {s.cyan(f'{event.command:8s}')} {event.key}"
    if event.message is not None:
        return f"{head}  {describe_message(event.message, s)}"
    if event.state is not None:
        return f"{head}  {describe_state(event.state, s)}"
    return f"{head}  {event.detail}" if event.detail else head


# ------------------------------------------------------------------ migrate


def cmd_migrate(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        plan = plan_migration(channel)
        preview = migrate_keys(channel, dry_run=True, moves=plan)
        if not plan:
            if args.json:
                _json_out(preview.to_dict())
            else:
                _out(f"nothing to migrate: no old-layout keys at {ctx.url}")
            return 0
        if args.dry_run:
            _print_report(preview, ctx)
            return 0 if preview.complete else 1
        if not args.force:
            if not args.json:
                _print_report(preview, ctx)
            if not sys.stdin.isatty():
                raise UsageError("refusing to migrate without confirmation: stdin is not a terminal; "
                                 "pass --force (see --dry-run for a preview)")
            answer = input(f"Move {len(preview.moved)} key(s) into town {ctx.town!r}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise Failure("migration cancelled; nothing moved")
        report = migrate_keys(channel, moves=plan)
    _print_report(report, ctx)
    return 0 if report.complete else 1


def _print_report(report: Any, ctx: Context) -> None:
    if ctx.args.json:
        _json_out(report.to_dict())
        return
    s = ctx.style
    verb = "would move" if report.dry_run else "moved"
    for move in report.moved:
        _out(f"{s.green(verb)} {move}")
    for move in report.skipped:
        _out(f"{s.yellow('skipped')} {move} (the new key exists; not overwritten)")
    for move, error in report.failed:
        _out(f"{s.red('failed')} {move}: {error}")
    _out(s.bold(report.summary()))


# ------------------------------------------------------------------ bench


def _split_bench(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` up to a ``bench`` command word, and what follows it (for tinytown.bench)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--socket", "--url", "--town"):
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        if word == "bench":
            return argv[:i + 1], argv[i + 1:]
        break
    return argv, []


def cmd_bench(ctx: Context) -> int:
    try:
        bench = importlib.import_module(f"{__package__}.bench")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench":
            raise
        if ctx.args.bench_args[:1] in (["-h"], ["--help"]):
            _out(f"usage: {PROG} bench [ARGS...]\n\nRuns tinytown.bench, which is not part of this build.")
            return 0
        raise Failure("the benchmarks (tinytown.bench) are not part of this build of tinytown") from None
    return int(bench.main(ctx.args.bench_args) or 0)


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tinytown`` command; returns the exit status (0 ok, 1 failed, 2 usage)."""
    parser = build_parser()
    argv, bench_args = _split_bench(list(sys.argv[1:] if argv is None else argv))
    command = PROG
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:       # --help
            return int(exc.code or 0)
        if args.command == "bench":
            args.bench_args = bench_args
        command = f"{PROG} {args.command}" + (f" {args.action}" if getattr(args, "action", None) else "")
        func: Callable[[Context], int] = args.func
        return func(Context(args))
    except UsageError as exc:
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except InvalidArgumentError as exc:     # a bad id, URL, town name...
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (Failure, TinytownError) as exc:
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout closed early (| head): not an error of ours; silence the
        # flush at exit, which would fail the same way
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 1
