"""Subscription.wait (issue 20 item 8): waiting for records without holding the write lock,
the way to wait in the exactly-once pattern (sync and sqlstream.aio)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import sqlstream
import sqlstream.aio
from sqlstream.errors import InvalidArgument
from sqlstream.testing import FakeClock


def test_wait_returns_when_records_arrive_and_claims_nothing(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    sub = db.create_subscription("g", "s")
    assert sub.wait(0) is False
    assert sub.wait(0.01) is False
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(sub.wait(None)))
    waiter.start()
    s.append("x")  # timeout=None: only this commit's wake-up ends the wait
    waiter.join()
    assert got == [True]
    assert sub.info().pending == 0, "wait() claimed records"
    assert [r.value for r in sub.fetch("c", 10)] == ["x"]
    assert sub.wait(0) is False  # all delivered


def test_wait_holds_no_lock_while_it_blocks(db_path: str) -> None:
    # While one thread waits, another commits a whole exactly-once transaction on the
    # same file; a wait that held the write lock would make that transaction time out.
    with sqlstream.open(db_path) as db, sqlstream.open(db_path, busy_timeout=2) as other:
        s = db.create_stream("s")
        out = db.create_stream("out")
        sub = db.create_subscription("g", "s")
        started = threading.Event()
        got: list[bool] = []

        def wait() -> None:
            started.set()
            got.append(sub.wait(None))

        waiter = threading.Thread(target=wait)
        waiter.start()
        started.wait()
        with other.transaction():
            other.stream("out").append("written while another thread waits")
        assert waiter.is_alive(), "wait() returned although nothing could be claimed"
        s.append("x")
        waiter.join()
        assert got == [True]
        assert len(out.read(0)) == 1


def test_wait_wakes_at_an_ack_deadline(db: sqlstream.Database) -> None:
    clock = FakeClock()
    clock.install(db)
    db.create_stream("s").append("x")
    sub = db.create_subscription("g", "s", ack_timeout=30)
    assert len(sub.fetch("c1", 1)) == 1
    assert sub.wait(0) is False  # held, deadline not reached
    clock.advance(31)
    assert sub.wait(0) is True
    assert sub.fetch("c2", 1).attempts == {0: 2}


def test_wait_inside_a_transaction_is_refused_unless_something_is_there(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    sub = db.create_subscription("g", "s")
    with db.transaction(), pytest.raises(InvalidArgument, match="transaction"):
        sub.wait(1)
    s.append("x")
    with db.transaction():
        assert sub.wait(1) is True


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "1", [], float("-inf")])
def test_wait_refuses_bad_timeouts(db: sqlstream.Database, bad: object) -> None:
    db.create_stream("s")
    sub = db.create_subscription("g", "s")
    with pytest.raises(InvalidArgument):
        sub.wait(bad)  # type: ignore[arg-type]


def test_the_exactly_once_loop_with_wait_processes_every_record_once(db_path: str) -> None:
    # Two workers run the README's pattern on one subscription while a producer appends.
    with sqlstream.open(db_path) as db:
        s = db.create_stream("s")
        db.create_stream("out")
        db.create_subscription("g", "s")
    done = threading.Event()

    def worker(name: str) -> None:
        with sqlstream.open(db_path) as db:
            sub, out = db.subscription("g"), db.stream("out")
            while not done.is_set() or sub.wait(0):
                if not sub.wait(0.05):
                    continue
                with db.transaction():
                    batch = sub.fetch(name, 7, timeout=0)
                    out.extend([r.value for r in batch])
                    sub.ack(*batch.offsets)

    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for w in workers:
        w.start()
    with sqlstream.open(db_path) as db:
        for i in range(0, 200, 10):
            db.stream("s").extend(range(i, i + 10))
    done.set()
    for w in workers:
        w.join()
    with sqlstream.open(db_path) as db:
        assert sorted(r.value for r in db.stream("out").read(0, 1000)) == list(range(200))
        assert db.subscription("g").info().pending == 0


def test_aio_wait_awaits_records_without_a_lock(tmp_path: Path) -> None:
    async def main() -> None:
        async with await sqlstream.aio.open(str(tmp_path / "a.db")) as adb:
            s = await adb.create_stream("s")
            out = await adb.create_stream("out")
            sub = await adb.create_subscription("g", "s")
            assert await sub.wait(0) is False
            waiting = asyncio.ensure_future(sub.wait(None))
            await adb.streams()  # the wait's first check has run (FIFO worker)
            assert not waiting.done()
            await s.append("x")
            assert await waiting is True
            assert (await sub.info()).pending == 0
            async with adb.transaction():
                with pytest.raises(InvalidArgument, match="transaction"):
                    await out.read(0, timeout=1)
                assert await sub.wait(1) is True  # something is there: no need to block
                batch = await sub.fetch("w1", 10, timeout=0)
                await out.extend([r.value for r in batch])
                await sub.ack(*batch.offsets)
            assert [r.value for r in await out.read(0)] == ["x"]
            with pytest.raises(InvalidArgument):
                await sub.wait(-1)

    asyncio.run(main())
