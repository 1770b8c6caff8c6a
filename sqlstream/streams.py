"""Stream handles: appending records, reading them by offset, time or byte position.

A :class:`Stream` is a light handle (database + name, plus the write secret for secret
streams); it holds no state of its own, so handles may be created freely and shared
between threads. Every method that blocks takes ``timeout`` in seconds: ``0`` never
blocks, a positive number waits at most that long, ``None`` waits without limit.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import apsw

from . import connection as cx
from . import dedup as _dedup
from . import fencing as _fencing
from . import ranges as _ranges
from . import append as _append
from . import raw as _raw
from .errors import CorruptDatabase, InvalidArgument, OffsetOutOfRange, StreamNotFound, WritePending
from .records import (
    Chunk,
    Damaged,
    Record,
    StreamInfo,
    encode_headers,
    encode_key,
    encode_value,
    MISSING_PAYLOAD,
    payload_bytes,
    read_records,
    record_sql,
)
from .validation import check_count, check_offset, check_start, check_timeout, timestamp_us

if TYPE_CHECKING:
    from .database import Database
    from .engine import PreparedRecord
    from .retention import TrimResult

_STATE_SQL = (
    "SELECT id, first_offset, next_offset, first_position, byte_length, sealed_at IS NOT NULL, name "
    "FROM streams_now WHERE name = ?"
)
_RANGE_SQL = record_sql("WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?")


def _up_to_damage(stream: str, records: list[Record], damaged: list[Damaged], skip: str) -> list[Record]:
    """The records before the first damaged one; DamagedRecord if that one comes first."""
    if not damaged:
        return records
    bad = damaged[0]
    before = [r for r in records if r.offset < bad.offset]
    if not before:
        raise bad.error(stream, skip.format(next=bad.offset + 1))
    return before


class _State:
    """One consistent reading of a stream's row."""

    __slots__ = ("id", "first_offset", "next_offset", "first_position", "byte_length", "sealed", "name")
    id: int
    first_offset: int
    next_offset: int
    first_position: int
    byte_length: int
    sealed: bool
    name: str

    def __init__(self, row: tuple[Any, ...]) -> None:
        (self.id, self.first_offset, self.next_offset, self.first_position, self.byte_length, sealed,
         self.name) = row
        self.sealed = bool(sealed)


