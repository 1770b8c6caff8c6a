"""Catch-up responses: their end fixed from one snapshot, their body sent in pieces.

A catch-up ``GET`` (no ``live``) answers with the records from the requested offset up to
about ``max_response_bytes`` of them, or to the stream's tail. Its headers
(``Stream-Next-Offset``, ``Stream-Up-To-Date``, ``Stream-Closed``, ``ETag``) come before
its body, so the response's end is fixed first: :func:`plan` reads the first piece (at
most ``max_chunk_bytes``) and the stream's tail and seal state in one snapshot, and
ends the response at the last record that starts within ``max_response_bytes`` of the
start, never past that snapshot's tail. The rest of the body is read piece by piece
(:func:`next_piece`, one database-thread hop each, ``max_chunk_bytes`` at most), each read
while the previous one goes out to the client: one response holds at most about two
pieces in memory (the one being read ahead and the one being sent; the ASGI server's
``send`` waits while its write buffer is full).

Why later pieces need no snapshot of their own: records below the tail seen by the plan
never change, but retention (or a trim, or the stream's deletion) may remove them while
the response is under way. Each piece is therefore checked: it must come from the same
stream (``streams.id``: not a stream deleted and created again under the name) and start
where the previous one ended. If records of the promised range are gone, or a piece
starts at a damaged record, the response is *abandoned*: the app returns without its
last body message, so the server closes the connection and the client sees a failed
(incomplete) response, never a body with records missing or one shorter than its
headers said. The client's retry at the same offset then gets ``410`` (retention), the
records before the damaged one (the damaged offset is remembered: :class:`Damage`), or
``404``. A client that goes away mid-response is noticed after the piece being sent: nothing more
is sent, and nothing read beyond the one piece read ahead.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from ..database import Database
from ..errors import DamagedRecord, OffsetOutOfRange, SqlstreamError
from ..streams import Stream
from .pages import Page, page_of, page_of_joined
from .protocol import ProtocolError

PAGE_RECORDS = 50_000
"""Records one piece (or SSE data event) holds at most, besides its byte bound: only
records under ~20 bytes reach it; it keeps one read of the database thread short (the
thread serves every request)."""


class Piece(NamedTuple):
    """A page read in one snapshot, with what a multi-piece response checks."""

    page: Page
    stream_id: int
    position: int
    """Byte position of the page's first record."""
    tail: tuple[int, int]
    """The stream's (next offset, byte length) in the snapshot."""


class Plan(NamedTuple):
    """What a catch-up response holds: its first piece and where it ends."""

    first: Piece
    end: tuple[int, int]
    """(offset, byte position) after the response's last record: its Stream-Next-Offset."""

    @property
    def up_to_date(self) -> bool:
        return self.end[0] >= self.first.tail[0]

    @property
    def closed(self) -> bool:
        return self.first.page.sealed and self.up_to_date

    @property
    def pieces(self) -> bool:
        """The body goes on past the first piece."""
        return self.end[0] > self.first.page.end[0]


def read_piece(db: Database, name: str, json_mode: bool, start: int, max_bytes: int,
               limit: int = PAGE_RECORDS) -> Piece:
    """The records from ``start`` (at most ``limit``, about ``max_bytes``) as a page, in one
    snapshot (database thread). ``ProtocolError(410)`` below retention; ``DamagedRecord``
    when ``start`` holds a damaged record; ``StreamNotFound``."""
    stream = Stream(db, name)
    try:
        joined = stream.read_joined(start, limit, max_bytes, json_array=json_mode)
        if joined is not None:
            return Piece(page_of_joined(joined, json_mode), joined.stream_id, joined.position,
                         (joined.stream_next_offset, joined.stream_byte_length))
        raw = stream.read_raw(start, limit, max_bytes)
    except OffsetOutOfRange:
        raise ProtocolError(410, "the requested offset was removed by retention") from None
    return Piece(page_of(raw, json_mode, max_bytes), raw.stream_id, raw.position,
                 (raw.stream_next_offset, raw.stream_byte_length))


class Damage:
    """Damaged records found by a multi-piece response after its headers were sent
    (bounded; the oldest entries go first), so that the client's retry ends before them."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[int, int], int] = OrderedDict()

    def add(self, stream_id: int, offset: int, position: int) -> None:
        self._seen[(stream_id, offset)] = position
        self._seen.move_to_end((stream_id, offset))
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def before(self, stream_id: int, start: int, end: tuple[int, int]) -> tuple[int, int]:
        """``end``, or (offset, position) of the first known damaged record in (start, end)."""
        for (sid, offset), position in self._seen.items():
            if sid == stream_id and start < offset < end[0]:
                end = (offset, position)
        return end


def plan(db: Database, name: str, json_mode: bool, start: int, max_chunk_bytes: int, max_response_bytes: int,
         damage: Damage) -> Plan:
    """The response from ``start``: its first piece and its end (see the module docstring;
    database thread)."""
    first = read_piece(db, name, json_mode, start, max_chunk_bytes)
    end = first.page.end
    if first.page.inner is None or first.page.up_to_date or max_response_bytes <= max_chunk_bytes:
        return Plan(first, end)
    tail = first.tail
    try:
        stop = Stream(db, name).record_at_position(first.position + max_response_bytes)
    except SqlstreamError:
        return Plan(first, end)  # the stream went away: the first piece alone
    if stop[0] >= tail[0]:
        stop = tail
    if stop[0] > end[0]:
        end = damage.before(first.stream_id, start, stop)
    return Plan(first, end)


def next_piece(db: Database, name: str, json_mode: bool, plan_: Plan, at: tuple[int, int], max_bytes: int,
               damage: Damage) -> Piece | None:
    """The piece of ``plan_`` at ``at`` (where the previous one ended), or None when the
    response must be abandoned (records of its range removed, the stream deleted or
    replaced, a damaged record at ``at``: then remembered in ``damage``)."""
    try:
        piece = read_piece(db, name, json_mode, at[0], max_bytes, plan_.end[0] - at[0])
    except DamagedRecord:
        damage.add(plan_.first.stream_id, at[0], at[1])
        return None
    except (ProtocolError, SqlstreamError):
        return None
    if piece.stream_id != plan_.first.stream_id or piece.page.inner is None or piece.position != at[1]:
        return None
    return piece
