"""Storage faults become clear sqlstream errors, and never cost data already stored.

Faults are injected through a real SQLite VFS, not by patching: :class:`FaultyVFS` is an
apsw VFS that inherits every operation from SQLite's default VFS and, while armed, fails
``xWrite`` with the chosen error (SQLITE_FULL, SQLITE_IOERR). The databases under test
are opened with ``sqlstream.open(path, vfs=FaultyVFS.NAME)``.

Also here: lock waits past the busy timeout, read-only opens, and a Database crossing
process boundaries (pickling, fork).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest

import sqlstream
from sqlstream import errors


class FaultyFile(apsw.VFSFile):
    """A file of the default VFS whose writes fail while its VFS is armed."""

    def __init__(self, vfs: FaultyVFS, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)  # "": inherit from the default VFS
        self.vfs = vfs

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 - apsw's name
        fault = self.vfs.read_fault
        if fault is not None:
            self.vfs.failed_reads += 1
            raise fault(f"injected {fault.__name__} in xRead")
        data: bytes = super().xRead(amount, offset)
        return data

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802 - apsw's name
        fault = self.vfs.fault
        if fault is not None:
            self.vfs.failed_writes += 1
            raise fault(f"injected {fault.__name__} in xWrite")
        super().xWrite(data, offset)


class FaultyVFS(apsw.VFS):
    """SQLite's default VFS with switchable write faults."""

    NAME = "sqlstream-test-faulty"

    def __init__(self) -> None:
        super().__init__(self.NAME, "")
        self.fault: type[apsw.Error] | None = None
        self.failed_writes = 0
        self.read_fault: type[apsw.Error] | None = None
        self.failed_reads = 0

    def xOpen(self, name: Any, flags: list[int]) -> FaultyFile:  # noqa: N802 - apsw's name
        return FaultyFile(self, name, flags)

    def arm(self, fault: type[apsw.Error]) -> None:
        self.fault = fault
        self.failed_writes = 0

    def disarm(self) -> None:
        self.fault = None
        self.read_fault = None


@pytest.fixture(scope="module")
def vfs() -> Iterator[FaultyVFS]:
    faulty = FaultyVFS()
    yield faulty
    faulty.unregister()


@pytest.fixture
def faulty_db(db_path: str, vfs: FaultyVFS) -> Iterator[sqlstream.Database]:
    vfs.disarm()
    database = sqlstream.open(db_path, vfs=FaultyVFS.NAME)
    yield database
    vfs.disarm()
    database.close()


def dump(db: sqlstream.Database) -> list[Any]:
    """Every stream's info counters and records, through the Database under test."""
    out: list[Any] = []
    for info in db.streams():
        stream = db.stream(info.name)
        records = stream.read(0, max(1, info.next_offset)) if info.next_offset else []
        out.append((info.name, info.next_offset, info.byte_length, info.sealed, [tuple(r) for r in records]))
    return out


def populate(db: sqlstream.Database) -> None:
    a = db.create_stream("a")
    a.append({"id": 1}, key="k", headers={"h": "v"})
    a.extend([b"x" * 5000, "é" * 100, [1, 2]])
    b = db.create_stream("b")
    b.extend([b"one", b"two"])
    db.create_stream("sealed").seal()


def check_error(err: BaseException, expected: type[errors.SqlstreamError], cause: type[apsw.Error]) -> None:
    """A sqlstream error (not an apsw one) that keeps the driver's error as its cause."""
    assert isinstance(err, expected), f"expected {expected.__name__}, got {type(err).__name__}: {err}"
    assert not isinstance(err, apsw.Error)
    assert isinstance(err.__cause__, cause)
    assert err.hint


WRITES: list[tuple[str, Callable[[sqlstream.Database], object]]] = [
    ("append", lambda db: db.stream("a").append(b"lost")),
    ("append large", lambda db: db.stream("a").append(b"L" * 200_000)),
    ("extend", lambda db: db.stream("b").extend([b"lost"] * 50)),
    ("create_stream", lambda db: db.create_stream("new")),
    ("delete_stream", lambda db: db.delete_stream("b")),
    ("seal", lambda db: db.stream("a").seal()),
    ("transaction", lambda db: _two_streams(db)),
]


def _two_streams(db: sqlstream.Database) -> None:
    with db.transaction():
        db.stream("a").append(b"lost a")
        with db.transaction():
            db.stream("b").append(b"lost b")


