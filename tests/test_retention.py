"""Retention: max_count / max_age / max_bytes, db.trim, set_retention, keep_unacked.

Real files, real statements. The statement-count tests pin the promise that retention
costs an append nothing unless a trigger fires: they count what the write connection
executes with apsw's exec tracer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import apsw
import pytest
from helpers_subscriptions import Clock

import sqlstream
from sqlstream import errors
from sqlstream.retention import bytes_margin, count_margin


@contextmanager
def statements(db: sqlstream.Database) -> Iterator[list[str]]:
    """The SQL the write connection runs inside the block."""
    seen: list[str] = []
    conn = db.engine.write_conn()

    def tracer(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        seen.append(" ".join(sql.split()))
        return True

    conn.exec_trace = tracer
    try:
        yield seen
    finally:
        conn.exec_trace = None


def offsets(stream: sqlstream.Stream) -> list[int]:
    info = stream.info()
    return [r.offset for r in stream.read(info.first_offset, 100_000)]


# --------------------------------------------------------------------------- cost


def test_appends_within_limits_run_the_same_statements_as_plain_ones(db: sqlstream.Database) -> None:
    plain = db.create_stream("plain")
    limited = db.create_stream("limited", max_count=1000, max_bytes=10**9, max_age=3600)
    plain.append(b"warm")
    with statements(db) as a:
        plain.append(b"x")
    limited.append(b"warm")
    with statements(db) as b:
        limited.append(b"x")
    # BEGIN, insert, COMMIT: each stream's state as its last append left it is kept by the
    # write connection (append.StreamEnds), and so is the number its last commit took;
    # a second append to the same stream writes no counter (sqlstream.txn: the tail stream)
    assert len(a) == len(b) == 3, (a, b)
    assert not any("DELETE" in s for s in b)


def test_a_fired_trigger_trims_a_batch_then_appends_are_plain_again(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_count=160)  # margin 10
    assert count_margin(160) == 10
    stream.extend([b"r"] * 170)
    assert stream.info().count == 170  # at the limit plus the margin: nothing trimmed yet
    with statements(db) as fired:
        stream.append(b"r")
    assert any(s.startswith("DELETE FROM chunks") for s in fired)
    info = stream.info()
    assert (info.first_offset, info.count) == (11, 160)  # trimmed exactly to max_count
    with statements(db) as quiet:
        stream.append(b"r")
    # BEGIN, the stream's state (the trim changed its row: not kept), insert, COMMIT
    assert len(quiet) == 4, quiet


# --------------------------------------------------------------------------- limits


def test_max_count_keeps_between_limit_and_limit_plus_margin(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_count=32)  # margin 2
    for i in range(200):
        assert stream.append(i) == i  # offsets are never reused
        assert 32 <= stream.info().count <= 34 or i < 32
    info = stream.info()
    assert info.next_offset == 200
    assert offsets(stream) == list(range(info.first_offset, 200))
    db.trim("s")  # exact now
    assert stream.info().count == 32


def test_reading_below_first_offset_names_the_first_available(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend([b"abc"] * 10)
    result = db.trim("s", before_offset=4)
    assert result == sqlstream.TrimResult("s", 4, 4, None)
    with pytest.raises(errors.OffsetOutOfRange, match="first available offset is 4"):
        stream.read(3)
    with pytest.raises(errors.OffsetOutOfRange, match="first available byte is 12"):
        stream.read_bytes(11, 1)
    assert stream.read_bytes(12, 3).data == b"abc"
    assert [r.offset for r in stream.read(0 + 4, 3)] == [4, 5, 6]
    assert stream.read_at(0) == 4
    assert list(stream.follow(timeout=0.01))[0].offset == 4


def test_trim_past_the_end_empties_the_stream_and_appends_continue(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend([b"a", b"bb"])
    assert db.trim("s", 10**6).trimmed == 2
    info = stream.info()
    assert (info.first_offset, info.next_offset, info.first_position, info.byte_length) == (2, 2, 3, 3)
    assert stream.append(b"c") == 2
    assert stream.read(2)[0].position == 3
    assert db.trim("s", 1).trimmed == 0  # never backwards
    assert db.check().ok


def test_max_bytes_never_trims_the_newest_record(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_bytes=100)  # margin 6
    assert bytes_margin(100) == 6
    stream.extend([b"x" * 30] * 3)
    stream.append(b"y" * 30)  # 120 bytes > 106: trimmed to <= 100
    info = stream.info()
    assert info.retained_bytes == 90 and info.first_offset == 1
    stream.append(b"z" * 500)  # one record larger than the limit stays alone
    info = stream.info()
    assert (info.first_offset, info.retained_bytes) == (4, 500)
    assert stream.read(4)[0].value == b"z" * 500


def test_max_age_trims_as_appends_happen(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_age=0.2)  # margin 12.5 ms
    stream.extend([b"old"] * 5)
    time.sleep(0.3)
    stream.append(b"new")
    assert offsets(stream) == [5]


def test_max_age_by_maintain_with_a_clock(db: sqlstream.Database) -> None:
    clock = Clock(time.time())
    db.engine.clock = clock
    stream = db.create_stream("s", max_age=60)
    stream.extend([1, 2, 3])
    assert db.maintain().trimmed == {"s": 0}
    clock.advance(61)
    assert db.maintain(vacuum=False, checkpoint=False, optimize=False).trimmed == {"s": 3}
    assert stream.info().count == 0


def test_set_retention_trims_at_once_and_none_removes_a_limit(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend(list(range(50)))
    result = db.set_retention("s", max_count=10)
    assert (result.trimmed, result.first_offset) == (40, 40)
    assert stream.info().max_count == 10
    db.set_retention("s", max_count=None)
    stream.extend(list(range(50)))
    assert stream.info().count == 60
    with pytest.raises(errors.InvalidArgument):
        db.set_retention("s", max_count=0)
    with pytest.raises(errors.InvalidArgument):
        db.set_retention("s", keep_unacked="yes")  # type: ignore[arg-type]
    with pytest.raises(errors.StreamNotFound):
        db.set_retention("nope", max_count=1)
    assert stream.set_retention(max_bytes=1).first_offset == 99  # the newest record stays


def test_retention_inside_a_transaction_rolls_back_with_it(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_count=2)
    stream.extend([1, 2])
    with pytest.raises(RuntimeError):
        with db.transaction():
            stream.extend([3, 4, 5])
            assert stream.info().first_offset == 3
            raise RuntimeError
    assert offsets(stream) == [0, 1]
    stream.append(3)
    assert offsets(stream) == [1, 2]


def test_trim_validates_its_arguments(db: sqlstream.Database) -> None:
    db.create_stream("s")
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(errors.InvalidArgument):
            db.trim("s", bad)  # type: ignore[arg-type]
    with pytest.raises(errors.StreamNotFound):
        db.trim("missing", 1)


# --------------------------------------------------------------------------- keep_unacked


def test_keep_unacked_holds_records_and_info_says_why(db: sqlstream.Database) -> None:
    clock = Clock(time.time())
    db.engine.clock = clock
    stream = db.create_stream("s", max_count=4, keep_unacked=True)
    sub = db.create_subscription("billing", "s", ack_timeout=600)
    stream.extend(list(range(10)))
    info = stream.info()
    assert info.first_offset == 0 and info.count == 10
    assert info.over_limit is not None
    assert "max_count 4" in info.over_limit and "'billing' has not acked offset 0" in info.over_limit
    batch = sub.fetch("w", 3)
    sub.ack(*batch.offsets)  # 0..2 acked: retention may now trim them
    stream.extend([10] * 65)  # the held re-check comes HELD_RECHECK (64) appends later
    assert stream.info().first_offset == 3
    report = db.maintain(vacuum=False, checkpoint=False, optimize=False)
    assert "billing" in report.held["s"]
    # An explicit trim honours it too, unless forced.
    result = db.trim("s", 8)
    assert result.first_offset == 3 and result.held is not None and "offset 3" in result.held
    sub.fetch("w", 2)  # 3 and 4 pending
    forced = db.trim("s", 4, force=True)
    assert forced.first_offset == 4 and forced.held is None
    assert [e.offset for e in sub.pending()] == [4]  # the trimmed pending record left the list
    assert db.check().ok


def test_keep_unacked_without_subscriptions_trims_normally(db: sqlstream.Database) -> None:
    stream = db.create_stream("s", max_count=3, keep_unacked=True)
    stream.extend(list(range(10)))
    assert stream.info().count == 3 and stream.info().over_limit is None


def test_trimming_drops_pending_deliveries_of_trimmed_records(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend(list(range(6)))
    sub = db.create_subscription("sub", "s")
    sub.fetch("a", 4)
    db.trim("s", 3)
    assert [e.offset for e in sub.pending()] == [3]
    assert db.check().ok


def test_streams_of_an_older_schema_get_their_triggers(tmp_path: object) -> None:
    """A stream created with limits before migration 0004 is trimmed at its next append."""
    path = str(tmp_path) + "/old.db"  # type: ignore[operator]
    with sqlstream.open(path) as db:
        db.create_stream("s", max_count=2).extend([1, 2, 3, 4])
        conn = db.engine.write_conn()
        conn.execute("UPDATE streams SET trim_offset = NULL")  # as 0004 finds them
        conn.execute("UPDATE streams SET trim_offset = first_offset + max_count WHERE max_count IS NOT NULL")
        db.stream("s").append(5)
        assert db.stream("s").info().count == 2


@pytest.mark.slow
def test_the_retention_benchmark_runs(tmp_path: object) -> None:
    """python -m benchmarks.retention --quick: the file stays flat, the report is written."""
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    try:
        from benchmarks import retention
    finally:
        sys.path.remove(root)
    out = str(tmp_path)
    assert retention.main(["--quick", "--records", "200000", "--rounds", "1", "--out", out]) == 0
    report = open(os.path.join(out, "RETENTION.md"), encoding="utf-8").read()
    assert "### retention: 200,000 records" in report and "(max/min 1." in report


def test_retention_counts_the_pending_deliveries_it_drops_and_says_so(db: sqlstream.Database) -> None:
    """Issue 9 item 11: default retention dropped delivered, unacked work without a trace."""
    stream = db.create_stream("s", max_count=100)
    stream.extend(list(range(100)))
    sub = db.create_subscription("sub", "s")
    sub.fetch("a", 3)
    sub.nack(0, 1, 2, delay=60, error="boom")  # attempts and a last_error: real work in flight
    assert stream.info().dropped_deliveries == 0
    stream.extend(list(range(120)))  # past the trigger: the oldest 120 go, with their deliveries
    info = stream.info()
    assert info.first_offset >= 3 and sub.pending() == []
    assert info.dropped_deliveries == 3
    assert db.streams()[0].dropped_deliveries == 3  # both listings carry it
    db.set_retention("s", max_count=1000)  # margin 62: the next 30 over the limit wait for a batch
    stream.extend(list(range(1030 - stream.info().count)))
    assert "trims have dropped 3 pending deliveries" in (stream.info().over_limit or "")
    db.delete_stream("s")
    db.create_stream("s")  # a new stream (maybe with the same id) starts at 0
    assert db.stream_info("s").dropped_deliveries == 0


def test_timestamps_never_decrease_when_the_clock_steps_back(db: sqlstream.Database) -> None:
    """An NTP step back must not give a record an earlier time than the one before it:
    read_at's search and retention by age take a stream's timestamps as sorted."""
    clock = Clock(1_700_000_100.0)
    db.engine.clock = clock
    stream, other = db.create_stream("s", max_age=100), db.create_stream("other")
    stream.append("a")
    clock.now = 1_700_000_040.0  # the wall clock steps back a minute
    stream.append("b")  # one record
    stream.extend(["c", "d"])  # a batch
    with db.transaction():  # a transaction over two streams
        stream.append("e")
        other.append("x")
    assert other.read(0)[0].timestamp == 1_700_000_040.0  # a stream's own clamp, not the file's
    clock.now = 1_700_000_100.5  # forward again, past the clamp
    stream.append("f")
    stamps = [r.timestamp for r in stream.read(0, 10)]
    assert stamps == [1_700_000_100.0] * 5 + [1_700_000_100.5]
    assert stream.read_at(1_700_000_040.0) == 0
    assert stream.read_at(1_700_000_100.0) == 0
    assert stream.read_at(1_700_000_100.25) == 5
    # Retention by age keeps every record max_age past its (clamped) time...
    clock.now = 1_700_000_150.0
    db.trim("s")
    assert stream.info().first_offset == 0
    # ...and then trims exactly those it has outlived.
    clock.now = 1_700_000_200.25
    db.trim("s")
    assert stream.info().first_offset == 5
