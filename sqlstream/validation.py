"""Argument validation: one set of rules for every public call.

Every public method checks its arguments here before it touches the file, so a refused
call raises a :class:`~sqlstream.errors.SqlstreamError` (``InvalidArgument``, a
``ValueError``; ``InvalidName``, a ``ValueError``; ``InvalidValue``, a ``TypeError``)
and changes nothing. The rules, documented in the README's "Errors" paragraph:

* **Numbers are numbers.** ``True``/``False`` are refused wherever a number is expected
  (they are ints to Python, but ``timeout=True`` is always a mistake); so are NaN and
  strings.
* **Timeouts** (how long a call may *wait*): ``None`` waits without limit, ``0`` never
  waits. A timeout of :data:`MAX_TIMEOUT` seconds (about 31 years) or more, ``inf``
  included, also means "without limit": no caller can tell the difference, and the
  operating system cannot sleep that long in one go anyway.
* **Durations** (ack timeouts, nack delays, ``extend`` seconds, ``max_age``, dedup
  windows): finite, at most :data:`MAX_SECONDS`. They become deadlines stored as
  microseconds, which must fit SQLite's 64-bit integers; "forever" is not a deadline.
* **Counts** (batch sizes, limits, ``max_unacked``, ``max_deliveries``): ints from 1 (or
  0 where stated) to :data:`MAX_COUNT`. No batch gets near it; a larger one is a bug.
* **Offsets and byte positions**: ints from 0 to :data:`MAX_OFFSET` (SQLite's largest
  integer). **Retention sizes** (``max_count``, ``max_bytes``): 1 to :data:`MAX_LIMIT`,
  which leaves room for the trim margin above the limit.
* **Timestamps** (``read_at``): seconds since the epoch or a ``datetime``; any finite
  number is accepted (a time before every record finds the first, after every record the
  end), and a ``datetime`` the platform cannot convert is refused.
* **Names** follow :data:`NAME_RULE`. **Short texts** (``nack(error=...)``) are stored
  cleaned: lone surrogates become U+FFFD and the text is cut at :data:`MAX_TEXT`
  characters — an error message must never make the nack that carries it fail.
* **Metadata**: a JSON object of at most :data:`MAX_METADATA_BYTES` bytes encoded,
  nested at most :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import reprlib
from collections.abc import Sequence
from typing import Any, TypeGuard

from .errors import InvalidArgument, InvalidName, InvalidValue

__all__ = [
    "MAX_TIMEOUT",
    "MAX_SECONDS",
    "MAX_COUNT",
    "MAX_OFFSET",
    "MAX_LIMIT",
    "MAX_TEXT",
    "MAX_METADATA_BYTES",
    "MAX_DEPTH",
    "NAME_RULE",
    "check_timeout",
    "check_seconds",
    "check_optional_seconds",
    "duration_us",
    "check_count",
    "check_offset",
    "check_limit",
    "check_start",
    "check_flag",
    "timestamp_us",
    "check_name",
    "clean_text",
    "show",
    "encode_metadata",
]

MAX_TIMEOUT = 1_000_000_000.0
"""Timeouts of this many seconds (~31.7 years) or more, ``inf`` included, wait without limit."""

MAX_SECONDS = 1_000_000_000.0
"""The longest duration (ack timeout, delay, max_age, dedup window), in seconds (~31.7 years)."""

MAX_COUNT = 1_000_000_000
"""The largest batch size, limit or per-subscription count."""

MAX_OFFSET = 2**63 - 1
"""The largest offset or byte position (SQLite's largest integer)."""

MAX_LIMIT = 2**62
"""The largest ``max_count``/``max_bytes``: the trim trigger sits a margin above the limit."""

MAX_TEXT = 10_000
"""Short texts (``nack(error=...)``) are cut to this many characters."""

MAX_METADATA_BYTES = 1 << 20
"""Stream metadata, encoded as JSON, is at most this many bytes."""

MAX_DEPTH = 100
"""Stream metadata is nested at most this many levels."""

NAME_RULE = (
    "1 to 200 characters: letters, digits and _ . - : / @ = +, starting with a letter, "
    "digit or _"
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:/@=+]{0,199}")
_SURROGATE = re.compile("[\ud800-\udfff]")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def show(value: object) -> str:
    """A short repr for error messages: bounded in size and depth, so a hostile argument
    (nested 5,000 deep, megabytes long) cannot make building the message fail."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not replace the real error
        return f"<{type(value).__name__} object>"


def _number(value: object) -> TypeGuard[int | float]:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_timeout(value: object, what: str = "timeout") -> float | None:
    """A wait limit in seconds: None (or >= MAX_TIMEOUT, inf included) waits without limit."""
    if value is None:
        return None
    if not _number(value) or not value >= 0:  # NaN fails >= 0
        raise InvalidArgument(
            f"{what} must be None or a number of seconds >= 0, not {show(value)}",
            hint="0 never waits; None (or any value from 1e9 up) waits without limit",
        )
    if value >= MAX_TIMEOUT:
        return None
    return float(value)


def check_seconds(value: object, what: str, *, positive: bool) -> float:
    """A duration in seconds: finite, > 0 (``positive``) or >= 0, at most MAX_SECONDS."""
    if (
        not _number(value)
        or not 0 <= value <= MAX_SECONDS  # first: math.isfinite() of a huge int raises OverflowError
        or not math.isfinite(value)
        or (positive and value == 0)
    ):
        raise InvalidArgument(
            f"{what} must be a number of seconds {'>' if positive else '>='} 0 and at most "
            f"{MAX_SECONDS:,.0f}, not {show(value)}",
        )
    return float(value)


def duration_us(seconds: float) -> int:
    """A stored duration as integer microseconds, capped at MAX_SECONDS.

    The cap matters for settings stored before it existed (e.g. ``dedup_seconds=9e18``):
    they must not make every later statement overflow SQLite's integers.
    """
    return int(min(seconds, MAX_SECONDS) * 1_000_000)


def check_optional_seconds(value: object, what: str) -> float | None:
    """None (no limit) or a duration > 0 (see :func:`check_seconds`), e.g. ``max_age``."""
    return None if value is None else check_seconds(value, f"{what} (or None)", positive=True)


def check_count(
    value: object, what: str, *, minimum: int = 1, maximum: int = MAX_COUNT, optional: bool = False
) -> int | None:
    """An int in ``[minimum, maximum]`` (None too when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidArgument(
            f"{what} must be an int from {minimum} to {maximum:,}{' or None' if optional else ''}, not {show(value)}"
        )
    return value


def check_offset(value: object, what: str = "offset") -> int:
    """An offset or byte position: an int from 0 to MAX_OFFSET."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise InvalidArgument(f"{what} must be an int from 0 to 2**63-1, not {show(value)}")
    return value


def check_offsets(offsets: Sequence[object]) -> list[int]:
    """Record offsets for ack/nack/extend: each as :func:`check_offset`; duplicates dropped, order kept."""
    seen: dict[int, None] = {}
    for offset in offsets:
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise InvalidArgument(
                f"offsets are ints from 0 to 2**63-1, not {show(offset)}",
                hint="pass record offsets: sub.ack(*batch.offsets)",
                cli_hint="pass record offsets, as `sqlstream fetch` prints them",
            )
        seen[offset] = None
    return list(seen)


def check_dedup_window(seconds: object, records: object) -> None:
    """``dedup_seconds`` and ``dedup_records``: both bounded (the window cannot be unbounded)."""
    if seconds is None or records is None:
        raise InvalidArgument("dedup_seconds and dedup_records must be positive numbers (the window cannot be unbounded)")
    check_seconds(seconds, "dedup_seconds", positive=True)
    check_limit(records, "dedup_records")


def check_start(value: object, what: str = "start") -> str | int:
    """Where reading starts: ``"earliest"``, ``"latest"`` or an offset (see check_offset)."""
    if value in ("earliest", "latest") and isinstance(value, str):
        return value
    if isinstance(value, str):
        raise InvalidArgument(f"{what} must be 'earliest', 'latest' or an offset, not {show(value)}")
    return check_offset(value, what)


def check_limit(value: object, what: str) -> int | None:
    """A retention size (``max_count``, ``max_bytes``): None or an int from 1 to MAX_LIMIT."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument(f"{what} must be an int from 1 to 2**62 or None (no limit), not {show(value)}")
    return value


def check_flag(value: object, what: str) -> bool:
    """True or False, nothing else (``force=1`` and ``force="no"`` are mistakes)."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, not {show(value)}")
    return value


_US_BOUND = 2**62  # microseconds; far beyond any record's timestamp, and bindable


def timestamp_us(value: object, what: str = "timestamp") -> int:
    """Seconds since the epoch (or a ``datetime``) as integer microseconds, for searching.

    Finite values beyond any possible record (e.g. ``-1e300``) are clamped: the search
    result is the same. NaN, infinities, non-numbers and datetimes the platform cannot
    convert are refused.
    """
    if isinstance(value, _dt.datetime):
        try:
            value = value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:
            raise InvalidArgument(
                f"{what} {show(value)} cannot be converted to seconds since the epoch: {exc}",
                hint="pass a timezone-aware datetime, or seconds since the epoch",
            ) from None
    if not _number(value):
        raise InvalidArgument(f"{what} must be seconds since the epoch or a datetime, not {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # (an int is finite; a huge one
        raise InvalidArgument(f"{what} must be a finite number, not {show(value)}")  # overflows isfinite)
    us = value * 1_000_000
    return int(max(-_US_BOUND, min(_US_BOUND, us)))


def check_name(name: object, what: str = "stream") -> str:
    """Return ``name`` if it is a valid stream/subscription/reader name, else raise InvalidName."""
    if not isinstance(name, str):
        raise InvalidName(f"{what} name must be a str, not {type(name).__name__}: a name is {NAME_RULE}")
    if not _NAME.fullmatch(name):
        raise InvalidName(f"invalid {what} name {name!r}: a name is {NAME_RULE}")
    return name


def clean_text(value: object, what: str, *, optional: bool = True) -> str | None:
    """A short text to store: a str, lone surrogates replaced, cut to MAX_TEXT characters."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str{' or None' if optional else ''}, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        value = value[: MAX_TEXT - 1] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
    return value


def encode_metadata(value: object) -> str:
    """Stream metadata (a dict, or None for ``{}``) as compact JSON text; InvalidValue if unusable."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidValue(f"stream metadata must be a dict, not {type(value).__name__}")
    _check_depth(value)
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))  # lone surrogates cannot be stored as SQLite text
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidValue(f"stream metadata must be JSON-serialisable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidValue(f"stream metadata is {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}")
    return text


def _check_depth(value: Any) -> None:
    """Refuse containers nested deeper than MAX_DEPTH (iteratively: no RecursionError)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidValue(f"stream metadata is nested more than {MAX_DEPTH} levels deep")
        seen += 1
        if seen > MAX_METADATA_BYTES:  # more items than bytes allowed: too large anyway
            raise InvalidValue(f"stream metadata is larger than {MAX_METADATA_BYTES:,} bytes as JSON")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        for child in children:
            if isinstance(child, (dict, list, tuple)):
                pending.append((child, depth + 1))
