"""The one place the streaming services touch the engine below the public API.

:class:`Store` reads blocks (a block is one commit: the records of one ``txn``) from a
consistent snapshot, keeps each service's durable cursor (table ``streaming_cursors``,
migration 0005) and blocks until a commit. It uses ``Database`` internals
(``_snapshot``, ``_writing``, ``_wait``); when the engine layer lands this class is the
only code to switch.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..database import Database, now_us

__all__ = ["Store", "Block", "BlockRecord", "Cursor", "SentMarks", "SourceItem", "matches"]

# The sqlite storage driver keeps objects in streams named `_objects/<hex>`: archive bytes,
# not application records. Patterns expose them only when they name them (start with `_`).
_INTERNAL_PREFIX = "_objects/"


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether stream ``name`` is exposed by ``patterns`` (names or ``fnmatch`` globs, ``*`` all)."""
    for pattern in patterns:
        if name.startswith(_INTERNAL_PREFIX) and not pattern.startswith("_"):
            continue
        if fnmatch.fnmatchcase(name, pattern):
            return True
    return False


@dataclass(frozen=True)
class BlockRecord:
    """One record of a block, as stored: ``data`` is the stored bytes (text/JSON as UTF-8)."""

    stream: str
    offset: int
    timestamp: int  # µs since epoch
    key: str | None
    headers: str | None  # JSON object text, or None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Block:
    """The records one commit (``height`` = its txn number) wrote to the exposed streams.

    ``streams`` maps each exposed stream the commit touched to its records in offset
    (write) order; iterate ``sorted(streams)`` for ascending store-key order.
    """

    height: int
    streams: dict[str, list[BlockRecord]] = field(default_factory=dict)

    @property
    def commit_time_us(self) -> int:
        """The newest record timestamp of the block (deterministic: read back from the file)."""
        return max((r.timestamp for rs in self.streams.values() for r in rs), default=0)

    @property
    def record_count(self) -> int:
        return sum(len(rs) for rs in self.streams.values())


@dataclass(frozen=True)
class Cursor:
    """A service's durable position: the last block it finished, and its last error."""

    service: str
    kind: str
    height: int
    head: int
    updated_at: int | None
    last_error: str | None

    @property
    def lag(self) -> int:
        """Commits after ``height`` (touching the exposed streams or not)."""
        return max(0, self.head - self.height)


@dataclass(frozen=True)
class SentMarks:
    """What a forwarding service may have published without an ack (migration 0006).

    Blocks in (cursor, ``h1``] were first published no earlier than ``at1``; blocks in
    (``h1``, ``h2``] no earlier than ``at2`` (µs since epoch).
    """

    h1: int
    at1: int
    h2: int
    at2: int

    def earliest_unacked(self, cursor: int) -> int | None:
        """A lower bound of the first publish time of any block above ``cursor`` (None: none was sent)."""
        if cursor < self.h1:
            return self.at1
        if cursor < self.h2:
            return self.at2
        return None


@dataclass(frozen=True)
class SourceItem:
    """One record a source service appends: value, key, headers, and its dedup id."""

    value: Any
    key: str | None
    headers: dict[str, str] | None
    dedup_id: str


