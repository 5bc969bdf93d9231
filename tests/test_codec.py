"""The Message encoder in C (``tinytown._codec``) against its Python reference.

Where the extension is built, ``Message.to_json`` is ``tinytown._codec.to_json``;
``tinytown.message._py_to_json`` is the pure-Python encoder it replaces, whose
output the golden vectors pin to serde_json's (tests/test_wire.py). Here the two
must agree byte for byte on every variant, every code point in every text
position, every escape at every offset of the 16- and 8-byte scans, and raise
the same errors. (tests/test_no_extension.py runs the Channel suites without
the module, on the Python encoder.)
"""

from __future__ import annotations

import json

import orjson
import pytest

from tinytown import EncodeError, Priority
from tinytown import message as message_module
from tinytown.ids import AgentId, MessageId
from tinytown.message import ConfirmationType, Message, MessageType
from tinytown.timestamp import Timestamp

codec = pytest.importorskip("tinytown._codec", reason="the C encoder is not built here")
py_to_json = message_module._py_to_json

SUP, AGENT = AgentId.supervisor(), AgentId("e0fcaecf-8417-4909-ade1-2d8ba58751e7")
CREATED = Timestamp.parse("2026-11-30T07:39:34.893655266Z")


def _message(msg_type: MessageType, **kw: object) -> Message:
    return Message(MessageId.new(), SUP, AGENT, msg_type, created_at=CREATED, **kw)  # type: ignore[arg-type]


def _variants(text: str) -> list[MessageType]:
    """Every variant, its text fields (if any) set to ``text``."""
    return [
        MessageType.Task(description=text), MessageType.Query(question=text),
        MessageType.Informational(summary=text), MessageType.Confirmation(ack_type=ConfirmationType.Received()),
        MessageType.Confirmation(ack_type=ConfirmationType.Rejected(reason=text)),
        MessageType.TaskAssign(task_id=text), MessageType.TaskDone(task_id=text, result=text + "!"),
        MessageType.TaskFailed(task_id="t", error=text), MessageType.StatusRequest(),
        MessageType.StatusResponse(state=text), MessageType.StatusResponse(state="busy", current_task=text),
        MessageType.Ping(), MessageType.Pong(), MessageType.Shutdown(),
        MessageType.Custom(kind=text, payload=text * 2),
    ]


def test_message_to_json_is_the_c_encoder() -> None:
    assert Message.to_json is codec.to_json
    assert py_to_json is not codec.to_json


@pytest.mark.parametrize("text", ["", "x", 'q"uote\\back\x00\x1f\x7f\b\t\n\f\r',
                                  "caf\u00e9 \u2028 \U0001f600", "Review the pull request #1234. " * 30])
@pytest.mark.parametrize("priority", list(Priority))
def test_every_variant_encodes_as_the_python_encoder(text: str, priority: Priority) -> None:
    for msg_type in _variants(text):
        for corr in (None, MessageId.new()):
            message = _message(msg_type, priority=priority, correlation_id=corr)
            out = message.to_json()
            assert type(out) is bytes
            assert out == py_to_json(message), msg_type
            assert Message.from_json(out) == message


def test_every_code_point_in_every_position_of_the_scans() -> None:
    """A character alone, after 0-17 ASCII bytes (each lane of the 16-byte
    SSE2 scan and the 8-byte one, and the byte tail), and repeated past
    16 bytes: the same bytes as the Python encoder, and as serde_json's
    escaping (json.dumps with ensure_ascii=False)."""
    for cp in [*range(0xD800), *range(0xE000, 0x110000)]:
        ch = chr(cp)
        texts = [ch, ch * 17] if cp >= 0x80 else [("a" * k) + ch + "z" * (k % 5) for k in range(18)] + [ch * 33]
        for text in texts:
            message = _message(MessageType.Custom(kind=ch, payload=text))
            out = message.to_json()
            assert out == py_to_json(message), hex(cp)
            assert orjson.loads(out)["payload"] == text
    # and the escapes themselves are serde_json's
    for cp in range(0x80):
        out = _message(MessageType.Task(description=chr(cp))).to_json()
        assert b'"description":' + json.dumps(chr(cp), ensure_ascii=False).encode() + b"," in out, hex(cp)


def test_many_escapes_and_long_text() -> None:
    for text in ["\x00" * 1000, '"\\' * 777, ("\n" + "x" * 15) * 300, "\x01" + "y" * 100_000 + "\x1f",
                 "\u00e9\x00" * 5000]:
        message = _message(MessageType.TaskDone(task_id=text[:50], result=text))
        assert message.to_json() == py_to_json(message)


@pytest.mark.parametrize("make", [
    lambda s: MessageType.Task(description=s), lambda s: MessageType.Custom(kind="k", payload=s),
    lambda s: MessageType.Custom(kind=s, payload="p"), lambda s: MessageType.StatusResponse("x", s),
    lambda s: MessageType.Confirmation(ConfirmationType.Rejected(reason=s)),
], ids=["task", "custom-payload", "custom-kind", "status-current-task", "confirmation"])
def test_a_lone_surrogate_raises_encode_error(make: object) -> None:
    message = _message(make("ok \ud800 no"))  # type: ignore[operator]
    with pytest.raises(EncodeError, match="lone surrogate"):
        message.to_json()
    with pytest.raises(EncodeError, match="lone surrogate"):
        py_to_json(message)


def test_a_fresh_timestamp_without_cached_text() -> None:
    # Message.new stamps now(); the text of a fresh Timestamp may not be cached yet.
    for _ in range(50):
        message = Message.new(SUP, AGENT, MessageType.Ping())
        assert message.to_json() == py_to_json(message)
    parsed = Timestamp.parse("2026-02-28T23:59:60.5Z")   # a leap second, parsed
    message = _message(MessageType.Pong()).with_correlation(MessageId.new())
    message = Message(message.id, SUP, AGENT, MessageType.Pong(), created_at=parsed)
    assert message.to_json() == py_to_json(message)
    assert b'"created_at":"2026-02-28T23:59:60.500Z"' in message.to_json()


def test_a_subclass_goes_to_the_python_encoder() -> None:
    class Loud(Message):
        __slots__ = ()

        @property  # type: ignore[misc]
        def priority(self) -> Priority:
            return Priority.URGENT

    message = _message(MessageType.Ping())
    loud = Loud(message.id, SUP, AGENT, MessageType.Ping(), created_at=CREATED)
    assert loud.to_json() == py_to_json(loud)


def test_configure_refuses_bad_templates() -> None:
    templates = message_module._c_templates()
    with pytest.raises(TypeError):
        codec.configure(Message, {MessageType.Ping: [b"x"]}, py_to_json)
    with pytest.raises(ValueError):
        codec.configure(Message, {MessageType.Ping: (b"x", "y")}, py_to_json)
    with pytest.raises(TypeError):
        codec.configure(Message, {MessageType.Ping: (b"x", b"y", b"z")}, py_to_json)
    with pytest.raises(TypeError):
        codec.configure(Message, templates, None)
    # nothing changed by the refusals
    message = _message(MessageType.Task(description="still fine"))
    assert message.to_json() == py_to_json(message)
