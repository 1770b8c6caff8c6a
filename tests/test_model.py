"""A model-based test of streams: random operation sequences checked against an oracle.

The oracle is a list of records per stream (the byte log is their payloads, concatenated).
A ``hypothesis.stateful`` machine drives create/delete/append/extend/seal/read/read_bytes
and nested transactions (committed or rolled back at any level) against a real SQLite
file, and after every step checks that the database and the oracle agree: gap-free
offsets, reads and byte reads equal the oracle's slices, ``info()`` counters match, and
txn numbers are equal within one transaction and increase with commit order.

Plain ``@given`` properties below cover value round-trips, batch contiguity and byte
reads over arbitrary chunk boundaries.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sqlstream
from sqlstream import errors

# --------------------------------------------------------------------------- values

NAMES = ("s0", "s1", "s2")
MAX_DEPTH = 3  # deepest transaction nesting the machine opens

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
json_containers = st.lists(json_values, max_size=4) | st.dictionaries(st.text(max_size=8), json_values, max_size=4)
json_top_scalars = (
    st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
)
# Non-ASCII text is drawn on purpose: byte positions count UTF-8 bytes, not characters.
# Each kind is a branch of its own so that every kind is drawn often.
record_values = st.one_of(st.binary(max_size=40), st.text(max_size=20), json_containers, json_top_scalars)
keys = st.none() | st.text(max_size=10)
headers = st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)


def payload(value: Any) -> bytes:
    """The bytes a value contributes to its stream's byte log (the documented encoding)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_type(value: Any) -> str:
    return "bytes" if isinstance(value, bytes) else "text" if isinstance(value, str) else "json"


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 != 1.0 != True here)."""
    return repr(a) == repr(b)


# --------------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class ModelRecord:
    value: Any
    key: str | None
    headers: dict[str, str]
    group: int  # the write transaction (commit order) that stored it


@dataclass
class ModelStream:
    records: list[ModelRecord] = field(default_factory=list)
    sealed: bool = False
    secret: str | None = None

    def copy(self) -> ModelStream:
        return ModelStream(list(self.records), self.sealed, self.secret)

    def log(self) -> bytes:
        return b"".join(payload(r.value) for r in self.records)


State = dict[str, ModelStream]


def copy_state(state: State) -> State:
    return {name: s.copy() for name, s in state.items()}


class StreamMachine(RuleBasedStateMachine):
    """Streams in one SQLite file against a dict of lists."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="sqlstream-model-")
        path = str(Path(self.tmp) / "model.db")
        self.db = sqlstream.open(path)
        # A second Database on the file sees only committed data: it checks atomicity
        # while the first one is inside a transaction.
        self.observer = sqlstream.open(path)
        self.state: State = {}
        self.stack: list[tuple[AbstractContextManager[Any], State]] = []  # open blocks, innermost last
        self.groups = itertools.count()
        self.tx_group: int | None = None

    def teardown(self) -> None:
        try:
            while self.stack:
                self._exit(RuntimeError("teardown"))
        finally:
            self.observer.close()
            self.db.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ----------------------------------------------------------------- helpers

    def _group(self) -> int:
        """The group of the next write: the open transaction's, or a fresh one."""
        return self.tx_group if self.tx_group is not None else next(self.groups)

    def _writer(self, name: str) -> sqlstream.Stream:
        secret = self.state[name].secret
        return self.db.writer(secret) if secret else self.db.stream(name)

    def _committed(self) -> State:
        return self.stack[0][1] if self.stack else self.state

    def _exit(self, exc: BaseException | None) -> None:
        block, saved = self.stack.pop()
        if exc is None:
            block.__exit__(None, None, None)
        else:
            block.__exit__(type(exc), exc, None)
            self.state = saved
        if not self.stack:
            self.tx_group = None

    # ----------------------------------------------------------------- streams

    @rule(name=st.sampled_from(NAMES), secret=st.booleans())
    def create_stream(self, name: str, secret: bool) -> None:
        if name in self.state:
            with pytest.raises(errors.StreamExists):
                self.db.create_stream(name, secret=secret)
            return
        handle = self.db.create_stream(name, secret=secret)
        assert (handle.write_secret is not None) == secret
        self.state[name] = ModelStream(secret=handle.write_secret)

    @rule(name=st.sampled_from(NAMES))
    def delete_stream(self, name: str) -> None:
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                self.db.delete_stream(name)
            return
        self.db.delete_stream(name)
        del self.state[name]

    @rule(name=st.sampled_from(NAMES))
    def seal(self, name: str) -> None:
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                self.db.stream(name)
            return
        model = self.state[name]
        if model.secret is not None:
            with pytest.raises(errors.AccessDenied):
                self.db.stream(name).seal()  # a plain handle cannot seal a secret stream
        assert self._writer(name).seal() is (not model.sealed)
        model.sealed = True

    # ----------------------------------------------------------------- writing

    @rule(
        name=st.sampled_from(NAMES),
        value=record_values,
        key=keys,
        hdrs=headers,
        expect=st.sampled_from(["none", "right", "wrong"]),
    )
    def append(self, name: str, value: Any, key: str | None, hdrs: dict[str, str] | None, expect: str) -> None:
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                sqlstream.Stream(self.db, name).append(value, key=key, headers=hdrs)
            return
        model = self.state[name]
        n = len(model.records)
        expect_offset = {"none": None, "right": n, "wrong": n + 1}[expect]
        handle = self._writer(name)
        if model.sealed:
            # Sealed wins over a wrong expect_offset: the append can never succeed.
            with pytest.raises(errors.StreamSealed):
                handle.append(value, key=key, headers=hdrs, expect_offset=expect_offset)
            return
        if expect == "wrong":
            with pytest.raises(errors.ConcurrencyError):
                handle.append(value, key=key, headers=hdrs, expect_offset=expect_offset)
            return
        offset = handle.append(value, key=key, headers=hdrs, expect_offset=expect_offset)
        assert offset == n
        model.records.append(ModelRecord(value, key, hdrs or {}, self._group()))

    @rule(name=st.sampled_from(NAMES), value=record_values)
    def append_without_secret(self, name: str, value: Any) -> None:
        """A secret stream refuses appends through a plain handle, changing nothing."""
        if name not in self.state or self.state[name].secret is None:
            return
        with pytest.raises(errors.AccessDenied):
            self.db.stream(name).append(value)

    @rule(
        name=st.sampled_from(NAMES),
        values=st.lists(record_values, max_size=6),
        key=keys,
        hdrs=headers,
        expect=st.sampled_from(["none", "right", "wrong"]),
    )
    def extend(
        self, name: str, values: list[Any], key: str | None, hdrs: dict[str, str] | None, expect: str
    ) -> None:
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                sqlstream.Stream(self.db, name).extend(values, key=key, headers=hdrs)
            return
        model = self.state[name]
        n = len(model.records)
        handle = self._writer(name)
        if not values:
            # An empty batch stores nothing and reports where the next record would go.
            assert handle.extend(values, key=key, headers=hdrs) == range(n, n)
            return
        expect_offset = {"none": None, "right": n, "wrong": n + 1}[expect]
        if model.sealed:
            with pytest.raises(errors.StreamSealed):
                handle.extend(values, key=key, headers=hdrs, expect_offset=expect_offset)
            return
        if expect == "wrong":
            with pytest.raises(errors.ConcurrencyError):
                handle.extend(values, key=key, headers=hdrs, expect_offset=expect_offset)
            return
        got = handle.extend(values, key=key, headers=hdrs, expect_offset=expect_offset)
        assert list(got) == list(range(n, n + len(values)))
        group = self._group()
        model.records.extend(ModelRecord(v, key, hdrs or {}, group) for v in values)

    # ----------------------------------------------------------------- transactions

    @precondition(lambda self: len(self.stack) < MAX_DEPTH)
    @rule()
    def begin(self) -> None:
        block = self.db.transaction()
        block.__enter__()
        if not self.stack:
            self.tx_group = next(self.groups)
        self.stack.append((block, copy_state(self.state)))
        assert self.db.in_transaction()

    @precondition(lambda self: bool(self.stack))
    @rule()
    def commit(self) -> None:
        """Leave the innermost block normally (RELEASE, or COMMIT for the outermost)."""
        self._exit(None)

    @precondition(lambda self: bool(self.stack))
    @rule()
    def rollback(self) -> None:
        """An exception leaves the innermost block: only that block is undone."""
        self._exit(RuntimeError("rollback innermost"))

    @precondition(lambda self: len(self.stack) > 1)
    @rule()
    def rollback_all(self) -> None:
        """An exception propagates through every open block: the outermost is undone."""
        while self.stack:
            self._exit(RuntimeError("rollback all"))
        assert not self.db.in_transaction()

    # ----------------------------------------------------------------- reading

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def read(self, name: str, data: st.DataObject) -> None:
        """read(offset, limit) is the oracle's slice; past a sealed end is out of range."""
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                sqlstream.Stream(self.db, name).read()
            return
        model = self.state[name]
        n = len(model.records)
        offset = data.draw(st.integers(0, n + 3), label="offset")
        limit = data.draw(st.integers(1, n + 3), label="limit")
        stream = self.db.stream(name)
        if model.sealed and offset > n:
            with pytest.raises(errors.OffsetOutOfRange):
                stream.read(offset, limit)
            return
        got = stream.read(offset, limit)
        self._check_records(name, got, model.records, offset, limit)

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def read_bytes(self, name: str, data: st.DataObject) -> None:
        """read_bytes follows the byte-log rules: WritePending, OffsetOutOfRange, finished."""
        if name not in self.state:
            with pytest.raises(errors.StreamNotFound):
                sqlstream.Stream(self.db, name).read_bytes(0, 1)
            return
        model = self.state[name]
        log = model.log()
        length = len(log)
        offset = data.draw(st.integers(0, length + 3), label="offset")
        limit = data.draw(st.none() | st.integers(0, length + 3), label="limit")
        stream = self.db.stream(name)
        end = length if limit is None else offset + limit
        if model.sealed and offset > length:
            with pytest.raises(errors.OffsetOutOfRange):
                stream.read_bytes(offset, limit)
        elif not model.sealed and (limit is None or end > length):
            with pytest.raises(errors.WritePending):
                stream.read_bytes(offset, limit)
        else:
            chunk = stream.read_bytes(offset, limit)
            expected = log[offset : min(end, length)]
            assert chunk.data == expected
            assert chunk.length == len(expected)
            assert chunk.finished == (model.sealed and min(end, length) == length)

    # ----------------------------------------------------------------- invariants

    @invariant()
    def database_matches_oracle(self) -> None:
        """Every stream's info, records and byte log equal the oracle's (writer's view)."""
        self._check_view(self.db, self.state)

    @invariant()
    def others_see_only_committed_data(self) -> None:
        """Another Database on the file sees the last committed state, never a partial one."""
        if self.stack:  # outside a transaction both views are the same committed state
            self._check_view(self.observer, self._committed())

    @invariant()
    def txn_numbers_follow_commit_order(self) -> None:
        """Records of one transaction share a txn number; later transactions get higher ones."""
        txn_of_group: dict[int, int] = {}
        for name, model in self.state.items():
            records = self.db.stream(name).read(0, max(1, len(model.records)))
            txns = [r.txn for r in records]
            assert txns == sorted(txns), f"txn numbers decrease along {name}: {txns}"
            for rec, mrec in zip(records, model.records):
                assert txn_of_group.setdefault(mrec.group, rec.txn) == rec.txn, (
                    f"one transaction's records carry different txn numbers in {name}"
                )
        ordered = [txn_of_group[g] for g in sorted(txn_of_group)]
        assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered), (
            f"txn numbers do not follow commit order: {ordered}"
        )

    def _check_view(self, db: sqlstream.Database, state: State) -> None:
        infos = {info.name: info for info in db.streams()}
        assert sorted(infos) == sorted(state)
        for name in NAMES:
            if name not in state:
                with pytest.raises(errors.StreamNotFound):
                    db.stream(name)
        for name, model in state.items():
            info = infos[name]
            n = len(model.records)
            log = model.log()
            assert (info.first_offset, info.next_offset, info.count) == (0, n, n)
            assert (info.byte_length, info.first_position) == (len(log), 0)
            assert info.sealed == model.sealed
            assert info.secret == (model.secret is not None)
            assert db.stream_info(name) == info
            stream = db.stream(name)
            records = stream.read(0, n + 1)
            self._check_records(name, records, model.records, 0, n + 1)
            timestamps = [r.timestamp for r in records]
            assert timestamps == sorted(timestamps)
            if model.sealed:
                assert stream.read(n, 5) == []
                assert stream.read_bytes(0) == (log, len(log), True)
            else:
                chunk = stream.read_bytes(0, len(log))
                assert chunk == (log, len(log), False)

    @staticmethod
    def _check_records(
        name: str, got: list[sqlstream.Record], all_records: list[ModelRecord], start: int, limit: int
    ) -> None:
        """``got`` is read(start, limit) of a stream whose oracle records are ``all_records``."""
        want = all_records[start : start + limit]
        assert [r.offset for r in got] == list(range(start, start + len(want))), "offsets not gap-free"
        position = sum(len(payload(r.value)) for r in all_records[:start])
        for rec, mrec in zip(got, want):
            assert rec.stream == name
            assert same(rec.value, mrec.value), (rec.value, mrec.value)
            assert rec.content_type == content_type(mrec.value)
            assert rec.key == mrec.key
            assert rec.headers == mrec.headers
            assert rec.position == position
            position += len(payload(mrec.value))


