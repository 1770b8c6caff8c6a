"""Response bodies of reads: records as stored -> pages, and live reads handed appends directly.

A *page* is what one catch-up response (or one SSE data event) carries: the body bytes,
where it ends (offset and byte position: the next ``Stream-Next-Offset``), and the
stream's tail and seal state in the snapshot the records were read in.

Three ways to a page, byte for byte the same body:

- :func:`page_of_joined` takes a :class:`~sqlstream.raw.JoinedRecords`
  (``Stream.read_joined``): the range's payloads joined by SQLite in one row, when every
  record can be sent as stored (the common case: a JSON-mode stream of JSON records, a
  byte stream). No ``bytes`` object per record is built.
- :func:`page_of` renders a :class:`~sqlstream.raw.RawRecords` (``Stream.read_raw``):
  without decoding a single record in the common case. A JSON-mode body is the stored
  JSON texts joined with commas inside brackets (sqlstream stores JSON values as compact
  JSON text, JSON null as the bytes ``null``); text records (JSON strings appended as
  messages, stored as text) become JSON strings; other bytes are sent when they are
  JSON text, else as a JSON string. Other streams' bodies are the stored bytes joined.
  Used when ``read_joined`` declines (other kinds of records, damage to look at).
- :class:`Tails` hands the records of an append made over HTTP in this process straight
  to the live reads waiting at exactly its first offset, on the event loop, rendered
  from the request (what was stored), without a read of the file or a hop to the
  database thread. Every other commit (another process, the Python API, an append too
  large for one page) wakes live reads through sqlstream's wake-ups as before, and they
  read the file.

Size bound: a page holds records while their rendered bytes stay within the budget
(the first always: a larger record comes alone), the rule of :func:`sqlstream.raw.cut`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..raw import JoinedRecords, RawRecords, cut
from . import protocol as p


class Page:
    """The records of one response body (``inner`` None: no records) and where they end."""

    __slots__ = ("inner", "json", "end", "tail", "sealed")

    def __init__(self, inner: bytes | None, json_mode: bool, end: tuple[int, int], tail: int, sealed: bool) -> None:
        self.inner = inner
        """The records rendered and joined (in JSON mode with commas, without the brackets)."""
        self.json = json_mode
        self.end = end
        """(offset, byte position) after the page's last record."""
        self.tail = tail
        """The stream's next offset when the page was read."""
        self.sealed = sealed
        """The stream was sealed when the page was read."""

    @property
    def payload(self) -> bytes | None:
        """The body (a JSON array in JSON mode), None when the page holds no records."""
        if self.inner is None or not self.json:
            return self.inner
        return b"".join((b"[", self.inner, b"]"))  # one copy of the page

    @property
    def up_to_date(self) -> bool:
        return self.end[0] >= self.tail

    @property
    def closed(self) -> bool:
        """The page reaches the end of a sealed stream."""
        return self.sealed and self.up_to_date


