"""Type stubs of the Message encoder in C, ``tinytown._codec`` (ext/codec.pyx)."""

from typing import Any

from collections.abc import Callable

def configure(message_type: type, variants: dict[type, tuple[bytes | str, ...]],
              fallback: Callable[[Any], bytes]) -> None:
    """Set the Message class, the body template of each variant it encodes
    and the encoder of everything else."""

def to_json(self: Any) -> bytes:
    """``message`` as serde_json writes it (Message.to_json)."""
