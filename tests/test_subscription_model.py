"""A Hypothesis state machine: fetch / ack / nack / extend / deadline expiry against an oracle.

The oracle is a plain dict of pending records with their consumer, attempts and deadline,
plus the delivery frontier, the acked set and the dead letters. Time is the controllable
clock ``db.engine.clock``, advanced in whole seconds, so deadlines expire exactly when the
oracle says, without sleeping. After every step the subscription's pending list, its
counters and the dead-letter stream must equal the oracle's.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from helpers_subscriptions import Clock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pytest

import sqlstream
from sqlstream import errors

ACK_TIMEOUT = 10
MAX_UNACKED = 8
MAX_DELIVERIES = 2
START = 1_000_000
CONSUMERS = st.sampled_from(["c1", "c2", "c3"])


@dataclass
class Entry:
    consumer: str | None
    attempts: int
    deadline: int
    last_error: str | None = None


class SubscriptionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlstream-model-")
        self.db = sqlstream.open(f"{self.dir}/model.db")
        self.clock = Clock(START)
        self.db.engine.clock = self.clock
        self.stream = self.db.create_stream("s")
        self.sub = self.db.create_subscription(
            "sub", "s", ack_timeout=ACK_TIMEOUT, max_unacked=MAX_UNACKED,
            max_deliveries=MAX_DELIVERIES, dead_letter="dead",
        )
        # The oracle.
        self.now = START
        self.appended = 0
        self.frontier = 0
        self.pending: dict[int, Entry] = {}
        self.acked = 0
        self.dead: list[tuple[int, int, str | None]] = []  # (offset, attempts, last_error)

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _dead_letter(self, offsets: list[int]) -> None:
        for offset in sorted(offsets):
            entry = self.pending.pop(offset)
            self.dead.append((offset, entry.attempts, entry.last_error))

    def _pick(self, data: st.DataObject) -> list[int]:
        """Offsets to act on: mostly pending ones, sometimes unknown or repeated ones."""
        known = sorted(self.pending)
        extra = st.integers(0, self.appended + 3)
        pool = st.sampled_from(known) | extra if known else extra
        return data.draw(st.lists(pool, max_size=6))

    # ----------------------------------------------------------------- rules

    @rule(count=st.integers(1, 6))
    def append(self, count: int) -> None:
        self.stream.extend([f"r{self.appended + i}" for i in range(count)])
        self.appended += count

    @rule(seconds=st.sampled_from([1, 9, 10, 11, 11, 25]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.now += seconds

    @rule(consumer=CONSUMERS, max_records=st.integers(1, 6))
    def fetch(self, consumer: str, max_records: int) -> None:
        batch = self.sub.fetch(consumer, max_records)
        now = self.now
        self._dead_letter([o for o, e in self.pending.items() if e.deadline <= now and e.attempts >= MAX_DELIVERIES])
        expired = sorted((e.deadline, o) for o, e in self.pending.items() if e.deadline <= now)[:max_records]
        expected: dict[int, int] = {}
        for _, offset in expired:
            entry = self.pending[offset]
            entry.consumer, entry.attempts, entry.deadline = consumer, entry.attempts + 1, now + ACK_TIMEOUT
            expected[offset] = entry.attempts
        room = max(0, min(max_records - len(expired), MAX_UNACKED - len(self.pending), self.appended - self.frontier))
        for offset in range(self.frontier, self.frontier + room):
            self.pending[offset] = Entry(consumer, 1, now + ACK_TIMEOUT)
            expected[offset] = 1
        self.frontier += room
        assert batch.offsets == sorted(expected)
        assert batch.attempts == expected
        assert [r.value for r in batch] == [f"r{o}" for o in batch.offsets]

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        offsets = self._pick(data)
        result = self.sub.ack(*offsets)
        wanted = list(dict.fromkeys(offsets))
        applied = [o for o in wanted if o in self.pending]
        assert result.applied == tuple(applied)
        assert result.ignored == tuple(o for o in wanted if o not in self.pending)
        for offset in applied:
            del self.pending[offset]
        self.acked += len(applied)

    @rule(data=st.data(), delay=st.sampled_from([0, 0, 2, 15]), error=st.sampled_from([None, "E1", "E2"]))
    def nack(self, data: st.DataObject, delay: int, error: str | None) -> None:
        offsets = self._pick(data)
        result = self.sub.nack(*offsets, delay=delay, error=error)
        wanted = list(dict.fromkeys(offsets))
        applied = [o for o in wanted if o in self.pending]
        for offset in applied:
            entry = self.pending[offset]
            entry.consumer, entry.deadline = None, self.now + delay
            if error is not None:
                entry.last_error = error
        exhausted = sorted(o for o in applied if self.pending[o].attempts >= MAX_DELIVERIES)
        self._dead_letter(exhausted)
        assert result.applied == tuple(applied)
        assert result.dead_lettered == tuple(exhausted)

    @rule(data=st.data(), seconds=st.sampled_from([1, 5, 30]))
    def extend(self, data: st.DataObject, seconds: int) -> None:
        offsets = self._pick(data)
        result = self.sub.extend_deadline(*offsets, seconds=seconds)
        wanted = list(dict.fromkeys(offsets))
        applied = [o for o in wanted if o in self.pending and self.pending[o].consumer is not None]
        for offset in applied:
            self.pending[offset].deadline = self.now + seconds
        assert result.applied == tuple(applied)

    @precondition(lambda self: bool(self.pending))
    @rule()
    def delete_without_force_is_refused(self) -> None:
        with pytest.raises(errors.SubscriptionInUse):
            self.db.delete_subscription("sub")

    # ----------------------------------------------------------------- invariants

    @invariant()
    def pending_matches(self) -> None:
        got = self.sub.pending()
        assert [(p.offset, p.consumer, p.attempts, p.deadline, p.expired) for p in got] == [
            (o, e.consumer, e.attempts, float(e.deadline), e.deadline <= self.now)
            for o, e in sorted(self.pending.items())
        ]
        assert [p.last_error for p in got] == [e.last_error for _, e in sorted(self.pending.items())]

    @invariant()
    def counters_match(self) -> None:
        info = self.sub.info()
        assert info.pending == len(self.pending) <= MAX_UNACKED
        assert info.acked == self.acked
        assert info.dead_lettered == len(self.dead)
        assert info.lag == self.appended - self.frontier
        assert info.next_offset == self.frontier
        assert info.acked_frontier == min(self.pending, default=self.frontier)
        assert info.expired == sum(1 for e in self.pending.values() if e.deadline <= self.now)
        holders: dict[str, int] = {}
        for e in self.pending.values():
            if e.consumer is not None:
                holders[e.consumer] = holders.get(e.consumer, 0) + 1
        assert info.consumers == holders

    @invariant()
    def dead_letters_match(self) -> None:
        letters = self.db.stream("dead").read(0, 10_000)
        assert [
            (int(r.headers["sqlstream.source_offset"]), int(r.headers["sqlstream.attempts"]),
             r.headers.get("sqlstream.last_error"))
            for r in letters
        ] == self.dead
        assert [r.value for r in letters] == [f"r{o}" for o, _, _ in self.dead]
        # Every record is in exactly one place: acked, pending, dead-lettered or undelivered.
        assert self.acked + len(self.pending) + len(self.dead) == self.frontier


SubscriptionModel.TestCase.settings = settings(SubscriptionModel.TestCase.settings, stateful_step_count=50)
test_subscription_model = SubscriptionModel.TestCase
