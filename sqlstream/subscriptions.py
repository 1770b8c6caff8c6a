"""Subscriptions (consumer groups): at-least-once delivery with acks, redelivery and dead letters.

A subscription is a row in ``subscriptions`` holding its settings and its *delivery
frontier* (``next_offset``: the first offset never delivered). Every record delivered
and not yet acked is a row in ``deliveries`` with the consumer holding it, its attempt
count and its *deadline*. All state changes run inside one write transaction
(``BEGIN IMMEDIATE``), so two consumers — threads or processes — can never claim the
same record at once, and every change commits together with whatever else the caller's
``db.transaction()`` holds (consume-transform-produce is exactly-once in one file).

Deadlines are wall-clock microseconds read from ``db.engine.clock()`` (``time.time`` by
default). Tests replace ``db.engine.clock`` on one Database instance to expire acks without
sleeping; every process sharing a file must otherwise use the real clock.

Every blocking call takes ``timeout`` in seconds: ``0`` never blocks, a positive number
waits at most that long, ``None`` waits until there is something.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw

from .clock import us as _us
from .connection import rows as _q
from .errors import (
    AccessDenied,
    ConcurrencyError,
    InvalidArgument,
    OffsetOutOfRange,
    StreamNotFound,
    StreamSealed,
    SubscriptionExists,
    SubscriptionInUse,
    SubscriptionNotFound,
)
from .logs import LazyLogger
from .records import (
    MISSING_PAYLOAD,
    RANGE_SIZE_SQL,
    RECORD_SIZE,
    Damaged,
    Record,
    check_name,
    encode_headers,
    read_records,
    record_sql,
    salvage,
)
from .validation import (
    MAX_COUNT,
    MAX_SECONDS,
    check_count,
    check_limit,
    check_flag,
    check_offset,
    check_offsets,
    check_seconds,
    check_start,
    check_timeout,
    clean_text,
    show,
    timestamp_us,
)

_log = LazyLogger("sqlstream")

if TYPE_CHECKING:
    from .database import Database
    from .engine import PreparedRecord

# Headers a dead-lettered record carries beside its own.
DEAD_LETTER_HEADERS = (
    "sqlstream.source_stream",
    "sqlstream.source_offset",
    "sqlstream.subscription",
    "sqlstream.attempts",
    "sqlstream.last_error",
)

_SUB_COLUMNS = (
    "s.id, s.name, st.name, s.ack_timeout, s.max_unacked, s.max_deliveries, s.dead_letter, "
    "s.start_offset, s.created_at, s.ordering"
)

# The claim reads the subscription and its stream in one row.
_CLAIM_STATE_SQL = """
SELECT st.id, s.ack_timeout, s.max_unacked, s.max_deliveries, s.dead_letter,
       s.next_offset, st.first_offset, st.next_offset, s.ordering
  FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id
 WHERE s.id = ?
"""

# What a waiting fetch needs to know to decide whether a claim can succeed, read-only.
_PROBE_SQL = """
SELECT s.next_offset, st.first_offset, st.next_offset, s.max_unacked,
       (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id),
       (SELECT min(d.deadline) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 0),
       CASE WHEN s.ordering = 'key' THEN EXISTS (
           SELECT 1 FROM deliveries w WHERE w.subscription_id = s.id AND w.waiting = 1
              AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.subscription_id = s.id
                                 AND p.key IS NOT NULL AND p.key = w.key AND p.waiting = 0)
       ) ELSE 0 END
  FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id
 WHERE s.id = ?
"""

# A waiting row's deadline: no expiry path (deadline <= now) ever picks it.
_NEVER = 2**63 - 1

# Key order: the first waiting record of every key that has no delivered record left.
_RELEASABLE_SQL = """
SELECT min(w.offset) FROM deliveries w
 WHERE w.subscription_id = ?1 AND w.waiting = 1
   AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.subscription_id = ?1
                      AND p.key IS NOT NULL AND p.key = w.key AND p.waiting = 0)
 GROUP BY w.key ORDER BY 1 LIMIT ?2
"""

_RELEASE_SQL = """
UPDATE deliveries SET consumer = ?1, attempts = 1, delivered_at = ?2, deadline = ?3, waiting = 0
 WHERE subscription_id = ?4 AND waiting = 1 AND offset IN (SELECT value FROM json_each(?5))
"""

# Key order: new records past the frontier, each with whether its key already has a row
# (delivered or waiting) — the partial index deliveries_by_key answers that.
_SCAN_SQL = """
SELECT c.offset, CAST(c.key AS BLOB),
       c.key IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries d WHERE d.subscription_id = ?1
                                        AND d.key IS NOT NULL AND d.key = c.key)
  FROM chunks c WHERE c.stream_id = ?2 AND c.offset >= ?3 AND c.offset < ?4 ORDER BY c.offset
"""

_INSERT_KEYED_SQL = """
INSERT INTO deliveries (subscription_id, offset, consumer, attempts, delivered_at, deadline, key, waiting)
SELECT ?1, offset, ?2, 1, ?3, ?4, key, ?5 FROM chunks
 WHERE stream_id = ?6 AND offset IN (SELECT value FROM json_each(?7))
"""

# Redelivery: the longest-expired records first (ties by offset). The deliveries index on
# (subscription_id, deadline) serves both the filter and the order.
_DUE_SQL = """
SELECT offset FROM deliveries
 WHERE subscription_id = ?1 AND deadline <= ?2 AND waiting = 0
 ORDER BY deadline, offset LIMIT ?3
"""

_REDELIVER_SQL = """
UPDATE deliveries
   SET consumer = ?1, attempts = attempts + 1, delivered_at = ?2, deadline = ?3
 WHERE subscription_id = ?4 AND offset IN (SELECT value FROM json_each(?5))