TestStreamMachine = StreamMachine.TestCase


# --------------------------------------------------------------------------- properties



def test_values_keys_and_headers_round_trip(tmp_path: Path) -> None:
    """Any storable value, key and headers read back equal and of the same type.

    bytearray and memoryview read back as bytes; tuples as lists (JSON arrays).
    """
    with sqlstream.open(tmp_path / "rt.db") as db:
        stream = db.create_stream("rt")

        @given(value=record_values, key=keys, hdrs=headers, wrap=st.sampled_from(["none", "bytearray", "memoryview"]))
        def check(value: Any, key: str | None, hdrs: dict[str, str] | None, wrap: str) -> None:
            sent: Any = value
            if isinstance(value, bytes) and wrap != "none":
                sent = bytearray(value) if wrap == "bytearray" else memoryview(value)
            offset = stream.append(sent, key=key, headers=hdrs)
            (rec,) = stream.read(offset, 1)
            assert same(rec.value, value)
            assert rec.content_type == content_type(value)
            assert rec.key == key
            assert rec.headers == (hdrs or {})
            # The stored payload is exactly the bytes the byte log serves for the record.
            assert stream.read_bytes(rec.position, len(payload(value))).data == payload(value)

        check()

        @given(items=st.lists(json_scalars, max_size=5))
        def check_tuple(items: list[Any]) -> None:
            offset = stream.append({"t": tuple(items)})
            assert same(stream.read(offset, 1)[0].value, {"t": items})

        check_tuple()


