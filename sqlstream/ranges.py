"""Reads across streams and backwards: ``db.read_many`` (Redis ``XREAD STREAMS``) and
``Stream.read_reverse`` (``XREVRANGE``).

Both go through the public read path's rules: offsets validated by
:mod:`sqlstream.validation`, trimmed offsets refused, damaged records never returned raw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .connection import rows as fetch_rows
from .errors import InvalidArgument, StreamNotFound
from .records import Record, check_name, read_records, record_sql
from .validation import check_count, check_offset, check_timeout, show

if TYPE_CHECKING:
    from .database import Database

_REVERSE_SQL = record_sql("WHERE stream_id = ? AND offset < ? AND offset >= ? ORDER BY offset DESC LIMIT ?")


def read_many(
    db: Database, positions: Mapping[str, int], *, limit: int = 100, timeout: float | None = 0
) -> dict[str, list[Record]]:
    """Records from several streams at once: ``{stream: records from its offset}``.

    ``positions`` maps each stream name to the offset to read from. Returns only the
    streams that have records there (up to ``limit`` each, in offset order); ``{}`` when
    none has. ``timeout`` 0 never blocks; otherwise waits until at least one stream has a
    record at its offset (or every stream named is sealed and read to its end), or the
    timeout passes. Each stream is read as ``Stream.read`` reads it (``OffsetOutOfRange``
    for a trimmed offset, ``StreamNotFound``, ``DamagedRecord``).
    """
    if not isinstance(positions, Mapping) or not positions:
        raise InvalidArgument(
            f"positions must be a non-empty mapping of stream name to offset, not {show(positions)}",
            hint='db.read_many({"orders": 0, "payments": 5})',
            cli_hint="sqlstream read-many orders=0 payments=5",
        )
    wanted = {check_name(name): check_offset(offset, f"offset of {name!r}") for name, offset in positions.items()}
    check_count(limit, "limit")
    timeout = check_timeout(timeout)
    streams = {name: db.stream(name) for name in wanted}

    def check() -> dict[str, list[Record]] | None:
        out: dict[str, list[Record]] = {}
        ended = 0
        for name, offset in wanted.items():
            records = streams[name].read(offset, limit, timeout=0)
            if records:
                out[name] = records
            elif streams[name].info().sealed:
                ended += 1
        return out if out or ended == len(wanted) else None

    return db.engine.wait_until(check, timeout) or {}


def read_reverse(db: Database, name: str, before: int | None = None, limit: int = 100) -> list[Record]:
    """Up to ``limit`` records with offsets below ``before`` (None: the end), newest first.

    Never blocks. Below the first retained offset there is nothing (``[]``, not an
    error: a backwards scan just runs out); ``before`` past the end reads from the end.
    A damaged record ends the list before it; if the newest one asked for is damaged,
    ``DamagedRecord`` names it. Raises ``StreamNotFound``, ``InvalidArgument``.
    """
    if before is not None:
        check_offset(before, "before")
    check_count(limit, "limit")
    with db.engine.snapshot() as conn:
        found = fetch_rows(conn, "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?", (name,))
        if not found:
            raise StreamNotFound(f"no stream named {name!r}")
        stream_id, first, nxt = (int(v) for v in found[0])
        end = nxt if before is None else min(before, nxt)
        if end <= first:
            return []
        records, damaged = read_records(conn, name, _REVERSE_SQL, (stream_id, end, first, limit))
    if damaged:
        newest_bad = max(d.offset for d in damaged)
        kept = [r for r in records if r.offset > newest_bad]
        if not kept:
            bad = next(d for d in damaged if d.offset == newest_bad)
            raise bad.error(name, f"read backwards from offset {newest_bad} to skip it")
        return kept
    return records

