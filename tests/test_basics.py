"""Plain API behaviour of streams: create, append, extend, read, seal, info."""

from __future__ import annotations

import os
import stat

import pytest

import sqlstream
from sqlstream import errors


def test_new_file_is_private_wal_and_migrated(db: sqlstream.Database) -> None:
    mode = stat.S_IMODE(os.stat(db.path).st_mode)
    assert mode & 0o077 == 0
    assert db.query("PRAGMA journal_mode").rows == [("wal",)]
    assert db.query("PRAGMA auto_vacuum").rows == [(2,)]
    assert db.query("PRAGMA user_version").rows[0][0] >= 1


def test_append_extend_read_roundtrip(db: sqlstream.Database) -> None:
    s = db.create_stream("orders")
    assert s.append({"id": 1}, key="c1", headers={"src": "web"}) == 0
    assert s.extend([b"a", "b", [1, 2]]) == range(1, 4)
    recs = s.read(0, 10)
    assert [r.offset for r in recs] == [0, 1, 2, 3]
    assert [r.value for r in recs] == [{"id": 1}, b"a", "b", [1, 2]]
    assert recs[0].key == "c1" and recs[0].headers == {"src": "web"}
    assert [r.content_type for r in recs] == ["json", "bytes", "text", "json"]
    # One transaction shares one txn number; a later one gets a higher number.
    assert recs[1].txn == recs[2].txn == recs[3].txn > recs[0].txn
    assert [r.position for r in recs] == [0, 8, 9, 10]


def test_transaction_rolls_back_all_streams(db: sqlstream.Database) -> None:
    a, b = db.create_stream("a"), db.create_stream("b")
    with pytest.raises(RuntimeError):
        with db.transaction():
            a.append(b"1")
            b.append(b"2")
            raise RuntimeError("boom")
    assert a.read() == [] and b.read() == []
    assert a.append(b"x") == 0  # the rolled-back offset is not burned


def test_newer_schema_refused(db_path: str) -> None:
    sqlstream.open(db_path).close()
    import apsw

    conn = apsw.Connection(db_path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(errors.SchemaVersionError):
        sqlstream.open(db_path)
