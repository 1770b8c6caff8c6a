"""Reading records as stored: payload bytes without decoding, for servers that forward them.

A front that sends records over the network as they are stored (the HTTP front's catch-up
reads: a JSON-mode response is the stored JSON texts joined with commas) needs neither
:class:`~sqlstream.records.Record` objects nor decoded values: building them is most of
a large read's time. :meth:`sqlstream.Stream.read_raw` returns a :class:`RawRecords`:
the payloads as bytes, their content types, where they end, and the stream's tail, all
from one snapshot. The payloads are checked as :meth:`~sqlstream.Stream.read` checks
them (text and JSON are valid UTF-8, JSON parses), with SQLite's ``json_valid`` and one
UTF-8 decode of the page instead of a decode per record.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import accumulate
from typing import Any, NamedTuple

from .records import CONTENT_TYPES, MISSING_PAYLOAD, Damaged, damage_of

# Content type as an index into CONTENT_TYPES; 3: a JSON payload SQLite's json_valid
# refuses (checked again in Python, which decides: see _first_damaged).
RAW_SQL = (
    "SELECT CASE content_type WHEN 'bytes' THEN 0 WHEN 'text' THEN 1 "
    "ELSE (CASE WHEN json_valid(data) THEN 2 ELSE 3 END) END, CAST(data AS BLOB) "
    # The records view: a large payload is stored out of its row (migration 15).
    "FROM records WHERE stream_id = ? AND offset >= ? AND offset < ? ORDER BY offset"
)
_NAMES = (*CONTENT_TYPES, "json")  # by code
POSITION_SQL = "SELECT position FROM chunks WHERE stream_id = ? AND offset = ?"


class RawRecords(NamedTuple):
    """Consecutive records of one stream as stored (see :meth:`sqlstream.Stream.read_raw`).

    ``payloads[i]`` is the stored payload of record ``offset + i``: bytes as appended,
    text as UTF-8, JSON as the compact UTF-8 text the append stored (``json.dumps`` with
    ``separators=(",", ":")`` and ``ensure_ascii=False``), so it is valid JSON text
    that decodes to the appended value. ``content_types[i]`` is its kind: ``"bytes"``,
    ``"text"`` or ``"json"``. The ``stream_*`` fields and ``sealed`` describe the stream
    in the same snapshot the records were read in.
    """

    offset: int
    """Offset of the first record (the offset asked for)."""
    content_types: list[str]
    payloads: list[bytes]
    position: int
    """Byte position of the first record (of ``next_offset`` when there is none)."""
    end_position: int
    """Byte position after the last record: the position of ``next_offset``."""
    stream_next_offset: int
    """The stream's next offset (its tail) in the snapshot."""
    stream_byte_length: int
    """The stream's byte length in the snapshot."""
    sealed: bool
    """The stream was sealed in the snapshot."""
    stream_id: int
    """The stream's id in the file (``streams.id``): a stream deleted and created again
    under the same name has another, so a reader of several ranges can tell."""

    @property
    def next_offset(self) -> int:
        """The offset after the last record returned (where the next read starts)."""
        return self.offset + len(self.payloads)

    @property
    def up_to_date(self) -> bool:
        """The records reach the stream's tail as of the snapshot."""
        return self.next_offset >= self.stream_next_offset


def cut(sizes: list[int], max_bytes: int) -> int:
    """How many of the items with these sizes fit in ``max_bytes``: the first always;
    another only while the total so far is below ``max_bytes`` and stays within it with
    the item added (an item that would take the total past the bound ends the run)."""
    if not sizes:
        return 0
    totals = list(accumulate(sizes))
    over = bisect_right(totals, max_bytes, 1)  # first item (past the first) ending past the bound
    full = bisect_left(totals, max_bytes) + 1  # first item after the total reached the bound
    return min(over, full, len(sizes))


def first_damaged(codes: tuple[int, ...] | list[int], payloads: list[bytes]) -> tuple[int, str] | None:
    """(index, reason) of the first payload :meth:`Stream.read` would refuse, or None.

    The common case costs one scan of the text and JSON payloads joined with a comma (an
    ASCII byte between them keeps a sequence cut at a record's end from being completed
    by the next): ``isascii`` (no copy; ASCII is valid UTF-8), else one UTF-8 decode; and
    SQLite's ``json_valid`` (code 3). Only when either complains is each record checked
    on its own, with the rule ``read`` applies.
    """
    texty = payloads if 0 not in codes else [p for c, p in zip(codes, payloads) if c]
    joined = b",".join(texty)
    try:
        if not joined.isascii():
            joined.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if 3 not in codes:
            return None
    for i, (code, payload) in enumerate(zip(codes, payloads)):
        reason = damage_of(_NAMES[code], payload)
        if reason is not None:
            return i, reason
    return None


