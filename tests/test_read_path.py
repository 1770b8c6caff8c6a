"""The record read path: what a page read leaves behind and what Records look like."""

from __future__ import annotations

import gc
import threading
import time
import pickle
from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream.records import Record


@pytest.mark.parametrize("enabled", [True, False])
def test_page_read_leaves_the_cyclic_gc_as_it_was_also_on_a_damaged_record(tmp_path: Path, enabled: bool) -> None:
    with sqlstream.open(str(tmp_path / "r.db")) as db:
        s = db.create_stream("s")
        s.extend([b"x", "t", {"j": 1}] * 100)
        db.engine.write_conn().execute("UPDATE chunks SET data = CAST(x'ff' AS TEXT) WHERE offset = 250")
        was = gc.isenabled()
        try:
            (gc.enable if enabled else gc.disable)()
            assert len(s.read(0, 200)) == 200
            assert gc.isenabled() is enabled
            assert len(s.read(200, 100)) == 50  # ends before the damaged record
            assert gc.isenabled() is enabled
            with pytest.raises(sqlstream.errors.DamagedRecord):
                s.read(250, 10)
            assert gc.isenabled() is enabled
        finally:
            (gc.enable if was else gc.disable)()


def test_records_keep_their_content_types_attributes_equality_and_pickling(tmp_path: Path) -> None:
    with sqlstream.open(str(tmp_path / "r.db")) as db:
        s = db.create_stream("s")
        s.extend([b"b", "t", {"j": [1]}], key="k", headers={"h": "v"})
        got = s.read(0, 3)
        assert [r.content_type for r in got] == ["bytes", "text", "json"]
        assert [r.value for r in got] == [b"b", "t", {"j": [1]}]
        assert all(isinstance(r, Record) and isinstance(r, tuple) for r in got)
        assert got[2] == Record("s", 2, got[2].timestamp, "k", {"h": "v"}, {"j": [1]}, got[2].position, got[2].txn, "json")
        assert pickle.loads(pickle.dumps(got)) == got
        assert got[0]._replace(value=b"c").value == b"c"


def test_repeated_reads_reuse_their_compiled_statements_whatever_values_are_bound(tmp_path: Path) -> None:
    # SQLite compiles a statement again when a value it planned with is bound anew (a
    # LIMIT ?, ORDER BY ... LIMIT ? ranges) unless the connection has the query planner
    # stability guarantee; the authorizer is called exactly when SQLite compiles.
    with sqlstream.open(str(tmp_path / "r.db")) as db:
        s = db.create_stream("s")
        s.extend([b"x", "t", {"j": 1}] * 10)
        conn = db.engine.read_conn()
        compiled: list[int] = []

        def authorizer(action: int, *args: object) -> int:
            compiled.append(action)
            return apsw.SQLITE_OK

        conn.authorizer = authorizer  # expires every cached statement: each compiles once more
        s.read(0, 1)
        s.read_raw(0, 1)
        s.read_reverse(5, 1)
        compiled.clear()
        for offset in range(1, 20):
            assert [r.offset for r in s.read(offset, 1 + offset % 4)][0] == offset
            assert s.read_raw(offset, 2 + offset % 3).payloads
            assert s.read_reverse(offset + 1, 1 + offset % 2)[0].offset == offset
        assert compiled == []


def test_close_from_another_thread_waits_for_a_read_in_progress(tmp_path: Path) -> None:
    # Read connections are opened NOMUTEX (SQLite and apsw no longer keep a second thread
    # out): close() must take each connection's guard rather than close it under a reader.
    db = sqlstream.open(str(tmp_path / "r.db"))
    s = db.create_stream("s")
    s.extend([b"x"] * 10)
    entered, proceed = threading.Event(), threading.Event()
    log: list[object] = []

    def reader() -> None:
        try:
            with db.engine.snapshot() as conn:
                entered.set()
                proceed.wait(30)
                log.append(conn.execute("SELECT count(*) FROM chunks").fetchall()[0][0])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            log.append(exc)

    def closer() -> None:
        db.close()
        log.append("closed")

    r = threading.Thread(target=reader)
    r.start()
    assert entered.wait(30)
    c = threading.Thread(target=closer)
    c.start()
    deadline = time.monotonic() + 30
    while not db.engine.closing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert db.engine.closing  # close() has begun while the read is still open
    proceed.set()
    r.join(30)
    c.join(30)
    assert log == [10, "closed"]
    with pytest.raises(sqlstream.errors.DatabaseClosed):
        s.read(0, 1)


def test_close_lets_a_transaction_in_another_thread_finish_with_its_reads(tmp_path: Path) -> None:
    # close() closes the read connections first, but waits for the write lock before the
    # Database counts as closed: a transaction under way still reads and commits.
    db = sqlstream.open(str(tmp_path / "r.db"))
    s = db.create_stream("s")
    s.append(b"a")
    entered, proceed = threading.Event(), threading.Event()
    log: list[object] = []

    def writer() -> None:
        with db.transaction():
            entered.set()
            proceed.wait(30)
            log.append([r.value for r in s.read(0, 10)])
            s.append(b"b")
        log.append("committed")

    w = threading.Thread(target=writer)
    w.start()
    assert entered.wait(30)
    c = threading.Thread(target=db.close)
    c.start()
    deadline = time.monotonic() + 30
    while not db.engine.closing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert db.engine.closing and not db.engine.closed
    proceed.set()
    w.join(30)
    c.join(30)
    assert log == [[b"a"], "committed"]
    with sqlstream.open(str(tmp_path / "r.db")) as again:
        assert [r.value for r in again.stream("s").read(0, 10)] == [b"a", b"b"]
