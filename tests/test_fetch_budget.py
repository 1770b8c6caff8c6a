"""A claim's byte budget: ``Subscription.fetch(max_bytes=...)``.

The property users rely on: a budgeted claim takes exactly what the same claim with a
smaller ``max_records`` would take — a prefix, in claim order (expired records by
deadline, released key-order records, then new ones by offset), of the unbounded claim,
the longest whose sizes fit the budget (at least one record) — and leaves the
subscription in exactly that claim's state, so nothing is claimed that is not returned
and the records it leaves are the next claim's, in the same order. The state machines
check it at every fetch against trial claims rolled back inside ``db.transaction()``.

The mechanism: sizes are measured in SQL from the record headers, so a claim of many
large records under a small budget reads about the budget's bytes from the file (counted
by a VFS that counts what SQLite reads), not every record's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import apsw
import pytest
from helpers_subscriptions import Clock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import sqlstream
from sqlstream import errors
import sqlstream.aio

ACK_TIMEOUT = 10
START = 1_000_000
CONSUMERS = st.sampled_from(["c1", "c2"])
# Sizes around the inline limit (906 bytes at the default page size): values both in
# their chunks row and in the payloads table.
SIZES = st.sampled_from([0, 1, 10, 300, 900, 907, 2000, 5000])


class _Trial(Exception):
    """Carries a trial claim's result out of the transaction it rolls back."""


def size_of(value: bytes, key: str | None, headers: dict[str, str] | None) -> int:
    """A record's size as fetch documents it: stored payload + key + headers, in bytes."""
    size = len(value)
    if key is not None:
        size += len(key.encode())
    if headers:
        size += len(json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode())
    return size