class Stream:
    """A handle to one stream of a :class:`~sqlstream.Database`."""

    __slots__ = ("db", "name", "_secret")

    def __init__(self, db: Database, name: str, secret: str | None = None) -> None:
        self.db = db
        self.name = name
        self._secret = secret

    def __repr__(self) -> str:
        return f"<sqlstream.Stream {self.name!r}{' writable' if self._secret else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and other.db is self.db and other.name == self.name

    def __hash__(self) -> int:
        return hash((id(self.db), self.name))

    @property
    def write_secret(self) -> str | None:
        """The secret that authorises writes, on handles that hold it (else None)."""
        return self._secret

    # ----------------------------------------------------------------- writing

    def append(
        self,
        value: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect_offset: int | None = None,
        dedup_id: str | None = None,
    ) -> int:
        """Append one record and return its offset. Durable once this returns.

        ``value`` is bytes, str, or a JSON value (dict, list, int, float, bool).
        ``expect_offset``: append only if the stream's next offset is this one, else
        ``ConcurrencyError`` (optimistic concurrency). ``dedup_id``: if an append with
        this id is remembered inside the stream's dedup window, store nothing and return
        the original record's offset (which may have been trimmed since); see
        ``sqlstream.dedup``. Inside ``db.transaction()`` the record becomes visible when
        the transaction commits.
        Raises ``StreamNotFound``, ``StreamSealed``, ``AccessDenied`` (secret stream),
        ``InvalidValue``, ``PayloadTooLarge``; on any error nothing is stored.
        """
        if type(value) is bytes and key is None and headers is None:
            prepared: PreparedRecord = (None, None, "bytes", value, len(value))  # nothing to encode
        else:
            prepared = prepare_record(value, key, headers)
        if dedup_id is None:
            return self.db.engine.append_rows(self.name, self._secret, (prepared,), expect_offset).start
        ids = [_dedup.check_dedup_id(dedup_id)]
        return self.db.engine.append_rows(self.name, self._secret, (prepared,), expect_offset, ids)[0]

    @overload
    def extend(
        self,
        values: Iterable[Any],
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect_offset: int | None = None,
        dedup_ids: None = None,
    ) -> range: ...

    @overload
    def extend(
        self,
        values: Iterable[Any],
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect_offset: int | None = None,
        dedup_ids: Sequence[str | None],
    ) -> list[int]: ...

    def extend(
        self,
        values: Iterable[Any],
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect_offset: int | None = None,
        dedup_ids: Sequence[str | None] | None = None,
    ) -> range | list[int]:
        """Append several records in one transaction; return their (contiguous) offsets.

        The batch is atomic and never interleaved with another writer's records. ``key``
        and ``headers`` apply to every record; ``expect_offset`` is checked against the
        first offset. An empty batch stores nothing and returns an empty range.
        ``dedup_ids``: one id (or None) per value. Records whose id is remembered in the
        stream's dedup window, or repeats an earlier id of the batch, are not stored;
        the result is then a list with one offset per value (the original's for those).
        """
        if isinstance(values, (bytes, bytearray, memoryview, str, dict)):
            raise InvalidArgument("extend() takes an iterable of values; use append() for one value")
        try:
            values = iter(values)
        except TypeError:
            raise InvalidArgument(f"extend() takes an iterable of values, not {type(values).__name__}") from None
        values = list(values)
        prepared: Sequence[PreparedRecord]
        if values:
            # key and headers are shared by the whole batch: validate and encode them once.
            k, h = encode_key(key), encode_headers(headers)
            prepared = _shared_rows(k, h, values) or [
                (k, h, "bytes", v, len(v)) if type(v) is bytes else (k, h, *encode_value(v)) for v in values
            ]
        else:
            prepared = []
        if dedup_ids is not None:
            ids = _dedup.check_dedup_ids(dedup_ids, len(prepared))
            if not prepared:
                return []
            return self.db.engine.append_rows(self.name, self._secret, prepared, expect_offset, ids)
        if not prepared:
            info = self.info()
            return range(info.next_offset, info.next_offset)
        return self.db.engine.append_rows(self.name, self._secret, prepared, expect_offset)

    def append_fenced(
        self,
        values: Sequence[Any],
        *,
        producer: str | None = None,
        epoch: int | None = None,
        seq: int | None = None,
        last_seq: int | None = None,
        wrap: int | None = None,
        writer_seq: str | None = None,
        seal: bool = False,
    ) -> _fencing.FencedAppend:
        """Append ``values`` (one batch) as an idempotent producer and/or with a writer
        sequence token, optionally sealing the stream in the same transaction.

        ``producer``/``epoch``/``seq`` (all or none): a batch already accepted is a
        duplicate (nothing stored, ``duplicate=True``, even on a sealed stream; one of the
        producer's last 5 batches also gives ``original``, the offsets it was stored at);
        an older epoch raises ``StaleEpoch`` (``current_epoch``); a skipped seq
        ``SequenceGap`` (``expected``, ``received``); a new epoch must start at seq 0. A
        batch may cover the numbers ``seq`` .. ``last_seq`` (Kafka numbers records, not
        batches); with ``wrap`` the numbers count modulo it (Kafka: 2**31) and only a
        recent batch or the next number is accepted (see ``sqlstream.fencing``). ``writer_seq`` must
        be byte-wise greater than the stream's last one (``SequenceRegression``).
        ``seal=True`` seals after storing (with no values: seal only). Atomic: checks,
        records, producer state and seal commit together; on any error nothing changes.
        Also raises ``StreamNotFound``, ``StreamSealed``, ``AccessDenied``, ``InvalidArgument``.
        See ``sqlstream.fencing``.
        """
        return _fencing.append_fenced(self.db.engine, self.name, values, self.extend, self.seal, producer=producer,
                                      epoch=epoch, seq=seq, last_seq=last_seq, wrap=wrap, writer_seq=writer_seq,
                                      seal=seal)

    def seal(self) -> bool:
        """Mark the stream finished: later appends raise ``StreamSealed``; blocked readers wake.

        Returns True if this call sealed it, False if it was sealed already. A secret
        stream can be sealed only through a handle that holds its secret.
        """
        return self.db.engine.seal(self.name, self._secret)

    def trim(self, before_offset: int | None = None, *, force: bool = False) -> TrimResult:
        """``db.trim(name, before_offset, force=force)``: drop records below an offset, or
        apply the retention limits exactly (None)."""
        return self.db.trim(self.name, before_offset, force=force)

    def set_retention(self, **settings: Any) -> TrimResult:
        """``db.set_retention(name, **settings)``: change limits/dedup window, then trim."""
        return self.db.set_retention(self.name, **settings)

    # ----------------------------------------------------------------- reading records

    def info(self) -> StreamInfo:
        """A snapshot of the stream's offsets, sizes and settings."""
        return self.db.stream_info(self.name)

    def _state(self, conn: apsw.Connection) -> _State:
        rows = conn.execute(_STATE_SQL, (self.name,)).fetchall()
        if not rows:
            raise StreamNotFound(f"no stream named {self.name!r}")
        return _State(rows[0])

    def _check_range(self, offset: int, st: _State) -> None:
        """``OffsetOutOfRange`` for a record read at ``offset`` below the first retained
        offset or past the end of the sealed stream."""
        if offset < st.first_offset:
            raise OffsetOutOfRange(
                f"offset {offset} of stream {self.name!r} was trimmed; the first available "
                f"offset is {st.first_offset}",
            )
        if offset > st.next_offset and st.sealed:
            raise OffsetOutOfRange(
                f"offset {offset} is past the end of sealed stream {self.name!r} "
                f"(next offset {st.next_offset})"
            )

    def _read_once(self, offset: int, limit: int) -> tuple[list[Record], _State]:
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            self._check_range(offset, st)
            if offset >= st.next_offset:
                return [], st
            records, damaged = read_records(conn, self.name, _RANGE_SQL, (st.id, offset, limit))
        return _up_to_damage(self.name, records, damaged, "read on from offset {next} to skip it"), st

    def read(self, offset: int = 0, limit: int = 100, timeout: float | None = 0) -> list[Record]:
        """Return up to ``limit`` records starting at ``offset``, in offset order.

        With ``timeout`` 0 this never blocks and may return ``[]``. Otherwise it waits
        until at least one record at or after ``offset`` is committed, the stream is
        sealed, or the timeout passes (then ``[]``). Only committed records are returned,
        and a transaction's records appear all together.
        Raises ``OffsetOutOfRange`` below the first retained offset or past the end of a
        sealed stream; ``StreamNotFound`` if the stream does not (or no longer) exists.
        A damaged record (one that cannot be decoded) ends the list before it; a read that
        starts at one raises ``DamagedRecord`` naming it (its bytes stay readable with
        ``read_bytes``; read on from the next offset to skip it).
        """
        check_offset(offset)
        check_count(limit, "limit")
        timeout = check_timeout(timeout)

        def check() -> list[Record] | None:
            records, st = self._read_once(offset, limit)
            return records if records or st.sealed else None

        return self.db.engine.wait_until(check, timeout) or []

    def read_raw(self, offset: int = 0, limit: int = 1000, max_bytes: int | None = None) -> _raw.RawRecords:
        """Up to ``limit`` records from ``offset`` as stored bytes, without decoding them.

        For code that forwards records as they are stored (a JSON-mode HTTP response is
        the stored JSON texts joined with commas): no ``Record`` objects are built and no
        value is decoded, which makes a large read several times cheaper than
        :meth:`read`. Only payloads are returned: no keys, headers or timestamps (use
        :meth:`read` for those). ``payloads[i]`` is record ``offset + i`` as stored:
        bytes as appended, text as UTF-8, a JSON value as the compact UTF-8 JSON text the
        append stored (:class:`sqlstream.RawRecords` says exactly what each field holds).

        ``max_bytes`` bounds the payload bytes returned: records are taken in order while
        their total stays within it, but the first always (so a record larger than
        ``max_bytes`` comes alone); ``None``: only ``limit`` bounds the read.

        Atomic: the records, the stream's tail (``stream_next_offset``,
        ``stream_byte_length``) and ``sealed`` come from one snapshot, so ``up_to_date``
        says whether the records reached the tail as of the read. Never blocks (to wait
        for records, call it from a :meth:`sqlstream.aio.AsyncDatabase.wait_for` check or
        use :meth:`read` with a timeout). Errors as :meth:`read`: ``InvalidArgument`` for
        a negative offset or a ``limit`` or ``max_bytes`` that is not a positive int,
        ``OffsetOutOfRange`` below the first retained offset or past the end of a sealed
        stream, ``StreamNotFound``. Payloads are checked as :meth:`read` checks them (text
        and JSON valid UTF-8, JSON parses): a damaged record (written by another tool)
        ends the result before it, and a read that starts at one raises
        ``DamagedRecord`` (read on from the next offset to skip it).
        """
        _check_raw_read(offset, limit, max_bytes)
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            self._check_range(offset, st)
            state = (st.next_offset, st.byte_length, st.sealed, st.id)
            if offset >= st.next_offset:
                return _raw.build(self.name, offset, [], st.byte_length, None, state)
            position, end = _budget_end(conn, st, offset, limit, max_bytes)
            rows = cx.rows(conn, _raw.RAW_SQL, (st.id, offset, end))
        return _raw.build(self.name, offset, rows, position, max_bytes, state)

    def read_joined(self, offset: int = 0, limit: int = 1000, max_bytes: int | None = None, *,
                    json_array: bool = False) -> _raw.JoinedRecords | None:
        """The records :meth:`read_raw` would return, their payloads joined into one
        ``bytes`` by SQLite, or None when they cannot be sent as they are.

        For servers that send records as stored (a JSON-mode HTTP response is the stored
        JSON texts joined with commas): one row comes back for the whole range, so no
        ``bytes`` object is built per record. ``json_array``: payloads are joined with
        ``b","`` and every record must be JSON; otherwise with nothing between them, and
        every record must be bytes, or none may be and all must be ASCII.

        None (then call :meth:`read_raw`, which renders or refuses record by record): a
        record of another kind, a text or JSON payload that a joined check cannot settle
        (not ASCII without ``json_array``, not valid UTF-8 with it) or JSON that SQLite's
        ``json_valid`` refuses (a damaged record, or one only Python's parser takes).

        Same range rules, atomicity and errors as :meth:`read_raw`: records from
        ``offset`` while their stored bytes stay within ``max_bytes`` (the first always),
        at most ``limit``, and the stream's tail and seal state from the same snapshot.
        """
        _check_raw_read(offset, limit, max_bytes)
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            self._check_range(offset, st)
            state = (st.next_offset, st.byte_length, st.sealed, st.id)
            if offset >= st.next_offset:
                return _raw.JoinedRecords(offset, 0, b"", st.byte_length, st.byte_length, *state)
            position, end = _budget_end(conn, st, offset, limit, max_bytes)
            # As read_raw's cut: less the last record when it ends past the budget.
            end_position = self._position(conn, st, end)
            if max_bytes is not None and end_position - position > max_bytes and end - offset > 1:
                end -= 1
                end_position = self._position(conn, st, end)
            row = cx.rows(conn, _raw.JOINED_SQL, (b"," if json_array else b"", st.id, offset, end))[0]
        data = _raw.passes(row, json_array)
        if data is None:
            return None
        return _raw.JoinedRecords(offset, end - offset, data, position, end_position, *state)

    def record_at_position(self, position: int) -> tuple[int, int]:
        """(offset, byte position) of the first retained record that starts at byte
        ``position`` or later; (next offset, byte length) when none does. The records
        starting below ``position`` end there. Never blocks; a binary search over the
        primary key."""
        check_offset(position, "position")
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            offset = _bisect(conn, st, "position", position, strict=False)
            return offset, self._position(conn, st, offset)

    @staticmethod
    def _position(conn: apsw.Connection, st: _State, offset: int) -> int:
        """Byte position of record ``offset`` (the byte length at the tail)."""
        if offset >= st.next_offset:
            return st.byte_length
        return _integer(st, "position", offset, cx.rows(conn, _raw.POSITION_SQL, (st.id, offset))[0][0])

    def read_reverse(self, before: int | None = None, limit: int = 100) -> list[Record]:
        """Records below offset ``before`` (None: the end), newest first (Redis ``XREVRANGE``).

        See :func:`sqlstream.ranges.read_reverse`; never blocks.
        """
        return _ranges.read_reverse(self.db, self.name, before, limit)

    def read_at(self, timestamp: float | _dt.datetime) -> int:
        """The first offset whose record was appended at or after ``timestamp``.

        ``timestamp`` is seconds since the epoch or a ``datetime`` (naive means local time,
        as ``datetime.timestamp()`` has it). Returns the next offset if every retained
        record is older. Timestamps never decrease within a stream, so this is a binary
        search over the primary key.
        """
        target = timestamp_us(timestamp)
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            return _bisect(conn, st, "timestamp", target, strict=False)

    def follow(
        self, start: int | str = "earliest", *, batch: int = 100, timeout: float | None = None
    ) -> Iterator[Record]:
        """Yield records from ``start`` on, waiting for new ones (like ``tail -f``).

        ``start``: ``"earliest"`` (first retained record), ``"latest"`` (only records
        appended from now on) or an offset. Ends when the stream is sealed and every
        record has been yielded, or when no record arrives for ``timeout`` seconds
        (None: wait forever).
        """
        offset = self._resolve_start(start)
        check_count(batch, "batch")
        timeout = check_timeout(timeout)
        while True:
            outcome: list[Any] = []

            def check() -> bool | None:
                records, st = self._read_once(offset, batch)
                if records or st.sealed:
                    outcome[:] = [records, st]
                    return True
                return None

            if not self.db.engine.wait_until(check, timeout):
                return
            records, st = outcome
            if not records:
                return  # sealed and drained
            yield from records
            offset = records[-1].offset + 1

    def _resolve_start(self, start: int | str) -> int:
        start = check_start(start)
        if start == "earliest":
            return self.info().first_offset
        if start == "latest":
            return self.info().next_offset
        return int(start)

    # ----------------------------------------------------------------- reading bytes

    def _bytes_once(self, offset: int, limit: int | None) -> Chunk | None:
        """The chunk at ``offset`` if it is readable now; None if it is not committed yet."""
        with self.db.engine.snapshot() as conn:
            st = self._state(conn)
            length = st.byte_length
            if offset < st.first_position:
                raise OffsetOutOfRange(
                    f"byte {offset} of stream {self.name!r} was trimmed; the first available byte "
                    f"is {st.first_position}"
                )
            if offset > length and st.sealed:
                raise OffsetOutOfRange(
                    f"byte offset {offset} is past the end of finished stream {self.name!r} "
                    f"({length} bytes)"
                )
            if limit is None:
                if not st.sealed:
                    return None
                end = length
            else:
                end = offset + limit
                if end > length:
                    if not st.sealed:
                        return None
                    end = length
            data = _slice(conn, st, offset, end, self.name)
            return Chunk(data, len(data), st.sealed and end == length)

    def read_bytes(self, offset: int = 0, limit: int | None = None, timeout: float | None = 0) -> Chunk:
        """Read the stream as one byte log: bytes ``[offset, offset + limit)``.

        The bytes of consecutive records are concatenated (text and JSON as UTF-8). With
        ``limit=None`` the chunk runs to the end of the stream, which must be sealed.
        ``finished`` is true only when the chunk reaches the end of a sealed stream; a
        sealed stream's last chunk may be shorter than ``limit``.
        Non-blocking (``timeout=0``): ``WritePending`` if those bytes are not all
        committed yet. Blocking: waits until they are (or the stream is sealed), then
        ``WritePending`` if the timeout passes first. ``OffsetOutOfRange`` past the end
        of a sealed stream or below the first retained byte.
        """
        check_offset(offset)
        if limit is not None:
            check_offset(limit, "limit")
        timeout = check_timeout(timeout)
        chunk = self.db.engine.wait_until(lambda: self._bytes_once(offset, limit), timeout)
        if chunk is None:
            raise WritePending(
                f"bytes {offset}..{'end' if limit is None else offset + limit} of stream "
                f"{self.name!r} are not committed yet",
                hint="pass a timeout to wait for them",
            )
        return chunk

    def iter_bytes(self, chunk_size: int, offset: int = 0, *, timeout: float | None = None) -> Iterator[bytes]:
        """Yield the stream's bytes from ``offset`` in pieces of at most ``chunk_size``.

        Yields committed bytes as soon as they exist (a piece may be shorter than
        ``chunk_size``), waits while the writer is behind, and ends once the stream is
        sealed and all of it has been yielded. If nothing new arrives for ``timeout``
        seconds (None: no limit) it raises ``WritePending``.
        """
        check_count(chunk_size, "chunk_size")
        check_offset(offset)
        timeout = check_timeout(timeout)
        position = offset

        def check() -> Chunk | None:
            with self.db.engine.snapshot() as conn:
                st = self._state(conn)
                if position < st.first_position:
                    raise OffsetOutOfRange(f"byte {position} of stream {self.name!r} was trimmed")
                if position < st.byte_length:
                    end = min(position + chunk_size, st.byte_length)
                    data = _slice(conn, st, position, end, self.name)
                    return Chunk(data, len(data), st.sealed and end == st.byte_length)
                if st.sealed:
                    if position > st.byte_length:
                        raise OffsetOutOfRange(
                            f"byte offset {position} is past the end of finished stream {self.name!r}"
                        )
                    return Chunk(b"", 0, True)
                return None

        while True:
            chunk = self.db.engine.wait_until(check, timeout)
            if chunk is None:
                raise WritePending(f"no new bytes in stream {self.name!r} for {timeout}s")
            if chunk.data:
                yield chunk.data
                position += chunk.length
            if chunk.finished:
                return