RETURNING offset, attempts
"""

# A claim's byte budget: the total size of the records to take (RANGE_SIZE_SQL for a
# range of offsets, or of the range a list lies in: an upper bound), then, only when that
# is over the budget, their sizes in claim order to find the cut. Sizes are RECORD_SIZE:
# no value is read. (A window function finding the cut in one statement cost 6x the
# total on 100-byte records: benchmarks/findings.md.)
_RANGE_SUM_SQL = f"SELECT sum({RECORD_SIZE}) FROM chunks c WHERE c.stream_id = ?1 AND c.offset >= ?2 AND c.offset < ?3"
_RANGE_SIZES_SQL = (
    f"SELECT c.offset, {RECORD_SIZE} FROM chunks c WHERE c.stream_id = ?1 AND c.offset >= ?2 AND c.offset < ?3 "
    "ORDER BY c.offset"
)
_LIST_SIZE_SQL = (  # and how many of them still exist
    f"SELECT sum({RECORD_SIZE}), count(*) FROM chunks c WHERE c.stream_id = ?1 AND c.offset IN (SELECT value FROM json_each(?2))"
)
# NULL for a record that is gone (deleted by plain SQL while pending): the claim drops it.
_LIST_SIZES_SQL = (
    f"SELECT CASE WHEN c.offset IS NULL THEN NULL ELSE {RECORD_SIZE} END "
    "FROM json_each(?2) j LEFT JOIN chunks c ON c.stream_id = ?1 AND c.offset = j.value ORDER BY j.key"
)

_CLAIM_NEW_SQL = """
INSERT INTO deliveries (subscription_id, offset, consumer, attempts, delivered_at, deadline)
SELECT ?1, offset, ?2, 1, ?3, ?4 FROM chunks WHERE stream_id = ?5 AND offset >= ?6 AND offset < ?7
"""

# Offsets travel as one JSON array parameter: bound, whatever their number.
_IN_OFFSETS = "offset IN (SELECT value FROM json_each(?))"

# redrive's pages: the next letters' sizes (RECORD_SIZE: no value is read).
_PAGE_SIZES_SQL = (
    f"SELECT c.offset, {RECORD_SIZE} FROM chunks c WHERE c.stream_id = ? AND c.offset >= ? ORDER BY c.offset LIMIT 500"
)
COPY_PAGE_BYTES = 4 * 1024 * 1024
"""The most bytes of records (value, key, headers) a redrive, or a move to the
dead-letter stream, holds at once (one record larger than that comes alone)."""

_RECORDS_BY_OFFSET_SQL = record_sql(f"WHERE stream_id = ? AND {_IN_OFFSETS} ORDER BY offset")
_RECORDS_RANGE_SQL = record_sql("WHERE stream_id = ? AND offset >= ? AND offset < ? ORDER BY offset")




DEFAULT_FETCH_BYTES = 64 * 1024 * 1024
"""``fetch``'s default byte budget: the records of one claim hold at most this many bytes
of payload, key and headers (or are one record larger than that); four records of the
largest size an append takes by default (``max_record_bytes``, 16 MiB)."""


class _Budget:
    """A claim's byte budget (``fetch(max_bytes=...)``), spent in claim order.

    The first record is always taken, so a record larger than the budget is delivered
    alone instead of wedging the subscription; after it a record is taken only while
    the total stays within ``max_bytes``, and the first one refused ends the claim
    (``full``): nothing later in claim order is taken. So a budgeted claim takes exactly
    what the same claim with a smaller ``max_records`` would, and the records it leaves
    are the next claim's, in the same order. Sizes are :data:`RECORD_SIZE`, measured in
    SQL before any value is read; ``None``: no budget.
    """

    __slots__ = ("left", "taken", "full")

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes
        self.taken = 0
        self.full = False

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes on the next record in claim order; False: the claim ends."""
        if self.full:
            return False
        if self.left is not None:
            if self.taken and size > self.left:
                self.full = True
                return False
            self.left -= size
        self.taken += 1
        return True

    def _take_all(self, count: int, total: int | None) -> bool:
        """Take ``count`` records of ``total`` bytes at once if they all fit (then every
        running total fits too, so this is what taking them one by one would do)."""
        if self.left is not None:
            if total is not None and total > self.left:
                return False
            self.left -= total or 0
        self.taken += count
        return True

    def _range_size(self, conn: apsw.Connection, params: tuple[int, int, int]) -> int | None:
        total = _q(conn, RANGE_SIZE_SQL, params)[0][0]
        if total is None:  # the range's first or last record is missing: add them up
            total = _q(conn, _RANGE_SUM_SQL, params)[0][0]
        return None if total is None else int(total)

    def take_range(self, conn: apsw.Connection, stream_id: int, start: int, count: int) -> int:
        """How many of the new records ``[start, start + count)``, in order, the budget takes."""
        if self.full or not count:
            return 0
        params = (stream_id, start, start + count)
        if self.left is None or self._take_all(count, self._range_size(conn, params)):
            return count
        end = start
        sizes = conn.execute(_RANGE_SIZES_SQL, params)
        try:
            for offset, size in sizes:
                if not self.take(size):
                    break  # no size past the cut is computed
                end = offset + 1
        finally:
            sizes.close()
        return end - start

    def take_list(self, conn: apsw.Connection, stream_id: int, offsets: list[int], *, last: bool = False) -> list[int]:
        """The longest prefix of ``offsets`` (in claim order) the budget takes; ``last``:
        nothing is taken after them (so what is left of the budget need not be exact)."""
        if self.full or not offsets:
            return []
        if self.left is None:
            self.taken += len(offsets)
            return offsets
        # Records of a key-ordered scan lie close together: the size of the range they
        # span, when it fits, settles it for all of them at the cost of two seeks (an
        # upper bound: it counts the records between them too).
        low, high = min(offsets), max(offsets) + 1
        if last and high - low <= 2 * len(offsets):
            span = self._range_size(conn, (stream_id, low, high))
            if span is not None and span <= self.left:
                self.full = True  # not exact any more: nothing may be taken after this
                return offsets
        doc = json.dumps(offsets)
        total, present = _q(conn, _LIST_SIZE_SQL, (stream_id, doc))[0]
        if self._take_all(present, total):  # records that are gone count for nothing
            return offsets
        count = 0
        sizes = conn.execute(_LIST_SIZES_SQL, (stream_id, doc))
        try:
            for (size,) in sizes:
                # A record that is gone is passed on (the claim drops it) but is not the
                # claim's first record: the first one delivered is always taken.
                if size is not None and not self.take(size):
                    break
                count += 1
        finally:
            sizes.close()
        return offsets[:count]