def _text(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


class Store:
    """Block reads, durable cursors and commit waits for the streaming services.

    Thread-safe as the Database is. Per service it keeps, per stream id, the first offset
    whose txn is above the service's height (a hint; the database stays the truth), so
    finding the next block costs one indexed probe per exposed stream.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._hints: dict[tuple[str, int], tuple[int, int]] = {}  # (service, stream_id) -> (height, offset)
        self._lock = threading.Lock()

    # -------------------------------------------------------------- cursors

    def cursor(self, service: str, kind: str) -> int:
        """The last height ``service`` finished (0: none yet); creates its row at 0."""
        with self.db._writing() as conn:
            conn.execute(
                "INSERT INTO streaming_cursors (service, kind, height, updated_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (service) DO NOTHING",
                (service, kind, now_us()),
            )
            row = conn.execute("SELECT height FROM streaming_cursors WHERE service = ?", (service,)).fetchone()
        assert row is not None
        return int(row[0])

    def advance(self, service: str, height: int) -> None:
        """Record that ``service`` finished block ``height`` (one committed write).

        Refuses to move backwards: a second runner of the same service that lost a race
        raises instead of rewinding the cursor.
        """
        with self.db._writing() as conn:
            conn.execute(
                "UPDATE streaming_cursors SET height = ?, updated_at = ?, last_error = NULL, error_at = NULL "
                "WHERE service = ? AND height < ?",
                (height, now_us(), service, height),
            )
            if conn.changes() != 1:
                from ..errors import ConcurrencyError  # noqa: PLC0415 - rare path

                raise ConcurrencyError(
                    f"streaming service {service!r} is already past block {height}",
                    hint="run each service in one `sqlstream serve` at a time",
                )

    def record_error(self, service: str, message: str) -> None:
        """Keep ``message`` as the service's last error (shown by ``serve --status``)."""
        with self.db._writing() as conn:
            conn.execute(
                "UPDATE streaming_cursors SET last_error = ?, error_at = ? WHERE service = ?",
                (message, now_us(), service),
            )

    def cursors(self) -> list[Cursor]:
        """Every service's cursor, by name (from the ``streaming_progress`` view)."""
        with self.db._snapshot() as conn:
            rows = conn.execute(
                "SELECT c.service, c.kind, c.height, t.value, c.updated_at, c.last_error "
                "FROM streaming_cursors c, counters t WHERE t.name = 'txn' ORDER BY c.service"
            ).fetchall()
        rows_any: list[Any] = rows
        return [Cursor(str(r[0]), str(r[1]), int(r[2]), int(r[3]), r[4], r[5]) for r in rows_any]

    # -------------------------------------------------------------- relays (migration 0006)

    def file_id(self) -> int:
        """The database file's stable random identity (``counters`` row ``file_id``)."""
        with self.db._snapshot() as conn:
            row = conn.execute("SELECT value FROM counters WHERE name = 'file_id'").fetchone()
        if row is not None:
            return int(row[0])
        with self.db._writing() as conn:  # a file migrated before the row existed
            conn.execute("INSERT INTO counters (name, value) VALUES ('file_id', random() & 9223372036854775807) "
                         "ON CONFLICT (name) DO NOTHING")
            row = conn.execute("SELECT value FROM counters WHERE name = 'file_id'").fetchone()
        assert row is not None
        return int(row[0])

    def stream_names(self, patterns: Sequence[str]) -> list[str]:
        """The names of the streams ``patterns`` expose, sorted."""
        with self.db._snapshot() as conn:
            names = [str(r[0]) for r in conn.execute("SELECT name FROM streams ORDER BY name")]
        return [n for n in names if matches(n, patterns)]

    def sent_marks(self, service: str) -> SentMarks | None:
        """The service's sent marks (see :class:`SentMarks`), None before its first publish."""
        with self.db._snapshot() as conn:
            row = conn.execute("SELECT h1, at1, h2, at2 FROM jetstream_sent WHERE service = ?", (service,)).fetchone()
        return None if row is None else SentMarks(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def mark_sent(self, service: str, cursor: int, height: int) -> SentMarks:
        """Record, before publishing, that blocks up to ``height`` may be published from now on.

        ``cursor`` is the service's acked height. Keeps a lower bound of the first publish
        time of every block above the cursor in two slots (one committed write).
        """
        now = now_us()
        with self.db._writing() as conn:
            row = conn.execute("SELECT h1, at1, h2, at2 FROM jetstream_sent WHERE service = ?", (service,)).fetchone()
            if row is None:
                marks = SentMarks(height, now, height, now)
            else:
                old = SentMarks(int(row[0]), int(row[1]), int(row[2]), int(row[3]))
                if cursor >= old.h2:  # everything sent before is acked
                    marks = SentMarks(height, now, height, now)
                elif cursor >= old.h1:  # the first slot is acked: shift
                    marks = SentMarks(old.h2, old.at2, height, now)
                else:  # both slots still have unacked blocks: widen the second
                    marks = SentMarks(old.h1, old.at1, max(height, old.h2), old.at2)
            conn.execute(
                "INSERT INTO jetstream_sent (service, h1, at1, h2, at2) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (service) DO UPDATE SET h1 = excluded.h1, at1 = excluded.at1, "
                "h2 = excluded.h2, at2 = excluded.at2",
                (service, marks.h1, marks.at1, marks.h2, marks.at2),
            )
        return marks

    def append_from_source(self, service: str, source: str, stream: str, items: Sequence[SourceItem],
                           sequence: int) -> int:
        """Append ``items`` to ``stream`` (created if missing) with their dedup ids and record
        ``sequence`` as the service's position, all in ONE transaction; return how many were
        stored (duplicates are not). Raises what the appends raise; then nothing is stored."""
        stored = 0
        with self.db.transaction():
            handle = self.db.create_stream(stream, exist_ok=True)
            before = handle.info().next_offset
            for item in items:
                handle.append(item.value, key=item.key, headers=item.headers, dedup_id=item.dedup_id)
            stored = handle.info().next_offset - before
            with self.db._writing() as conn:
                conn.execute(
                    "INSERT INTO jetstream_sources (service, js_stream, sequence, stored, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (service) DO UPDATE SET js_stream = excluded.js_stream, "
                    "sequence = max(sequence, excluded.sequence), stored = stored + excluded.stored, "
                    "updated_at = excluded.updated_at",
                    (service, source, sequence, stored, now_us()),
                )
        return stored

    def source_position(self, service: str) -> tuple[str, int, int, int] | None:
        """(JetStream stream, highest sequence stored, messages stored, updated_at µs), or None."""
        with self.db._snapshot() as conn:
            row = conn.execute("SELECT js_stream, sequence, stored, updated_at FROM jetstream_sources "
                               "WHERE service = ?", (service,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]), int(row[3]))

    # -------------------------------------------------------------- blocks

    def head(self) -> int:
        """The newest committed txn number."""
        with self.db._snapshot() as conn:
            return self._head(conn)

    @staticmethod
    def _head(conn: Any) -> int:
        row = conn.execute("SELECT value FROM counters WHERE name = 'txn'").fetchone()
        return int(row[0]) if row else 0

    def next_block(self, service: str, patterns: Sequence[str], after: int, upto: int | None = None) -> Block | None:
        """The first block above height ``after`` (and at most ``upto``) that touches a
        stream ``patterns`` expose, read from one snapshot; None when there is none yet."""
        with self.db._snapshot() as conn:
            streams = [
                (int(sid), str(name), int(first), int(nxt))
                for sid, name, first, nxt in conn.execute(
                    "SELECT id, name, first_offset, next_offset FROM streams ORDER BY name"
                )
                if matches(str(name), patterns)
            ]
            limit = self._head(conn) if upto is None else min(upto, self._head(conn))
            if limit <= after:
                return None
            starts: dict[int, tuple[int, int]] = {}  # stream id -> (offset, txn) of its next record
            for sid, _name, first, nxt in streams:
                offset = self._first_after(conn, service, sid, first, nxt, after)
                row = conn.execute(
                    "SELECT offset, txn FROM chunks WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT 1",
                    (sid, offset),
                ).fetchone()
                if row is not None:
                    starts[sid] = (int(row[0]), int(row[1]))
            if not starts:
                return None
            height = min(txn for _o, txn in starts.values())
            if height > limit:
                return None
            block = Block(height)
            for sid, name, _first, _nxt in streams:
                start = starts.get(sid)
                if start is None or start[1] != height:
                    continue
                records: list[BlockRecord] = []
                for offset, ts, txn, key, headers, ctype, data in conn.execute(
                    "SELECT offset, timestamp, txn, key, headers, content_type, data FROM chunks "
                    "WHERE stream_id = ? AND offset >= ? ORDER BY offset",
                    (sid, start[0]),
                ):
                    if txn != height:
                        break
                    records.append(BlockRecord(name, int(offset), int(ts), key, headers, str(ctype), _text(data)))
                block.streams[name] = records
            return block

    def _first_after(self, conn: Any, service: str, sid: int, first: int, nxt: int, after: int) -> int:
        """The lowest offset of stream ``sid`` whose txn may be above ``after``.

        Offsets and txns grow together along a stream, so a binary search over offsets
        finds it in O(log n) probes; the hint of the previous call usually answers at once.
        """
        with self._lock:
            hint = self._hints.get((service, sid))
        if hint is not None and hint[0] <= after:
            lo = max(first, hint[1])
        else:
            lo = first
        hi = nxt
        while lo < hi:
            mid = (lo + hi) // 2
            row = conn.execute(
                "SELECT offset, txn FROM chunks WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT 1",
                (sid, mid),
            ).fetchone()
            if row is None or int(row[1]) > after:
                hi = mid
            else:
                lo = int(row[0]) + 1
        with self._lock:
            self._hints[(service, sid)] = (after, lo)
        return lo

    # -------------------------------------------------------------- waiting

    def wait_for_commit(self, after: int, timeout: float) -> bool:
        """Block until a commit above txn ``after`` is visible, or ``timeout`` seconds pass.

        Woken by commits like a blocked reader (no polling loop of ours). True when there is one.
        """
        return self.db._wait(lambda: True if self.head() > after else None, timeout) is not None