@pytest.mark.parametrize("write", [w for _, w in WRITES], ids=[i for i, _ in WRITES])
@pytest.mark.parametrize(
    ("fault", "expected"),
    [(apsw.FullError, errors.StorageFull), (apsw.IOError, errors.WriteError)],
    ids=["disk-full", "io-error"],
)
def test_write_fault_is_converted_and_loses_nothing(
    faulty_db: sqlstream.Database,
    vfs: FaultyVFS,
    write: Callable[[sqlstream.Database], object],
    fault: type[apsw.Error],
    expected: type[errors.SqlstreamError],
) -> None:
    """A write that hits a full disk (StorageFull) or an I/O error (WriteError) stores nothing;
    what was stored before is intact, and once the fault clears the same write succeeds."""
    db = faulty_db
    populate(db)
    before = dump(db)
    vfs.arm(fault)
    with pytest.raises(BaseException) as info:
        write(db)
    vfs.disarm()
    assert vfs.failed_writes > 0, "the fault was never hit"
    check_error(info.value, expected, fault)
    assert not db.in_transaction()
    assert dump(db) == before
    # The same Database recovers, and another connection agrees the file is sound.
    write(db)
    assert dump(db) != before
    assert db.create_stream("usable").append(b"after") == 0
    assert db.query("PRAGMA integrity_check").rows == [("ok",)]
    with sqlstream.open(db.path) as other:
        assert dump(other) == dump(db)


def test_fault_inside_an_open_transaction_rolls_it_back(faulty_db: sqlstream.Database, vfs: FaultyVFS) -> None:
    """A fault at COMMIT rolls the whole transaction back; the next transaction starts clean."""
    db = faulty_db
    populate(db)
    before = dump(db)
    a, b = db.stream("a"), db.stream("b")
    with pytest.raises(errors.StorageFull):
        with db.transaction():
            a.extend([b"p"] * 10)
            b.append(b"q")
            vfs.arm(apsw.FullError)  # fails at COMMIT, when the pages reach the WAL
    vfs.disarm()
    assert dump(db) == before
    with db.transaction():
        assert a.append(b"p") == 4
        assert b.append(b"q") == 2
    records = a.read(4) + b.read(2)
    assert len({r.txn for r in records}) == 1


@pytest.mark.parametrize("fault", [apsw.FullError, apsw.IOError], ids=["disk-full", "io-error"])
@pytest.mark.parametrize("ending", ["continue", "finish"])
def test_caught_fault_inside_a_transaction_commits_nothing(
    faulty_db: sqlstream.Database, vfs: FaultyVFS, fault: type[apsw.Error], ending: str
) -> None:
    """A fault mid-transaction (a batch too big for the page cache spills to the WAL) makes
    SQLite roll the whole transaction back. A caller who catches it and keeps writing in the
    block gets an error, and nothing of the block is committed, not even the later writes."""
    db = faulty_db
    populate(db)
    before = dump(db)
    a, b = db.stream("a"), db.stream("b")
    big = [bytes([i]) * 100_000 for i in range(60)]  # ~6 MB: more than SQLite's page cache
    with pytest.raises(errors.DatabaseError) as info:
        with db.transaction():
            a.append(b"early")
            vfs.arm(fault)
            with pytest.raises((errors.StorageFull, errors.WriteError)):
                a.extend(big)
            vfs.disarm()
            if ending == "continue":
                b.append(b"after the fault")  # must not commit on its own
    vfs.disarm()
    assert "rolled back after an earlier error" in str(info.value) and info.value.hint
    assert not db.in_transaction()
    assert dump(db) == before
    with db.transaction():
        assert a.append(b"retry") == 4
        assert len(a.extend(big)) == 60
    assert db.query("PRAGMA integrity_check").rows == [("ok",)]


def test_read_fault_is_a_sqlstream_error(db_path: str, vfs: FaultyVFS) -> None:
    """An I/O error while reading surfaces as a SqlstreamError, and reads work once it clears."""
    with sqlstream.open(db_path) as db:
        populate(db)
        expected = dump(db)
    with sqlstream.open(db_path, vfs=FaultyVFS.NAME) as db:
        vfs.read_fault = apsw.IOError
        vfs.failed_reads = 0
        try:
            with pytest.raises(BaseException) as info:
                db.stream("a").read(0, 10)  # this thread's read connection opens now
        finally:
            vfs.disarm()
        assert vfs.failed_reads > 0
        assert isinstance(info.value, errors.SqlstreamError), repr(info.value)
        assert not isinstance(info.value, apsw.Error)
        assert isinstance(info.value.__cause__, apsw.IOError)
        assert dump(db) == expected


def test_open_on_a_full_disk_fails_cleanly(tmp_path: Any, vfs: FaultyVFS) -> None:
    """Creating a database on a full disk is StorageFull, leaks no connection, and works later."""
    path = str(tmp_path / "new.db")
    vfs.arm(apsw.FullError)
    try:
        with pytest.raises(BaseException) as info:
            sqlstream.open(path, vfs=FaultyVFS.NAME)
    finally:
        vfs.disarm()
    check_error(info.value, errors.StorageFull, apsw.FullError)
    with sqlstream.open(path, vfs=FaultyVFS.NAME) as db:
        db.create_stream("s").append(b"ok")
        assert [r.value for r in db.stream("s").read()] == [b"ok"]


