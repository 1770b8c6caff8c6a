"""Producer fencing (Stream.append_fenced) and stream lifetimes (expiry, forks, soft deletion).

The Durable Streams front maps its idempotent producers, Stream-Seq, TTL/Expires-At and
forks onto these; the properties here are the ones it relies on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sqlstream
from sqlstream.errors import (
    InvalidArgument,
    OffsetOutOfRange,
    SequenceGap,
    SequenceRegression,
    StaleEpoch,
    StreamExists,
    StreamGone,
    StreamSealed,
)


def test_producer_duplicates_are_not_stored_and_gaps_are_refused(db: sqlstream.Database) -> None:
    s = db.create_stream("p")
    first = s.append_fenced([b"a", b"b"], producer="w", epoch=0, seq=0)
    assert (first.offsets, first.duplicate, first.seq) == (range(0, 2), False, 0)
    again = s.append_fenced([b"a", b"b"], producer="w", epoch=0, seq=0)
    assert again.duplicate and again.offsets == range(2, 2) and again.next_offset == 2
    with pytest.raises(SequenceGap) as gap:
        s.append_fenced([b"c"], producer="w", epoch=0, seq=2)
    assert (gap.value.expected, gap.value.received) == (1, 2)
    assert [r.value for r in s.read()] == [b"a", b"b"]


def test_a_new_epoch_fences_the_old_one(db: sqlstream.Database) -> None:
    s = db.create_stream("p")
    s.append_fenced([b"old"], producer="w", epoch=0, seq=0)
    with pytest.raises(InvalidArgument, match="starts at seq 0"):
        s.append_fenced([b"x"], producer="w", epoch=1, seq=3)
    s.append_fenced([b"new"], producer="w", epoch=1, seq=0)
    with pytest.raises(StaleEpoch) as stale:
        s.append_fenced([b"zombie"], producer="w", epoch=0, seq=1)
    assert stale.value.current_epoch == 1
    assert [r.value for r in s.read()] == [b"old", b"new"]


def test_producers_are_per_stream_and_a_new_one_starts_at_zero(db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    a.append_fenced([1], producer="w", epoch=0, seq=0)
    assert not b.append_fenced([1], producer="w", epoch=0, seq=0).duplicate
    with pytest.raises(SequenceGap):
        a.append_fenced([1], producer="other", epoch=0, seq=5)


def test_seal_with_the_last_batch_and_a_retried_close_is_a_duplicate(db: sqlstream.Database) -> None:
    s = db.create_stream("p")
    done = s.append_fenced([b"last"], producer="w", epoch=0, seq=0, seal=True)
    assert done.sealed and done.offsets == range(0, 1)
    retry = s.append_fenced([b"last"], producer="w", epoch=0, seq=0, seal=True)
    assert retry.duplicate and retry.sealed
    with pytest.raises(StreamSealed):
        s.append_fenced([b"more"], producer="w", epoch=0, seq=1)
    with pytest.raises(StreamSealed):
        s.append(b"plain")


def test_writer_sequence_must_grow_bytewise(db: sqlstream.Database) -> None:
    s = db.create_stream("p")
    s.append_fenced([b"1"], writer_seq="09")
    s.append_fenced([b"2"], writer_seq="10")
    with pytest.raises(SequenceRegression):
        s.append_fenced([b"3"], writer_seq="10")
    with pytest.raises(SequenceRegression):
        s.append_fenced([b"3"], writer_seq="1")  # "1" < "10" byte-wise
    assert s.info().next_offset == 2


def test_a_refused_fenced_append_changes_nothing(db: sqlstream.Database) -> None:
    s = db.create_stream("p")
    s.append_fenced([b"a"], producer="w", epoch=0, seq=0, writer_seq="b")
    with pytest.raises(SequenceRegression):
        # The producer part would be accepted; the whole append is refused, state included.
        s.append_fenced([b"b"], producer="w", epoch=0, seq=1, writer_seq="a")
    assert s.append_fenced([b"b"], producer="w", epoch=0, seq=1).offsets == range(1, 2)


def test_producer_state_and_records_commit_together_across_a_kill(tmp_path: Path) -> None:
    """SIGKILL right after a fenced append returned: a retry is still a duplicate."""
    path = str(tmp_path / "k.db")
    with sqlstream.open(path) as db:
        db.create_stream("p")
    child = textwrap.dedent(f"""
        import os, signal, sqlstream
        db = sqlstream.open({path!r})
        db.stream("p").append_fenced([b"once"], producer="w", epoch=3, seq=0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == -signal.SIGKILL
    with sqlstream.open(path) as db:
        s = db.stream("p")
        assert s.append_fenced([b"once"], producer="w", epoch=3, seq=0).duplicate
        assert [r.value for r in s.read()] == [b"once"]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4)), max_size=25))
def test_fencing_matches_a_model(tmp_path_factory: pytest.TempPathFactory, sends: list[tuple[int, int]]) -> None:
    """Any sequence of (epoch, seq) sends: stored, duplicate or refused exactly as the rules say."""
    path = str(tmp_path_factory.mktemp("fence") / "m.db")
    with sqlstream.open(path) as db:
        s = db.create_stream("p")
        state: tuple[int, int] | None = None
        stored: list[tuple[int, int]] = []
        for epoch, seq in sends:
            if state is None:
                expect = "stored" if seq == 0 else "gap"
            elif epoch < state[0]:
                expect = "stale"
            elif epoch > state[0]:
                expect = "stored" if seq == 0 else "invalid"
            elif seq <= state[1]:
                expect = "dup"
            else:
                expect = "stored" if seq == state[1] + 1 else "gap"
            try:
                result = s.append_fenced([[epoch, seq]], producer="w", epoch=epoch, seq=seq)
                got = "dup" if result.duplicate else "stored"
            except StaleEpoch:
                got = "stale"
            except SequenceGap:
                got = "gap"
            except InvalidArgument:
                got = "invalid"
            assert got == expect, (epoch, seq, state)
            if got == "stored":
                state = (epoch, seq)
                stored.append((epoch, seq))
        assert [tuple(r.value) for r in s.read(0, 100)] == stored


