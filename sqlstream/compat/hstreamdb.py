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
Offsets
    :class:`SpecialOffset`: ``EARLIEST = 1`` (the default of ``create_subscription``'s
    ``offset=1``), ``LATEST = 2``. A ``ShardOffset``'s ``timestampOffset`` is
    milliseconds since the epoch. A reader's ``timeout`` is milliseconds that
    ``read`` waits for a first record.
Producer edge cases
    ``size_trigger=0`` and ``time_trigger=0``: every append is flushed at once. A payload
    larger than ``size_trigger`` is flushed at once with what is buffered for its shard.
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
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from .. import aio
from ..database import Database
from ..errors import DatabaseClosed, InvalidArgument, ReaderNotFound, StreamNotFound, SubscriptionNotFound
from ..records import Record as _SqlRecord

__all__ = [
    "AppendCallback", "AppendPayload", "BufferedProducer", "CompressionType", "Consumer",
    "HStreamDBClient", "Reader", "Record", "RecordHeader", "RecordId", "Shard", "ShardOffset",
    "SpecialOffset", "Stream", "StreamKeyId", "Subscription", "TimeStamp", "insecure_client",
    "secure_client", "StreamNotFound",
]

StreamKeyId = int
GroupKeyTy = tuple[str, int]
_KEY_HEADER = "hstream-key"
_INDEX_HEADER = "hstream-i"
_Z_HEADER = "hstream-z"
_DEFAULT_KEY = "__default__"
_HASH_SPACE = 2**128


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
    h = int.from_bytes(hashlib.md5((key if key is not None else _DEFAULT_KEY).encode()).digest(), "big")
    return min(h // (_HASH_SPACE // shard_count), shard_count - 1)


def _encode(payload: Any, compresstype: Any, compresslevel: int) -> tuple[Any, str | None]:
    kind = compresstype.value if isinstance(compresstype, CompressionType) else compresstype
    if kind is None:
        if isinstance(payload, (bytes, str, dict)):
            return payload, None
        raise InvalidArgument(f"a payload is bytes, str or dict, not {type(payload).__name__}")
    if isinstance(payload, dict):
        raw = json.dumps(payload).encode()
        tag = "json"
    elif isinstance(payload, str):
        raw, tag = payload.encode(), "raw"
    elif isinstance(payload, bytes):
        raw, tag = payload, "raw"
    else:
        raise InvalidArgument(f"a payload is bytes, str or dict, not {type(payload).__name__}")
    if kind == "gzip":
        return gzip.compress(raw, compresslevel), f"gzip-{tag}"
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=compresslevel).compress(raw), f"zstd-{tag}"
    raise InvalidArgument(f"compresstype must be None, 'gzip' or 'zstd', not {compresstype!r}")


