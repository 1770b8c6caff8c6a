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

__all__ = ["Store", "Block", "BlockRecord", "Cursor", "matches"]

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
    key: str | None  # undecodable stored bytes as surrogate escapes
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


def _str(stored: bytes | None) -> str | None:
    """A text column read as bytes, back to str; bytes that are not UTF-8 survive as
    surrogate escapes (``.encode("utf-8", "surrogateescape")`` gives them back)."""
    return None if stored is None else bytes(stored).decode("utf-8", "surrogateescape")


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
                # Text columns are read as their stored bytes: a record damaged by another
                # tool (text that is not UTF-8) passes through as those bytes instead of
                # stopping every service at its block for ever.
                for offset, ts, txn, key, headers, ctype, data in conn.execute(
                    "SELECT offset, timestamp, txn, CAST(key AS BLOB), CAST(headers AS BLOB), content_type, "
                    "CAST(data AS BLOB) FROM chunks WHERE stream_id = ? AND offset >= ? ORDER BY offset",
                    (sid, start[0]),
                ):
                    if txn != height:
                        break
                    records.append(BlockRecord(name, int(offset), int(ts), _str(key), _str(headers), str(ctype),
                                               _text(data)))
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