def test_extend_returns_a_contiguous_range(tmp_path: Path) -> None:
    """extend(batch) returns the next len(batch) offsets and stores the batch there, in order."""
    with sqlstream.open(tmp_path / "ext.db") as db:
        stream = db.create_stream("ext")

        @given(batch=st.lists(record_values, max_size=30))
        def check(batch: list[Any]) -> None:
            start = stream.info().next_offset
            got = stream.extend(batch)
            assert list(got) == list(range(start, start + len(batch)))
            assert stream.info().next_offset == start + len(batch)
            if batch:
                records = stream.read(start, len(batch) + 1)
                assert [r.offset for r in records] == list(got)
                assert all(same(r.value, v) for r, v in zip(records, batch))
                assert len({r.txn for r in records}) == 1  # one batch, one transaction

        check()


def test_read_bytes_over_any_chunk_boundaries(tmp_path: Path) -> None:
    """Reading a byte log in arbitrary pieces yields exactly the concatenated payloads."""
    with sqlstream.open(tmp_path / "bytes.db") as db:
        names = (f"log{i}" for i in itertools.count())

        @given(
            values=st.lists(record_values, max_size=12),
            cuts=st.lists(st.integers(0, 400), max_size=10),
            seal=st.booleans(),
            chunk_size=st.integers(1, 50),
        )
        def check(values: list[Any], cuts: list[int], seal: bool, chunk_size: int) -> None:
            stream = db.create_stream(next(names))
            stream.extend(values)
            log = b"".join(payload(v) for v in values)
            if seal:
                stream.seal()
            bounds = sorted({0, len(log), *(c for c in cuts if c <= len(log))})
            note(f"log={log!r} bounds={bounds}")
            pieces = [stream.read_bytes(a, b - a) for a, b in zip(bounds, bounds[1:])]
            assert b"".join(p.data for p in pieces) == log
            assert [p.length for p in pieces] == [b - a for a, b in zip(bounds, bounds[1:])]
            assert [p.finished for p in pieces] == [seal and b == len(log) for b in bounds[1:]]
            if seal:
                assert b"".join(stream.iter_bytes(chunk_size)) == log
                assert stream.read_bytes(bounds[-1]) == (b"", 0, True)
            elif log:
                assert b"".join(_take(stream, chunk_size, len(log))) == log
            else:
                with pytest.raises(errors.WritePending):
                    next(stream.iter_bytes(chunk_size, timeout=0.001))

        check()