def _to_record(r: _SqlRecord) -> Record:
    headers = r.headers
    index = int(headers.get(_INDEX_HEADER, "0"))
    value: Any = r.value
    z = headers.get(_Z_HEADER)
    if z is not None:
        kind, tag = z.split("-", 1)
        if kind == "gzip":
            raw = gzip.decompress(value)
        else:
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(value)
        value = json.loads(raw) if tag == "json" else raw
    elif isinstance(value, str):
        value = value.encode()
    seconds = int(r.timestamp)
    return Record(
        RecordId(int(r.key or 0), r.offset - index, index),
        RecordHeader(TimeStamp(seconds, int(round((r.timestamp - seconds) * 1e9))), headers.get(_KEY_HEADER), {}),
        value,
    )


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
        if not isinstance(shard_count, int) or isinstance(shard_count, bool) or not 1 <= shard_count <= 1024:
            raise InvalidArgument(f"shard_count must be an int from 1 to 1024, not {shard_count!r}")
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
        items = [AppendPayload(p, key) for p in payloads]
        return iter(await self._append(name, items, compresstype, compresslevel))

    async def _append(self, name: str, items: list[AppendPayload], compresstype: Any,
                      compresslevel: int) -> list[RecordId]:
        n = await self._shard_count(name)
        encoded = [(*_encode(p.payload, compresstype, compresslevel), p.key) for p in items]
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
        if offset not in (SpecialOffset.EARLIEST, SpecialOffset.LATEST):
            raise InvalidArgument(f"offset must be SpecialOffset.EARLIEST or LATEST, not {offset!r}")
        options: dict[str, Any] = {}
        if _KEY_ORDERING:
            options["ordering"] = "key"  # per-shard order: the shard id is the record key
        await self.adb.create_subscription(
            subscription_id, stream_name, start="earliest" if offset == SpecialOffset.EARLIEST else "latest",
            ack_timeout=float(ack_timeout), max_unacked=max_unacks, **options,
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

    def new_consumer(self, name: str, subscription_id: str, processing_func: Callable[..., Awaitable[Any]]) -> Consumer:
        return Consumer(name, subscription_id, self.adb, processing_func)

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
        n = await self._shard_count(stream_name)
        shard = shard_id if shard_id is not None else shard_for_key(stream_key, n)
        if not 0 <= shard < n:
            raise InvalidArgument(f"stream {stream_name!r} has no shard {shard}", hint="see list_shards()")
        start: int | str
        if not isinstance(shard_offset, ShardOffset):
            raise InvalidArgument(f"shard_offset must be a ShardOffset, not {type(shard_offset).__name__}")
        if shard_offset.specialOffset is not None or (
                shard_offset.recordOffset is None and shard_offset.timestampOffset is None):
            start = "latest" if shard_offset.specialOffset == SpecialOffset.LATEST else "earliest"
        elif shard_offset.recordOffset is not None:
            start = shard_offset.recordOffset.batch_id + shard_offset.recordOffset.batch_index
        else:
            s = await self.adb.stream(stream_name)
            start = await s.read_at(int(shard_offset.timestampOffset or 0) / 1000)
        sync = await self.adb.reader(reader_id, stream_name, start=start)
        reader = Reader(sync, shard if n > 1 else None, timeout)
        self._readers[reader_id] = reader
        return reader

    async def read_reader(self, reader_id: str, max_records: int) -> Iterator[Record]:
        reader = self._readers.get(reader_id)
        if reader is None:
            reader = Reader(await self.adb.reader(reader_id), None, 0)
        return iter(await reader.read(max_records))

    async def delete_reader(self, reader_id: str) -> None:
        self._readers.pop(reader_id, None)
        try:
            await self.adb.delete_reader(reader_id)
        except ReaderNotFound:
            pass


def _meta(metadata: Any) -> dict[str, Any]:
    if isinstance(metadata, dict) and isinstance(metadata.get("hstreamdb"), dict):
        return dict(metadata["hstreamdb"])
    return {}


_KEY_ORDERING = "ordering" in inspect.signature(Database.create_subscription).parameters


class Reader:
    """A reader of one shard: ``await reader.read(max_records)``."""

    def __init__(self, reader: aio.AsyncReader, shard: int | None, timeout_ms: int) -> None:
        self._reader = reader
        self._shard = shard
        self._timeout = max(0, timeout_ms) / 1000

    async def read(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records of the shard, waiting up to the reader's timeout
        for a first one ([] then)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            got = await self._reader.read(max_records, max(0.0, deadline - loop.time()))
            if self._shard is not None:
                got = [r for r in got if r.key == str(self._shard)]
            if got or loop.time() >= deadline:
                return [_to_record(r) for r in got]


class Consumer:
    """Calls ``await processing_func(ack_fun, stop_fun, records)`` per fetched batch until
    ``stop_fun()``; ``await start()`` returns then. ``ack_fun(record_ids)`` and
    ``stop_fun()`` act at once and return awaitables (awaiting them is optional).
    Records never acked are redelivered after the subscription's ``ack_timeout``."""

    def __init__(self, name: str, subscription: str, adb: aio.AsyncDatabase,
                 processing_func: Callable[..., Awaitable[Any]]) -> None:
        self.name = name
        self.subscription = subscription
        self._adb = adb
        self._func = processing_func
        self._stopped = False

    async def start(self) -> None:
        sub = await self._adb.subscription(self.subscription)
        loop = asyncio.get_running_loop()
        acks: set[asyncio.Future[Any]] = set()

        def ack_fun(record_ids: Iterable[RecordId]) -> asyncio.Future[Any]:
            offsets = [rid.batch_id + rid.batch_index for rid in record_ids]
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
        while not self._stopped:
            batch = await sub.fetch(self.name, 100, None, stop=lambda: self._stopped)
            if batch:
                await self._func(ack_fun, stop_fun, [_to_record(r) for r in batch])
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
        if workers < 1 or retry_count < 0 or size_trigger < 0 or time_trigger < 0 or retry_max_delay < 0:
            raise InvalidArgument("workers must be >= 1; size_trigger, time_trigger, retry_count and "
                                  "retry_max_delay must not be negative")
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
        _encode(payload, None, 0)  # type check now, not at flush time
        group = (stream_name, await self._find(stream_name, key))
        self._buffers.setdefault(group, []).append(AppendPayload(payload, key))
        size = len(payload if isinstance(payload, bytes) else
                   payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        self._sizes[group] = self._sizes.get(group, 0) + size
        if (self.size_trigger == 0 and self.time_trigger == 0) or (
                self.size_trigger and self._sizes[group] >= self.size_trigger):
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
