"""The HStreamDB Python client's API on a local sqlstream file.

Code written for ``hstreamdb`` runs unchanged except for the import and the URL::

    from sqlstream.compat import hstreamdb
    async with await hstreamdb.insecure_client(url="sqlstream:///path/app.db") as client:
        await client.create_stream("s", shard_count=2)

Everything goes through :mod:`sqlstream.aio` (the public asyncio API); this module only
maps names. ``hstream://`` URLs, ``host``/``port`` without a URL, and ``secure_client``
raise :class:`sqlstream.errors.InvalidArgument`: this client serves local files.

Mapping (decided here, where HStreamDB's semantics meet a single file)

Streams
    One HStreamDB stream is one sqlstream stream. ``replication_factor`` and
    ``shard_count`` are recorded in the stream's metadata (1 is the only meaningful
    replication); ``backlog`` > 0 becomes retention ``max_age`` seconds.
Shards
    A shard is not a sub-stream: each record carries its shard id as its sqlstream
    ``key`` (``"0"``, ``"1"``, ...), its HStreamDB key in header ``hstream-key``.
    Subscriptions are created with sqlstream's key-ordered delivery (``ordering="key"``),
    so a shard's records are processed strictly in order while consumers work on
    different shards in parallel — HStreamDB's per-shard order, without fixing the
    parallelism. Keys are routed by hash range: the MD5 digest of the key (UTF-8; a
    missing key counts as ``"__default__"``) read as a 128-bit unsigned integer; the
    range ``[0, 2**128 - 1]`` is split into ``shard_count`` contiguous equal ranges
    (the last one takes the remainder), shard ``i`` owning the ``i``-th. One key always
    lands in one shard. ``list_shards`` reports the ranges as decimal strings.
Record ids
    One ``append`` call is one batch, written in one transaction: ``batch_id`` is the
    sqlstream offset of its first record, ``batch_index`` 0..n-1, so the record's offset
    is ``batch_id + batch_index``.
Payloads
    bytes, str and dict (JSON) are accepted as in HStreamDB; reads return bytes for bytes
    and str payloads (HStreamDB's raw records) and dict for JSON. ``compresstype``
    ``"gzip"``/``"zstd"`` (or :class:`CompressionType`) compresses each stored payload
    (header ``hstream-z``) and reads decompress transparently.
Foreign records
    A record of the stream that this client did not write may not map onto HStreamDB's
    (its key is not a shard id, its ``hstream-i``/``hstream-z`` header is bad, its payload
    does not decompress, or inflates past the database's ``max_record_bytes``, which bounds
    every decompression). Consumers and readers never fail on one: it is a named
    :class:`ForeignRecord` (stream, offset, reason), logged and set aside (see
    :class:`Consumer` and :class:`Reader`).
Offsets
    :class:`SpecialOffset`: ``EARLIEST = 1`` (the default of ``create_subscription``'s
    ``offset=1``), ``LATEST = 2``. A ``ShardOffset``'s ``timestampOffset`` is
    milliseconds since the epoch. A reader's ``timeout`` is milliseconds that
    ``read`` waits for a first record.
Producer edge cases
    ``size_trigger`` is checked as hstreamdb-py does: a payload that would take its
    shard's batch past ``size_trigger`` bytes first flushes the batch, so a batch holds
    at most ``size_trigger`` bytes (10 payloads of 10 bytes with ``size_trigger=35``:
    batches of 3, 3, 3, 1). A payload larger than ``size_trigger`` (which hstreamdb-py
    refuses) is a batch of its own, flushed at once after what was buffered before it.
    ``size_trigger=0`` and ``time_trigger=0``: every append is flushed at once.
    A failed batch (after ``retry_count`` retries with doubling delays capped at
    ``retry_max_delay``) goes to ``on_fail`` and the producer keeps accepting appends.
    ``wait_and_close`` with nothing pending returns at once; ``append`` after ``close``
    raises ``DatabaseClosed``; ``append`` to a stream that does not exist raises
    ``StreamNotFound`` at once (routing needs its shard count).
"""

from __future__ import annotations

import asyncio
import enum
import gzip
import hashlib
import inspect
import json
import logging
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from .. import aio
from ..database import Database
from ..errors import (
    DamagedRecord, DatabaseClosed, InvalidArgument, ReaderNotFound, StreamNotFound, SubscriptionNotFound,
)
from ..records import Record as _SqlRecord
from ..validation import MAX_SECONDS, check_count, check_offset, check_seconds, show

