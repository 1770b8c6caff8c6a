"""Taking the next commit number costs the same whatever the number of streams (issue 23).

Schema versions 9 and 10 derived it from every stream's last record (one seek per stream)
whenever another connection had committed since the writer's own last commit, and on
the first append after opening. The cost is counted here in SQLite virtual-machine steps
(a progress handler called every step), which does not depend on the machine's load;
the timing figures are in benchmarks (W8).
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream import connection as cx, txn as _txn


def _fill(db: sqlstream.Database, first: int, count: int) -> None:
    with db.transaction():
        for i in range(first, first + count):
            db.create_stream(f"s{i}").append(f"r{i}")


def _steps(conn: apsw.Connection, fn: object) -> int:
    """How many VM steps ``fn()`` makes SQLite run on ``conn``."""
    counted = [0]

    def tick() -> bool:
        counted[0] += 1
        return False  # go on

    conn.set_progress_handler(tick, 1)
    try:
        fn()  # type: ignore[operator]
    finally:
        conn.set_progress_handler(None)
    return counted[0]


def _derive_steps(db: sqlstream.Database) -> tuple[int, int]:
    """(VM steps, number) of a new writer taking the next txn (rolled back after)."""
    conn = cx.connect(db.path, busy_timeout=5.0, synchronous="normal")
    try:
        q = cx.runner(conn)
        got: list[tuple[int, int]] = []
        conn.execute("BEGIN IMMEDIATE")
        steps = _steps(conn, lambda: got.append(_txn.next_txn(q)))
        steps += _steps(conn, lambda: _txn.last_txn(q))
        conn.execute("ROLLBACK")
        return steps, got[0]
    finally:
        conn.close()


def test_taking_the_next_txn_costs_the_same_at_10_and_2000_streams(db: sqlstream.Database) -> None:
    _fill(db, 0, 10)
    few, number = _derive_steps(db)
    assert number == 2  # the ten streams' records came in one transaction, txn 1
    _fill(db, 10, 1990)
    many, number = _derive_steps(db)
    assert number == 3
    # One seek per stream made this ~150x larger; one row's does not grow with them.
    assert many <= few + 20, (few, many)


def test_two_writers_alternating_in_a_file_of_many_streams_keep_txn_strictly_increasing(
    db: sqlstream.Database, db_path: str,
) -> None:
    _fill(db, 0, 500)
    other = sqlstream.open(db_path)
    try:
        seen = []
        for i in range(20):
            for handle, name in ((db, "s1"), (other, "s2")):
                offset = handle.stream(name).append(f"x{i}")
                seen.append(handle.stream(name).read(offset, 1)[0].txn)
        assert seen == list(range(seen[0], seen[0] + 40))
        assert int(db.query("SELECT txn FROM last_txn").rows[0][0]) == seen[-1]
    finally:
        other.close()


def _migration_index(fragment: str) -> int:
    plan = cx.load_migrations()
    return next(i for i, (_v, name, _sql) in enumerate(plan) if fragment in name)


@pytest.mark.parametrize("deleted_highest", [False, True])
def test_an_older_file_continues_its_numbering(tmp_path: Path, deleted_highest: bool) -> None:
    """A file of schema version 10 (its counters row a floor, behind the records' txn; or
    its highest txn held by a deleted record, kept in the floor) continues after the
    highest number it gave out."""
    path = str(tmp_path / "old.db")
    cx.create_private_file(path)
    conn = cx.connect(path, busy_timeout=5.0, synchronous="normal")
    try:
        # A file as the code before the counter made it: the migrations before txn_counter
        # only (later ones, such as the HTTP front's tables, must not exist yet either).
        conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hashlib.sha256(
            str(v).encode()).hexdigest(), 1)
        with conn:
            for version, _name, sql in cx.load_migrations()[: _migration_index("txn_counter")]:
                for _ in conn.execute(sql):
                    pass
                conn.execute(f"PRAGMA user_version = {version}")
        with conn:
            for sid in (1, 2, 3):
                conn.execute("INSERT INTO streams (id, name, created_at) VALUES (?, ?, 1)", (sid, f"s{sid}"))
                for off in range(3):
                    conn.execute(
                        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                        "VALUES (?, ?, ?, 1, ?, 'bytes', x'00')", (sid, off, off, 10 * sid + off),
                    )
            if deleted_highest:  # stream 3's records (txn up to 32) deleted after raising the floor
                conn.execute("UPDATE counters SET value = 32 WHERE name = 'txn'")
                conn.execute("DELETE FROM chunks WHERE stream_id = 3")
                conn.execute("UPDATE streams SET first_offset = 3, next_offset = 3, first_position = 3, "
                             "byte_length = 3 WHERE id = 3")
            # else: the floor stays 0, behind the records (version 10 wrote it only on deletes)
        highest = 32
        assert list(conn.execute("SELECT txn FROM last_txn")) == [(highest,)]
    finally:
        conn.close()
    with sqlstream.open(path) as db:
        assert db.query("SELECT txn FROM last_txn").rows == [(highest,)]
        offset = db.stream("s1").append("next")
        assert db.stream("s1").read(offset, 1)[0].txn == highest + 1
        assert sqlstream.maintenance.check(db).ok
