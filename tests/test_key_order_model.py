"""A Hypothesis state machine for key-ordered delivery (``ordering="key"``).

Consumers fetch, ack, nack (with and without delay), let deadlines expire (the clock is
``db.engine.clock``, advanced by hand) and exhaust ``max_deliveries`` into the dead-letter
stream. The oracle tracks every record's state (undelivered, pending with its consumer,
attempts and deadline, acked, dead-lettered) and checks, at every delivery, the property
users rely on: a keyed record is delivered only when every earlier record of its key is
settled (acked or dead-lettered) and no other record of its key is pending. A final drain
shows nothing is lost or stuck: every record ends acked or dead-lettered.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from helpers_subscriptions import Clock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import sqlstream

ACK_TIMEOUT = 10
MAX_UNACKED = 6
MAX_DELIVERIES = 3
START = 1_000_000
KEYS = st.sampled_from(["a", "a", "b", "c", None])
CONSUMERS = st.sampled_from(["c1", "c2", "c3"])


@dataclass
class Pending:
    consumer: str | None
    attempts: int
    deadline: int


class KeyOrderModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlstream-keymodel-")
        self.db = sqlstream.open(f"{self.dir}/model.db")
        self.clock = Clock(START)
        self.db.engine.clock = self.clock
        self.stream = self.db.create_stream("s")
        self.sub = self.db.create_subscription(
            "sub", "s", ack_timeout=ACK_TIMEOUT, max_unacked=MAX_UNACKED,
            max_deliveries=MAX_DELIVERIES, dead_letter="dead", ordering="key",
        )
        self.now = START
        self.keys: list[str | None] = []  # by offset
        self.pending: dict[int, Pending] = {}
        self.settled: set[int] = set()
        self.dead: list[int] = []
        self.delivered: dict[str, list[int]] = {}  # key -> offsets in delivery order

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _settle(self, offset: int) -> None:
        del self.pending[offset]
        self.settled.add(offset)

    def _check_delivery(self, offset: int) -> None:
        key = self.keys[offset]
        if key is None:
            return
        earlier = [o for o in range(offset) if self.keys[o] == key]
        assert all(o in self.settled for o in earlier), (offset, key, earlier, self.settled)
        others = [o for o in self.pending if o != offset and self.keys[o] == key]
        assert not others, (offset, key, others)
        self.delivered.setdefault(key, []).append(offset)

    def _fetch(self, consumer: str, max_records: int) -> list[int]:
        now = self.now
        # The claim dead-letters expired records that used up their attempts first.
        for o in sorted(o for o, p in self.pending.items() if p.deadline <= now and p.attempts >= MAX_DELIVERIES):
            self._settle(o)
            self.dead.append(o)
        batch = self.sub.fetch(consumer, max_records)
        assert len(batch) <= max_records
        for record in batch:
            o = record.offset
            assert record.value == o and record.key == self.keys[o]
            before = self.pending.get(o)
            if before is not None:
                assert before.deadline <= now, "a record held by a consumer was claimed again"
                assert batch.attempts[o] == before.attempts + 1
            else:
                assert o not in self.settled
                assert batch.attempts[o] == 1
            self.pending[o] = Pending(consumer, batch.attempts[o], now + ACK_TIMEOUT)
        for record in batch:
            self._check_delivery(record.offset)
        return batch.offsets

    # ----------------------------------------------------------------- rules

    @rule(keys=st.lists(KEYS, min_size=1, max_size=5))
    def append(self, keys: list[str | None]) -> None:
        for key in keys:
            self.stream.append(len(self.keys), key=key)
            self.keys.append(key)

    @rule(seconds=st.sampled_from([1, 5, 10, 11, 30]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.now += seconds

    @rule(consumer=CONSUMERS, max_records=st.integers(1, 5))
    def fetch(self, consumer: str, max_records: int) -> None:
        self._fetch(consumer, max_records)

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.pending:
            return
        offsets = data.draw(st.lists(st.sampled_from(sorted(self.pending)), max_size=3, unique=True))
        result = self.sub.ack(*offsets)
        assert sorted(result.applied) == sorted(offsets)
        for o in offsets:
            self._settle(o)

    @rule(data=st.data(), delay=st.sampled_from([0, 0, 3, 20]))
    def nack(self, data: st.DataObject, delay: int) -> None:
        if not self.pending:
            return
        offsets = data.draw(st.lists(st.sampled_from(sorted(self.pending)), max_size=3, unique=True))
        result = self.sub.nack(*offsets, delay=delay, error="boom")
        for o in offsets:
            p = self.pending[o]
            p.consumer, p.deadline = None, self.now + delay
        exhausted = sorted(o for o in offsets if self.pending[o].attempts >= MAX_DELIVERIES)
        assert list(result.dead_lettered) == exhausted
        for o in exhausted:
            self._settle(o)
            self.dead.append(o)

    @rule()
    def drain(self) -> None:
        """Ack everything until no record is left: nothing is lost, nothing stays stuck."""
        for _ in range(4 * len(self.keys) + 10):
            if len(self.settled) == len(self.keys):
                break
            self.clock.advance(ACK_TIMEOUT + 1)
            self.now += ACK_TIMEOUT + 1
            got = self._fetch("drainer", MAX_UNACKED)
            if got:
                self.sub.ack(*got)
                for o in got:
                    self._settle(o)
        assert len(self.settled) == len(self.keys), "records stuck behind their key"

    # ----------------------------------------------------------------- invariants

    @invariant()
    def pending_matches(self) -> None:
        got = self.sub.pending()
        assert [(p.offset, p.consumer, p.attempts) for p in got] == [
            (o, p.consumer, p.attempts) for o, p in sorted(self.pending.items())
        ]
        info = self.sub.info()
        assert info.ordering == "key"
        assert info.pending == len(self.pending)
        assert info.pending + info.waiting <= MAX_UNACKED

    @invariant()
    def never_two_pending_of_one_key(self) -> None:
        keys = [self.keys[o] for o in self.pending if self.keys[o] is not None]
        assert len(keys) == len(set(keys))

    @invariant()
    def per_key_deliveries_in_offset_order(self) -> None:
        for offsets in self.delivered.values():
            # Redeliveries repeat an offset; a new one is never below an earlier one.
            assert offsets == sorted(offsets)

    @invariant()
    def dead_letters_match(self) -> None:
        letters = self.db.stream("dead").read(0, 10_000)
        assert [int(r.headers["sqlstream.source_offset"]) for r in letters] == self.dead


KeyOrderModel.TestCase.settings = settings(
    KeyOrderModel.TestCase.settings, max_examples=60, stateful_step_count=40, deadline=None
)
test_key_order_model = KeyOrderModel.TestCase
