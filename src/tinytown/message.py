"""Messages exchanged between agents, and their JSON wire format.

A :class:`Message` serializes exactly as Rust's ``serde_json`` prints the
``tinytown::Message`` struct: ``id, from, to``, the message type flattened in
(``"type"`` first, then the variant's fields), ``priority, created_at,
correlation_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar

from . import _json
from ._json import FieldError, as_enum, as_id, as_opt_str, as_str, as_ts, missing
from ._uuid import CANONICAL_SHAPE, HEX_SHAPE, is_canonical, new_uuid4_text
from .enums import Priority
from .errors import EncodeError, InvalidArgumentError
from .ids import AgentId, MessageId
from .timestamp import Timestamp, parse_text

__all__ = ["Message", "MessageType", "ConfirmationType"]

_enc = _json.encode_str
_benc = _json.encode_str_bytes
_join = "".join
_bjoin = b"".join
_loads = _json.loads
_str_new = str.__new__
_now = Timestamp.now


def _check_str(value: Any, owner: str, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{owner}.{field} must be a str, got {type(value).__name__}: {value!r}")


def _check_opt_str(value: Any, owner: str, field: str) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"{owner}.{field} must be a str or None, got {type(value).__name__}: {value!r}")


def _field(obj: dict[str, Any], key: str, prefix: str = "") -> Any:
    try:
        return obj[key]
    except KeyError:
        missing(prefix + key)


# -- ConfirmationType ----------------------------------------------------------


class ConfirmationType:
    """Kind of a confirmation message: ``ConfirmationType.Received()``,
    ``.Acknowledged()``, ``.Thanks()``, ``.Approved()`` or ``.Rejected(reason)``."""

    __slots__ = ()
    _tag: ClassVar[str]

    # The variants, attached below (typed precisely for type checkers).
    Received: ClassVar[type[_Received]]
    Acknowledged: ClassVar[type[_Acknowledged]]
    Thanks: ClassVar[type[_Thanks]]
    Approved: ClassVar[type[_Approved]]
    Rejected: ClassVar[type[_Rejected]]

    def _json(self) -> str:
        """This value as a JSON object."""
        return '{"type":"' + self._tag + '"}'


@dataclass(frozen=True, slots=True)
class _Received(ConfirmationType):
    """The message was received."""

    __qualname__ = "ConfirmationType.Received"
    _tag: ClassVar[str] = "received"


@dataclass(frozen=True, slots=True)
class _Acknowledged(ConfirmationType):
    """The message was acknowledged."""

    __qualname__ = "ConfirmationType.Acknowledged"
    _tag: ClassVar[str] = "acknowledged"


@dataclass(frozen=True, slots=True)
class _Thanks(ConfirmationType):
    """Thanks."""

    __qualname__ = "ConfirmationType.Thanks"
    _tag: ClassVar[str] = "thanks"


@dataclass(frozen=True, slots=True)
class _Approved(ConfirmationType):
    """Approval."""

    __qualname__ = "ConfirmationType.Approved"
    _tag: ClassVar[str] = "approved"


@dataclass(frozen=True, slots=True)
class _Rejected(ConfirmationType):
    """Rejection, with the reason."""

    __qualname__ = "ConfirmationType.Rejected"
    _tag: ClassVar[str] = "rejected"
    reason: str

    def __post_init__(self) -> None:
        _check_str(self.reason, "ConfirmationType.Rejected", "reason")

    def _json(self) -> str:
        return '{"type":"rejected","reason":' + _enc(self.reason) + "}"


for _cls in (_Received, _Acknowledged, _Thanks, _Approved, _Rejected):
    _cls.__name__ = _cls.__qualname__.rsplit(".", 1)[1]
    setattr(ConfirmationType, _cls.__name__, _cls)

_ACK_SINGLETONS: dict[str, ConfirmationType] = {
    "received": _Received(),
    "acknowledged": _Acknowledged(),
    "thanks": _Thanks(),
    "approved": _Approved(),
}


def _decode_ack(value: Any) -> ConfirmationType:
    if type(value) is not dict:
        raise FieldError("ack_type", f"expected an object, got {_json.describe(value)}")
    tag = _field(value, "type", "ack_type.")
    if type(tag) is not str:
        raise FieldError("ack_type.type", f"expected a string, got {_json.describe(tag)}")
    ack = _ACK_SINGLETONS.get(tag)
    if ack is not None:
        return ack
    if tag == "rejected":
        return _Rejected(as_str(_field(value, "reason", "ack_type."), "ack_type.reason"))
    raise FieldError(
        "ack_type.type",
        f"unknown variant {tag!r}, expected one of 'received', 'acknowledged', 'thanks', 'approved', 'rejected'",
    )


# -- MessageType ---------------------------------------------------------------


class MessageType:
    """What a message says. Each kind is a frozen dataclass reachable as an
    attribute, usable in ``match``::

        match message.msg_type:
            case MessageType.TaskAssign(task_id=task_id): ...
            case MessageType.Ping(): ...
    """

    __slots__ = ()
    _tag: ClassVar[str]
    _actionable: ClassVar[bool]

    # The variants, attached below (typed precisely for type checkers).
    Task: ClassVar[type[_Task]]
    Query: ClassVar[type[_Query]]
    Informational: ClassVar[type[_Informational]]
    Confirmation: ClassVar[type[_Confirmation]]
    TaskAssign: ClassVar[type[_TaskAssign]]
    TaskDone: ClassVar[type[_TaskDone]]
    TaskFailed: ClassVar[type[_TaskFailed]]
    StatusRequest: ClassVar[type[_StatusRequest]]
    StatusResponse: ClassVar[type[_StatusResponse]]
    Ping: ClassVar[type[_Ping]]
    Pong: ClassVar[type[_Pong]]
    Shutdown: ClassVar[type[_Shutdown]]
    Custom: ClassVar[type[_Custom]]

    @property
    def tag(self) -> str:
        """The wire name of this kind (the JSON ``"type"``), e.g. ``"task_assign"``."""
        return self._tag

    def is_actionable(self) -> bool:
        """True when the message asks for work: task, query, task_assign,
        status_request, ping, shutdown and custom."""
        return self._actionable

    def is_informational_or_confirmation(self) -> bool:
        """The opposite of :meth:`is_actionable`."""
        return not self._actionable

    def _body(self) -> str:
        """The JSON members this variant contributes to the flattened Message."""
        return '"type":"' + self._tag + '"'

    def _body_json(self) -> bytes:
        """:meth:`_body` as UTF-8 (UnicodeEncodeError on a lone surrogate).
        The variants with text fields build it as bytes directly: their text
        goes from orjson into the message without a round trip through str."""
        return self._body().encode()


@dataclass(frozen=True, slots=True)
class _Task(MessageType):
    """A task described in words."""

    __qualname__ = "MessageType.Task"
    _tag: ClassVar[str] = "task"
    _actionable: ClassVar[bool] = True
    description: str

    def __post_init__(self) -> None:
        _check_str(self.description, "MessageType.Task", "description")

    def _body(self) -> str:
        return '"type":"task","description":' + _enc(self.description)

    def _body_json(self) -> bytes:
        return b'"type":"task","description":' + _benc(self.description)


@dataclass(frozen=True, slots=True)
class _Query(MessageType):
    """A question."""

    __qualname__ = "MessageType.Query"
    _tag: ClassVar[str] = "query"
    _actionable: ClassVar[bool] = True
    question: str

    def __post_init__(self) -> None:
        _check_str(self.question, "MessageType.Query", "question")

    def _body(self) -> str:
        return '"type":"query","question":' + _enc(self.question)

    def _body_json(self) -> bytes:
        return b'"type":"query","question":' + _benc(self.question)


@dataclass(frozen=True, slots=True)
class _Informational(MessageType):
    """A piece of information; no action expected."""

    __qualname__ = "MessageType.Informational"
    _tag: ClassVar[str] = "informational"
    _actionable: ClassVar[bool] = False
    summary: str

    def __post_init__(self) -> None:
        _check_str(self.summary, "MessageType.Informational", "summary")

    def _body(self) -> str:
        return '"type":"informational","summary":' + _enc(self.summary)

    def _body_json(self) -> bytes:
        return b'"type":"informational","summary":' + _benc(self.summary)


@dataclass(frozen=True, slots=True)
class _Confirmation(MessageType):
    """A confirmation (received, acknowledged, thanks, approved, rejected)."""

    __qualname__ = "MessageType.Confirmation"
    _tag: ClassVar[str] = "confirmation"
    _actionable: ClassVar[bool] = False
    ack_type: ConfirmationType

    def __post_init__(self) -> None:
        if not isinstance(self.ack_type, ConfirmationType):
            raise InvalidArgumentError(
                f"MessageType.Confirmation.ack_type must be a ConfirmationType, got {self.ack_type!r}"
            )

    def _body(self) -> str:
        return '"type":"confirmation","ack_type":' + self.ack_type._json()


@dataclass(frozen=True, slots=True)
class _TaskAssign(MessageType):
    """Assignment of a task (its id, as a string) to the recipient."""

    __qualname__ = "MessageType.TaskAssign"
    _tag: ClassVar[str] = "task_assign"
    _actionable: ClassVar[bool] = True
    task_id: str

    def __post_init__(self) -> None:
        _check_str(self.task_id, "MessageType.TaskAssign", "task_id")

    def _body(self) -> str:
        return '"type":"task_assign","task_id":' + _enc(self.task_id)


@dataclass(frozen=True, slots=True)
class _TaskDone(MessageType):
    """A task finished, with its result."""

    __qualname__ = "MessageType.TaskDone"
    _tag: ClassVar[str] = "task_done"
    _actionable: ClassVar[bool] = False
    task_id: str
    result: str

    def __post_init__(self) -> None:
        _check_str(self.task_id, "MessageType.TaskDone", "task_id")
        _check_str(self.result, "MessageType.TaskDone", "result")

    def _body(self) -> str:
        return '"type":"task_done","task_id":' + _enc(self.task_id) + ',"result":' + _enc(self.result)

    def _body_json(self) -> bytes:
        return b'"type":"task_done","task_id":' + _benc(self.task_id) + b',"result":' + _benc(self.result)


@dataclass(frozen=True, slots=True)
class _TaskFailed(MessageType):
    """A task failed, with the error."""

    __qualname__ = "MessageType.TaskFailed"
    _tag: ClassVar[str] = "task_failed"
    _actionable: ClassVar[bool] = False
    task_id: str
    error: str

    def __post_init__(self) -> None:
        _check_str(self.task_id, "MessageType.TaskFailed", "task_id")
        _check_str(self.error, "MessageType.TaskFailed", "error")

    def _body(self) -> str:
        return '"type":"task_failed","task_id":' + _enc(self.task_id) + ',"error":' + _enc(self.error)

    def _body_json(self) -> bytes:
        return b'"type":"task_failed","task_id":' + _benc(self.task_id) + b',"error":' + _benc(self.error)


@dataclass(frozen=True, slots=True)
class _StatusRequest(MessageType):
    """Asks the recipient for a StatusResponse."""

    __qualname__ = "MessageType.StatusRequest"
    _tag: ClassVar[str] = "status_request"
    _actionable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class _StatusResponse(MessageType):
    """An agent's state and current task (a string, or None)."""

    __qualname__ = "MessageType.StatusResponse"
    _tag: ClassVar[str] = "status_response"
    _actionable: ClassVar[bool] = False
    state: str
    current_task: str | None = None

    def __post_init__(self) -> None:
        _check_str(self.state, "MessageType.StatusResponse", "state")
        _check_opt_str(self.current_task, "MessageType.StatusResponse", "current_task")

    def _body(self) -> str:
        task = self.current_task
        return (
            '"type":"status_response","state":'
            + _enc(self.state)
            + ',"current_task":'
            + ("null" if task is None else _enc(task))
        )