__all__ = [
    "AppendCallback", "AppendPayload", "BufferedProducer", "CompressionType", "Consumer",
    "HStreamDBClient", "Reader", "Record", "RecordHeader", "RecordId", "Shard", "ShardOffset",
    "SpecialOffset", "Stream", "StreamKeyId", "Subscription", "TimeStamp", "insecure_client",
    "secure_client", "StreamNotFound", "ForeignRecord",
]

StreamKeyId = int
GroupKeyTy = tuple[str, int]
_KEY_HEADER = "hstream-key"
_INDEX_HEADER = "hstream-i"
_Z_HEADER = "hstream-z"
_DEFAULT_KEY = "__default__"
_HASH_SPACE = 2**128
_log = logging.getLogger(__name__)


class TimeStamp(NamedTuple):
    seconds: int
    nanos: int


class Stream(NamedTuple):
    name: str
    replication_factor: int


class Subscription(NamedTuple):
    subscription_id: str
    stream_name: str
    ack_timeout: int
    max_unacks: int


class RecordId(NamedTuple):
    shard_id: int
    batch_id: int
    batch_index: int


class RecordHeader(NamedTuple):
    publish_time: TimeStamp
    key: str | None
    attributes: dict[str, str]


class Record(NamedTuple):
    id: RecordId
    header: RecordHeader
    payload: bytes | dict[str, Any]


class Shard(NamedTuple):
    shard_id: int
    stream_name: str
    start_hash_key: str
    end_hash_key: str


class AppendPayload(NamedTuple):
    payload: bytes | str | dict[str, Any]
    key: str | None


class SpecialOffset(enum.IntEnum):
    EARLIEST = 1
    LATEST = 2


class CompressionType(enum.Enum):
    NONE = None
    GZIP = "gzip"
    ZSTD = "zstd"


class ShardOffset:
    """Where a reader starts: one of ``specialOffset``, ``recordOffset`` (a RecordId),
    ``timestampOffset`` (ms since the epoch); the first one set counts, none means EARLIEST.
    As in HStreamDB, it may be built empty and its attribute assigned afterwards."""

    def __init__(self, specialOffset: SpecialOffset | int | None = None, recordOffset: RecordId | None = None,
                 timestampOffset: int | None = None) -> None:
        self.specialOffset = specialOffset
        self.recordOffset = recordOffset
        self.timestampOffset = timestampOffset

    def __repr__(self) -> str:
        return (f"ShardOffset(specialOffset={self.specialOffset!r}, recordOffset={self.recordOffset!r}, "
                f"timestampOffset={self.timestampOffset!r})")


# ----------------------------------------------------------------- clients

async def insecure_client(host: str = "127.0.0.1", port: int = 6570, url: str | None = None) -> HStreamDBClient:
    """A client on the sqlstream file named by ``url="sqlstream:///path/app.db"``."""
    if url is None or not isinstance(url, str) or not url.startswith("sqlstream://"):
        raise InvalidArgument(
            f"this HStreamDB client serves local sqlstream files, not {url or f'{host}:{port}'!r}",
            hint='pass url="sqlstream:///path/app.db"',
        )
    path = url[len("sqlstream://"):]
    if not path:
        raise InvalidArgument("the sqlstream URL names no file", hint='url="sqlstream:///path/app.db"')
    return HStreamDBClient(await aio.open(path))


async def secure_client(host: str = "127.0.0.1", port: int = 6570, url: str | None = None, is_creds_file: bool = False,
                        root_certificates: Any = None, private_key: Any = None,
                        certificate_chain: Any = None) -> HStreamDBClient:
    """Refused: a local file has no TLS endpoint."""
    raise InvalidArgument(
        "secure_client connects to an HStreamDB cluster over TLS; this client serves local sqlstream files",
        hint='use insecure_client(url="sqlstream:///path/app.db") (file permissions protect it)',
    )


