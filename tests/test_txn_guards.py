"""Plain SQL against the commit number's bookkeeping (schema version 19's triggers).

The last number given out is the larger of ``counters.txn`` and the txn of the last record
of the tail stream (``counters.txn_stream``, sqlstream.txn). SQL outside sqlstream (the
sqlite3 shell, another program: here a bare apsw connection) that renames the tail,
updates a record's number, stream or offset, or lowers, deletes, replaces or mistypes a
counters row must never make a later commit get a number given out before, nor make
appends or ``check()`` fail with a raw exception: it is refused by the file's triggers
(an SQLite error in the shell), healed, or answered with ``CorruptDatabase``.

Each test first gives out numbers whose highest sits only in the tail stream's newest
record (the case where ``counters.txn`` is below it), then edits, then appends from a
handle that saw the edit as another connection's commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw
import pytest

import sqlstream
from helpers_txn_model import NAMES, TwoHandlesAndSql, plain_sql
from sqlstream import errors


def run_sql(path: str, sql: str) -> None:
    conn = plain_sql(path)
    try:
        conn.execute(sql)
    finally:
        conn.close()


def every_txn(db: sqlstream.Database) -> list[int]:
    return [int(r[0]) for r in db.query("SELECT txn FROM chunks ORDER BY txn").rows]


@pytest.fixture
def given(db_path: str) -> Iterator[tuple[sqlstream.Database, int]]:
    """A file where stream 'a' is the tail and holds the highest numbers (above the row)."""
    db = sqlstream.open(db_path)
    a, b = db.create_stream("a"), db.create_stream("b")
    a.extend(["a0", "a1"])
    b.append("b0")  # names b the tail: counters.txn = 1
    for i in range(3):
        a.append(f"a{i + 2}")  # names a the tail again, then writes no counter
    counter = db.query("SELECT value FROM counters WHERE name = 'txn'").rows[0][0]
    highest = max(every_txn(db))
    assert counter < highest  # the numbers above the row live in 'a' only
    try:
        yield db, highest
    finally:
        db.close()


def appended_numbers(db: sqlstream.Database) -> list[int]:
    """Append once to each stream from this handle and from a fresh one; their numbers."""
    numbers = []
    fresh = sqlstream.open(db.path)
    try:
        for handle in (db, fresh):
            for name in ("a", "b"):
                offset = handle.stream(name).append("after")
                numbers.append(handle.stream(name).read(offset, 1)[0].txn)
    finally:
        fresh.close()
    return numbers


def assert_no_number_again(db: sqlstream.Database, highest: int) -> None:
    numbers = appended_numbers(db)
    assert numbers == list(range(highest + 1, highest + 5)), numbers
    txns = every_txn(db)
    assert len(txns) == len(set(txns)) + 1  # only a0 and a1 (one extend) share theirs
    assert int(db.query("SELECT txn FROM last_txn").rows[0][0]) == highest + 4
    assert db.check().ok, db.check().problems


@pytest.mark.parametrize("value", ["0", "-1", "999", "(SELECT id FROM streams WHERE name = 'b')", "9223372036854775807"])
def test_naming_another_tail_stream_by_sql_keeps_the_old_tails_numbers_given_out(
    given: tuple[sqlstream.Database, int], value: str
) -> None:
    db, highest = given
    run_sql(db.path, f"UPDATE counters SET value = {value} WHERE name = 'txn_stream'")
    assert_no_number_again(db, highest)


@pytest.mark.parametrize("change", [
    "txn = 1",  # the tail's newest record claims an old number
    "stream_id = (SELECT id FROM streams WHERE name = 'b'), offset = 100",  # moved out of the tail
    "offset = -1",  # no longer the tail's last record
])
def test_updating_the_tail_streams_newest_record_by_sql_keeps_its_number_given_out(
    given: tuple[sqlstream.Database, int], change: str
) -> None:
    db, highest = given
    run_sql(db.path, f"UPDATE chunks SET {change} WHERE stream_id = (SELECT id FROM streams WHERE name = 'a') "
                     "AND offset = (SELECT max(offset) FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = 'a'))")
    numbers = appended_numbers(db)
    assert numbers == list(range(highest + 1, highest + 5)), numbers


def test_raising_a_records_number_by_sql_above_the_last_one_keeps_it_from_being_given_again(
    given: tuple[sqlstream.Database, int],
) -> None:
    """A record outside the tail stream set to a number not given out yet: the next
    commits must not get it (the record holds it)."""
    db, highest = given
    run_sql(db.path, f"UPDATE chunks SET txn = {highest + 2} WHERE stream_id = (SELECT id FROM streams WHERE name = 'b')")
    numbers = appended_numbers(db)
    assert numbers == list(range(highest + 3, highest + 7)), numbers


@pytest.mark.parametrize("sql", [
    "UPDATE counters SET value = 0 WHERE name = 'txn'",  # lowered
    "UPDATE counters SET value = 'abc' WHERE name = 'txn'",
    "UPDATE counters SET value = 1.5 WHERE name = 'txn'",
    "UPDATE counters SET value = x'01' WHERE name = 'txn'",
    "UPDATE counters SET value = 'abc' WHERE name = 'txn_stream'",
    "UPDATE counters SET name = 'old_txn' WHERE name = 'txn'",
    "UPDATE counters SET name = 'txn' WHERE name = 'txn_stream'",
    "DELETE FROM counters WHERE name = 'txn'",
    "DELETE FROM counters WHERE name = 'txn_stream'",
    "DELETE FROM counters",
    "INSERT OR REPLACE INTO counters (name, value) VALUES ('txn', 0)",
    "REPLACE INTO counters (name, value) VALUES ('txn_stream', 0)",
    "UPDATE chunks SET txn = 'abc'",
])
def test_sql_that_would_lose_or_mistype_the_counters_is_refused_by_the_file(
    given: tuple[sqlstream.Database, int], sql: str
) -> None:
    db, highest = given
    with pytest.raises(apsw.ConstraintError, match="sqlstream: "):
        run_sql(db.path, sql)
    assert_no_number_again(db, highest)


def test_the_counters_row_may_still_be_raised_by_sql(given: tuple[sqlstream.Database, int]) -> None:
    db, highest = given
    run_sql(db.path, f"UPDATE counters SET value = {highest + 10} WHERE name = 'txn'")
    assert appended_numbers(db) == list(range(highest + 11, highest + 15))


# ------------------------------------------------------------------- files edited before the guards


def drop_guards(path: str) -> None:
    """What a file edited before schema 19 (or with its triggers dropped) can hold."""
    conn = plain_sql(path)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND "
                                    "(tbl_name = 'counters' OR name = 'chunks_txn_update')").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
    finally:
        conn.close()


@pytest.mark.parametrize("row,value", [("txn", "'abc'"), ("txn", "x'01'"), ("txn", "1.5"), ("txn_stream", "'abc'")])
def test_a_counters_row_that_is_not_an_integer_is_corrupt_database_everywhere(
    given: tuple[sqlstream.Database, int], row: str, value: str
) -> None:
    """Appends (the engine's and the outbox's), the streaming head and check() answer
    CorruptDatabase or a problem naming the row: never TypeError/ValueError, and never a
    number given out again."""
    pytest.importorskip("sqlalchemy")
    from sqlstream import sqlalchemy as ss

    db, highest = given
    drop_guards(db.path)
    run_sql(db.path, f"UPDATE counters SET value = {value} WHERE name = '{row}'")
    before = every_txn(db)
    for handle in (db, sqlstream.open(db.path)):
        try:
            for name in ("a", "b"):
                with pytest.raises(errors.CorruptDatabase, match=f"counters row '{row}' holds"):
                    handle.stream(name).append("refused")
            report = handle.check()
            assert not report.ok
            assert any(f"counters row '{row}' holds" in str(p) for p in report.problems), report.problems
        finally:
            if handle is not db:
                handle.close()
    engine = ss.create_engine(db.path)
    try:
        with engine.begin() as conn:
            # The outbox takes max(row, tail's last) + 1 in SQL: a real below the tail's
            # last number is harmless there (and replaced); anything else is refused.
            if value == "1.5":
                offset = ss.append(conn, "b", "above every number")
            else:
                with pytest.raises(errors.CorruptDatabase, match=f"counters row '{row}' holds"):
                    ss.append(conn, "b", "refused")
    finally:
        engine.dispose()
    if value == "1.5":
        assert db.stream("b").read(offset, 1)[0].txn == highest + 1
    else:
        assert every_txn(db) == before


@pytest.mark.parametrize("row", ["txn", "txn_stream"])
def test_the_outbox_refuses_with_corrupt_database_when_a_counters_row_is_missing(
    given: tuple[sqlstream.Database, int], row: str
) -> None:
    """(On main: IndexError without the 'txn' row; without 'txn_stream' the outbox took
    counters.txn + 1, a number the tail stream's records already held.)"""
    pytest.importorskip("sqlalchemy")
    from sqlstream import sqlalchemy as ss

    db, _ = given
    drop_guards(db.path)
    run_sql(db.path, f"DELETE FROM counters WHERE name = '{row}'")
    before = every_txn(db)
    engine = ss.create_engine(db.path)
    try:
        with pytest.raises(errors.CorruptDatabase, match=f"no '{row}' row"), engine.begin() as conn:
            ss.append(conn, "b", "refused")
    finally:
        engine.dispose()
    assert every_txn(db) == before


@pytest.mark.parametrize("where", ["counters", "record"])
def test_the_largest_integer_as_the_last_number_is_corrupt_database_not_overflow(
    given: tuple[sqlstream.Database, int], where: str
) -> None:
    pytest.importorskip("sqlalchemy")
    from sqlstream import sqlalchemy as ss

    db, _ = given
    if where == "counters":
        run_sql(db.path, "UPDATE counters SET value = 9223372036854775807 WHERE name = 'txn'")
    else:
        run_sql(db.path, "UPDATE chunks SET txn = 9223372036854775807 WHERE stream_id = "
                         "(SELECT id FROM streams WHERE name = 'a') AND offset = 4")
    before = every_txn(db)
    for name in ("a", "b"):
        with pytest.raises(errors.CorruptDatabase, match="no higher one fits"):
            db.stream(name).append("refused")
    engine = ss.create_engine(db.path)
    try:
        with pytest.raises(errors.CorruptDatabase, match="no higher one fits"), engine.begin() as conn:
            ss.append(conn, "b", "refused")
    finally:
        engine.dispose()
    assert every_txn(db) == before


def test_one_below_the_largest_integer_gives_out_the_last_number_then_refuses(
    given: tuple[sqlstream.Database, int],
) -> None:
    """The writer's own cached last number (no statement read) is bounded too."""
    db, _ = given
    run_sql(db.path, "UPDATE counters SET value = 9223372036854775806 WHERE name = 'txn'")
    offset = db.stream("a").append("the last number")
    assert db.stream("a").read(offset, 1)[0].txn == 2**63 - 1
    with pytest.raises(errors.CorruptDatabase, match="no higher one fits"):
        db.stream("a").append("refused")


# --------------------------------------------------------------------------- the model

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import invariant, precondition, rule  # noqa: E402


@settings(max_examples=20, stateful_step_count=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
class HostileSqlModel(TwoHandlesAndSql):
    """Two sqlstream handles and a plain-SQL connection that renames the tail stream,
    moves, renumbers and re-dates records' numbers, and tries to lower the counter. Every
    commit that stores records must carry a number above every number any record ever
    held, and ``last_txn`` must be at least that."""

    prefix = "txn-guards-"

    def _seen(self) -> None:
        top = self.sql.execute("SELECT max(txn) FROM chunks").fetchall()[0][0]
        self.given = max(self.given, top or 0)

    @rule(who=st.integers(0, 1), names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
    def append(self, who: int, names: list[str]) -> None:
        db = self.dbs[who]
        with db.transaction():
            kept = [(name, db.stream(name).append(b"v")) for name in names]
        txns = {db.stream(n).read(o, 1)[0].txn for n, o in kept}
        assert len(txns) == 1, txns
        (txn,) = txns
        assert txn > self.given, (txn, self.given)
        self.given = txn

    @rule(value=st.sampled_from(["0", "-1", "999", "(SELECT id FROM streams WHERE name = 'a')",
                                 "(SELECT id FROM streams WHERE name = 'c')"]))
    def rename_tail(self, value: str) -> None:
        self.sql.execute(f"UPDATE counters SET value = {value} WHERE name = 'txn_stream'")

    @rule(name=st.sampled_from(NAMES), change=st.sampled_from([
        "txn = 1", "txn = txn + 3", "offset = offset + 1000", "stream_id = (SELECT id FROM streams WHERE name = 'b')"]))
    def update_newest(self, name: str, change: str) -> None:
        self._seen()
        with contextlib.suppress(apsw.ConstraintError):  # a (stream, offset) taken already
            self.sql.execute(
                f"UPDATE chunks SET {change} WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND offset = "
                "(SELECT max(offset) FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1))", (name,))
        self._seen()

    @rule(name=st.sampled_from(NAMES))
    def delete_newest(self, name: str) -> None:
        self._seen()
        self.sql.execute(
            "DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1) AND offset = "
            "(SELECT max(offset) FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = ?1))", (name,))

    @rule(value=st.sampled_from(["value - 1", "-5", "'abc'", "1.5"]))
    def lower_the_counter(self, value: str) -> None:
        with pytest.raises(apsw.ConstraintError, match="sqlstream: "):
            self.sql.execute(f"UPDATE counters SET value = {value} WHERE name = 'txn'")

    @precondition(lambda self: bool(self.dbs))
    @invariant()
    def head_covers_every_number_given(self) -> None:
        assert int(self.dbs[0].query("SELECT txn FROM last_txn").rows[0][0]) >= self.given


TestHostileSqlModel = HostileSqlModel.TestCase
