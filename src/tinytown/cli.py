"""The ``tinytown`` command: look inside a town and run its local Redis.

``tinytown [--socket PATH | --url URL] [--town NAME] COMMAND ...`` (also
``python -m tinytown``). Every command has ``--help``. Exit status: 0 done,
1 failed, 2 bad usage. Errors go to stderr as one line that says what to do
next. Colour only on a terminal, and never when ``NO_COLOR`` is set. Data
commands take ``--json``.

Which town: ``--town``, else ``$TINYTOWN_TOWN``, else the name recorded in
the socket's directory (``town.json``, written by ``Town.start`` and
``tinytown server start``), else that directory's name. A command whose town
has no keys while another town on the same server has some says so on stderr.

Start-up cost matters for a command run by hand and by scripts, so this
module imports only argparse at load time; each command imports what it
uses (``python -X importtime -m tinytown --help`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConnectionError, InvalidArgumentError, ReplyError, TinytownError
from .keys import validate_town_name

if TYPE_CHECKING:  # pragma: no cover
    from ._monitor import Event
    from .agent import Agent
    from .enums import Priority
    from .events import TownEvent
    from .ids import AgentId, TaskId
    from .message import Message
    from .sync_channel import SyncChannel
    from .task import Task

__all__ = ["main"]

PROG = "tinytown"
DEFAULT_SOCKET = "redis.sock"
TOWN_FILE = "town.json"          # tinytown.town.TOWN_FILE_NAME (not imported: start-up cost)
LAYOUTS = ("hash", "json")
PRIORITIES = ("low", "normal", "high", "urgent")   # tinytown.Priority's wire values
SUPERVISOR = "00000000-0000-0000-0000-000000000001"
# Keys read per pipelined round trip when listing a town's agents or tasks.
BATCH = 500


class UsageError(Exception):
    """Bad command-line usage: exit status 2."""


class Failure(Exception):
    """The command could not do its job (message for stderr): exit status 1."""


# ------------------------------------------------------------------ output


class Style:
    """ANSI colours, on only when the stream is a terminal and NO_COLOR is unset.

    Every coloured span is closed right after its text, so no colour (and no
    reset code) ever crosses a newline.
    """

    def __init__(self, stream: Any) -> None:
        self.on = bool(hasattr(stream, "isatty") and stream.isatty()
                       and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def _wrap(self, code: str, text: str) -> str:
        if not self.on or not text:
            return text
        # colour each line on its own: the reset lands before every newline
        return "\n".join(f"\033[{code}m{line}\033[0m" if line else line
                         for line in text.split("\n"))

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
        if text == "urgent":
            return self.red(text)
        if text == "high":
            return self.yellow(text)
        return self.dim(text) if text == "low" else text


def _out(text: str = "") -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


def _json_out(data: Any) -> None:
    import json
    _out(json.dumps(data, indent=2, ensure_ascii=False))


def _json_line(data: Any) -> None:
    import json
    _out(json.dumps(data, ensure_ascii=False))


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
    import json
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _iso(unix_seconds: float) -> str:
    """``2026-11-30T01:02:03.123456Z``: ISO 8601 in UTC, as the wire's timestamps."""
    from datetime import datetime, timezone
    stamp = datetime.fromtimestamp(unix_seconds, timezone.utc).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def describe_message(message: Message, style: Style, names: Callable[[str], str] | None = None) -> str:
    """One line: type, the type's fields, sender (by name when known), priority."""
    import dataclasses
    import json

    from .message import ConfirmationType

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
    sender = str(message.from_)
    sender = names(sender) if names is not None else ("supervisor" if sender == SUPERVISOR else sender)
    parts.append(style.dim(f"from={sender}"))
    parts.append(style.priority(message.priority))
    return " ".join(parts)


def describe_state(state: Agent | Task, style: Style) -> str:
    from .agent import Agent
    if isinstance(state, Agent):
        return f"{style.bold('agent')} name={_short(state.name)} state={state.state} cli={_short(state.cli)}"
    return (f"{style.bold('task')} description={_short(state.description, 60)} state={state.state}"
            + (f" assigned_to={state.assigned_to}" if state.assigned_to else ""))