class _Unset:
    """The type of :data:`UNSET`: "leave this setting as it is" in ``Subscription.configure``."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


class AckResult(NamedTuple):
    """What an ``ack``/``nack``/``extend`` call did, offset by offset.

    ``applied``: offsets that were pending and were acked (nacked, extended).
    ``ignored``: offsets that were not pending — never delivered, already acked, or
    already dead-lettered; they change nothing and raise nothing.
    ``dead_lettered``: (nack only) the subset of ``applied`` that had used up
    ``max_deliveries`` and went to the dead-letter stream.
    """

    applied: tuple[int, ...]
    ignored: tuple[int, ...]
    dead_lettered: tuple[int, ...] = ()


class Batch(list[Record]):
    """The records one ``fetch`` claimed, in offset order (a list of :class:`Record`).

    ``attempts`` maps each offset to its delivery count (1 on first delivery);
    ``offsets`` lists them, ready for ``sub.ack(*batch.offsets)``.
    """

    def __init__(
        self, records: Iterable[Record] = (), *, subscription: str = "", consumer: str = "",
        attempts: dict[int, int] | None = None,
    ) -> None:
        super().__init__(records)
        self.skipped = 0  # damaged records this claim set aside (see Subscription._set_aside)
        self.subscription = subscription
        self.consumer = consumer
        self.attempts: dict[int, int] = attempts if attempts is not None else {}

    @property
    def offsets(self) -> list[int]:
        return [r.offset for r in self]

    def __repr__(self) -> str:
        return f"<Batch {self.subscription!r} consumer={self.consumer!r} offsets={self.offsets}>"


class PendingEntry(NamedTuple):
    """One delivered, unacked record of a subscription.

    ``consumer`` is None once the record was nacked (it waits for redelivery at
    ``deadline``). ``idle`` is seconds since its last delivery; ``expired`` means its
    deadline has passed, so the next fetch by any consumer may claim it.
    """

    offset: int
    consumer: str | None
    attempts: int
    delivered_at: float
    deadline: float
    idle: float
    expired: bool
    last_error: str | None


@dataclass(frozen=True)
class SubscriptionInfo:
    """A consistent snapshot of a subscription's settings and progress.

    ``lag``: every record of the stream not delivered yet, those waiting behind their key
    (``waiting``) included; ``lag == 0 and pending == 0`` means everything retained was
    delivered and acked. ``pending``: delivered, not acked
    (``expired`` of them are past their deadline). ``acked_frontier``: every offset below
    it was acked or dead-lettered. ``consumers``: pending records per consumer holding
    them (nacked records, held by nobody, are not counted there). ``dead_lettered``:
    records moved to the dead-letter stream, plus damaged records set aside by ``fetch``.
    ``ordering``: ``"key"`` or ``"none"``. ``waiting``: (key order) records taken past the
    frontier that wait for an earlier record of their key; not delivered, so counted in
    ``lag`` and not in ``pending``, and counted against ``max_unacked``.
    """

    name: str
    stream: str
    start_offset: int
    next_offset: int
    ack_timeout: float
    max_unacked: int
    max_deliveries: int | None
    dead_letter: str | None
    created_at: float
    lag: int
    pending: int
    expired: int
    acked: int
    dead_lettered: int
    acked_frontier: int
    consumers: dict[str, int] = field(default_factory=dict)
    ordering: str = "none"
    waiting: int = 0


class Subscription:
    """A handle to one subscription. Light and thread-safe; all state lives in the file.

    A handle is bound to the subscription it was made for: after that subscription is
    deleted (even if another is created under the same name) every call raises
    ``SubscriptionNotFound``.
    """

    __slots__ = (
        "db", "name", "stream", "ack_timeout", "max_unacked", "max_deliveries", "dead_letter",
        "start_offset", "ordering", "_id",
    )

    def __init__(self, db: Database, row: tuple[Any, ...]) -> None:
        (self._id, self.name, self.stream, self.ack_timeout, self.max_unacked, self.max_deliveries,
         self.dead_letter, self.start_offset, _created, self.ordering) = row
        self.db = db

    def __repr__(self) -> str:
        return f"<sqlstream.Subscription {self.name!r} on {self.stream!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subscription) and other.db is self.db and other._id == self._id

    def __hash__(self) -> int:
        return hash((id(self.db), self._id))

    def _missing(self) -> SubscriptionNotFound:
        return SubscriptionNotFound(
            f"subscription {self.name!r} no longer exists (deleted, or its stream was)",
            hint="create it again with db.create_subscription()",
        )

    # ----------------------------------------------------------------- delivery

    def fetch(
        self,
        consumer: str,
        max_records: int = 100,
        timeout: float | None = 0,
        *,
        max_bytes: int | None = DEFAULT_FETCH_BYTES,
        stop: Callable[[], bool] | None = None,
    ) -> Batch:
        """Claim up to ``max_records`` records for ``consumer`` and return them in offset order.

        Atomically, in one write transaction: records whose ack deadline has passed are
        claimed first (redelivery: attempts + 1; those that already had
        ``max_deliveries`` attempts go to the dead-letter stream instead), then new
        records in offset order, as long as the subscription's pending records stay
        within ``max_unacked``. Each claimed record's deadline becomes now +
        ``ack_timeout``. No record is ever held by two consumers at once.

        ``timeout``: 0 never blocks (may return an empty batch); otherwise waits until a
        record can be claimed — woken by appends, acks and nacks from any process and by
        the next ack deadline — or the timeout passes (empty batch). Inside
        ``db.transaction()`` only ``timeout=0`` may find nothing (else
        ``InvalidArgument``); there the claim commits with the transaction.
        A damaged record (stored text that is not UTF-8, JSON that does not parse) is never
        delivered and never blocks the subscription: the claim moves it to the dead-letter
        stream as a bytes record, or skips it when there is none; both count in
        ``dead_lettered`` and are logged.
        ``max_bytes``: the claim's byte budget (Kafka's ``fetch.max.bytes``), so one claim
        holds bounded memory whatever the records' sizes: records are claimed in the order
        above while their sizes (stored payload plus key and headers, in bytes) add up to
        at most ``max_bytes``, and the first record always (a larger one comes alone,
        never wedging the subscription). The claim stops at the first record that does
        not fit: it stays unclaimed (neither pending nor delivered) and is the next
        claim's, in the same order, so budgeted claims deliver exactly the sequence
        unbounded ones would. Sizes are measured in SQL, so no value beyond the budget is
        read. ``None``: only ``max_records`` bounds the claim.
        ``stop``: a blocked fetch also ends, with an empty batch, once ``stop()`` is true
        (checked at every wake-up; a consumer's graceful stop uses it).
        Raises ``SubscriptionNotFound``, ``InvalidName``, ``InvalidArgument``.
        """
        check_name(consumer, "consumer")
        check_count(max_records, "max_records")
        check_limit(max_bytes, "max_bytes")
        return self._fetch(consumer, max_records, check_timeout(timeout), stop, max_bytes)

    def _fetch(
        self, consumer: str, max_records: int, timeout: float | None, stop: Callable[[], bool] | None,
        max_bytes: int | None = DEFAULT_FETCH_BYTES,
    ) -> Batch:
        """``fetch`` that also ends (with an empty batch) once ``stop()`` is true."""
        db = self.db
        next_deadline: list[int | None] = [None]

        def check(probe: bool = True) -> Batch | None:
            if stop is not None and stop():
                return Batch(subscription=self.name, consumer=consumer)
            if probe and not db.in_transaction():
                # A read-only look first: waiters woken by every commit to the file must
                # not each take the write lock just to find nothing to claim.
                claimable, next_deadline[0] = self.probe()
                if not claimable:
                    return None
            batch = self._claim(consumer, max_records, max_bytes)
            while not batch and batch.skipped:
                # Every record claimed was damaged and set aside: claim the next ones.
                batch = self._claim(consumer, max_records, max_bytes)
            return batch if batch else None

        def wake_at() -> float | None:
            return self.wake_time(next_deadline[0])

        timeout = check_timeout(timeout)
        # First a claim straight away (most fetches find records), then wait: starting to
        # wait (the watcher thread) costs more than a claim.
        got = check(probe=False)
        if got is None and timeout != 0:
            got = db.engine.wait_until(check, timeout, wake_at=wake_at)
        return got if got is not None else Batch(subscription=self.name, consumer=consumer)

    def wait(self, timeout: float | None) -> bool:
        """Wait until a ``fetch`` could claim something; True if it could, False on timeout.

        Read-only: takes no lock and claims nothing, so it is the way to wait in the
        exactly-once pattern — wait first, then open the transaction and
        ``fetch(timeout=0)`` inside it (a blocking fetch inside a transaction is refused:
        it would hold the write lock that the commit it waits for needs). Something is
        claimable when a new record is within ``max_unacked``, a pending record's ack
        deadline has passed, or (key order) a waiting record's key became free. Woken
        like ``fetch``: by appends, acks and nacks from any process and by the next ack
        deadline. Another consumer may still claim first, so the fetch after it may find
        nothing: loop. ``timeout`` (required, as waiting is the point): 0 looks once, a
        positive number waits at most that long, None waits without limit.
        Refused inside ``db.transaction()`` unless it finds something at once
        (``InvalidArgument``). Raises ``SubscriptionNotFound``.
        """
        timeout = check_timeout(timeout)
        next_deadline: list[int | None] = [None]

        def check() -> bool | None:
            claimable, next_deadline[0] = self.probe()
            return True if claimable else None

        return bool(self.db.engine.wait_until(check, timeout, wake_at=lambda: self.wake_time(next_deadline[0])))

    def wake_time(self, deadline: int | None) -> float | None:
        """The monotonic time at which to look again for the ack ``deadline`` (µs since the
        epoch, from :meth:`probe`), or None. For waiters of their own (``sqlstream.aio``)."""
        if deadline is None:
            return None
        # Deadlines are wall-clock µs (the database's clock); waiters sleep on the monotonic clock.
        return time.monotonic() + max(0.001, deadline / 1e6 - self.db.engine.clock())

    def probe(self) -> tuple[bool, int | None]:
        """A read-only look, no claim: (whether a fetch could return something now, the
        earliest pending deadline in µs since the epoch, or None).

        For waiters of their own (``sqlstream.aio``): when to look again without a commit.
        """
        with self.db.engine.snapshot() as conn:
            rows = _q(conn, _PROBE_SQL, (self._id,))
        if not rows:
            raise self._missing()
        frontier, first, nxt, max_unacked, pending, earliest, releasable = rows[0]
        if earliest is not None and earliest <= _us(self.db.engine.clock()):
            return True, earliest
        if releasable:
            return True, earliest
        return (max(frontier, first) < nxt and pending < max_unacked), earliest

    def _claim(self, consumer: str, max_records: int, max_bytes: int | None) -> Batch:
        db = self.db
        budget = _Budget(max_bytes)
        with db.engine.write(wakes=False) as conn:
            rows = _q(conn, _CLAIM_STATE_SQL, (self._id,))
            if not rows:
                raise self._missing()
            (stream_id, ack_timeout, max_unacked, max_deliveries, dead_letter, frontier, first, nxt,
             ordering) = rows[0]
            now = _us(db.engine.clock())
            if max_deliveries is not None:
                self._dead_letter_exhausted(conn, stream_id, dead_letter, max_deliveries, now)
            # min(): a subscription created before ack_timeout was capped must not make
            # the deadline overflow SQLite's integers (every fetch would fail).
            deadline = now + _us(min(ack_timeout, MAX_SECONDS))
            due = budget.take_list(conn, stream_id, [r[0] for r in _q(conn, _DUE_SQL, (self._id, now, max_records))])
            attempts: dict[int, int] = dict(
                _q(conn, _REDELIVER_SQL, (consumer, now, deadline, self._id, json.dumps(due)))
            ) if due else {}
            again = sorted(attempts)
            pending = _q(conn,
                "SELECT count(*) FROM deliveries WHERE subscription_id = ?", (self._id,)
            )[0][0]
            start = max(frontier, first)  # records below `first` were trimmed by retention
            if ordering == "key":
                # Redelivered records are each the one delivered record of their key, so
                # they keep key order; released and new records join them.
                released, taken, end = self._claim_keyed(
                    conn, stream_id, consumer, now, deadline, max_records - len(again),
                    max_unacked - pending, start, nxt, budget,
                )
                for offset in released + taken:
                    attempts[offset] = 1
                again = sorted(attempts)
                count = 0
            else:
                count = max(0, min(max_records - len(again), max_unacked - pending, nxt - start))
                count = budget.take_range(conn, stream_id, start, count)
                if count:
                    conn.execute(_CLAIM_NEW_SQL, (self._id, consumer, now, deadline, stream_id, start, start + count))
                end = start + count
            if end != frontier:
                conn.execute("UPDATE subscriptions SET next_offset = ? WHERE id = ?", (end, self._id))
            records: list[Record] = []
            damaged: list[Damaged] = []
            if again:
                records, damaged = read_records(conn, self.stream, _RECORDS_BY_OFFSET_SQL, (stream_id, json.dumps(again)))
                if len(records) + len(damaged) < len(again):
                    # Trimmed by retention while pending: nothing left to deliver.
                    gone = sorted(set(again) - {r.offset for r in records} - {d.offset for d in damaged})
                    conn.execute(
                        f"DELETE FROM deliveries WHERE subscription_id = ? AND {_IN_OFFSETS}",
                        (self._id, json.dumps(gone)),
                    )
                    for offset in gone:
                        del attempts[offset]
            if count:
                fresh, bad = read_records(conn, self.stream, _RECORDS_RANGE_SQL, (stream_id, start, start + count))
                records += fresh
                damaged += bad
                for r in fresh:
                    attempts[r.offset] = 1
            if damaged:
                self._set_aside(conn, stream_id, dead_letter, damaged, attempts)
        batch = Batch(records, subscription=self.name, consumer=consumer, attempts=attempts)
        batch.skipped = len(damaged)
        return batch

    def _dead_letter_exhausted(
        self, conn: apsw.Connection, stream_id: int, dead_letter: str | None, max_deliveries: int, now: int
    ) -> None:
        """Dead-letter the expired pending records that already had ``max_deliveries`` attempts."""
        exhausted = _q(conn,
            "SELECT offset, attempts, last_error FROM deliveries "
            "WHERE subscription_id = ? AND deadline <= ? AND attempts >= ? AND waiting = 0 ORDER BY offset",
            (self._id, now, max_deliveries),
        )
        if exhausted:
            self._dead_letter(conn, stream_id, dead_letter, exhausted)

    def _claim_keyed(
        self, conn: apsw.Connection, stream_id: int, consumer: str, now: int, deadline: int,
        want: int, room: int, start: int, nxt: int, budget: _Budget,
    ) -> tuple[list[int], list[int], int]:
        """The key-ordered part of a claim: (released offsets, new offsets, new frontier).

        ``want``: records still to deliver; ``room``: rows the subscription may still add
        under ``max_unacked``. First the oldest waiting record of every key that has no
        delivered record left (oldest first), then new records from ``start``: a record
        whose key already has a row, or was met earlier in this scan, becomes a waiting
        row; the others are delivered. Waiting rows count toward ``max_unacked``, which so
        also bounds how far delivery runs ahead of a busy key. ``budget`` is spent on
        released and delivered records (waiting ones are not read); the first record it
        refuses ends the scan right after the last record delivered, as ``want`` would
        have, so the records after it (waiting ones too) are the next claim's.
        """
        released: list[int] = []
        if want > 0:
            released = budget.take_list(conn, stream_id, [r[0] for r in _q(conn, _RELEASABLE_SQL, (self._id, want))])
            if released:
                conn.execute(_RELEASE_SQL, (consumer, now, deadline, self._id, json.dumps(released)))
        want -= len(released)
        deliver: list[int] = []
        wait: list[int] = []
        seen: set[bytes] = set()
        pos = start
        while not budget.full and pos < nxt and want > len(deliver) and room > len(deliver) + len(wait):
            # A page at a time: a hot key may make many records wait before `want` are found.
            end = min(nxt, pos + min(room - len(deliver) - len(wait), max(64, 2 * want)))
            for offset, key, busy in _q(conn, _SCAN_SQL, (self._id, stream_id, pos, end)):
                if key is None:
                    deliver.append(offset)  # records without a key are unordered
                else:
                    (wait if busy or key in seen else deliver).append(offset)
                    seen.add(key)
                pos = offset + 1
                if len(deliver) >= want or len(deliver) + len(wait) >= room:
                    break
            else:
                pos = end
        taken = budget.take_list(conn, stream_id, deliver, last=True)
        if len(taken) < len(deliver):
            # The budget ends the claim before deliver[len(taken)]: the scan ends after the
            # last record it delivers, as a smaller `want` would have ended it, and the
            # records after that (waiting ones too) are the next claim's.
            deliver = taken
            pos = deliver[-1] + 1 if deliver else start
            wait = [w for w in wait if w < pos]
        if deliver:
            conn.execute(_INSERT_KEYED_SQL, (self._id, consumer, now, deadline, 0, stream_id, json.dumps(deliver)))
        if wait:
            conn.execute(_INSERT_KEYED_SQL, (self._id, None, now, _NEVER, 1, stream_id, json.dumps(wait)))
        return released, deliver, pos

    def _set_aside(
        self, conn: apsw.Connection, stream_id: int, dead_letter: str | None, damaged: list[Damaged],
        attempts: dict[int, int],
    ) -> None:
        """Take damaged records out of delivery, inside the claim's transaction.

        A record that cannot be decoded can never be processed, and failing the claim
        would fail every later one too: the subscription would be stuck on it for good.
        So it goes to the dead-letter stream (its stored bytes as a bytes record) when the
        subscription has one, else it is skipped; either way it counts in
        ``dead_lettered`` and is logged with its stream and offset.
        """
        for d in damaged:
            _log.warning(
                "subscription %r %s damaged record %d of stream %r (%s)", self.name,
                "dead-letters" if dead_letter else "skips", d.offset, self.stream, d.reason,
            )
        entries = [(d.offset, attempts.pop(d.offset, 1), f"damaged record: {d.reason}") for d in damaged]
        self._dead_letter(conn, stream_id, dead_letter, entries)

    def _dead_letter(
        self, conn: apsw.Connection, stream_id: int, dead_letter: str | None, entries: list[tuple[Any, ...]]
    ) -> None:
        """Move pending records (offset, attempts, last_error) to the dead-letter stream.

        Runs inside the caller's transaction. The dead-letter stream is created here if
        it does not exist (any more); a sealed or secret one is an error that leaves
        everything as it was. With ``dead_letter`` None (damaged records of a
        subscription without one) the records are only taken out of delivery.
        """
        db = self.db
        offsets = sorted(e[0] for e in entries)
        info = {e[0]: (e[1], e[2]) for e in entries}
        doc = json.dumps(offsets)
        if dead_letter is None:
            moved = _q(conn, f"SELECT count(*) FROM chunks WHERE stream_id = ? AND {_IN_OFFSETS}", (stream_id, doc))[0][0]
        else:
            moved = 0
            # A page at a time (COPY_PAGE_BYTES, the first record always), each appended
            # before the next is read: what is held is bounded, however many records.
            sizes = [size or 0 for (size,) in _q(conn, _LIST_SIZES_SQL, (stream_id, doc))]  # None: gone
            start = 0
            while start < len(offsets):
                end, total = start + 1, sizes[start]
                while end < len(offsets) and total + sizes[end] <= COPY_PAGE_BYTES:
                    total += sizes[end]
                    end += 1
                moved += self._dead_letter_page(conn, stream_id, dead_letter, offsets[start:end], info, moved == 0)
                start = end
        conn.execute(f"DELETE FROM deliveries WHERE subscription_id = ? AND {_IN_OFFSETS}", (self._id, doc))
        conn.execute("UPDATE subscriptions SET dead_lettered = dead_lettered + ? WHERE id = ?", (moved, self._id))

    def _dead_letter_page(
        self, conn: apsw.Connection, stream_id: int, dead_letter: str, offsets: list[int],
        info: dict[int, tuple[int, str | None]], first: bool,
    ) -> int:
        """Copy the records ``offsets`` still has to ``dead_letter`` (``first``: the
        first page with records, which creates the stream if needed); how many."""
        db = self.db
        rows = _q(conn,
            "SELECT offset, CAST(key AS BLOB), CAST(headers AS BLOB), content_type, CAST(data AS BLOB) "
            f"FROM records WHERE stream_id = ? AND {_IN_OFFSETS} ORDER BY offset",
            (stream_id, json.dumps(offsets)),
        )
        prepared: list[PreparedRecord] = []
        for offset, raw_key, raw_headers, ctype, raw in rows:
            attempts, last_error = info[offset]
            if raw is None:  # its payloads row is gone (foreign SQL): the copy has no value left
                raw = b""
            # Undecoded above, so a damaged record moves too: as its stored bytes.
            key, meta, data = salvage(raw_key, raw_headers, ctype, raw)
            if not isinstance(data, str) and ctype != "bytes":
                ctype = "bytes"
            meta.update({
                "sqlstream.source_stream": self.stream,
                "sqlstream.source_offset": str(offset),
                "sqlstream.subscription": self.name,
                "sqlstream.attempts": str(attempts),
            })
            if last_error is not None:
                meta["sqlstream.last_error"] = last_error
            prepared.append((key, encode_headers(meta), ctype, data, len(raw)))
        if not prepared:
            return 0
        if first and not _q(conn, "SELECT 1 FROM streams WHERE name = ?", (dead_letter,)):
            db.create_stream(dead_letter)
        try:
            db.engine.append_rows(dead_letter, None, prepared, None)
        except (StreamSealed, AccessDenied) as exc:
            shown = f"{offsets}" if len(offsets) <= 10 else f"{offsets[:10]} and {len(offsets) - 10} more"
            raise type(exc)(
                f"subscription {self.name!r} cannot dead-letter offsets {shown} to stream "
                f"{dead_letter!r}: {exc.args[0]}",
                hint=f"delete stream {dead_letter!r} (it is re-created on demand) or the subscription",
            ) from exc
        return len(prepared)

    def ack(self, *offsets: int, attempts: Mapping[int, int] | None = None) -> AckResult:
        """Acknowledge records: they leave the pending list and are never redelivered.

        Atomic (one transaction, or part of the caller's ``db.transaction()``). Offsets
        that are not pending (never delivered, acked before, dead-lettered) are ignored
        and reported in ``AckResult.ignored``; they never make the call fail. An ack is
        accepted from any consumer, also after the record's deadline has passed (the
        work was done; a redelivery already under way is then acked too — at least once).
        Wakes fetches waiting for room under ``max_unacked``.

        ``attempts`` (fencing; pass ``batch.attempts``): acks only the delivery that
        batch received. If any offset is no longer pending with that attempt count —
        delivered again since (its ack deadline passed, or a consumer that came back
        under the same name took it back, see :meth:`rejoin`) or already acked — nothing
        is acked and ``ConcurrencyError`` is raised, so a transaction that wrote the
        batch's output rolls back with it: a late ack of an old delivery never commits
        output a newer delivery produces too.
        Raises ``SubscriptionNotFound``, ``InvalidArgument`` (not an offset),
        ``ConcurrencyError`` (fenced).
        """
        wanted = check_offsets(offsets)
        fence = _check_attempts(attempts, wanted)
        if not wanted:
            return AckResult((), ())
        db = self.db
        with db.engine.write() as conn:
            self._check_exists(conn)
            if fence is not None:
                current = dict(_q(conn,
                    f"SELECT offset, attempts FROM deliveries WHERE subscription_id = ? AND waiting = 0 "
                    f"AND {_IN_OFFSETS}", (self._id, json.dumps(wanted)),
                ))
                stale = [o for o in wanted if current.get(o) != fence[o]]
                if stale:
                    raise ConcurrencyError(
                        f"subscription {self.name!r}: offsets {show(stale[:10])} are no longer pending as "
                        f"delivered (attempt {fence[stale[0]]}); acked, or delivered again since",
                        hint="this delivery's work must not count: roll it back (an ack inside "
                        "db.transaction() does so by raising)",
                    )
            done = {
                r[0] for r in _q(conn,
                    f"DELETE FROM deliveries WHERE subscription_id = ? AND waiting = 0 AND {_IN_OFFSETS} RETURNING offset",
                    (self._id, json.dumps(wanted)),
                )
            }
            if done:
                conn.execute("UPDATE subscriptions SET acked = acked + ? WHERE id = ?", (len(done), self._id))
        return _result(wanted, done)

    def rejoin(self, consumer: str) -> int:
        """A consumer coming back under its name takes back, at once, what it held.

        Every record ``consumer`` holds (delivered, not acked — by an earlier incarnation
        that crashed or was killed) becomes claimable now instead of at its ack deadline:
        the next fetch (normally the returning consumer's own first one) redelivers it
        with attempts + 1, which fences the old delivery (see ``ack(attempts=...)``).
        ``Consumer`` and ``sqlstream.aio``'s consumer call this when they start. Only
        for a name one consumer uses at a time: a live consumer under the same name
        loses its records this way. Atomic; wakes waiting fetches. Returns how many.
        Raises ``InvalidName``, ``SubscriptionNotFound``.
        """
        check_name(consumer, "consumer")
        db = self.db
        with db.engine.write() as conn:
            self._check_exists(conn)
            taken = _q(conn,
                "UPDATE deliveries SET consumer = NULL, deadline = ? "
                "WHERE subscription_id = ? AND consumer = ? AND waiting = 0 RETURNING offset",
                (_us(db.engine.clock()), self._id, consumer),
            )
        if taken:
            _log.info("subscription %s: consumer %s came back; %d records it held are claimable again",
                      self.name, consumer, len(taken))
        return len(taken)

    def nack(self, *offsets: int, delay: float = 0.0, error: str | None = None) -> AckResult:
        """Give records back for redelivery after ``delay`` seconds (0: right away).

        A nacked record is held by nobody until a fetch claims it again. A record that has
        already been delivered ``max_deliveries`` times goes to the dead-letter stream now
        instead (``AckResult.dead_lettered``); ``error`` is kept as its last error and
        named in the dead letter's headers. Unknown offsets are ignored, as for ``ack``.
        Atomic; wakes waiting fetches. Raises ``SubscriptionNotFound``, ``InvalidArgument``,
        and ``StreamSealed``/``AccessDenied`` if the dead-letter stream cannot take appends.
        """
        wanted = check_offsets(offsets)
        delay = check_seconds(delay, "delay", positive=False)
        error = clean_text(error, "error")
        if not wanted:
            return AckResult((), ())
        db = self.db
        with db.engine.write() as conn:
            rows = _q(conn, _CLAIM_STATE_SQL, (self._id,))
            if not rows:
                raise self._missing()
            stream_id, _, _, max_deliveries, dead_letter = rows[0][:5]
            param = json.dumps(wanted)
            done = {
                r[0] for r in _q(conn,
                    f"UPDATE deliveries SET consumer = NULL, deadline = ?, last_error = coalesce(?, last_error) "
                    f"WHERE subscription_id = ? AND waiting = 0 AND {_IN_OFFSETS} RETURNING offset",
                    (_us(db.engine.clock() + delay), error, self._id, param),
                )
            }
            dead: list[int] = []
            if max_deliveries is not None and done:
                exhausted = _q(conn,
                    f"SELECT offset, attempts, last_error FROM deliveries WHERE subscription_id = ? "
                    f"AND attempts >= ? AND {_IN_OFFSETS} ORDER BY offset",
                    (self._id, max_deliveries, param),
                )
                if exhausted:
                    self._dead_letter(conn, stream_id, dead_letter, exhausted)
                    dead = [e[0] for e in exhausted]
        result = _result(wanted, done)
        return result._replace(dead_lettered=tuple(dead))

    def extend(self, *offsets: int, seconds: float) -> AckResult:
        """Deprecated name of :meth:`extend_deadline` (removed in 0.2).

        Renamed because ``Stream.extend`` appends a batch; this pushes deadlines.
        """
        warnings.warn(
            "Subscription.extend() is deprecated (removed in 0.2); use extend_deadline()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.extend_deadline(*offsets, seconds=seconds)

    def extend_deadline(self, *offsets: int, seconds: float) -> AckResult:
        """Push the ack deadline of held records to ``seconds`` from now (for long work).

        Applies to pending records that a consumer holds (not to nacked ones); others are
        ignored and reported. Atomic. Raises ``SubscriptionNotFound``, ``InvalidArgument``.
        """
        wanted = check_offsets(offsets)
        seconds = check_seconds(seconds, "seconds", positive=True)
        if not wanted:
            return AckResult((), ())
        db = self.db
        with db.engine.write() as conn:
            self._check_exists(conn)
            done = {
                r[0] for r in _q(conn,
                    f"UPDATE deliveries SET deadline = ? WHERE subscription_id = ? AND consumer IS NOT NULL "
                    f"AND {_IN_OFFSETS} RETURNING offset",
                    (_us(db.engine.clock() + seconds), self._id, json.dumps(wanted)),
                )
            }
        return _result(wanted, done)

    # ----------------------------------------------------------------- position, settings

    def seek(self, position: int | _dt.datetime | None = None, *, at: float | _dt.datetime | None = None) -> int:
        """Move the delivery frontier: the next new record delivered is at the new position.

        ``position``: an offset (``first_offset`` .. ``next_offset`` of the stream), or a
        ``datetime``; ``at``: a time (seconds since the epoch or a ``datetime``) — the
        position becomes the first record appended at or after it. Returns the new position.

        What happens to pending deliveries (the Redis ``XGROUP SETID`` question): records
        *before* the new position keep their state — still pending, still ackable, still
        redelivered on expiry, like Redis's pending list; pending records *at or after* it
        are dropped from the pending list (their acks are then ignored) because the
        subscription will deliver them again from the new position. Under key order,
        waiting records (never delivered) are dropped wherever they are: those from the
        new position on are taken again as the frontier reaches them, those before it are
        skipped, as a seek forward intends. Atomic; wakes waiting fetches.
        Raises ``OffsetOutOfRange``, ``InvalidArgument``, ``SubscriptionNotFound``.
        """
        if isinstance(position, _dt.datetime) and at is None:
            position, at = None, position
        if (position is None) == (at is None):
            raise InvalidArgument(
                "seek takes an offset or at= (a time), exactly one of them",
                hint="sub.seek(120) or sub.seek(at=time.time() - 3600)",
                cli_hint="sqlstream seek SUBSCRIPTION 120, or sqlstream seek SUBSCRIPTION --at 2026-01-01T00:00:00",
            )
        offset: int | None = None
        if position is not None:
            offset = check_offset(position, "position")
        else:
            timestamp_us(at, "at")
        with self.db.engine.write() as conn:
            target = self._position(conn, offset, at)
            return self._move(conn, target)

    def reset(self, where: str = "earliest") -> int:
        """Seek to the stream's first retained record (``"earliest"``) or its end (``"latest"``).

        Pending deliveries as for :meth:`seek` (``"latest"`` keeps them all). Returns the
        new position. Raises ``InvalidArgument``, ``SubscriptionNotFound``.
        """
        if not (isinstance(where, str) and where in ("earliest", "latest")):
            raise InvalidArgument(
                f"reset takes 'earliest' or 'latest', not {show(where)}", hint="use seek() for an offset",
                cli_hint="use `sqlstream seek SUBSCRIPTION OFFSET` for an offset"
            )
        with self.db.engine.write() as conn:
            _, _, first, nxt = self._stream_state(conn)
            return self._move(conn, first if where == "earliest" else nxt)

    def _stream_state(self, conn: apsw.Connection) -> tuple[int, int, int, int]:
        """(stream id, subscription frontier, stream first_offset, stream next_offset)."""
        rows = _q(conn,
            "SELECT st.id, s.next_offset, st.first_offset, st.next_offset "
            "FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id WHERE s.id = ?",
            (self._id,),
        )
        if not rows:
            raise self._missing()
        return rows[0]

    def _position(self, conn: apsw.Connection, position: int | None, at: float | _dt.datetime | None) -> int:
        _, _, first, nxt = self._stream_state(conn)
        if position is None:
            assert at is not None
            return max(first, self.db.stream(self.stream).read_at(at))
        if not first <= position <= nxt:
            raise OffsetOutOfRange(
                f"position {position} is outside stream {self.stream!r} (offsets {first}..{nxt})",
                hint="use reset('earliest'), reset('latest') or a retained offset",
            )
        return position

    def _move(self, conn: apsw.Connection, target: int) -> int:
        dropped = _q(conn,
            "DELETE FROM deliveries WHERE subscription_id = ? AND (offset >= ? OR waiting = 1) RETURNING waiting",
            (self._id, target),
        )
        conn.execute("UPDATE subscriptions SET next_offset = ? WHERE id = ?", (target, self._id))
        if dropped:
            _log.info(
                "subscription %r moved to offset %d: dropped %d pending and %d waiting record(s)",
                self.name, target, sum(1 for (w,) in dropped if not w), sum(1 for (w,) in dropped if w),
            )
        return target

    def configure(
        self,
        *,
        ack_timeout: float | _Unset = UNSET,
        max_unacked: int | _Unset = UNSET,
        max_deliveries: int | None | _Unset = UNSET,
        dead_letter: str | None | _Unset = UNSET,
    ) -> SubscriptionInfo:
        """Change settings after creation; settings not passed stay as they are.

        Rules as for ``create_subscription`` (``max_deliveries`` and ``dead_letter`` go
        together: pass both, or None for both to stop dead-lettering). A new
        ``ack_timeout`` applies from the next delivery (deadlines already set stand); a
        lower ``max_unacked`` never takes back delivered records, it only holds new ones
        until the pending count drops below it; a new ``max_deliveries`` applies to the
        next expiry or nack of every pending record. Atomic; returns the new
        :class:`SubscriptionInfo` (this handle's attributes are updated too).
        Raises ``InvalidArgument``, ``InvalidName``, ``SubscriptionNotFound``.
        """
        changes: dict[str, Any] = {}
        if not isinstance(ack_timeout, _Unset):
            changes["ack_timeout"] = check_seconds(ack_timeout, "ack_timeout", positive=True)
        if not isinstance(max_unacked, _Unset):
            changes["max_unacked"] = check_count(max_unacked, "max_unacked")
        if not isinstance(max_deliveries, _Unset):
            changes["max_deliveries"] = check_count(max_deliveries, "max_deliveries", optional=True)
        if not isinstance(dead_letter, _Unset):
            if dead_letter is not None:
                check_name(dead_letter, "dead-letter stream")
            changes["dead_letter"] = dead_letter
        with self.db.engine.write() as conn:
            rows = _q(conn, "SELECT max_deliveries, dead_letter FROM subscriptions WHERE id = ?", (self._id,))
            if not rows:
                raise self._missing()
            merged_max = changes.get("max_deliveries", rows[0][0])
            merged_dead = changes.get("dead_letter", rows[0][1])
            if (merged_max is None) != (merged_dead is None):
                raise InvalidArgument(
                    "max_deliveries and dead_letter go together",
                    hint="pass both (or None for both to stop dead-lettering)",
                )
            if "dead_letter" in changes and merged_dead is not None:
                _check_dead_letter_stream(self.db, conn, merged_dead, self.stream)
            if changes:
                conn.execute(
                    f"UPDATE subscriptions SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                    (*changes.values(), self._id),
                )
        for attr, value in changes.items():
            setattr(self, attr, value)
        return self.info()

    # ----------------------------------------------------------------- explicit claims

    def claim(self, consumer: str, *offsets: int, min_idle: float = 0.0) -> Batch:
        """Take over pending records for ``consumer`` (Redis ``XCLAIM``), whoever holds them.

        Of ``offsets``, the records that are pending (delivered, unacked — held, nacked or
        expired) and idle (since their last delivery) at least ``min_idle`` seconds are
        delivered again to ``consumer``: attempts + 1, deadline now + ``ack_timeout``.
        Others (not pending, not idle long enough, waiting under key order) are left as
        they are and not returned. A record that already had ``max_deliveries`` attempts
        goes to the dead-letter stream instead, as on expiry. Key order is kept: a pending
        record is the one delivered record of its key. Atomic; returns the claimed records
        in offset order. Raises ``InvalidName``, ``InvalidArgument``, ``SubscriptionNotFound``.
        """
        check_name(consumer, "consumer")
        wanted = check_offsets(offsets)
        min_idle = check_seconds(min_idle, "min_idle", positive=False)
        if not wanted:
            return Batch(subscription=self.name, consumer=consumer)
        return self._take(consumer, min_idle, json.dumps(wanted), len(wanted))

    def autoclaim(self, consumer: str, *, min_idle: float = 0.0, count: int = 100,
                  max_bytes: int | None = DEFAULT_FETCH_BYTES) -> Batch:
        """Take over up to ``count`` pending records idle at least ``min_idle`` seconds
        (Redis ``XAUTOCLAIM``), lowest offsets first; otherwise as :meth:`claim`.
        ``max_bytes``: the byte budget, as :meth:`fetch`'s (the first record always;
        the claim stops before the first that does not fit, which stays as it was).

        With ``min_idle`` at least ``ack_timeout`` this claims what a consumer that died
        left behind, without waiting for a fetch. Atomic. Raises ``InvalidName``,
        ``InvalidArgument``, ``SubscriptionNotFound``.
        """
        check_name(consumer, "consumer")
        min_idle = check_seconds(min_idle, "min_idle", positive=False)
        check_count(count, "count")
        check_limit(max_bytes, "max_bytes")
        return self._take(consumer, min_idle, None, count, max_bytes)

    def _take(self, consumer: str, min_idle: float, offsets: str | None, count: int,
              max_bytes: int | None = None) -> Batch:
        """Claim pending records idle since ``min_idle`` (of the JSON list ``offsets``, or any)."""
        db = self.db
        with db.engine.write() as conn:
            rows = _q(conn, _CLAIM_STATE_SQL, (self._id,))
            if not rows:
                raise self._missing()
            stream_id, ack_timeout, _, max_deliveries, dead_letter = rows[0][:5]
            now = _us(db.engine.clock())
            idle_before = now - _us(min_idle)
            which = "?3 IS NULL" if offsets is None else "offset IN (SELECT value FROM json_each(?3))"
            found = _q(conn,
                "SELECT offset, attempts, last_error FROM deliveries WHERE subscription_id = ?1 "
                f"AND waiting = 0 AND delivered_at <= ?2 AND {which} ORDER BY offset LIMIT ?4",
                (self._id, idle_before, offsets, count),
            )
            exhausted = [f for f in found if max_deliveries is not None and f[1] >= max_deliveries]
            if exhausted:
                self._dead_letter(conn, stream_id, dead_letter, exhausted)
            taken = _Budget(max_bytes).take_list(conn, stream_id, [f[0] for f in found if f not in exhausted])
            attempts: dict[int, int] = {}
            records: list[Record] = []
            damaged: list[Damaged] = []
            if taken:
                deadline = now + _us(min(ack_timeout, MAX_SECONDS))
                attempts = dict(_q(conn,
                    "UPDATE deliveries SET consumer = ?, attempts = attempts + 1, delivered_at = ?, deadline = ? "
                    f"WHERE subscription_id = ? AND {_IN_OFFSETS} RETURNING offset, attempts",
                    (consumer, now, deadline, self._id, json.dumps(taken)),
                ))
                records, damaged = read_records(
                    conn, self.stream, _RECORDS_BY_OFFSET_SQL, (stream_id, json.dumps(taken))
                )
                if damaged:
                    self._set_aside(conn, stream_id, dead_letter, damaged, attempts)
        batch = Batch(records, subscription=self.name, consumer=consumer, attempts=attempts)
        batch.skipped = len(damaged)
        return batch

    # ----------------------------------------------------------------- dead letters

    def redrive(self, max_records: int | None = None) -> list[int]:
        """Move this subscription's dead letters back into its stream, as new appends.

        Reads the dead-letter stream from where the last redrive stopped and re-appends,
        in order, every letter this subscription (by name) put there from its stream:
        same value, key and headers, minus the dead-letter headers, plus
        ``sqlstream.original_offset`` naming the offset the record first had (kept
        through repeated redrives). The letters stay in the dead-letter stream (it is an
        append-only log); the subscription remembers how far it redrove, so a letter is
        never moved twice. The new records are delivered like any other, attempts from 1.
        ``max_records``: at most that many letters (None: all). Atomic (appends and the
        redrive position commit together); returns the new offsets in the stream. A
        letter whose value is gone (plain SQL deleted its payload row) is skipped with a
        warning; it stays in the dead-letter stream.
        Raises ``InvalidArgument`` (no dead-letter stream), ``SubscriptionNotFound``,
        ``StreamSealed``/``AccessDenied`` (the stream takes no appends).
        """
        check_count(max_records, "max_records", optional=True)
        db = self.db
        with db.engine.write() as conn:
            rows = _q(conn, "SELECT dead_letter, redrive_offset FROM subscriptions WHERE id = ?", (self._id,))
            if not rows:
                raise self._missing()
            dead_letter, pos = rows[0]
            if dead_letter is None:
                raise InvalidArgument(
                    f"subscription {self.name!r} has no dead-letter stream",
                    hint="set one with sub.configure(max_deliveries=..., dead_letter=...)",
                    cli_hint="set one with `sqlstream configure SUBSCRIPTION --max-deliveries N --dead-letter STREAM`",
                )
            found = _q(conn, "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?", (dead_letter,))
            if not found:
                return []
            dl_id, first, nxt = found[0]
            if pos > nxt:  # the dead-letter stream was deleted and created again
                pos = first
            pos = max(pos, first)
            limit = MAX_COUNT if max_records is None else max_records
            offsets: list[int] = []
            taken = 0
            while pos < nxt and taken < limit:
                # A page at a time, appended before the next is read: the letters held at
                # once are bounded in bytes (the first always), not all of them.
                end = pos
                total = 0
                for offset, size in _q(conn, _PAGE_SIZES_SQL, (dl_id, pos)):
                    if end > pos and total + size > COPY_PAGE_BYTES:
                        break
                    end, total = offset + 1, total + size
                page = _q(conn,
                    "SELECT offset, CAST(key AS BLOB), CAST(headers AS BLOB), content_type, CAST(data AS BLOB) "
                    "FROM records WHERE stream_id = ? AND offset >= ? AND offset < ? ORDER BY offset",
                    (dl_id, pos, end),
                )
                if not page:
                    pos = nxt
                    break
                prepared: list[PreparedRecord] = []
                for offset, raw_key, raw_headers, ctype, raw in page:
                    pos = offset + 1
                    key, meta, data = salvage(raw_key, raw_headers, ctype, b"" if raw is None else raw)
                    if meta.get("sqlstream.subscription") != self.name or meta.get("sqlstream.source_stream") != self.stream:
                        continue
                    if raw is None:
                        # Its payloads row is gone (foreign SQL): no value to redrive. The
                        # letter stays where it is; failing would stop every redrive here.
                        _log.warning("subscription %r skips the letter at offset %d of stream %r (%s)",
                                     self.name, offset, dead_letter, MISSING_PAYLOAD)
                        continue
                    if not isinstance(data, str) and ctype != "bytes":
                        ctype = "bytes"
                    original = meta.get("sqlstream.original_offset") or meta.get("sqlstream.source_offset", "")
                    for name in DEAD_LETTER_HEADERS:
                        meta.pop(name, None)
                    meta["sqlstream.original_offset"] = original
                    prepared.append((key, encode_headers(meta), ctype, data, len(raw)))
                    taken += 1
                    if taken >= limit:
                        break
                if prepared:
                    try:
                        offsets += db.engine.append_rows(self.stream, None, prepared, None)
                    except (StreamSealed, AccessDenied) as exc:
                        raise type(exc)(
                            f"subscription {self.name!r} cannot redrive into stream {self.stream!r}: {exc.args[0]}",
                            hint="redrive needs a stream that takes appends without a secret",
                        ) from exc
            conn.execute("UPDATE subscriptions SET redrive_offset = ? WHERE id = ?", (pos, self._id))
        return offsets

    def _check_exists(self, conn: apsw.Connection) -> None:
        if not _q(conn, "SELECT 1 FROM subscriptions WHERE id = ?", (self._id,)):
            raise self._missing()

    # ----------------------------------------------------------------- inspection

    def pending(self, consumer: str | None = None, limit: int | None = None) -> list[PendingEntry]:
        """The pending (delivered, unacked) records in offset order, optionally of one consumer."""
        if consumer is not None:
            check_name(consumer, "consumer")
        if limit is not None:
            check_count(limit, "limit")
        now = self.db.engine.clock()
        with self.db.engine.snapshot() as conn:
            self._check_exists(conn)
            rows = _q(conn,
                "SELECT offset, consumer, attempts, delivered_at, deadline, last_error FROM deliveries "
                "WHERE subscription_id = ?1 AND waiting = 0 AND (?2 IS NULL OR consumer = ?2) ORDER BY offset LIMIT ?3",
                (self._id, consumer, -1 if limit is None else limit),
            )
        return [
            PendingEntry(o, c, a, d / 1e6, dl / 1e6, max(0.0, now - d / 1e6), dl <= _us(now), e)
            for o, c, a, d, dl, e in rows
        ]

    def info(self) -> SubscriptionInfo:
        """A consistent snapshot of settings, lag, pending counts and per-consumer counts."""
        with self.db.engine.snapshot() as conn:
            infos = _infos(conn, self.db.engine.clock(), self._id)
        if not infos:
            raise self._missing()
        return infos[0]


def _check_attempts(attempts: object, wanted: list[int]) -> dict[int, int] | None:
    """``ack(attempts=...)``: None, or a mapping giving every acked offset its attempt count."""
    if attempts is None:
        return None
    if not isinstance(attempts, Mapping):
        raise InvalidArgument(f"attempts must be a mapping offset -> attempt count (batch.attempts), not {show(attempts)}")
    fence: dict[int, int] = {}
    for offset in wanted:
        count = attempts.get(offset)
        if count is None:
            raise InvalidArgument(f"attempts names no attempt count for offset {offset}",
                                  hint="pass the attempts of the batch that delivered these offsets")
        checked = check_count(count, "attempts")
        assert checked is not None  # not optional
        fence[offset] = checked
    return fence


def _result(wanted: list[int], done: set[int]) -> AckResult:
    return AckResult(tuple(o for o in wanted if o in done), tuple(o for o in wanted if o not in done))


def _infos(conn: apsw.Connection, now: float, sub_id: int | None) -> list[SubscriptionInfo]:
    now_us = _us(now)
    rows = _q(conn,
        f"SELECT {_SUB_COLUMNS}, s.next_offset, s.acked, s.dead_lettered, st.first_offset, st.next_offset, "
        "(SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 0), "
        "(SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.deadline <= ?1), "
        "(SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 1), "
        "(SELECT min(d.offset) FROM deliveries d WHERE d.subscription_id = s.id) "
        "FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id "
        "WHERE ?2 IS NULL OR s.id = ?2 ORDER BY s.name",
        (now_us, sub_id),
    )
    counts: dict[int, dict[str, int]] = {}
    for sid, consumer, n in _q(
        conn,
        "SELECT subscription_id, consumer, count(*) FROM deliveries "
        "WHERE consumer IS NOT NULL AND (?1 IS NULL OR subscription_id = ?1) "
        "GROUP BY subscription_id, consumer ORDER BY consumer",
        (sub_id,),
    ):
        counts.setdefault(sid, {})[consumer] = n
    out = []
    for row in rows:
        (sid, name, stream, timeout, max_unacked, max_del, dead_letter, start, created, ordering,
         frontier, acked, dead, first, nxt, pending, expired, waiting, lowest) = row
        out.append(SubscriptionInfo(
            name=name, stream=stream, start_offset=start, next_offset=frontier, ack_timeout=timeout,
            max_unacked=max_unacked, max_deliveries=max_del, dead_letter=dead_letter, created_at=created / 1e6,
            lag=max(0, nxt - max(frontier, first)) + waiting, pending=pending, expired=expired, acked=acked,
            dead_lettered=dead, acked_frontier=frontier if lowest is None else lowest,
            consumers=counts.get(sid, {}), ordering=ordering, waiting=waiting,
        ))
    return out


# --------------------------------------------------------------------------- catalogue
# Called by the Database methods of the same names.


def create_subscription(
    db: Database,
    name: str,
    stream: str,
    *,
    start: int | str = "earliest",
    ack_timeout: float = 30.0,
    max_unacked: int = 1000,
    max_deliveries: int | None = None,
    dead_letter: str | None = None,
    exist_ok: bool = False,
    ordering: str | None = None,
) -> Subscription:
    check_name(name, "subscription")
    ordering = check_ordering(ordering)
    check_name(stream)
    ack_timeout = check_seconds(ack_timeout, "ack_timeout", positive=True)
    check_count(max_unacked, "max_unacked")
    check_count(max_deliveries, "max_deliveries", optional=True)
    check_flag(exist_ok, "exist_ok")
    if dead_letter is not None:
        check_name(dead_letter, "dead-letter stream")
        if dead_letter == stream:
            raise InvalidArgument("a subscription cannot dead-letter into the stream it reads")
    if (max_deliveries is None) != (dead_letter is None):
        raise InvalidArgument(
            "max_deliveries and dead_letter go together",
            hint="pass both (records delivered max_deliveries times move to the dead_letter stream) or neither",
        )
    start = check_start(start)
    with db.engine.write() as conn:
        found = _q(conn,
            "SELECT id, first_offset, next_offset FROM streams_now WHERE name = ?", (stream,)
        )
        if not found:
            raise StreamNotFound(f"no stream named {stream!r}", hint="create it with db.create_stream()")
        stream_id, first, nxt = found[0]
        existing = _q(conn,
            f"SELECT {_SUB_COLUMNS} FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id "
            "WHERE s.name = ?",
            (name,),
        )
        if existing:
            if exist_ok and existing[0][2] == stream:
                return Subscription(db, existing[0])
            raise SubscriptionExists(
                f"subscription {name!r} already exists (on stream {existing[0][2]!r})",
                hint="pick another name, or delete it with db.delete_subscription()",
            )
        if dead_letter is not None:
            _check_dead_letter_stream(db, conn, dead_letter, stream)
        if start == "earliest":
            offset = first
        elif start == "latest":
            offset = nxt
        else:
            offset = int(start)
            if not first <= offset <= nxt:
                raise OffsetOutOfRange(
                    f"start offset {offset} is outside stream {stream!r} (offsets {first}..{nxt})",
                    hint="use 'earliest', 'latest' or a retained offset",
                )
        conn.execute(
            "INSERT INTO subscriptions (name, stream_id, ack_timeout, max_unacked, max_deliveries, "
            "dead_letter, start_offset, next_offset, created_at, ordering) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, stream_id, ack_timeout, max_unacked, max_deliveries, dead_letter, offset, offset,
             time.time_ns() // 1000, ordering),
        )
        row = _q(conn,
            f"SELECT {_SUB_COLUMNS} FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id "
            "WHERE s.name = ?",
            (name,),
        )[0]
    return Subscription(db, row)


def _check_dead_letter_stream(db: Database, conn: apsw.Connection, dead_letter: str, stream: str) -> None:
    """Refuse a sealed or secret dead-letter stream, or the source stream; create a missing one."""
    if dead_letter == stream:
        raise InvalidArgument("a subscription cannot dead-letter into the stream it reads")
    target = _q(conn,
        "SELECT sealed_at IS NOT NULL, write_secret_sha256 IS NOT NULL FROM streams WHERE name = ?",
        (dead_letter,),
    )
    if not target:
        db.create_stream(dead_letter)
    elif target[0][0] or target[0][1]:
        raise InvalidArgument(
            f"dead-letter stream {dead_letter!r} is {'sealed' if target[0][0] else 'a secret stream'}",
            hint="name a plain stream (or a new name: it is created)",
        )


def check_ordering(value: object) -> str:
    """A subscription's delivery order: None or ``"none"`` (offset order across consumers,
    no per-key guarantee) or ``"key"`` (each key strictly in offset order)."""
    if value is None:
        return "none"
    if isinstance(value, str) and value in ("none", "key"):
        return value
    raise InvalidArgument(
        f"ordering must be None, 'none' or 'key', not {show(value)}",
        hint="ordering='key' delivers each key's records one at a time, in offset order",
        cli_hint="--ordering key delivers each key's records one at a time, in offset order",
    )


def get_subscription(db: Database, name: str) -> Subscription:
    check_name(name, "subscription")
    with db.engine.snapshot() as conn:
        rows = _q(conn,
            f"SELECT {_SUB_COLUMNS} FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id WHERE s.name = ?",
            (name,),
        )
    if not rows:
        raise SubscriptionNotFound(f"no subscription named {name!r}", hint="create it with db.create_subscription()")
    return Subscription(db, rows[0])


def list_subscriptions(db: Database) -> list[SubscriptionInfo]:
    with db.engine.snapshot() as conn:
        return _infos(conn, db.engine.clock(), None)


def delete_subscription(db: Database, name: str, *, force: bool = False) -> int:
    check_name(name, "subscription")
    with db.engine.write() as conn:
        rows = _q(conn, "SELECT id FROM subscriptions WHERE name = ?", (name,))
        if not rows:
            raise SubscriptionNotFound(f"no subscription named {name!r}")
        sub_id = rows[0][0]
        pending = _q(conn,
            "SELECT count(*) FROM deliveries WHERE subscription_id = ?", (sub_id,)
        )[0][0]
        if pending and not force:
            raise SubscriptionInUse(
                f"subscription {name!r} has {pending} pending (delivered, unacked) record(s)",
                hint="ack them first, or pass force=True to drop them with the subscription",
            )
        conn.execute("DELETE FROM deliveries WHERE subscription_id = ?", (sub_id,))
        conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
    return int(pending)
