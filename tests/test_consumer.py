"""Consumers: ack on return, nack on raise, graceful stop, concurrency, errors."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import sqlstream
from sqlstream import errors


def test_acks_what_the_handler_returns_from(db: sqlstream.Database) -> None:
    db.create_stream("s").extend(list(range(25)))
    sub = db.create_subscription("sub", "s")
    seen: list[int] = []
    consumer = None

    def handler(batch: sqlstream.Batch) -> None:
        seen.extend(r.value for r in batch)
        assert all(n == 1 for n in batch.attempts.values())
        if len(seen) == 25:
            consumer.stop()  # type: ignore[union-attr] - asking from inside a handler only asks

    consumer = db.consumer("sub", handler, name="w1", batch=10)
    consumer.run()
    assert seen == list(range(25)) and consumer.acked == 25
    info = sub.info()
    assert info.acked == 25 and info.pending == 0


def test_nacks_when_the_handler_raises_then_dead_letters(db: sqlstream.Database) -> None:
    db.create_stream("s").extend(["ok", "poison", "ok2"])
    sub = db.create_subscription("sub", "s", max_deliveries=3, dead_letter="dead")
    attempts: Counter[str] = Counter()

    def handler(batch: sqlstream.Batch) -> None:
        for r in batch:
            attempts[r.value] += 1
            if r.value == "poison":
                raise ValueError("cannot digest")

    with db.consumer(sub, handler, batch=1):
        deadline = time.monotonic() + 20
        while sub.info().dead_lettered == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while sub.info().acked < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert attempts == {"ok": 1, "ok2": 1, "poison": 3}
    letter = db.stream("dead").read()[0]
    assert letter.value == "poison"
    assert letter.headers["sqlstream.attempts"] == "3"
    assert letter.headers["sqlstream.last_error"] == "ValueError: cannot digest"
    assert sub.info().pending == 0


def test_stop_is_graceful(db: sqlstream.Database) -> None:
    db.create_stream("s").extend(list(range(100)))
    sub = db.create_subscription("sub", "s")
    entered = threading.Event()
    finished: list[int] = []

    def slow(batch: sqlstream.Batch) -> None:
        entered.set()
        time.sleep(0.3)
        finished.extend(batch.offsets)

    consumer = db.consumer("sub", slow, batch=10).start()
    assert consumer.running
    assert entered.wait(10)
    consumer.stop()  # during the first batch: it completes and is acked
    assert not consumer.running
    assert finished == list(range(10))
    info = sub.info()
    assert info.acked == 10 and info.pending == 0 and info.lag == 90


def test_stop_wakes_an_idle_consumer(db: sqlstream.Database) -> None:
    db.create_stream("s")
    db.create_subscription("sub", "s")
    consumer = db.consumer("sub", lambda batch: None).start()
    time.sleep(0.1)
    # The idle worker blocks in a fetch with no timeout: only stop() can end it, so the
    # worker having finished within stop's own wait is the proof (no time bound needed).
    consumer.stop(timeout=60)
    assert not consumer.running


def test_concurrency_processes_each_record_once(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    seen: Counter[int] = Counter()
    threads: set[str] = set()
    lock = threading.Lock()

    def handler(batch: sqlstream.Batch) -> None:
        time.sleep(0.002)
        with lock:
            seen.update(batch.offsets)
            threads.add(threading.current_thread().name)

    with db.consumer("sub", handler, batch=5, concurrency=4) as consumer:
        for i in range(0, 600, 20):
            stream.extend(list(range(i, i + 20)))
        deadline = time.monotonic() + 30
        while sub.info().acked < 600 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(seen) == list(range(600)) and set(seen.values()) == {1}
    assert len(threads) >= 2 and consumer.acked == 600


def test_a_deleted_subscription_stops_the_consumer_with_its_error(db: sqlstream.Database) -> None:
    db.create_stream("s")
    db.create_subscription("sub", "s")
    consumer = db.consumer("sub", lambda batch: None).start()
    time.sleep(0.1)
    db.delete_subscription("sub")
    deadline = time.monotonic() + 10
    while consumer.running and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(errors.SubscriptionNotFound):
        consumer.stop()


def test_interrupt_in_the_handler_nacks_and_propagates(db: sqlstream.Database) -> None:
    db.create_stream("s").extend([1, 2])
    sub = db.create_subscription("sub", "s")

    def handler(batch: sqlstream.Batch) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        db.consumer("sub", handler, batch=2).run()
    pending = sub.pending()
    assert [(p.offset, p.consumer, p.expired) for p in pending] == [(0, None, True), (1, None, True)]
    assert pending[0].last_error == "KeyboardInterrupt: "


def test_invalid_arguments(db: sqlstream.Database) -> None:
    db.create_stream("s")
    db.create_subscription("sub", "s")
    with pytest.raises(errors.SubscriptionNotFound):
        db.consumer("nope", lambda b: None)
    for kwargs in ({"batch": 0}, {"concurrency": 0}, {"nack_delay": -1}):
        with pytest.raises(errors.InvalidArgument):
            db.consumer("sub", lambda b: None, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        db.consumer("sub", "not callable")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidName):
        db.consumer("sub", lambda b: None, name="has space")
