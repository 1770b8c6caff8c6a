"""A model-based test of retention, trimming and idempotent appends.

The oracle holds each stream's retained records, its retention settings and triggers,
one subscription's delivery frontier and pending set, and the remembered dedup ids. A
``hypothesis.stateful`` machine appends (with and without dedup ids), extends, trims
(forced or not), changes limits, runs ``maintain()``, fetches and acks, advances a fake
clock (which ages records and dedup ids) and opens, commits and rolls back transactions
— and after every step the database must hold exactly the records the oracle kept:
the oracle drops the same ones, at the same appends.

The oracle restates the rules of docs/architecture.md (retention and dedup) rather
than importing them: appends trim when the stream passes its trigger (the limit plus a
sixteenth of it, at most 1,024 records / 1 MiB), and then exactly down to the limits;
``max_bytes`` keeps the newest record; ``keep_unacked`` stops at the lowest offset the
subscription has not acked and then re-checks 64 appends later; explicit trims and
``maintain()`` are exact. Time is a fake clock (record timestamps, ack deadlines,
retention and dedup all read it) that jumps 1,500 s at a time against a ``max_age`` and
dedup window of 1,000 s, so ages are counted in jumps (epochs) and real time never ages
anything during the test; an append in a later epoch than the oldest record fires the
age trigger (``max_age`` plus its 60 s margin).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import sqlstream
from sqlstream import errors

NAMES = ("a", "b")
EPOCH = 1500.0  # seconds the clock jumps per advance; > MAX_AGE (1000) + its margin (60)
MAX_AGE = 1000.0
HELD_RECHECK = 64


def count_margin(limit: int) -> int:
    return min(limit // 16, 1024)


def bytes_margin(limit: int) -> int:
    return min(limit // 16, 1 << 20)


@dataclass
class Rec:
    offset: int
    value: bytes
    position: int
    epoch: int


@dataclass
class Model:
    max_count: int | None
    max_bytes: int | None
    max_age: float | None
    keep_unacked: bool
    dedup_records: int
    first: int = 0
    next: int = 0
    first_position: int = 0
    byte_length: int = 0
    records: list[Rec] = field(default_factory=list)
    trim_offset: int | None = None
    trim_bytes: int | None = None
    trim_epoch: int | None = None  # an append in a later epoch fires the age trigger
    frontier: int = 0  # the subscription's delivery frontier
    pending: set[int] = field(default_factory=set)
    dedup: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (offset, epoch)

    @property
    def limited(self) -> bool:
        return self.max_count is not None or self.max_bytes is not None or self.max_age is not None

    def guard(self) -> int:
        return min(self.pending) if self.pending else self.frontier

    def place_triggers(self, held: bool, epoch: int) -> None:
        if held:
            self.trim_offset, self.trim_bytes, self.trim_epoch = self.next + HELD_RECHECK, None, None
            return
        self.trim_epoch = None
        if self.max_age is not None:
            self.trim_epoch = self.records[0].epoch if self.records else epoch
        self.trim_offset = None if self.max_count is None else self.first + self.max_count + count_margin(self.max_count)
        self.trim_bytes = (
            None if self.max_bytes is None else self.first_position + self.max_bytes + bytes_margin(self.max_bytes)
        )

    def trim_to(self, new_first: int) -> None:
        new_first = min(new_first, self.next)
        if new_first <= self.first:
            return
        self.records = [r for r in self.records if r.offset >= new_first]
        self.first = new_first
        self.first_position = self.records[0].position if self.records else self.byte_length
        self.pending = {o for o in self.pending if o >= new_first}

    def target(self, epoch: int) -> int:
        """The first offset the limits (exactly) allow to stay."""
        target = self.first
        if self.max_count is not None and self.next - self.first > self.max_count:
            target = self.next - self.max_count
        if self.max_age is not None:
            young = [r.offset for r in self.records if r.epoch == epoch]
            target = max(target, young[0] if young else self.next)
        if self.max_bytes is not None and self.byte_length - self.first_position > self.max_bytes:
            keep = self.next - 1  # the newest record always stays
            for r in self.records[:-1]:
                if r.position >= self.byte_length - self.max_bytes:
                    keep = r.offset
                    break
            target = max(target, keep)
        return target

    def enforce(self, epoch: int) -> None:
        if not self.limited:
            self.trim_offset = self.trim_bytes = self.trim_epoch = None
            return
        target = self.target(epoch)
        cap = self.next if not self.keep_unacked else max(self.first, min(self.guard(), self.next))
        held = self.keep_unacked and target > cap
        self.trim_to(min(target, cap))
        self.place_triggers(held, epoch)

    def appended(self, values: list[bytes], epoch: int) -> list[int]:
        offsets = []
        for value in values:
            self.records.append(Rec(self.next, value, self.byte_length, epoch))
            offsets.append(self.next)
            self.next += 1
            self.byte_length += len(value)
        fired = (
            (self.trim_offset is not None and self.next > self.trim_offset)
            or (self.trim_bytes is not None and self.byte_length > self.trim_bytes)
            or (self.trim_epoch is not None and epoch > self.trim_epoch)
        )
        if fired:
            self.enforce(epoch)
        return offsets


payloads = st.binary(min_size=0, max_size=12)
dedup_ids = st.sampled_from(["k1", "k2", "k3", "k4"])
configs = st.fixed_dictionaries({
    "max_count": st.none() | st.integers(1, 40),
    "max_bytes": st.none() | st.integers(1, 120),
    "max_age": st.none() | st.just(MAX_AGE),
    "keep_unacked": st.booleans(),
    "dedup_records": st.integers(1, 12),
})


class RetentionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="sqlstream-retention-model-")
        self.db = sqlstream.open(str(Path(self.tmp) / "model.db"))
        self.start = time.time()
        self.epoch = 0
        clock = self.clock = lambda: self.start + self.epoch * EPOCH
        self.db.engine.clock = clock
        # Record timestamps come from the engine's clock too (Engine.now_us): they follow it.
        self.models: dict[str, Model] = {}
        self.saved: tuple[dict[str, Model], int] | None = None  # state at begin()
        self.block: Any = None

    def teardown(self) -> None:
        try:
            if self.block is not None:
                self.block.__exit__(RuntimeError, RuntimeError("teardown"), None)
        finally:
            self.db.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(a=configs, b=configs)
    def create(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        for name, config in (("a", a), ("b", b)):
            self.db.create_stream(name, dedup_seconds=MAX_AGE, **config)
            self.db.create_subscription(f"sub-{name}", name, ack_timeout=1e7, max_unacked=10_000)
            model = Model(**config)
            model.place_triggers(held=False, epoch=self.epoch)
            self.models[name] = model

    # ----------------------------------------------------------------- writing

    @rule(name=st.sampled_from(NAMES), value=payloads, dedup_id=st.none() | dedup_ids)
    def append(self, name: str, value: bytes, dedup_id: str | None) -> None:
        model = self.models[name]
        got = self.db.stream(name).append(value, dedup_id=dedup_id)
        if dedup_id is not None:
            known = model.dedup.get(dedup_id)
            if known is not None and known[1] == self.epoch and known[0] >= model.next - model.dedup_records:
                assert got == known[0]
                return
        assert got == model.appended([value], self.epoch) [0]
        if dedup_id is not None:
            model.dedup[dedup_id] = (got, self.epoch)

    @rule(name=st.sampled_from(NAMES), values=st.lists(payloads, max_size=20), with_ids=st.booleans(), data=st.data())
    def extend(self, name: str, values: list[bytes], with_ids: bool, data: st.DataObject) -> None:
        model = self.models[name]
        stream = self.db.stream(name)
        if not with_ids:
            got = list(stream.extend(values))
            assert got == (model.appended(values, self.epoch) if values else [])
            return
        ids = data.draw(st.lists(st.none() | dedup_ids, min_size=len(values), max_size=len(values)))
        got = stream.extend(values, dedup_ids=ids)
        want: list[int | None] = [None] * len(values)
        new: list[int] = []
        first_in_batch: dict[str, int] = {}
        for i, dedup_id in enumerate(ids):
            if dedup_id is not None:
                known = model.dedup.get(dedup_id)
                if known is not None and known[1] == self.epoch and known[0] >= model.next - model.dedup_records:
                    want[i] = known[0]
                    continue
                if dedup_id in first_in_batch:
                    continue
                first_in_batch[dedup_id] = i
            new.append(i)
        if new:
            for i, offset in zip(new, model.appended([values[i] for i in new], self.epoch)):
                want[i] = offset
        for dedup_id, i in first_in_batch.items():
            want_offset = want[i]
            assert want_offset is not None
            model.dedup[dedup_id] = (want_offset, self.epoch)
        for i, dedup_id in enumerate(ids):
            if want[i] is None and dedup_id is not None:
                want[i] = want[first_in_batch[dedup_id]]
        assert got == want

    # ----------------------------------------------------------------- trimming

    @rule(name=st.sampled_from(NAMES), data=st.data(), force=st.booleans())
    def trim(self, name: str, data: st.DataObject, force: bool) -> None:
        model = self.models[name]
        before = data.draw(st.integers(0, model.next + 3), label="before")
        result = self.db.trim(name, before, force=force)
        target = min(before, model.next)
        new_first = target
        if model.keep_unacked and not force:
            new_first = min(target, max(model.first, model.guard()))
        old_first = model.first
        model.trim_to(new_first)
        if model.limited:
            model.place_triggers(held=False, epoch=self.epoch)
        assert (result.trimmed, result.first_offset) == (model.first - old_first, model.first)
        assert (result.held is not None) == (target > model.first and model.keep_unacked and not force)

    # The dedup window stays as created: ids pruned under a smaller window are gone for
    # good (documented in sqlstream.dedup), which this oracle does not model.
    @rule(name=st.sampled_from(NAMES), config=configs.map(lambda c: {k: v for k, v in c.items() if k != "dedup_records"}))
    def set_retention(self, name: str, config: dict[str, Any]) -> None:
        model = self.models[name]
        self.db.set_retention(name, **config)
        for key, value in config.items():
            setattr(model, key, value)
        model.enforce(self.epoch)

    @rule()
    def maintain(self) -> None:
        if self.block is not None:
            with pytest.raises(errors.InvalidArgument):
                self.db.maintain()
            return
        self.db.maintain(vacuum=False, checkpoint=False, optimize=False)
        for model in self.models.values():
            if model.limited:
                model.enforce(self.epoch)

    @rule()
    def advance_clock(self) -> None:
        self.epoch += 1

    # ----------------------------------------------------------------- subscriptions

    @rule(name=st.sampled_from(NAMES), n=st.integers(1, 10))
    def fetch(self, name: str, n: int) -> None:
        model = self.models[name]
        batch = self.db.subscription(f"sub-{name}").fetch("w", n)
        start = max(model.frontier, model.first)
        count = max(0, min(n, model.next - start))
        assert batch.offsets == list(range(start, start + count))
        model.pending |= set(batch.offsets)
        model.frontier = start + count

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def ack(self, name: str, data: st.DataObject) -> None:
        model = self.models[name]
        if not model.pending:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(model.pending)), max_size=5, unique=True))
        result = self.db.subscription(f"sub-{name}").ack(*chosen)
        assert sorted(result.applied) == sorted(chosen)
        model.pending -= set(chosen)

    # ----------------------------------------------------------------- transactions

    @precondition(lambda self: self.block is None)
    @rule()
    def begin(self) -> None:
        self.block = self.db.transaction()
        self.block.__enter__()
        self.saved = (copy.deepcopy(self.models), self.epoch)

    @precondition(lambda self: self.block is not None)
    @rule(rollback=st.booleans())
    def end(self, rollback: bool) -> None:
        block, self.block = self.block, None
        if rollback:
            block.__exit__(RuntimeError, RuntimeError("rollback"), None)
            assert self.saved is not None
            self.models = self.saved[0]  # the clock is not transactional: keep the epoch
        else:
            block.__exit__(None, None, None)
        self.saved = None

    # ----------------------------------------------------------------- invariants

    @invariant()
    def database_matches_oracle(self) -> None:
        for name, model in self.models.items():
            stream = self.db.stream(name)
            info = stream.info()
            assert (info.first_offset, info.next_offset) == (model.first, model.next)
            assert (info.first_position, info.byte_length) == (model.first_position, model.byte_length)
            records = stream.read(model.first, 10_000)
            assert [(r.offset, r.value, r.position) for r in records] == [
                (r.offset, r.value, r.position) for r in model.records
            ]
            if model.first > 0:
                with pytest.raises(errors.OffsetOutOfRange, match=f"first available offset is {model.first}"):
                    stream.read(model.first - 1)
            pending = [e.offset for e in self.db.subscription(f"sub-{name}").pending()]
            assert pending == sorted(model.pending)
            over = model.limited and model.target(self.epoch) > model.first
            assert (info.over_limit is not None) == over, info.over_limit

    @invariant()
    def invariants_hold(self) -> None:
        if self.block is None:
            report = self.db.check(quick=True)
            assert report.ok, report


TestRetentionMachine = RetentionMachine.TestCase