def json_piece(content_type: str, stored: bytes) -> bytes:
    """A stored record as one JSON message (JSON mode): JSON as stored, text as a JSON
    string, bytes verbatim when they are JSON text (else as a JSON string: NaN and
    Infinity, which Python's parser takes, are not JSON; nor is nesting too deep for it
    to check)."""
    if content_type == "json":
        return stored
    if content_type == "text":
        return p.json_text(stored.decode("utf-8")).encode("utf-8")
    if stored == b"null":  # how JSON null is stored (the common case of bytes in JSON mode)
        return stored
    try:
        json.loads(stored.decode("utf-8"), parse_constant=p.no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return p.json_text(stored.decode("utf-8", "replace")).encode("utf-8")
    return stored


def page_of(raw: RawRecords, json_mode: bool, max_bytes: int) -> Page:
    """The page of ``raw`` (read with ``max_bytes`` as its budget): in the common case
    (every record stored as JSON in JSON mode, any records otherwise) the rendered bytes
    are the stored ones, so the read's own cut stands and nothing is decoded."""
    payloads = raw.payloads
    state = (raw.stream_next_offset, raw.sealed)
    if not payloads:
        return Page(None, json_mode, (raw.next_offset, raw.end_position), *state)
    kinds = raw.content_types
    if not json_mode or ("text" not in kinds and "bytes" not in kinds):
        return Page(inner(payloads, json_mode), json_mode, (raw.next_offset, raw.end_position), *state)
    pieces = [json_piece(k, d) for k, d in zip(kinds, payloads)]
    keep = cut(list(map(len, pieces)), max_bytes)  # a rendered piece may be longer than stored
    end = (raw.offset + keep, raw.position + sum(map(len, payloads[:keep])))
    return Page(inner(pieces[:keep], json_mode), json_mode, end, *state)


def json_pieces(messages: Sequence[Any]) -> list[bytes]:
    """JSON-mode messages (as the request carried them) as a read of their stored records
    renders them: each value as compact JSON text, as sqlstream stores it."""
    return [p.json_text(m).encode("utf-8") for m in messages]


def inner(pieces: Sequence[bytes], json_mode: bool) -> bytes:
    """Rendered records joined as a body holds them: with commas in JSON mode (the
    brackets are :attr:`Page.payload`'s), else their bytes end to end."""
    return b",".join(pieces) if json_mode else b"".join(pieces)


def page_of_joined(joined: JoinedRecords, json_mode: bool) -> Page:
    """The page of ``joined`` (``Stream.read_joined``, with ``json_array=json_mode``)."""
    return Page(joined.data if joined.records else None, json_mode, (joined.next_offset, joined.end_position),
                joined.stream_next_offset, joined.sealed)


class _Waiter:
    __slots__ = ("at", "fut")

    def __init__(self, at: int, fut: asyncio.Future[Page]) -> None:
        self.at = at
        self.fut = fut


class Tails:
    """Live reads waiting at a stream's tail, handed an HTTP append's records directly.

    Loop thread only. A live read :meth:`watch`-es the offset it waits at *before* it
    checks the file (so an append published after the check is not missed, and one
    committed before it is found by the check), and :meth:`forget`-s it when done.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[_Waiter]] = {}

    def watch(self, stream: str, at: int) -> asyncio.Future[Page]:
        """A future completed with the page of an append published for ``stream`` whose
        first record is at offset ``at`` (or which seals the stream there)."""
        fut: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(stream, []).append(_Waiter(at, fut))
        return fut

    def forget(self, stream: str, fut: asyncio.Future[Page]) -> None:
        waiters = self._waiting.get(stream)
        if waiters is None:
            return
        waiters[:] = [w for w in waiters if w.fut is not fut]
        if not waiters:
            del self._waiting[stream]

    def waiting(self, stream: str) -> int:
        """Live reads watching ``stream`` now."""
        return len(self._waiting.get(stream, ()))

    def publish(self, stream: str, first: int, end: tuple[int, int], sealed: bool,
                render: Callable[[], list[bytes]], json_mode: bool, max_bytes: int) -> None:
        """An append over HTTP has committed records from offset ``first`` (none, with
        ``sealed``: a close), ending at ``end`` = the stream's (next offset, byte length)
        after it. Readers waiting at ``first`` get its page; ``render()`` (called once, only
        then) gives each record as a read renders it. Records that a read would not put in
        one page (more than ``max_bytes``) are not handed over: those readers stay with
        the wake-ups and read the file."""
        waiters = self._waiting.get(stream)
        if not waiters:
            return
        page: Page | None = None
        for waiter in waiters:
            if waiter.at != first or waiter.fut.done():
                continue
            if page is None:
                pieces = render() if end[0] > first else []
                if cut(list(map(len, pieces)), max_bytes) < len(pieces):
                    return
                page = Page(inner(pieces, json_mode) if pieces else None, json_mode, end, end[0], sealed)
            waiter.fut.set_result(page)
