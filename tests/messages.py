"""Message builders shared by the reliability tests."""

from __future__ import annotations

from tinytown import AgentId, Message, MessageType, Priority


def task_message(to: AgentId, text: str = "", priority: Priority = Priority.NORMAL) -> Message:
    """A Task message from the supervisor to ``to``, with ``text`` as its description."""
    message = Message.new(AgentId.supervisor(), to, MessageType.Task(description=text))
    return message if priority is Priority.NORMAL else message.with_priority(priority)
