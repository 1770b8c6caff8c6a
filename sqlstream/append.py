"""The append path: the one place records enter a stream.

:func:`append_rows` is used by every writer: ``Stream.append``/``extend`` and the
producer (through ``Database._append_rows``), transactions, dead-lettering, archive
import and the SQLAlchemy outbox. It runs, in the caller's write transaction:

1. validation: ``expect_offset`` (``validation.check_offset``) and the payload limit;
2. with dedup ids: the stream's window, the look-up of remembered ids (duplicates are
   answered with the original offsets and not stored);
3. ``APPEND_SQL``: one SELECT of the stream's state (its next offset and byte length
   derived from its last record, as the view ``streams_now`` does: the append writes no
   stream row, only its chunk rows), checked in Python for the secret, the seal, the expected offset
   and whether a retention trigger fires; a refusal is explained by :func:`append_refused`;
4. the records, in multi-row INSERTs of up to ``ROWS_PER_INSERT`` rows;
5. ``retention.enforce`` when a trigger fired; dedup remember (and prune every
   ``dedup.PRUNE_EVERY`` offsets).

Like :mod:`sqlstream.retention`, it takes ``q`` (a :class:`~sqlstream.connection.Query`)
rather than a connection, so the SQLAlchemy outbox runs the same statements on the
caller's connection. The caller owns the transaction (and with it the wake-up at commit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate
from operator import itemgetter
from typing import Any, overload

from . import dedup as _dedup, retention as _retention, writesecrets as _writesecrets
from .connection import Query
from .records import INLINE_MAX
from .errors import (
    AccessDenied, ConcurrencyError, PayloadTooLarge, SqlstreamError, StreamNotFound, StreamSealed,
)
from .validation import check_offset

__all__ = [
    "PreparedRecord",
    "SharedRows",
    "APPEND_SQL",
    "ROWS_PER_INSERT",
    "insert_sql",
    "insert_batch_sql",
    "insert_shared_sql",
    "append_rows",
    "append_refused",
    "check_rows",
    "store",
    "renumber_empty",
    "StreamEnds",
]

PreparedRecord = tuple["str | None", "str | None", str, "bytes | str", int]
"""A record ready to store: (key, headers JSON, content type, data, payload bytes)."""



class SharedRows(Sequence[PreparedRecord]):
    """A batch of payloads of one content type that share one key and one headers value.

    ``Stream.extend`` of values that are all ``bytes`` (or all ``str``) builds one
    instead of a list of :data:`PreparedRecord` tuples: it holds the payloads and their
    sizes as two lists, so the batch path (:func:`check_rows`, :func:`store`) validates
    and binds them with C-level list operations (``max``, ``sum``, ``accumulate``, slice
    assignment) and no Python loop per record; measured, that loop was most of the
    Python an ``extend`` spent per record (benchmarks/findings.md, "W1: a batch of bytes
    without a loop per record"). As a ``Sequence`` it is still the rows it stands for
    (item ``i`` is ``(key, headers, content_type, data[i], sizes[i])``), so every other
    path (dedup ids, big payloads stored out of the row) reads it like a list of rows.

    The caller vouches for the rows: ``data`` holds exactly ``bytes`` objects for
    ``"bytes"`` or ``str`` objects for ``"text"``, and ``sizes[i]`` is the stored size
    of ``data[i]`` (its length; for text, that of its UTF-8 encoding).
    """

    __slots__ = ("key", "headers", "content_type", "data", "sizes", "total", "largest")

    def __init__(
        self, key: str | None, headers: str | None, content_type: str, data: list[Any], sizes: list[int]
    ) -> None:
        self.key = key
        self.headers = headers
        self.content_type = content_type
        self.data = data
        self.sizes = sizes
        self.total = sum(sizes)
        self.largest = max(sizes, default=0)

    def __len__(self) -> int:
        return len(self.data)

    @overload
    def __getitem__(self, index: int) -> PreparedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[PreparedRecord]: ...

    def __getitem__(self, index: int | slice) -> PreparedRecord | list[PreparedRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self.data)))]
        return (self.key, self.headers, self.content_type, self.data[index], self.sizes[index])


# At most 9 parameters a row, well under SQLite's 32766-variable limit; and the statement's
# text stays under apsw's statement-cache limit (16 KiB; insert_batch_sql(200) is 8.5 KiB):
# a larger one is compiled again on every execute (measured: 500 rows a statement cost a
# batch append 2.8x the instructions of 200).
ROWS_PER_INSERT = 200

# The stream's state for an append, read (not written) in the append's write transaction:
# the next offset, byte length and last append time are the larger of the stream row's
# (floors) and its last record's, as the view streams_now (migration 0009) derives them,
# so an append writes only its chunk rows (one b-tree page for a single record). The
# write lock held since BEGIN IMMEDIATE makes the read and the INSERT atomic. The view's
# expressions, not the view: every append path runs on apsw (SQLite 3.44+, pyproject),
# where octet_length() takes a TEXT payload's size from the record header as length()
# does a BLOB's; the view, which must read the same under older SQLite (Python's sqlite3,
# Datasette), loads a text payload to measure it. (One statement with three correlated
# seeks measured faster than the row and the last record in two statements.) The
# retention triggers (migration 0004) are compared in Python: NULL for a stream without
# limits, so retention costs such appends no statement.
_LAST = "FROM chunks l WHERE l.stream_id = s.id ORDER BY l.offset DESC LIMIT 1"
# A payload stored out of the row (migration 15) is a BLOB: length() reads its size from
# the record header without loading it.
_PAYLOAD_SIZE = "(SELECT length(p.data) FROM payloads p WHERE p.stream_id = l.stream_id AND p.offset = l.offset)"
APPEND_SQL = f"""
SELECT s.id,
       max(s.next_offset, coalesce((SELECT l.offset + 1 {_LAST}), 0)),
       max(s.byte_length, coalesce((SELECT l.position + coalesce(octet_length(l.data), {_PAYLOAD_SIZE}) {_LAST}), 0)),
       coalesce((SELECT max(coalesce(s.last_append_at, l.timestamp), l.timestamp) {_LAST}), s.last_append_at),
       s.sealed_at, s.write_secret_sha256, s.trim_offset, s.trim_bytes, s.trim_time
  FROM streams s WHERE s.name = ?
"""

_RENUMBER_SQL = (
    "UPDATE streams SET first_offset = ?2, next_offset = ?2, first_position = ?3, byte_length = ?3 WHERE id = ?1"
)


class StreamEnds:
    """A write connection's copy of what ``APPEND_SQL`` read, per stream name, kept after
    each append it made, so the next append to the stream skips that statement.

    Valid only while ``token()`` returns ``valid``, what it returned right after the last
    entry was stored. The engine's token is the write connection's ``total_changes()``,
    which moves whenever this connection changes any row (a seal, a trim, retention
    settings, a deleted or renamed stream, an import's renumbering), so every change to a
    stream's row or ends other than the append itself drops the copy. The owner calls
    :meth:`clear` when another connection has committed (the engine: ``PRAGMA
    data_version`` moved, read right after ``BEGIN IMMEDIATE``) and on every rollback
    (transaction or savepoint: a rollback does not lower ``total_changes()``; apsw's
    rollback hook does not fire on ``ROLLBACK TO``, but the engine runs every one itself).
    Holds at most ``limit`` streams (then starts again empty).

    :func:`store` applies these rules itself, on the public fields (it reads the copy
    before an append's statements and stores it after them): as methods they cost a
    single append two Python frames, ~1,000 instructions (benchmarks/findings.md).
    """

    __slots__ = ("entries", "token", "valid", "limit")

    def __init__(self, token: Callable[[], object], limit: int = 4096) -> None:
        self.entries: dict[str, tuple[Any, ...]] = {}
        self.token = token
        self.valid: object = None
        self.limit = limit

    def clear(self) -> None:
        self.entries.clear()
        self.valid = None


# A payload larger than the limit (records.inline_max) is stored in `payloads` under its
# record's (stream_id, offset), and the record's row holds NULL in `data` (migration 15).
# Text is stored as its UTF-8 bytes, so its size is read from the record header whatever
# the SQLite; the view `records` and the record reads turn it back into text by content
# type. `chunks_payload_delete` removes the payload row with its record.
PAYLOAD_SQL = "INSERT INTO payloads (stream_id, offset, data) VALUES (?, ?, CAST(? AS BLOB))"


@lru_cache(maxsize=None)
def insert_sql(rows: int) -> str:
    """The INSERT of ``rows`` records (9 parameters each)."""
    values = ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)
    return (
        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
        f"content_type, data) VALUES {values}"
    )


_INSERT_ONE = insert_sql(1)  # a single append's (a constant: no cache look-up per append)


# A batch's rows share their stream, timestamp and txn, and their offsets follow one
# another: those are bound once per statement (?1 stream, ?2 timestamp, ?3 txn, ?4 first
# offset, row k's offset written as ?4+k), and each row binds only what is its own (5
# parameters instead of 9). Binding a parameter is the larger part of apsw's cost per row
# (a timestamp is a two-digit Python int: its conversion takes the slow path).
_SHARED = 4


@lru_cache(maxsize=None)
def insert_batch_sql(rows: int) -> str:
    """The INSERT of ``rows`` records of one append with one timestamp: parameters
    ``(stream_id, timestamp, txn, first_offset)`` then ``(position, key, headers,
    content_type, data)`` per row."""
    values = ",".join(
        f"(?1,?4+{k},?{n},?2,?3,?{n + 1},?{n + 2},?{n + 3},?{n + 4})"
        for k, n in ((k, _SHARED + 1 + 5 * k) for k in range(rows))
    )
    return (
        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
        f"content_type, data) VALUES {values}"
    )


# When the rows of one INSERT also share their key, headers and content type (``extend``
# gives every record the batch's key and headers; a batch of bytes has one content type)
# those are bound once too, as ?5-?7, and each row binds its position and data only.
# Measured (raw apsw, callgrind): 8,315 -> 6,897 instructions a row for the INSERT.
_SHARED_ALL = 7
_head = itemgetter(0, 1, 2)  # (key, headers, content type) of a PreparedRecord


@lru_cache(maxsize=None)
def insert_shared_sql(rows: int) -> str:
    """The INSERT of ``rows`` records that share stream, timestamp, txn, key, headers and
    content type: parameters ``(stream_id, timestamp, txn, first_offset, key, headers,
    content_type)`` then ``(position, data)`` per row."""
    values = ",".join(
        f"(?1,?4+{k},?{n},?2,?3,?5,?6,?7,?{n + 1})" for k, n in ((k, _SHARED_ALL + 1 + 2 * k) for k in range(rows))
    )
    return (
        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
        f"content_type, data) VALUES {values}"
    )


def check_rows(rows: Sequence[PreparedRecord], expect_offset: int | None, max_record_bytes: int) -> int:
    """Validate a batch before anything is written; return its payload bytes.

    Raises ``InvalidArgument`` (``expect_offset``) or ``PayloadTooLarge``.
    """
    if expect_offset is not None:
        check_offset(expect_offset, "expect_offset")
    if type(rows) is SharedRows:  # sizes known: no loop unless one is too large
        if rows.largest <= max_record_bytes:
            return rows.total
        rows = rows[:]  # the loop below names the first one, as for any batch
    total = 0
    for row in rows:
        if row[4] > max_record_bytes:
            raise PayloadTooLarge(
                f"a record of {row[4]:,} bytes exceeds this database's limit of {max_record_bytes:,} bytes",
                hint="split the payload, or open the database with a larger max_record_bytes",
            )
        total += row[4]
    return total


@overload
def append_rows(
    q: Query, name: str, rows: Sequence[PreparedRecord], *, secret: str | None, expect_offset: int | None,
    txn: Callable[[int], int], now_us: int, max_record_bytes: int, ids: None = None,
    timestamps: Sequence[int] | None = None, checked_bytes: int | None = None, ends: StreamEnds | None = None,
    inline_max: int = INLINE_MAX,
) -> range: ...


@overload
def append_rows(
    q: Query, name: str, rows: Sequence[PreparedRecord], *, secret: str | None, expect_offset: int | None,
    txn: Callable[[int], int], now_us: int, max_record_bytes: int, ids: Sequence[str | None],
    timestamps: Sequence[int] | None = None, checked_bytes: int | None = None, ends: StreamEnds | None = None,
    inline_max: int = INLINE_MAX,
) -> list[int]: ...


def append_rows(
    q: Query,
    name: str,
    rows: Sequence[PreparedRecord],
    *,
    secret: str | None,
    expect_offset: int | None,
    txn: Callable[[int], int],
    now_us: int,
    max_record_bytes: int,
    ids: Sequence[str | None] | None = None,
    timestamps: Sequence[int] | None = None,
    checked_bytes: int | None = None,
    ends: StreamEnds | None = None,
    inline_max: int = INLINE_MAX,
) -> range | list[int]:
    """Append ``rows`` to stream ``name`` in the caller's write transaction; return offsets.

    Without ``ids``: the range of the new records' offsets. With ``ids`` (one dedup id or
    None per row, already checked with ``dedup.check_dedup_ids``): one offset per row, the
    original's for a row whose id is remembered in the stream's window or repeats an
    earlier row of the batch (those rows are not stored).

    ``txn`` returns the transaction's commit number, given the id of the stream about to
    be appended to (called once, only if a row is stored; it keeps :mod:`sqlstream.txn`'s
    rule, which may write the ``counters`` row). ``now_us`` is the time of the append: records' timestamps, the retention
    clock and dedup times. ``timestamps`` (archive import) gives each row its own
    timestamp instead (non-decreasing, none below the stream's last). ``checked_bytes``:
    the caller already ran :func:`check_rows` on these arguments and got this total.
    ``ends``: the write connection's :class:`StreamEnds` (the engine's; None reads the
    stream's state every time, as the SQLAlchemy outbox does on a caller's connection).
    ``inline_max``: payloads larger than this many bytes are stored out of the row
    (:func:`sqlstream.records.inline_max` at the file's page size).

    Raises ``InvalidArgument``, ``PayloadTooLarge`` (before any statement),
    ``StreamNotFound``, ``AccessDenied``, ``StreamSealed``, ``ConcurrencyError``; apsw
    errors are left to the caller's write scope. Not atomic on its own: the caller's
    transaction (or savepoint) makes it all or nothing.
    """
    total = check_rows(rows, expect_offset, max_record_bytes) if checked_bytes is None else checked_bytes
    if ids is None:
        return store(q, name, rows, total, secret, expect_offset, txn, now_us, timestamps, ends, inline_max)
    found = q(_dedup.STREAM_SQL, (name,))
    if not found or not _writesecrets.matches(found[0][4], secret):
        append_refused(q, name, secret, expect_offset)
    stream_id, next_offset, seconds, records, _ = found[0]
    known = _dedup.lookup(q, stream_id, next_offset, seconds, records, ids, now_us)
    offsets, new, same_as = _dedup.resolve(ids, known)
    stored = range(0)
    if new:
        batch = [rows[i] for i in new]
        stamps = None if timestamps is None else [timestamps[i] for i in new]
        total = sum(r[4] for r in batch)
        stored = store(q, name, batch, total, secret, expect_offset, txn, now_us, stamps, ends, inline_max)
        entries = [(dedup_id, offset) for dedup_id, offset in zip((ids[i] for i in new), stored)
                   if dedup_id is not None]
        _dedup.remember(q, stream_id, entries, now_us)
        if _dedup.crosses_prune_point(stored.start, stored.stop):
            _dedup.prune(q, stream_id, stored.stop, seconds, records, now_us)
    return _dedup.finish(offsets, new, same_as, stored)


def store(
    q: Query, name: str, rows: Sequence[PreparedRecord], total: int, secret: str | None,
    expect_offset: int | None, txn: Callable[[int], int], now_us: int, timestamps: Sequence[int] | None,
    ends: StreamEnds | None, inline_max: int, run: Callable[[str, Sequence[Any]], object] | None = None,
) -> range:
    """The statements of an append without dedup ids: reserve offsets, insert the records,
    enforce retention; return the new records' offsets. :func:`append_rows` with
    ``ids=None`` and ``checked_bytes=total`` (arguments as there, positional): the engine
    calls it directly, one Python frame (and ten keyword arguments) fewer per append.

    ``run``: runs the INSERTs, whose rows nobody reads (the engine's write cursor's
    ``execute``: no runner frame and no ``fetchall``, ~1,400 instructions per single
    append); None runs them with ``q``."""
    if run is None:
        run = q
    count = len(rows)
    state = None
    if ends is not None and ends.entries:  # the stream's state as the last append left it
        if ends.token() == ends.valid:
            state = ends.entries.get(name)
        else:
            ends.clear()  # something else changed since: read it again
    if state is None:
        got = q(APPEND_SQL, (name,))
        if not got:
            append_refused(q, name, secret, expect_offset)
        state = got[0]
    stream_id, first, position, last_at, sealed_at, write_secret, t_offset, t_bytes, t_time = state
    if write_secret is not None or sealed_at is not None or expect_offset is not None:  # else nothing to refuse
        refused = _refusal(name, sealed_at, write_secret, first, secret, expect_offset)
        if refused is not None:
            raise refused
    number = txn(stream_id)
    stamp = now_us if timestamps is None else timestamps[-1]
    ts = stamp if last_at is None or last_at < stamp else last_at  # timestamps never decrease
    next_offset = first + count
    trim = ((t_offset is not None and next_offset > t_offset)
            or (t_bytes is not None and position + total > t_bytes)
            or (t_time is not None and ts >= t_time))
    data: bytes | str | None  # None: the payload went to `payloads`
    if count == 1 and timestamps is None:  # the common case: no batching loop
        key, headers, ctype, data, nbytes = rows[0]
        if nbytes > inline_max:
            run(PAYLOAD_SQL, (stream_id, first, data))
            data = None
        run(_INSERT_ONE, (stream_id, first, position, ts, number, key, headers, ctype, data))
    elif type(rows) is SharedRows and rows.largest <= inline_max and timestamps is None:
        # The rows of insert_shared_sql, built by list operations: every record's position
        # (a running sum of the sizes) and data interleaved after the shared parameters.
        head = [stream_id, ts, number, first, rows.key, rows.headers, rows.content_type]
        positions = list(accumulate(rows.sizes, initial=position))
        payloads = rows.data
        for start in range(0, count, ROWS_PER_INSERT):
            stop = min(start + ROWS_PER_INSERT, count)
            pairs: list[Any] = [None] * (2 * (stop - start))
            pairs[0::2] = positions[start:stop]
            pairs[1::2] = payloads[start:stop]
            head[3] = first + start
            run(insert_shared_sql(stop - start), head + pairs)
    elif timestamps is None:
        offset = first
        params: list[Any]
        for start in range(0, count, ROWS_PER_INSERT):
            part = rows[start:start + ROWS_PER_INSERT]
            if len(set(map(_head, part))) == 1:  # one key, headers and content type
                params = [stream_id, ts, number, offset, *_head(part[0])]
                for _, _, _, data, nbytes in part:
                    if nbytes > inline_max:
                        run(PAYLOAD_SQL, (stream_id, offset, data))
                        data = None
                    params += (position, data)
                    offset += 1
                    position += nbytes
                run(insert_shared_sql(len(part)), params)
                continue
            params = [stream_id, ts, number, offset]
            for key, headers, ctype, data, nbytes in part:
                if nbytes > inline_max:
                    run(PAYLOAD_SQL, (stream_id, offset, data))
                    data = None
                params += (position, key, headers, ctype, data)
                offset += 1
                position += nbytes
            run(insert_batch_sql(len(part)), params)
    else:  # archive import: each row its own timestamp
        params = []
        offset = first
        for i, (key, headers, ctype, data, nbytes) in enumerate(rows):
            if nbytes > inline_max:
                run(PAYLOAD_SQL, (stream_id, offset, data))
                data = None
            params += (stream_id, offset, position, timestamps[i], number, key, headers, ctype, data)
            offset += 1
            position += nbytes
            if len(params) == 9 * ROWS_PER_INSERT:
                run(insert_sql(ROWS_PER_INSERT), params)
                params = []
        if params:
            run(insert_sql(len(params) // 9), params)
    if trim:
        _retention.enforce(q, stream_id, now_us)  # changes the row: nothing kept
    elif ends is not None:  # keep the state for the next append (see StreamEnds)
        entries = ends.entries
        if len(entries) >= ends.limit:
            entries.clear()
        # ts is the last record's timestamp, raised to last_at: the stream's last append time.
        entries[name] = (stream_id, next_offset, state[2] + total, ts, sealed_at, write_secret,
                         t_offset, t_bytes, t_time)
        ends.valid = ends.token()  # after the append's last statement
    return range(first, next_offset)


def renumber_empty(q: Query, stream_id: int, offset: int, position: int) -> None:
    """Make an empty stream continue at ``offset``/``position``, as if trimmed to there.

    Archive import uses it so an empty stream adopts the archive's numbering.
    """
    q(_RENUMBER_SQL, (stream_id, offset, position))


def append_refused(q: Query, name: str, secret: str | None, expect_offset: int | None) -> None:
    """Raise why the append is refused: not found, secret, sealed, or offset."""
    rows = q("SELECT sealed_at, (SELECT write_secret_sha256 FROM streams s WHERE s.id = n.id), next_offset "
             "FROM streams_now n WHERE name = ?", (name,))
    if not rows:
        raise StreamNotFound(f"no stream named {name!r}", hint="create it with db.create_stream()")
    sealed_at, write_secret, next_offset = rows[0]
    refused = _refusal(name, sealed_at, write_secret, next_offset, secret, expect_offset)
    # Callers come here only with a refused append, under the write lock: a None is a
    # stream that changed between their read and this one.
    raise refused if refused is not None else ConcurrencyError(
        f"stream {name!r} changed while the append was checked", hint="retry the append")


def _refusal(
    name: str, sealed_at: int | None, write_secret: str | None, next_offset: int, secret: str | None,
    expect_offset: int | None,
) -> SqlstreamError | None:
    """The one rule for refusing an append to an existing stream, in order: its write
    secret, its seal, ``expect_offset``; None when the append may go ahead.
    ``write_secret`` is the stream's stored hash (``sqlstream.writesecrets``)."""
    if not _writesecrets.matches(write_secret, secret):
        return AccessDenied(
            f"stream {name!r} takes appends only through its write secret",
            hint="use db.writer(secret) or the handle create_stream() returned",
        )
    if sealed_at is not None:
        return StreamSealed(f"stream {name!r} is sealed and takes no more appends")
    if expect_offset is not None and next_offset != expect_offset:
        return ConcurrencyError(
            f"stream {name!r} is at offset {next_offset}, not the expected {expect_offset}",
            hint="re-read the stream and retry with the new expect_offset",
        )
    return None