def shard_for_key(key: str | None, shard_count: int) -> int:
    """The shard a key is routed to (see the module docstring: MD5 hash ranges)."""
    key = _check_key(key)
    h = int.from_bytes(hashlib.md5((key if key is not None else _DEFAULT_KEY).encode("utf-8", "surrogatepass"))
                       .digest(), "big")
    return min(h // (_HASH_SPACE // shard_count), shard_count - 1)


# --- argument checks: every entry point refuses bad input with InvalidArgument (through
# sqlstream.validation where a rule exists), before anything is stored.

def _check_key(key: object) -> str | None:
    if key is not None and not isinstance(key, str):
        raise InvalidArgument(f"a key is a str or None, not {show(key)}")
    return key


def _check_int(value: object, what: str, minimum: int, maximum: int) -> int:
    checked = check_count(value, what, minimum=minimum, maximum=maximum)
    assert checked is not None
    return checked


def _check_number(value: object, what: str) -> float:
    """A non-negative finite number (seconds, milliseconds, bytes)."""
    return check_seconds(value, what, positive=False)


def _payload_bytes(payload: object) -> tuple[bytes, str]:
    """A payload's bytes as HStreamDB counts and compresses them, and its tag."""
    if isinstance(payload, bytes):
        return payload, "raw"
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass"), "raw"
    if isinstance(payload, dict):
        try:
            return json.dumps(payload, allow_nan=False).encode(), "json"
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidArgument(f"a dict payload must be JSON: {str(exc)[:200]}") from None
    raise InvalidArgument(f"a payload is bytes, str or dict, not {type(payload).__name__}")


def _check_payloads(payloads: object) -> list[Any]:
    if isinstance(payloads, (bytes, str, dict)) or not isinstance(payloads, Iterable):
        raise InvalidArgument(f"payloads is a list of payloads (bytes, str or dict), not {show(payloads)}")
    return list(payloads)


def _encode(payload: Any, compresstype: Any, compresslevel: object) -> tuple[Any, str | None]:
    kind = compresstype.value if isinstance(compresstype, CompressionType) else compresstype
    raw, tag = _payload_bytes(payload)
    if kind is None:
        return payload, None
    if kind == "gzip":
        return gzip.compress(raw, _check_int(compresslevel, "compresslevel", 0, 9)), f"gzip-{tag}"
    if kind == "zstd":
        import zstandard

        level = _check_int(compresslevel, "compresslevel", -(2**17), 22)
        return zstandard.ZstdCompressor(level=level).compress(raw), f"zstd-{tag}"
    raise InvalidArgument(f"compresstype must be None, 'gzip' or 'zstd', not {show(compresstype)}")


class ForeignRecord(DamagedRecord):
    """A stored record this client cannot map to an HStreamDB record: written by other
    code with a key that is not a shard id, a bad ``hstream-i`` or ``hstream-z`` header,
    a payload that does not decompress, or one that inflates past ``max_record_bytes``.

    ``stream``, ``offset`` and ``reason`` name it; the stored record is left as it is.
    Consumers and readers set such records aside instead of failing (see :class:`Consumer`).
    """

    def __init__(self, stream: str, offset: int, reason: str) -> None:
        super().__init__(
            f"record {offset} of stream {stream!r} is not an HStreamDB record: {reason}", stream=stream,
            offset=offset, hint="read it with sqlstream's own API (db.stream(name).read(offset))",
        )
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (ForeignRecord, (self.stream, self.offset, self.reason))


class _Unmappable(Exception):
    """Why a record is foreign (turned into ForeignRecord with its stream and offset)."""


_SHARD_ID = re.compile(r"0|[1-9][0-9]{0,8}")  # how _append writes a shard id (str of an int)
_Z_KINDS = ("gzip-raw", "gzip-json", "zstd-raw", "zstd-json")


#: The first piece of a gzip member fed to the inflater; each further piece of the same
#: member is twice as long, up to ``_GZIP_FEED_MAX``.
_GZIP_FEED = 256
_GZIP_FEED_MAX = 1 << 20


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of ``data``, inflating at most ``limit`` bytes (``_Unmappable`` past it).

    Linear in ``len(data)`` however many members it holds: a member is fed in pieces that
    start small and double, so what the inflater copies after a member ends (the rest of
    the piece, as ``unused_data``) is short. Fed whole, the rest of the payload was copied
    once per member: a record of tiny members (20 bytes each, 16 MiB) took about n²/2
    bytes of copying, minutes of a consumer's time for one record.
    """
    out = bytearray()
    view = memoryview(data)
    pos = 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        feed = _GZIP_FEED
        while not inflater.eof:
            if pos >= len(view):
                raise _Unmappable("hstream-z gzip payload is truncated")
            piece = view[pos:pos + feed]
            try:
                out += inflater.decompress(piece, limit + 1 - len(out))  # max_length >= 1 here
            except zlib.error as exc:
                raise _Unmappable(f"hstream-z gzip payload does not inflate ({exc})") from None
            if len(out) > limit or inflater.unconsumed_tail:
                raise _Unmappable(f"hstream-z payload inflates past max_record_bytes ({limit:,} bytes)")
            pos += len(piece) - len(inflater.unused_data)
            feed = min(feed * 2, _GZIP_FEED_MAX)
        if pos >= len(view):
            return bytes(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    """The zstd frames of ``data``, inflating at most ``limit`` bytes (``_Unmappable`` past it).

    Read through a stream reader: a frame's declared content size is not trusted to size
    an allocation.
    """
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            while len(out) <= limit:
                piece = reader.read(limit + 1 - len(out))
                if not piece:
                    return bytes(out)
                out += piece
    except zstandard.ZstdError as exc:
        raise _Unmappable(f"hstream-z zstd payload does not decompress ({exc})") from None
    raise _Unmappable(f"hstream-z payload inflates past max_record_bytes ({limit:,} bytes)")


def _to_record(r: _SqlRecord, max_bytes: int) -> Record:
    """``r`` as HStreamDB returns it; ``ForeignRecord`` for one it cannot map.

    ``max_bytes`` bounds a compressed payload's inflated size (the database's
    ``max_record_bytes``: no record it took can be larger).
    """
    try:
        return _map_record(r, max_bytes)
    except _Unmappable as exc:
        raise ForeignRecord(r.stream, r.offset, str(exc)) from None


def _map_record(r: _SqlRecord, max_bytes: int) -> Record:
    headers = r.headers
    if r.key is not None and not _SHARD_ID.fullmatch(r.key):
        raise _Unmappable(f"its key {r.key[:40]!r} is not a shard id")
    index_text = headers.get(_INDEX_HEADER, "0")
    if not _SHARD_ID.fullmatch(index_text) or int(index_text) > r.offset:
        raise _Unmappable(f"bad {_INDEX_HEADER} header {index_text[:40]!r}")
    index = int(index_text)
    value: Any = r.value
    z = headers.get(_Z_HEADER)
    if z is not None:
        if z not in _Z_KINDS:
            raise _Unmappable(f"bad {_Z_HEADER} header {z[:40]!r}")
        if not isinstance(value, bytes):
            raise _Unmappable(f"an {_Z_HEADER} payload must be stored as bytes, not {type(value).__name__}")
        kind, tag = z.split("-", 1)
        raw = _gunzip(value, max_bytes) if kind == "gzip" else _unzstd(value, max_bytes)
        if tag == "json":
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise _Unmappable(f"hstream-z JSON payload does not parse ({str(exc)[:80]})") from None
            if not isinstance(value, dict):
                raise _Unmappable("hstream-z JSON payload is not an object")
        else:
            value = raw
    elif isinstance(value, str):
        value = value.encode()
    seconds = int(r.timestamp)
    return Record(
        RecordId(int(r.key or 0), r.offset - index, index),
        RecordHeader(TimeStamp(seconds, int(round((r.timestamp - seconds) * 1e9))), headers.get(_KEY_HEADER), {}),
        value,
    )


def _mapped(records: Iterable[_SqlRecord], max_bytes: int) -> tuple[list[Record], list[ForeignRecord]]:
    """The records HStreamDB can see, and the foreign ones (each named) set apart."""
    good: list[Record] = []
    foreign: list[ForeignRecord] = []
    for r in records:
        try:
            good.append(_to_record(r, max_bytes))
        except ForeignRecord as exc:
            _log.warning("%s", exc)
            foreign.append(exc)
    return good, foreign


class HStreamDBClient:
    """HStreamDB's client surface over one sqlstream file (``adb``: its AsyncDatabase)."""

    def __init__(self, adb: aio.AsyncDatabase) -> None:
        self.adb = adb
        self._readers: dict[str, Reader] = {}

    async def __aenter__(self) -> HStreamDBClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.adb.close()

    async def init_cluster_info(self) -> None:
        """Nothing to discover: one file."""

    # ----------------------------------------------------------------- streams

    async def create_stream(self, name: str, replication_factor: int = 1, backlog: int = 0,
                            shard_count: int = 1) -> None:
        """``backlog`` (seconds, 0: kept for ever) becomes retention ``max_age``."""
        _check_int(shard_count, "shard_count", 1, 1024)
        _check_int(replication_factor, "replication_factor", 1, 1024)
        _check_int(backlog, "backlog", 0, int(MAX_SECONDS))
        meta = {"hstreamdb": {"replication_factor": replication_factor, "shard_count": shard_count,
                              "backlog": backlog}}
        await self.adb.create_stream(name, metadata=meta, max_age=float(backlog) if backlog else None)

    async def delete_stream(self, name: str, ignore_non_exist: bool = False, force: bool = False) -> None:
        try:
            await self.adb.delete_stream(name, force=force)
        except StreamNotFound:
            if not ignore_non_exist:
                raise

    async def list_streams(self) -> Iterator[Stream]:
        infos = await self.adb.streams()
        return iter([Stream(i.name, int(_meta(i.metadata).get("replication_factor", 1))) for i in infos])

    async def _shard_count(self, name: str) -> int:
        info = await self.adb.stream_info(name)
        return int(_meta(info.metadata).get("shard_count", 1))

    async def list_shards(self, stream_name: str) -> list[Shard]:
        n = await self._shard_count(stream_name)
        step = _HASH_SPACE // n
        return [Shard(i, stream_name, str(i * step), str(_HASH_SPACE - 1 if i == n - 1 else (i + 1) * step - 1))
                for i in range(n)]

    async def find_shard_id(self, stream_name: str, key: str | None = None) -> int:
        return shard_for_key(key, await self._shard_count(stream_name))

    async def append(self, name: str, payloads: Iterable[Any], key: str | None = None, compresstype: Any = None,
                     compresslevel: int = 9) -> Iterator[RecordId]:
        """One batch, atomic: the RecordIds share ``batch_id``, ``batch_index`` 0..n-1."""
        _check_key(key)
        items = [AppendPayload(p, key) for p in _check_payloads(payloads)]
        return iter(await self._append(name, items, compresstype, compresslevel))

    async def _append(self, name: str, items: list[AppendPayload], compresstype: Any,
                      compresslevel: int) -> list[RecordId]:
        n = await self._shard_count(name)
        encoded = [(*_encode(p.payload, compresstype, compresslevel), _check_key(p.key)) for p in items]
        db = self.adb.sync

        def write() -> list[RecordId]:
            stream = db.stream(name)
            ids = []
            with db.transaction():
                first = None
                for i, (value, z, k) in enumerate(encoded):
                    headers = {_INDEX_HEADER: str(i)}
                    if k is not None:
                        headers[_KEY_HEADER] = k
                    if z is not None:
                        headers[_Z_HEADER] = z
                    shard = shard_for_key(k, n)
                    offset = stream.append(value, key=str(shard), headers=headers)
                    first = offset if first is None else first
                    ids.append(RecordId(shard, first, i))
            return ids

        return await self.adb._call(write)

    def new_producer(self, append_callback: Any = None, size_trigger: int = 0, time_trigger: float = 0,
                     workers: int = 1, retry_count: int = 0, retry_max_delay: float = 60, compresstype: Any = None,
                     compresslevel: int = 9) -> BufferedProducer:
        async def flush(stream: str, payloads: list[AppendPayload], shard: int, ctype: Any,
                        level: int) -> Iterator[RecordId]:
            return iter(await self._append(stream, payloads, ctype, level))

        return BufferedProducer(flush, self.find_shard_id, append_callback, size_trigger, time_trigger, workers,
                                retry_count, retry_max_delay, compresstype, compresslevel)

    # ----------------------------------------------------------------- subscriptions

    async def create_subscription(self, subscription_id: str, stream_name: str, ack_timeout: int = 600,
                                  max_unacks: int = 10000, offset: SpecialOffset | int = SpecialOffset.EARLIEST) -> None:
        if isinstance(offset, bool) or offset not in (SpecialOffset.EARLIEST, SpecialOffset.LATEST):
            raise InvalidArgument(f"offset must be SpecialOffset.EARLIEST or LATEST, not {show(offset)}")
        seconds = _check_number(ack_timeout, "ack_timeout")
        options: dict[str, Any] = {}
        if _KEY_ORDERING:
            options["ordering"] = "key"  # per-shard order: the shard id is the record key
        await self.adb.create_subscription(
            subscription_id, stream_name, start="earliest" if offset == SpecialOffset.EARLIEST else "latest",
            ack_timeout=seconds, max_unacked=max_unacks, **options,
        )

    async def list_subscriptions(self) -> Iterator[Subscription]:
        return iter([Subscription(s.name, s.stream, int(s.ack_timeout), s.max_unacked)
                     for s in await self.adb.subscriptions()])

    async def does_subscription_exist(self, subscription_id: str) -> bool:
        try:
            await self.adb.subscription(subscription_id)
        except SubscriptionNotFound:
            return False
        return True

    async def delete_subscription(self, subscription_id: str, force: bool = False) -> None:
        await self.adb.delete_subscription(subscription_id, force=force)

    def new_consumer(self, name: str, subscription_id: str, processing_func: Callable[..., Awaitable[Any]],
                     on_error: Callable[[ForeignRecord], Any] | None = None) -> Consumer:
        """HStreamDB's consumer; ``on_error`` (a sqlstream addition) receives each record
        it sets aside (see :class:`Consumer`)."""
        return Consumer(name, subscription_id, self.adb, processing_func, on_error)

    # ----------------------------------------------------------------- readers

    @asynccontextmanager
    async def with_reader(self, stream_name: str, reader_id: str, shard_offset: ShardOffset, timeout: int,
                          shard_id: int | None = None, stream_key: str | None = None) -> AsyncIterator[Reader]:
        reader = await self.create_reader(stream_name, reader_id, shard_offset, timeout, shard_id, stream_key)
        try:
            yield reader
        finally:
            await self.delete_reader(reader_id)

    async def create_reader(self, stream_name: str, reader_id: str, shard_offset: ShardOffset, timeout: int,
                            shard_id: int | None = None, stream_key: str | None = None) -> Reader:
        """A reader of one shard (``shard_id``, else the shard ``stream_key`` routes to)."""
        timeout = int(_check_number(timeout, "timeout"))
        if not isinstance(shard_offset, ShardOffset):
            raise InvalidArgument(f"shard_offset must be a ShardOffset, not {type(shard_offset).__name__}")
        n = await self._shard_count(stream_name)
        if shard_id is not None:
            shard = _check_int(shard_id, "shard_id", 0, 1 << 62)
        else:
            shard = shard_for_key(stream_key, n)
        if not 0 <= shard < n:
            raise InvalidArgument(f"stream {stream_name!r} has no shard {shard}", hint="see list_shards()")
        start: int | str
        if shard_offset.specialOffset is not None or (
                shard_offset.recordOffset is None and shard_offset.timestampOffset is None):
            start = "latest" if shard_offset.specialOffset == SpecialOffset.LATEST else "earliest"
        elif shard_offset.recordOffset is not None:
            start = _record_offset(shard_offset.recordOffset)
        else:
            s = await self.adb.stream(stream_name)
            start = await s.read_at(_check_number(shard_offset.timestampOffset or 0, "timestampOffset") / 1000)
        sync = await self.adb.reader(reader_id, stream_name, start=start)
        reader = Reader(sync, shard if n > 1 else None, timeout, self.adb.sync.max_record_bytes)
        self._readers[reader_id] = reader
        return reader

    async def read_reader(self, reader_id: str, max_records: int) -> Iterator[Record]:
        reader = self._readers.get(reader_id)
        if reader is None:
            reader = Reader(await self.adb.reader(reader_id), None, 0, self.adb.sync.max_record_bytes)
        return iter(await reader.read(max_records))

    async def delete_reader(self, reader_id: str) -> None:
        self._readers.pop(reader_id, None)
        try:
            await self.adb.delete_reader(reader_id)
        except ReaderNotFound:
            pass