def _shared_rows(key: str | None, headers: str | None, values: list[Any]) -> _append.SharedRows | None:
    """The batch path's fast case: ``values`` all exactly ``bytes``, or all exactly ``str``
    (valid UTF-8 text), as one :class:`~sqlstream.append.SharedRows`; else None (the
    caller encodes each value, which also names any that is refused)."""
    types = list(map(type, values))
    if types.count(bytes) == len(values):
        return _append.SharedRows(key, headers, "bytes", values, list(map(len, values)))
    if types.count(str) == len(values):
        try:
            sizes = list(map(len, map(str.encode, values)))
        except UnicodeEncodeError:  # a lone surrogate: encode_value says which, as InvalidValue
            return None
        return _append.SharedRows(key, headers, "text", values, sizes)
    return None


def prepare_record(value: Any, key: Any, headers: Any) -> PreparedRecord:
    """A value, key and headers encoded as the append path stores them (raises ``InvalidValue``)."""
    ctype, data, nbytes = encode_value(value)
    return (encode_key(key), encode_headers(headers), ctype, data, nbytes)


def _check_raw_read(offset: int, limit: int, max_bytes: int | None) -> None:
    """The arguments of read_raw and read_joined (``InvalidArgument``)."""
    check_offset(offset)
    check_count(limit, "limit")
    if max_bytes is not None:
        check_count(max_bytes, "max_bytes")