@dataclass(frozen=True, slots=True)
class _Ping(MessageType):
    """Heartbeat request."""

    __qualname__ = "MessageType.Ping"
    _tag: ClassVar[str] = "ping"
    _actionable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class _Pong(MessageType):
    """Heartbeat answer."""

    __qualname__ = "MessageType.Pong"
    _tag: ClassVar[str] = "pong"
    _actionable: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class _Shutdown(MessageType):
    """Asks the recipient to shut down."""

    __qualname__ = "MessageType.Shutdown"
    _tag: ClassVar[str] = "shutdown"
    _actionable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class _Custom(MessageType):
    """Application-defined message: a kind and a payload string (often JSON text)."""

    __qualname__ = "MessageType.Custom"
    _tag: ClassVar[str] = "custom"
    _actionable: ClassVar[bool] = True
    kind: str
    payload: str

    def __post_init__(self) -> None:
        _check_str(self.kind, "MessageType.Custom", "kind")
        _check_str(self.payload, "MessageType.Custom", "payload")

    def _body(self) -> str:
        return '"type":"custom","kind":' + _enc(self.kind) + ',"payload":' + _enc(self.payload)

    def _body_json(self) -> bytes:
        return b'"type":"custom","kind":' + _benc(self.kind) + b',"payload":' + _benc(self.payload)