def test_fork_copies_records_below_the_offset_at_the_same_offsets(db: sqlstream.Database) -> None:
    src = db.create_stream("src", metadata={"kind": "x"})
    src.append(b"a", key="k", headers={"h": "1"})
    src.extend([{"n": 1}, "text"])
    fork = db.fork_stream("fork", "src", 2)
    recs = fork.read()
    assert [(r.offset, r.value, r.key) for r in recs] == [(0, b"a", "k"), (1, {"n": 1}, None)]
    assert recs[0].headers == {"h": "1"}
    assert fork.info().metadata == {"kind": "x"}
    assert fork.append(b"own") == 2
    src.append(b"later")
    assert [r.value for r in fork.read()] == [b"a", {"n": 1}, b"own"]
    assert db.lifetime("fork").source == "src" and db.lifetime("fork").fork_offset == 2
    assert db.lifetime("src").forks == 1


def test_fork_with_part_of_a_record(db: sqlstream.Database) -> None:
    db.create_stream("src").extend([b"hello", "wörld"])
    assert [r.value for r in db.fork_stream("f1", "src", 0, partial=3).read()] == [b"hel"]
    assert [r.value for r in db.fork_stream("f2", "src", 1, partial=3).read()] == [b"hello", "wö"]
    # Half of "ö" is not whole UTF-8 text: kept as bytes.
    assert db.fork_stream("f3", "src", 1, partial=2).read()[1].value == "wö".encode()[:2]
    assert [r.value for r in db.fork_stream("f4", "src", 0, partial=5).read()] == [b"hello"]
    with pytest.raises(InvalidArgument):
        db.fork_stream("f5", "src", 0, partial=6)


def test_fork_refusals_leave_nothing_behind(db: sqlstream.Database) -> None:
    src = db.create_stream("src")
    src.extend([b"a", b"b"])
    with pytest.raises(OffsetOutOfRange):
        db.fork_stream("f", "src", 3)
    db.create_stream("taken")
    with pytest.raises(StreamExists):
        db.fork_stream("taken", "src", 1)
    src.trim(1)
    with pytest.raises(OffsetOutOfRange, match="trimmed"):
        db.fork_stream("f", "src", 2)
    assert sorted(i.name for i in db.streams()) == ["src", "taken"]


def test_soft_delete_keeps_a_source_until_its_last_fork_goes(db: sqlstream.Database) -> None:
    db.create_stream("a").append(b"x")
    db.fork_stream("b", "a")
    db.fork_stream("c", "b")
    assert db.retire_stream("a") is False and db.lifetime("a").deleted
    with pytest.raises(StreamGone):
        db.retire_stream("a")
    with pytest.raises(StreamGone):
        db.fork_stream("d", "a")
    assert db.retire_stream("b") is False          # c still forks from b
    assert db.retire_stream("c") is True           # the cascade drops b, then a
    assert db.streams() == []


def test_expiry_ttl_and_absolute(db: sqlstream.Database) -> None:
    now = [1_000.0]
    db.engine.clock = lambda: now[0]
    db.create_stream("ttl")
    db.create_stream("abs")
    db.create_stream("none")
    db.set_expiry("ttl", ttl=10)
    db.set_expiry("abs", expires_at=1_005.0)
    now[0] = 1_006.0
    assert db.lifetime("abs").expired and not db.lifetime("ttl").expired
    db.touch("ttl")
    now[0] = 1_015.0
    assert not db.lifetime("ttl").expired          # touched at 1006: expires at 1016
    now[0] = 1_016.5
    assert db.lifetime("ttl").expired and not db.lifetime("none").expired
    assert db.expire_streams() == ["abs", "ttl"]
    assert [i.name for i in db.streams()] == ["none"]


def test_a_fork_inherits_its_sources_expiry_unless_given_its_own(db: sqlstream.Database) -> None:
    db.create_stream("src")
    db.set_expiry("src", ttl=30)
    db.fork_stream("f1", "src")
    assert db.lifetime("f1").ttl == 30.0
    db.fork_stream("f2", "src", expires_at=2e9)
    assert db.lifetime("f2").ttl is None and db.lifetime("f2").expires_at == 2e9
    with pytest.raises(InvalidArgument):
        db.set_expiry("src", ttl=-1)


def test_an_expiry_past_year_9999_is_refused_and_changes_nothing(db: sqlstream.Database) -> None:
    """expires_at=1e15 overflowed SQLite's integers in µs, ttl=2**63 SQLite's integers,
    and 10**400 float's: each a raw OverflowError."""
    db.create_stream("x")
    db.set_expiry("x", expires_at=253402300799)  # 9999-12-31T23:59:59Z: the latest
    for late in (253402300799.5, 1e15, 1e300):
        with pytest.raises(InvalidArgument, match="at most 253402300799"):
            db.set_expiry("x", expires_at=late)
        with pytest.raises(InvalidArgument, match="at most 253402300799"):
            db.fork_stream("y", "x", expires_at=late)
    for big in (2**63, 10**400):  # ints past SQLite's (and float's) range: OverflowError before
        with pytest.raises(InvalidArgument):
            db.set_expiry("x", ttl=big)
        with pytest.raises(InvalidArgument):
            db.set_expiry("x", expires_at=big)
    assert db.lifetime("x").expires_at == 253402300799
    assert "y" not in [s.name for s in db.streams()]
