"""What a stream holds: records, stream descriptions, byte chunks; and how values are encoded.

Values are stored by kind: ``bytes`` as a BLOB, ``str`` as TEXT, and JSON-able values
(dict, list, int, float, bool) as compact JSON TEXT, so ``json_extract(data, '$.x')``
works in the ``sqlite3`` shell. A record's *byte length* is the length of its stored
payload (UTF-8 for text and JSON); byte positions in a stream add these lengths up.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from .errors import DamagedRecord, InvalidValue
from .validation import NAME_RULE as NAME_RULE, check_name as check_name  # re-exported; their home

Value = Union[bytes, str, dict[str, Any], list[Any], int, float, bool]  # noqa: UP007 - readable in docs
"""What a record's value can be: bytes, str, or a JSON-serialisable dict/list/number/bool."""

class Record(NamedTuple):
    """One record of a stream, as read back.

    ``timestamp`` is seconds since the Unix epoch (UTC), assigned by the database when the
    record was appended and never decreasing within a stream. ``position`` is the byte
    offset of the record's first byte in the stream. ``txn`` is the commit sequence number
    of the transaction that wrote it: records appended in one transaction share it, and a
    higher number committed later.
    """

    stream: str
    offset: int
    timestamp: float
    key: str | None
    headers: dict[str, str]
    value: Any
    position: int
    txn: int
    content_type: str  # 'bytes', 'text' or 'json'


class Chunk(NamedTuple):
    """A run of bytes read from a stream: ``finished`` only when it reaches a sealed end."""

    data: bytes
    length: int
    finished: bool


@dataclass(frozen=True)
class StreamInfo:
    """A snapshot of a stream's counters and settings."""

    name: str
    first_offset: int
    next_offset: int
    byte_length: int
    first_position: int
    created_at: float
    sealed_at: float | None
    last_append_at: float | None
    secret: bool
    max_count: int | None
    max_age: float | None
    max_bytes: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    keep_unacked: bool = False
    """Retention never trims records a subscription has not acked."""
    dedup_seconds: float = 86400.0
    """How long a ``dedup_id`` is remembered (see ``sqlstream.dedup``)."""
    dedup_records: int = 100_000
    """A ``dedup_id`` is remembered for this many of the stream's newest records."""
    over_limit: str | None = None
    """Why the stream holds records its retention limits exclude (e.g. a subscription that
    has not acked them, with ``keep_unacked``), or None when it holds none."""
    dropped_deliveries: int = 0
    """Pending (delivered, unacked) deliveries dropped because trimming deleted their
    records (retention without ``keep_unacked``, or a forced trim); ever, for this stream."""

    @property
    def count(self) -> int:
        """Records currently retained."""
        return self.next_offset - self.first_offset

    @property
    def retained_bytes(self) -> int:
        """Bytes of the records currently retained."""
        return self.byte_length - self.first_position

    @property
    def sealed(self) -> bool:
        return self.sealed_at is not None


def encode_value(value: object) -> tuple[str, bytes | str, int]:
    """Return ``(content_type, stored_data, byte_length)`` for a record value."""
    if isinstance(value, bytes):
        return "bytes", value, len(value)
    if isinstance(value, str):
        return "text", value, _utf8_length(value, "a record value")
    if isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
        return "bytes", data, len(data)
    if value is None:
        raise InvalidValue(
            "a record value cannot be None",
            hint="append bytes, str, or a JSON value such as a dict or list",
        )
    if isinstance(value, (dict, list, tuple, int, float, bool)):
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidValue(f"record value is not JSON-serialisable: {exc}") from exc
        _check_json_keys(value)  # after dumps, which has refused circular structures
        return "json", text, _utf8_length(text, "a record value")
    raise InvalidValue(
        f"cannot store a value of type {type(value).__name__}",
        hint="append bytes, str, or a JSON value (dict, list, int, float, bool)",
    )