def test_lock_wait_past_busy_timeout(db_path: str) -> None:
    """While another connection holds the write lock, writes wait busy_timeout, then LockTimeout;
    nothing changes, and writing works again once the lock is released."""
    with sqlstream.open(db_path, busy_timeout=0.2) as db:
        populate(db)
        before = dump(db)
        holder = apsw.Connection(db_path)
        try:
            holder.execute("BEGIN IMMEDIATE")
            for write in (
                lambda: db.stream("a").append(b"x"),
                lambda: db.stream("b").extend([b"x", b"y"]),
                lambda: db.create_stream("new"),
                lambda: db.stream("a").seal(),
                lambda: db.delete_stream("b"),
                lambda: db.transaction().__enter__(),
            ):
                started = time.monotonic()
                with pytest.raises(BaseException) as info:
                    write()
                waited = time.monotonic() - started
                check_error(info.value, errors.LockTimeout, apsw.BusyError)
                assert waited >= 0.15, f"waited {waited:.3f}s for a 0.2s busy timeout"  # waited, then gave up
                assert not db.in_transaction()
                assert dump(db) == before  # reads are not blocked by the other writer
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert db.stream("a").append(b"x") == 4


def test_read_only_open_refuses_writes(db_path: str) -> None:
    """A read-only Database reads everything and refuses every write with ReadOnlyDatabase."""
    with sqlstream.open(db_path) as db:
        populate(db)
        expected = dump(db)
    with sqlstream.open(db_path, readonly=True) as ro:
        assert dump(ro) == expected
        for write in (
            lambda: ro.stream("a").append(b"x"),
            lambda: ro.stream("b").extend([b"x"]),
            lambda: ro.create_stream("new"),
            lambda: ro.delete_stream("a"),
            lambda: ro.stream("a").seal(),
            lambda: ro.transaction().__enter__(),
            lambda: ro.query("DELETE FROM chunks"),
        ):
            with pytest.raises(BaseException) as info:
                write()
            assert isinstance(info.value, errors.ReadOnlyDatabase), repr(info.value)
            assert not isinstance(info.value, apsw.Error)
        assert dump(ro) == expected


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_write_protected_file_refuses_writes(db_path: str) -> None:
    """A database file the process may not write is readable, and writes are ReadOnlyDatabase."""
    with sqlstream.open(db_path) as db:
        populate(db)
        expected = dump(db)
    # close() checkpointed the WAL into the file: nothing is left that needs writing.
    os.chmod(db_path, stat.S_IRUSR)
    try:
        with sqlstream.open(db_path) as db:
            assert dump(db) == expected
            with pytest.raises(errors.ReadOnlyDatabase):
                db.stream("a").append(b"x")
    finally:
        os.chmod(db_path, stat.S_IRUSR | stat.S_IWUSR)


def test_database_pickles_to_a_working_database(db_path: str) -> None:
    """A pickled Database unpickles to an open Database on the same file with the same options."""
    with sqlstream.open(db_path, busy_timeout=1.5, max_record_bytes=10_000) as db:
        populate(db)
        copy = pickle.loads(pickle.dumps(db))
        try:
            assert isinstance(copy, sqlstream.Database) and copy is not db
            assert copy.path == db.path and not copy.closed
            assert (copy.busy_timeout, copy.max_record_bytes) == (1.5, 10_000)
            assert dump(copy) == dump(db)
            assert copy.stream("a").append(b"from the copy") == 4
            assert db.stream("a").read(4)[0].value == b"from the copy"
            with pytest.raises(errors.PayloadTooLarge):
                copy.stream("a").append(b"x" * 10_001)
        finally:
            copy.close()
        assert db.stream("b").append(b"original still works") == 2


def _append_in_child(db: sqlstream.Database, handle: sqlstream.Stream, count: int) -> None:
    # Runs in a forked child: both the inherited Database and a handle made in the parent.
    for i in range(count):
        handle.append({"child": i})
    db.create_stream("from-child").append(b"hello parent")
    with db.transaction():
        db.stream("b").append(b"child txn")
    db.close()


def test_forked_child_can_write_and_parent_still_works(db_path: str) -> None:
    """After fork the child writes through the inherited Database; the parent keeps working."""
    with sqlstream.open(db_path) as db:
        populate(db)
        a = db.stream("a")
        a.read()  # the parent has open read and write connections when it forks
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_append_in_child, args=(db, a, 5))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        values = [r.value for r in a.read(4)]
        assert values == [{"child": i} for i in range(5)]
        assert db.stream("from-child").read()[0].value == b"hello parent"
        assert [r.value for r in db.stream("b").read()] == [b"one", b"two", b"child txn"]
        # The parent's own connections survived the child's exit.
        assert a.append(b"parent again") == 9
        with db.transaction():
            db.stream("b").append(b"parent txn")
        assert db.query("PRAGMA integrity_check").rows == [("ok",)]
