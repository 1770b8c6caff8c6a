"""Readers: named, persisted read positions on one stream (HStreamDB readers, Kafka commits).

A reader is a row in ``cursors`` holding the next offset it returns. ``read`` returns
records and moves the position past them in one write transaction, so two threads or
processes using the same reader never receive the same record, and inside
``db.transaction()`` the move commits with everything else. There are no acks: a record
returned is consumed (use a subscription for redelivery).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from . import connection as cx
from .clock import now_us
from .errors import InvalidArgument, OffsetOutOfRange, ReaderNotFound, StreamNotFound
from .records import Record, check_name, read_records, record_sql
from .validation import check_count, check_start, check_timeout

if TYPE_CHECKING:
    from .database import Database

_STATE_SQL = """
SELECT c.position, st.id, st.first_offset, st.next_offset, st.sealed_at IS NOT NULL
  FROM cursors c JOIN streams_now st ON st.id = c.stream_id
 WHERE c.id = ?
"""
_RANGE_SQL = record_sql("WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?")


@dataclass(frozen=True)
class ReaderInfo:
    """A reader's stream and position; ``lag`` is the records it has not read yet."""

    name: str
    stream: str
    position: int
    lag: int
    created_at: float
    updated_at: float


class Reader:
    """A handle to one named reader. Thread-safe; its position lives in the file.

    A handle is bound to the reader it was made for: once that reader is deleted, every
    call raises ``ReaderNotFound``.
    """

    __slots__ = ("db", "name", "stream", "_id")

    def __init__(self, db: Database, reader_id: int, name: str, stream: str) -> None:
        self.db = db
        self._id = reader_id
        self.name = name
        self.stream = stream

    def __repr__(self) -> str:
        return f"<sqlstream.Reader {self.name!r} on {self.stream!r}>"

    def _missing(self) -> ReaderNotFound:
        return ReaderNotFound(f"reader {self.name!r} no longer exists (deleted, or its stream was)")

    def _state(self, conn: apsw.Connection) -> tuple[Any, ...]:
        rows = cx.rows(conn, _STATE_SQL, (self._id,))
        if not rows:
            raise self._missing()
        return tuple(rows[0])

    @property
    def position(self) -> int:
        """The next offset ``read`` returns (records below the stream's first retained
        offset were trimmed; reading skips to it)."""
        with self.db.engine.snapshot() as conn:
            return int(self._state(conn)[0])

    def read(self, max_records: int = 100, timeout: float | None = 0) -> list[Record]:
        """Return up to ``max_records`` records from the position on, and advance past them.

        Atomic: the records are returned and the position moved in one transaction (the
        caller's, inside ``db.transaction()``). Records trimmed by retention before they
        were read are skipped. ``timeout``: 0 never blocks and may return ``[]``; otherwise
        waits until a record arrives, the stream is sealed (then ``[]`` once drained), or
        the timeout passes (``[]``). Raises ``ReaderNotFound``, ``InvalidArgument``.
        A damaged record (one that cannot be decoded) ends the list before it; a read
        whose first record is damaged raises ``DamagedRecord`` and leaves the position on
        it (``reader.seek(offset + 1)`` skips it; ``read_bytes`` reads its bytes).
        """
        check_count(max_records, "max_records")
        timeout = check_timeout(timeout)
        db = self.db

        def check() -> list[Record] | None:
            if not db.in_transaction():
                # Read-only look first, so idle readers woken by commits stay off the write lock.
                with db.engine.snapshot() as conn:
                    position, _, first, nxt, sealed = self._state(conn)
                if max(position, first) >= nxt:
                    return [] if sealed else None
            return self._take(max_records)

        got = check()  # one look before waiting: starting to wait costs more than a read
        if got is None and timeout != 0:
            got = db.engine.wait_until(check, timeout)
        return got or []

    def _take(self, max_records: int) -> list[Record] | None:
        db = self.db
        with db.engine.write(wakes=False) as conn:
            position, stream_id, first, nxt, sealed = self._state(conn)
            start = max(position, first)
            records, damaged = read_records(conn, self.stream, _RANGE_SQL, (stream_id, start, max_records))
            if damaged:
                bad = damaged[0]
                records = [r for r in records if r.offset < bad.offset]
                if not records:  # raised inside: the position stays on the damaged record
                    raise bad.error(self.stream, f"reader.seek({bad.offset + 1}) skips it")
            end = records[-1].offset + 1 if records else start
            if end != position:
                conn.execute(
                    "UPDATE cursors SET position = ?, updated_at = ? WHERE id = ?", (end, now_us(), self._id)
                )
        if records:
            return records
        return [] if sealed else None

    def seek(self, offset: int | str) -> int:
        """Move the position to ``offset`` (or ``"earliest"``/``"latest"``); return it.

        The offset must lie between the stream's first retained offset and its next
        offset, else ``OffsetOutOfRange``.
        """
        db = self.db
        with db.engine.write(wakes=False) as conn:
            _, _, first, nxt, _ = self._state(conn)
            target = _resolve(offset, first, nxt, self.stream)
            conn.execute(
                "UPDATE cursors SET position = ?, updated_at = ? WHERE id = ?", (target, now_us(), self._id)
            )
        return target

    def info(self) -> ReaderInfo:
        """The reader's position and lag, as one snapshot."""
        with self.db.engine.snapshot() as conn:
            infos = _infos(conn, self._id)
        if not infos:
            raise self._missing()
        return infos[0]

    def delete(self) -> None:
        """Delete this reader (``ReaderNotFound`` if it is already gone)."""
        delete_reader(self.db, self.name, reader_id=self._id)


