"""Key migration from Tinytown's pre-isolation layout (``tt migrate``).

Releases before town isolation kept one town per Redis with keys
``tt:<type>:<uuid>`` (types ``agent``, ``inbox``, ``urgent``, ``task``,
``activity``, ``stop``) and ``tt:backlog``. Migration renames each of them to
``tt:<town>:<type>[:<uuid>]``:

- one ``RENAMENX`` per key: atomic, and a key whose new name is taken is left
  where it is (never overwritten) and reported as skipped;
- idempotent: a second run finds nothing left to move (skipped keys stay
  skipped until the conflict is resolved by hand);
- :func:`plan_migration` previews without changing anything.

Usable from Python::

    with SyncChannel.connect(url, town="my-town") as channel:
        report = migrate_keys(channel)
        print(report.summary())
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import ReplyError
from .sync_channel import SyncChannel

__all__ = ["OLD_TYPES", "KeyMove", "MigrationReport", "plan_migration", "migrate_keys"]

#: The key types of the old layout.
OLD_TYPES = ("agent", "inbox", "urgent", "task", "activity", "stop")

# tt:<type>:<uuid> (any case, as written by whatever wrote it) or tt:backlog;
# nothing else, so that a town named like a type ("tt:agent:inbox:<id>") is
# never mistaken for old keys.
_OLD_KEY = re.compile(
    rb"tt:(?:(?P<type>" + b"|".join(t.encode() for t in OLD_TYPES) + rb"):"
    rb"(?P<id>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    rb"|backlog)"
)
_SCAN_COUNT = 1000


@dataclass(frozen=True)
class KeyMove:
    """One old key and its name in the town."""

    old: bytes
    new: bytes

    def __str__(self) -> str:
        return f"{self.old.decode(errors='replace')} -> {self.new.decode(errors='replace')}"


@dataclass
class MigrationReport:
    """What a migration did (or, with ``dry_run``, would do)."""

    town: str
    dry_run: bool
    moved: list[KeyMove] = field(default_factory=list)
    """Renamed (with dry_run: would be renamed)."""
    skipped: list[KeyMove] = field(default_factory=list)
    """Left in place because the new name already exists."""
    failed: list[tuple[KeyMove, str]] = field(default_factory=list)
    """Not renamed because Redis refused (with its error)."""

    @property
    def complete(self) -> bool:
        """True when no old key is left behind (nothing skipped or failed)."""
        return not self.skipped and not self.failed

    def summary(self) -> str:
        """One line: how many keys moved, were skipped, failed."""
        verb = "would move" if self.dry_run else "moved"
        return (f"town {self.town!r}: {verb} {len(self.moved)} key(s), "
                f"skipped {len(self.skipped)} (new name exists), failed {len(self.failed)}")

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data (key names decoded as UTF-8, invalid bytes replaced)."""
        def pair(move: KeyMove) -> dict[str, str]:
            return {"old": move.old.decode(errors="replace"), "new": move.new.decode(errors="replace")}
        return {
            "town": self.town,
            "dry_run": self.dry_run,
            "moved": [pair(m) for m in self.moved],
            "skipped": [pair(m) for m in self.skipped],
            "failed": [dict(pair(m), error=e) for m, e in self.failed],
        }


def plan_migration(channel: SyncChannel) -> list[KeyMove]:
    """The old-layout keys on the channel's server and their new names, sorted.

    Found with SCAN (never KEYS), so a large database is not blocked.
    """
    prefix = f"tt:{channel.town}:".encode()
    found: set[bytes] = set()
    cursor = b"0"
    while True:
        cursor, keys = channel.execute(b"SCAN", cursor, b"MATCH", b"tt:*", b"COUNT", _SCAN_COUNT)
        found.update(k for k in keys if _OLD_KEY.fullmatch(k))
        if cursor == b"0":
            break
    return [KeyMove(key, prefix + key[3:]) for key in sorted(found)]


def migrate_keys(channel: SyncChannel, *, dry_run: bool = False,
                 moves: list[KeyMove] | None = None) -> MigrationReport:
    """Rename the old-layout keys into the channel's town (see the module doc).

    ``moves`` defaults to :func:`plan_migration`; pass the plan that was
    shown to a user to move exactly that. With ``dry_run`` nothing changes:
    the report says what would move and what would be skipped.
    """
    if moves is None:
        moves = plan_migration(channel)
    report = MigrationReport(town=channel.town, dry_run=dry_run)
    for move in moves:
        if dry_run:
            taken = channel.execute(b"EXISTS", move.new)
            (report.skipped if taken else report.moved).append(move)
            continue
        try:
            renamed = channel.execute(b"RENAMENX", move.old, move.new)
        except ReplyError as exc:   # e.g. the key vanished since the plan, CROSSSLOT
            report.failed.append((move, str(exc)))
            continue
        (report.moved if renamed else report.skipped).append(move)
    return report
