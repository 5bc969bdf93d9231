"""Helpers shared by the JSON (and Redis Hash) codecs of the data model.

Encoding writes JSON text by hand, field by field, in serde's order; strings go
through the C string encoder of the standard library, which escapes exactly
like serde_json. Decoding parses with orjson and checks each field the way the
Rust derive would, raising :class:`~tinytown.DecodeError` on any mismatch.
"""

from __future__ import annotations

import json.encoder
import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import orjson

from .errors import DecodeError, EncodeError
from ._uuid import match_canonical, normalize
from .ids import UuidId
from .timestamp import Timestamp, parse_rfc3339, parse_text

log = logging.getLogger("tinytown")

__all__: list[str] = []

# ``encode_str(s)`` returns ``s`` as a quoted JSON string, escaped exactly as
# serde_json escapes: '"', '\\', \b \t \n \f \r, the other control characters
# as \u00XX with lowercase hex; everything else raw (DEL, U+2028/2029, all
# non-ASCII). The stdlib's C encoder (the ensure_ascii=False flavour) and
# orjson both write exactly that (checked for every code point in
# tests/test_model.py). The stdlib's walks the string a character at a time,
# ~4 ns a character; orjson scans ASCII text with SIMD: it wins past a few
# dozen characters of ASCII (a task description), the stdlib's wins on short
# text and on text in wider Unicode kinds.
_c_encode_str: Callable[[str], str] = (
    json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # type: ignore[attr-defined]
)
_dumps = orjson.dumps
_ORJSON_FROM = 40  # characters


def encode_str(s: str) -> str:
    if len(s) >= _ORJSON_FROM and s.isascii():  # isascii: O(1), no surrogate possible
        return _dumps(s).decode()
    return _c_encode_str(s)


loads = orjson.loads
U64_MAX = (1 << 64) - 1

_str_new = str.__new__
_IdT = TypeVar("_IdT", bound=UuidId)
_E = TypeVar("_E")


class FieldError(Exception):
    """A field failed to decode; turned into a DecodeError by the caller."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field = field


def type_name(value: Any) -> str:
    """JSON name of the type of a value orjson produced."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def describe(value: Any) -> str:
    """Short description of a bad value for an error message."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type_name(value)} {text}"


def raw_bytes(data: Any) -> bytes | None:
    """The input of a decode as bytes, for :attr:`DecodeError.raw`."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return None


def load_object(data: Any, owner: str) -> dict[str, Any]:
    """Parse ``data`` (bytes or str) and check it is a JSON object."""
    if not isinstance(data, (bytes, str, bytearray, memoryview)):
        raise DecodeError(f"invalid {owner} JSON: expected bytes or str, got {type(data).__name__}")
    try:
        obj = loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid {owner} JSON: {exc}", raw=raw_bytes(data)) from None
    if type(obj) is not dict:
        raise DecodeError(
            f"invalid {owner} JSON: expected an object, got {type_name(obj)}", raw=raw_bytes(data)
        )
    return obj


def wrap_error(owner: str, exc: Exception, data: Any, what: str = "JSON") -> DecodeError:
    """A DecodeError for an exception raised while decoding a parsed document.

    A KeyError is a required field that is missing (decoders index the
    parsed object directly, which is the fast path)."""
    if type(exc) is KeyError and exc.args and isinstance(exc.args[0], str):
        exc = FieldError(exc.args[0], "missing field")
    if isinstance(exc, FieldError):
        return DecodeError(f"invalid {owner} {what}: {exc}", raw=raw_bytes(data))
    # Nothing else should get here; if something does, it is still bad input.
    return DecodeError(f"invalid {owner} {what}: {type(exc).__name__}: {exc}", raw=raw_bytes(data))


def missing(field: str) -> NoReturn:
    raise FieldError(field, "missing field")


# -- field converters: value from orjson -> model value -----------------------


def as_str(value: Any, field: str) -> str:
    if type(value) is str:
        return value
    raise FieldError(field, f"expected a string, got {describe(value)}")