def _take(stream: sqlstream.Stream, chunk_size: int, length: int) -> list[bytes]:
    """iter_bytes on an unsealed stream: collect pieces until ``length`` bytes came."""
    out: list[bytes] = []
    got = 0
    for piece in stream.iter_bytes(chunk_size, timeout=1.0):
        assert 0 < len(piece) <= chunk_size
        out.append(piece)
        got += len(piece)
        if got >= length:
            break
    return out


# --------------------------------------------------------------------------- regressions
# Sequences the machine found (or needs many examples to find), kept as plain tests.


def test_failed_append_inside_a_transaction_keeps_one_txn_number(db: sqlstream.Database) -> None:
    """A refused append (its savepoint rolled back) does not split the transaction's txn number."""
    a = db.create_stream("a")
    with db.transaction():
        a.append(b"1")
        with pytest.raises(errors.StreamNotFound):
            sqlstream.Stream(db, "missing").append(b"x")
        with pytest.raises(errors.ConcurrencyError):
            a.append(b"x", expect_offset=7)
        a.append(b"2")
    assert [r.txn for r in a.read()] == [1, 1]
    assert a.append(b"3") == 2 and a.read(2)[0].txn == 2


def test_rolled_back_inner_block_keeps_the_outer_txn_number(db: sqlstream.Database) -> None:
    """Rolling back a nested block leaves the outer block's records under one txn number."""
    a, b = db.create_stream("a"), db.create_stream("b")
    with db.transaction():
        a.append(b"1")
        with pytest.raises(RuntimeError):
            with db.transaction():
                b.append(b"rolled back")
                raise RuntimeError
        with db.transaction():
            b.append(b"2")
        a.append(b"3")
    txns = {r.txn for r in a.read() + b.read()}
    assert [r.value for r in b.read()] == [b"2"]
    assert len(txns) == 1