def _record_offset(rid: object) -> int:
    """The sqlstream offset a RecordId names (``batch_id + batch_index``)."""
    batch_id = getattr(rid, "batch_id", None)
    batch_index = getattr(rid, "batch_index", None)
    if not isinstance(rid, tuple) or batch_id is None or batch_index is None:
        raise InvalidArgument(f"a record id is a RecordId, not {show(rid)}")
    return check_offset(check_offset(batch_id, "batch_id") + check_offset(batch_index, "batch_index"))


def _meta(metadata: Any) -> dict[str, Any]:
    if isinstance(metadata, dict) and isinstance(metadata.get("hstreamdb"), dict):
        return dict(metadata["hstreamdb"])
    return {}


_KEY_ORDERING = "ordering" in inspect.signature(Database.create_subscription).parameters


class Reader:
    """A reader of one shard: ``await reader.read(max_records)``."""

    def __init__(self, reader: aio.AsyncReader, shard: int | None, timeout_ms: int, max_bytes: int) -> None:
        self._reader = reader
        self._shard = shard
        self._timeout = max(0, timeout_ms) / 1000
        self._max_bytes = max_bytes
        self.foreign: list[ForeignRecord] = []

    async def read(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records of the shard, waiting up to the reader's timeout
        for a first one ([] then). Foreign records (:class:`ForeignRecord`) are passed
        over, each logged with its stream, offset and reason and kept in ``foreign``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            got = await self._reader.read(max_records, max(0.0, deadline - loop.time()))
            if self._shard is not None:
                got = [r for r in got if r.key == str(self._shard)]
            records, foreign = _mapped(got, self._max_bytes)
            self.foreign += foreign
            if records or loop.time() >= deadline:
                return records


class Consumer:
    """Calls ``await processing_func(ack_fun, stop_fun, records)`` per fetched batch until
    ``stop_fun()``; ``await start()`` returns then. ``ack_fun(record_ids)`` and
    ``stop_fun()`` act at once and return awaitables (awaiting them is optional).
    Records never acked are redelivered after the subscription's ``ack_timeout``.

    Foreign records (written by other code; see :class:`ForeignRecord`) take the error
    path instead of reaching ``processing_func``: each is logged on
    ``sqlstream.compat.hstreamdb`` with its stream, offset and reason, handed to
    ``on_error`` when given (awaited if it returns an awaitable; an exception it raises
    ends ``start()``), then acked — set aside, as sqlstream's own subscriptions set damaged
    records aside, so that it never blocks its shard. The stored record is not changed.
    """

    def __init__(self, name: str, subscription: str, adb: aio.AsyncDatabase,
                 processing_func: Callable[..., Awaitable[Any]],
                 on_error: Callable[[ForeignRecord], Any] | None = None) -> None:
        self.name = name
        self.subscription = subscription
        self._adb = adb
        self._func = processing_func
        self._on_error = on_error
        self._stopped = False

    async def start(self) -> None:
        sub = await self._adb.subscription(self.subscription)
        loop = asyncio.get_running_loop()
        acks: set[asyncio.Future[Any]] = set()

        def ack_fun(record_ids: Iterable[RecordId]) -> asyncio.Future[Any]:
            if not isinstance(record_ids, Iterable):
                raise InvalidArgument(f"ack_fun takes a list of RecordId, not {show(record_ids)}")
            offsets = [_record_offset(rid) for rid in record_ids]
            fut = asyncio.ensure_future(sub.ack(*offsets))
            acks.add(fut)
            fut.add_done_callback(acks.discard)
            return fut

        def stop_fun() -> asyncio.Future[None]:
            self._stopped = True
            self._adb.wake()
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done

        self._stopped = False
        limit = self._adb.sync.max_record_bytes
        while not self._stopped:
            batch = await sub.fetch(self.name, 100, None, stop=lambda: self._stopped)
            records, foreign = _mapped(batch, limit)
            for error in foreign:
                if self._on_error is not None:
                    handled = self._on_error(error)
                    if inspect.isawaitable(handled):
                        await handled
                await sub.ack(error.offset)
            if records:
                await self._func(ack_fun, stop_fun, records)
        if acks:
            await asyncio.gather(*acks)


class AppendCallback(ABC):
    @abstractmethod
    def on_success(self, stream_name: str, payloads: list[AppendPayload], stream_keyid: int) -> None: ...

    @abstractmethod
    def on_fail(self, stream_name: str, payloads: list[AppendPayload], stream_keyid: int, e: Exception) -> None: ...


class BufferedProducer:
    """Buffers appends per (stream, shard) and writes each buffer as one batch (see the
    module docstring for the triggers, retries and edge cases)."""

    def __init__(self, flush_coro: Callable[..., Awaitable[Iterator[RecordId]]],
                 find_stream_key_id_coro: Callable[[str, str | None], Awaitable[int]], append_callback: Any = None,
                 size_trigger: int = 0, time_trigger: float = 0, workers: int = 1, retry_count: int = 0,
                 retry_max_delay: float = 60, compresstype: Any = None, compresslevel: int = 9) -> None:
        workers = _check_int(workers, "workers", 1, 1024)
        retry_count = _check_int(retry_count, "retry_count", 0, 1_000_000)
        size_trigger = _check_int(size_trigger, "size_trigger", 0, 1 << 62)
        time_trigger = _check_number(time_trigger, "time_trigger")
        retry_max_delay = _check_number(retry_max_delay, "retry_max_delay")
        _encode(b"", compresstype, compresslevel)  # refuse a bad compresstype or level now
        self._flush_coro = flush_coro
        self._find = find_stream_key_id_coro
        self._callback = append_callback() if isinstance(append_callback, type) else append_callback
        self.size_trigger = size_trigger
        self.time_trigger = time_trigger
        self.retry_count = retry_count
        self.retry_max_delay = retry_max_delay
        self.compresstype = compresstype
        self.compresslevel = compresslevel
        self._buffers: dict[GroupKeyTy, list[AppendPayload]] = {}
        self._sizes: dict[GroupKeyTy, int] = {}
        self._timers: dict[GroupKeyTy, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(workers)
        self._closed = False

    async def append(self, stream_name: str, payload: bytes | str | dict[str, Any], key: str | None = None) -> None:
        if self._closed:
            raise DatabaseClosed("the producer is closed")
        size = len(_payload_bytes(payload)[0])  # type check now, not at flush time
        group = (stream_name, await self._find(stream_name, _check_key(key)))
        # As hstreamdb-py: a payload that would take the batch past size_trigger first
        # flushes what is buffered, so no batch passes it (one payload larger than
        # size_trigger is a batch of its own, flushed at once).
        if self.size_trigger and self._sizes.get(group, 0) + size > self.size_trigger:
            self._flush_group(group)
        self._buffers.setdefault(group, []).append(AppendPayload(payload, key))
        self._sizes[group] = self._sizes.get(group, 0) + size
        if (self.size_trigger == 0 and self.time_trigger == 0) or (self.size_trigger and size > self.size_trigger):
            self._flush_group(group)
        elif self.time_trigger and group not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[group] = loop.call_later(self.time_trigger, self._flush_group, group)

    def _flush_group(self, group: GroupKeyTy) -> None:
        timer = self._timers.pop(group, None)
        if timer is not None:
            timer.cancel()
        payloads = self._buffers.pop(group, None)
        self._sizes.pop(group, None)
        if payloads:
            task = asyncio.ensure_future(self._write(group, payloads))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, group: GroupKeyTy, payloads: list[AppendPayload]) -> None:
        stream, shard = group
        async with self._slots:
            delay = 0.05
            for attempt in range(self.retry_count + 1):
                try:
                    await self._flush_coro(stream, payloads, shard, self.compresstype, self.compresslevel)
                except Exception as exc:  # noqa: BLE001 - reported through on_fail
                    if attempt < self.retry_count:
                        await asyncio.sleep(min(delay, self.retry_max_delay))
                        delay *= 2
                        continue
                    if self._callback is not None:
                        self._callback.on_fail(stream, payloads, shard, exc)
                    return
                if self._callback is not None:
                    self._callback.on_success(stream, payloads, shard)
                return

    async def flush(self, stream_name: str, shard_id: int) -> None:
        self._flush_group((stream_name, shard_id))
        await self.wait()

    async def flush_by_key(self, stream_name: str, key: str | None = None) -> None:
        await self.flush(stream_name, await self._find(stream_name, key))

    async def flushall(self) -> None:
        for group in list(self._buffers):
            self._flush_group(group)
        await self.wait()

    async def close(self) -> None:
        """Flush everything buffered and refuse further appends (does not wait)."""
        self._closed = True
        for group in list(self._buffers):
            self._flush_group(group)

    async def wait(self) -> None:
        """Wait until every batch handed to the writers is stored or failed."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def wait_and_close(self) -> None:
        await self.close()
        await self.wait()

    AppendCallback = AppendCallback  # HStreamDB's examples subclass BufferedProducer.AppendCallback
