"""Subscriptions: claims, acks, redelivery, dead letters, inspection, exactly-once.

Most tests drive ack deadlines with a controllable clock (``db.engine.clock``) instead of
sleeping; a few use real time to prove that blocked fetches wake by themselves. The
first group translates the HStreamDB server's subscription tests.
"""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time

import apsw
import pytest
from helpers_subscriptions import Clock, spawn

import sqlstream
from sqlstream import errors

# A blocked fetch's own timeout in the wake-up tests: returning before it means something
# (a commit, an ack, a deadline) woke the fetch. How soon is a benchmark figure, not
# asserted: a bound would measure the machine's load.
WAIT = 30.0


@pytest.fixture
def clock(db: sqlstream.Database) -> Clock:
    c = Clock()
    db.engine.clock = c
    return c


def fill(db: sqlstream.Database, n: int, name: str = "s") -> sqlstream.Stream:
    try:
        stream = db.create_stream(name)
    except errors.StreamExists:
        stream = db.stream(name)
    if n:
        stream.extend([{"n": i} for i in range(n)])
    return stream


# --------------------------------------------------------------------------- HStreamDB behaviours


def test_never_acked_record_is_redelivered_once_per_ack_timeout(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 3)
    sub = db.create_subscription("sub", "s", ack_timeout=10)
    assert sub.fetch("c", 10).offsets == [0, 1, 2]
    sub.ack(1, 2)
    for attempt in range(2, 6):
        clock.advance(9.999)
        assert sub.fetch("c", 10) == []  # not yet
        clock.advance(0.001)
        batch = sub.fetch("c", 10)
        assert batch.offsets == [0] and batch.attempts == {0: attempt}
        assert sub.fetch("c", 10) == []  # once per timeout, not once per fetch


def test_randomly_dropped_acks_are_exactly_the_redelivered_records(db: sqlstream.Database, clock: Clock) -> None:
    rng = random.Random(7)
    fill(db, 200)
    sub = db.create_subscription("sub", "s", ack_timeout=5)
    got = []
    while batch := sub.fetch("c", 30):
        got += batch.offsets
    assert got == list(range(200))
    dropped = sorted(rng.sample(got, 37))
    result = sub.ack(*(o for o in got if o not in dropped))
    assert len(result.applied) == 163 and result.ignored == ()
    clock.advance(5)
    redelivered = sub.fetch("c", 1000)
    assert redelivered.offsets == dropped
    assert set(redelivered.attempts.values()) == {2}


def test_second_consumer_receives_everything_a_dead_consumer_held(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 50)
    sub = db.create_subscription("sub", "s", ack_timeout=30)
    held = sub.fetch("dead", 20).offsets
    assert sub.fetch("alive", 10).offsets == list(range(20, 30))
    sub.ack(*range(20, 30))
    clock.advance(30)
    taken = []
    while batch := sub.fetch("alive", 7):
        taken += batch.offsets
        sub.ack(*batch.offsets)
    assert sorted(taken) == held + list(range(30, 50))
    info = sub.info()
    assert info.pending == 0 and info.acked == 50 and info.acked_frontier == 50


def test_two_consumers_never_hold_the_same_record(db: sqlstream.Database) -> None:
    stream = fill(db, 0)
    sub = db.create_subscription("sub", "s", ack_timeout=600, max_unacked=100_000)
    received: dict[str, list[int]] = {}
    stop = threading.Event()

    def consume(name: str) -> None:
        mine = received.setdefault(name, [])
        while not stop.is_set() or sub.info().lag:
            mine += sub.fetch(name, random.randint(1, 20), timeout=0.05).offsets

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for i in range(0, 2000, 50):
        stream.extend(list(range(i, i + 50)))
    stop.set()
    for t in threads:
        t.join()
    everything = [o for offsets in received.values() for o in offsets]
    assert sorted(everything) == list(range(2000))  # each exactly once: none twice
    assert sum(1 for offsets in received.values() if offsets) >= 2
    pending = sub.pending()
    assert len(pending) == 2000
    assert {p.offset: p.consumer for p in pending} == {o: n for n, offs in received.items() for o in offs}


