"""BuildGrid LogStream compatibility: sqlstream.compat.buildgrid.StreamStorage.

Semantics follow BuildGrid's StreamStorageABC docstrings (shared/seeds/000_*.txt). Every
test uses a real database file; blocking tests prove that a reader was really blocked
(its thread still alive) before the write that wakes it.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlstream
from sqlstream import errors
from sqlstream.compat import buildgrid as bg
from sqlstream.compat.buildgrid import (
    NotFoundError,
    OutOfRangeError,
    StorageFullError,
    StreamChunk,
    StreamFinishedError,
    StreamLength,
    StreamStorage,
    StreamWritePendingError,
    WriteError,
)

ROOT = Path(__file__).resolve().parent.parent
JOIN = 60.0  # a hang guard, not a speed bound: the machine is shared and may be loaded


@pytest.fixture
def storage(db_path: str) -> Iterator[StreamStorage]:
    s = StreamStorage(db_path)
    yield s
    s.close()


class Bg(threading.Thread):
    """Run a call in a thread and keep its result or exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def outcome(self, timeout: float = JOIN) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the call did not return in time"
        if self.error is not None:
            raise self.error
        return self.result


def assert_blocked(thread: Bg, seconds: float = 0.3) -> None:
    time.sleep(seconds)
    assert thread.is_alive(), f"the call returned without blocking: {thread.result!r} / {thread.error!r}"


# ------------------------------------------------------------------ create, names, lengths


def test_create_stream_names_and_secret(storage: StreamStorage) -> None:
    h = storage.create_stream("projects/p/operations/op1", "build-")
    assert isinstance(h, bg.StreamHandle) and isinstance(h, tuple)
    parent, seg, last = h.name.rsplit("/", 2)
    assert (parent, seg) == ("projects/p/operations/op1", "logStreams")
    assert last.startswith("build-") and len(last) == len("build-") + 36
    read_name, _, secret = h.write_resource_name.rpartition("/")
    assert read_name == h.name and len(secret) >= 24
    # The secret is the sqlstream write secret of a secret stream.
    assert storage.db.stream_info(h.name).secret
    assert storage.db.writer(secret).name == h.name
    with pytest.raises(errors.AccessDenied):
        storage.db.stream(h.name).append(b"no secret, no write")
    # Fresh uuid (and secret) every time.
    h2 = storage.create_stream("projects/p/operations/op1", "build-")
    assert h2.name != h.name and h2.write_resource_name.rpartition("/")[2] != secret
    assert storage.stream_exists(h.name) and storage.stream_exists(h2.name)
    assert storage.stream_length(h.name) == StreamLength(0, False)
    assert storage.writeable_stream_length(h.write_resource_name) == (0, False)
    assert storage.stream_finished(h.name) is False
    # An empty parent gives a valid name without a leading slash.
    h3 = storage.create_stream("", "")
    assert h3.name.startswith("logStreams/") and storage.stream_exists(h3.name)


def test_instance_names_qualify_streams(db_path: str) -> None:
    with StreamStorage(db_path) as a, StreamStorage(db_path, instance_name="other") as b:
        a.set_instance_name("main")
        assert a.instance_name == "main"
        h = a.create_stream("ops/1", "")
        assert a.stored_name(h.name) == f"main/{h.name}"
        assert a.db.stream_info(f"main/{h.name}").metadata["buildgrid"] == {"instance": "main", "name": h.name}
        a.append_to_stream(h.write_resource_name, b"hi")
        # Invisible from another instance, by read name and by write name.
        assert not b.stream_exists(h.name)
        for call in (
            lambda: b.stream_length(h.name),
            lambda: b.read_stream_chunk(h.name, 0, 1),
            lambda: b.new_client_streaming(h.name),
            lambda: b.append_to_stream(h.write_resource_name, b"x"),
            lambda: b.writeable_stream_length(h.write_resource_name),
            lambda: b.delete_stream(h.write_resource_name),
        ):
            with pytest.raises(NotFoundError):
                call()
        b.set_instance_name("main")
        assert b.read_stream_chunk(h.name, 0, 2).data == b"hi"
        # The default instance ("") stores the name unqualified.
        b.set_instance_name("")
        h2 = b.create_stream("ops/2", "p-")
        assert b.db.stream_info(h2.name).name == h2.name
        with pytest.raises(errors.InvalidArgument):
            b.set_instance_name(None)  # type: ignore[arg-type]