def _table(style: Style, header: Sequence[str], rows: list[list[str]]) -> None:
    """Left-aligned columns; the last one is not padded."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths)) + "  " + cells[-1]

    _out(style.bold(line(header)))
    for row in rows:
        _out(line(row))


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
                       help="town name (default: $TINYTOWN_TOWN, else the name recorded in the "
                            f"socket's directory ({TOWN_FILE}), else that directory's name)")
    group.add_argument("--layout", metavar="LAYOUT", default=default, type=str.lower,
                       choices=LAYOUTS,
                       help="how agent/task state is written: hash (Tinytown 0.7-0.10, broadcasts "
                            "on tt:<town>:broadcast) or json (the Channels page, tt:broadcast); "
                            "default: $TINYTOWN_LAYOUT, else hash. Reads accept both.")


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
        "TASK (--task-id, --current-task) is a task id or a unique prefix of the id of a",
        "task stored in the town (see 'tinytown tasks'), as for 'tinytown state task'.",
        "AGENT is an agent id, 'supervisor', or the name of a registered agent",
        "(see 'tinytown agents'; 'tinytown register NAME' adds one).",
        "",
        "priorities: low and normal are appended to the inbox (RPUSH, first in first",
        "out); high and urgent are pushed to its front (LPUSH), as Tinytown does, so the",
        "NEWEST front message is taken first: an urgent message sent before a high one",
        "is taken after it. --urgent puts the message in the agent's urgent inbox",
        "(tt:<town>:urgent:<agent>, LPUSH) instead, which Tinytown's workers drain",
        "before their inbox at every round.",
        "",
        "examples:",
        f"  {PROG} send --to worker-1 --type task --description 'Fix the build' --priority high",
        f"  {PROG} send --to worker-1 --type task_assign --task-id 3f0c --urgent",
    ]
    return "\n".join(lines)


def _version() -> str:
    from . import __version__
    return f"{PROG} {__version__}"


class _VersionAction(argparse.Action):
    """``--version``: prints ``tinytown X.Y.Z`` (imports nothing until asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> NoReturn:
        _out(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tinytown`` command."""
    parser = _Parser(
        prog=PROG,
        description="Look inside a Tinytown town and run its local Redis.",
        epilog="Exit status: 0 done, 1 failed, 2 bad usage. Run 'tinytown COMMAND --help' for a "
               "command. Start with 'tinytown server start' in the town's directory, then "
               "'tinytown agents'.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    _add_connection_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    server = _command(sub, "server", "start, stop or inspect the town's local redis-server",
                      "The managed local redis-server of the town, in the directory of its "
                      "socket (./redis.sock by default): socket, pid file, log, snapshots and "
                      f"{TOWN_FILE} (the town's name).")
    server_sub = server.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    server_sub.required = True
    start = _command(server_sub, "start", "start the server (or find it running); it keeps running after this command",
                     "Starts redis-server in the socket's directory (or finds it running) and "
                     f"records the town's name there ({TOWN_FILE}). The directory must exist "
                     "unless --create is given, so that a mistyped --socket does not make a new town.")
    start.add_argument("--create", action="store_true",
                       help="create the socket's directory if it does not exist")
    aof = start.add_mutually_exclusive_group()
    aof.add_argument("--aof", action="store_true",
                     help="turn on append-only persistence (every write logged; remembered for later starts)")
    aof.add_argument("--no-aof", action="store_true",
                     help="turn append-only persistence off (remembered for later starts)")
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

    agents = _command(sub, "agents", "list the town's agents: name, id, state, inbox lengths",
                      "Every agent registered in the town (SCAN tt:<town>:agent:*, states read "
                      "in pipelined batches), with its state, the length of its inbox and "
                      "urgent inbox, whether a stop was requested and how long ago its last "
                      "heartbeat was. Inboxes of agents that "
                      "are not registered are counted at the end ('tinytown inbox' lists them).")
    agents.add_argument("--json", action="store_true", help="print JSON")
    agents.set_defaults(func=cmd_agents)

    register = _command(sub, "register", "register an agent by name (stores its state)",
                        "Stores a new agent (state 'starting', fresh id) so that it can be "
                        "named in other commands. Names must be unique in the town.")
    register.add_argument("name", metavar="NAME", help="the agent's name, e.g. worker-1")
    register.add_argument("--cli", default="claude", help="the agent's CLI (default: claude)")
    register.add_argument("--agent-type", default="worker", type=str.lower,
                          choices=("worker", "supervisor"), help="default: worker")
    register.add_argument("--json", action="store_true", help="print the stored agent as JSON")
    register.set_defaults(func=cmd_register)

    send = _command(sub, "send", "send a message to an agent's inbox", epilog=_send_epilog())
    send.add_argument("--to", required=True, metavar="AGENT", help="recipient")
    send.add_argument("--type", required=True, metavar="TYPE", dest="msg_type",
                      help="message type: " + ", ".join(_SEND_FIELDS))
    send.add_argument("--from", metavar="AGENT", dest="sender", default="supervisor",
                      help="sender (default: supervisor)")
    send.add_argument("--priority", default="normal", type=str.lower, choices=PRIORITIES,
                      help="high/urgent go to the front of the inbox, newest first; see below "
                           "(default: normal)")
    send.add_argument("--urgent", action="store_true",
                      help="put the message in the agent's urgent inbox (read before the inbox)")
    send.add_argument("--correlation-id", metavar="ID", help="id of the message this one answers")
    fields = send.add_argument_group("message fields (which ones depends on --type)")
    for name in _ALL_FIELDS:
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"field_{name}", metavar="TEXT",
                            **({"choices": _ACK_TYPES, "type": str.lower} if name == "ack_type" else {}))
    send.add_argument("--json", action="store_true", help="print the sent message as JSON")
    send.set_defaults(func=cmd_send)

    inbox = _command(sub, "inbox", "list the town's inboxes with their lengths, or one agent's length",
                     "Without AGENT: every inbox and urgent inbox of the town (found with SCAN), "
                     "with the agent's name when it is registered, and how many messages wait "
                     "in each. With AGENT: that inbox's length (--urgent: the urgent inbox's).")
    inbox.add_argument("agent", nargs="?", metavar="AGENT", help="agent id or name")
    inbox.add_argument("--urgent", action="store_true", help="with AGENT: the urgent inbox's length")
    inbox.add_argument("--json", action="store_true", help="print JSON")
    inbox.set_defaults(func=cmd_inbox)

    peek = _command(sub, "peek", "show the first messages of an inbox without removing them")
    peek.add_argument("agent", metavar="AGENT", help="agent id or name")
    peek.add_argument("-n", type=int, default=10, metavar="N", help="how many (default 10)")
    peek.add_argument("--urgent", action="store_true", help="the urgent inbox instead")
    peek.add_argument("--json", action="store_true", help="print JSON (the messages' wire JSON)")
    peek.set_defaults(func=cmd_peek)

    state = _command(sub, "state", "print an agent's or a task's stored state as JSON")
    state.add_argument("kind", choices=("agent", "task"), type=str.lower, help="agent or task")
    state.add_argument("id", metavar="ID",
                       help="the agent's id or name, or the task's id (or a unique prefix of it)")
    state.add_argument("--json", action="store_true", help="(the output is JSON either way)")
    state.set_defaults(func=cmd_state)

    tasks = _command(sub, "tasks", "list the town's tasks: id, state, assignee, description")
    tasks.add_argument("--json", action="store_true", help="print JSON")
    tasks.set_defaults(func=cmd_tasks)

    backlog = _command(sub, "backlog", "list the task ids waiting in the town's backlog, in order")
    backlog.add_argument("--json", action="store_true", help="print JSON")
    backlog.set_defaults(func=cmd_backlog)

    events = _command(sub, "events", "show the town's event stream (tt:<town>:events)",
                      "The last N events of the town, oldest first; with --follow, then every "
                      "new one as it comes (XREAD BLOCK, each event once) until Ctrl-C. "
                      "--json: a JSON document, or with --follow one JSON object per line.")
    events.add_argument("-n", type=int, default=20, metavar="N", help="how many past events (default 20)")
    events.add_argument("--follow", "-f", action="store_true", help="keep showing new events")
    events.add_argument("--json", action="store_true", help="print JSON")
    events.set_defaults(func=cmd_events)

    stop_agent = _command(sub, "stop", "ask an agent to stop (its stop flag, as Tinytown's 'tt stop')",
                          "Sets tt:<town>:stop:<agent> (SETEX, 1 hour): a Tinytown worker checks it "
                          "between rounds and stops. --clear withdraws the request.")
    stop_agent.add_argument("agent", metavar="AGENT", help="agent id or name")
    stop_agent.add_argument("--clear", action="store_true", help="withdraw a stop request")
    stop_agent.add_argument("--json", action="store_true", help="print JSON")
    stop_agent.set_defaults(func=cmd_stop)

    monitor = _command(sub, "monitor", "show the town's traffic live, one line per operation",
                       "Uses Redis MONITOR on a connection of its own and shows the commands that "
                       "change the town's keys (pushes, pops, state writes, streams) and its "
                       "broadcasts, with messages and state decoded; --all adds the reads "
                       "(GET, LLEN, SCAN...), such as other tinytown commands' lookups. "
                       "Stops on Ctrl-C or SIGTERM. MONITOR slows a busy server down: use it "
                       "to look, not to run for days.")
    monitor.add_argument("--all", action="store_true", help="show reads too")
    monitor.add_argument("--json", action="store_true", help="one JSON object per line")
    monitor.set_defaults(func=cmd_monitor)

    migrate = _command(sub, "migrate", "move keys of the old layout into the town",
                       "Renames the pre-isolation keys tt:<type>:<uuid> (types: agent, inbox, "
                       "urgent, task, activity, stop) and tt:backlog to tt:<town>:<type>[:<uuid>], "
                       "one RENAMENX per key: atomic, never overwriting an existing key "
                       "(such keys are skipped and reported), idempotent. Asks for "
                       "confirmation on the terminal unless --force. Exit status: with "
                       "--dry-run 0 when the preview was made (keys it would skip are "
                       "listed); otherwise 1 if a key was skipped or failed.")
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


def _socket_of_url(url: str) -> Path | None:
    return Path(url[len("unix://"):]) if url.startswith("unix:///") else None


def _read_town_file(directory: Path) -> str | None:
    """The name in ``directory/town.json`` (see tinytown.town.recorded_town_name)."""
    file = directory / TOWN_FILE
    try:
        text = file.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Failure(f"cannot read {file}: {exc}; fix or delete it") from None
    import json
    try:
        data = json.loads(text)
        return validate_town_name(data.get("name") if isinstance(data, dict) else None)
    except (ValueError, InvalidArgumentError):
        raise Failure(f"{file} does not record a valid town name; fix or delete it "
                      "(it holds {\"name\": \"my-town\"})") from None


class Context:
    """What every command needs: where Redis is, which town, how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.style = Style(sys.stdout)
        self.socket: Path | None = None
        if args.url:
            self.url = args.url
        else:
            self.socket = Path(args.socket or DEFAULT_SOCKET).expanduser().absolute()
            self.url = f"unix://{self.socket}"
        local = self.socket or _socket_of_url(self.url)
        self.directory = local.parent if local is not None else None
        self.town, self.town_source = self._town(args.town)
        self.layout = self._layout(args.layout)
        self._agents: AgentBook | None = None

    def _town(self, given: str | None) -> tuple[str, str]:
        """The town and where it came from (for messages)."""
        if given is not None:
            return validate_town_name(given), "--town"
        env = os.environ.get("TINYTOWN_TOWN")
        if env:
            try:
                return validate_town_name(env), "$TINYTOWN_TOWN"
            except InvalidArgumentError as exc:
                raise UsageError(f"$TINYTOWN_TOWN: {exc}") from None
        if self.directory is not None:
            recorded = _read_town_file(self.directory)
            if recorded is not None:
                return recorded, str(self.directory / TOWN_FILE)
            name, where = self.directory.name, f"the name of {self.directory}"
        else:
            name, where = Path.cwd().name, "the current directory's name"
        try:
            return validate_town_name(name), where
        except InvalidArgumentError:
            raise UsageError(f"{where} ({name!r}) is not a valid town name; "
                             "pass --town NAME or set TINYTOWN_TOWN") from None

    @staticmethod
    def _layout(given: str | None) -> str:
        if given is not None:
            return given
        env = os.environ.get("TINYTOWN_LAYOUT")
        if not env:
            return "hash"
        if env.lower() not in LAYOUTS:
            raise UsageError(f"$TINYTOWN_LAYOUT is {env!r}: use hash or json")
        return env.lower()

    # -- connecting -----------------------------------------------------------

    def connect(self, *, check_town: bool = True) -> SyncChannel:
        """A SyncChannel on the town, or Failure saying how to get a server."""
        from .sync_channel import SyncChannel
        try:
            channel = SyncChannel.connect(self.url, town=self.town, connect_timeout=5.0,
                                          layout=self.layout)
        except ConnectionError as exc:
            raise Failure(self.unreachable(exc)) from None
        if check_town:
            try:
                _warn_if_town_is_empty(self, channel)
            except BaseException:
                channel.close()
                raise
        return channel

    def channel(self) -> SyncChannel:
        return self.connect()

    def start_hint(self) -> str:
        where = "" if self.socket == Path.cwd() / DEFAULT_SOCKET else f" --socket {self.socket}"
        return f"'{PROG}{where} server start'"

    def unreachable(self, error: BaseException) -> str:
        """The message for a server that cannot be reached, naming the next step."""
        import re
        text = _one_line(error)
        found = re.match(r"cannot connect to Redis at \S+: (.*)$", text)
        reason = found.group(1) if found else text
        if self.socket is not None or _socket_of_url(self.url) is not None:
            directory = self.directory
            assert directory is not None
            if not directory.is_dir():
                return (f"cannot connect to Redis at {self.url}: there is no directory {directory} "
                        f"(check --socket; '{PROG} --socket {directory / DEFAULT_SOCKET} server "
                        "start --create' makes a new town there)")
            if self.socket is not None:
                return (f"cannot connect to Redis at {self.url} ({reason}): is the town's server "
                        f"running? Start it with {self.start_hint()}")
            return (f"cannot connect to Redis at {self.url} ({reason}): is the town's server "
                    f"running? Start it with '{PROG} --socket {_socket_of_url(self.url)} server start'")
        return f"cannot connect to Redis at {self.url} ({reason}): is redis-server running there?"

    def town_directory(self) -> Path:
        """The managed server's directory: the socket's, which must be named redis.sock."""
        if self.socket is None:
            raise UsageError("server start/stop manage a local Unix-socket server: use --socket, not --url")
        if self.socket.name != DEFAULT_SOCKET:
            raise UsageError(f"the managed server's socket is named {DEFAULT_SOCKET} "
                             f"(not {self.socket.name}): pass --socket DIR/{DEFAULT_SOCKET}")
        return self.socket.parent

    def agents(self, channel: SyncChannel) -> AgentBook:
        if self._agents is None:
            self._agents = AgentBook(channel)
        return self._agents


# ------------------------------------------------------------------ towns and keys


def _glob_escape(text: str) -> str:
    # Town names cannot hold * ? [ (validate_town_name); a backslash can.
    return text.replace("\\", "\\\\")


def _scan(channel: SyncChannel, pattern: str, *, first_only: bool = False) -> list[str]:
    """Keys matching ``pattern`` (SCAN, never KEYS), sorted, decoded."""
    keys: set[bytes] = set()
    cursor = b"0"
    while True:
        cursor, batch = channel.execute(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", 1000)
        keys.update(batch)
        if cursor == b"0" or (first_only and keys):
            break
    return sorted(k.decode(errors="replace") for k in keys)


_OLD_TYPES = ("agent", "inbox", "urgent", "task", "activity", "stop")


def _other_towns(channel: SyncChannel) -> tuple[list[str], bool]:
    """Town names that own keys on the server, and whether old-layout keys exist."""
    import re
    old = re.compile(r"tt:(?:(?:" + "|".join(_OLD_TYPES) + r"):[0-9a-fA-F-]{36}|backlog)")
    towns: set[str] = set()
    has_old = False
    for key in _scan(channel, "tt:*"):
        if old.fullmatch(key):
            has_old = True
            continue
        parts = key.split(":")
        if len(parts) >= 3 and parts[1]:
            towns.add(parts[1])
    return sorted(towns), has_old


def _warn_if_town_is_empty(ctx: Context, channel: SyncChannel) -> None:
    """Warn (stderr) when the town has no keys but the server holds other towns."""
    if _scan(channel, _glob_escape(channel.keys.prefix) + "*", first_only=True):
        return
    towns, has_old = _other_towns(channel)
    towns = [t for t in towns if t != ctx.town]
    if towns:
        listed = ", ".join(repr(t) for t in towns[:5]) + (" ..." if len(towns) > 5 else "")
        _warn(f"town {ctx.town!r} (from {ctx.town_source}) has no keys at {ctx.url}, "
              f"which holds town(s) {listed}: pass --town {towns[0]} to use it")
    elif has_old:
        _warn(f"town {ctx.town!r} has no keys at {ctx.url}, which holds keys of the old layout "
              f"(tt:<type>:<uuid>): '{PROG} migrate --dry-run' shows how they would move")


def _pipeline(channel: SyncChannel, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Several commands in one round trip; returns their replies.

    When a reply is an error (a key of another type under the town's
    prefix, say), the pipeline raises it: the batch is then run again one
    command at a time so that each error stays with its command, as a
    ReplyError value. That only happens when such a key exists.
    """
    if not commands:
        return []

    def op() -> Iterator[Any]:
        return (yield commands)

    try:
        return channel._run(op())  # type: ignore[arg-type, no-any-return]
    except ReplyError:
        pass
    out: list[Any] = []
    for command in commands:
        try:
            out.append(channel.execute(*command))
        except ReplyError as exc:
            out.append(exc)
    return out


def _read_states(channel: SyncChannel, keys: list[str]) -> list[Any]:
    """Each key's raw state (bytes for JSON, a flat list for a Hash, None if gone).

    Two pipelined round trips per ``BATCH`` keys, whatever their number:
    TYPE of each, then GET (JSON layout) or HGETALL (hash layout) as the
    type says (both layouts are read); a ReplyError for a key that holds neither.
    """
    out: list[Any] = []
    for i in range(0, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        types = _pipeline(channel, [(b"TYPE", k) for k in batch])
        reads = [(b"GET", k) if t == b"string" else (b"HGETALL", k) for k, t in zip(batch, types)
                 if t in (b"string", b"hash")]
        values = iter(_pipeline(channel, reads))
        for key, kind in zip(batch, types):
            if kind in (b"string", b"hash"):
                value = next(values)
                out.append(None if value == [] else value)
            elif kind == b"none":
                out.append(None)      # deleted since the SCAN
            else:
                out.append(ReplyError(f"WRONGTYPE {key} holds a {kind.decode(errors='replace')}"))
    return out


def load_agents(channel: SyncChannel) -> list[Agent]:
    """Every agent stored in the town, sorted by name.

    SyncChannel.list_agents: SCAN, then the states in one pipeline (not one
    round trip per agent); a key it cannot read is skipped with a logged warning.
    """
    return sorted(channel.list_agents(), key=lambda a: (a.name, str(a.id)))


def load_tasks(channel: SyncChannel) -> list[Task]:
    """Every task stored in the town, oldest first (SyncChannel.list_tasks)."""
    return sorted(channel.list_tasks(), key=lambda t: (t.created_at, str(t.id)))


class AgentBook:
    """The town's agents, read once per command: names for ids, ids for names."""

    def __init__(self, channel: SyncChannel) -> None:
        self.channel = channel
        self._all: list[Agent] | None = None
        self._by_id: dict[str, Agent] = {}

    def all(self) -> list[Agent]:
        if self._all is None:
            self._all = load_agents(self.channel)
            self._by_id = {str(a.id): a for a in self._all}
        return self._all

    def name(self, agent_id: str) -> str | None:
        """The agent's name, 'supervisor', or None if it is not registered."""
        if agent_id == SUPERVISOR:
            return "supervisor"
        self.all()
        agent = self._by_id.get(agent_id)
        return agent.name if agent is not None else None

    def label(self, agent_id: str) -> str:
        """Name when known, else the id."""
        return self.name(agent_id) or agent_id

    def resolve(self, text: str) -> AgentId:
        """An agent id from a UUID, 'supervisor', a registered agent's exact
        name or nickname, a unique prefix (4+ hex digits) of a registered
        agent's id, else as Tinytown's ``tt`` does (SyncChannel.resolve_agent_ref:
        name, display name or label ignoring ASCII case, 4-character short id)."""
        from ._uuid import normalize
        from .errors import AmbiguousAgentRefError
        from .ids import AgentId
        if text == "supervisor":
            return AgentId.supervisor()
        if normalize(text) is not None:
            return AgentId(text)
        matches = [a.id for a in self.all() if text in (a.name, a.nickname)]
        if not matches and len(text) >= 4:
            matches = [a.id for a in self.all() if str(a.id).startswith(text.lower())]
        if not matches:
            try:
                found = self.channel.resolve_agent_ref(text)
            except AmbiguousAgentRefError as exc:
                matches = [a.id for a in exc.matches]  # type: ignore[attr-defined]
            else:
                matches = [found.id] if found is not None else []
        town = self.channel.town
        if not matches:
            raise Failure(f"no agent named {text!r} in town {town!r} (nor an id): "
                          f"'{PROG} agents' lists them, '{PROG} register {text}' adds one")
        if len(matches) > 1:
            raise Failure(f"{len(matches)} agents are named {text!r} in town {town!r}: "
                          f"use an id ({', '.join(sorted(matches))})")
        return matches[0]


def resolve_agent(channel: SyncChannel, text: str) -> AgentId:
    """An agent id from a UUID, 'supervisor', or the name of an agent stored in the town."""
    return AgentBook(channel).resolve(text)


def resolve_task(channel: SyncChannel, text: str) -> TaskId:
    """A task id from a full id, or a unique prefix of the id of a task stored in the town.

    The rule of both ``state task ID`` and ``send --task-id``.
    """
    from ._uuid import normalize
    from .ids import TaskId
    if normalize(text) is not None:
        return TaskId(text)
    prefix = text.lower()
    if not prefix or any(c not in "0123456789abcdef-" for c in prefix):
        raise Failure(f"{text!r} is not a task id (a UUID, or the first hex digits of one): "
                      f"'{PROG} tasks' lists the town's tasks")
    keys = _scan(channel, _glob_escape(channel.keys.task_prefix) + prefix + "*")
    ids = [k[len(channel.keys.task_prefix):] for k in keys]
    ids = [i for i in ids if normalize(i) is not None]
    if not ids:
        raise Failure(f"no task in town {channel.town!r} has an id starting with {text!r}: "
                      f"'{PROG} tasks' lists them")
    if len(ids) > 1:
        raise Failure(f"{len(ids)} tasks in town {channel.town!r} have an id starting with "
                      f"{text!r}: give more of it ({', '.join(ids[:3])}...)")
    return TaskId(ids[0])


# ------------------------------------------------------------------ server


def cmd_server_start(ctx: Context) -> int:
    import asyncio

    from .town import Town

    directory = ctx.town_directory()
    args = ctx.args
    if not args.timeout > 0:
        raise UsageError("--timeout must be positive")
    if not directory.is_dir():
        if directory.exists():
            raise UsageError(f"{directory} is not a directory (check --socket)")
        if not args.create:
            raise UsageError(f"there is no directory {directory}: check --socket, or pass "
                             "--create to make a new town there")

    async def start() -> Town:
        town = await Town.start(directory, ctx.town, timeout=args.timeout)
        if args.aof or args.no_aof:
            await town.configure_persistence(appendonly=bool(args.aof))
        return town

    recorded = _read_town_file(directory) if directory.is_dir() else None
    if recorded is not None and recorded != ctx.town:
        _warn(f"{directory / TOWN_FILE} records town {recorded!r}: commands run against this "
              f"socket use it unless given --town {ctx.town}")
    town = asyncio.run(start())
    # The Town object is dropped without stop(): the server runs on, in its own
    # session, after this process exits.
    how = "started" if town.owns_server else "already running"
    aof = ", append-only on" if args.aof else ", append-only off" if args.no_aof else ""
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
    import time
    ctx.town_directory()
    timeout = ctx.args.timeout
    if not timeout > 0:
        raise UsageError("--timeout must be positive")
    try:
        channel = ctx.connect(check_town=False)
    except Failure:
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
                    raise Failure(f"redis-server at {ctx.url} refused SHUTDOWN: {exc}; "
                                  f"see {ctx.town_directory() / 'redis.log'}") from None
                time.sleep(0.1)
                continue
            raise Failure(f"redis-server at {ctx.url} answered SHUTDOWN but did not stop; "
                          f"see {ctx.town_directory() / 'redis.log'}")
    while not (_process_gone(pid) if pid is not None else not _answers(ctx)):
        if time.monotonic() > deadline:
            raise Failure(f"redis-server (pid {pid}) at {ctx.url} did not exit within {timeout:g} s; "
                          f"see {ctx.town_directory() / 'redis.log'}")
        time.sleep(0.02)
    _out(f"redis-server {ctx.style.green('stopped')} (pid {pid}) at {ctx.url}")
    return 0


def _answers(ctx: Context) -> bool:
    from .sync_channel import SyncChannel
    try:
        with SyncChannel.connect(ctx.url, town=ctx.town, connect_timeout=1.0) as channel:
            return bool(channel.execute(b"PING") == b"PONG")
    except ConnectionError:
        return False


def _stale_files(ctx: Context) -> dict[str, Any]:
    """What a dead server left in its directory: a pid file naming a dead process, the socket."""
    stale: dict[str, Any] = {}
    if ctx.socket is None or ctx.socket.name != DEFAULT_SOCKET:
        return stale
    pid_file = ctx.socket.parent / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and _process_gone(pid):
        stale["stale_pid_file"] = str(pid_file)
        stale["stale_pid"] = pid
    if ctx.socket.exists():
        stale["stale_socket"] = str(ctx.socket)
    return stale


def cmd_server_status(ctx: Context) -> int:
    report: dict[str, Any] = {"town": ctx.town, "url": ctx.url, "running": False}
    try:
        channel = ctx.connect(check_town=False)
    except Failure as exc:
        report["error"] = str(exc)
        report.update(_stale_files(ctx))
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
                messages=sum(n for _, n, _ in inboxes),
            )
    if ctx.args.json:
        _json_out(report)
        return 0 if report["running"] else 1
    s = ctx.style
    if report["running"]:
        _out(f"redis-server {s.green('running')} at {ctx.url} (pid {report['pid']}, "
             f"redis {report['redis_version']}, up {report['uptime_seconds']} s, "
             f"append-only {'on' if report['aof_enabled'] else 'off'})")
        _out(f"town {ctx.town!r}: {report['inboxes']} inbox(es), {report['messages']} message(s) waiting")
        return 0
    _out(f"redis-server {s.red('not running')} at {ctx.url}")
    if "stale_pid_file" in report or "stale_socket" in report:
        left = []
        if "stale_pid_file" in report:
            left.append(f"{report['stale_pid_file']} (pid {report['stale_pid']}, not running)")
        if "stale_socket" in report:
            left.append(report["stale_socket"])
        _out(f"a previous server stopped without cleaning up (killed?): it left {' and '.join(left)}; "
             f"{ctx.start_hint()} removes them and starts a new one on the same data")
    elif ctx.socket is not None:
        _out(f"start it with {ctx.start_hint()}")
    return 1


# ------------------------------------------------------------------ agents


def _agent_rows(channel: SyncChannel, agents: list[Agent]) -> list[tuple[int, int, bool]]:
    """(inbox length, urgent length, stop requested) per agent, pipelined."""
    keys = channel.keys
    out: list[tuple[int, int, bool]] = []
    for i in range(0, len(agents), BATCH):
        commands: list[tuple[Any, ...]] = []
        for agent in agents[i:i + BATCH]:
            commands += [(b"LLEN", keys.inbox(agent.id)), (b"LLEN", keys.urgent(agent.id)),
                         (b"EXISTS", keys.stop(agent.id))]
        replies = [r if isinstance(r, int) else 0 for r in _pipeline(channel, commands)]
        out += [(replies[j], replies[j + 1], replies[j + 2] > 0) for j in range(0, len(replies), 3)]
    return out


def _age(seconds: float) -> str:
    """``12s ago``, ``3m ago``, ``2h ago``, ``4d ago`` (``in 5s`` for a clock ahead of ours)."""
    ahead, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = f"{int(seconds)}s"
    return f"in {text}" if ahead else f"{text} ago"


def cmd_agents(ctx: Context) -> int:
    import json
    with ctx.channel() as channel:
        agents = ctx.agents(channel).all()
        rows = _agent_rows(channel, agents)
        registered = {str(a.id) for a in agents}
        others = [(a, n, u) for a, n, u in _inbox_lengths(channel) if a not in registered]
    if ctx.args.json:
        _json_out({"town": ctx.town, "agents": [
            dict(json.loads(a.to_json()), inbox=n, urgent=u, stop_requested=stop)
            for a, (n, u, stop) in zip(agents, rows)],
            "unregistered_inboxes": [{"agent": a, "length": n, "urgent": u} for a, n, u in others]})
        return 0
    s = ctx.style
    if not agents:
        _out(f"no agents registered in town {ctx.town!r}; '{PROG} register NAME' adds one")
    else:
        import time
        now = time.time()
        _table(s, ["NAME", "ID", "STATE", "INBOX", "URGENT", "STOP", "HEARTBEAT"],
               [[a.name, str(a.id), str(a.state), str(n), str(u), "requested" if stop else "-",
                 _age(now - a.last_heartbeat.timestamp())]
                for a, (n, u, stop) in zip(agents, rows)])
    if others:
        waiting = sum(n + u for _, n, u in others)
        _out(s.dim(f"{len(others)} inbox(es) of unregistered agents ({waiting} message(s)): "
                   f"'{PROG} inbox' lists them"))
    return 0


def cmd_register(ctx: Context) -> int:
    import json

    from .agent import Agent
    args = ctx.args
    agent = Agent.new(args.name, args.cli, args.agent_type)
    with ctx.connect(check_town=False) as channel:
        book = ctx.agents(channel)
        taken = [a for a in book.all() if args.name in (a.name, a.nickname)]
        if taken:
            raise Failure(f"town {ctx.town!r} already has an agent named {args.name!r} "
                          f"({taken[0].id}); names must be unique")
        channel.set_agent_state(agent)
    if args.json:
        _json_out(json.loads(agent.to_json()))
    else:
        _out(f"registered agent {args.name!r} ({agent.id}) in town {ctx.town!r}")
    return 0


def cmd_stop(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        book = ctx.agents(channel)
        agent = book.resolve(args.agent)
        if args.clear:
            channel.clear_stop(agent)
        else:
            channel.request_stop(agent)
    name = book.name(agent)
    if args.json:
        _json_out({"town": ctx.town, "agent": agent, "name": name, "stop_requested": not args.clear})
    elif args.clear:
        _out(f"withdrew the stop request of {name or agent} ({agent}) in town {ctx.town!r}")
    else:
        _out(f"asked {name or agent} ({agent}) to stop in town {ctx.town!r}: "
             f"{channel.keys.stop(agent)} is set for 1 hour; a Tinytown worker stops at its next round")
    return 0


# ------------------------------------------------------------------ messages


def _build_message(args: argparse.Namespace, to: AgentId, sender: AgentId,
                   task: Callable[[str], str]) -> Message:
    from .ids import MessageId
    from .message import ConfirmationType, Message, MessageType

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
        for name in ("task_id", "current_task"):
            if name in given:
                given[name] = task(given[name])
        cls = getattr(MessageType, "".join(part.capitalize() for part in kind.split("_")))
        msg_type = cls(**given)
    correlation = MessageId(args.correlation_id) if args.correlation_id else None
    message = Message.new(sender, to, msg_type).with_priority(args.priority)
    if correlation is not None:
        message = message.with_correlation(correlation)
    return message


def _send_urgent(channel: SyncChannel, message: Message) -> int:
    """The message into the urgent inbox (LPUSH); returns that inbox's length."""
    channel.send_urgent(message)
    return int(channel.urgent_len(message.to))


def cmd_send(ctx: Context) -> int:
    import json
    args = ctx.args
    with ctx.channel() as channel:
        book = ctx.agents(channel)
        to = book.resolve(args.to)
        sender = book.resolve(args.sender)
        message = _build_message(args, to, sender, lambda text: str(resolve_task(channel, text)))
        if args.urgent:
            waiting = _send_urgent(channel, message)
            where = "urgent inbox"
        else:
            channel.send(message)
            waiting = channel.inbox_len(to)
            where = "inbox, front" if message.priority.is_front else "inbox"
        name = book.name(to)
    if args.json:
        _json_out(json.loads(message.to_json()))
    else:
        whom = f"{name} ({to})" if name else str(to)
        _out(f"sent {message.msg_type.tag} {message.id} to {whom} in town {ctx.town!r} "
             f"({message.priority}, {where}; {waiting} waiting)")
    return 0


def _inbox_lengths(channel: SyncChannel) -> list[tuple[str, int, int]]:
    """(agent id, inbox length, urgent length) of every inbox of the town, pipelined."""
    keys = channel.keys
    agents = sorted({k[len(prefix):]
                     for prefix in (keys.inbox_prefix, keys.urgent_prefix)
                     for k in _scan(channel, _glob_escape(prefix) + "*")})
    out: list[tuple[str, int, int]] = []
    for i in range(0, len(agents), BATCH):
        batch = agents[i:i + BATCH]
        commands = [c for a in batch for c in ((b"LLEN", keys.inbox(a)), (b"LLEN", keys.urgent(a)))]
        # a key of another type under the prefix is not an inbox of ours: 0
        replies = [r if isinstance(r, int) else 0 for r in _pipeline(channel, commands)]
        out += [(a, replies[2 * j], replies[2 * j + 1]) for j, a in enumerate(batch)]
    return out


def cmd_inbox(ctx: Context) -> int:
    args = ctx.args
    with ctx.channel() as channel:
        book = ctx.agents(channel)
        if args.agent is not None:
            agent = book.resolve(args.agent)
            length = channel.inbox_len(agent)
            urgent = int(channel.execute(b"LLEN", channel.keys.urgent(agent)))
            if args.json:
                _json_out({"town": ctx.town, "agent": agent, "name": book.name(agent),
                           "length": length, "urgent": urgent})
            else:
                _out(str(urgent if args.urgent else length))
            return 0
        if args.urgent:
            raise UsageError("--urgent goes with AGENT ('tinytown inbox' lists both inboxes)")
        inboxes = _inbox_lengths(channel)
        names = {a: book.name(a) for a, _, _ in inboxes}
    if args.json:
        _json_out({"town": ctx.town, "inboxes": [
            {"agent": a, "name": names[a], "length": n, "urgent": u} for a, n, u in inboxes]})
        return 0
    if not inboxes:
        _out(f"no messages waiting in town {ctx.town!r}")
        return 0
    _table(ctx.style, ["NAME", "AGENT", "INBOX", "URGENT"],
           [[names[a] or "-", a, str(n), str(u)] for a, n, u in inboxes])
    return 0


def cmd_peek(ctx: Context) -> int:
    import json

    from .message import Message
    args = ctx.args
    if args.n < 1:
        raise UsageError("-n must be at least 1")
    with ctx.channel() as channel:
        book = ctx.agents(channel)
        agent = book.resolve(args.agent)
        key = channel.keys.urgent(agent) if args.urgent else channel.keys.inbox(agent)
        length = channel.execute(b"LLEN", key)
        raws = channel.execute(b"LRANGE", key, 0, args.n - 1)
        decoded: list[Message | None] = []
        for raw in raws:
            try:
                decoded.append(Message.from_json(raw))
            except TinytownError:
                decoded.append(None)   # shown as undecodable: peek must not fail on it
        name = book.name(agent)
        if not args.json:
            book.all()   # names for the senders, read once
    if args.json:
        items = [json.loads(m.to_json()) if m is not None
                 else {"undecodable": raw.decode(errors="replace")} for m, raw in zip(decoded, raws)]
        _json_out({"town": ctx.town, "agent": agent, "name": name, "urgent": bool(args.urgent),
                   "length": length, "messages": items})
        return 0
    s = ctx.style
    which = "urgent inbox" if args.urgent else "inbox"
    _out(s.dim(f"{which} of {name + ' ' if name else ''}({agent}) in town {ctx.town!r}: {length} message(s)"
               + (f", showing the first {len(raws)}" if length > len(raws) else "")))
    for i, (message, raw) in enumerate(zip(decoded, raws)):
        if message is None:
            _out(f"{i:3d} {s.red('undecodable')} {_short(raw.decode(errors='replace'))}")
        else:
            _out(f"{i:3d} {s.dim(message.created_at.rfc3339())} {describe_message(message, s, book.label)} "
                 + s.dim(f"id={message.id}"))
    return 0


def cmd_state(ctx: Context) -> int:
    import json
    args = ctx.args
    with ctx.channel() as channel:
        if args.kind == "agent":
            agent = ctx.agents(channel).resolve(args.id)
            state: Any = channel.get_agent_state(agent)
            what = f"agent {agent}"
        else:
            task = resolve_task(channel, args.id)
            state = channel.get_task(task)
            what = f"task {task}"
    if state is None:
        raise Failure(f"no {what} in town {ctx.town!r}: '{PROG} {args.kind}s' lists them")
    _json_out(json.loads(state.to_json()))
    return 0


# ------------------------------------------------------------------ tasks, backlog, events


def cmd_tasks(ctx: Context) -> int:
    import json
    with ctx.channel() as channel:
        tasks = load_tasks(channel)
        book = ctx.agents(channel)
        if tasks and not ctx.args.json:
            book.all()
    if ctx.args.json:
        _json_out({"town": ctx.town, "tasks": [json.loads(t.to_json()) for t in tasks]})
        return 0
    if not tasks:
        _out(f"no tasks in town {ctx.town!r}")
        return 0
    _table(ctx.style, ["ID", "STATE", "ASSIGNED", "DESCRIPTION"],
           [[str(t.id), str(t.state), book.label(t.assigned_to) if t.assigned_to else "-",
             _short(t.description, 60)] for t in tasks])
    return 0


def cmd_backlog(ctx: Context) -> int:
    from ._commands import decode_task
    with ctx.channel() as channel:
        ids = [str(i) for i in channel.backlog_list()]     # non-UUID entries skipped, logged
        states = _read_states(channel, [channel.keys.task(i) for i in ids])
    tasks: list[Task | None] = []
    for raw in states:
        try:
            tasks.append(None if raw is None or isinstance(raw, ReplyError) else decode_task(raw))
        except (TinytownError, ValueError):
            tasks.append(None)
    if ctx.args.json:
        _json_out({"town": ctx.town, "backlog": [
            {"task_id": i, "state": str(t.state) if t else None,
             "description": t.description if t else None} for i, t in zip(ids, tasks)]})
        return 0
    if not ids:
        _out(f"the backlog of town {ctx.town!r} is empty")
        return 0
    _table(ctx.style, ["#", "TASK", "STATE", "DESCRIPTION"],
           [[str(n), i, str(t.state) if t else "-", _short(t.description, 60) if t else "(no stored task)"]
            for n, (i, t) in enumerate(zip(ids, tasks))])
    return 0


def _decode_events(entries: Any) -> list[tuple[str, TownEvent]]:
    """(entry id, TownEvent) of XRANGE/XREAD entries, oldest first; as Tinytown's
    reader, the first ``data`` field is used and an entry without a valid one
    is left out."""
    from .events import TownEvent
    out: list[tuple[str, TownEvent]] = []
    for entry in entries or []:
        try:
            entry_id, flat = entry
            data = next(v for f, v in zip(flat[::2], flat[1::2]) if f == b"data")
            out.append((entry_id.decode(), TownEvent.from_json(data)))
        except (TinytownError, ValueError, TypeError, StopIteration, AttributeError):
            continue
    return out


def _recent_events(channel: SyncChannel, count: int) -> list[tuple[str, TownEvent]]:
    """The last ``count`` events of the town, oldest first."""
    return list(channel.read_recent_town_events(count)) if count else []


def _print_event(ctx: Context, book: AgentBook, entry_id: str, event: TownEvent) -> None:
    import json
    if ctx.args.json:
        _json_line({"id": entry_id, "event": json.loads(event.to_json())})
        return
    s = ctx.style
    parts = [s.dim(str(event.timestamp)), s.bold(str(event.event_type))]
    if event.agent_id is not None:
        parts.append(book.label(str(event.agent_id)))
    if event.old_state is not None or event.new_state is not None:
        parts.append(f"{event.old_state or '?'} -> {event.new_state or '?'}")
    if event.task_id is not None:
        parts.append(f"task={event.task_id}")
    if event.message:
        parts.append(_short(event.message, 100))
    _out(" ".join(parts))


def cmd_events(ctx: Context) -> int:
    import json
    args = ctx.args
    if args.n < 0:
        raise UsageError("-n must not be negative")
    channel = ctx.channel()
    try:
        book = ctx.agents(channel)
        key = channel.keys.events
        # The newest entry id before reading: following starts after it even
        # when the last entries are left out (not valid events).
        newest = channel.execute(b"XREVRANGE", key, b"+", b"-", b"COUNT", 1) if args.follow else None
        shown = _recent_events(channel, args.n)
        if shown and not args.json:
            book.all()
        if args.json and not args.follow:
            _json_out({"town": ctx.town, "events": [
                {"id": i, "event": json.loads(e.to_json())} for i, e in shown]})
            return 0
        if not shown and not args.follow and not args.json:
            _out(f"no events in town {ctx.town!r}")
        for entry_id, event in shown:
            _print_event(ctx, book, entry_id, event)
        if not args.follow:
            return 0
        # XREAD BLOCK from the last entry id seen: its start is exclusive, so
        # an event is shown once; the Channel has no blocking read of the
        # stream, hence the raw command.
        seen = ([newest[0][0].decode()] if newest else ["0-0"]) + [i for i, _ in shown]
        last = max(seen, key=lambda i: tuple(map(int, i.split("-"))))
        print(f"following the events of town {ctx.town!r} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        with _interruptible():
            while True:
                reply = channel.execute(b"XREAD", b"COUNT", 100, b"BLOCK", 1000, b"STREAMS", key, last)
                for _stream, entries in reply or []:
                    if entries:
                        last = entries[-1][0].decode()
                    for entry_id, event in _decode_events(entries):
                        _print_event(ctx, book, entry_id, event)
    except KeyboardInterrupt:
        print("events stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        channel.close()


class _interruptible:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt inside the block (SIGINT
    too: a shell's ``&`` starts commands ignoring it)."""

    def __enter__(self) -> None:
        import signal
        self.previous = {sig: signal.signal(sig, signal.default_int_handler)
                         for sig in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: object) -> None:
        import signal
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------ monitor


def cmd_monitor(ctx: Context) -> int:
    from . import _monitor
    args = ctx.args
    s = ctx.style
    channel = ctx.channel()
    try:
        # Names are read once, before MONITOR is on (so that these reads are
        # not shown), then kept up to date from the state writes it sees.
        book = ctx.agents(channel)
        book.all()
        with _interruptible():
            conn, _ = channel._open_connection()
            try:
                conn.send_command(b"MONITOR")
                conn.read_reply()           # +OK
                print(f"monitoring town {ctx.town!r} at {ctx.url} (Ctrl-C to stop)",
                      file=sys.stderr, flush=True)
                while True:
                    line = _monitor.parse_line(conn.read_reply())
                    if line is None:
                        continue
                    for event in _monitor.events(line, ctx.town, reads=args.all):
                        if isinstance(event.state, _agent_class()):
                            book._by_id[str(event.state.id)] = event.state
                        if args.json:
                            _json_line(event.to_dict())
                        else:
                            _out(_format_event(event, s, book))
            finally:
                conn.close()
    except KeyboardInterrupt:
        print("monitor stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        channel.close()


def _agent_class() -> type:
    from .agent import Agent
    return Agent


def _format_event(event: Event, s: Style, book: AgentBook | None = None) -> str:
    stamp = _iso(event.time)
    head = f"{s.dim(stamp)} {s.cyan(f'{event.command:8s}')}" + (f" {event.key}" if event.key else "")
    names = book.label if book is not None else None
    if event.message is not None:
        return f"{head}  {describe_message(event.message, s, names)}"
    if event.state is not None:
        return f"{head}  {describe_state(event.state, s)}"
    return f"{head}  {event.detail}" if event.detail else head


# ------------------------------------------------------------------ migrate


def cmd_migrate(ctx: Context) -> int:
    from .migrate import migrate_keys, plan_migration
    args = ctx.args
    with ctx.connect(check_town=False) as channel:
        plan = plan_migration(channel)
        preview = migrate_keys(channel, dry_run=True, moves=plan)
        if not plan:
            if args.json:
                _json_out(preview.to_dict())
            else:
                _out(f"nothing to migrate: no old-layout keys at {ctx.url}")
            return 0
        if args.dry_run:
            # The preview was made: that is success, whatever it would skip.
            _print_report(preview, ctx)
            return 0
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
    if report.skipped and not args.json:
        _out("skipped keys stay where they are: compare each with its new name, delete the one "
             f"to drop, and run '{PROG} migrate' again")
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
        _out(f"{s.yellow('would skip' if report.dry_run else 'skipped')} {move} "
             "(the new key exists; not overwritten)")
    for move, error in report.failed:
        _out(f"{s.red('failed')} {move}: {error}")
    _out(s.bold(report.summary()))


# ------------------------------------------------------------------ bench


def _split_bench(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` up to a ``bench`` command word, and what follows it (for tinytown.bench)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--socket", "--url", "--town", "--layout"):
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
    import importlib
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
    ctx: Context | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:       # --help, --version
            return int(exc.code or 0)
        if args.command == "bench":
            args.bench_args = bench_args
        command = f"{PROG} {args.command}" + (f" {args.action}" if getattr(args, "action", None) else "")
        func: Callable[[Context], int] = args.func
        ctx = Context(args)
        return func(ctx)
    except UsageError as exc:
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except InvalidArgumentError as exc:     # a bad id, URL, town name...
        print(f"{command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ConnectionError as exc:          # the server went away mid-command
        print(f"{command}: {ctx.unreachable(exc) if ctx else _one_line(exc)}", file=sys.stderr)
        return 1
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
