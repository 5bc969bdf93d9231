"""Test data and helpers shared by the Channel (async) and SyncChannel test suites,
so that both run the same behavioural cases on the same inputs."""

from __future__ import annotations

from datetime import timedelta

from tinytown import AgentId, Message, MessageType, Priority


def msg(to: AgentId, text: str, priority: Priority = Priority.NORMAL) -> Message:
    """A Task message from the supervisor to ``to`` whose description is ``text``."""
    return Message.new(AgentId.supervisor(), to, MessageType.Task(description=text)).with_priority(priority)


def text_of(message: Message | None) -> str:
    """The description of a Task message (asserting it is one)."""
    assert message is not None
    assert isinstance(message.msg_type, MessageType.Task)
    return message.msg_type.description


# Sent in this order, the five land so that popping yields PRIORITY_ORDER.
PRIORITY_SENDS = [
    ("normal-1", Priority.NORMAL), ("low", Priority.LOW), ("high", Priority.HIGH),
    ("normal-2", Priority.NORMAL), ("urgent", Priority.URGENT),
]
PRIORITY_ORDER = ["urgent", "high", "normal-1", "low", "normal-2"]


def send_many_case(a: AgentId, b: AgentId) -> tuple[list[Message], list[str], list[str]]:
    """Messages for send_many, a's expected inbox (all of it) and b's first five pops.

    More than one variadic push's worth for ``a``, and runs of front/back
    messages for ``b`` whose result must equal one send per message.
    """
    messages = [msg(a, f"a{i}") for i in range(2500)]
    messages += [msg(b, "b-normal"), msg(b, "b-urgent", Priority.URGENT), msg(a, "a-last")]
    messages += [msg(b, f"b-high{i}", Priority.HIGH) for i in range(3)]
    inbox_a = [f"a{i}" for i in range(2500)] + ["a-last"]
    pops_b = ["b-high2", "b-high1", "b-high0", "b-urgent", "b-normal"]
    return messages, inbox_a, pops_b


BAD_URLS = [
    "http://localhost:6379", "unix://relative/path.sock", "unix:relative.sock", "redis://",
    "redis://host:notaport", "redis://host:6379/db", "rediss://", "rediss://host:6379/db",
    "rediss://host:6379?ssl_cert_reqs=none", "", 42,
]
BAD_TOWNS = ["", "a:b", "a*", "a?", "a[b", "a b", "tab\t", None]
BAD_IDS = ["not-a-uuid", "", 12, None, b"\x00" * 16]
BAD_TIMEOUTS = [0, -1, float("nan"), float("inf"), "5", None, True, timedelta(0)]
NOT_MESSAGES = [None, "text", {"id": 1}]
# Left in an inbox by a foreign writer: neither is a Message.
UNDECODABLE = [b"\xffnot json", b'{"id":"x"}']
