"""A deleted stream's records go with it, whoever deletes it (schema version 20).

Records (`chunks`) used to follow their stream through a foreign key with ON DELETE
CASCADE, which SQLite applies only on connections that turned foreign keys on: sqlstream's
did, the sqlite3 shell does not. A stream deleted in the shell left its records behind,
and the next stream created took the freed id and showed them as its own. Since version
20 a trigger deletes them (it fires on every connection), and the per-record foreign-key
probe is gone from every append.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import pytest

import sqlstream
from helpers_txn_model import plain_sql
from sqlstream import connection as cx
from sqlstream import errors

BIG = b"x" * 5000  # stored out of its row, in `payloads`


def shell(path: str) -> apsw.Connection:
    """A connection as the sqlite3 shell opens one: foreign keys off."""
    conn = plain_sql(path)
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def stream_id(db: sqlstream.Database, name: str) -> int:
    value: int = db.query("SELECT id FROM streams WHERE name = ?", (name,)).rows[0][0]
    return value


def test_a_stream_deleted_where_foreign_keys_are_off_takes_its_records_and_payloads(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("keep").extend([b"k0", b"k1"])
        db.create_stream("gone").extend([b"g0", BIG, b"g2"])
    conn = shell(db_path)
    try:
        conn.execute("DELETE FROM streams WHERE name = 'gone'")
        left = conn.execute("SELECT count(*) FROM chunks WHERE stream_id NOT IN (SELECT id FROM streams)").fetchall()
        payloads = conn.execute("SELECT count(*) FROM payloads").fetchall()
    finally:
        conn.close()
    assert (left, payloads) == ([(0,)], [(0,)])
    with sqlstream.open(db_path) as db:
        fresh = db.create_stream("fresh")  # takes the freed id (the largest plus one)
        assert fresh.read(0, 10) == []
        fresh.append(b"f0")
        assert [r.value for r in fresh.read(0, 10)] == [b"f0"]
        assert [r.value for r in db.stream("keep").read(0, 10)] == [b"k0", b"k1"]
        assert db.check().problems == []


def test_a_stream_id_cannot_be_changed_under_its_records(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("a").append(b"0")
        db.create_stream("empty")
    conn = shell(db_path)
    try:
        with pytest.raises(apsw.ConstraintError, match="sqlstream: a stream's id cannot change"):
            conn.execute("UPDATE streams SET id = 99 WHERE name = 'a'")
        conn.execute("UPDATE streams SET id = 98 WHERE name = 'empty'")  # no records: allowed
    finally:
        conn.close()
    with sqlstream.open(db_path) as db:
        assert [r.value for r in db.stream("a").read(0, 10)] == [b"0"]


def test_records_check_no_stream_row_when_stored(db_path: str) -> None:
    """The mechanism the speed-up rests on: `chunks` declares no foreign key, so SQLite
    does not look the stream up for every record inserted."""
    with sqlstream.open(db_path) as db:
        db.create_stream("a")
        assert db.query("SELECT * FROM pragma_foreign_key_list('chunks')").rows == []
        assert db.query("SELECT count(*) FROM pragma_foreign_key_list('deliveries')").rows != [(0,)]


def test_check_names_records_that_belong_to_no_stream(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("a").append(b"0")
    conn = plain_sql(db_path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")  # refused no more: chunks has no foreign key
        conn.execute("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                     "VALUES (77, 0, 0, 0, 1, 'bytes', x'00'), (77, 1, 1, 0, 1, 'bytes', x'01')")
    finally:
        conn.close()
    with sqlstream.open(db_path) as db:
        problems = db.check().problems
    assert [(p.stream, p.offset) for p in problems] == [(None, None)], problems
    assert "2 record(s) of stream id 77 belong to no stream" in problems[0].message
    assert "DELETE FROM chunks WHERE stream_id = 77" in problems[0].message


# --------------------------------------------------------------------------- migration


def _version_19(path: str) -> None:
    """A file as the code before version 20 made it: migrations 1..19 as plain SQL, two
    streams with records (one of them out of its row), and the records of a third stream
    deleted in a shell (foreign keys off), which stayed behind."""
    conn = apsw.Connection(path)
    try:
        conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hashlib.sha256(
            str(v).encode()).hexdigest(), 1)
        with conn:
            for _version, _name, sql in cx.load_migrations()[:19]:
                for _ in conn.execute(sql):
                    pass
            conn.execute("PRAGMA user_version = 19")
        conn.execute("PRAGMA journal_mode = wal")
        with conn:
            conn.execute("INSERT INTO streams (id, name, created_at, next_offset, byte_length) "
                         "VALUES (1, 'a', 0, 2, 5002), (2, 'b', 0, 1, 1), (3, 'c', 0, 1, 1)")
            conn.execute("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                         "VALUES (1, 0, 0, 0, 1, 'bytes', x'6130'), (1, 1, 2, 0, 2, 'bytes', NULL), "
                         "(2, 0, 0, 0, 3, 'bytes', x'62'), (3, 0, 0, 0, 4, 'bytes', NULL)")
            conn.execute("INSERT INTO payloads (stream_id, offset, data) VALUES (1, 1, ?), (3, 0, ?)", (BIG, BIG))
            conn.execute("UPDATE counters SET value = 4 WHERE name = 'txn'")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM streams WHERE id = 3")
        assert conn.execute("SELECT count(*) FROM chunks WHERE stream_id = 3").fetchall() == [(1,)]
        # A dedup id of a stream 9 deleted the same way, its records already trimmed.
        conn.execute("INSERT INTO dedup (stream_id, dedup_id, offset, created_at) VALUES (9, 'x', 0, 0)")
    finally:
        conn.close()


def test_migration_20_keeps_every_record_and_deletes_those_of_deleted_streams(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    _version_19(path)
    before = plain_sql(path)  # a connection of another program, open across the migration
    before.execute("PRAGMA foreign_keys = ON")
    assert before.execute("SELECT count(*) FROM pragma_foreign_key_list('chunks')").fetchall() == [(1,)]
    try:
        with sqlstream.open(path) as db:
            assert db.query("PRAGMA user_version").rows == [(cx.schema_version(),)]
            assert [r.value for r in db.stream("a").read(0, 10)] == [b"a0", BIG]
            assert [r.value for r in db.stream("b").read(0, 10)] == [b"b"]
            assert db.query("SELECT stream_id, offset FROM records ORDER BY 1, 2").rows == [(1, 0), (1, 1), (2, 0)]
            assert db.query("SELECT stream_id FROM payloads").rows == [(1,)]
            # The migrating connection reloaded its schema; a new stream shows nothing of
            # the deleted ones.
            c = db.create_stream("c2")
            assert stream_id(db, "c2") == 10  # above every id the file holds, the orphans' too
            c.append(b"new", dedup_id="x")
            assert [r.value for r in c.read(0, 10)] == [b"new"]
            assert db.query("SELECT * FROM pragma_foreign_key_list('chunks')").rows == []
            assert db.query("PRAGMA integrity_check").rows == [("ok",)]
            assert [p.message for p in db.check().problems] == [
                "a row of table dedup refers to a missing row of streams"]  # reported, not adopted
            assert max(r.txn for r in c.read(0, 10)) > 4  # numbers given out stay given out
        # The other connection reloads the schema at its next statement (the cookie moved):
        # the foreign key is gone for it too, and the cascade is the trigger's.
        assert before.execute("SELECT count(*) FROM pragma_foreign_key_list('chunks')").fetchall() == [(0,)]
        before.execute("DELETE FROM streams WHERE name = 'a'")
        assert before.execute("SELECT count(*) FROM chunks WHERE stream_id = 1").fetchall() == [(0,)]
        assert before.execute("SELECT count(*) FROM payloads").fetchall() == [(0,)]
    finally:
        before.close()


def test_the_stepwise_chain_and_the_new_file_schema_both_drop_the_foreign_key(tmp_path: Path) -> None:
    for stepwise in (False, True):
        conn = apsw.Connection(str(tmp_path / f"s{stepwise}.db"))
        try:
            cx.migrate(conn, stepwise=stepwise)
            fks = conn.execute("SELECT count(*) FROM pragma_foreign_key_list('chunks')").fetchall()
            triggers = conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'streams' ORDER BY name"
            ).fetchall()
        finally:
            conn.close()
        assert fks == [(0,)], stepwise
        assert ("streams_delete_records",) in triggers and ("streams_id_keep",) in triggers, triggers


def test_a_record_of_an_unknown_stream_is_still_refused_through_the_api(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        with pytest.raises(errors.StreamNotFound):
            db.stream("nope").append(b"x")


def test_a_connection_in_defensive_mode_migrates_and_keeps_its_mode(tmp_path: Path) -> None:
    """Defensive mode refuses writable_schema; the migration turns it off for its steps."""
    conn = apsw.Connection(str(tmp_path / "d.db"))
    try:
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        cx.migrate(conn, stepwise=True)
        assert conn.execute("SELECT count(*) FROM pragma_foreign_key_list('chunks')").fetchall() == [(0,)]
        assert conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    finally:
        conn.close()


def test_a_stream_deleted_where_foreign_keys_are_off_leaves_nothing_to_the_next_stream(db_path: str) -> None:
    """Its subscriptions, dedup ids and lifetime stay behind (foreign keys off), but the
    next stream gets a new id: none of them apply to it."""
    with sqlstream.open(db_path) as db:
        old = db.create_stream("old", dedup_records=10)
        old.append(b"o0", dedup_id="same")
        old.append(b"o1")
        sub = db.create_subscription("billing", "old")
        sub.fetch("w", 2)
        sub.ack(0, 1)
        old_id = stream_id(db, "old")
    conn = shell(db_path)
    try:
        conn.execute("DELETE FROM streams WHERE name = 'old'")
    finally:
        conn.close()
    with sqlstream.open(db_path) as db:
        new = db.create_stream("new")
        assert stream_id(db, "new") > old_id
        new.append(b"n0", dedup_id="same")  # not taken for the old stream's duplicate
        new.append(b"n1")
        assert [r.value for r in new.read(0, 10)] == [b"n0", b"n1"]
        fresh = db.create_subscription("fresh", "new")
        assert [r.value for r in fresh.fetch("w", 10)] == [b"n0", b"n1"]
        assert [(s.name, s.stream) for s in db.subscriptions()] == [("fresh", "new")]
        # What the shell left is reported, not adopted.
        assert any("subscriptions refers to a missing row of streams" in p.message for p in db.check().problems)


def test_stream_ids_are_never_given_twice_through_the_api(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        ids = []
        for i in range(3):
            db.create_stream(f"s{i}")
            ids.append(stream_id(db, f"s{i}"))
        db.delete_stream("s2")  # the largest id
        db.create_stream("s3")
        assert stream_id(db, "s3") == ids[-1] + 1


def test_a_floor_at_the_largest_integer_is_corrupt_database_and_nothing_is_created(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("a")
    conn = plain_sql(db_path)
    try:
        conn.execute(f"UPDATE counters SET value = {2**63 - 1} WHERE name = 'stream_id_floor'")
    finally:
        conn.close()
    with sqlstream.open(db_path) as db:
        with pytest.raises(errors.CorruptDatabase, match="no stream id is left") as caught:
            db.create_stream("b")
        assert "stream_id_floor" in (caught.value.hint or "")
        assert [s.name for s in db.streams()] == ["a"]


def test_check_reports_a_missing_or_mistyped_stream_id_floor(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("a")
    for sql, expected in (
        ("UPDATE counters SET value = 'x' WHERE name = 'stream_id_floor'",
         "the counters row 'stream_id_floor' holds 'x', not an integer"),
        ("DELETE FROM counters WHERE name = 'stream_id_floor'", "the counters table has no 'stream_id_floor' row"),
    ):
        conn = plain_sql(db_path)
        try:
            conn.execute(sql)
        finally:
            conn.close()
        with sqlstream.open(db_path) as db:
            assert [p.message for p in db.check().problems] == [expected]
            db.create_stream(f"after-{len(expected)}")  # still creates: above the largest id in use