_VARIANTS = (
    _Task, _Query, _Informational, _Confirmation, _TaskAssign, _TaskDone, _TaskFailed,
    _StatusRequest, _StatusResponse, _Ping, _Pong, _Shutdown, _Custom,
)
for _variant in _VARIANTS:
    _variant.__name__ = _variant.__qualname__.rsplit(".", 1)[1]
    setattr(MessageType, _variant.__name__, _variant)
del _variant

# Variants without fields are immutable and all equal: decoding shares one each.
_STATUS_REQUEST = _StatusRequest()
_PING = _Ping()
_PONG = _Pong()
_SHUTDOWN = _Shutdown()


# Decoding builds variants without running their __init__: the values were
# just checked, and setting the slots directly skips the frozen-dataclass
# machinery on the hot path.
_MISSING: Any = object()
_obj_new = object.__new__


def _s(obj: dict[str, Any], key: str) -> str:
    """A required string member of the flattened message."""
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        missing(key)
    return as_str(value, key)


def _setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The ``__set__`` of slot ``name`` of ``cls`` (writes a frozen slot)."""
    set_slot: Callable[[Any, Any], None] = getattr(cls, name).__set__
    return set_slot


def _variant1(cls: type[MessageType], name: str) -> Callable[[dict[str, Any]], MessageType]:
    set_field = _setter(cls, name)

    def decode(obj: dict[str, Any]) -> MessageType:
        text = obj.get(name)
        if type(text) is not str:
            text = _s(obj, name)  # raises the error
        value = _obj_new(cls)
        set_field(value, text)
        return value

    return decode


def _variant2(cls: type[MessageType], name1: str, name2: str) -> Callable[[dict[str, Any]], MessageType]:
    set1 = _setter(cls, name1)
    set2 = _setter(cls, name2)

    def decode(obj: dict[str, Any]) -> MessageType:
        text1 = obj.get(name1)
        if type(text1) is not str:
            text1 = _s(obj, name1)  # raises the error
        text2 = obj.get(name2)
        if type(text2) is not str:
            text2 = _s(obj, name2)
        value = _obj_new(cls)
        set1(value, text1)
        set2(value, text2)
        return value

    return decode


_set_ack_type = _setter(_Confirmation, "ack_type")
_set_sr_state = _setter(_StatusResponse, "state")
_set_sr_current_task = _setter(_StatusResponse, "current_task")


def _d_confirmation(obj: dict[str, Any]) -> MessageType:
    value = _obj_new(_Confirmation)
    _set_ack_type(value, _decode_ack(_field(obj, "ack_type")))
    return value


def _d_status_response(obj: dict[str, Any]) -> MessageType:
    value = _obj_new(_StatusResponse)
    _set_sr_state(value, _s(obj, "state"))
    _set_sr_current_task(value, as_opt_str(obj.get("current_task"), "current_task"))
    return value


_DECODERS: dict[str, Callable[[dict[str, Any]], MessageType]] = {
    "task": _variant1(_Task, "description"),
    "query": _variant1(_Query, "question"),
    "informational": _variant1(_Informational, "summary"),
    "confirmation": _d_confirmation,
    "task_assign": _variant1(_TaskAssign, "task_id"),
    "task_done": _variant2(_TaskDone, "task_id", "result"),
    "task_failed": _variant2(_TaskFailed, "task_id", "error"),
    "status_request": lambda obj: _STATUS_REQUEST,
    "status_response": _d_status_response,
    "ping": lambda obj: _PING,
    "pong": lambda obj: _PONG,
    "shutdown": lambda obj: _SHUTDOWN,
    "custom": _variant2(_Custom, "kind", "payload"),
}
_TAGS = ", ".join(repr(t) for t in _DECODERS)


def _decode_msg_type(obj: dict[str, Any]) -> MessageType:
    tag = _field(obj, "type")
    decoder = _DECODERS.get(tag) if type(tag) is str else None
    if decoder is None:
        if type(tag) is str:
            raise FieldError("type", f"unknown message type {tag!r}, expected one of {_TAGS}")
        raise FieldError("type", f"expected a string, got {_json.describe(tag)}")
    return decoder(obj)


_PRIORITIES = _json.enum_table(Priority)
_NORMAL = Priority.NORMAL

# Agent ids met in canonical form -> the AgentId made for each: an agent's
# messages come from and go to a handful of agents, so most decodes find
# both ids here and skip the check and the copy (AgentIds are immutable; a
# shared one is as good as a fresh one). Cleared when full.
_AGENT_IDS: dict[str, AgentId] = {}
_AGENT_IDS_MAX = 1024
_agent_ids_get = _AGENT_IDS.get


def _agent_id(value: Any, field: str) -> AgentId:
    """``value`` from the JSON as an AgentId (remembered in _AGENT_IDS when
    canonical); FieldError for ``field`` if it is not a UUID string."""
    if type(value) is str and is_canonical(value):
        agent = _str_new(AgentId, value)
        if len(_AGENT_IDS) >= _AGENT_IDS_MAX:
            _AGENT_IDS.clear()
        _AGENT_IDS[value] = agent
        return agent
    return as_id(value, AgentId, field)


# -- Message -------------------------------------------------------------------


class Message:
    """A message from one agent to another (immutable).

    ``Message(id, from_, to, msg_type, priority=Priority.NORMAL,
    created_at=None, correlation_id=None)``; ``created_at`` defaults to now.
    Ids may be given as the id type, a :class:`uuid.UUID` or UUID text.
    Most code uses :meth:`new` and the ``with_*`` methods instead.
    """

    __slots__ = ("id", "from_", "to", "msg_type", "priority", "created_at", "correlation_id")
    __match_args__ = __slots__

    id: MessageId
    from_: AgentId
    to: AgentId
    msg_type: MessageType
    priority: Priority
    created_at: Timestamp
    correlation_id: MessageId | None

    def __init__(
        self,
        id: MessageId | Any,
        from_: AgentId | Any,
        to: AgentId | Any,
        msg_type: MessageType,
        priority: Priority | str = Priority.NORMAL,
        created_at: Timestamp | Any = None,
        correlation_id: MessageId | Any = None,
    ) -> None:
        if not isinstance(msg_type, MessageType):
            raise InvalidArgumentError(f"Message: msg_type must be a MessageType, got {msg_type!r}")
        if type(priority) is not Priority:
            priority = _coerce_priority(priority)
        if created_at is None:
            created_at = _now()
        elif not isinstance(created_at, Timestamp):
            created_at = Timestamp.from_datetime(created_at)
        _set_id(self, id if type(id) is MessageId else MessageId(id))
        _set_from(self, from_ if type(from_) is AgentId else AgentId(from_))
        _set_to(self, to if type(to) is AgentId else AgentId(to))
        _set_msg_type(self, msg_type)
        _set_priority(self, priority)
        _set_created_at(self, created_at)
        _set_correlation_id(
            self,
            correlation_id
            if correlation_id is None or type(correlation_id) is MessageId
            else MessageId(correlation_id),
        )

    @classmethod
    def new(cls, from_id: AgentId | Any, to_id: AgentId | Any, msg_type: MessageType) -> Message:
        """A new message with a fresh id, normal priority, created now.

        Raises :class:`~tinytown.InvalidArgumentError` if ``msg_type`` is not a
        MessageType or an id is malformed.
        """
        if not isinstance(msg_type, MessageType):
            raise InvalidArgumentError(f"Message: msg_type must be a MessageType, got {msg_type!r}")
        self = _object_new(cls)
        _set_id(self, _str_new(MessageId, new_uuid4_text()))
        _set_from(self, from_id if type(from_id) is AgentId else AgentId(from_id))
        _set_to(self, to_id if type(to_id) is AgentId else AgentId(to_id))
        _set_msg_type(self, msg_type)
        _set_priority(self, _NORMAL)
        _set_created_at(self, _now())
        _set_correlation_id(self, None)
        return self

    def with_priority(self, priority: Priority | str) -> Message:
        """A copy of this message with another priority.

        Raises :class:`~tinytown.InvalidArgumentError` for anything but a Priority or
        ``'low'``, ``'normal'``, ``'high'``, ``'urgent'``.
        """
        if type(priority) is not Priority:
            priority = _coerce_priority(priority)
        return _make(
            type(self), self.id, self.from_, self.to, self.msg_type, priority,
            self.created_at, self.correlation_id,
        )

    def with_correlation(self, message_id: MessageId | Any) -> Message:
        """A copy of this message correlated to ``message_id`` (request/response).

        Raises :class:`~tinytown.InvalidArgumentError` for a malformed id.
        """
        corr = message_id if type(message_id) is MessageId else MessageId(message_id)
        return _make(
            type(self), self.id, self.from_, self.to, self.msg_type, self.priority,
            self.created_at, corr,
        )

    def is_actionable(self) -> bool:
        """True when the message type asks the recipient to do something."""
        return self.msg_type._actionable

    # -- JSON -----------------------------------------------------------------

    def to_json(self) -> bytes:
        """The message as compact JSON (UTF-8 bytes), byte-identical to Rust's
        serde_json. Raises :class:`~tinytown.EncodeError` for text with a lone
        surrogate, which JSON cannot carry. (Replaced by the C encoder of
        ``tinytown._codec`` where that is built; this is its reference.)"""
        try:
            return self._to_json_py()
        except UnicodeEncodeError as exc:
            raise EncodeError(
                f"Message contains a lone surrogate ({exc.object[exc.start:exc.end]!r}), which JSON cannot carry"
            ) from None

    def _to_json_py(self) -> bytes:
        """:meth:`to_json` in Python: the reference for the C encoder
        (``tinytown._codec``) and its stand-in where that did not build.
        Raises UnicodeEncodeError on a lone surrogate."""
        corr = self.correlation_id
        # Built as bytes in three pieces, each joined in one copy: the ids,
        # priority and timestamp are ASCII; the body (the only free text)
        # comes encoded from the variant.
        return _bjoin((
            _join(('{"id":"', self.id, '","from":"', self.from_, '","to":"', self.to, '",')).encode(),
            self.msg_type._body_json(),
            _join((',"priority":"', self.priority._value_, '","created_at":"', self.created_at.rfc3339(),
                   '","correlation_id":null}' if corr is None else '","correlation_id":"' + corr + '"}')).encode(),
        ))

    @classmethod
    def from_json(cls, data: bytes | str) -> Message:
        """Parse a message. Raises :class:`~tinytown.DecodeError` on anything
        Rust would reject; the error's ``raw`` holds ``data``."""
        try:
            obj = _loads(data)
        except (ValueError, TypeError):  # not Exception: a signal handler's must propagate
            obj = None
        if type(obj) is not dict:
            obj = _json.load_object(data, "Message")  # raises the precise DecodeError
        # The hot path of every receive: the usual case (what Rust and
        # Tinytown write) is tested inline and the helpers, which make the
        # errors, are called only for the rest. Fields are checked, and so
        # errors reported, in the order id, from, to, type, priority,
        # correlation_id, created_at.
        try:
            try:
                mid = obj["id"]
                from_ = obj["from"]
                to = obj["to"]
                created_at = obj["created_at"]
            except KeyError as exc:
                missing(exc.args[0])
            # A canonical id: is_canonical, inline.
            if type(mid) is str and mid.isascii() and mid.encode().translate(HEX_SHAPE) == CANONICAL_SHAPE:
                mid = _str_new(MessageId, mid)
            else:
                mid = as_id(mid, MessageId, "id")
            try:
                sender = _agent_ids_get(from_)
                recipient = _agent_ids_get(to)
            except TypeError:  # unhashable (a list or an object): an error below
                sender = recipient = None
            if sender is None:
                sender = _agent_id(from_, "from")
            if recipient is None:
                recipient = _agent_id(to, "to")
            tag = obj.get("type")
            decoder = _DECODERS.get(tag) if type(tag) is str else None
            msg_type = _decode_msg_type(obj) if decoder is None else decoder(obj)
            priority = obj.get("priority", _NORMAL)
            if priority is not _NORMAL:
                priority = _PRIORITIES.get(priority) if type(priority) is str else None
                if priority is None:
                    priority = as_enum(obj["priority"], _PRIORITIES, "priority")
            corr = obj.get("correlation_id")
            if corr is not None:
                if type(corr) is str and corr.isascii() and corr.encode().translate(HEX_SHAPE) == CANONICAL_SHAPE:
                    corr = _str_new(MessageId, corr)
                else:
                    corr = as_id(corr, MessageId, "correlation_id")
            created = None
            if type(created_at) is str:
                try:
                    created = parse_text(created_at)
                except ValueError:
                    pass
            if created is None:
                created = as_ts(created_at, "created_at")  # raises the error
            return _make(cls, mid, sender, recipient, msg_type, priority, created, corr)
        except MemoryError:
            raise
        except Exception as exc:
            raise _json.wrap_error("Message", exc, data) from None

    # -- object protocol ------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"Message is immutable; use with_priority()/with_correlation() or build a new one (setting {name!r})"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Message is immutable (deleting {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.id == other.id
            and self.from_ == other.from_
            and self.to == other.to
            and self.msg_type == other.msg_type
            and self.priority is other.priority
            and self.created_at == other.created_at
            and self.correlation_id == other.correlation_id
        )

    def __hash__(self) -> int:
        return hash((self.id, self.from_, self.to, self.msg_type, self.priority, self.created_at, self.correlation_id))

    def __repr__(self) -> str:
        return (
            f"Message(id={self.id!r}, from_={self.from_!r}, to={self.to!r}, msg_type={self.msg_type!r}, "
            f"priority={self.priority!r}, created_at={self.created_at!r}, correlation_id={self.correlation_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.id, self.from_, self.to, self.msg_type, self.priority, self.created_at, self.correlation_id),
        )

    def __copy__(self) -> Message:
        return self

    def __deepcopy__(self, memo: Any) -> Message:
        return self


