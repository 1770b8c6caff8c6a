"""The buffered producer: appends from many threads, written in batches by one background thread.

``append`` validates and encodes the record at once (bad values and oversized records
fail in the caller's thread), queues it and returns a ``concurrent.futures.Future`` of its
offset. One flusher thread writes the queue in batches, each batch in one transaction,
when it reaches ``max_batch`` records or ``max_bytes`` bytes, when its oldest record has
waited ``max_delay`` seconds, or when ``flush``/``close`` asks.

Failures are contained: a batch that fails is retried (transient errors only, up to
``retries`` times); if it spans several streams its streams are then tried one by one, so
one stream's problem (deleted, sealed) fails only that stream's records. Each failed
group fails its futures and calls ``on_error`` once; the flusher carries on with the next
batch, so a failure never blocks later appends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import (
    AccessDenied,
    DatabaseClosed,
    InvalidArgument,
    InvalidName,
    InvalidValue,
    PayloadTooLarge,
    ReadOnlyDatabase,
    StreamNotFound,
    StreamSealed,
)
from .dedup import check_dedup_id
from .logs import LazyLogger
from .records import check_name
from .streams import prepare_record
from .validation import check_count, check_timeout, show

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .database import Database
    from .engine import PreparedRecord

log = LazyLogger("sqlstream.producer")

# Errors that retrying the same records cannot fix.
_PERMANENT = (
    StreamNotFound, StreamSealed, AccessDenied, InvalidValue, InvalidName, InvalidArgument,
    PayloadTooLarge, DatabaseClosed, ReadOnlyDatabase,
)
_MAX_RETRY_DELAY = 2.0

# Defaults of Producer's options, named once: Database.producer() spells them by name.
DEFAULT_MAX_BATCH = 1000  # records per transaction
DEFAULT_MAX_DELAY = 0.005  # seconds the first record of a batch waits for company
DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # payload bytes per transaction
DEFAULT_RETRY_DELAY = 0.05  # seconds before the first retry (doubling, capped)


class ProducerRecord(NamedTuple):
    """A record as given to ``Producer.append`` (what callbacks receive)."""

    stream: str
    value: Any
    key: str | None
    headers: dict[str, str] | None
    dedup_id: str | None = None


SuccessCallback = Callable[[str, "list[ProducerRecord]", "list[int]"], object]
"""``on_success(stream, records, offsets)``: a group of records of one stream was stored."""
ErrorCallback = Callable[[str, "list[ProducerRecord]", BaseException], object]
"""``on_error(stream, records, exc)``: a group of records of one stream failed for good."""


class _Item(NamedTuple):
    seq: int
    record: ProducerRecord
    prepared: PreparedRecord
    future: Future[int]
    queued_at: float


class Producer:
    """Batches appends from any number of threads into one transaction per batch.

    Use as a context manager (``close`` on exit flushes) or call :meth:`close`. Create it
    with ``db.producer(...)``. Callbacks run on the flusher thread, one group of records
    of one stream at a time, in append order; an exception in a callback is logged
    (logger ``sqlstream.producer``) and does not disturb the producer. Do not call
    ``flush``/``close`` from inside ``db.transaction()`` on the same Database: the flusher
    needs the write lock that transaction holds (refused with ``InvalidArgument``).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_success: SuccessCallback | None = None,
        on_error: ErrorCallback | None = None,
        retries: int = 0,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_pending: int | None = None,
    ) -> None:
        for what, value, minimum in (("max_batch", max_batch, 1), ("max_bytes", max_bytes, 1), ("retries", retries, 0)):
            check_count(value, what, minimum=minimum)
        for what, seconds in (("max_delay", max_delay), ("retry_delay", retry_delay)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86400:
                raise InvalidArgument(f"{what} must be a number of seconds from 0 to 86400, not {show(seconds)}")
        check_count(max_pending, "max_pending", optional=True)
        for what, callback in (("on_success", on_success), ("on_error", on_error)):
            if callback is not None and not callable(callback):
                raise InvalidArgument(f"{what} must be callable or None")
        self.db = db
        self.max_batch = max_batch
        self.max_delay = float(max_delay)
        self.max_bytes = max_bytes
        self.retries = retries
        self.retry_delay = float(retry_delay)
        self.max_pending = max_pending
        self.on_success = on_success
        self.on_error = on_error
        # Imported by the first producer, not at the top: concurrent.futures brings logging,
        # which would cost every `import sqlstream` (tests/test_startup.py).
        from concurrent.futures import Future

        self._future: type[Future[int]] = Future
        # Critical sections say ``with self._lock`` (the C lock), never ``with self._cond``:
        # Condition.__enter__ is Python code, and a KeyboardInterrupt (Ctrl-C) landing just
        # after its acquire would leave the lock held for ever, hanging the next append,
        # flush or close. A with statement on the C lock cannot be left half-entered.
        # Only ``wait``/``notify_all`` go through the Condition (same lock). Inside a
        # section, every call comes before the first store of shared state, but for one
        # last call that completes the change (append's queue append): an interrupt lands
        # only where a function starts or returns, so it leaves either nothing changed or
        # everything done (docs/architecture.md, "Ctrl-C").
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._seq = 0  # sequence number of the last appended record
        self._done = 0  # every record up to this sequence number is stored or failed
        self._flush_to = 0  # the flusher writes at once up to here
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sqlstream-producer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<sqlstream.Producer {self.db.path!r} queued={self.queued}{' closed' if self._closing else ''}>"

    @property
    def queued(self) -> int:
        """Records appended and not yet stored or failed."""
        return self._seq - self._done

    @property
    def closed(self) -> bool:
        return self._closing

    # ----------------------------------------------------------------- callers

    def append(
        self,
        stream: str,
        value: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        dedup_id: str | None = None,
    ) -> Future[int]:
        """Queue one record for ``stream``; return a future of its offset.

        ``dedup_id``: as ``Stream.append``'s — if the id is remembered in the stream's
        dedup window (a retry after a crash, another producer's append, or an earlier
        record of the same batch) nothing is stored and the future gets the original
        offset.

        Never blocks on the database (with ``max_pending`` set, it waits for room in the
        queue, except inside ``db.transaction()``). Raises at once, storing nothing:
        ``InvalidValue``/``InvalidName`` for what cannot be stored, ``PayloadTooLarge`` for
        a record larger than ``max_bytes`` or the database's record limit,
        ``DatabaseClosed`` after ``close``. Errors found when the batch is written
        (``StreamNotFound``, ``StreamSealed``, ...) fail the future instead.
        """
        check_name(stream)
        if dedup_id is not None:
            check_dedup_id(dedup_id)
        prepared = prepare_record(value, key, headers)
        size = prepared[4]
        limit = min(self.max_bytes, self.db.max_record_bytes)
        if size > limit:
            raise PayloadTooLarge(
                f"a record of {size:,} bytes exceeds the producer's limit of {limit:,} bytes",
                hint="split the value, or raise max_bytes (and the database's max_record_bytes)",
            )
        future = self._future()
        future.set_running_or_notify_cancel()  # queued records cannot be cancelled
        record = ProducerRecord(stream, value, key, headers, dedup_id)
        with self._lock:
            if self.max_pending is not None and not self.db.in_transaction():
                while len(self._queue) >= self.max_pending and not self._closing:
                    self._cond.wait()
            if self._closing:
                raise DatabaseClosed("the producer is closed")
            ahead = len(self._queue)
            if ahead == 0 or ahead + 1 >= self.max_batch or self._queued_bytes + size >= self.max_bytes:
                self._cond.notify_all()  # the flusher looks once we release the lock
            seq = self._seq + 1
            item = _Item(seq, record, prepared, future, time.monotonic())
            # Stores without calls between them, then one call that queues: an interrupt
            # (Ctrl-C) cannot leave the record counted in _seq but absent from the queue,
            # which would make flush() wait for it for ever.
            self._seq = seq
            self._queued_bytes += size
            self._queue.append(item)
        return future

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything appended so far; wait until it is stored or has failed.

        Returns True when done, False if ``timeout`` seconds passed first. Failed records
        do not make this raise: their futures and ``on_error`` report them. Raises
        ``InvalidArgument`` from the flusher's own thread (``on_success``/``on_error``, a
        future's done-callback): it would wait for itself.
        """
        if threading.current_thread() is self._thread:
            # The flusher would wait for itself for ever (or for the whole timeout, holding
            # up every queued record); what is queued is written after the callback returns.
            raise InvalidArgument(
                "cannot flush a producer from its own callbacks (on_success, on_error, a future's "
                "done-callback): they run on the thread that writes, which would wait for itself",
                hint="records appended from a callback are written once it returns; wait for their futures "
                "from another thread",
            )
        if self.db.in_transaction():
            raise InvalidArgument(
                "cannot flush a producer inside db.transaction(): its writer needs the write lock",
                hint="flush after the transaction ends",
            )
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._seq
            flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            self._flush_to = flush_to
            while self._done < target:
                if not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking appends, write everything queued, stop the flusher. Idempotent.

        Returns True if everything queued was written (or failed) within ``timeout``.
        """
        timeout = check_timeout(timeout)
        if threading.current_thread() is self._thread:
            with self._lock:  # from a callback: cannot wait for ourselves
                self._cond.notify_all()
                self._closing = True
            return False
        if self.db.in_transaction():
            raise InvalidArgument(
                "cannot close a producer inside db.transaction(): its writer needs the write lock",
                hint="close it after the transaction ends",
            )
        with self._lock:
            self._cond.notify_all()
            self._closing = True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- flusher

    def _next_batch(self) -> list[_Item] | None:
        """Wait until a batch is due; take it off the queue (None: closed and drained)."""
        with self._lock:
            while True:
                queue = self._queue
                if queue:
                    due = (
                        self._closing
                        or len(queue) >= self.max_batch
                        or self._queued_bytes >= self.max_bytes
                        or self._flush_to > self._done
                    )
                    wait = 0.0 if due else queue[0].queued_at + self.max_delay - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()
            batch: list[_Item] = []
            size = 0
            while queue and len(batch) < self.max_batch:
                nbytes = queue[0].prepared[4]
                if batch and size + nbytes > self.max_bytes:
                    break
                batch.append(queue.popleft())
                size += nbytes
            self._queued_bytes -= size
            self._cond.notify_all()  # appenders waiting for room under max_pending
            return batch

    def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                got = self._next_batch()
                if got is None:
                    return
                batch = got
                self._write(batch)
                with self._lock:
                    self._done = batch[-1].seq
                    self._cond.notify_all()
                batch = []
        except BaseException as exc:  # noqa: BLE001 - the flusher must never die silently
            log.exception("sqlstream producer flusher stopped")
            with self._lock:
                self._closing = True
                leftover = batch + list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
            for item in leftover:
                if not item.future.done():
                    item.future.set_exception(exc)
            with self._lock:
                self._done = self._seq
                self._cond.notify_all()

    def _write(self, batch: list[_Item]) -> None:
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.record.stream, []).append(item)
        try:
            stored = self._attempt(list(groups.items()))
        except Exception as exc:  # noqa: BLE001 - reported through futures and on_error
            if len(groups) == 1:
                self._failed(*next(iter(groups.items())), exc)
                return
            # Isolate: one stream's failure must not fail the others' records.
            for stream, items in groups.items():
                try:
                    self._succeeded(stream, items, self._attempt([(stream, items)])[stream])
                except Exception as group_exc:  # noqa: BLE001
                    self._failed(stream, items, group_exc)
            return
        for stream, items in groups.items():
            self._succeeded(stream, items, stored[stream])

    def _attempt(self, groups: list[tuple[str, list[_Item]]]) -> dict[str, Sequence[int]]:
        """Append every group in one transaction, retrying transient failures."""
        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            try:
                with self.db.transaction():
                    return {stream: self._append_group(stream, items) for stream, items in groups}
            except _PERMANENT:
                raise
            except Exception:
                if attempt == self.retries:
                    raise
                log.warning("sqlstream producer: batch failed, retrying (%d of %d)", attempt + 1, self.retries,
                            exc_info=True)
                time.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
        raise AssertionError("unreachable")

    def _append_group(self, stream: str, items: list[_Item]) -> Sequence[int]:
        rows = [i.prepared for i in items]
        ids = [i.record.dedup_id for i in items]
        if any(i is not None for i in ids):
            return self.db.engine.append_rows(stream, None, rows, None, ids)
        return self.db.engine.append_rows(stream, None, rows, None)

    def _succeeded(self, stream: str, items: list[_Item], offsets: Sequence[int]) -> None:
        for item, offset in zip(items, offsets):
            item.future.set_result(offset)
        if self.on_success is not None:
            try:
                self.on_success(stream, [i.record for i in items], list(offsets))
            except Exception:  # noqa: BLE001
                log.exception("sqlstream producer: on_success callback raised")

    def _failed(self, stream: str, items: list[_Item], exc: BaseException) -> None:
        for item in items:
            item.future.set_exception(exc)
        if self.on_error is not None:
            try:
                self.on_error(stream, [i.record for i in items], exc)
            except Exception:  # noqa: BLE001
                log.exception("sqlstream producer: on_error callback raised")