def _budget_end(conn: apsw.Connection, st: _State, offset: int, limit: int, max_bytes: int | None) -> tuple[int, int]:
    """(position of ``offset``, the offset after the last record a raw read from ``offset``
    may return): at most ``limit`` records, the tail, and with ``max_bytes`` those that
    start within the budget (the first always). ``offset`` is below the tail."""
    position = _integer(st, "position", offset, cx.rows(conn, _raw.POSITION_SQL, (st.id, offset))[0][0])
    end = min(offset + limit, st.next_offset)
    if max_bytes is not None:
        # Positions add up the stored lengths: the records that start within the
        # budget are found by a binary search, so no row past them is fetched.
        end = min(end, max(offset + 1, _bisect(conn, st, "position", position + max_bytes, strict=False)))
    return position, end


def _integer(st: _State, column: str, offset: int, value: object) -> int:
    """A record's ``position`` or ``timestamp`` as read for a search: ``CorruptDatabase``
    naming the record when SQL outside sqlstream stored another type there (the table is
    not STRICT), instead of a TypeError from comparing it."""
    if type(value) is not int:
        raise CorruptDatabase(
            f"record {offset} of stream {st.name!r} has {column} {value!r}, not an integer",
            hint="SQL outside sqlstream wrote it; `sqlstream check` lists every such record",
        )
    return value


