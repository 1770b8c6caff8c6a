"""The buffered producer: batching triggers, futures, callbacks, failures, close/flush."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait
from typing import Any

import pytest

import sqlstream
from sqlstream import errors

from helpers_interrupt import interrupted_at


class Calls:
    """Records callback invocations (they run on the flusher thread)."""

    def __init__(self) -> None:
        self.success: list[tuple[str, list[Any], list[int]]] = []
        self.error: list[tuple[str, list[Any], BaseException]] = []
        self.lock = threading.Lock()

    def on_success(self, stream: str, records: list[sqlstream.ProducerRecord], offsets: list[int]) -> None:
        with self.lock:
            self.success.append((stream, [r.value for r in records], offsets))

    def on_error(self, stream: str, records: list[sqlstream.ProducerRecord], exc: BaseException) -> None:
        with self.lock:
            self.error.append((stream, [r.value for r in records], exc))


def test_futures_callbacks_and_one_transaction_per_batch(db: sqlstream.Database) -> None:
    db.create_stream("a")
    db.create_stream("b")
    calls = Calls()
    with db.producer(max_batch=100, max_delay=60, on_success=calls.on_success) as producer:
        fa = [producer.append("a", i, key="k", headers={"h": "v"}) for i in range(5)]
        fb = [producer.append("b", f"b{i}") for i in range(3)]
        assert producer.flush(timeout=30)
        assert producer.queued == 0
    assert [f.result() for f in fa] == [0, 1, 2, 3, 4]
    assert [f.result() for f in fb] == [0, 1, 2]
    assert sorted(calls.success) == [("a", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), ("b", ["b0", "b1", "b2"], [0, 1, 2])]
    records = db.stream("a").read() + db.stream("b").read()
    assert len({r.txn for r in records}) == 1  # both streams, one transaction
    assert records[0].key == "k" and records[0].headers == {"h": "v"}


def test_size_trigger(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_batch=10, max_delay=60) as producer:
        first = [producer.append("s", i) for i in range(9)]
        time.sleep(0.2)
        assert not any(f.done() for f in first)  # below max_batch, long before max_delay
        last = producer.append("s", 9)
        done, _ = wait(first + [last], timeout=10)
        assert len(done) == 10
        assert len({r.txn for r in db.stream("s").read()}) == 1


def test_bytes_trigger(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_batch=1000, max_delay=60, max_bytes=1000) as producer:
        small = producer.append("s", b"x" * 400)
        time.sleep(0.2)
        assert not small.done()
        big = producer.append("s", b"y" * 600)  # 1000 bytes queued: due
        assert small.result(timeout=10) == 0 and big.result(timeout=10) == 1
        # A batch never holds more than max_bytes: these three go in two batches.
        futures = [producer.append("s", b"z" * 400) for _ in range(3)]
        producer.flush()
        txns = [r.txn for r in db.stream("s").read(2)]
        assert len(set(txns)) == 2 and [f.result() for f in futures] == [2, 3, 4]


def test_time_trigger(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_batch=1000, max_delay=0.1) as producer:
        started = time.monotonic()
        future = producer.append("s", "x")
        # One record never fills a batch of 1,000: only max_delay can write it (close()
        # would too, but the result is awaited inside the block).
        assert future.result(timeout=60) == 0
        assert time.monotonic() - started >= 0.09


def test_many_threads_keep_their_order(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_batch=64, max_delay=0.001) as producer:

        def run(t: int) -> None:
            futures = [producer.append("s", {"t": t, "i": i}) for i in range(300)]
            offsets = [f.result(timeout=30) for f in futures]
            assert offsets == sorted(offsets)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = db.stream("s").read(0, 5000)
    assert len(records) == 1800
    for t in range(6):
        assert [r.value["i"] for r in records if r.value["t"] == t] == list(range(300))


def test_refused_at_append(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_bytes=100) as producer:
        with pytest.raises(errors.PayloadTooLarge):
            producer.append("s", b"x" * 101)
        with pytest.raises(errors.InvalidValue):
            producer.append("s", None)
        with pytest.raises(errors.InvalidName):
            producer.append("bad name", "x")
        assert producer.queued == 0
    with pytest.raises(errors.DatabaseClosed):
        producer.append("s", "late")
    for kwargs in ({"max_batch": 0}, {"max_delay": -1}, {"retries": -1}, {"on_success": 3}):
        with pytest.raises(errors.InvalidArgument):
            db.producer(**kwargs)  # type: ignore[arg-type]


def test_a_failed_batch_fails_once_and_never_blocks_later_appends(db: sqlstream.Database) -> None:
    db.create_stream("good")
    calls = Calls()
    with db.producer(max_batch=100, max_delay=60, on_error=calls.on_error, on_success=calls.on_success) as p:
        bad = [p.append("missing", i) for i in range(3)]
        good = [p.append("good", i) for i in range(2)]
        p.flush()
        for f in bad:
            with pytest.raises(errors.StreamNotFound):
                f.result()
        # The failing stream did not take the other stream's records down with it.
        assert [f.result() for f in good] == [0, 1]
        assert len(calls.error) == 1
        stream, values, exc = calls.error[0]
        assert stream == "missing" and values == [0, 1, 2] and isinstance(exc, errors.StreamNotFound)
        later = p.append("good", "later")
        p.flush()
        assert later.result(timeout=10) == 2
    assert [r.value for r in db.stream("good").read()] == [0, 1, "later"]


def _fail_inserts(db: sqlstream.Database, failures: int) -> list[int]:
    """Make the next ``failures`` record inserts on db's write connection fail in SQLite.

    A TEMP trigger (on this connection only) raises while a Python counter says so: a
    real transaction failure inside SQLite, no mock involved.
    """
    left = [failures]

    def should_fail() -> int:
        if left[0] > 0:
            left[0] -= 1
            return 1
        return 0

    conn = db.engine.write_conn()
    conn.create_scalar_function("test_should_fail", should_fail, 0)
    conn.execute(
        "CREATE TEMP TRIGGER test_fail BEFORE INSERT ON main.chunks WHEN test_should_fail() "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    return left


def test_a_transaction_that_raises_fails_the_batch(db: sqlstream.Database) -> None:
    db.create_stream("s")
    _fail_inserts(db, 1)
    calls = Calls()
    with db.producer(max_delay=60, on_error=calls.on_error) as p:
        failed = [p.append("s", i) for i in range(4)]
        p.flush()
        for f in failed:
            with pytest.raises(errors.DatabaseError, match="injected failure"):
                f.result()
        assert len(calls.error) == 1 and calls.error[0][1] == [0, 1, 2, 3]
        nxt = p.append("s", "next")
        p.flush()
        assert nxt.result(timeout=10) == 0  # nothing stored, no offset burned
    assert [r.value for r in db.stream("s").read()] == ["next"]


def test_retries_recover_from_transient_failures(db: sqlstream.Database) -> None:
    db.create_stream("s")
    left = _fail_inserts(db, 2)
    calls = Calls()
    with db.producer(max_delay=60, retries=2, retry_delay=0.01, on_error=calls.on_error) as p:
        futures = [p.append("s", i) for i in range(3)]
    assert [f.result() for f in futures] == [0, 1, 2]
    assert calls.error == [] and left == [0]


def test_permanent_errors_are_not_retried(db: sqlstream.Database, caplog: pytest.LogCaptureFixture) -> None:
    db.create_stream("s").seal()
    calls = Calls()
    with caplog.at_level(logging.WARNING, logger="sqlstream.producer"), \
            db.producer(retries=5, retry_delay=600, on_error=calls.on_error) as p:
        future = p.append("s", "x")
        with pytest.raises(errors.StreamSealed):
            future.result(timeout=60)  # a retry would wait 600 s first
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_callback_exceptions_do_not_stop_the_producer(db: sqlstream.Database) -> None:
    db.create_stream("s")

    def explode(*args: object) -> None:
        raise RuntimeError("callback bug")

    with db.producer(max_delay=0, on_success=explode) as p:
        assert p.append("s", 1).result(timeout=10) == 0
        assert p.append("s", 2).result(timeout=10) == 1


def test_flush_from_a_callback_is_refused_and_the_flusher_goes_on(db: sqlstream.Database) -> None:
    """flush() on the flusher's own thread waited for itself: with no timeout for ever (every
    later record unwritten, close() stuck), with one for all of it. (The callback passes
    timeout=0 so that the unfixed code fails here instead of hanging: it returned False.)"""
    db.create_stream("s")
    outcome: list[object] = []
    later: list[Any] = []

    def on_success(stream: str, records: list[sqlstream.ProducerRecord], offsets: list[int]) -> None:
        if outcome:
            return
        later.append(p.append("s", "from the callback"))
        try:
            outcome.append(p.flush(timeout=0))
        except errors.InvalidArgument as exc:
            outcome.append(exc)

    with db.producer(max_delay=0, on_success=on_success) as p:
        assert p.append("s", "first").result(timeout=30) == 0
        assert later[0].result(timeout=30) == 1
        assert p.flush(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.InvalidArgument), outcome
    assert "callback" in str(outcome[0])


def test_close_flushes_and_is_idempotent(db: sqlstream.Database) -> None:
    db.create_stream("s")
    p = db.producer(max_batch=1000, max_delay=3600)
    futures = [p.append("s", i) for i in range(50)]
    assert p.close(timeout=30)
    assert all(f.done() for f in futures) and p.closed
    assert p.close() is True
    assert db.stream("s").info().next_offset == 50
    with pytest.raises(errors.DatabaseClosed):
        p.append("s", "x")


def test_flush_and_close_inside_a_transaction_are_refused(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_delay=3600) as p:
        with db.transaction():
            future = p.append("s", "x")
            with pytest.raises(errors.InvalidArgument):
                p.flush()
            with pytest.raises(errors.InvalidArgument):
                p.close()
        assert p.flush(timeout=10) and future.result() == 0


def test_max_pending_applies_backpressure(db: sqlstream.Database) -> None:
    db.create_stream("s")
    with db.producer(max_batch=5, max_delay=0, max_pending=5) as p:
        futures = [p.append("s", i) for i in range(200)]
        assert p.queued <= 200
    assert [f.result() for f in futures] == list(range(200))


def test_closing_the_database_fails_queued_records(db_path: str) -> None:
    db = sqlstream.open(db_path)
    db.create_stream("s")
    calls = Calls()
    p = db.producer(max_delay=3600, on_error=calls.on_error)
    future = p.append("s", "x")
    db.close()
    p.close(timeout=30)
    with pytest.raises(errors.DatabaseClosed):
        future.result(timeout=10)
    assert len(calls.error) == 1


def test_ctrl_c_anywhere_in_append_flush_or_close_leaves_the_lock_free_and_the_count_exact(
    db: sqlstream.Database,
) -> None:
    """Guarantee: a KeyboardInterrupt (Ctrl-C) at any point of ``append``, ``flush`` or
    ``close`` leaves the producer's lock free and its count of queued records exact, so a
    later ``close`` neither deadlocks nor leaves ``queued`` above 0 (which would make every
    later ``flush`` wait for ever for a record that was never queued).

    Each call runs on a fresh producer holding one unwritten record (``max_delay`` of an
    hour: flush and close really wait for the flusher), interrupted at its 1st, 2nd, ...
    point where a signal can land, until the call completes."""
    db.create_stream("s")
    calls: dict[str, Callable[[sqlstream.Producer], object]] = {
        "append": lambda p: p.append("s", "interrupted"),
        "flush": lambda p: p.flush(),
        "close": lambda p: p.close(),
    }
    for name, call in calls.items():
        step = 1
        while True:
            producer = db.producer(max_delay=3600)
            before = producer.append("s", "before")
            interrupted = interrupted_at(step, lambda: call(producer))
            # White box: the public calls all take this lock, so a leaked hold would hang
            # the close() below instead of failing.
            free = producer._cond.acquire(False)
            producer._cond.release()  # ours, or the leaked hold (so close() below cannot hang)
            assert free, f"{name}: an interrupt at point {step} left the producer's lock held"
            assert producer.close() is True
            assert producer.queued == 0, (
                f"{name}: after an interrupt at point {step} and close(), {producer.queued} record(s)"
                " are still counted as queued"
            )
            assert producer._queued_bytes == 0, f"{name}: point {step} left the queued byte count off"
            assert isinstance(before.result(timeout=0), int)
            if not interrupted:
                break
            step += 1
        assert step > 4, f"{name}: the interrupt was tried at only {step - 1} points"