def _resolve(start: int | str, first: int, nxt: int, stream: str) -> int:
    start = check_start(start)
    if start == "earliest":
        return first
    if start == "latest":
        return nxt
    assert isinstance(start, int)
    if not first <= start <= nxt:
        raise OffsetOutOfRange(
            f"offset {start} is outside stream {stream!r} (offsets {first}..{nxt})",
            hint="use 'earliest', 'latest' or a retained offset",
        )
    return start


def _infos(conn: apsw.Connection, reader_id: int | None) -> list[ReaderInfo]:
    rows = cx.rows(conn,
        "SELECT c.name, st.name, c.position, max(0, st.next_offset - max(c.position, st.first_offset)), "
        "c.created_at, c.updated_at FROM cursors c JOIN streams_now st ON st.id = c.stream_id "
        "WHERE ?1 IS NULL OR c.id = ?1 ORDER BY c.name",
        (reader_id,),
    )
    return [ReaderInfo(n, s, p, lag, c / 1e6, u / 1e6) for n, s, p, lag, c, u in rows]


# --------------------------------------------------------------------------- catalogue
# Called by the Database methods of the same names.


def open_reader(db: Database, name: str, stream: str | None = None, start: int | str = "earliest") -> Reader:
    """Return reader ``name``, creating it on ``stream`` at ``start`` if it does not exist."""
    check_name(name, "reader")
    if stream is not None:
        check_name(stream)
    with db.engine.write() as conn:
        rows = cx.rows(conn,
            "SELECT c.id, st.name FROM cursors c JOIN streams st ON st.id = c.stream_id WHERE c.name = ?",
            (name,),
        )
        if rows:
            reader_id, on = rows[0]
            if stream is not None and on != stream:
                raise InvalidArgument(
                    f"reader {name!r} reads stream {on!r}, not {stream!r}",
                    hint="pick another reader name, or delete the reader first",
                )
            return Reader(db, reader_id, name, on)
        if stream is None:
            raise ReaderNotFound(f"no reader named {name!r}", hint="name its stream to create it")
        found = cx.rows(conn,
            "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?", (stream,)
        )
        if not found:
            raise StreamNotFound(f"no stream named {stream!r}", hint="create it with db.create_stream()")
        stream_id, first, nxt = found[0]
        position = _resolve(start, first, nxt, stream)
        now = now_us()
        reader_id = cx.rows(conn,
            "INSERT INTO cursors (name, stream_id, position, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (name, stream_id, position, now, now),
        )[0][0]
    return Reader(db, reader_id, name, stream)


def list_readers(db: Database) -> list[ReaderInfo]:
    with db.engine.snapshot() as conn:
        return _infos(conn, None)


def delete_reader(db: Database, name: str, *, reader_id: int | None = None) -> None:
    check_name(name, "reader")
    with db.engine.write() as conn:
        gone = cx.rows(conn,
            "DELETE FROM cursors WHERE name = ?1 AND (?2 IS NULL OR id = ?2) RETURNING id", (name, reader_id)
        )
    if not gone:
        raise ReaderNotFound(f"no reader named {name!r}")
