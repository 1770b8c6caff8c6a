"""What Kafka knows, in the file: the one place the Kafka listener touches SQL.

Like :mod:`sqlstream.streaming.store` it uses the engine interface (``db.engine``:
``write()``, ``snapshot()``, ``append_rows()``, ``now_us()``) and the public
``Database`` API (streams are created and deleted through it), never another object's
private members. Every method is synchronous and runs on the caller's thread (the
listener runs them on its AsyncDatabase's worker).

The mapping (README, "Kafka"): a topic partition is a stream (``orders`` for a topic of
one partition, ``orders/0`` ... ``orders/N-1`` for a topic created with N; partitions
added later are ``orders/1``, ...), a Kafka offset is the record's offset. A record from
a Kafka producer is stored as a ``bytes`` record whose value is the Kafka value; its key
is stored as the record's ``key`` when it is UTF-8 text and its headers as the record's
``headers`` when their names are unique and their values UTF-8 text; the producer's
timestamp (ms) and whatever the chunk row cannot hold exactly (a binary key, repeated or
binary or null headers, a null value) go into ``kafka_batches`` in the same
transaction. Reading back gives every field exactly as produced.

Atomicity: :meth:`KafkaStore.produce` stores a partition's batch, its ``kafka_batches``
row and the producer's sequence numbers in one transaction: a retried batch is
recognised after a crash or restart exactly when its records were stored. A Produce
request carries exactly one batch per partition (Kafka's rule for Produce v3+, enforced
by the handler before anything is stored), so a partition's records in one request are
stored whole or not at all; partitions of one request are independent, as in Kafka.
"""

from __future__ import annotations

import json
import re
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import add, itemgetter
from typing import Any

from ..connection import runner
from ..database import Database
from ..errors import (
    DamagedRecord,
    InvalidArgument,
    SequenceGap,
    SqlstreamError,
    StaleEpoch,
    StreamExists,
    StreamNotFound,
)
from ..fencing import KAFKA_PRODUCER_PREFIX, FencedAppend, append_fenced, expire_producers
from ..records import MISSING_PAYLOAD, Damaged
from .records import Batch, FetchedRecord, KafkaRecord

__all__ = ["KafkaStore", "Topic", "KafkaRefused", "valid_topic_name", "producer_name", "SEQUENCE_WRAP"]

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
SEQUENCE_WRAP = 2**31  # Kafka's sequence numbers are int32: after 2**31 - 1 comes 0
#: Kafka producers' names in the core's ``producers`` table start with this.
PRODUCER_PREFIX = KAFKA_PRODUCER_PREFIX


def producer_name(producer_id: int) -> str:
    """The name a Kafka producer id has in the ``producers`` table (``kafka:1000``)."""
    return f"{PRODUCER_PREFIX}{producer_id}"


def _never_seal() -> bool:
    return False  # a Kafka produce never seals its stream


def valid_topic_name(name: str) -> bool:
    """Kafka's rule: 1-249 of ``[A-Za-z0-9._-]``, not ``.`` or ``..``."""
    return bool(_TOPIC_NAME.match(name)) and name not in (".", "..")


class KafkaRefused(SqlstreamError):
    """A request the Kafka protocol answers with an error code (``code``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Topic:
    """A topic: its partitions' streams are ``stream(p)``."""

    name: str
    partitions: int
    first_stream: str
    topic_id: uuid.UUID

    def stream(self, partition: int) -> str:
        return self.first_stream if partition == 0 else f"{self.name}/{partition}"


@dataclass(frozen=True)
class Produced:
    """The outcome of storing one batch: its first offset, whether it was a retry
    already stored (nothing written), and the partition's log start offset."""

    base_offset: int
    duplicate: bool
    log_start: int


@dataclass(frozen=True)
class Fetched:
    """Records read from a partition and its offsets."""

    records: list[FetchedRecord]
    log_start: int
    high_watermark: int
    size: int


_TOPICS_SQL = "SELECT name, partitions, first_stream, topic_id FROM kafka_topics"
# A fetch's rows as Kafka sees them: SQLite gives keys and text or JSON values as their
# UTF-8 bytes and timestamps in ms, so restoring a record costs Python no conversions.
_MAX_INT = 2**63 - 1  # SQLite's largest integer
# Headers as their UTF-8 bytes too: a row whose headers plain SQL damaged (not UTF-8)
# must not fail the page in apsw's decoding, but be found and named (_restore_checked).
_READ_SQL = ("SELECT offset, timestamp / 1000, CAST(key AS BLOB), CAST(headers AS BLOB), CAST(data AS BLOB) FROM records "
             "WHERE stream_id = ? AND offset >= ? ORDER BY offset LIMIT ?")
