"""Readers: named persisted positions; read returns and advances atomically."""

from __future__ import annotations

import threading
import time

import apsw
import pytest

import sqlstream
from sqlstream import errors

WAIT = 30.0  # a blocked read's own timeout: returning before it means a commit woke it


def test_read_advances_and_the_position_persists(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        stream = db.create_stream("s")
        stream.extend(list(range(10)))
        reader = db.reader("ui", "s")
        assert reader.position == 0
        assert [r.value for r in reader.read(4)] == [0, 1, 2, 3]
        assert reader.position == 4
    with sqlstream.open(db_path) as db:
        reader = db.reader("ui")  # resumes: the stream need not be named again
        assert reader.stream == "s" and reader.position == 4
        assert [r.offset for r in reader.read(100)] == [4, 5, 6, 7, 8, 9]
        assert reader.read(100) == []
        assert reader.position == 10


def test_start_and_seek(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend(list(range(5)))
    assert db.reader("late", "s", start="latest").read() == []
    assert db.reader("mid", "s", start=3).position == 3
    reader = db.reader("r", "s")
    reader.read(5)
    assert reader.seek(1) == 1 and [r.offset for r in reader.read(2)] == [1, 2]
    assert reader.seek("earliest") == 0 and reader.seek("latest") == 5
    with pytest.raises(errors.OffsetOutOfRange):
        reader.seek(6)
    with pytest.raises(errors.OffsetOutOfRange):
        db.reader("bad", "s", start=9)
    with pytest.raises(errors.InvalidArgument):
        reader.seek("middle")
    assert reader.position == 5


def test_catalogue_and_errors(db: sqlstream.Database) -> None:
    db.create_stream("s").extend([1, 2, 3])
    db.create_stream("t")
    with pytest.raises(errors.StreamNotFound):
        db.reader("r", "nope")
    with pytest.raises(errors.ReaderNotFound):
        db.reader("r")
    reader = db.reader("r", "s")
    reader.read(1)
    with pytest.raises(errors.InvalidArgument):
        db.reader("r", "t")  # a reader reads one stream
    with pytest.raises(errors.InvalidName):
        db.reader("no spaces", "s")
    with pytest.raises(errors.InvalidArgument):
        reader.read(0)
    db.reader("q", "t")
    infos = db.readers()
    assert [(i.name, i.stream, i.position, i.lag) for i in infos] == [("q", "t", 0, 0), ("r", "s", 1, 2)]
    assert reader.info() == infos[1]
    reader.delete()
    with pytest.raises(errors.ReaderNotFound):
        reader.read()
    with pytest.raises(errors.ReaderNotFound):
        reader.delete()
    fresh = db.reader("r", "s")  # a new reader under the old name starts over
    assert fresh.position == 0
    with pytest.raises(errors.ReaderNotFound):
        reader.position  # noqa: B018 - the old handle stays bound to the deleted reader
    db.delete_reader("q")
    assert [i.name for i in db.readers()] == ["r"]
    db.delete_stream("s")
    assert db.readers() == []


def test_threads_sharing_a_reader_never_get_the_same_record(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    stream.extend(list(range(3000)))
    got: list[list[int]] = [[] for _ in range(4)]

    def run(i: int) -> None:
        reader = db.reader("shared", "s")
        while batch := reader.read(7):
            got[i] += [r.offset for r in batch]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o for part in got for o in part) == list(range(3000))


def test_blocking_read_wakes_on_append_and_ends_on_seal(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    reader = db.reader("r", "s")
    timer = threading.Timer(0.2, lambda: stream.append("x"))
    timer.start()
    started = time.monotonic()
    assert [r.value for r in reader.read(10, timeout=WAIT)] == ["x"]
    assert time.monotonic() - started < WAIT  # woken by the append, not by its timeout
    timer.join()
    assert reader.read(10, timeout=0.1) == []
    timer = threading.Timer(0.2, stream.seal)
    timer.start()
    started = time.monotonic()
    assert reader.read(10, timeout=WAIT) == []
    assert time.monotonic() - started < WAIT  # woken by the seal, not by its timeout
    timer.join()


def test_read_inside_a_transaction_commits_with_it(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    out = db.create_stream("out")
    stream.extend(["a", "b", "c"])
    reader = db.reader("r", "s")
    with pytest.raises(RuntimeError):
        with db.transaction():
            out.extend([r.value.upper() for r in reader.read(2)])
            raise RuntimeError("rolled back")
    assert reader.position == 0 and out.read() == []
    with db.transaction():
        out.extend([r.value.upper() for r in reader.read(2)])
    assert reader.position == 2
    with db.transaction():
        assert [r.value for r in reader.read(5, timeout=1)] == ["c"]  # something there: no wait
        with pytest.raises(errors.InvalidArgument):
            reader.read(5, timeout=1)  # would block inside the transaction: refused
    assert reader.position == 3
    assert [r.value for r in out.read()] == ["A", "B"]


def test_trimmed_records_are_skipped(db: sqlstream.Database) -> None:
    db.create_stream("s").extend(list(range(10)))
    reader = db.reader("r", "s")
    conn = apsw.Connection(db.path)  # trim offsets 0..4 as retention would
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM chunks WHERE offset < 5")
        # As sqlstream's trims do: the row's next_offset is a floor, raised with first_offset.
        conn.execute("UPDATE streams SET first_offset = 5, next_offset = 10 WHERE name = 's'")
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert reader.info().lag == 5
    assert [r.offset for r in reader.read(3)] == [5, 6, 7]
