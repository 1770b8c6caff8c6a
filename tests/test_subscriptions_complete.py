"""Complete subscriptions: seek/reset, configure, claim/autoclaim, redrive, read_many, read_reverse."""

from __future__ import annotations

import threading
import time
import tracemalloc
from typing import Any

import pytest
from helpers_subscriptions import Clock

import sqlstream
from sqlstream import errors
from sqlstream.subscriptions import COPY_PAGE_BYTES


def _setup(db: sqlstream.Database, n: int = 10, **options: object) -> sqlstream.Subscription:
    db.create_stream("s").extend(list(range(n)))
    return db.create_subscription("sub", "s", **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------- seek / reset


def test_seek_back_redelivers_from_the_position_and_keeps_older_pending(db: sqlstream.Database) -> None:
    sub = _setup(db)
    assert sub.fetch("c1", 6).offsets == [0, 1, 2, 3, 4, 5]
    sub.ack(0, 1)
    assert sub.seek(4) == 4
    assert [p.offset for p in sub.pending()] == [2, 3]  # before the position: still pending
    assert sub.ack(4).ignored == (4,)  # dropped: it will be delivered again
    assert sub.fetch("c2", 10).offsets == [4, 5, 6, 7, 8, 9]
    assert sub.ack(2, 3).applied == (2, 3)


def test_seek_forward_skips_records(db: sqlstream.Database) -> None:
    sub = _setup(db)
    sub.seek(8)
    assert sub.fetch("c1", 10).offsets == [8, 9]


def test_seek_by_time_finds_the_first_record_at_or_after_it(db: sqlstream.Database) -> None:
    clock = Clock(1_000.0)
    db.engine.clock = clock
    s = db.create_stream("s")
    s.extend([0, 1])
    clock.advance(10)
    s.extend([2, 3])
    sub = db.create_subscription("sub", "s", start="latest")
    assert sub.seek(at=1_005.0) == 2
    assert sub.fetch("c", 10).offsets == [2, 3]


def test_reset_earliest_and_latest(db: sqlstream.Database) -> None:
    sub = _setup(db, 5)
    assert sub.reset("latest") == 5
    assert sub.fetch("c").offsets == []
    assert sub.reset("earliest") == 0
    assert sub.fetch("c").offsets == [0, 1, 2, 3, 4]


def test_seek_wakes_a_blocked_fetch(db: sqlstream.Database) -> None:
    sub = _setup(db, 3, start="latest")
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(sub.fetch("c", timeout=5).offsets))
    t.start()
    time.sleep(0.1)
    sub.seek(1)
    t.join()
    assert got == [[1, 2]]


