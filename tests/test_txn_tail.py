"""The tail stream (schema version 18, sqlstream.txn): the last commit number given out
is the larger of ``counters.txn`` and the txn of the last record of the stream the row
``txn_stream`` names, so a writer that keeps appending to one stream writes no counter.

These tests attack the rule where it could give a number out twice: deletes of the tail
stream's newest records (by sqlstream and by plain SQL from another connection),
transactions over several streams, savepoint rollbacks, several connections taking turns,
and a Hypothesis model of all of them together.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

import sqlstream
from helpers_txn_model import NAMES, TwoHandlesAndSql, plain_sql
from sqlstream import connection as cx


def head(db: sqlstream.Database) -> int:
    return int(db.query("SELECT txn FROM last_txn").rows[0][0])


def rows(db: sqlstream.Database, name: str) -> dict[str, int]:
    return dict(db.query("SELECT name, value FROM counters WHERE name IN ('txn', 'txn_stream')").rows)


def test_plain_sql_deleting_the_tail_streams_newest_records_does_not_free_their_numbers(db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    b.append("b0")
    for i in range(5):
        a.append(f"a{i}")
    highest = a.read(4, 1)[0].txn
    assert rows(db, "a")["txn"] < highest  # the numbers above the row are in stream a only
    conn = plain_sql(db.path)
    try:
        conn.execute("DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = 'a') AND offset >= 2")
    finally:
        conn.close()
    assert head(db) == highest  # given out, though no record carries it any more
    offset = b.append("after the delete")
    assert b.read(offset, 1)[0].txn == highest + 1


def test_a_transaction_over_several_streams_numbers_them_all_below_the_head(db: sqlstream.Database) -> None:
    """Records of one transaction in streams other than the tail carry its number, which
    the tail stream's records hold: deleting those (the tail's) keeps it given out."""
    a, b, c = (db.create_stream(n) for n in "abc")
    a.append("a0")
    with db.transaction():
        b.append("b0")  # the first append names b the tail
        a.append("a1")
        c.append("c0")
    number = b.read(0, 1)[0].txn
    assert [a.read(1, 1)[0].txn, c.read(0, 1)[0].txn] == [number, number]
    assert head(db) == number
    db.delete_stream("b")
    assert head(db) == number
    offset = a.append("next")
    assert a.read(offset, 1)[0].txn == number + 1


def test_a_rolled_back_first_append_takes_its_tail_with_it(db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    a.append("a0")
    first = a.read(0, 1)[0].txn
    with db.transaction():
        with pytest.raises(RuntimeError):
            with db.transaction():
                b.append("rolled back")  # would name b the tail
                raise RuntimeError
        a.append("a1")
    assert rows(db, "a")["txn_stream"] == db.query("SELECT id FROM streams WHERE name = 'a'").rows[0][0]
    assert a.read(1, 1)[0].txn == first + 1 == head(db)


def test_writers_taking_turns_on_their_own_streams_never_repeat_a_number(db_path: str) -> None:
    """Two connections (as two processes would) alternate: each finds the other's commit,
    reads the row and names its own stream the tail again."""
    one, two = sqlstream.open(db_path), sqlstream.open(db_path)
    try:
        one.create_stream("x")
        two.create_stream("y")
        seen = []
        for i in range(30):
            for db, name in ((one, "x"), (two, "y")) if i % 3 else ((two, "y"), (one, "x"), (two, "y")):
                offset = db.stream(name).append(f"{i}")
                seen.append(db.stream(name).read(offset, 1)[0].txn)
        assert seen == list(range(seen[0], seen[0] + len(seen)))
        assert head(one) == seen[-1]
    finally:
        one.close()
        two.close()


def test_a_file_from_version_17_keeps_its_numbers(tmp_path: Path) -> None:
    """Migrating a file written before the tail stream: the row held the exact last
    number, and the next append continues from it."""
    path = str(tmp_path / "old.db")
    cx.create_private_file(path)
    conn = cx.connect(path, busy_timeout=5.0, synchronous="normal")
    try:
        conn.create_scalar_function("sqlstream_sha256", lambda v: None, 1)
        plan = cx.load_migrations()
        index = [i for i, (_, name, _) in enumerate(plan) if "txn_tail" in name][0]
        with conn:
            for version, _name, sql in plan[:index]:
                for _ in conn.execute(sql):
                    pass
                conn.execute(f"PRAGMA user_version = {version}")
        with conn:
            conn.execute("INSERT INTO streams (id, name, created_at) VALUES (1, 's', 1)")
            for off in range(3):
                conn.execute("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                             "VALUES (1, ?, ?, 1, ?, 'bytes', x'00')", (off, off, 40 + off))
            conn.execute("UPDATE counters SET value = 42 WHERE name = 'txn'")
    finally:
        conn.close()
    with sqlstream.open(path) as db:
        assert head(db) == 42
        offset = db.stream("s").append(b"next")
        assert db.stream("s").read(offset, 1)[0].txn == 43
        assert sqlstream.maintenance.check(db).ok


@pytest.mark.parametrize("row", ["txn", "txn_stream"])
def test_a_counters_row_deleted_by_sql_refuses_appends_and_check_names_it(db_path: str, row: str) -> None:
    with sqlstream.open(db_path) as db:
        a = db.create_stream("a")
        a.append("a0")
        conn = plain_sql(db_path)
        try:
            # The file refuses the delete since schema 19 (tests/test_txn_guards.py); a file
            # whose trigger was dropped, or edited before, can still lack the row.
            conn.execute("DROP TRIGGER counters_txn_keep")
            conn.execute("DELETE FROM counters WHERE name = ?", (row,))
        finally:
            conn.close()
    with sqlstream.open(db_path) as db:  # a new connection: nothing cached
        with pytest.raises(sqlstream.errors.CorruptDatabase, match=f"no '{row}' row"):
            db.stream("a").append("refused")
        assert [r.value for r in db.stream("a").read()] == ["a0"]
        report = sqlstream.maintenance.check(db)
        assert not report.ok
        assert any(f"no '{row}' row" in str(p) for p in report.problems)


# --------------------------------------------------------------------------- the model

@settings(max_examples=25, stateful_step_count=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
class TailModel(TwoHandlesAndSql):
    """Two sqlstream handles and a plain-SQL connection on one file. Every commit that
    stores records must carry a number above every number given out before it, and
    ``last_txn`` must equal the highest number given out, whatever was deleted."""

    prefix = "txn-tail-"

    def _committed(self, db: sqlstream.Database, name: str, offsets: list[int]) -> None:
        txns = {db.stream(name).read(o, 1)[0].txn for o in offsets}
        assert len(txns) == 1, txns
        (txn,) = txns
        assert txn > self.given, (txn, self.given)
        self.given = txn

    @rule(who=st.integers(0, 1), name=st.sampled_from(NAMES))
    def append(self, who: int, name: str) -> None:
        db = self.dbs[who]
        self._committed(db, name, [db.stream(name).append(b"v")])

    @rule(who=st.integers(0, 1), names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=4),
          doomed=st.integers(0, 3))
    def transaction(self, who: int, names: list[str], doomed: int) -> None:
        """Appends in one transaction; the savepoint around the ``doomed``-th is rolled back."""
        db = self.dbs[who]
        kept: list[tuple[str, int]] = []
        with db.transaction():
            for i, name in enumerate(names):
                if i == doomed:
                    with pytest.raises(RuntimeError), db.transaction():
                        db.stream(name).append(b"rolled back")
                        raise RuntimeError
                else:
                    kept.append((name, db.stream(name).append(b"t")))
        if kept:
            txns = {db.stream(n).read(o, 1)[0].txn for n, o in kept}
            assert len(txns) == 1, txns
            assert txns.pop() > self.given
            self.given = db.stream(kept[0][0]).read(kept[0][1], 1)[0].txn

    @rule(name=st.sampled_from(NAMES), keep=st.integers(0, 3))
    def delete_newest_by_sql(self, name: str, keep: int) -> None:
        """Plain SQL deletes the stream's records after its first ``keep`` retained ones."""
        self.sql.execute(
            "DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?) AND offset >= "
            "(SELECT coalesce(min(offset), 0) + ? FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?))",
            (name, keep, name),
        )

    @rule(name=st.sampled_from(NAMES))
    def trim_everything(self, name: str) -> None:
        stream = self.dbs[0].stream(name)
        stream.trim(stream.info().next_offset)

    @rule(name=st.sampled_from(NAMES))
    def delete_and_create_again(self, name: str) -> None:
        self.dbs[1].delete_stream(name)
        self.dbs[0].create_stream(name)

    @precondition(lambda self: bool(self.dbs))
    @invariant()
    def head_is_the_highest_number_given(self) -> None:
        assert head(self.dbs[0]) == self.given


TestTailModel = TailModel.TestCase
