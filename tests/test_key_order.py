"""Key-ordered delivery (``ordering="key"``): the behaviours one at a time."""

from __future__ import annotations

import pytest
from helpers_subscriptions import Clock

import sqlstream
from sqlstream import errors


def _keyed(db: sqlstream.Database, keys: str, **options: object) -> sqlstream.Subscription:
    s = db.create_stream("s")
    for i, k in enumerate(keys):
        s.append(i, key=None if k == "-" else k)
    return db.create_subscription("sub", "s", ordering="key", **options)  # type: ignore[arg-type]


def test_a_key_is_not_delivered_while_an_earlier_record_of_it_is_pending(db: sqlstream.Database) -> None:
    sub = _keyed(db, "aabacbb-")
    assert sub.fetch("c1", 10).offsets == [0, 2, 4, 7]  # one per key; unkeyed 7 too
    assert sub.fetch("c2", 10).offsets == []
    info = sub.info()
    assert (info.ordering, info.pending, info.waiting) == ("key", 4, 4)
    sub.ack(0)
    assert sub.fetch("c2", 10).offsets == [1]
    sub.ack(2, 1, 4)
    assert sub.fetch("c3", 10).offsets == [3, 5]
    assert sub.fetch("c3", 10).offsets == []
    sub.ack(5)
    assert sub.fetch("c3", 10).offsets == [6]


def test_records_without_a_key_are_not_ordered(db: sqlstream.Database) -> None:
    sub = _keyed(db, "----")
    assert sub.fetch("c1", 2).offsets == [0, 1]
    assert sub.fetch("c2", 2).offsets == [2, 3]


def test_nacked_with_delay_and_expired_records_keep_their_key_blocked(db: sqlstream.Database) -> None:
    clock = Clock()
    db.engine.clock = clock
    sub = _keyed(db, "aa", ack_timeout=5)
    assert sub.fetch("c1").offsets == [0]
    sub.nack(0, delay=10)
    assert sub.fetch("c2").offsets == []  # 0 waits for redelivery: 1 must wait too
    clock.advance(11)
    batch = sub.fetch("c2")
    assert batch.offsets == [0] and batch.attempts == {0: 2}
    clock.advance(6)  # expired while held: redelivered first, 1 still waits
    assert sub.fetch("c3").offsets == [0]


def test_a_dead_lettered_record_releases_its_key(db: sqlstream.Database) -> None:
    sub = _keyed(db, "aab", max_deliveries=1, dead_letter="dead")
    assert sub.fetch("c1").offsets == [0, 2]
    assert sub.nack(0).dead_lettered == (0,)
    assert sub.fetch("c1").offsets == [1]
    assert [r.headers["sqlstream.source_offset"] for r in db.stream("dead").read()] == ["0"]


def test_waiting_records_are_not_acked_and_count_against_max_unacked(db: sqlstream.Database) -> None:
    sub = _keyed(db, "aaab", max_unacked=2)
    assert sub.fetch("c1").offsets == [0]  # 1 waits; room for nothing more
    assert sub.ack(1).ignored == (1,)  # not delivered yet: an ack changes nothing
    assert [p.offset for p in sub.pending()] == [0]
    sub.ack(0)
    assert sub.fetch("c1").offsets == [1]
    assert sub.info().next_offset == 3  # 2 waits behind 1


def test_a_waiting_fetch_wakes_when_the_key_is_released(db: sqlstream.Database) -> None:
    import threading

    sub = _keyed(db, "aa")
    assert sub.fetch("c1").offsets == [0]
    got: list[list[int]] = []
    t = threading.Thread(target=lambda: got.append(sub.fetch("c2", timeout=5).offsets))
    t.start()
    sub.ack(0)
    t.join()
    assert got == [[1]]


@pytest.mark.parametrize("bad", ["KEY", "shard", 1, True, b"key"])
def test_bad_ordering_is_refused(db: sqlstream.Database, bad: object) -> None:
    db.create_stream("s")
    with pytest.raises(errors.InvalidArgument):
        db.create_subscription("sub", "s", ordering=bad)  # type: ignore[arg-type]
    assert db.subscriptions() == []


def test_default_ordering_is_none(db: sqlstream.Database) -> None:
    db.create_stream("s")
    sub = db.create_subscription("sub", "s")
    assert sub.info().ordering == "none" and sub.ordering == "none"