def test_invalid_operations_fail_with_named_errors(db: sqlstream.Database) -> None:
    fill(db, 3)
    with pytest.raises(errors.StreamNotFound):
        db.create_subscription("sub", "nope")
    sub = db.create_subscription("sub", "s")
    with pytest.raises(errors.SubscriptionExists):
        db.create_subscription("sub", "s")
    with pytest.raises(errors.SubscriptionNotFound):
        db.subscription("other")
    with pytest.raises(errors.SubscriptionNotFound):
        db.delete_subscription("other")
    sub.fetch("c", 1)
    with pytest.raises(errors.SubscriptionInUse):
        db.delete_subscription("sub")
    assert db.subscription("sub").info().pending == 1  # the refusal changed nothing
    assert db.delete_subscription("sub", force=True) == 1
    with pytest.raises(errors.SubscriptionNotFound):
        sub.fetch("c", 1)
    with pytest.raises(errors.SubscriptionNotFound):
        sub.ack(0)
    with pytest.raises(errors.SubscriptionNotFound):
        sub.info()
    with pytest.raises(errors.InvalidName):
        db.create_subscription("bad name", "s")
    with pytest.raises(errors.InvalidName):
        db.create_subscription("ok", "s").fetch("bad consumer", 1)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"ack_timeout": 0}, errors.InvalidArgument),
        ({"ack_timeout": float("inf")}, errors.InvalidArgument),
        ({"max_unacked": 0}, errors.InvalidArgument),
        ({"max_deliveries": 3}, errors.InvalidArgument),  # needs dead_letter
        ({"dead_letter": "dl"}, errors.InvalidArgument),  # needs max_deliveries
        ({"max_deliveries": 3, "dead_letter": "s"}, errors.InvalidArgument),  # into itself
        ({"start": "middle"}, errors.InvalidArgument),
        ({"start": -1}, errors.InvalidArgument),
        ({"start": 4}, errors.OffsetOutOfRange),
    ],
)
def test_invalid_settings(db: sqlstream.Database, kwargs: dict[str, object], error: type[Exception]) -> None:
    fill(db, 3)
    with pytest.raises(error):
        db.create_subscription("sub", "s", **kwargs)  # type: ignore[arg-type]
    assert db.subscriptions() == []


