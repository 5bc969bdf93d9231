"""UTC timestamps with nanosecond precision, printed the way chrono prints them.

Rust's ``DateTime<Utc>`` carries nanoseconds and serializes as RFC 3339 with
``Z`` and 0, 3, 6 or 9 fractional digits. :class:`Timestamp` is a
:class:`datetime.datetime` (always aware, always UTC) that keeps the three
digits below the microsecond, so a timestamp read from Redis and written back
is byte-for-byte the same.
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

from .errors import DecodeError, InvalidArgumentError

__all__ = ["Timestamp", "UTC"]

UTC = timezone.utc

_dt_new = datetime.__new__
_dt_eq = datetime.__eq__
_dt_lt = datetime.__lt__
_dt_hash = datetime.__hash__
_dt_add = datetime.__add__
_dt_sub = datetime.__sub__
_time_ns = time.time_ns
_gmtime = time.gmtime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Multiplier turning an n-digit fraction into nanoseconds (n <= 9).
_SCALE = (0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1)

# Validated "YYYY-MM-DDTHH:MM:SS" heads -> (y, mo, d, h, mi, s). Messages sent
# within the same second share a head, so this skips most of the parsing.
_HEAD_CACHE: dict[str, tuple[int, int, int, int, int, int]] = {}
_HEAD_CACHE_MAX = 4096
# The same heads -> datetime's pickled state for them (bytes year-hi, year-lo,
# month, day, hour, minute, second, then 3 bytes of microseconds) as an int
# with the microseconds at 0: ``datetime.__new__(cls, state_bytes, tzinfo)``
# (what unpickling calls, in CPython's C datetime and the pure-Python one)
# builds a datetime from it without parsing eight arguments. Only heads that
# datetime() accepted get here, and microseconds are below 10**6, so every
# state made from it is one datetime() would make. Filled and cleared with
# _HEAD_CACHE.
_HEAD_STATE: dict[str, int] = {}

_HEAD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.ASCII).fullmatch

# What chrono 0.4.44 reads (the slow path): a 4-digit year, separator T, t or
# space, optional fraction of any length, then Z/z or an offset with +, - or
# U+2212. The colon of the offset is optional here; the Hash reader (strict,
# chrono's parse_from_rfc3339) requires it, JSON (serde's FromStr) does not.
_RFC3339 = re.compile(
    "(\\d{4})-(\\d\\d)-(\\d\\d)[Tt ](\\d\\d):(\\d\\d):(\\d\\d)(?:\\.(\\d+))?"
    "(?:([Zz])|([+\\-\u2212])(\\d\\d)(:?)(\\d\\d))",
    re.ASCII,
)
_BIG_YEAR = re.compile(r"[+-]?\d{5,}-", re.ASCII).match

_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
_DAYS_400Y = 146097  # the Gregorian calendar repeats every 400 years

# (epoch second, its "YYYY-MM-DDTHH:MM:SS" text, its fields) for now().
_now_cache: tuple[int, str, tuple[int, int, int, int, int, int]] = (-1, "", (1970, 1, 1, 0, 0, 0))


def _fraction(ns: int) -> str:
    """Fractional part as chrono prints it: the fewest of 0/3/6/9 digits that are exact."""
    if ns == 0:
        return ""
    if ns % 1_000_000 == 0:
        return f".{ns // 1_000_000:03d}"
    if ns % 1_000 == 0:
        return f".{ns // 1_000:06d}"
    return f".{ns:09d}"


def _head_fields(head: str) -> tuple[int, int, int, int, int, int]:
    """Fields of a ``YYYY-MM-DDTHH:MM:SS`` head; ValueError if it is not a valid one."""
    fields = _HEAD_CACHE.get(head)
    if fields is None:
        if _HEAD(head) is None:
            raise ValueError("malformed date or time")
        fields = (int(head[0:4]), int(head[5:7]), int(head[8:10]),
                  int(head[11:13]), int(head[14:16]), int(head[17:19]))
        datetime(*fields)  # range check: raises ValueError
        if len(_HEAD_CACHE) >= _HEAD_CACHE_MAX:
            _HEAD_CACHE.clear()
            _HEAD_STATE.clear()
        _HEAD_CACHE[head] = fields
        y, mo, d, h, mi, s = fields
        _HEAD_STATE[head] = int.from_bytes(bytes((y >> 8, y & 255, mo, d, h, mi, s)), "big") << 24
    return fields


def parse_text(text: str, strict: bool = False) -> Timestamp:
    """Parse RFC 3339 text; raises ValueError saying what is wrong.

    For tinytown's readers (:class:`Timestamp` itself and the JSON and Hash
    readers of ``tinytown._json``); not part of the public API (``__all__``).
    ``strict`` rejects an offset without its colon (``+0000``), as chrono's
    ``parse_from_rfc3339`` does; serde's reader (JSON) accepts it."""
    # Fastest path: what Tinytown and Rust write nearly always (a clock has
    # nonzero nanoseconds), nine fraction digits and Z, with a head seen
    # before (messages sent within a second share it). The fraction must be
    # ASCII digits (int() would also take "+", "_" and spaces).
    if len(text) == 30 and text[19::10] == ".Z" and text.isascii():
        state = _HEAD_STATE.get(text[:19])
        frac = text[20:29]
        if state is not None and frac.isdigit():
            value = int(frac)
            self = _dt_new(Timestamp, (state | value // 1000).to_bytes(10, "big"), UTC)  # type: ignore[call-arg, arg-type]
            ns = value % 1000
            self._nanosecond = ns
            if ns:  # else chrono prints fewer digits: rfc3339() makes the text
                self._text = text
            return self
    # Fast path: the canonical form chrono writes. Characters 4, 7, 10, 13, 16
    # and 19 are the separators "--T::" and then "." (or the final "Z").
    seps = text[4:20:3]
    if seps == "--T::." and text[-1:] == "Z" and text.isascii():
        frac = text[20:-1]
        digits = len(frac)
        if not 0 < digits <= 9 or not frac.isdigit():
            return _parse_slow(text, strict)
        value = int(frac)
        if digits == 6:
            us = value
            ns = 0
        elif digits == 9:
            us, ns = divmod(value, 1000)
        else:
            us, ns = divmod(value * _SCALE[digits], 1000)
        canonical = digits % 3 == 0 and value % 1000 != 0
    elif seps == "--T::Z" and len(text) == 20 and text.isascii():
        us = ns = 0
        canonical = True
    elif text[-6:] == "+00:00":
        # What chrono's to_rfc3339() writes into Hashes: the same instant as "Z".
        return parse_text(text[:-6] + "Z", strict)
    else:
        return _parse_slow(text, strict)
    fields = _HEAD_CACHE.get(text[:19])
    if fields is None:
        try:
            fields = _head_fields(text[:19])
        except ValueError:
            return _parse_slow(text, strict)
    y, mo, d, h, mi, s = fields
    self = _dt_new(Timestamp, y, mo, d, h, mi, s, us, UTC)
    self._nanosecond = ns
    if canonical:
        self._text = text
    return self


def _parse_slow(text: str, strict: bool = False) -> Timestamp:
    m = _RFC3339.fullmatch(text)
    if m is None:
        if _BIG_YEAR(text) is not None:
            raise ValueError("years outside 0000-9999 are not supported (Tinytown cannot read them back)")
        raise ValueError("not an RFC 3339 timestamp (YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM))")
    y, mo, d, h, mi, s, frac, _zulu, sign, oh, colon, om = m.groups()
    if strict and sign is not None and not colon:
        raise ValueError("offset without a colon (+HHMM) is not RFC 3339")
    nanos = 0
    if frac is not None:
        # Digits past the ninth are below a nanosecond: dropped, as chrono does.
        frac = frac[:9]
        nanos = int(frac) * _SCALE[len(frac)]
    year, second = int(y), int(s)
    leap = second == 60  # chrono: second 59 plus a second of nanoseconds
    if leap:
        second = 59
    # Years 0 and 1 are computed 400 years later (same calendar), so that
    # year 0, and year 1 moved into year 0 by an offset, fit in a datetime.
    shift = 400 if year <= 1 else 0
    try:
        dt = datetime(year + shift, int(mo), int(d), int(h), int(mi), second)
    except ValueError as exc:
        raise ValueError(f"date or time out of range ({exc})") from None
    if sign is not None:
        hours, minutes = int(oh), int(om)
        if hours > 23 or minutes > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=hours, minutes=minutes)
        try:
            dt = dt - offset if sign == "+" else dt + offset
        except OverflowError:
            raise ValueError("out of range once converted to UTC (years 0000-9999 only)") from None
    year = dt.year - shift
    if not 0 <= year <= 9999:
        raise ValueError("out of range once converted to UTC (years 0000-9999 only)")
    if year == 0 or leap:
        return _Extended._make(year, dt.month, dt.day, dt.hour, dt.minute, 60 if leap else dt.second, nanos)
    return Timestamp._from_parts(year, dt.month, dt.day, dt.hour, dt.minute, dt.second, nanos // 1000, nanos % 1000)


def parse_rfc3339(text: str) -> Timestamp:
    """Parse as chrono's ``DateTime::parse_from_rfc3339`` (the Hash reader):
    like :func:`parse_text` but the offset needs its colon."""
    return parse_text(text, True)


class Timestamp(datetime):
    """An instant in UTC with nanosecond precision.

    A :class:`datetime.datetime` subclass (always timezone-aware, always UTC)
    with an extra :attr:`nanosecond` (0-999, the part below the microsecond).
    Equality, hashing and ordering take the nanoseconds into account.

    ``Timestamp(...)`` takes the :class:`~datetime.datetime` arguments (a naive
    value is taken as UTC, an aware one is converted) plus ``nanosecond=``; it
    also accepts a single datetime or RFC 3339 string.

    Values datetime cannot hold. chrono also reads (and writes back
    unchanged) a leap second, ``…T23:59:60[.fff]Z`` (any ``HH:MM:60``, as
    chrono does not check the leap-second table), and year 0
    (``0000-…``). Parsing such text gives a Timestamp whose
    :meth:`rfc3339`, :meth:`to_rfc3339`, :meth:`timestamp_ns`, equality,
    hashing and ordering are exact (a leap second sorts after ``…:59.999999999``
    and before the next second, as in chrono; :attr:`is_leap_second` tells it),
    but whose *datetime view* (``year`` … ``microsecond``, ``isoformat()``,
    ``to_datetime()``, ``astimezone()``, ``date()``) is clamped to the nearest
    representable instant: ``…:59.999999`` for a leap second, and
    ``0001-01-01T00:00:00`` for year 0. Adding or subtracting a timedelta
    works on the exact value (a leap second then becomes the ordinary next
    second). Such values come only from text; the constructor does not take
    ``second=60`` or ``year=0``. Years outside 0000-9999 are not supported at
    all (chrono writes them as ``+10000-…``, which no Tinytown reader parses):
    reading one raises :class:`~tinytown.DecodeError`.
    """

    __slots__ = ("_nanosecond", "_text")

    _nanosecond: int
    _text: str

    def __new__(
        cls,
        year: Any,
        month: int | None = None,
        day: int | None = None,
        hour: int = 0,
        minute: int = 0,
        second: int = 0,
        microsecond: int = 0,
        tzinfo: tzinfo | None = None,
        *,
        fold: int = 0,
        nanosecond: int = 0,
    ) -> Timestamp:
        if month is None and day is None:
            if isinstance(year, str):
                try:
                    return parse_text(year)
                except ValueError as exc:
                    raise InvalidArgumentError(f"Timestamp: invalid RFC 3339 text {year!r}: {exc}") from None
            if isinstance(year, datetime):
                return cls.from_datetime(year)
            if isinstance(year, bytes) and isinstance(tzinfo, (timezone, type(None))):
                # datetime's own pickle format, in case something calls it
                # (a constructor typeshed does not declare).
                return cls.from_datetime(datetime(year, tzinfo))  # type: ignore[call-arg, arg-type]
        if type(nanosecond) is not int or not 0 <= nanosecond <= 999:
            raise InvalidArgumentError(f"Timestamp: nanosecond must be an int in 0..999, got {nanosecond!r}")
        try:
            if tzinfo is None or tzinfo is UTC:
                # (a month or day of None: datetime's TypeError, reported below)
                self = _dt_new(cls, year, month, day, hour, minute, second, microsecond, UTC)  # type: ignore[arg-type]
            else:
                aware = datetime(year, month, day, hour, minute, second, microsecond, tzinfo, fold=fold)  # type: ignore[arg-type]
                if aware.utcoffset() is None:
                    raise ValueError(f"tzinfo {tzinfo!r} gives no UTC offset")
                u = aware.astimezone(UTC)
                self = _dt_new(cls, u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, UTC)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"Timestamp: {exc}") from None
        self._nanosecond = nanosecond
        return self

    @classmethod
    def _from_parts(
        cls, y: int, mo: int, d: int, h: int, mi: int, s: int, us: int, ns: int
    ) -> Timestamp:
        self = _dt_new(cls, y, mo, d, h, mi, s, us, UTC)
        self._nanosecond = ns
        return self

    # -- construction ---------------------------------------------------------

    @classmethod
    def now(cls, tz: Any = None) -> Timestamp:
        """The current time, with the nanoseconds the system clock gives.

        Always UTC: ``tz`` is accepted for datetime compatibility and ignored.

        Raises nothing.
        """
        global _now_cache
        sec, sub = divmod(_time_ns(), 1_000_000_000)
        cache = _now_cache
        if cache[0] != sec:
            tm = _gmtime(sec)
            fields = (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
            cache = _now_cache = (sec, "%04d-%02d-%02dT%02d:%02d:%02d" % fields, fields)
        y, mo, d, h, mi, s = cache[2]
        us, ns = divmod(sub, 1000)
        self = _dt_new(cls, y, mo, d, h, mi, s, us, UTC)
        self._nanosecond = ns
        # The clock nearly always has a nonzero last digit: nine digits, no search.
        self._text = f"{cache[1]}.{sub:09d}Z" if ns else cache[1] + _fraction(sub) + "Z"
        return self

    @classmethod
    def today(cls) -> Timestamp:
        """Same as :meth:`now`."""
        return cls.now()

    @classmethod
    def fromtimestamp(cls, t: float, tz: Any = None) -> Timestamp:
        """The instant ``t`` seconds after the Unix epoch (``tz`` is ignored: always UTC).

        Raises ``OverflowError`` or ``ValueError`` (as :meth:`datetime.fromtimestamp`)
        for a ``t`` out of range and ``TypeError`` for a non-number.
        """
        return cls.from_datetime(datetime.fromtimestamp(t, UTC))

    @classmethod
    def from_timestamp_ns(cls, ns: int) -> Timestamp:
        """The instant ``ns`` nanoseconds after the Unix epoch.

        Raises :class:`~tinytown.InvalidArgumentError` for a non-int or an instant
        outside years 0000-9999.
        """
        if isinstance(ns, bool) or not isinstance(ns, int):
            raise InvalidArgumentError(f"Timestamp: expected an int of nanoseconds, got {type(ns).__name__}")
        result = _from_epoch_ns(ns)
        if result is None:
            raise InvalidArgumentError(f"Timestamp: {ns} ns since the epoch is out of range (years 0000-9999)")
        return result

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse RFC 3339 text with any offset; the result is converted to UTC.

        Accepts what Tinytown's Rust reader (chrono 0.4.44, via serde) accepts:
        ``YYYY-MM-DD``, separator ``T``, ``t`` or a space, ``HH:MM:SS`` (second
        ``60`` is a leap second), an optional fraction of any length (past
        nine digits it is dropped), then ``Z``, ``z`` or an offset
        ``±HH:MM`` / ``±HHMM`` (hours up to 23; ``-`` may be U+2212). Years
        0000-9999 only, also after conversion to UTC. Raises
        :class:`~tinytown.DecodeError` if ``text`` is not such a timestamp.
        """
        if type(text) is not str:
            if isinstance(text, str):
                text = str(text)
            elif isinstance(text, (bytes, bytearray, memoryview)):
                raw = bytes(text)
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise DecodeError(f"invalid timestamp {raw!r}: not ASCII", raw=raw) from None
            else:
                raise DecodeError(f"invalid timestamp: expected a string, got {type(text).__name__}")
        try:
            return parse_text(text)
        except ValueError as exc:
            raise DecodeError(
                f"invalid timestamp {text!r}: {exc}", raw=text.encode("utf-8", "surrogatepass")
            ) from None

    @classmethod
    def from_datetime(cls, dt: datetime) -> Timestamp:
        """A Timestamp for ``dt``; a naive datetime is taken to be UTC.

        Raises :class:`~tinytown.InvalidArgumentError` for a non-datetime or one out of
        range once converted to UTC.
        """
        if isinstance(dt, Timestamp):
            return dt
        if not isinstance(dt, datetime):
            raise InvalidArgumentError(f"Timestamp: expected a datetime, got {type(dt).__name__}")
        if dt.tzinfo is not None and dt.tzinfo is not UTC:
            off = dt.utcoffset()
            if off is not None and off:
                try:
                    dt = dt.astimezone(UTC)
                except OverflowError:
                    raise InvalidArgumentError(f"Timestamp: {dt!r} is out of range in UTC") from None
        return cls._from_parts(
            dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, 0
        )

    # -- accessors ------------------------------------------------------------

    @property
    def nanosecond(self) -> int:
        """Nanoseconds below the microsecond, 0-999."""
        try:
            return self._nanosecond
        except AttributeError:
            return 0

    @property
    def is_leap_second(self) -> bool:
        """True for a leap second (printed as second ``60``)."""
        return False

    def rfc3339(self) -> str:
        """Canonical RFC 3339 text: ``Z`` and 0, 3, 6 or 9 fractional digits."""
        try:
            return self._text
        except AttributeError:
            pass
        text = "%04d-%02d-%02dT%02d:%02d:%02d%sZ" % (
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            _fraction(self.microsecond * 1000 + self.nanosecond),
        )
        self._text = text
        return text

    def to_rfc3339(self) -> str:
        """The text chrono's ``to_rfc3339()`` writes: like :meth:`rfc3339` but
        with the offset spelled ``+00:00`` instead of ``Z``. Tinytown writes
        this form into Hash and Stream fields (agent/task Hashes, heartbeats,
        docket timestamps)."""
        return self.rfc3339()[:-1] + "+00:00"

    def timestamp_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        delta = _dt_sub(self, _EPOCH)
        return (
            (delta.days * 86_400 + delta.seconds) * 1_000_000_000
            + delta.microseconds * 1_000
            + self.nanosecond
        )

    def to_datetime(self) -> datetime:
        """A plain aware :class:`datetime.datetime` (microsecond precision)."""
        return datetime(
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.microsecond, UTC
        )

    # -- datetime methods that would otherwise drop the nanoseconds -----------

    def replace(self, *args: Any, nanosecond: int | None = None, **kwargs: Any) -> Timestamp:
        """Like :meth:`datetime.replace`, plus ``nanosecond=``; the result is a UTC Timestamp.

        Raises :class:`~tinytown.InvalidArgumentError` for arguments
        :meth:`datetime.replace` rejects or a ``nanosecond`` outside 0..999.
        """
        if args or kwargs:
            try:
                dt = datetime.replace(self.to_datetime(), *args, **kwargs)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(f"Timestamp.replace: {exc}") from None
            result = Timestamp.from_datetime(dt) if dt.tzinfo is not None else Timestamp._from_parts(
                dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, 0
            )
        else:
            result = Timestamp._from_parts(
                self.year, self.month, self.day, self.hour, self.minute, self.second, self.microsecond, 0
            )
        ns = self.nanosecond if nanosecond is None else nanosecond
        if type(ns) is not int or not 0 <= ns <= 999:
            raise InvalidArgumentError(f"Timestamp: nanosecond must be an int in 0..999, got {ns!r}")
        result._nanosecond = ns
        return result

    def astimezone(self, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        """This instant in another time zone, as a plain datetime (microsecond precision).

        Raises ``TypeError`` if ``tz`` is neither None nor a tzinfo (as datetime does).
        """
        return self.to_datetime().astimezone(tz)

    def __add__(self, other: Any) -> Any:
        try:
            result = _dt_add(self, other)
        except OverflowError:
            # Below year 1 (year 0 is still a Timestamp) or above 9999.
            if not isinstance(other, timedelta):
                raise
            delta = (other.days * 86_400 + other.seconds) * 1_000_000_000 + other.microseconds * 1000
            wide = _from_epoch_ns(self.timestamp_ns() + delta)
            if wide is None:
                raise
            return wide
        if isinstance(result, Timestamp):
            # datetime's C code built ``result`` through __new__ (nanosecond 0).
            result._nanosecond = self.nanosecond
        return result

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, timedelta):
            return self.__add__(-other)
        return _dt_sub(self, other)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (Timestamp, (self.rfc3339(),))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Timestamp, (self.rfc3339(),))

    # -- comparisons (with the nanoseconds) -----------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, datetime):
            if not _dt_eq(self, other):
                return False
            ons = other.nanosecond if isinstance(other, Timestamp) else 0
            return self.nanosecond == ons
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        ns = self.nanosecond
        return _dt_hash(self) if ns == 0 else hash((_dt_hash(self), ns))

    def _cmp(self, other: datetime) -> int:
        if _dt_eq(self, other):
            ons = other.nanosecond if isinstance(other, Timestamp) else 0
            ns = self.nanosecond
            return (ns > ons) - (ns < ons)
        return -1 if _dt_lt(self, other) else 1

    def __lt__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._cmp(other) < 0
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._cmp(other) <= 0
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._cmp(other) > 0
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._cmp(other) >= 0
        return NotImplemented

    # -- text -----------------------------------------------------------------

    def __str__(self) -> str:
        return self.rfc3339()

    def __repr__(self) -> str:
        return f"Timestamp('{self.rfc3339()}')"


def _from_epoch_ns(ns: int) -> Timestamp | None:
    """The instant ``ns`` nanoseconds after the epoch (years 0-9999), or None."""
    secs, frac = divmod(ns, 1_000_000_000)
    days, sod = divmod(secs, 86_400)
    ordinal = _EPOCH_ORDINAL + days
    if ordinal < 1 - 366 or ordinal > 3_652_059:  # 0000-01-01 .. 9999-12-31
        return None
    h, rem = divmod(sod, 3600)
    mi, sec = divmod(rem, 60)
    if ordinal >= 1:
        d = date.fromordinal(ordinal)
        return Timestamp._from_parts(d.year, d.month, d.day, h, mi, sec, frac // 1000, frac % 1000)
    d = date.fromordinal(ordinal + _DAYS_400Y)  # year 400, standing in for year 0
    return _Extended._make(0, d.month, d.day, h, mi, sec, frac)


def _key(value: datetime) -> tuple[int, int, int] | None:
    """(proleptic day ordinal, second of day, nanoseconds including a leap
    second) of an aware datetime, the order chrono uses; None if naive."""
    if isinstance(value, _Extended):
        return value._key
    if value.tzinfo is None or value.utcoffset() is None:
        return None
    if value.tzinfo is not UTC and value.utcoffset():
        value = value.astimezone(UTC)
    ns = value.microsecond * 1000 + (value.nanosecond if isinstance(value, Timestamp) else 0)
    return (value.toordinal(), value.hour * 3600 + value.minute * 60 + value.second, ns)


class _Extended(Timestamp):
    """A Timestamp datetime cannot hold: year 0 or a leap second (see Timestamp).

    The datetime base holds the clamped view; ``_parts`` holds the exact
    (year, month, day, hour, minute, second 0-60, nanoseconds 0-999999999)
    and ``_key`` the ordering key."""

    __slots__ = ("_parts", "_key")

    _parts: tuple[int, int, int, int, int, int, int]
    _key: tuple[int, int, int]

    @classmethod
    def _make(cls, y: int, mo: int, d: int, h: int, mi: int, s: int, ns: int) -> Timestamp:
        if y == 0:
            self = _dt_new(cls, 1, 1, 1, 0, 0, 0, 0, UTC)
            self._nanosecond = 0
            ordinal = date(400, mo, d).toordinal() - _DAYS_400Y
        else:  # a leap second
            self = _dt_new(cls, y, mo, d, h, mi, 59, 999_999, UTC)
            self._nanosecond = 999
            ordinal = date(y, mo, d).toordinal()
        self._parts = (y, mo, d, h, mi, s, ns)
        self._key = (ordinal, h * 3600 + mi * 60 + min(s, 59), ns + (1_000_000_000 if s == 60 else 0))
        self._text = "%04d-%02d-%02dT%02d:%02d:%02d%sZ" % (y, mo, d, h, mi, s, _fraction(ns))
        return self

    @property
    def is_leap_second(self) -> bool:
        return self._parts[5] == 60

    def timestamp_ns(self) -> int:
        ordinal, sod, ns = self._key
        return ((ordinal - _EPOCH_ORDINAL) * 86_400 + sod) * 1_000_000_000 + ns

    def timestamp(self) -> float:
        return self.timestamp_ns() / 1e9

    def replace(self, *args: Any, nanosecond: int | None = None, **kwargs: Any) -> Timestamp:  # type: ignore[override]
        """Like :meth:`Timestamp.replace`, on the clamped datetime view."""
        return Timestamp.replace(self, *args, nanosecond=nanosecond, **kwargs)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, timedelta):
            delta = (other.days * 86_400 + other.seconds) * 1_000_000_000 + other.microseconds * 1000
            result = _from_epoch_ns(self.timestamp_ns() + delta)
            if result is None:
                raise OverflowError("date value out of range")
            return result
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, timedelta):
            return self.__add__(-other)
        if isinstance(other, datetime):
            if _key(other) is None:
                raise TypeError("can't subtract offset-naive and offset-aware datetimes")
            ons = (other.timestamp_ns() if isinstance(other, Timestamp)
                   else Timestamp.from_datetime(other).timestamp_ns())
            return timedelta(microseconds=(self.timestamp_ns() - ons) // 1000)
        return NotImplemented

    def __rsub__(self, other: Any) -> Any:
        if isinstance(other, datetime):
            return -self.__sub__(other)
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._key == _key(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(self._key)

    def _other_key(self, other: datetime) -> tuple[int, int, int]:
        key = _key(other)
        if key is None:
            raise TypeError("can't compare offset-naive and offset-aware datetimes")
        return key

    def __lt__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._key < self._other_key(other)
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._key <= self._other_key(other)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._key > self._other_key(other)
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, datetime):
            return self._key >= self._other_key(other)
        return NotImplemented