def _utf8_length(text: str, what: str) -> int:
    """Length of ``text`` in UTF-8; lone surrogates (not valid UTF-8) are InvalidValue."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidValue(f"{what} must be valid Unicode text: {exc}") from exc


_CONTAINERS = (dict, list, tuple)


def _check_json_keys(value: object) -> None:
    """Refuse dicts with non-str keys: JSON would turn them into strings (and can merge them)."""
    if not isinstance(value, _CONTAINERS):
        return
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for k in item:
                if type(k) is not str and not isinstance(k, str):
                    raise InvalidValue(
                        f"JSON object keys must be str, not {type(k).__name__} ({k!r})",
                        hint="convert the keys to str before appending",
                    )
            children: Any = item.values()
        else:
            children = item
        for child in children:
            if isinstance(child, _CONTAINERS):
                pending.append(child)


def encode_key(key: object) -> str | None:
    if key is None:
        return key
    if isinstance(key, str):
        _utf8_length(key, "a record key")
        return key
    raise InvalidValue(f"a record key must be a str or None, not {type(key).__name__}")


def encode_headers(headers: object) -> str | None:
    """Validate str -> str headers and return them as JSON text (None when empty)."""
    if headers is None:
        return None
    if not isinstance(headers, dict):
        raise InvalidValue(f"headers must be a dict of str to str, not {type(headers).__name__}")
    if not headers:
        return None
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidValue(
                f"headers must map str to str; got {type(k).__name__} -> {type(v).__name__} for {k!r}"
            )
    text = json.dumps(headers, separators=(",", ":"), ensure_ascii=False)
    _utf8_length(text, "headers")
    return text


def inline_max(page_size: int) -> int:
    """The largest payload, in bytes, stored in its ``chunks`` row at this page size.

    Larger payloads go to the ``payloads`` table (migration 15). A ``chunks`` row is a
    cell of a WITHOUT ROWID (index) b-tree, which keeps at most ``(U - 12) * 64 // 255 -
    23`` bytes of a cell on its page (U, the usable page size: 1,002 of 4,096) and spills
    the rest to overflow pages that every seek or scan passing the cell then reads.
    ``INLINE_ROOM`` bytes of that are left for the other columns (integers, content type,
    a typical key and headers). Measured (benchmarks/findings.md, issue 23): rows that fit
    cost less inline; rows that overflow cost 1.1-3x more than out of line.
    """
    return (page_size - 12) * 64 // 255 - 23 - INLINE_ROOM


INLINE_ROOM = 96
INLINE_MAX = inline_max(4096)
"""``inline_max`` at SQLite's default page size (906 bytes)."""


def payload_bytes(content_type: str, data: bytes | str) -> bytes:
    """The bytes a record contributes to its stream's byte log."""
    return data if isinstance(data, bytes) else data.encode("utf-8")


# The column list every record read selects, in Record field order after `stream` (the
# timestamp divided as the SQL views divide it, so both render one millisecond); the
# content type comes back as a small integer (an index into CONTENT_TYPES): SQLite hands
# over a cached small int instead of a new str per record.
CONTENT_TYPES = ("bytes", "text", "json")
# `data` is NULL only for a record stored out of its row whose `payloads` row is gone
# (foreign SQL): the text that is not UTF-8 put in its place makes apsw's decoding fail,
# so the fast path of read_records falls to the undecoded one, which names it (coalesce
# evaluates it only then: a healthy record costs one test).
MISSING_PAYLOAD = "its payload row is missing from the payloads table"
RECORD_COLUMNS = (
    "offset, timestamp / 1e6, key, headers, coalesce(data, CAST(X'FF' AS TEXT)), position, txn, "
    "CASE content_type WHEN 'bytes' THEN 0 WHEN 'text' THEN 1 ELSE 2 END"
)
# A record's size for a claim's byte budget (``Subscription.fetch(max_bytes=...)``): its
# stored payload plus its key and headers, in bytes, over `chunks c`, without reading a
# payload stored out of its row: a value in its row is small (at most inline_max bytes)
# and on the page already; else the next record's position less this one's (positions
# add up payload lengths; one seek in `chunks`, near this row), and for the last record
# length() of the `payloads` BLOB, which SQLite reads from the record header, not the
# value's pages. 0 for a record that does not exist (a LEFT JOIN's NULLs).
PAYLOAD_LENGTH = (
    "coalesce(length(CAST(c.data AS BLOB)), "
    "(SELECT length(p.data) FROM payloads p WHERE p.stream_id = c.stream_id AND p.offset = c.offset), 0)"
)
META_SIZE = "coalesce(length(CAST(c.key AS BLOB)), 0) + coalesce(length(CAST(c.headers AS BLOB)), 0)"
RECORD_SIZE = (
    "coalesce(length(CAST(c.data AS BLOB)), "
    "(SELECT n.position FROM chunks n WHERE n.stream_id = c.stream_id AND n.offset = c.offset + 1) - c.position, "
    f"{PAYLOAD_LENGTH}) + {META_SIZE}"
)
# The total size of the records [?2, ?3) of stream ?1 (for a budget): the payloads from
# their positions (two seeks, whatever their number: the position after the range less
# the first's, the end of the last record at the tail) plus every key and header. NULL
# when the first or last record of the range is missing (then sum RECORD_SIZE instead).
RANGE_SIZE_SQL = f"""
SELECT coalesce((SELECT position FROM chunks WHERE stream_id = ?1 AND offset = ?3),
                (SELECT c.position + {PAYLOAD_LENGTH} FROM chunks c WHERE c.stream_id = ?1 AND c.offset = ?3 - 1))
       - (SELECT position FROM chunks WHERE stream_id = ?1 AND offset = ?2)
       + (SELECT coalesce(sum({META_SIZE}), 0) FROM chunks c WHERE c.stream_id = ?1 AND c.offset >= ?2 AND c.offset < ?3)
"""
# The same columns with the text ones as BLOBs (and the content type as stored): SQLite
# hands them over undecoded, so a damaged record (invalid UTF-8, which apsw refuses to
# decode) can be found and named.
RAW_RECORD_COLUMNS = (
    "offset, timestamp / 1e6, CAST(key AS BLOB), CAST(headers AS BLOB), CAST(data AS BLOB), position, txn, "
    "content_type"
)