def test_seek_under_key_order_drops_waiting_records_and_keeps_order(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    for i, k in enumerate("aaab"):
        s.append(i, key=k)
    sub = db.create_subscription("sub", "s", ordering="key")
    assert sub.fetch("c").offsets == [0, 3]
    sub.seek(2)  # 1 (waiting) skipped, 3 dropped; 0 still pending, so 2 waits for it
    assert sub.fetch("c").offsets == [3]
    sub.ack(0)
    assert sub.fetch("c").offsets == [2]


@pytest.mark.parametrize("args", [(), (11,), (-1,), ("x",), (True,)])
def test_bad_seek_is_refused_and_changes_nothing(db: sqlstream.Database, args: tuple[object, ...]) -> None:
    sub = _setup(db)
    with pytest.raises(errors.SqlstreamError):
        sub.seek(*args)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        sub.seek(1, at=5.0)
    with pytest.raises(errors.InvalidArgument):
        sub.reset("middle")
    assert sub.info().next_offset == 0


# ----------------------------------------------------------------- configure


def test_configure_changes_settings_and_keeps_the_others(db: sqlstream.Database) -> None:
    sub = _setup(db, ack_timeout=5, max_unacked=100)
    info = sub.configure(max_unacked=2)
    assert (info.max_unacked, info.ack_timeout) == (2, 5)
    assert sub.fetch("c", 10).offsets == [0, 1]
    info = sub.configure(max_deliveries=3, dead_letter="dead")
    assert (info.max_deliveries, info.dead_letter) == (3, "dead")
    assert "dead" in [i.name for i in db.streams()]
    assert sub.configure(max_deliveries=None, dead_letter=None).dead_letter is None
    assert db.subscription("sub").max_unacked == 2


@pytest.mark.parametrize("kwargs", [
    {"ack_timeout": 0}, {"max_unacked": 0}, {"max_deliveries": 3}, {"dead_letter": "s"},
    {"dead_letter": "bad name!"}, {"ack_timeout": "1"},
])
def test_bad_configure_is_refused_and_changes_nothing(db: sqlstream.Database, kwargs: dict[str, object]) -> None:
    sub = _setup(db)
    before = sub.info()
    with pytest.raises(errors.SqlstreamError):
        sub.configure(**kwargs)  # type: ignore[arg-type]
    assert sub.info() == before


# ----------------------------------------------------------------- claim / autoclaim


def test_claim_takes_over_idle_pending_records(db: sqlstream.Database) -> None:
    clock = Clock()
    db.engine.clock = clock
    sub = _setup(db, 4)
    assert sub.fetch("c1", 3).offsets == [0, 1, 2]
    assert sub.claim("c2", 0, 1, 3, min_idle=5).offsets == []  # not idle long enough; 3 not pending
    clock.advance(6)
    batch = sub.claim("c2", 0, 1, 3, min_idle=5)
    assert batch.offsets == [0, 1] and batch.attempts == {0: 2, 1: 2}
    assert {p.offset: p.consumer for p in sub.pending()} == {0: "c2", 1: "c2", 2: "c1"}


def test_autoclaim_takes_the_oldest_idle_records_up_to_count(db: sqlstream.Database) -> None:
    clock = Clock()
    db.engine.clock = clock
    sub = _setup(db, 4, max_deliveries=2, dead_letter="dead")
    sub.fetch("c1", 3)
    clock.advance(10)
    assert sub.autoclaim("c2", min_idle=10, count=2).offsets == [0, 1]
    assert sub.autoclaim("c2", min_idle=10, count=5).offsets == [2]
    clock.advance(10)
    # All three had their max_deliveries: dead-lettered instead of claimed.
    assert sub.autoclaim("c3", min_idle=10).offsets == []
    assert [r.headers["sqlstream.source_offset"] for r in db.stream("dead").read()] == ["0", "1", "2"]
    assert sub.info().pending == 0


def test_bad_claims_are_refused(db: sqlstream.Database) -> None:
    sub = _setup(db)
    for call in (lambda: sub.claim("c", -1), lambda: sub.claim("bad name!", 1),
                 lambda: sub.autoclaim("c", count=0), lambda: sub.autoclaim("c", min_idle=-1)):
        with pytest.raises(errors.SqlstreamError):
            call()


# ----------------------------------------------------------------- redrive


def test_redrive_moves_each_dead_letter_back_once_with_its_original_offset(db: sqlstream.Database) -> None:
    db.create_stream("s").extend(["a", "b", "c"], key="k")
    sub = db.create_subscription("sub", "s", max_deliveries=1, dead_letter="dead")
    sub.fetch("c")
    sub.nack(0, 2, error="boom")
    sub.ack(1)
    assert sub.redrive(max_records=1) == [3]
    assert sub.redrive() == [4]
    assert sub.redrive() == []
    moved = db.stream("s").read(3)
    assert [(r.value, r.key, r.headers) for r in moved] == [
        ("a", "k", {"sqlstream.original_offset": "0"}), ("c", "k", {"sqlstream.original_offset": "2"}),
    ]
    # Dead again and redriven again: the first offset is kept.
    assert sub.fetch("c").offsets == [3, 4]
    sub.nack(3)
    sub.ack(4)
    assert sub.redrive() == [5]
    assert db.stream("s").read(5)[0].headers == {"sqlstream.original_offset": "0"}


def test_redrive_skips_a_letter_whose_value_is_gone_and_goes_on(db: sqlstream.Database, caplog: Any) -> None:
    """A dead letter whose payload row plain SQL deleted made every redrive fail with a
    raw TypeError (the redrive never got past it). Now it is skipped with a warning
    naming it (it stays, damaged, in the dead-letter stream); the others are redriven."""
    db.create_stream("s").extend([b"a" * 2000, b"b" * 2000, b"c" * 2000])  # out of their rows
    sub = db.create_subscription("sub", "s", max_deliveries=1, dead_letter="dead")
    sub.nack(*sub.fetch("c").offsets)
    with db.engine.write() as conn:
        conn.execute("DELETE FROM payloads WHERE offset = 1 AND stream_id = "
                     "(SELECT id FROM streams WHERE name = 'dead')")
    with caplog.at_level("WARNING", logger="sqlstream"):
        assert sub.redrive() == [3, 4]
    assert [r.value[:1] for r in db.stream("s").read(3)] == [b"a", b"c"]
    assert "offset 1 of stream 'dead'" in caplog.text
    assert sub.redrive() == []


def test_redrive_holds_a_page_of_letters_at_a_time_not_all_of_them(db: sqlstream.Database) -> None:
    """redrive() (all letters) read every letter's value into one list before appending:
    memory grew with the dead-letter stream. Now it appends a page (COPY_PAGE_BYTES)
    at a time inside its transaction. Python's allocations are traced: 24 MiB of letters
    are moved with a peak near one page, and all arrive, in order, once."""
    big = 512 * 1024
    values = [bytes([i]) * big for i in range(48)]
    db.create_stream("s").extend(values)
    sub = db.create_subscription("sub", "s", max_deliveries=1, dead_letter="dead", max_unacked=100)
    sub.nack(*sub.fetch("c", 100, max_bytes=None).offsets)
    tracemalloc.start()
    try:
        moved = sub.redrive()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert moved == list(range(48, 96))
    assert [r.value for r in db.stream("s").read(48, 100)] == values
    assert peak < 3 * COPY_PAGE_BYTES < len(values) * big, peak
    assert sub.redrive() == []


@pytest.mark.parametrize("how", ["nack", "expiry"])
def test_dead_lettering_many_records_holds_a_page_at_a_time(db: sqlstream.Database, how: str) -> None:
    """Moving records to the dead-letter stream (a nack, or the next fetch after their
    deadlines, with max_deliveries used up) read every one's value at once: a nack of
    10,000 large records held them all. Now a page (COPY_PAGE_BYTES) at a time, in the
    same transaction; all arrive, in order, with their headers."""
    clock = Clock()
    db.engine.clock = clock
    big = 512 * 1024
    values = [bytes([i]) * big for i in range(48)]
    db.create_stream("s").extend(values)
    sub = db.create_subscription("sub", "s", max_deliveries=1, dead_letter="dead", max_unacked=100, ack_timeout=5)
    offsets = sub.fetch("c", 100, max_bytes=None).offsets
    clock.advance(10)
    tracemalloc.start()
    try:
        if how == "nack":
            assert sub.nack(*offsets).dead_lettered == tuple(offsets)
        else:
            assert sub.fetch("c", 1, max_bytes=1).offsets == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    letters = db.stream("dead").read(0, 100)
    assert [r.value for r in letters] == values
    assert [int(r.headers["sqlstream.source_offset"]) for r in letters] == offsets
    assert sub.info().dead_lettered == 48 and sub.info().pending == 0
    assert peak < 3 * COPY_PAGE_BYTES < len(values) * big, peak


def test_redrive_needs_a_dead_letter_stream(db: sqlstream.Database) -> None:
    sub = _setup(db)
    with pytest.raises(errors.InvalidArgument):
        sub.redrive()


# ----------------------------------------------------------------- read_many / read_reverse


def test_read_many_returns_the_streams_with_records(db: sqlstream.Database) -> None:
    db.create_stream("a").extend([1, 2, 3])
    db.create_stream("b").extend([4])
    got = db.read_many({"a": 1, "b": 1})
    assert {k: [r.value for r in v] for k, v in got.items()} == {"a": [2, 3]}
    assert db.read_many({"a": 3, "b": 1}) == {}


def test_read_many_blocks_until_any_stream_has_a_record(db: sqlstream.Database) -> None:
    db.create_stream("a")
    b = db.create_stream("b")
    threading.Timer(0.1, lambda: b.append("x")).start()
    got = db.read_many({"a": 0, "b": 0}, timeout=5)
    assert list(got) == ["b"] and got["b"][0].value == "x"


def test_read_many_refuses_bad_input(db: sqlstream.Database) -> None:
    db.create_stream("a")
    for bad in ({}, {"a": -1}, {"bad name!": 0}, [("a", 0)]):
        with pytest.raises(errors.SqlstreamError):
            db.read_many(bad)  # type: ignore[arg-type]
    with pytest.raises(errors.StreamNotFound):
        db.read_many({"nope": 0})


def test_read_reverse_returns_newest_first(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend(list(range(10)))
    assert [r.offset for r in s.read_reverse(limit=3)] == [9, 8, 7]
    assert [r.offset for r in s.read_reverse(before=2)] == [1, 0]
    assert s.read_reverse(before=0) == []
    assert [r.offset for r in s.read_reverse(before=99, limit=1)] == [9]
    s.trim(8, force=True)
    assert [r.offset for r in s.read_reverse()] == [9, 8]
    with pytest.raises(errors.InvalidArgument):
        s.read_reverse(limit=0)