def test_invalid_call_arguments(db: sqlstream.Database) -> None:
    fill(db, 3)
    sub = db.create_subscription("sub", "s")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(errors.InvalidArgument):
            sub.fetch("c", bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        sub.fetch("c", 1, timeout=-1)
    sub.fetch("c", 3)
    for call in (lambda: sub.ack(-1), lambda: sub.ack("1"), lambda: sub.nack(0, delay=-1),  # type: ignore[arg-type]
                 lambda: sub.extend_deadline(0, seconds=0)):
        with pytest.raises(errors.InvalidArgument):
            call()
    assert sub.info().pending == 3  # nothing half-done


def test_max_unacked_stops_delivery_until_acks_arrive(db: sqlstream.Database) -> None:
    fill(db, 20)
    sub = db.create_subscription("sub", "s", max_unacked=5)
    assert sub.fetch("a", 100).offsets == [0, 1, 2, 3, 4]
    assert sub.fetch("b", 100) == []
    sub.ack(0, 1)
    assert sub.fetch("b", 100).offsets == [5, 6]
    # A blocked fetch wakes when another thread acks.
    timer = threading.Timer(0.2, lambda: sub.ack(2))
    timer.start()
    started = time.monotonic()
    assert sub.fetch("b", 100, timeout=WAIT).offsets == [7]
    assert time.monotonic() - started < WAIT  # woken by the ack, not by its timeout
    timer.join()
    assert sub.info().pending == 5


# --------------------------------------------------------------------------- delivery details


def test_start_positions_are_fixed_at_creation(db: sqlstream.Database) -> None:
    stream = fill(db, 5)
    earliest = db.create_subscription("e", "s")
    latest = db.create_subscription("l", "s", start="latest")
    middle = db.create_subscription("m", "s", start=3)
    stream.extend(["x", "y"])
    assert earliest.fetch("c", 100).offsets == list(range(7))
    assert latest.fetch("c", 100).offsets == [5, 6]
    assert middle.fetch("c", 100).offsets == [3, 4, 5, 6]
    assert middle.start_offset == 3 and middle.info().start_offset == 3


def test_subscriptions_are_independent_and_recreated_ones_start_fresh(db: sqlstream.Database) -> None:
    fill(db, 4)
    a = db.create_subscription("a", "s")
    b = db.create_subscription("b", "s")
    a.ack(*a.fetch("c", 4).offsets)
    assert b.fetch("c", 4).offsets == [0, 1, 2, 3]
    assert a.info().acked == 4 and b.info().acked == 0
    db.delete_subscription("b", force=True)
    b2 = db.create_subscription("b", "s")
    assert b2.info().pending == 0 and b2.fetch("c", 10).offsets == [0, 1, 2, 3]
    with pytest.raises(errors.SubscriptionNotFound):  # the old handle is bound to the old one
        b.ack(0)
    assert b2.info().pending == 4
    assert [i.name for i in db.subscriptions()] == ["a", "b"]
    assert db.create_subscription("a", "s", exist_ok=True) == a
    fill(db, 0, "other")
    with pytest.raises(errors.SubscriptionExists):
        db.create_subscription("a", "other", exist_ok=True)


def test_ack_reports_what_was_not_pending(db: sqlstream.Database) -> None:
    fill(db, 5)
    sub = db.create_subscription("sub", "s")
    sub.fetch("c", 3)
    result = sub.ack(1, 1, 4, 0, 99)
    assert result.applied == (1, 0) and result.ignored == (4, 99)
    again = sub.ack(0, 2)
    assert again.applied == (2,) and again.ignored == (0,)
    assert sub.ack() == sqlstream.AckResult((), ())
    assert sub.info().acked == 3


def test_nack_redelivers_after_delay(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 3)
    sub = db.create_subscription("sub", "s", ack_timeout=60)
    sub.fetch("a", 3)
    assert sub.nack(0, 7).applied == (0,)
    assert sub.nack(1, delay=5, error="busy").ignored == ()
    pending = {p.offset: p for p in sub.pending()}
    assert pending[0].consumer is None and pending[0].expired
    assert pending[1].consumer is None and pending[1].last_error == "busy"
    assert sub.info().consumers == {"a": 1}
    assert sub.fetch("b", 10).offsets == [0]
    clock.advance(5)
    batch = sub.fetch("b", 10)
    assert batch.offsets == [1] and batch.attempts == {1: 2}
    assert sub.info().consumers == {"a": 1, "b": 2}


def test_expired_records_are_claimed_before_new_ones(db: sqlstream.Database, clock: Clock) -> None:
    stream = fill(db, 4)
    sub = db.create_subscription("sub", "s", ack_timeout=10)
    sub.fetch("a", 2)  # 0, 1 at t
    clock.advance(1)
    sub.fetch("a", 1)  # 2 at t+1
    stream.extend([4, 5])
    clock.advance(10)  # all three expired; 0 and 1 longest
    assert sub.fetch("b", 2).offsets == [0, 1]
    assert sub.fetch("b", 2).offsets == [2, 3]  # the rest expired first, then new
    assert sub.fetch("b", 9).offsets == [4, 5]


def test_extend_pushes_the_deadline(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 2)
    sub = db.create_subscription("sub", "s", ack_timeout=10)
    sub.fetch("a", 2)
    clock.advance(8)
    assert sub.extend_deadline(0, 5, seconds=30) == sqlstream.AckResult((0,), (5,))
    clock.advance(2)
    assert sub.fetch("b", 10).offsets == [1]
    sub.ack(1)
    clock.advance(27)
    assert sub.fetch("b", 10) == []
    clock.advance(1)
    assert sub.fetch("b", 10).offsets == [0]
    sub.nack(0)
    assert sub.extend_deadline(0, seconds=5).ignored == (0,)  # nacked: held by nobody


def test_subscription_extend_is_a_deprecated_alias_of_extend_deadline(db: sqlstream.Database) -> None:
    fill(db, 2)
    sub = db.create_subscription("sub", "s", ack_timeout=10)
    sub.fetch("a", 1)
    with pytest.warns(DeprecationWarning, match="extend_deadline"):
        result = sub.extend(0, 1, seconds=30)
    assert result == sqlstream.AckResult((0,), (1,))


def test_dead_letters_after_max_deliveries(db: sqlstream.Database, clock: Clock) -> None:
    stream = db.create_stream("s")
    stream.append({"job": 1}, key="k1", headers={"origin": "web"})
    stream.append(b"raw")
    sub = db.create_subscription("sub", "s", ack_timeout=5, max_deliveries=2, dead_letter="dead")
    dead = db.stream("dead")  # created with the subscription
    sub.fetch("a", 2)
    assert sub.nack(0, error="first").dead_lettered == ()
    clock.advance(5)  # offset 1 expires
    batch = sub.fetch("a", 2)
    assert batch.attempts == {0: 2, 1: 2}
    result = sub.nack(0, error="ValueError: bad job")
    assert result.applied == (0,) and result.dead_lettered == (0,)
    assert dead.read()[0].value == {"job": 1}
    clock.advance(5)  # offset 1 expires after its second delivery: dead-lettered by the next fetch
    assert sub.fetch("a", 2) == []
    letters = dead.read()
    assert [r.value for r in letters] == [{"job": 1}, b"raw"]
    assert letters[0].key == "k1"
    assert letters[0].headers == {
        "origin": "web",
        "sqlstream.source_stream": "s",
        "sqlstream.source_offset": "0",
        "sqlstream.subscription": "sub",
        "sqlstream.attempts": "2",
        "sqlstream.last_error": "ValueError: bad job",
    }
    assert "sqlstream.last_error" not in letters[1].headers
    info = sub.info()
    assert info.pending == 0 and info.dead_lettered == 2 and info.acked == 0 and info.acked_frontier == 2
    assert sub.ack(0, 1).ignored == (0, 1)


def test_dead_letter_stream_is_recreated_on_demand_and_a_sealed_one_refuses(
    db: sqlstream.Database, clock: Clock
) -> None:
    fill(db, 2)
    sub = db.create_subscription("sub", "s", max_deliveries=1, dead_letter="dead")
    db.delete_stream("dead")
    sub.fetch("a", 2)
    sub.nack(0)
    assert [r.value for r in db.stream("dead").read()] == [{"n": 0}]
    db.stream("dead").seal()
    with pytest.raises(errors.StreamSealed) as caught:
        sub.nack(1)
    assert "dead" in str(caught.value)
    assert [(p.offset, p.consumer) for p in sub.pending()] == [(1, "a")]  # rolled back whole
    with pytest.raises(errors.InvalidArgument):
        db.create_subscription("sub2", "s", max_deliveries=1, dead_letter="dead")


def test_pending_and_info(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 10)
    sub = db.create_subscription("sub", "s", ack_timeout=10, max_unacked=50)
    sub.fetch("a", 3)
    clock.advance(4)
    sub.fetch("b", 2)
    sub.ack(1)
    clock.advance(7)  # a's deadline passed, b's not
    entries = sub.pending()
    assert [(e.offset, e.consumer, e.attempts, e.expired) for e in entries] == [
        (0, "a", 1, True), (2, "a", 1, True), (3, "b", 1, False), (4, "b", 1, False)
    ]
    assert entries[0].idle == pytest.approx(11) and entries[2].idle == pytest.approx(7)
    assert entries[2].deadline - entries[2].delivered_at == pytest.approx(10)
    assert [e.offset for e in sub.pending(consumer="b")] == [3, 4]
    assert len(sub.pending(limit=1)) == 1
    info = sub.info()
    assert (info.lag, info.pending, info.expired, info.acked) == (5, 4, 2, 1)
    assert (info.acked_frontier, info.next_offset) == (0, 5)
    assert info.consumers == {"a": 2, "b": 2}
    assert (info.ack_timeout, info.max_unacked, info.max_deliveries, info.dead_letter) == (10.0, 50, None, None)
    assert db.subscriptions() == [info]


def test_views_read_with_stock_sqlite3(db: sqlstream.Database) -> None:
    fill(db, 6)
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    sub.fetch("a", 4)
    sub.ack(0)
    sub.nack(3, error="oops")
    conn = sqlite3.connect(db.path)  # Python's own sqlite3: no sqlstream code involved
    try:
        conn.row_factory = sqlite3.Row
        stats = [dict(r) for r in conn.execute("SELECT * FROM subscription_stats")]
        rows = [dict(r) for r in conn.execute("SELECT * FROM pending_deliveries ORDER BY offset")]
    finally:
        conn.close()
    assert len(stats) == 1
    s = stats[0]
    assert (s["name"], s["stream"], s["lag"], s["pending"], s["acked"], s["acked_frontier"]) == ("sub", "s", 2, 3, 1, 1)
    assert s["created"].endswith("Z")
    assert [(r["offset"], r["consumer"], r["attempts"], r["expired"]) for r in rows] == [
        (1, "a", 1, 0), (2, "a", 1, 0), (3, None, 1, 1)
    ]
    assert rows[2]["last_error"] == "oops" and rows[0]["idle_seconds"] >= 0
    if shutil.which("sqlite3"):
        out = subprocess.run(
            ["sqlite3", db.path, "SELECT name, pending FROM subscription_stats"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0 and out.stdout.strip() == "sub|3", out.stderr


def test_trimmed_records_are_skipped(db: sqlstream.Database, clock: Clock) -> None:
    fill(db, 10)
    sub = db.create_subscription("sub", "s", ack_timeout=5)
    sub.fetch("a", 2)
    # Trim offsets 0..5 as retention does, through a connection of our own.
    conn = apsw.Connection(db.path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Retention writes the stream's ends with first_offset (the row's are floors).
        conn.execute(
            "UPDATE streams SET first_offset = 6, first_position = "
            "(SELECT position FROM chunks WHERE offset = 6), next_offset = 10, "
            "byte_length = (SELECT byte_length FROM streams_now WHERE name = 's') WHERE name = 's'"
        )
        conn.execute("DELETE FROM chunks WHERE offset < 6")
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert sub.info().lag == 4
    clock.advance(5)
    assert sub.fetch("a", 100).offsets == [6, 7, 8, 9]
    assert sub.info().pending == 4  # the expired, trimmed ones left the pending list


def test_deleting_the_stream_deletes_its_subscriptions(db: sqlstream.Database) -> None:
    fill(db, 3)
    sub = db.create_subscription("sub", "s")
    sub.fetch("a", 3)
    db.delete_stream("s", force=True)
    assert db.subscriptions() == []
    with pytest.raises(errors.SubscriptionNotFound):
        sub.fetch("a", 1)
    assert db.query("SELECT count(*) FROM deliveries").rows == [(0,)]


# --------------------------------------------------------------------------- blocking fetch


def test_blocking_fetch_wakes_on_append_in_process(db: sqlstream.Database) -> None:
    stream = fill(db, 0)
    sub = db.create_subscription("sub", "s")
    timer = threading.Timer(0.2, lambda: stream.append("late"))
    timer.start()
    started = time.monotonic()
    batch = sub.fetch("c", 10, timeout=WAIT)
    elapsed = time.monotonic() - started
    timer.join()
    assert [r.value for r in batch] == ["late"] and 0.15 < elapsed < WAIT  # blocked, then woken


def test_blocking_fetch_wakes_on_append_by_another_process(db: sqlstream.Database) -> None:
    fill(db, 0)
    sub = db.create_subscription("sub", "s")
    child = spawn(
        "import sys, time, sqlstream\n"
        "time.sleep(0.3)\n"
        "with sqlstream.open(sys.argv[1]) as db: db.stream('s').append('from child')\n",
        db.path,
    )
    try:
        batch = sub.fetch("c", 10, timeout=20)
    finally:
        assert child.wait(30) == 0
    assert [r.value for r in batch] == ["from child"]


def test_blocking_fetch_wakes_at_the_next_ack_deadline(db: sqlstream.Database) -> None:
    fill(db, 1)
    sub = db.create_subscription("sub", "s", ack_timeout=0.3)
    sub.fetch("dies", 1)
    started = time.monotonic()
    batch = sub.fetch("c", 10, timeout=WAIT)
    elapsed = time.monotonic() - started
    assert batch.offsets == [0] and batch.attempts == {0: 2}
    assert 0.2 < elapsed < WAIT  # woken by the deadline, with no commit to wake it


CLAIM_AND_DIE = r"""
import sys, time, sqlstream
time.sleep(0.3)
db = sqlstream.open(sys.argv[1])
sub = db.subscription("sub")
with db.transaction():  # append and claim together: the waiting parent cannot take it first
    db.stream("s").append("held by a dying consumer")
    assert sub.fetch("doomed", 1).offsets == [0]
"""


@pytest.mark.multiprocess
def test_blocked_fetch_wakes_at_a_deadline_set_by_another_process(db: sqlstream.Database) -> None:
    fill(db, 0)
    sub = db.create_subscription("sub", "s", ack_timeout=0.5)
    child = spawn(CLAIM_AND_DIE, db.path)
    try:
        started = time.monotonic()
        batch = sub.fetch("survivor", 10, timeout=WAIT)
        elapsed = time.monotonic() - started
    finally:
        assert child.wait(60) == 0
    assert batch.offsets == [0] and batch.attempts == {0: 2}
    assert 0.5 < elapsed < WAIT  # woken by the other process's deadline, not by its timeout


def test_blocking_fetch_times_out_empty(db: sqlstream.Database) -> None:
    fill(db, 0)
    sub = db.create_subscription("sub", "s")
    started = time.monotonic()
    assert sub.fetch("c", 10, timeout=0.2) == []
    assert time.monotonic() - started >= 0.19


def test_blocked_fetch_of_a_deleted_subscription_raises(db: sqlstream.Database) -> None:
    fill(db, 0)
    sub = db.create_subscription("sub", "s")
    timer = threading.Timer(0.2, lambda: db.delete_subscription("sub"))
    timer.start()
    with pytest.raises(errors.SubscriptionNotFound):
        sub.fetch("c", 1, timeout=10)
    timer.join()


# --------------------------------------------------------------------------- exactly-once


def test_consume_transform_produce_commits_together(db: sqlstream.Database) -> None:
    fill(db, 5)
    out = db.create_stream("out")
    sub = db.create_subscription("sub", "s")
    with pytest.raises(RuntimeError):
        with db.transaction():
            batch = sub.fetch("w", 3, timeout=0)
            out.extend([r.value["n"] * 10 for r in batch])
            sub.ack(*batch.offsets)
            raise RuntimeError("crash before commit")
    assert out.read() == [] and sub.info().pending == 0 and sub.info().next_offset == 0
    with db.transaction():
        batch = sub.fetch("w", 3, timeout=0)
        out.extend([r.value["n"] * 10 for r in batch])
        sub.ack(*batch.offsets)
    assert batch.offsets == [0, 1, 2]  # redelivered: the rolled-back claim never happened
    assert [r.value for r in out.read()] == [0, 10, 20]
    info = sub.info()
    assert info.pending == 0 and info.acked == 3 and info.acked_frontier == 3


def test_blocking_fetch_inside_a_transaction_is_refused(db: sqlstream.Database) -> None:
    fill(db, 0)
    sub = db.create_subscription("sub", "s")
    with db.transaction():
        assert sub.fetch("w", 3, timeout=0) == []
        with pytest.raises(errors.InvalidArgument):
            sub.fetch("w", 3, timeout=1)


EXACTLY_ONCE_CHILD = r"""
import os, signal, sys, sqlstream
path, when = sys.argv[1], sys.argv[2]
db = sqlstream.open(path)
sub, out = db.subscription("sub"), db.stream("out")
with db.transaction():
    batch = sub.fetch("w", 2, timeout=0)
    out.extend([r.value for r in batch])
    sub.ack(*batch.offsets)
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.multiprocess
def test_exactly_once_across_a_crash(db: sqlstream.Database) -> None:
    fill(db, 4)
    out = db.create_stream("out")
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    child = spawn(EXACTLY_ONCE_CHILD, db.path, "before")
    assert child.wait(60) == -signal.SIGKILL
    assert out.read() == [] and sub.info().pending == 0  # crash before commit: nothing happened
    child = spawn(EXACTLY_ONCE_CHILD, db.path, "after")
    assert child.wait(60) == -signal.SIGKILL
    assert [r.value for r in out.read()] == [{"n": 0}, {"n": 1}]
    info = sub.info()
    assert info.acked == 2 and info.pending == 0
    assert sub.fetch("w", 10).offsets == [2, 3]  # after commit: nothing redelivered


def test_deleting_a_stream_with_pending_deliveries_is_refused_unless_forced(db: sqlstream.Database) -> None:
    """Issue 9 item 11: delete_stream silently dropped unacked work; now it is SubscriptionInUse."""
    fill(db, 3)
    sub = db.create_subscription("sub", "s")
    idle = db.create_subscription("idle", "s")  # nothing pending: no objection
    sub.fetch("a", 2)
    with pytest.raises(errors.SubscriptionInUse, match=r"'sub' \(2\)") as info:
        db.delete_stream("s")
    assert "force=True" in (info.value.hint or "")
    assert db.stream("s").info().count == 3 and len(sub.pending()) == 2 and idle.info().pending == 0
    sub.ack(*[p.offset for p in sub.pending()])
    db.delete_stream("s")  # nothing pending any more: no force needed
    assert db.subscriptions() == []