class BudgetModel(RuleBasedStateMachine):
    ordering = "none"

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlstream-budget-")
        self.db = sqlstream.open(f"{self.dir}/budget.db")
        self.clock = Clock(START)
        self.db.engine.clock = self.clock
        self.stream = self.db.create_stream("s")
        self.sub = self.db.create_subscription(
            "sub", "s", ack_timeout=ACK_TIMEOUT, max_unacked=12, max_deliveries=3, dead_letter="dead",
            ordering=self.ordering,
        )
        self.sizes: list[int] = []
        self.values: list[bytes] = []
        self.delivered: list[int] = []  # every offset fetched, in fetch order

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(sizes=st.lists(st.tuples(SIZES, st.sampled_from([None, "k1", "k2", "kk3"]), st.booleans()),
                         min_size=1, max_size=5))
    def append(self, sizes: list[tuple[int, str | None, bool]]) -> None:
        for size, key, with_headers in sizes:
            offset = len(self.values)
            value = bytes([offset % 251]) * size
            headers = {"h": "x" * (offset % 7)} if with_headers else None
            self.stream.append(value, key=key, headers=headers)
            self.values.append(value)
            self.sizes.append(size_of(value, key, headers))

    @rule(seconds=st.sampled_from([1, 10, 11]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    def _state(self) -> tuple[Any, ...]:
        info = self.sub.info()
        pending = [(p.offset, p.consumer, p.attempts, p.deadline) for p in self.sub.pending()]
        return info, pending, self.db.stream("dead").info().next_offset if "dead" in self._names() else 0

    def _names(self) -> set[str]:
        return {s.name for s in self.db.streams()}

    def _trial(self, consumer: str, max_records: int) -> tuple[dict[int, int], tuple[Any, ...]]:
        """What an unbounded claim of ``max_records`` takes, and the state it leaves; undone."""
        try:
            with self.db.transaction():
                batch = self.sub.fetch(consumer, max_records, max_bytes=None)
                raise _Trial(dict(batch.attempts), self._state())
        except _Trial as trial:
            return trial.args[0], trial.args[1]
        raise AssertionError("unreachable")

    @rule(consumer=CONSUMERS, max_records=st.integers(1, 8),
          max_bytes=st.one_of(st.none(), st.integers(1, 12_000)))
    def fetch(self, consumer: str, max_records: int, max_bytes: int | None) -> None:
        full, full_state = self._trial(consumer, max_records)
        # The claim order: the record a claim of k takes that a claim of k - 1 does not.
        order: list[int] = []
        trials: dict[int, tuple[dict[int, int], tuple[Any, ...]]] = {0: ({}, self._state())}
        for k in range(1, len(full) + 1):
            trials[k] = self._trial(consumer, k)
            added = set(trials[k][0]) - set(trials[k - 1][0])
            assert set(trials[k - 1][0]) <= set(trials[k][0]) and len(added) == 1
            order.append(added.pop())
        assert set(order) == set(full)
        k = len(order)
        if max_bytes is not None:
            k, total = 0, 0
            for offset in order:
                if k and total + self.sizes[offset] > max_bytes:
                    break
                k, total = k + 1, total + self.sizes[offset]
        # Cut by the budget, the claim is the claim of k; else the whole claim (under key
        # order a claim of more may scan further and leave records waiting).
        expected, state = trials[k] if k < len(order) else (full, full_state)
        batch = self.sub.fetch(consumer, max_records, max_bytes=max_bytes)
        assert batch.attempts == expected
        assert batch.offsets == sorted(expected)
        assert [r.value for r in batch] == [self.values[o] for o in batch.offsets]
        assert self._state() == state
        if max_bytes is not None and len(batch) > 1:
            assert sum(self.sizes[o] for o in batch.offsets) <= max_bytes
        self.delivered += batch.offsets

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        pending = [p.offset for p in self.sub.pending()]
        if pending:
            self.sub.ack(*data.draw(st.lists(st.sampled_from(pending), max_size=6)))

    @rule(data=st.data(), delay=st.sampled_from([0, 5]))
    def nack(self, data: st.DataObject, delay: int) -> None:
        pending = [p.offset for p in self.sub.pending() if p.consumer is not None]
        if pending:
            self.sub.nack(*data.draw(st.lists(st.sampled_from(pending), max_size=3)), delay=delay)


class KeyedBudgetModel(BudgetModel):
    ordering = "key"


BudgetModel.TestCase.settings = settings(BudgetModel.TestCase.settings, stateful_step_count=25, max_examples=30)
KeyedBudgetModel.TestCase.settings = settings(
    KeyedBudgetModel.TestCase.settings, stateful_step_count=25, max_examples=30
)
test_budgeted_claim_is_a_prefix_of_the_unbounded_one = BudgetModel.TestCase
test_budgeted_key_ordered_claim_is_a_prefix_of_the_unbounded_one = KeyedBudgetModel.TestCase


def test_budgeted_claims_deliver_the_stream_in_order(tmp_path: Any) -> None:
    """Drained with a small budget, a subscription delivers every record once, in order,
    each claim within the budget unless it holds one record."""
    with sqlstream.open(tmp_path / "drain.db") as db:
        s = db.create_stream("s")
        sizes = [(i * 397) % 3000 for i in range(200)]
        s.extend([b"v" * n for n in sizes])
        sub = db.create_subscription("sub", "s", max_unacked=1000)
        got: list[int] = []
        while batch := sub.fetch("c", 50, max_bytes=4000):
            assert len(batch) == 1 or sum(sizes[o] for o in batch.offsets) <= 4000
            if len(batch) < 50 and batch.offsets[-1] + 1 < len(sizes):
                # Cut by the budget: the next record would not have fitted.
                assert sum(sizes[o] for o in batch.offsets) + sizes[batch.offsets[-1] + 1] > 4000
            got += batch.offsets
            sub.ack(*batch.offsets)
        assert got == list(range(200))
        assert sub.info().pending == 0


def test_a_record_larger_than_the_budget_comes_alone(tmp_path: Any) -> None:
    with sqlstream.open(tmp_path / "big.db") as db:
        s = db.create_stream("s")
        s.extend([b"x" * 5000, b"y", b"z"])
        sub = db.create_subscription("sub", "s")
        assert sub.fetch("c", 10, max_bytes=100).offsets == [0]
        assert sub.fetch("c", 10, max_bytes=100).offsets == [1, 2]
        assert [p.offset for p in sub.pending()] == [0, 1, 2]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", 2**62 + 1])
def test_max_bytes_is_checked(tmp_path: Any, bad: object) -> None:
    with sqlstream.open(tmp_path / "bad.db") as db:
        db.create_stream("s").append(b"x")
        sub = db.create_subscription("sub", "s")
        with pytest.raises(errors.InvalidArgument, match="max_bytes"):
            sub.fetch("c", max_bytes=bad)  # type: ignore[arg-type]
        assert sub.info().pending == 0


def test_async_fetch_takes_the_budget(tmp_path: Any) -> None:
    async def main() -> list[list[int]]:
        adb = await sqlstream.aio.open(tmp_path / "aio.db")
        try:
            s = await adb.create_stream("s")
            await s.extend([b"a" * 600, b"b" * 600, b"c" * 600])
            sub = await adb.create_subscription("sub", "s")
            first = await sub.fetch("c", 10, max_bytes=1000)
            second = await sub.fetch("c", 10, timeout=1, max_bytes=1000)
            return [first.offsets, second.offsets]
        finally:
            await adb.close()

    assert asyncio.run(main()) == [[0], [1]]


# ----------------------------------------------------------------- the mechanism

class CountingFile(apsw.VFSFile):
    """A file of the default VFS that counts the bytes SQLite reads through it."""

    def __init__(self, vfs: CountingVFS, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self.vfs = vfs

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 - apsw's name
        self.vfs.read += amount
        data: bytes = super().xRead(amount, offset)
        return data


class CountingVFS(apsw.VFS):
    NAME = "sqlstream-test-counting"

    def __init__(self) -> None:
        super().__init__(self.NAME, "")
        self.read = 0

    def xOpen(self, name: Any, flags: list[int]) -> CountingFile:  # noqa: N802 - apsw's name
        return CountingFile(self, name, flags)


@pytest.fixture
def counting() -> Iterator[CountingVFS]:
    vfs = CountingVFS()
    yield vfs
    vfs.unregister()


@pytest.mark.parametrize("ordering", ["none", "key"])
def test_a_claim_of_big_records_reads_only_its_budget(tmp_path: Any, counting: CountingVFS, ordering: str) -> None:
    """40 records of 256 KiB: a 1 MiB budget claims 4 of them and reads little more than
    their bytes from the file; the unbounded claim (the control) reads them all."""
    path = tmp_path / "big.db"
    big = 256 * 1024
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        for i in range(40):
            s.append(os.urandom(big), key=f"k{i}")
        for name in ("budgeted", "unbounded"):
            db.create_subscription(name, "s", ordering=ordering, max_unacked=100)
    read: dict[str, int] = {}
    for name, max_bytes in (("budgeted", 1024 * 1024), ("unbounded", None)):
        # A fresh Database: nothing is in a connection's page cache yet.
        with sqlstream.open(path, vfs=CountingVFS.NAME) as db:
            sub = db.subscription(name)
            counting.read = 0
            batch = sub.fetch("c", 40, max_bytes=max_bytes)
            read[name] = counting.read
            assert all(len(r.value) == big for r in batch)
            assert len(batch) == (3 if max_bytes else 40)  # 3 x (256 KiB + key) fit in 1 MiB
            assert sub.info().pending == len(batch)
    assert read["unbounded"] > 40 * big
    assert read["budgeted"] < 4 * big + 256 * 1024, read


def test_autoclaim_takes_the_budget_too(tmp_path: Any) -> None:
    """autoclaim (XAUTOCLAIM) read every claimed record's value up to ``count``; it takes
    fetch's byte budget now: the records past it stay with their consumer, untouched."""
    with _open(tmp_path) as db:
        db.create_stream("s").extend([b"v" * 600] * 5)
        sub = db.create_subscription("sub", "s")
        assert sub.fetch("c1", 10).offsets == [0, 1, 2, 3, 4]
        got = sub.autoclaim("c2", count=10, max_bytes=1300)
        assert got.offsets == [0, 1] and got.attempts == {0: 2, 1: 2}
        assert [(p.offset, p.consumer, p.attempts) for p in sub.pending()] == [
            (0, "c2", 2), (1, "c2", 2), (2, "c1", 1), (3, "c1", 1), (4, "c1", 1)]
        assert sub.autoclaim("c3", count=10, max_bytes=1).offsets == [0]  # the first always
        with pytest.raises(errors.InvalidArgument, match="max_bytes"):
            sub.autoclaim("c3", max_bytes=0)


def _open(tmp_path: Any) -> sqlstream.Database:
    return sqlstream.open(tmp_path / "claim.db")


def test_a_pending_record_deleted_by_sql_does_not_use_up_the_first_record(tmp_path: Any) -> None:
    """A pending record whose row plain SQL deleted is dropped by the claim that meets it
    (nothing to deliver). It used to count as the claim's first record, so a larger
    record after it was refused by the budget and the fetch came back empty with work
    waiting; the first record the claim delivers is always taken."""
    with _open(tmp_path) as db:
        clock = Clock()
        db.engine.clock = clock
        db.create_stream("s").extend([b"a" * 10, b"b" * 5000])
        sub = db.create_subscription("sub", "s", ack_timeout=5)
        assert sub.fetch("c1", 10).offsets == [0, 1]
        with db.engine.write() as conn:
            conn.execute("DELETE FROM chunks WHERE offset = 0")
        clock.advance(10)
        got = sub.fetch("c2", 10, max_bytes=1000)
        assert got.offsets == [1] and got.attempts == {1: 2}
        assert [p.offset for p in sub.pending()] == [1]
        # Only a gone record due, then a new one larger than the budget: the new one comes.
        sub.ack(1)
        db.stream("s").extend([b"c" * 10, b"d" * 5000])
        assert sub.fetch("c1", 1).offsets == [2]
        with db.engine.write() as conn:
            conn.execute("DELETE FROM chunks WHERE offset = 2")
        clock.advance(10)
        assert sub.fetch("c2", 10, max_bytes=1000).offsets == [3]