def make_records(stream: str, rows: list[tuple[Any, ...]]) -> list[Record]:
    """Build Records from rows of RECORD_COLUMNS, decoding headers and JSON values.

    This runs once per record read, so it avoids the NamedTuple's Python-level
    ``__new__`` and builds each tuple directly. A large page is built with the cyclic
    GC paused (see :func:`_gc_paused`).
    """
    loads = json.loads
    new = tuple.__new__
    names = CONTENT_TYPES
    with _gc_paused(len(rows)):
        return [
            new(Record, (stream, o, ts, k, loads(h) if h else {}, loads(d) if c == 2 else d, p, t, names[c]))
            for o, ts, k, h, d, p, t, c in rows
        ]


class _gc_paused:
    """Pause the cyclic GC while a page of ``count`` >= GC_PAUSE_ROWS records is built.

    Each record is a GC-tracked tuple built next to another (the fetched row): without
    the pause a page of 1,000 triggers several young-generation passes that walk the
    page being built, and now and then a full collection (measured: a quarter of a
    read's CPU). Nothing built here can form a cycle, so no garbage is left for later.
    Only a GC that is enabled is paused, and it is re-enabled however the build ends;
    a program that keeps the GC disabled is left alone. (Another thread calling
    ``gc.disable()`` during the pause of about a millisecond would see it undone.)
    """

    __slots__ = ("paused",)

    def __init__(self, count: int) -> None:
        self.paused = count >= GC_PAUSE_ROWS and gc.isenabled()

    def __enter__(self) -> None:
        if self.paused:
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.paused:
            gc.enable()


GC_PAUSE_ROWS = 100


class Damaged(NamedTuple):
    """A stored record that cannot be decoded, with its raw bytes (see :func:`read_records`)."""

    offset: int
    position: int
    reason: str
    key: str | None  # None when the key itself is damaged
    headers: dict[str, str]  # {} when the headers are damaged
    data: bytes  # the payload exactly as stored

    def error(self, stream: str, skip: str) -> DamagedRecord:
        """The DamagedRecord error for it; ``skip`` says how the caller can move past it."""
        if self.reason == MISSING_PAYLOAD:  # no stored bytes to point at
            return DamagedRecord(
                f"record {self.offset} of stream {stream!r} is damaged ({self.reason}); nothing was read",
                stream=stream,
                offset=self.offset,
                hint=f"its value is lost (SQL outside sqlstream deleted its payloads row, or never wrote it); "
                f"{skip}; `sqlstream check` lists every damaged record",
            )
        return DamagedRecord(
            f"record {self.offset} of stream {stream!r} is damaged ({self.reason}); nothing was read",
            stream=stream,
            offset=self.offset,
            hint=f"its {len(self.data)} stored bytes are readable with "
            f"db.stream({stream!r}).read_bytes({self.position}, {len(self.data)}); {skip}; "
            "`sqlstream check` lists every damaged record",
            cli_hint=f"its {len(self.data)} stored bytes are readable with `sqlstream sql \"SELECT CAST(data AS BLOB) FROM records "
            f"WHERE offset = {self.offset} AND stream_id = (SELECT id FROM streams WHERE name = ?)\" "
            f"{stream!r} --json`; `sqlstream check` lists every damaged record",
        )