def build(stream: str, offset: int, rows: list[tuple[Any, ...]], position: int, max_bytes: int | None,
          state: tuple[int, int, bool, int]) -> RawRecords:
    """A RawRecords from rows of RAW_SQL starting at ``offset`` (whose byte position is
    ``position``), cut to ``max_bytes`` and before the first damaged record (raised as
    ``DamagedRecord`` when it is the first one). ``state``: (next offset, byte length,
    sealed, id) of the stream in the rows' snapshot."""
    codes: tuple[int, ...]
    payloads: list[bytes]
    if rows:
        codes, data = zip(*rows)
        payloads = list(data)
    else:
        codes, payloads = (), []
    if None in payloads:  # a record whose payloads row is gone (foreign SQL): the read ends before it
        missing = payloads.index(None)  # type: ignore[arg-type]
        if missing == 0:
            raise Damaged(offset, position, MISSING_PAYLOAD, None, {}, b"").error(
                stream, f"read on from offset {offset + 1} to skip it")
        codes, payloads = codes[:missing], payloads[:missing]
    if max_bytes is not None:
        keep = cut(list(map(len, payloads)), max_bytes)
        if keep < len(payloads):
            codes, payloads = codes[:keep], payloads[:keep]
    damaged = first_damaged(codes, payloads)
    if damaged is not None:
        index, reason = damaged
        if index == 0:
            bad = Damaged(offset, position, reason, None, {}, payloads[0])
            raise bad.error(stream, f"read on from offset {offset + 1} to skip it")
        codes, payloads = codes[:index], payloads[:index]
    end = position + sum(map(len, payloads))
    return RawRecords(offset, list(map(_NAMES.__getitem__, codes)), payloads, position, end, *state)


# One row for a whole range: the payloads joined in SQLite (no bytes object per record),
# and what decides whether they may be sent as they are: how many records, how many are
# bytes, how many are JSON, how many JSON payloads json_valid refuses, and how many have a
# value (group_concat skips a NULL: a record whose payload row is gone would be left out
# of the joined bytes while counted). A FROM-clause subquery in offset order (the primary
# key's order: the planner scans it, no sort).
JOINED_SQL = (
    "SELECT CAST(group_concat(data, ?) AS BLOB), count(*), total(content_type = 'bytes'), "
    "total(content_type = 'json'), total(content_type = 'json' AND NOT json_valid(data)), count(data) "
    "FROM (SELECT content_type, data FROM records WHERE stream_id = ? AND offset >= ? AND offset < ? "
    "ORDER BY offset)"
)


class JoinedRecords(NamedTuple):
    """Consecutive records of one stream as stored, joined into one ``bytes``
    (see :meth:`sqlstream.Stream.read_joined`)."""

    offset: int
    """Offset of the first record (the offset asked for)."""
    records: int
    """How many records ``data`` holds."""
    data: bytes
    """Their stored payloads joined (with ``b","`` between them for ``json_array``)."""
    position: int
    """Byte position of the first record (of ``next_offset`` when there is none)."""
    end_position: int
    """Byte position after the last record: the position of ``next_offset``."""
    stream_next_offset: int
    """The stream's next offset (its tail) in the snapshot."""
    stream_byte_length: int
    """The stream's byte length in the snapshot."""
    sealed: bool
    """The stream was sealed in the snapshot."""
    stream_id: int
    """The stream's id in the file (``streams.id``): a stream deleted and created again
    under the same name has another, so a reader of several ranges can tell."""

    @property
    def next_offset(self) -> int:
        """The offset after the last record returned (where the next read starts)."""
        return self.offset + self.records

    @property
    def up_to_date(self) -> bool:
        """The records reach the stream's tail as of the snapshot."""
        return self.next_offset >= self.stream_next_offset


def passes(row: tuple[Any, ...], json_array: bool) -> bytes | None:
    """The joined payloads of a JOINED_SQL row when they may be used as they are, else None:
    for ``json_array`` every record is JSON that json_valid takes and the joined text is
    valid UTF-8 (a comma between payloads keeps a cut sequence from being completed by the
    next, as in :func:`first_damaged`); otherwise every record is bytes (never checked) or
    none is and the joined text is ASCII (so each payload is valid UTF-8; without a
    separator a decode of the whole could not tell). JSON that json_valid refuses is
    decided per record by :meth:`Stream.read_raw`, which is also what None leads to, as
    is a record without a value (its payload row gone: damaged, which read_raw names)."""
    data, count, nbytes, njson, bad, present = row
    joined = b"" if data is None else bytes(data)
    if bad or present != count:
        return None
    if json_array:
        if njson != count:
            return None
        if not joined.isascii():
            try:
                joined.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return joined
    if nbytes == count or (nbytes == 0 and joined.isascii()):
        return joined
    return None
