"""UUID text for the id types (tinytown.ids) and the readers that check ids
without making one (the JSON and Hash readers, Message.from_json, the CLI).

Private: the public face is :mod:`tinytown.ids`.
"""

from __future__ import annotations

import os
import re

__all__ = ["is_canonical", "match_canonical", "new_uuid4_text", "normalize"]

#: ``match_canonical(text)`` is not None when ``text`` is a canonical id:
#: a lowercase hyphenated UUID.
match_canonical = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_simple = re.compile(r"[0-9a-f]{32}").fullmatch

# is_canonical's test, for a str already known to be ASCII: its bytes with
# each lowercase hex digit made "x" and anything else but "-" made "?" are
# the canonical shape. The decoders inline it on their hot path (a table
# lookup a byte is ~3x cheaper than the regex; the result is the same).
HEX_SHAPE = bytes(
    0x78 if chr(b) in "0123456789abcdef" else b if b == 0x2D else 0x3F for b in range(256)
)
CANONICAL_SHAPE = b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"


def is_canonical(text: str) -> bool:
    """True when ``text`` is a canonical id (as ``match_canonical(text) is not None``)."""
    return text.isascii() and text.encode().translate(HEX_SHAPE) == CANONICAL_SHAPE

# Random version-4 UUID texts, made in batches: one getrandom() call, two
# translate() calls for the version and variant bits, and one hex() per batch
# is much cheaper than uuid.uuid4() per id.
_pool: list[str] = []
_BATCH = 128
_SET_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_SET_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _refill() -> None:
    raw = bytearray(os.urandom(16 * _BATCH))
    raw[6::16] = raw[6::16].translate(_SET_VERSION)
    raw[8::16] = raw[8::16].translate(_SET_VARIANT)
    h = raw.hex()
    _pool.extend([
        f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
        for i in range(0, 32 * _BATCH, 32)
    ])


def new_uuid4_text() -> str:
    """A new random (version 4) UUID as canonical text."""
    try:
        return _pool.pop()
    except IndexError:
        _refill()
        return _pool.pop()


if hasattr(os, "register_at_fork"):
    # A forked child must not hand out the ids its parent also holds.
    os.register_at_fork(after_in_child=_pool.clear)


def normalize(value: str) -> str | None:
    """Canonical text of a UUID spelled as Rust's ``Uuid::parse_str`` accepts
    (uuid 1.x): 32 hex digits, or hyphenated either bare, ``{braced}`` or
    after a lowercase ``urn:uuid:``; hex digits in either case. None if it
    is not one of those."""
    if not value.isascii():
        return None
    n = len(value)
    if n == 32:
        text = value.lower()
        if _simple(text) is not None:
            return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
        return None
    if n == 38 and value[0] == "{" and value[-1] == "}":
        value = value[1:-1]
    elif n == 45 and value[:9] == "urn:uuid:":
        value = value[9:]
    elif n != 36:
        return None
    text = value.lower()
    return text if match_canonical(text) is not None else None