def test_names_outside_the_rule(storage: StreamStorage) -> None:
    # Creation refuses with InvalidName and says why ...
    for parent, prefix in (("has space", ""), ("ops", "b#d"), ("/leading-slash", ""), ("x" * 160, "")):
        with pytest.raises(errors.InvalidName, match="cannot create a LogStream"):
            storage.create_stream(parent, prefix)
    storage.set_instance_name("bad instance")
    with pytest.raises(errors.InvalidName):
        storage.create_stream("ops", "")
    storage.set_instance_name("")
    with pytest.raises(errors.InvalidArgument):
        storage.create_stream(None, "")  # type: ignore[arg-type]
    assert storage.db.streams() == []
    # ... and lookups of such names simply find nothing.
    for name in ("has space", "", "a" * 300, "/x"):
        assert storage.stream_exists(name) is False
        with pytest.raises(NotFoundError):
            storage.stream_length(name)
        with pytest.raises(NotFoundError):
            storage.read_stream_chunk(name, 0)
    assert storage.stream_exists(123) is False  # type: ignore[arg-type]


def test_path_or_database_and_close(db_path: str) -> None:
    with StreamStorage(db_path, wakeup="poll") as owned:
        assert owned.db.wakeup == "poll"
        h = owned.create_stream("ops", "")
    assert owned.db.closed
    db = sqlstream.open(db_path)
    try:
        shared = StreamStorage(db)
        assert shared.stream_exists(h.name)
        shared.close()
        shared.close()
        assert not db.closed  # not ours to close
        with pytest.raises(errors.InvalidArgument):
            StreamStorage(db, wakeup="poll")
    finally:
        db.close()


# ------------------------------------------------------------------ appending


def test_append_and_finish(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"hello ")
    storage.append_to_stream(h.write_resource_name, bytearray(b"big "))
    storage.append_to_stream(h.write_resource_name, memoryview(b"world"))
    storage.append_to_stream(h.write_resource_name)  # nothing at all: a no-op
    storage.append_to_stream(h.write_resource_name, b"")
    assert storage.stream_length(h.name) == (15, False)
    storage.append_to_stream(h.write_resource_name, b"!", mark_finished=True)
    assert storage.stream_length(h.name) == (16, True)
    assert storage.stream_finished(h.name) is True
    assert storage.writeable_stream_length(h.write_resource_name) == (16, True)
    assert storage.read_stream_chunk(h.name, 0).data == b"hello big world!"

    # Finished: every kind of further write is refused and changes nothing.
    for kwargs in ({"message": b"x"}, {"message": b"x", "mark_finished": True}, {"mark_finished": True}, {}):
        with pytest.raises(StreamFinishedError) as info:
            storage.append_to_stream(h.write_resource_name, **kwargs)
        assert isinstance(info.value, errors.StreamSealed)
    assert storage.stream_length(h.name) == (16, True)

    # Finishing without data.
    h2 = storage.create_stream("ops", "")
    storage.append_to_stream(h2.write_resource_name, mark_finished=True)
    assert storage.stream_length(h2.name) == (0, True)
    assert storage.read_stream_chunk(h2.name, 0) == StreamChunk(b"", 0, True)