def _bisect(conn: apsw.Connection, st: _State, column: str, target: int, *, strict: bool) -> int:
    """Binary search over offsets on a column that never decreases along a stream.

    Returns the first offset whose ``column`` is >= target (> target when ``strict``),
    or ``next_offset`` when there is none. One primary-key lookup per step.
    """
    sql = f"SELECT {column} FROM chunks WHERE stream_id = ? AND offset = ?"
    lo, hi = st.first_offset, st.next_offset
    while lo < hi:
        mid = (lo + hi) // 2
        value = _integer(st, column, mid, cx.rows(conn, sql, (st.id, mid))[0][0])
        if value < target or (strict and value == target):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _slice(conn: apsw.Connection, st: _State, start: int, end: int, name: str) -> bytes:
    """Bytes ``[start, end)`` of the stream's byte log, across record boundaries
    (``DamagedRecord`` at a record whose payload row is gone: its bytes are unknown)."""
    if end <= start:
        return b""
    # The record holding byte `start` is the last one whose position is <= start.
    first = _bisect(conn, st, "position", start, strict=True) - 1
    first = max(first, st.first_offset)
    parts = []
    cursor = conn.execute(
        # As a BLOB: the bytes as stored, also those of a damaged (not valid UTF-8) record.
        "SELECT offset, position, content_type, CAST(data AS BLOB) FROM records WHERE stream_id = ? AND offset >= ? "
        "ORDER BY offset",
        (st.id, first),
    )
    for offset, position, ctype, data in cursor:
        if position >= end:
            break
        if data is None:
            cursor.close()
            raise Damaged(offset, position, MISSING_PAYLOAD, None, {}, b"").error(
                name, "read on from the next record's position to skip it")
        raw = payload_bytes(ctype, data)
        lo = max(0, start - position)
        hi = min(len(raw), end - position)
        if hi > lo:
            parts.append(raw[lo:hi])
    cursor.close()
    return b"".join(parts)
