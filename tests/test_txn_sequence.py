"""``txn``: a strictly increasing commit sequence number shared by every writer of a file.

Kept, since schema version 18, as the larger of the ``counters`` row ``txn`` and the txn of
the last record of the one *tail stream* the row ``txn_stream`` names (sqlstream.txn):
a writer that keeps appending to one stream writes no counter. These tests hold the
properties it must keep: strict increase across processes, no reuse after the records
holding the highest number are gone (by sqlstream or by plain SQL), no number consumed by
a rollback, and a Hypothesis model of writers, rollbacks and deletes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream import errors

WRITER = textwrap.dedent("""
    import sys
    import sqlstream
    db = sqlstream.open(sys.argv[1])
    stream = sqlstream.Stream(db, sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        offset = stream.append(line.strip())
        print(stream.read(offset, 1)[0].txn, flush=True)
    db.close()
""")


def head(db: sqlstream.Database) -> int:
    return int(db.query("SELECT txn FROM last_txn").rows[0][0])


def counter(db: sqlstream.Database) -> int:
    return int(db.query("SELECT value FROM counters WHERE name = 'txn'").rows[0][0])


@pytest.mark.multiprocess
def test_txn_strictly_increases_across_two_processes_alternating_commits(db: sqlstream.Database) -> None:
    db.create_stream("a")
    db.create_stream("b")
    db.create_stream("mine").append("first")  # this process writes between the others too
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, db.path, name], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        seen: list[int] = [db.stream("mine").read(0, 1)[0].txn]
        for i in range(20):
            for p in procs:  # each commits once, in turn, on its long-lived connection
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(f"{i}\n")
                p.stdin.flush()
                seen.append(int(p.stdout.readline()))
            if i % 5 == 0:
                offset = db.stream("mine").append(f"m{i}")
                seen.append(db.stream("mine").read(offset, 1)[0].txn)
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(30)
    assert all(x < y for x, y in zip(seen, seen[1:])), seen
    assert head(db) == seen[-1]
    assert all(p.returncode == 0 for p in procs)


def test_txn_is_never_reused_after_the_records_holding_the_highest_one_are_deleted(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        keep, gone = db.create_stream("keep"), db.create_stream("gone")
        keep.append("k")
        for i in range(3):
            gone.append(f"g{i}")
        highest = gone.read(2, 1)[0].txn
        db.delete_stream("gone")
        assert head(db) == highest  # the last number given out, though no record carries it
    with sqlstream.open(db_path) as db:  # a new connection: nothing cached
        offset = db.stream("keep").append("after delete")
        assert db.stream("keep").read(offset, 1)[0].txn == highest + 1


def test_txn_is_never_reused_after_trimming_every_record_that_held_it(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        old, other = db.create_stream("old"), db.create_stream("other")
        other.append("o")
        for i in range(4):
            old.append(f"r{i}")
        highest = old.read(3, 1)[0].txn
        old.trim(4)  # the stream is now empty: its last chunk, with the highest txn, is gone
        assert old.info().first_offset == 4
    with sqlstream.open(db_path) as db:
        assert head(db) == highest
        offset = db.stream("other").append("next")
        assert db.stream("other").read(offset, 1)[0].txn == highest + 1
        offset = db.stream("old").append("again")
        assert db.stream("old").read(offset, 1)[0].txn == highest + 2


def test_txn_is_never_reused_after_retention_trims_a_stream_inside_the_appending_transaction(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("tiny", max_count=1)
        plain = db.create_stream("plain")
        plain.append("p")
        with db.transaction():
            db.stream("tiny").append("a")
            db.stream("tiny").append("b")  # retention drops "a" in the same transaction
        txn = db.stream("tiny").read(1, 1)[0].txn
        db.delete_stream("tiny")
    with sqlstream.open(db_path) as db:
        offset = db.stream("plain").append("q")
        assert db.stream("plain").read(offset, 1)[0].txn == txn + 1


def test_a_rolled_back_transaction_does_not_consume_a_txn_number(db: sqlstream.Database) -> None:
    a = db.create_stream("a")
    a.append("0")
    first = a.read(0, 1)[0].txn
    with pytest.raises(RuntimeError):
        with db.transaction():
            a.append("rolled back")
            raise RuntimeError
    with db.transaction():  # a savepoint rolled back, in a transaction that commits nothing else
        with pytest.raises(RuntimeError):
            with db.transaction():
                a.append("rolled back too")
                raise RuntimeError
    with pytest.raises(errors.ConcurrencyError):
        a.append("refused", expect_offset=7)
    assert a.append("1") == 1
    assert a.read(1, 1)[0].txn == first + 1
    assert head(db) == first + 1


def test_a_rolled_back_outbox_transaction_does_not_consume_a_txn_number(db: sqlstream.Database) -> None:
    ssa: Any = pytest.importorskip("sqlstream.sqlalchemy")
    events = db.create_stream("events")
    events.append("e0")
    engine = ssa.create_engine(db.path)
    try:
        with pytest.raises(RuntimeError):
            with engine.begin() as conn:
                ssa.append(conn, "events", "rolled back")
                raise RuntimeError
        with engine.begin() as conn:
            ssa.append(conn, "events", "outbox")
        events.append("e2")  # the engine's connection sees the outbox's commit
        with engine.begin() as conn:
            ssa.append(conn, "events", "outbox again")
    finally:
        engine.dispose()
    assert [r.txn for r in events.read()] == [1, 2, 3, 4]


def test_an_outbox_number_kept_across_a_savepoint_rollback_is_not_given_out_again(db: sqlstream.Database) -> None:
    """The outbox keeps its transaction's number through a savepoint rollback, which took
    the counter's increment back: the number must still count as given out."""
    ssa: Any = pytest.importorskip("sqlstream.sqlalchemy")
    events = db.create_stream("events")
    events.append("e0")
    engine = ssa.create_engine(db.path)
    try:
        with engine.begin() as conn:
            nested = conn.begin_nested()
            ssa.append(conn, "events", "rolled back with its savepoint")
            nested.rollback()
            ssa.append(conn, "events", "kept")
        with engine.begin() as conn:
            ssa.append(conn, "events", "next")
    finally:
        engine.dispose()
    events.append("e3")
    assert [(r.value, r.txn) for r in events.read()] == [("e0", 1), ("kept", 2), ("next", 3), ("e3", 4)]


def test_single_appends_by_a_lone_writer_write_the_counters_row_once(db: sqlstream.Database) -> None:
    """A writer that keeps appending to one stream names it the tail stream at its first
    append (the counters row, once) and writes no counter after: its records carry the
    numbers. The last number given out still reads exactly (last_txn)."""
    other = db.create_stream("other")
    other.append("o")  # the tail stream is "other"
    events = db.create_stream("events")
    before = head(db)
    writes: list[str] = []
    conn = db.engine.write_conn()

    def tracer(cursor: Any, sql: str, bindings: Any) -> bool:
        if sql.startswith("UPDATE counters"):
            writes.append(sql)
        return True

    conn.exec_trace = tracer
    try:
        events.append("e0")
        # txn_stream = "events"; its trigger (schema 19) sets txn = the last number given
        # out, on the same page
        assert len(writes) == 1
        for i in range(1, 50):
            events.append(f"e{i}")
        assert len(writes) == 1
    finally:
        conn.exec_trace = None
    txns = [r.txn for r in events.read()]
    assert txns == list(range(before + 1, before + 51))  # one number per commit, in order
    assert head(db) == txns[-1]
    assert counter(db) == before  # the row holds the number before the tail stream's


def test_streaming_head_and_check_read_the_derived_txn(db: sqlstream.Database) -> None:
    from sqlstream.maintenance import check
    from sqlstream.streaming.store import Store

    events = db.create_stream("events")
    for i in range(3):
        events.append(f"e{i}")
    assert Store(db).head() == 3
    assert check(db).ok


def test_a_lone_writer_reads_the_counters_row_only_when_another_commit_came_between(db_path: str) -> None:
    """The write connection keeps the number its last commit took: while no other
    connection committed and it changed no other row, the next append to the tail stream
    takes the next number without a statement. A commit by another connection, or
    another row changed by this one, makes it read the row again."""
    db = sqlstream.open(db_path)
    other = sqlstream.open(db_path)
    try:
        events = db.create_stream("events")
        events.append("first")
        reads: list[str] = []
        conn = db.engine.write_conn()

        def tracer(cursor: Any, sql: str, bindings: Any) -> bool:
            if "FROM counters WHERE name = 'txn'" in sql:  # not create_stream's stream_id_floor
                reads.append(sql)
            return True

        conn.exec_trace = tracer
        try:
            for i in range(20):
                events.append(f"e{i}")
            assert reads == []
            other.stream("events").append("from another connection")
            events.append("after it")
            assert len(reads) == 1
            db.create_stream("another")  # this connection changed another row
            events.append("after that")
            assert len(reads) == 2
            events.append("and again")
            assert len(reads) == 2
        finally:
            conn.exec_trace = None
        txns = [r.txn for r in events.read()]
        assert txns == list(range(txns[0], txns[0] + len(txns)))
        assert head(db) == txns[-1]
    finally:
        other.close()
        db.close()


def test_a_savepoint_rollback_after_a_kept_number_gives_the_number_back(db: sqlstream.Database) -> None:
    """An append inside a rolled-back savepoint took the next number from the kept one;
    the rollback gives it back, and the append after it takes the same number."""
    a = db.create_stream("a")
    a.append("0")
    first = a.read(0, 1)[0].txn
    with db.transaction():
        with pytest.raises(RuntimeError):
            with db.transaction():
                a.append("rolled back")
                raise RuntimeError
        a.append("kept")
    a.append("next")
    assert [(r.value, r.txn) for r in a.read()] == [("0", first), ("kept", first + 1), ("next", first + 2)]
    assert head(db) == first + 2
