"""A consumer that comes back under its name takes back its own unacked records at once,
and acks are fenced by delivery (issue 20 item 7)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from helpers_subscriptions import spawn

import sqlstream
import sqlstream.aio
from sqlstream.errors import ConcurrencyError, InvalidArgument, InvalidName
from sqlstream.testing import FakeClock, wait_for_stream


def _setup(db: sqlstream.Database, n: int = 3) -> sqlstream.Subscription:
    FakeClock().install(db)  # stands still: no ack deadline passes in these tests
    db.create_stream("s").extend(range(n))
    db.create_stream("out")
    return db.create_subscription("g", "s", ack_timeout=600)


def test_rejoin_makes_the_consumers_records_claimable_at_once(db: sqlstream.Database) -> None:
    sub = _setup(db, 4)
    mine = sub.fetch("w1", 3)
    other = sub.fetch("w2", 1)
    assert sub.fetch("w1", 10) == []  # held until the ack deadline (600 s) otherwise
    assert sub.rejoin("w1") == 3
    assert sub.info().consumers == {"w2": 1}
    again = sub.fetch("w1", 10)
    assert again.offsets == mine.offsets and set(again.attempts.values()) == {2}
    assert sub.rejoin("nobody") == 0
    assert sub.pending("w2")[0].offset == other.offsets[0]


@pytest.mark.parametrize("bad", ["", "x" * 300, "\udc80", 5, None])
def test_rejoin_refuses_bad_names(db: sqlstream.Database, bad: object) -> None:
    sub = _setup(db)
    with pytest.raises((InvalidName, InvalidArgument)):
        sub.rejoin(bad)  # type: ignore[arg-type]


def test_a_late_ack_of_the_old_delivery_is_fenced_and_rolls_its_output_back(db_path: str) -> None:
    with sqlstream.open(db_path) as old, sqlstream.open(db_path) as new:
        sub_old = _setup(old)
        batch_old = sub_old.fetch("w1", 10)  # the old incarnation, about to stall
        sub_new = new.subscription("g")
        assert sub_new.rejoin("w1") == 3  # the new incarnation starts under the same name
        with new.transaction():
            batch_new = sub_new.fetch("w1", 10, timeout=0)
            new.stream("out").extend([r.value for r in batch_new])
            sub_new.ack(*batch_new.offsets, attempts=batch_new.attempts)
        with pytest.raises(ConcurrencyError), old.transaction():  # the old one wakes up late
            old.stream("out").extend([r.value for r in batch_old])
            sub_old.ack(*batch_old.offsets, attempts=batch_old.attempts)
        assert [r.value for r in old.stream("out").read(0)] == [0, 1, 2], "a record was processed twice"
        assert sub_old.info().pending == 0


def test_a_fenced_ack_applies_while_the_delivery_is_still_the_same(db: sqlstream.Database) -> None:
    sub = _setup(db)
    batch = sub.fetch("w1", 10)
    sub.rejoin("w1")  # taken back, not delivered again yet: the old delivery may still ack
    assert sub.ack(*batch.offsets, attempts=batch.attempts).applied == (0, 1, 2)
    with pytest.raises(ConcurrencyError):  # acked already: refused, and nothing changes
        sub.ack(0, attempts=batch.attempts)
    assert sub.fetch("w1", 10) == []


@pytest.mark.parametrize("bad", [[1], "x", {0: "1"}, {0: 0}, {0: True}, {}, {1: 1}])
def test_ack_refuses_bad_attempts_and_changes_nothing(db: sqlstream.Database, bad: object) -> None:
    sub = _setup(db)
    batch = sub.fetch("w1", 1)
    with pytest.raises(InvalidArgument):
        sub.ack(*batch.offsets, attempts=bad)  # type: ignore[arg-type]
    assert sub.info().pending == 1


_CHILD = """
import json, sys, time
import sqlstream
db = sqlstream.open(sys.argv[1])
mode = sys.argv[2]
def stall(batch):
    db.stream("seen").extend([r.offset for r in batch])
    time.sleep(3600)  # holds its records until SIGKILLed
def finish(batch):
    db.stream("done").extend([{"offset": r.offset, "attempts": batch.attempts[r.offset]} for r in batch])
db.consumer("g", stall if mode == "stall" else finish, name="w1", batch=10).run()
"""


def test_a_consumer_sigkilled_and_restarted_under_its_name_gets_its_records_back_at_once(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("s").extend(range(5))
        db.create_stream("seen")
        db.create_stream("done")
        db.create_subscription("g", "s", ack_timeout=3600)  # longer than this test may wait
        first = spawn(_CHILD, db_path, "stall")
        try:
            wait_for_stream(db, "seen", 5, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert db.subscription("g").info().consumers == {"w1": 5}
        second = spawn(_CHILD, db_path, "finish")
        try:
            # Only the take-back can deliver them before their one-hour ack deadline.
            done = wait_for_stream(db, "done", 5, timeout=60)
            # The consumer acks after its callback returns, in a transaction of its own:
            # wait for the acks (through the file's wake-ups) before killing it.
            assert db.engine.wait_until(lambda: db.subscription("g").info().acked == 5 or None, 60)
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait()
        assert sorted((r.value["offset"], r.value["attempts"]) for r in done) == [(i, 2) for i in range(5)]
        info = db.subscription("g").info()
        assert info.pending == 0 and info.acked == 5


def test_aio_consumer_takes_back_what_its_name_held(tmp_path: Path) -> None:
    async def main() -> None:
        async with await sqlstream.aio.open(str(tmp_path / "a.db")) as adb:
            s = await adb.create_stream("s")
            await s.extend(range(3))
            sub = await adb.create_subscription("g", "s", ack_timeout=3600)
            held = await sub.fetch("w1", 10)  # an earlier incarnation that never acked
            seen: list[tuple[int, int]] = []

            async def handler(batch: sqlstream.Batch) -> None:
                seen.extend((r.offset, batch.attempts[r.offset]) for r in batch)
                if len(seen) >= 3:
                    consumer.stop()

            consumer = adb.consumer("g", handler, name="w1")
            await consumer.run()
            assert sorted(seen) == [(o, 2) for o in held.offsets]
            assert (await sub.info()).pending == 0
            with pytest.raises(ConcurrencyError):
                await sub.ack(*held.offsets, attempts=held.attempts)

    asyncio.run(main())