def as_opt_str(value: Any, field: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise FieldError(field, f"expected a string or null, got {describe(value)}")


def as_id(value: Any, cls: type[_IdT], field: str) -> _IdT:
    if type(value) is str:
        if match_canonical(value) is not None:
            return _str_new(cls, value)
        text = normalize(value)
        if text is not None:
            return _str_new(cls, text)
        raise FieldError(field, f"invalid UUID {value!r}")
    raise FieldError(field, f"expected a UUID string, got {describe(value)}")


def as_opt_id(value: Any, cls: type[_IdT], field: str) -> _IdT | None:
    if value is None:
        return None
    return as_id(value, cls, field)


def as_ts(value: Any, field: str) -> Timestamp:
    if type(value) is str:
        try:
            return parse_text(value)
        except ValueError as exc:
            raise FieldError(field, f"invalid timestamp {value!r}: {exc}") from None
    raise FieldError(field, f"expected an RFC 3339 timestamp string, got {describe(value)}")


def as_opt_ts(value: Any, field: str) -> Timestamp | None:
    if value is None:
        return None
    return as_ts(value, field)


def as_enum(value: Any, table: Mapping[str, _E], field: str) -> _E:
    if type(value) is str:
        member = table.get(value)
        if member is not None:
            return member
        expected = ", ".join(repr(k) for k in table)
        raise FieldError(field, f"unknown variant {value!r}, expected one of {expected}")
    raise FieldError(field, f"expected a string, got {describe(value)}")


def as_u64(value: Any, field: str) -> int:
    if type(value) is int:
        if 0 <= value <= U64_MAX:
            return value
        raise FieldError(field, f"integer {value} out of range for an unsigned 64-bit integer")
    if type(value) is float:
        # orjson turns integers beyond 64 bits into floats, so a float may be either.
        raise FieldError(field, f"expected an unsigned 64-bit integer, got {describe(value)} (a float or an out-of-range number)")
    raise FieldError(field, f"expected an unsigned 64-bit integer, got {describe(value)}")


def as_str_list(value: Any, field: str) -> list[str]:
    if type(value) is not list:
        raise FieldError(field, f"expected an array of strings, got {describe(value)}")
    for i, item in enumerate(value):
        if type(item) is not str:
            raise FieldError(f"{field}[{i}]", f"expected a string, got {describe(item)}")
    return value


def enum_table(enum_cls: Any, **aliases: Any) -> dict[str, Any]:
    """Wire string -> member, for :func:`as_enum`."""
    table = {m._value_: m for m in enum_cls}
    table.update(aliases)
    return table


# -- Redis Hash layout: writer (spec section 6) --------------------------------
#
# Each put_* returns one Hash value as bytes, checking the field like the
# enc_field_* helpers do (EncodeError on a bad value), so that hash_fields()
# rejects exactly what to_json() rejects.


def put_str(value: Any, owner: str, field: str) -> bytes:
    """A raw string: its UTF-8 bytes, unchanged (no quoting or escaping)."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(
                f"{owner}.{field} contains a lone surrogate ({exc.object[exc.start:exc.end]!r}), "
                "which UTF-8 cannot carry"
            ) from None
    raise EncodeError(f"{owner}.{field} must be a str, got {type(value).__name__}")


def checked_id(value: Any, cls: type[_IdT], owner: str, field: str,
               optional: bool = False) -> _IdT:
    """``value`` as the id type ``cls`` (a UUID in any spelling ``cls`` takes);
    :class:`EncodeError` naming ``owner.field`` if it is not one. The writers
    call it only for a value that is not a ``cls`` already."""
    try:
        return cls(value)
    except Exception:
        raise EncodeError(f"{owner}.{field} must be a {cls.__name__}"
                          f"{' or None' if optional else ''}, got {value!r}") from None


def put_id(value: Any, cls: type[UuidId], owner: str, field: str) -> bytes:
    """A UUID, lowercase hyphenated."""
    if type(value) is not cls:
        value = checked_id(value, cls, owner, field)
    return str.encode(value)


def put_ts(value: Any, owner: str, field: str) -> bytes:
    """A timestamp in chrono's ``to_rfc3339()`` spelling (``+00:00``)."""
    if isinstance(value, Timestamp):
        return value.to_rfc3339().encode()
    raise EncodeError(f"{owner}.{field} must be a Timestamp, got {type(value).__name__}")


def put_enum(value: Any, enum_cls: type, owner: str, field: str) -> bytes:
    """An enum's bare wire name (no quotes)."""
    if type(value) is enum_cls:
        return value._value_.encode()
    raise EncodeError(f"{owner}.{field} must be a {enum_cls.__name__}, got {value!r}")


def put_u64(value: Any, owner: str, field: str) -> bytes:
    """An unsigned 64-bit integer in decimal."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX:
        return int.__repr__(value).encode()
    raise EncodeError(f"{owner}.{field} must be an int in 0..2**64-1, got {value!r}")


# -- Redis Hash layout: reader --------------------------------------------------


def hash_to_str_dict(mapping: Any, owner: str) -> dict[str, str]:
    """Decode a Hash (bytes or str keys and values) into a dict of str."""
    if not isinstance(mapping, Mapping):
        raise DecodeError(f"invalid {owner} hash: expected a mapping, got {type(mapping).__name__}")
    try:
        # The usual case, an HGETALL reply: bytes keys and values, all UTF-8.
        return {k.decode(): v.decode() for k, v in mapping.items()}
    except (AttributeError, TypeError, UnicodeDecodeError):
        pass  # str items, or a bad one: checked one by one below for the error
    out: dict[str, str] = {}
    for key, value in mapping.items():
        out[_hash_text(key, owner, "a key")] = _hash_text(value, owner, f"field {key!r}")
    return out


def _hash_text(item: Any, owner: str, what: str) -> str:
    if type(item) is str:
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid {owner} hash: {what} is not UTF-8 ({exc})", raw=bytes(item)) from None
    if isinstance(item, str):
        return str(item)
    raise DecodeError(f"invalid {owner} hash: {what} is {type(item).__name__}, expected bytes or str")


# The readers below follow Tinytown 0.10's parse_agent_from_hash and
# parse_task_from_hash (spec section 7): a field that cannot be read takes
# upstream's default. Each appends the field's name to ``bad`` when a
# *present* value was replaced, so that the caller can log it.


def hash_required_id(fields: Mapping[str, str], cls: type[_IdT], owner: str) -> _IdT:
    """The ``id`` field: the one field whose absence or bad value is an error."""
    text = fields.get("id")
    if text is None:
        raise DecodeError(f"invalid {owner} hash: missing id field")
    if match_canonical(text) is not None:
        return _str_new(cls, text)
    canonical = normalize(text)
    if canonical is None:
        raise DecodeError(
            f"invalid {owner} hash: invalid {owner.lower()} id {text!r}",
            raw=text.encode("utf-8", "surrogatepass"),
        )
    return _str_new(cls, canonical)


def hash_opt_id(text: str | None, cls: type[_IdT], field: str, bad: list[str]) -> _IdT | None:
    """An optional UUID: None when absent or not a UUID (empty included)."""
    if text is None:
        return None
    if match_canonical(text) is not None:
        return _str_new(cls, text)
    canonical = normalize(text)
    if canonical is None:
        bad.append(field)
        return None
    return _str_new(cls, canonical)


def hash_enum(text: str | None, table: Mapping[str, _E], default: _E, field: str, bad: list[str]) -> _E:
    """An enum stored bare: upstream wraps it in double quotes and decodes a
    JSON string, so escapes are honoured and a quote or control character
    breaks it. Anything unreadable gives ``default``."""
    if text is None:
        return default
    member = table.get(text)
    if member is not None:
        return member  # a bare wire name decodes to itself
    try:
        value = loads('"' + text + '"')
    except orjson.JSONDecodeError:
        value = None
    except UnicodeEncodeError:  # a lone surrogate in str input
        value = None
    member = table.get(value) if type(value) is str else None
    if member is None:
        bad.append(field)
        return default
    return member


def parse_u64(text: str) -> int | None:
    """Rust's ``str::parse::<u64>``: ASCII digits after an optional ``+``
    (leading zeros allowed), at most 2**64-1; None otherwise."""
    digits = text[1:] if text[:1] == "+" else text
    if digits.isascii() and digits.isdigit():
        value = int(digits)
        if value <= U64_MAX:
            return value
    return None


def hash_counter(text: str | None, field: str, bad: list[str]) -> int:
    """A u64 counter; 0 when absent or unreadable."""
    if text is None:
        return 0
    value = parse_u64(text)
    if value is None:
        bad.append(field)
        return 0
    return value


def hash_ts(text: str, field: str, bad: list[str]) -> Timestamp | None:
    """A present timestamp, as chrono's ``parse_from_rfc3339`` reads it; None
    (and ``field`` recorded in ``bad``) when it cannot be read."""
    try:
        return parse_rfc3339(text)
    except ValueError:
        bad.append(field)
        return None


def hash_tags(text: str | None, bad: list[str]) -> list[str]:
    """``tags``: a JSON array of strings; anything else is an empty list."""
    if text is None:
        return []
    try:
        value = loads(text)
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        value = None
    if type(value) is list and all(type(item) is str for item in value):
        return value
    bad.append("tags")
    return []


def warn_defaults(owner: str, ident: str, bad: list[str], fields: Mapping[str, str]) -> None:
    """Log, once per Hash read, the present fields replaced by defaults."""
    shown = ", ".join(f"{name}={_short(fields.get(name, ''))}" for name in bad)
    log.warning(
        "%s hash %s: unreadable field(s) replaced by Tinytown's defaults, as upstream's reader does: %s",
        owner, ident, shown,
    )


def _short(text: str) -> str:
    r = repr(text)
    return r if len(r) <= 60 else r[:57] + "..."


# -- encoding ------------------------------------------------------------------


def encode_bytes(text: str, owner: str) -> bytes:
    """UTF-8 of finished JSON text; a lone surrogate becomes an EncodeError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{owner} contains a lone surrogate ({exc.object[exc.start:exc.end]!r}), which JSON cannot carry") from None


def enc_field_str(value: Any, owner: str, field: str) -> str:
    if isinstance(value, str):
        return encode_str(value)
    raise EncodeError(f"{owner}.{field} must be a str, got {type(value).__name__}")


def enc_field_opt_str(value: Any, owner: str, field: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return encode_str(value)
    raise EncodeError(f"{owner}.{field} must be a str or None, got {type(value).__name__}")


def enc_field_id(value: Any, cls: type[UuidId], owner: str, field: str) -> str:
    """The id as a JSON string; ids that are not canonical text are checked first."""
    if type(value) is not cls:
        value = checked_id(value, cls, owner, field)
    return f'"{value}"'


def enc_field_opt_id(value: Any, cls: type[UuidId], owner: str, field: str) -> str:
    if value is None:
        return "null"
    return enc_field_id(value, cls, owner, field)


def enc_field_ts(value: Any, owner: str, field: str) -> str:
    if isinstance(value, Timestamp):
        return f'"{value.rfc3339()}"'
    raise EncodeError(f"{owner}.{field} must be a Timestamp, got {type(value).__name__}")


def enc_field_opt_ts(value: Any, owner: str, field: str) -> str:
    if value is None:
        return "null"
    return enc_field_ts(value, owner, field)


def enc_field_enum(value: Any, enum_cls: type, owner: str, field: str) -> str:
    if type(value) is enum_cls:
        return f'"{value._value_}"'
    raise EncodeError(f"{owner}.{field} must be a {enum_cls.__name__}, got {value!r}")


def enc_field_u64(value: Any, owner: str, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX:
        return int.__repr__(value)
    raise EncodeError(f"{owner}.{field} must be an int in 0..2**64-1, got {value!r}")


def enc_field_str_list(value: Any, owner: str, field: str) -> str:
    if not isinstance(value, (list, tuple)):
        raise EncodeError(f"{owner}.{field} must be a list of str, got {type(value).__name__}")
    parts = []
    for item in value:
        if not isinstance(item, str):
            raise EncodeError(f"{owner}.{field} must be a list of str, found {type(item).__name__}")
        parts.append(encode_str(item))
    return "[" + ",".join(parts) + "]"