def test_append_and_finish_is_one_transaction(db_path: str) -> None:
    statements: list[str] = []

    def hook(conn: apsw.Connection) -> None:
        def tracer(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            statements.append(sql.strip().split()[0].upper())
            return True

        conn.exec_trace = tracer

    apsw.connection_hooks.append(hook)
    try:
        with StreamStorage(db_path) as s:
            h = s.create_stream("ops", "")
            statements.clear()
            s.append_to_stream(h.write_resource_name, b"last words", mark_finished=True)
            ops = collections.Counter(statements)
            assert s.stream_length(h.name) == (10, True)
    finally:
        apsw.connection_hooks.remove(hook)
    assert ops["BEGIN"] == 1 and ops["COMMIT"] == 1, ops
    assert ops["INSERT"] >= 1 and ops["UPDATE"] >= 2  # the data and the seal, inside it


def test_append_wrong_write_names(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    other = storage.create_stream("ops", "")
    secret = h.write_resource_name.rpartition("/")[2]
    bad_names = [
        h.name,  # the read name is not a write name
        f"{h.name}/not-the-secret",
        f"{other.name}/{secret}",  # right secret, wrong stream
        secret,  # no read-name part
        "",
        "/" + secret,
    ]
    for name in bad_names:
        with pytest.raises(NotFoundError) as info:
            storage.append_to_stream(name, b"x")
        assert isinstance(info.value, errors.StreamNotFound)
        assert secret not in str(info.value)  # the secret is never echoed
        with pytest.raises(NotFoundError):
            storage.writeable_stream_length(name)
        with pytest.raises(NotFoundError):
            storage.wait_for_streaming_clients(name, timeout=0)
        with pytest.raises(NotFoundError):
            storage.delete_stream(name)
    with pytest.raises(errors.InvalidValue):
        storage.append_to_stream(h.write_resource_name, "text is not bytes")  # type: ignore[arg-type]
    assert storage.stream_length(h.name) == (0, False)
    assert storage.stream_length(other.name) == (0, False)


def test_large_message_split_into_records_of_one_transaction(db_path: str) -> None:
    with StreamStorage(db_path, max_record_bytes=1000) as s:
        h = s.create_stream("ops", "")
        payload = bytes(random.Random(1).getrandbits(8) for _ in range(4500))
        s.append_to_stream(h.write_resource_name, payload, mark_finished=True)
        assert s.stream_length(h.name) == (4500, True)
        assert s.read_stream_chunk(h.name, 0).data == payload
        records = s.db.stream(h.name).read(0, 100)
        assert [len(r.value) for r in records] == [1000, 1000, 1000, 1000, 500]
        assert len({r.txn for r in records}) == 1


def test_storage_full_error(db_path: str) -> None:
    with StreamStorage(db_path) as s:
        h = s.create_stream("ops", "")
        s.append_to_stream(h.write_resource_name, b"kept")
        # A real SQLITE_FULL: cap the file's size on the write connection.
        conn = s.db.engine.write_conn()
        pages = next(iter(conn.execute("PRAGMA page_count")))[0]
        list(conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
        with pytest.raises(StorageFullError) as info:
            s.append_to_stream(h.write_resource_name, os.urandom(200_000), mark_finished=True)
        assert isinstance(info.value, errors.StorageFull)
        assert isinstance(info.value.__cause__, errors.StorageFull)
        assert s.stream_length(h.name) == (4, False)  # nothing of it was stored, not finished


def test_write_error_for_other_failures(db_path: str) -> None:
    with StreamStorage(db_path) as s:
        h = s.create_stream("ops", "")
    with sqlstream.open(db_path, readonly=True) as ro:
        s = StreamStorage(ro)
        with pytest.raises(WriteError) as info:
            s.append_to_stream(h.write_resource_name, b"x")
        assert isinstance(info.value, errors.WriteError)
        assert isinstance(info.value.__cause__, errors.ReadOnlyDatabase)
        assert s.stream_length(h.name) == (0, False)
        with pytest.raises(WriteError):
            s.delete_stream(h.write_resource_name)
        # Reading, and a non-blocking client check, need no writes.
        assert s.stream_exists(h.name)
        assert s.wait_for_streaming_clients(h.write_resource_name, timeout=0) is False
        assert s.streaming_clients(h.name) == 0


# ------------------------------------------------------------------ non-blocking reads


def test_read_stream_chunk_semantics(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"0123456789")
    read = storage.read_stream_chunk
    assert read(h.name, 0, 4) == StreamChunk(b"0123", 4, False)
    assert read(h.name, 6, 4) == StreamChunk(b"6789", 4, False)  # reaches the end, not finished
    for offset, limit in ((8, 4), (10, 1), (11, 1), (0, None), (0, 0)):
        with pytest.raises(StreamWritePendingError) as info:
            read(h.name, offset, limit)
        assert isinstance(info.value, errors.WritePending)
    storage.append_to_stream(h.write_resource_name, b"ab", mark_finished=True)
    assert read(h.name, 8, 100) == StreamChunk(b"89ab", 4, True)  # min(limit, length)
    assert read(h.name, 0, 4) == StreamChunk(b"0123", 4, False)  # not at the end: not finished
    assert read(h.name, 3) == StreamChunk(b"3456789ab", 9, True)  # None: the whole rest
    assert read(h.name, 3, 0) == StreamChunk(b"3456789ab", 9, True)  # 0 as in ByteStream
    assert read(h.name, 12, 5) == StreamChunk(b"", 0, True)  # the end itself
    for offset in (13, 1000, -1):
        with pytest.raises(OutOfRangeError) as oor:
            read(h.name, offset, 1)
        assert isinstance(oor.value, errors.OffsetOutOfRange)
    with pytest.raises(errors.InvalidArgument):
        read(h.name, 0, -5)
    with pytest.raises(errors.InvalidArgument):
        read(h.name, "0", 1)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        read("ops/logStreams/missing", 0, 1)


# ------------------------------------------------------------------ blocking reads


def test_blocking_read_woken_by_append(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"abc")
    assert storage.read_stream_chunk_blocking(h.name, 0, 3) == StreamChunk(b"abc", 3, False)  # no wait
    reader = Bg(storage.read_stream_chunk_blocking, h.name, 1, 4)
    assert_blocked(reader)  # only 2 of the 4 bytes are committed
    storage.append_to_stream(h.write_resource_name, b"d")
    assert_blocked(reader, 0.2)  # still 1 short
    storage.append_to_stream(h.write_resource_name, b"efg")
    assert reader.outcome() == StreamChunk(b"bcde", 4, False)  # no timeout: only the append ends it


def test_blocking_read_woken_by_finish(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"abc")
    whole = Bg(storage.read_stream_chunk_blocking, h.name, 1)  # no limit: until finished
    short = Bg(storage.read_stream_chunk_blocking, h.name, 2, 10)  # more than will ever exist
    past = Bg(storage.read_stream_chunk_blocking, h.name, 7, 2)  # beyond the final end
    at_end = Bg(storage.read_stream_chunk_blocking, h.name, 5, 2)  # exactly the final end
    for t in (whole, short, past, at_end):
        assert_blocked(t, 0.1)
    storage.append_to_stream(h.write_resource_name, b"de", mark_finished=True)
    assert whole.outcome() == StreamChunk(b"bcde", 4, True)
    assert short.outcome() == StreamChunk(b"cde", 3, True)
    assert at_end.outcome() == StreamChunk(b"", 0, True)
    with pytest.raises(OutOfRangeError):
        past.outcome()


def test_blocking_read_timeout_and_delete(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    t0 = time.monotonic()
    with pytest.raises(StreamWritePendingError):
        storage.read_stream_chunk_blocking(h.name, 0, 1, timeout=0.3)
    assert time.monotonic() - t0 >= 0.25  # never early (how late depends on the machine's load)
    reader = Bg(storage.read_stream_chunk_blocking, h.name, 0, 1)
    iterator = Bg(lambda: list(storage.read_stream_bytes_blocking_iterator(h.name, 8)))
    assert_blocked(reader)
    assert iterator.is_alive()
    storage.delete_stream(h.write_resource_name)
    with pytest.raises(NotFoundError):
        reader.outcome()
    with pytest.raises(NotFoundError):
        iterator.outcome()
    with pytest.raises(NotFoundError):
        storage.read_stream_chunk_blocking(h.name, 0, 1)
    with pytest.raises(errors.InvalidArgument):
        storage.read_stream_chunk_blocking("x", 0, 1, timeout=-1)


def _child_append_then_finish(path: str, write_name: str, delay: float) -> None:
    with StreamStorage(path) as s:
        time.sleep(delay)
        s.append_to_stream(write_name, b"from another ")
        time.sleep(delay)
        s.append_to_stream(write_name, b"process", mark_finished=True)


def _child_new_client(path: str, name: str, delay: float) -> None:
    with StreamStorage(path) as s:
        time.sleep(delay)
        s.new_client_streaming(name)


@pytest.mark.multiprocess
def test_blocking_read_woken_by_another_process(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_append_then_finish, args=(storage.db.path, h.write_resource_name, 0.3))
    child.start()
    try:
        first = storage.read_stream_chunk_blocking(h.name, 0, 5, timeout=60)
        assert first == StreamChunk(b"from ", 5, False)
        assert storage.stream_finished(h.name) is False  # woken by the append, not the finish
        rest = storage.read_stream_chunk_blocking(h.name, 5, timeout=60)
        assert rest == StreamChunk(b"another process", 15, True)
    finally:
        child.join(60)
    assert child.exitcode == 0


# ------------------------------------------------------------------ iterator


def test_iterator_chunks_and_offsets(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"0123456789", mark_finished=True)
    it = storage.read_stream_bytes_blocking_iterator
    assert list(it(h.name, 4)) == [b"0123", b"4567", b"89"]
    assert list(it(h.name, 4, 1)) == [b"4567", b"89"]  # chunk offset 1 = byte 4
    assert list(it(h.name, 3, 3)) == [b"9"]
    assert list(it(h.name, 5, 2)) == []  # byte 10: exactly the end
    with pytest.raises(OutOfRangeError):
        it(h.name, 4, 3)  # byte 12: past the end, raised at call time
    with pytest.raises(OutOfRangeError):
        it(h.name, 4, -1)
    with pytest.raises(NotFoundError):
        it("ops/logStreams/missing", 4)
    for size in (0, -1, 1.5, True):
        with pytest.raises(errors.InvalidArgument):
            it(h.name, size)  # type: ignore[arg-type]
    h2 = storage.create_stream("ops", "")
    with pytest.raises(StreamWritePendingError):
        list(it(h2.name, 4, timeout=0.2))


@pytest.mark.parametrize("wakeup", ["notify", "poll"])
def test_iterator_blocks_without_spinning(db_path: str, wakeup: str) -> None:
    """A reader at the end does a handful of checks per second at most, not a busy loop."""
    checks: collections.Counter[int] = collections.Counter()

    def hook(conn: apsw.Connection) -> None:
        def tracer(cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
            if "FROM streams_now WHERE name" in sql:  # the stream-state read every check makes
                checks[threading.get_ident()] += 1
            return True

        conn.exec_trace = tracer

    apsw.connection_hooks.append(hook)
    try:
        with StreamStorage(db_path, wakeup=wakeup) as s:
            h = s.create_stream("ops", "")
            s.append_to_stream(h.write_resource_name, b"abc")
            got: list[bytes] = []
            caught_up = threading.Event()

            def consume() -> None:
                for piece in s.read_stream_bytes_blocking_iterator(h.name, 2):
                    got.append(piece)
                    if b"".join(got) == b"abc":
                        caught_up.set()

            reader = Bg(consume)
            assert caught_up.wait(JOIN)
            time.sleep(0.2)  # now waiting at the end
            before = checks[reader.ident]  # type: ignore[index]
            time.sleep(1.0)
            idle_checks = checks[reader.ident] - before  # type: ignore[index]
            assert reader.is_alive()
            s.append_to_stream(h.write_resource_name, b"de", mark_finished=True)
            reader.outcome()
    finally:
        apsw.connection_hooks.remove(hook)
    assert b"".join(got) == b"abcde"
    assert checks[reader.ident] > before  # type: ignore[index]  # the tracer did see its checks
    assert idle_checks <= 5, f"{idle_checks} checks in 1 s of idle waiting: the iterator spins"


def test_many_readers_one_writer(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    rng = random.Random(7)
    messages = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(150)]
    expected = b"".join(messages)

    def iterate(size: int, chunk_offset: int) -> bytes:
        return b"".join(storage.read_stream_bytes_blocking_iterator(h.name, size, chunk_offset, timeout=JOIN))

    def chunked(limit: int) -> bytes:
        data, offset = [], 0
        while True:
            chunk = storage.read_stream_chunk_blocking(h.name, offset, limit, timeout=JOIN)
            data.append(chunk.data)
            offset += chunk.chunk_length
            if chunk.finished:
                return b"".join(data)

    readers = [Bg(iterate, size, 0) for size in (1, 7, 64, 1000, 1 << 20)]
    readers += [Bg(chunked, limit) for limit in (5, 333)]
    readers.append(Bg(storage.read_stream_chunk_blocking, h.name, 0, None, timeout=JOIN))
    offset_reader = Bg(iterate, 100, 3)

    def write() -> None:
        for m in messages[:-1]:
            storage.append_to_stream(h.write_resource_name, m)
            if rng.random() < 0.1:
                time.sleep(0.005)
        storage.append_to_stream(h.write_resource_name, messages[-1], mark_finished=True)

    Bg(write).outcome()
    for r in readers[:-1]:
        assert r.outcome() == expected
    assert readers[-1].outcome() == StreamChunk(expected, len(expected), True)
    assert offset_reader.outcome() == expected[300:]


# ------------------------------------------------------------------ streaming clients


def test_client_counting(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    wn = h.write_resource_name
    assert storage.streaming_clients(h.name) == 0
    assert storage.wait_for_streaming_clients(wn, timeout=0) is False
    storage.new_client_streaming(h.name)
    storage.new_client_streaming(h.name)
    assert storage.streaming_clients(h.name) == 2
    assert storage.wait_for_streaming_clients(wn, timeout=0) is True
    storage.streaming_client_left(h.name)
    assert storage.wait_for_streaming_clients(wn, timeout=0) is True
    storage.streaming_client_left(h.name)
    assert storage.wait_for_streaming_clients(wn, timeout=0) is False
    storage.streaming_client_left(h.name)  # more leaves than arrivals: stays at 0
    assert storage.streaming_clients(h.name) == 0
    storage.new_client_streaming(h.name)
    assert storage.wait_for_streaming_clients(wn, timeout=0) is True
    # Other StreamStorage objects on the file see the same counts.
    with StreamStorage(storage.db.path) as other:
        assert other.streaming_clients(h.name) == 1
    for call in (storage.new_client_streaming, storage.streaming_client_left, storage.streaming_clients):
        with pytest.raises(NotFoundError):
            call("ops/logStreams/missing")
    with pytest.raises(errors.InvalidArgument):
        storage.wait_for_streaming_clients(wn, timeout=-1)
    # Deleting the stream deletes its count too; a client leaving afterwards is NotFound.
    storage.delete_stream(wn)
    assert storage.db.streams() == []
    with pytest.raises(NotFoundError):
        storage.streaming_client_left(h.name)


def test_wait_for_streaming_clients_blocks(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    t0 = time.monotonic()
    assert storage.wait_for_streaming_clients(h.write_resource_name, timeout=0.4) is False
    assert time.monotonic() - t0 >= 0.35  # never early (how late depends on the machine's load)
    waiter = Bg(storage.wait_for_streaming_clients, h.write_resource_name, JOIN)
    assert_blocked(waiter)
    storage.new_client_streaming(h.name)
    assert waiter.outcome(5.0) is True
    # A waiter on a stream that gets deleted learns so.
    h2 = storage.create_stream("ops", "")
    waiter = Bg(storage.wait_for_streaming_clients, h2.write_resource_name, JOIN)
    assert_blocked(waiter)
    storage.delete_stream(h2.write_resource_name)
    with pytest.raises(NotFoundError):
        waiter.outcome(5.0)


@pytest.mark.multiprocess
def test_wait_for_streaming_clients_across_processes(storage: StreamStorage) -> None:
    h = storage.create_stream("ops", "")
    child = multiprocessing.get_context("spawn").Process(
        target=_child_new_client, args=(storage.db.path, h.name, 0.3)
    )
    child.start()
    try:
        assert storage.wait_for_streaming_clients(h.write_resource_name, timeout=60) is True
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert storage.streaming_clients(h.name) == 1


# ------------------------------------------------------------------ errors and BuildGrid


def test_error_classes_are_sqlstream_errors() -> None:
    pairs = [
        (NotFoundError, errors.StreamNotFound),
        (StreamFinishedError, errors.StreamSealed),
        (StreamWritePendingError, errors.WritePending),
        (OutOfRangeError, errors.OffsetOutOfRange),
        (StorageFullError, errors.StorageFull),
        (WriteError, errors.WriteError),
    ]
    for ours, theirs in pairs:
        assert issubclass(ours, theirs) and issubclass(ours, bg.LogStreamError)
        err = ours("message", hint="hint")
        assert str(err) == "message (hint: hint)"  # not quoted, even for KeyError kinds


def test_delete_stream(storage: StreamStorage) -> None:
    keep = storage.create_stream("ops", "")
    h = storage.create_stream("ops", "")
    storage.append_to_stream(h.write_resource_name, b"data")
    storage.new_client_streaming(h.name)
    storage.delete_stream(h.write_resource_name)
    assert not storage.stream_exists(h.name)
    assert [i.name for i in storage.db.streams()] == [keep.name]
    for call in (
        lambda: storage.stream_length(h.name),
        lambda: storage.stream_finished(h.name),
        lambda: storage.read_stream_chunk(h.name, 0, 1),
        lambda: storage.append_to_stream(h.write_resource_name, b"x"),
        lambda: storage.delete_stream(h.write_resource_name),
        lambda: storage.new_client_streaming(h.name),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert storage.stream_exists(keep.name)


_STAND_IN_ABC = '''
import abc
from typing import NamedTuple

class StreamHandle(NamedTuple):
    name: str
    write_resource_name: str

class StreamLength(NamedTuple):
    length: int
    finished: bool

class StreamChunk(NamedTuple):
    data: bytes
    chunk_length: int
    finished: bool

class StreamStorageABC(abc.ABC):
    @abc.abstractmethod
    def _create_stream(self, stream_handle): ...
    @abc.abstractmethod
    def stream_exists(self, stream_name): ...
    @abc.abstractmethod
    def _append_to_stream(self, stream_name, write_resource_name, message=None, *, mark_finished=False): ...
    @abc.abstractmethod
    def read_stream_chunk(self, stream_name, read_offset_bytes, read_limit_bytes=None): ...
    @abc.abstractmethod
    def _wait_for_streaming_clients(self, stream_name, timeout): ...
    @abc.abstractmethod
    def delete_stream(self, write_resource_name): ...
'''

_STAND_IN_EXCEPTIONS = '''
class BgdError(Exception):
    def __init__(self, message, *, detail=None, domain=None, reason=None):
        super().__init__(message)
        self.detail, self.domain, self.reason = detail, domain, reason

class NotFoundError(BgdError): pass
class OutOfRangeError(BgdError): pass
class StreamFinishedError(BgdError): pass
class StreamWritePendingError(BgdError): pass
class StorageFullError(BgdError): pass
'''

_STAND_IN_CHECK = '''
import sys, tempfile, os
from buildgrid.server.cas.logstream.stream_storage import stream_storage_abc as abc_mod
from buildgrid import _exceptions as bge
from sqlstream.compat import buildgrid as bg
assert bg.BUILDGRID_AVAILABLE
assert issubclass(bg.StreamStorage, abc_mod.StreamStorageABC)
assert bg.StreamHandle is abc_mod.StreamHandle and bg.StreamChunk is abc_mod.StreamChunk
for name in ("NotFoundError", "OutOfRangeError", "StreamFinishedError", "StreamWritePendingError", "StorageFullError"):
    assert issubclass(getattr(bg, name), getattr(bge, name)), name
assert not issubclass(bg.WriteError, bge.BgdError)  # the stand-in has no WriteError
with bg.StreamStorage(os.path.join(tempfile.mkdtemp(), "bg.db")) as s:
    s.set_instance_name("main")
    h = s.create_stream("ops", "x-")
    assert isinstance(h, abc_mod.StreamHandle)
    s._append_to_stream(h.name, h.write_resource_name, b"abc", mark_finished=True)
    assert isinstance(s.read_stream_chunk(h.name, 0), abc_mod.StreamChunk)
    assert s._wait_for_streaming_clients(h.name, 0) is False
    try:
        s.read_stream_chunk("missing", 0)
    except bge.NotFoundError as exc:
        assert exc.detail is None and str(exc) == "no stream named 'main/missing'", str(exc)
    else:
        raise AssertionError("no NotFoundError")
    try:
        s._append_to_stream("other", h.write_resource_name, b"x")
    except bge.NotFoundError:
        pass
    else:
        raise AssertionError("names that disagree were accepted")
print("ok")
'''


@pytest.mark.multiprocess
def test_subclasses_buildgrid_when_installed(tmp_path: Path) -> None:
    """With a (stand-in) buildgrid importable, StreamStorage and its errors are BuildGrid's kinds."""
    pkg = tmp_path / "site" / "buildgrid"
    abc_dir = pkg / "server" / "cas" / "logstream" / "stream_storage"
    abc_dir.mkdir(parents=True)
    for d in (pkg, pkg / "server", pkg / "server" / "cas", pkg / "server" / "cas" / "logstream", abc_dir):
        (d / "__init__.py").write_text("")
    (abc_dir / "stream_storage_abc.py").write_text(textwrap.dedent(_STAND_IN_ABC))
    (pkg / "_exceptions.py").write_text(textwrap.dedent(_STAND_IN_EXCEPTIONS))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, "-c", _STAND_IN_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_timeout_too_large_for_a_float_is_invalid_argument(storage: StreamStorage) -> None:
    """A 400-digit timeout raised a raw OverflowError from float() in the argument check."""
    h = storage.create_stream("ops", "p-")
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        storage.read_stream_chunk_blocking(h.name, 0, 10, timeout=10**400)
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        storage.read_stream_bytes_blocking_iterator(h.name, 10, timeout=10**400)