_object_new = object.__new__
_set_id = _setter(Message, "id")
_set_from = _setter(Message, "from_")
_set_to = _setter(Message, "to")
_set_msg_type = _setter(Message, "msg_type")
_set_priority = _setter(Message, "priority")
_set_created_at = _setter(Message, "created_at")
_set_correlation_id = _setter(Message, "correlation_id")


class _MessageSlots:
    """Message's layout without its immutability: from_json fills one and
    assigns it Message as its class (the layouts are the same, so Python
    allows it)."""

    __slots__ = Message.__slots__

    id: MessageId
    from_: AgentId
    to: AgentId
    msg_type: MessageType
    priority: Priority
    created_at: Timestamp
    correlation_id: MessageId | None


def _make(
    cls: type[Message],
    id: MessageId,
    from_: AgentId,
    to: AgentId,
    msg_type: MessageType,
    priority: Priority,
    created_at: Timestamp,
    correlation_id: MessageId | None,
) -> Message:
    """Build a Message from values already of the right types (no checks)."""
    if cls is Message:
        # Filled as a _MessageSlots (plain slot stores, no Message.__setattr__)
        # and then made a Message: a third of the cost of the slot setters.
        plain = _object_new(_MessageSlots)
        plain.id = id
        plain.from_ = from_
        plain.to = to
        plain.msg_type = msg_type
        plain.priority = priority
        plain.created_at = created_at
        plain.correlation_id = correlation_id
        plain.__class__ = Message  # type: ignore[assignment]
        return plain  # type: ignore[return-value]
    self = _object_new(cls)  # a subclass: its own layout, through the setters
    _set_id(self, id)
    _set_from(self, from_)
    _set_to(self, to)
    _set_msg_type(self, msg_type)
    _set_priority(self, priority)
    _set_created_at(self, created_at)
    _set_correlation_id(self, correlation_id)
    return self