def _decode_raw(stream: str, row: tuple[Any, ...]) -> Record | Damaged:
    """Decode one row of RAW_RECORD_COLUMNS: the one place a stored record is interpreted."""
    offset, ts, key, headers, data, position, txn, ctype = row
    if data is None:
        return Damaged(offset, position, MISSING_PAYLOAD, None, {}, b"")
    raw = bytes(data) if not isinstance(data, bytes) else data
    reasons = []
    try:
        k = None if key is None else bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        k, reasons = None, ["its key is not valid UTF-8"]
    try:
        h = json.loads(bytes(headers).decode("utf-8")) if headers else {}
        if not isinstance(h, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        h = {}
        reasons.append("its headers are not a valid JSON object")
    value: Any = raw
    if ctype != "bytes":
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reasons.append(f"{ctype} payload is not valid UTF-8 at byte {exc.start}")
        else:
            if ctype == "json":
                try:
                    value = json.loads(value)
                except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to decode
                    reasons.append(f"json payload does not parse: {exc}")
    if reasons:
        return Damaged(offset, position, "; ".join(reasons), k, h, raw)
    return tuple.__new__(Record, (stream, offset, ts, k, h, value, position, txn, ctype))


def read_records(
    conn: Any, stream: str, sql: tuple[str, str], params: Any
) -> tuple[list[Record], list[Damaged]]:
    """Run a record query and decode its rows: (records in order, damaged records).

    ``sql`` is the statement over RECORD_COLUMNS and the same one over
    RAW_RECORD_COLUMNS. The fast path lets apsw decode the text; only if that fails is
    the query run again undecoded and each row decoded here, one at a time, so healthy
    records come back and damaged ones are reported (never a raw UnicodeDecodeError or
    JSONDecodeError). The caller decides what a damaged record means for it.
    """
    try:
        with _gc_paused(GC_PAUSE_ROWS):  # the fetched rows are GC-tracked tuples too
            return make_records(stream, conn.execute(sql[0], params).fetchall()), []
    except (ValueError, RecursionError):  # UnicodeDecodeError (apsw), JSONDecodeError or deep nesting (make_records)
        pass
    records: list[Record] = []
    damaged: list[Damaged] = []
    for row in conn.execute(sql[1], params).fetchall():
        got = _decode_raw(stream, row)
        if isinstance(got, Damaged):
            damaged.append(got)
        else:
            records.append(got)
    return records, damaged


def record_sql(tail: str) -> tuple[str, str]:
    """``SELECT <record columns> FROM records <tail>``, decoded and raw (for read_records).

    ``records`` is the view (migration 15) that shows each value wherever it is stored;
    SQLite flattens it into the query on ``chunks``."""
    return f"SELECT {RECORD_COLUMNS} FROM records {tail}", f"SELECT {RAW_RECORD_COLUMNS} FROM records {tail}"


def damage_of(ctype: str, data: bytes) -> str | None:
    """Why a stored payload (as bytes) cannot be decoded as ``ctype``, or None if it can."""
    if ctype == "bytes":
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{ctype} payload is not valid UTF-8 at byte {exc.start}"
    if ctype == "json":
        try:
            json.loads(text)
        except (ValueError, RecursionError) as exc:
            return f"json payload does not parse: {exc}"
    return None


def salvage(
    raw_key: bytes | None, raw_headers: bytes | None, ctype: str, raw: bytes
) -> tuple[str | None, dict[str, str], bytes | str]:
    """(key, headers, data) of a stored record read undecoded, to copy it elsewhere.

    Whatever decodes is kept; a damaged key or headers become None/{} and a damaged
    payload stays bytes (so the copy is a ``bytes`` record holding the stored bytes).
    """
    try:
        key = None if raw_key is None else bytes(raw_key).decode("utf-8")
    except UnicodeDecodeError:
        key = None
    try:
        loaded = json.loads(bytes(raw_headers).decode("utf-8")) if raw_headers else {}
    except ValueError:
        loaded = {}
    headers = {k: v for k, v in loaded.items() if isinstance(v, str)} if isinstance(loaded, dict) else {}
    data: bytes | str = raw
    if ctype != "bytes" and damage_of(ctype, raw) is None:
        data = raw.decode("utf-8")
    return key, headers, data
