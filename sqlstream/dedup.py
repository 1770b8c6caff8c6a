"""Idempotent appends: ``append(..., dedup_id=...)`` stores a record at most once per window.

Each stream remembers the dedup ids of its recent appends in the ``dedup`` table
(migrations/0004): id -> offset of the record first appended with it, and when. An
append whose dedup id is remembered *inside the window* stores nothing and returns the
original offset; outside the window it is a new record (and the id now names it). The
window is per stream: ``dedup_seconds`` (default one day) and ``dedup_records`` (default
100,000: the id must name one of the stream's last that-many records), whichever ends
first.

A trimmed original still counts: entries outlive the records they name, so a retry of
an append that succeeded is recognised even after retention removed the record, and
the returned offset may then be below ``first_offset`` (reading it raises
``OffsetOutOfRange``). Storing the record again would be the duplicate the caller asked
us to prevent.

The look-up, the append and remembering the ids run in one write transaction (the
caller's, inside ``db.transaction()``), so concurrent writers — threads or processes —
cannot both store one id: SQLite's write lock serialises them. Checks happen in this
order: the stream exists and the secret matches, then duplicates are answered (even on
a sealed stream, or with a stale ``expect_offset``: the original append succeeded),
then the new records are appended with the usual checks. Entries that left the window
are pruned as appends pass every 64th offset, and by ``db.maintain()``; enlarging a
stream's window later (``set_retention``) does not bring pruned ids back.

Like :mod:`sqlstream.retention`, the statements take a ``q`` callable; the orchestration
(look-up, append, remember, prune) is part of the one append path,
:func:`sqlstream.append.append_rows`, which the SQLAlchemy outbox runs too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .connection import Query
from .errors import InvalidValue
from .validation import duration_us

DEFAULT_SECONDS = 86400.0  # a day: retries after an outage of hours are still recognised
DEFAULT_RECORDS = 100_000  # bounds the table: at most this many entries per stream stay useful
MAX_DEDUP_ID_CHARS = 1024
PRUNE_EVERY = 64  # offsets: an append crossing a multiple of this prunes the stream's entries

STREAM_SQL = (
    "SELECT id, next_offset, dedup_seconds, dedup_records, "
    "(SELECT write_secret_sha256 FROM streams s WHERE s.id = n.id) FROM streams_now n WHERE name = ?"
)
LOOKUP_SQL = (
    "SELECT dedup_id, offset, created_at FROM dedup WHERE stream_id = ? "
    "AND dedup_id IN (SELECT value FROM json_each(?))"
)
# Pairs [dedup_id, offset] travel as one JSON array: one statement for any batch size.
# REPLACE: an entry that left the window is taken over by the new record.
REMEMBER_SQL = (
    "INSERT OR REPLACE INTO dedup (stream_id, dedup_id, offset, created_at) "
    "SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?2 FROM json_each(?3)"
)
# Entries out of the count window (offset < ?2) or the time window: times grow with
# offsets, so those are the entries before the first one young enough (?3); none young
# enough means all of them (?4 = next_offset).
PRUNE_SQL = """
DELETE FROM dedup
 WHERE stream_id = ?1
   AND offset < max(?2, coalesce((SELECT offset FROM dedup WHERE stream_id = ?1 AND created_at >= ?3
                                  ORDER BY offset LIMIT 1), ?4))
"""


def check_dedup_id(value: object) -> str:
    """Return ``value`` if it is a usable dedup id (a non-empty str of valid Unicode)."""
    if not isinstance(value, str):
        raise InvalidValue(f"a dedup_id must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_DEDUP_ID_CHARS:
        raise InvalidValue(f"a dedup_id must be 1 to {MAX_DEDUP_ID_CHARS} characters long, not {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"a dedup_id must be valid Unicode text: {exc}") from exc
    return value


def check_dedup_ids(ids: object, count: int) -> list[str | None]:
    """Validate ``dedup_ids`` for a batch of ``count`` values (None entries: no dedup)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidValue("dedup_ids must be a sequence with one str (or None) per value")
    if len(ids) != count:
        raise InvalidValue(f"dedup_ids has {len(ids)} entries for {count} values; give one per value")
    return [None if i is None else check_dedup_id(i) for i in ids]


def lookup(
    q: Query, stream_id: int, next_offset: int, seconds: float, records: int, ids: Sequence[str | None], now_us: int
) -> dict[str, int]:
    """The offsets of the ids in ``ids`` that are remembered inside the window."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    oldest_time = now_us - duration_us(seconds)
    oldest_offset = next_offset - records
    return {
        dedup_id: int(offset)
        for dedup_id, offset, created_at in q(LOOKUP_SQL, (stream_id, json.dumps(wanted)))
        if created_at >= oldest_time and offset >= oldest_offset
    }


def remember(q: Query, stream_id: int, entries: Sequence[tuple[str, int]], now_us: int) -> None:
    """Record that each (dedup_id, offset) of ``entries`` was just appended."""
    if entries:
        q(REMEMBER_SQL, (stream_id, now_us, json.dumps([list(e) for e in entries])))


def prune(q: Query, stream_id: int, next_offset: int, seconds: float, records: int, now_us: int) -> None:
    """Forget the stream's entries that are outside its window."""
    q(PRUNE_SQL, (stream_id, next_offset - records, now_us - duration_us(seconds), next_offset))


def resolve(ids: Sequence[str | None], known: dict[str, int]) -> tuple[list[int | None], list[int], list[int | None]]:
    """Split a batch into duplicates and records to store.

    Returns ``(offsets, new, same_as)``: ``offsets[i]`` is the original offset of a
    duplicate (None otherwise); ``new`` lists the indexes to append; ``same_as[i]`` is the
    index of an earlier record of this batch with the same id (its offset is the answer).
    """
    offsets: list[int | None] = [None] * len(ids)
    same_as: list[int | None] = [None] * len(ids)
    new: list[int] = []
    first_in_batch: dict[str, int] = {}
    for i, dedup_id in enumerate(ids):
        if dedup_id is not None:
            if dedup_id in known:
                offsets[i] = known[dedup_id]
                continue
            if dedup_id in first_in_batch:
                same_as[i] = first_in_batch[dedup_id]
                continue
            first_in_batch[dedup_id] = i
        new.append(i)
    return offsets, new, same_as


def finish(
    offsets: list[int | None], new: list[int], same_as: list[int | None], stored: Sequence[int]
) -> list[int]:
    """Fill in the offsets of the stored records (and of in-batch repeats of them)."""
    for i, offset in zip(new, stored):
        offsets[i] = offset
    for i, j in enumerate(same_as):
        if j is not None:
            offsets[i] = offsets[j]
    return [int(o) for o in offsets]  # type: ignore[arg-type]  # every slot is filled now


def crosses_prune_point(start: int, end: int) -> bool:
    """True when the offsets [start, end) pass a multiple of PRUNE_EVERY."""
    return end > start and (start - 1) // PRUNE_EVERY != (end - 1) // PRUNE_EVERY