def _coerce_priority(value: Any) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        raise InvalidArgumentError(
            f"Message: priority must be a Priority or one of 'low', 'normal', 'high', 'urgent', got {value!r}"
        ) from None



# -- the C encoder ---------------------------------------------------------------


def _c_templates() -> dict[type, tuple[bytes | str, ...]]:
    """The body template of each variant whose fields are all text (str, or
    str | None written as null), for ``tinytown._codec``: its JSON members in
    declaration order, ``(bytes, field name, bytes, ..., bytes)``. The others
    (Confirmation's enum) stay with their ``_body_json``."""
    from dataclasses import fields

    templates: dict[type, tuple[bytes | str, ...]] = {}
    for variant in _VARIANTS:
        members = fields(variant)
        if any(f.type not in ("str", "str | None") for f in members):
            continue
        literal = b'"type":"' + variant._tag.encode() + b'"'
        spec: list[bytes | str] = []
        for f in members:
            spec += [literal + b',"' + f.name.encode() + b'":', f.name]
            literal = b""
        templates[variant] = (*spec, literal)
    return templates


#: Message.to_json in Python, kept as the C encoder's reference and fallback.
_py_to_json = Message.to_json
try:
    from . import _codec
except ImportError:     # not built: the Python encoder does it all
    pass
else:
    _codec.configure(Message, _c_templates(), _py_to_json)
    # The C function is the method itself: no Python frame on the send path.
    Message.to_json = _codec.to_json  # type: ignore[method-assign]
