"""The write connection's copy of each stream's state (``append.StreamEnds``, issue 23).

An append to a stream the same connection appended to last skips the statement that reads
the stream's next offset, byte length, seal and secret. These tests hold that the copy
is dropped whenever it could be wrong: another connection's commit, any other change on
this connection (seal, delete and re-create), and rollbacks, savepoint rollbacks
included (``ROLLBACK TO`` leaves the connection's change count where it was).
"""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import sqlstream
from sqlstream import errors


class Boom(Exception):
    pass


def _values(stream: sqlstream.Stream) -> list[object]:
    return [r.value for r in stream.read(stream.info().first_offset, 10_000)]


def test_an_append_rolled_back_with_its_savepoint_gives_its_offset_to_the_next(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.append("a")
    with db.transaction():
        with pytest.raises(Boom):
            with db.transaction():
                assert s.append("b") == 1
                raise Boom
        assert s.append("c") == 1  # not 2: the rolled-back record is gone
    assert s.append("d") == 2
    assert _values(s) == ["a", "c", "d"]
    assert [r.position for r in s.read()] == [0, 1, 2]


def test_a_refused_append_caught_inside_a_transaction_leaves_the_ends_right(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.append("a")
    with db.transaction():
        s.append("b")
        with pytest.raises(errors.ConcurrencyError):
            s.append("x", expect_offset=7)
        assert s.append("c", expect_offset=2) == 2
    assert _values(s) == ["a", "b", "c"]


def test_another_connections_appends_and_seal_are_seen(db: sqlstream.Database, db_path: str) -> None:
    s = db.create_stream("s")
    s.append("a")
    with sqlstream.open(db_path) as other:
        assert other.stream("s").append("b") == 1
        assert s.append("c") == 2
        assert other.stream("s").append("d") == 3
        other.stream("s").seal()
    with pytest.raises(errors.StreamSealed):
        s.append("e")
    assert _values(s) == ["a", "b", "c", "d"]


def test_a_seal_and_a_re_created_stream_on_the_same_connection_are_seen(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.append("a")
    s.seal()
    with pytest.raises(errors.StreamSealed):
        s.append("b")
    db.delete_stream("s")
    t = db.create_stream("s")
    assert t.append("new") == 0
    assert _values(t) == ["new"]


def test_retention_trims_and_appends_continue_gap_free(db: sqlstream.Database) -> None:
    s = db.create_stream("s", max_count=3)
    for i in range(10):
        assert s.append(f"r{i}") == i
    info = s.info()
    assert (info.first_offset, info.next_offset) == (7, 10)
    assert _values(s) == ["r7", "r8", "r9"]


OPS = st.lists(st.sampled_from(["a", "b", "a_rolled_back", "b_in_txn_then_a", "a_big"]), max_size=25)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_two_connections_savepoints_and_sizes_against_a_list(tmp_path_factory: pytest.TempPathFactory,
                                                              ops: list[str]) -> None:
    path = str(tmp_path_factory.mktemp("cache") / "m.db")
    expected: list[bytes] = []
    with sqlstream.open(path) as a, sqlstream.open(path) as b:
        sa, sb = a.create_stream("s"), b.stream("s")
        for i, op in enumerate(ops):
            data = (b"%d" % i) * (1000 if op == "a_big" else 1)
            if op in ("a", "a_big"):
                assert sa.append(data) == len(expected)
                expected.append(data)
            elif op == "b":
                assert sb.append(data) == len(expected)
                expected.append(data)
            elif op == "a_rolled_back":
                with pytest.raises(Boom):
                    with a.transaction():
                        sa.append(data)
                        with a.transaction():
                            sa.append(data)
                        raise Boom
            else:
                with b.transaction():
                    sb.append(data)
                    expected.append(data)
                assert sa.append(data + b"!") == len(expected)
                expected.append(data + b"!")
        records = sa.read(0, 10_000)
    assert [r.value for r in records] == expected
    assert [r.offset for r in records] == list(range(len(expected)))
    positions = [sum(len(x) for x in expected[:k]) for k in range(len(expected))]
    assert [r.position for r in records] == positions
    txns = [r.txn for r in records]
    assert all(x <= y for x, y in zip(txns, txns[1:]))
    stamps = [r.timestamp for r in records]
    assert stamps == sorted(stamps)


def test_a_commit_without_records_after_another_writers_append_does_not_hide_it(
    db: sqlstream.Database, db_path: str,
) -> None:
    """A writer's commit that gives out no txn (here creating a stream), made after another
    connection appended, must not let its next append continue from its own older number."""
    a = db.create_stream("a")
    a.append("a1")
    with sqlstream.open(db_path) as other:
        other.create_stream("b").append("b1")
        db.create_stream("c")  # commits; no txn given out
        a.append("a2")
        txns = [a.read(0, 2)[0].txn, other.stream("b").read(0, 1)[0].txn, a.read(1, 1)[0].txn]
    assert txns[0] < txns[1] < txns[2], txns


def test_the_copy_holds_at_most_its_limit_and_every_append_lands_at_the_right_offset(tmp_path: Path) -> None:
    """``append.store`` keeps the copy itself (``StreamEnds.entries``): past ``limit``
    streams it starts again empty, and an append to a stream the copy no longer holds, or
    holds, lands at the stream's next offset and position either way."""
    import apsw

    from sqlstream import append, connection, records, txn

    path = str(tmp_path / "ends.db")
    with sqlstream.open(path) as db:
        for name in "abc":
            db.create_stream(name)
    conn = apsw.Connection(path)
    try:
        q = connection.runner(conn)
        ends = append.StreamEnds(conn.total_changes, limit=2)
        for n in range(3):
            for name in "abc":
                value = f"{name}{n}".encode()
                conn.execute("BEGIN IMMEDIATE")
                got = append.store(q, name, [(None, None, "bytes", value, len(value))], len(value), None, None,
                                   lambda _stream_id: txn.next_txn(q), 1_000_000 * (n + 1), None, ends,
                                   records.INLINE_MAX)
                conn.execute("COMMIT")
                assert got == range(n, n + 1)
                assert name in ends.entries and len(ends.entries) <= 2
    finally:
        conn.close()
    with sqlstream.open(path) as db:
        for name in "abc":
            assert [(r.offset, r.position, r.value) for r in db.stream(name).read(0, 10)] == [
                (n, 2 * n, f"{name}{n}".encode()) for n in range(3)]