_key = itemgetter(2)
_header_text = itemgetter(3)
_value = itemgetter(4)
_RECORD_OVERHEAD = 64  # bytes a fetched record counts for besides its value, key and headers (Kafka's framing, about)


def _cost(row: Any) -> int:
    """What a fetched row counts for in a fetch's budget: its value, key and headers as
    stored (the key and header values travel too: a budget of values alone let records
    with large keys answer far more than fetch.max.bytes) and the record framing."""
    _, _, key, headers, value = row
    return len(value) + (0 if key is None else len(key)) + (len(headers) if headers else 0) + _RECORD_OVERHEAD


# The batches with facts a chunk row cannot hold (binary keys, headers that are not
# unique UTF-8 text) that may cover the offsets from ? (the fourth parameter) to ? (the
# second): their keys and headers travel in a fetch, so they count too.
_EXTRAS_SQL = ("SELECT base_offset, extras FROM kafka_batches WHERE stream_id = ? AND base_offset <= ? "
               "AND base_offset >= coalesce((SELECT max(base_offset) FROM kafka_batches WHERE stream_id = ? "
               "AND base_offset <= ?), 0) AND extras IS NOT NULL")


def _extra_costs(batches: list[Any]) -> dict[int, int]:
    """Offset -> the bytes of the key and headers kept in ``kafka_batches.extras`` (hex
    there; their row's columns are NULL, so :func:`_cost` does not see them)."""
    out: dict[int, int] = {}
    for base, text in batches:
        for i, extra in json.loads(text).items():
            n = len(extra.get("key", "")) // 2
            for name, value in extra.get("headers", ()):
                n += len(name.encode("utf-8")) + (0 if value is None else len(value) // 2)
            if n:
                out[base + int(i)] = n
    return out


_ENDS_SQL = "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?"
_READ_ENDS_SQL = "SELECT id, first_offset, next_offset, byte_length FROM streams_now WHERE name = ?"
_POSITION_SQL = "SELECT position FROM chunks WHERE stream_id = ? AND offset = ?"


class KafkaStore:
    """Topics, records, producer ids and group offsets of one file (see the module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine

    # ------------------------------------------------------------------ topics

    def topics(self) -> list[Topic]:
        """Every topic: registered ones, and every stream whose name is a valid topic
        name (a stream appended to through the Python API is a one-partition topic)."""
        with self.engine.snapshot() as conn:
            known = [_topic(r) for r in runner(conn)(_TOPICS_SQL)]
            names = {t.name for t in known}
            streams = [r[0] for r in runner(conn)("SELECT name FROM streams")]
        owned = {t.stream(p) for t in known for p in range(t.partitions)}
        extra = [Topic(n, 1, n, _adopted_id(n)) for n in streams
                 if n not in names and n not in owned and valid_topic_name(n)]
        return sorted(known + extra, key=lambda t: t.name)

    def topic(self, name: str, *, create: bool = False, partitions: int = 1) -> Topic | None:
        """The topic ``name``; created (``partitions`` streams) when absent and ``create``.

        A stream of that name becomes a registered one-partition topic."""
        with self.engine.snapshot() as conn:
            row = runner(conn)(_TOPICS_SQL + " WHERE name = ?", (name,))
        if row:
            return _topic(row[0])
        if not valid_topic_name(name):
            return None
        with self.engine.write() as conn:
            row = runner(conn)(_TOPICS_SQL + " WHERE name = ?", (name,))
            if row:
                return _topic(row[0])
            exists = runner(conn)("SELECT 1 FROM streams WHERE name = ?", (name,))
            if exists:
                return self._register(conn, name, 1, name, _adopted_id(name))
            if not create:
                return None
            return self.create_topic(name, partitions)

    def create_topic(self, name: str, partitions: int) -> Topic:
        """Create a topic and its streams in one transaction.

        Raises ``KafkaRefused``: 17 INVALID_TOPIC_EXCEPTION, 36 TOPIC_ALREADY_EXISTS, 37
        INVALID_PARTITIONS."""
        if not valid_topic_name(name):
            raise KafkaRefused(17, f"{name!r} is not a valid topic name ([A-Za-z0-9._-], 1-249 characters)")
        if not 1 <= partitions <= 10_000:
            raise KafkaRefused(37, f"a topic needs 1 to 10000 partitions, not {partitions}")
        first = name if partitions == 1 else f"{name}/0"
        with self.engine.write() as conn:
            if runner(conn)("SELECT 1 FROM kafka_topics WHERE name = ?", (name,)) or \
                    runner(conn)("SELECT 1 FROM streams WHERE name = ?", (name,)):
                raise KafkaRefused(36, f"topic {name!r} already exists")
            topic = self._register(conn, name, partitions, first, uuid.uuid4())
            try:
                for p in range(partitions):
                    self.db.create_stream(topic.stream(p))
            except StreamExists as exc:
                raise KafkaRefused(36, f"topic {name!r}: {exc}") from exc
        return topic

    def _register(self, conn: Any, name: str, partitions: int, first: str, topic_id: uuid.UUID) -> Topic:
        runner(conn)("INSERT INTO kafka_topics (name, partitions, first_stream, topic_id, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", (name, partitions, first, topic_id.bytes, self.engine.now_us()))
        return Topic(name, partitions, first, topic_id)

    def delete_topic(self, name: str) -> None:
        """Delete a topic, its streams and its committed group offsets in one transaction.

        Raises ``KafkaRefused`` 3 UNKNOWN_TOPIC_OR_PARTITION."""
        topic = self.topic(name)
        if topic is None:
            raise KafkaRefused(3, f"no topic {name!r}")
        with self.engine.write() as conn:
            for p in range(topic.partitions):
                try:
                    self.db.delete_stream(topic.stream(p), force=True)
                except StreamNotFound:
                    pass
            runner(conn)("DELETE FROM kafka_topics WHERE name = ?", (name,))
            runner(conn)("DELETE FROM kafka_group_offsets WHERE topic = ?", (name,))

    def add_partitions(self, name: str, count: int) -> Topic:
        """Grow topic ``name`` to ``count`` partitions (Kafka never shrinks one).

        Raises ``KafkaRefused`` 3 (no topic) or 37 INVALID_PARTITIONS."""
        topic = self.topic(name)
        if topic is None:
            raise KafkaRefused(3, f"no topic {name!r}")
        if count <= topic.partitions or count > 10_000:
            raise KafkaRefused(37, f"topic {name!r} has {topic.partitions} partitions; the new count must be "
                                   f"larger (and at most 10000), not {count}")
        with self.engine.write() as conn:
            for p in range(topic.partitions, count):
                self.db.create_stream(topic.stream(p), exist_ok=True)
            runner(conn)("UPDATE kafka_topics SET partitions = ? WHERE name = ?", (count, name))
        return Topic(topic.name, count, topic.first_stream, topic.topic_id)

    # ------------------------------------------------------------------ records

    def produce(self, stream: str, batch: Batch) -> Produced:
        """Store one producer batch in ``stream`` (see the module docstring: atomic with
        its Kafka facts and the producer's sequence numbers).

        An idempotent producer's batch goes through the core's fenced append
        (:func:`sqlstream.fencing.append_fenced`, the rule ``Stream.append_fenced`` and the
        HTTP front use): the producer is ``kafka:<producer id>`` in ``producers``, its
        batch covers the sequence numbers ``base_sequence`` .. ``base_sequence + n - 1``
        modulo 2**31, as Kafka counts them. As in Kafka, a producer this partition keeps no
        state for (never produced here, or forgotten by :meth:`expire_producers`) may start
        at any sequence, so a producer idle past its expiry carries on.

        Raises ``KafkaRefused`` 45 OUT_OF_ORDER_SEQUENCE_NUMBER, 47 INVALID_PRODUCER_EPOCH,
        3 UNKNOWN_TOPIC_OR_PARTITION; sqlstream errors (``PayloadTooLarge``,
        ``StreamSealed``, ...) leave unchanged and store nothing."""
        rows, timestamps, extras = _rows(batch.records)
        n = len(batch.records)

        def append(values: Sequence[Any]) -> range:
            return self.engine.append_rows(stream, None, values, None)

        with self.engine.write() as conn:
            q = runner(conn)
            got = q(_ENDS_SQL, (stream,))
            if not got:
                raise KafkaRefused(3, f"no stream {stream!r} for this partition")
            stream_id, log_start, _ = got[0]
            if batch.producer_id >= 0:
                fenced = self._fenced(stream, rows, append, batch, n)
                if fenced.duplicate:
                    return Produced(fenced.original.start if fenced.original else -1, True, log_start)
                offsets = fenced.offsets
            else:
                offsets = append(rows)
            base = offsets.start
            base_ts = timestamps[0] if n else 0
            max_ts = max(timestamps) if n else 0
            prev = q("SELECT running_max FROM kafka_batches WHERE stream_id = ? ORDER BY base_offset DESC LIMIT 1",
                     (stream_id,))
            running = max(max_ts, prev[0][0]) if prev else max_ts
            deltas = [t - base_ts for t in timestamps]
            q("INSERT INTO kafka_batches (stream_id, base_offset, last_offset, base_timestamp, max_timestamp, "
              "running_max, timestamps, extras) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (stream_id, base, base + n - 1, base_ts, max_ts, running,
               json.dumps(deltas, separators=(",", ":")) if any(deltas) else None,
               json.dumps(extras, separators=(",", ":")) if extras else None))
            # Batches whose records retention has trimmed go too (one range seek of the key).
            q("DELETE FROM kafka_batches WHERE stream_id = ? AND base_offset < ? AND last_offset < ?",
              (stream_id, log_start, log_start))
        return Produced(base, False, log_start)

    def _fenced(self, stream: str, rows: list[Any], append: Any, batch: Batch, n: int) -> FencedAppend:
        """The core's fenced append of an idempotent batch, its refusals as Kafka's codes."""
        first = batch.base_sequence
        try:
            return append_fenced(self.engine, stream, rows, append, _never_seal, producer=producer_name(
                batch.producer_id), epoch=batch.producer_epoch, seq=first, last_seq=(first + n - 1) % SEQUENCE_WRAP,
                wrap=SEQUENCE_WRAP, resume=True)
        except StaleEpoch as exc:
            raise KafkaRefused(47, f"producer {batch.producer_id}: epoch {batch.producer_epoch} is older than "
                                   f"{exc.current_epoch}") from exc
        except SequenceGap as exc:
            raise KafkaRefused(45, f"producer {batch.producer_id}: sequence {first} out of order "
                                   f"(expected {exc.expected})") from exc
        except InvalidArgument as exc:  # a new epoch not at 0, a negative sequence or epoch
            raise KafkaRefused(45, f"producer {batch.producer_id}: {exc}") from exc

    def ends(self, stream: str) -> tuple[int, int] | None:
        """(log start offset, high watermark) of ``stream``, None when it does not exist."""
        with self.engine.snapshot() as conn:
            got = runner(conn)(_ENDS_SQL, (stream,))
        return (got[0][1], got[0][2]) if got else None

    def read(self, stream: str, offset: int, max_bytes: int, *, at_least_one: bool = True) -> Fetched | None:
        """Records of ``stream`` from ``offset``, up to about ``max_bytes`` of values, keys
        and headers (:func:`_cost`; with ``at_least_one``, one record when there is one
        even if it is larger, as Kafka does for the first non-empty partition of a fetch),
        with every Kafka field restored. None when the stream does not exist."""
        with self.engine.snapshot() as conn:
            got = runner(conn)(_READ_ENDS_SQL, (stream,))
            if not got:
                return None
            stream_id, first, end, byte_length = got[0]
            out: list[FetchedRecord] = []
            size = 0
            if offset < first or offset >= end:
                return Fetched(out, first, end, 0)

            def at(n: int) -> int:
                """The byte position of record ``n`` (the stream's byte length at its end):
                the values of records a..b-1 take at(b) - at(a) bytes."""
                return int(byte_length if n >= end else runner(conn)(_POSITION_SQL, (stream_id, n))[0][0])

            # Pages of rows until the budget is spent: a first page sized for small records,
            # later ones from the sizes seen, so large records are not read for nothing.
            kept: list[Any] = []
            page = max(1, min(1000, max_bytes // 128))
            position = offset
            full = False
            while not full and position < end:
                # No row past the one whose value crosses the budget: the rows' byte positions
                # say where that is (a page sized for small records read 1,000 large ones to
                # answer one). Keys, headers and framing cost more: cut below.
                stop, base, room = min(position + page, end), at(position), max_bytes - size
                if at(stop) - base > room:
                    lo, hi = position + 1, stop
                    while lo < hi:
                        mid = (lo + hi) // 2
                        lo, hi = (lo, mid) if at(mid) - base > room else (mid + 1, hi)
                    page = lo - position
                rows = runner(conn)(_READ_SQL, (stream_id, position, page))
                if not rows:
                    break
                if None in map(_value, rows):  # a payload row gone (foreign SQL): the read ends before it
                    cut = [row[4] for row in rows].index(None)
                    if cut == 0 and not kept:
                        raise Damaged(rows[0][0], 0, MISSING_PAYLOAD, None, {}, b"").error(
                            stream, f"commit offset {rows[0][0] + 1} to skip it")
                    rows, full = rows[:cut], True
                    if not rows:
                        break
                # What each row costs the budget (_cost), summed in C when no row has a key
                # or headers (the common case: values only); the rows that fit are a
                # prefix, found by bisection.
                extra = _extra_costs(runner(conn)(_EXTRAS_SQL, (stream_id, rows[-1][0], stream_id, rows[0][0])))
                if extra:
                    costs = list(accumulate(_cost(row) + extra.get(row[0], 0) for row in rows))
                elif any(map(_key, rows)) or any(map(_header_text, rows)):
                    costs = list(accumulate(map(_cost, rows)))
                else:
                    costs = list(accumulate(map(add, map(len, map(_value, rows)), repeat(_RECORD_OVERHEAD))))
                fit = bisect_right(costs, max_bytes - size) or (0 if kept or not at_least_one else 1)
                if fit < len(rows):
                    full = True
                    if not fit:
                        break
                    rows = rows[:fit]
                kept += rows
                size += costs[fit - 1]
                position = rows[-1][0] + 1
                average = size // len(kept)
                page = max(1, min(1000, (max_bytes - size) // average + 1))
            if not kept:
                return Fetched(out, first, end, 0)
            batches = runner(conn)(
                "SELECT base_offset, last_offset, base_timestamp, timestamps, extras FROM kafka_batches "
                "WHERE stream_id = ? AND base_offset <= ? AND base_offset >= coalesce((SELECT max(base_offset) "
                "FROM kafka_batches WHERE stream_id = ? AND base_offset <= ?), 0) ORDER BY base_offset",
                (stream_id, kept[-1][0], stream_id, kept[0][0]))
        return Fetched(_restore_checked(stream, kept, batches), first, end, size)

    def offset_for_time(self, stream: str, timestamp_ms: int) -> tuple[int, int] | None:
        """Kafka's ListOffsets by time: the first offset whose timestamp is at or after
        ``timestamp_ms`` and that timestamp, or None when there is none. Kafka-produced
        records count with their producer timestamps; others with their append time."""
        with self.engine.snapshot() as conn:
            got = runner(conn)(_ENDS_SQL, (stream,))
            if not got:
                return None
            stream_id, first, end = got[0]
            found: list[tuple[int, int]] = []
            row = runner(conn)(
                "SELECT base_offset, last_offset, base_timestamp, timestamps FROM kafka_batches "
                "WHERE stream_id = ? AND running_max >= ? AND last_offset >= ? ORDER BY running_max, base_offset "
                "LIMIT 1", (stream_id, timestamp_ms, first))
            if row:
                base, last, base_ts, deltas = row[0]
                stamps = json.loads(deltas) if deltas else [0] * (last - base + 1)
                for i, d in enumerate(stamps):
                    if base_ts + d >= timestamp_ms and base + i >= first:
                        found.append((base + i, base_ts + d))
                        break
            # Records not written by a Kafka producer: their append time (µs, never
            # decreasing); skip any that a Kafka batch covers.
            # In µs; a time past SQLite's integers (a ListOffsets timestamp from the wire is
            # any int64 of ms) is past every record's: bound at the largest integer.
            at = runner(conn)("SELECT offset, timestamp FROM chunks WHERE stream_id = ? AND timestamp >= ? "
                              "AND offset >= ? ORDER BY offset LIMIT 200",
                              (stream_id, min(timestamp_ms * 1000, _MAX_INT), first))
            for off, ts in at:
                if found and off >= found[0][0]:
                    break
                cover = runner(conn)("SELECT last_offset FROM kafka_batches WHERE stream_id = ? AND base_offset <= ? "
                                     "ORDER BY base_offset DESC LIMIT 1", (stream_id, off))
                if cover and cover[0][0] >= off:
                    continue
                found.append((off, ts // 1000))
                break
        return min(found) if found else None

    # ------------------------------------------------------------------ producers

    def init_producer(self) -> tuple[int, int]:
        """A new idempotent producer: (producer id, epoch 0), kept in the file. Ids are
        never handed out twice (:meth:`expire_producers` keeps the highest)."""
        with self.engine.write() as conn:
            pid = runner(conn)("SELECT coalesce(max(producer_id), 999) + 1 FROM kafka_producers")[0][0]
            runner(conn)("INSERT INTO kafka_producers (producer_id, epoch, created_at) VALUES (?, 0, ?)",
                         (pid, self.engine.now_us()))
        return int(pid), 0

    def expire_producers(self, idle: float) -> tuple[int, int]:
        """Forget idempotent producers idle for ``idle`` seconds (Kafka's
        transactional.id.expiration.ms), in one transaction: each partition's sequence
        state not written for that long (:func:`sqlstream.fencing.expire_producers`), then
        the ids handed out that long ago that no partition remembers any more, except the
        highest (so an id is never handed out twice). A producer that produced, or got its
        id, within ``idle`` keeps everything. Returns (states, ids) forgotten."""
        with self.engine.write(wakes=False) as conn:
            states = expire_producers(self.engine, idle, prefix=PRODUCER_PREFIX)
            runner(conn)(
                "DELETE FROM kafka_producers WHERE created_at < ? "
                "AND producer_id < (SELECT max(producer_id) FROM kafka_producers) "
                "AND producer_id NOT IN (SELECT CAST(substr(producer, ?) AS INTEGER) FROM producers "
                "WHERE substr(producer, 1, ?) = ?)",
                (self.engine.now_us() - int(idle * 1_000_000), len(PRODUCER_PREFIX) + 1, len(PRODUCER_PREFIX),
                 PRODUCER_PREFIX))
            return states, int(conn.changes())

    # ------------------------------------------------------------------ groups

    def commit_offsets(self, group: str, offsets: Iterable[tuple[str, int, int, int | None, str | None]]) -> None:
        """Store (topic, partition, offset, leader epoch, metadata) for ``group``, atomically."""
        now = self.engine.now_us()
        with self.engine.write(wakes=False) as conn:
            for topic, partition, offset, epoch, metadata in offsets:
                runner(conn)(
                    "INSERT INTO kafka_group_offsets (group_id, topic, partition, offset, leader_epoch, metadata, "
                    "committed_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_id, topic, partition) DO UPDATE "
                    "SET offset = excluded.offset, leader_epoch = excluded.leader_epoch, "
                    "metadata = excluded.metadata, committed_at = excluded.committed_at",
                    (group, topic, partition, offset, epoch, metadata, now))

    def committed(self, group: str) -> dict[tuple[str, int], tuple[int, int | None, str | None]]:
        """Every committed offset of ``group``: (topic, partition) -> (offset, leader epoch, metadata)."""
        with self.engine.snapshot() as conn:
            rows = runner(conn)("SELECT topic, partition, offset, leader_epoch, metadata FROM kafka_group_offsets "
                                "WHERE group_id = ?", (group,))
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


def _topic(row: Sequence[Any]) -> Topic:
    return Topic(row[0], row[1], row[2], uuid.UUID(bytes=bytes(row[3])))


def _adopted_id(name: str) -> uuid.UUID:
    # A stream that became a topic without CreateTopics: a stable id from its name.
    return uuid.uuid5(uuid.NAMESPACE_URL, "sqlstream-topic:" + name)


def _rows(records: Sequence[KafkaRecord]) -> tuple[list[Any], list[int], dict[str, Any]]:
    """The chunk rows of Kafka records, their timestamps, and the facts rows cannot hold."""
    rows: list[Any] = []
    stamps: list[int] = []
    extras: dict[str, Any] = {}
    for i, (ts, key, value, headers) in enumerate(records):
        stamps.append(ts)
        if key is None and not headers and value is not None:  # the common case: a value only
            rows.append((None, None, "bytes", value, len(value)))
            continue
        extra: dict[str, Any] = {}
        k: str | None = None
        if key is not None:
            try:
                k = key.decode("utf-8")
            except UnicodeDecodeError:
                extra["key"] = key.hex()
        h: str | None = None
        if headers:
            native = _native_headers(headers)
            if native is None:
                extra["headers"] = [[name, None if v is None else v.hex()] for name, v in headers]
            else:
                h = json.dumps(native, separators=(",", ":"), ensure_ascii=False)
        if value is None:
            extra["value"] = None
            value = b""
        if extra:
            extras[str(i)] = extra
        rows.append((k, h, "bytes", value, len(value)))
    return rows, stamps, extras


def _native_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for name, value in headers:
        if value is None or name in out:
            return None
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return out


def _restore(rows: list[Any], batches: list[Any]) -> list[FetchedRecord]:
    """Kafka records from ``_READ_SQL`` rows (ascending offsets) and the ``kafka_batches``
    rows that may cover them (ascending base offsets): a covered record gets its
    producer's timestamp and the facts in ``extras``; others their append time."""
    # Fetch's per-record work: the rows a batch covers are found by bisection and made
    # into records by one comprehension per run (no Python statement per record), one
    # tuple each.
    out: list[FetchedRecord] = []
    at = 0
    n = len(rows)
    for base, last, base_ts, d, e in batches:
        start = bisect_left(rows, base, at, n, key=_offset)
        if start > at:
            out += _appended(rows[at:start])
        stop = bisect_right(rows, last, start, n, key=_offset)
        if stop > start:
            deltas = json.loads(d) if d else None
            if e:
                extras = {int(i): x for i, x in json.loads(e).items()}
                out += _with_extras(rows[start:stop], base, base_ts, deltas, extras)
            elif deltas:
                out += [(o, base_ts + deltas[o - base], k, v, _headers(h) if h else ())
                        for o, _, k, h, v in rows[start:stop]]
            else:
                out += [(o, base_ts, k, v, _headers(h) if h else ()) for o, _, k, h, v in rows[start:stop]]
        at = stop
    if at < n:
        out += _appended(rows[at:])
    return out


_offset = itemgetter(0)


def _appended(rows: list[Any]) -> list[FetchedRecord]:
    """Records no Kafka producer wrote (the Python API, HTTP, ...): their append time."""
    return [(o, ts, k, v, _headers(h) if h else ()) for o, ts, k, h, v in rows]


def _headers(raw: bytes) -> tuple[tuple[str, bytes | None], ...]:
    """A chunk's ``headers`` JSON (names to text, as UTF-8 bytes) as Kafka headers."""
    return tuple((name, str(v).encode("utf-8")) for name, v in json.loads(raw).items())


_HEADER_DAMAGE = (ValueError, AttributeError, TypeError, RecursionError)  # JSON, UTF-8, not an object


def _restore_checked(stream: str, rows: list[Any], batches: list[Any]) -> list[FetchedRecord]:
    """:func:`_restore`, ending before the first record whose headers plain SQL damaged
    (not UTF-8, not a JSON object): ``DamagedRecord`` when that is the first one, which
    the fetch answers with KAFKA_STORAGE_ERROR for the partition (a raw decoding error
    dropped the client's connection at every fetch that reached it). Healthy pages pay
    nothing: the rows are looked at one by one only after a failure."""
    try:
        return _restore(rows, batches)
    except _HEADER_DAMAGE:
        pass
    for i, row in enumerate(rows):
        try:
            if row[3]:
                _headers(row[3])
        except _HEADER_DAMAGE:
            if i == 0:
                raise DamagedRecord(
                    f"record {row[0]} of stream {stream!r} is damaged (its headers are not a valid JSON "
                    "object); nothing was read", stream=stream, offset=row[0],
                    hint=f"SQL outside sqlstream wrote its headers; commit offset {row[0] + 1} to skip it",
                ) from None
            return _restore(rows[:i], batches)
    return _restore(rows, batches)  # not the headers: let it raise


def _with_extras(rows: list[Any], base: int, base_ts: int, deltas: list[int] | None,
                 extras: dict[int, Any]) -> list[FetchedRecord]:
    """The rows of one Kafka batch with facts the chunk row cannot hold (a binary key,
    repeated, binary or null headers, a null value) in ``extras`` by index."""
    out: list[FetchedRecord] = []
    for offset, _, key, headers, value in rows:
        i = offset - base
        hs = _headers(headers) if headers else ()
        extra = extras.get(i)
        if extra:
            if "key" in extra:
                key = bytes.fromhex(extra["key"])
            if "headers" in extra:
                hs = tuple((name, None if v is None else bytes.fromhex(v)) for name, v in extra["headers"])
            if "value" in extra:
                value = None
        out.append((offset, base_ts + deltas[i] if deltas else base_ts, key, value, hs))
    return out
