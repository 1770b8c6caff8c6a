"""Concurrency guarantees: several threads and processes writing and reading one file at once.

Proves, on real SQLite files, that:

* concurrent batch appends from threads (sharing a Database and with their own) and from
  processes never fail (no "database is locked", no exception at all), get gap-free
  offsets, and never interleave;
* readers running meanwhile only ever see a gap-free prefix made of whole batches, each
  writer's batches in the order they were appended;
* a transaction that appends to two streams becomes visible in both at once;
* processes and threads may even create the same new file at once.

Children are started with the ``spawn`` context and open their own ``Database``.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlstream
from sqlstream.records import Record

SPAWN = mp.get_context("spawn")

STREAM = "s"
WRITER_THREADS = 4
WRITER_PROCS = 4
BATCHES = 150  # per writer
MAX_BATCH = 50
PAGE = 400
CHILD_START_TIMEOUT = 120.0  # spawning on a busy 2-core machine can be slow
RUN_TIMEOUT = 120.0

Batch = tuple[int, int, int]  # (batch id, first offset, stop offset)


# --------------------------------------------------------------------------- values


def batch_values(writer: str, batch: int, n: int) -> list[str]:
    """The values of one batch: each names its writer, batch, index and the batch size."""
    return [f"{writer}|{batch}|{i}|{n}" for i in range(n)]


def parse_value(value: Any) -> tuple[str, int, int, int]:
    writer, batch, index, size = str(value).split("|")
    return writer, int(batch), int(index), int(size)


class PrefixChecker:
    """Consumes records in offset order and checks what a reader may ever see.

    * offsets are gap-free from 0;
    * a batch's records are contiguous, start at index 0 and run in index order;
    * each writer's batches appear in the order the writer appended them, none skipped;
    * at the end of any snapshot (a read that returned fewer records than asked for)
      no batch is partial.
    """

    def __init__(self) -> None:
        self.next_offset = 0
        self.open_batch: tuple[str, int, int] | None = None  # (writer, batch, size)
        self.open_index = -1
        self.last_batch: dict[str, int] = {}
        self.snapshot_ends = 0

    def feed(self, records: Sequence[Record]) -> None:
        for rec in records:
            if rec.offset != self.next_offset:
                raise AssertionError(f"gap or reorder: expected offset {self.next_offset}, got {rec.offset}")
            writer, batch, index, size = parse_value(rec.value)
            if self.open_batch is None:
                if index != 0:
                    raise AssertionError(f"offset {rec.offset}: batch {writer}/{batch} starts at index {index}")
                expected = self.last_batch.get(writer, -1) + 1
                if batch != expected:
                    raise AssertionError(
                        f"offset {rec.offset}: writer {writer} batch {batch} seen, expected batch {expected}"
                    )
                self.open_batch = (writer, batch, size)
                self.open_index = 0
            else:
                if (writer, batch, size) != self.open_batch or index != self.open_index + 1:
                    raise AssertionError(
                        f"offset {rec.offset}: {rec.value!r} interleaves batch {self.open_batch} "
                        f"(after index {self.open_index})"
                    )
                self.open_index = index
            if self.open_index == size - 1:
                self.last_batch[writer] = batch
                self.open_batch = None
            self.next_offset += 1

    def snapshot_end(self) -> None:
        if self.open_batch is not None:
            raise AssertionError(
                f"a snapshot ended inside batch {self.open_batch} at index {self.open_index}: "
                "a partial batch was visible"
            )
        self.snapshot_ends += 1


# --------------------------------------------------------------------------- workers


def write_batches(stream: sqlstream.Stream, writer: str, seed: int) -> list[Batch]:
    """Append BATCHES batches; every fifth is a single append(), the rest extend() 1..50."""
    rng = random.Random(seed)
    done: list[Batch] = []
    for batch in range(BATCHES):
        if batch % 5 == 4:
            offset = stream.append(batch_values(writer, batch, 1)[0])
            done.append((batch, offset, offset + 1))
        else:
            n = rng.randint(1, MAX_BATCH)
            got = stream.extend(batch_values(writer, batch, n))
            assert len(got) == n
            done.append((batch, got.start, got.stop))
    return done


def follow_prefix(stream: sqlstream.Stream, checker: PrefixChecker, stopping: Callable[[], bool]) -> None:
    """Tail the stream page by page, checking every page, until told to stop and drained."""
    while True:
        stop = stopping()  # decided before the read, so a final read sees every commit
        records = stream.read(checker.next_offset, PAGE, timeout=0.05)
        checker.feed(records)
        if len(records) < PAGE:
            checker.snapshot_end()
            if stop:
                return


def proc_writer(path: str, writer: str, seed: int, go: Any, results: Any) -> None:
    """Child process: open the file, wait for the start signal, append, report."""
    try:
        with sqlstream.open(path) as db:
            stream = db.stream(STREAM)
            results.put(("ready", writer, None))
            if not go.wait(CHILD_START_TIMEOUT):
                raise TimeoutError("no start signal")
            results.put(("done", writer, write_batches(stream, writer, seed)))
    except BaseException:
        results.put(("error", writer, traceback.format_exc()))


def proc_reader(path: str, stop: Any, results: Any) -> None:
    """Child process: tail the stream with a PrefixChecker until stopped."""
    try:
        with sqlstream.open(path) as db:
            stream = db.stream(STREAM)
            results.put(("ready", "reader", None))
            checker = PrefixChecker()
            follow_prefix(stream, checker, stop.is_set)
            results.put(("done", "reader", (checker.next_offset, checker.snapshot_ends)))
    except BaseException:
        results.put(("error", "reader", traceback.format_exc()))


def collect(results: Any, kind: str, count: int, procs: Sequence[Any]) -> dict[str, Any]:
    """Take ``count`` messages of ``kind`` from the children; fail fast on any error."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + CHILD_START_TIMEOUT
    while len(got) < count:
        try:
            what, name, payload = results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"children did not report {kind!r}: exit codes {[p.exitcode for p in procs]}")
            continue
        if what == "error":
            raise AssertionError(f"child {name} failed:\n{payload}")
        assert what == kind, (what, name)
        got[name] = payload
    return got


def join_all(procs: Sequence[Any]) -> None:
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(5)
    assert [p.exitcode for p in procs] == [0] * len(procs)


# --------------------------------------------------------------------------- tests


@pytest.mark.multiprocess
@pytest.mark.slow
def test_threads_and_processes_append_batches_gap_free_never_interleaved(tmp_path: Path) -> None:
    """Guarantees: concurrent batch appends from 4 threads and 4 processes never interleave,
    offsets are gap-free, every returned range holds exactly its batch, and no writer sees
    any exception (writers queue, no "database is locked"); readers in threads and in a
    process meanwhile only ever see a gap-free prefix of whole, in-order batches."""
    path = str(tmp_path / "concurrent.db")
    with sqlstream.open(path) as db:
        stream = db.create_stream(STREAM)
        go, stop, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        procs = [
            SPAWN.Process(target=proc_writer, args=(path, f"p{k}", 1000 + k, go, results), daemon=True)
            for k in range(WRITER_PROCS)
        ]
        procs.append(SPAWN.Process(target=proc_reader, args=(path, stop, results), daemon=True))
        for p in procs:
            p.start()
        try:
            errors: list[str] = []
            written: dict[str, list[Batch]] = {}
            thread_go = threading.Event()
            thread_stop = threading.Event()
            checkers: list[PrefixChecker] = []

            def thread_writer(k: int) -> None:
                name = f"t{k}"
                try:
                    # Threads 0 and 1 share the test's Database; 2 and 3 open their own.
                    own = sqlstream.open(path) if k >= 2 else None
                    try:
                        target = (own or db).stream(STREAM)
                        thread_go.wait()
                        written[name] = write_batches(target, name, k)
                    finally:
                        if own is not None:
                            own.close()
                except BaseException:
                    errors.append(f"writer {name}:\n{traceback.format_exc()}")

            def thread_reader() -> None:
                checker = PrefixChecker()
                checkers.append(checker)
                try:
                    follow_prefix(stream, checker, thread_stop.is_set)
                except BaseException:
                    errors.append(f"reader thread:\n{traceback.format_exc()}")

            writers = [threading.Thread(target=thread_writer, args=(k,)) for k in range(WRITER_THREADS)]
            readers = [threading.Thread(target=thread_reader) for _ in range(2)]
            for t in readers + writers:
                t.start()
            collect(results, "ready", len(procs), procs)
            started = time.monotonic()
            go.set()
            thread_go.set()
            for t in writers:
                t.join(RUN_TIMEOUT)
            written.update(collect(results, "done", WRITER_PROCS, procs))
            elapsed = time.monotonic() - started
            thread_stop.set()
            stop.set()
            for t in readers:
                t.join(RUN_TIMEOUT)
            reader_proc = collect(results, "done", 1, procs)["reader"]
            join_all(procs)
        finally:
            go.set()
            stop.set()
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(5)

        assert not errors, "\n".join(errors)
        assert sorted(written) == sorted([f"p{k}" for k in range(WRITER_PROCS)] + [f"t{k}" for k in range(WRITER_THREADS)])

        # The final state, read in one snapshot.
        total = sum(stop_ - start for batches in written.values() for _, start, stop_ in batches)
        records = stream.read(0, total + 10)
        assert [r.offset for r in records] == list(range(total))
        assert stream.info().next_offset == total
        final = PrefixChecker()
        final.feed(records)
        final.snapshot_end()
        for writer, batches in written.items():
            assert [b for b, _, _ in batches] == list(range(BATCHES))
            previous_stop = -1
            for batch, start, stop_ in batches:
                assert start >= previous_stop, f"{writer} batch {batch} got offsets before its previous batch"
                previous_stop = stop_
                assert [r.value for r in records[start:stop_]] == batch_values(writer, batch, stop_ - start)
                # One transaction, one commit number.
                assert len({r.txn for r in records[start:stop_]}) == 1

        # The readers really ran alongside the writers and saw everything in the end.
        for checker in checkers:
            assert checker.next_offset == total
        assert reader_proc[0] == total
        snapshot_ends = [c.snapshot_ends for c in checkers] + [reader_proc[1]]
        assert min(snapshot_ends) >= 3, snapshot_ends
        print(f"\n{total} records in {sum(len(b) for b in written.values())} batches by "
              f"{len(written)} writers in {elapsed:.2f}s; reader snapshots checked: {snapshot_ends}")


PAIR_TXNS = 400


def append_pairs(db: sqlstream.Database, writer: str, seed: int) -> None:
    """Transactions that each extend stream 'a' by 1..20 records and append one to 'b'."""
    rng = random.Random(seed)
    a, b = db.stream("a"), db.stream("b")
    for t in range(PAIR_TXNS):
        k = rng.randint(1, 20)
        with db.transaction():
            if t % 2:
                b.append(f"{writer}|{t}|0|1")
                a.extend(batch_values(writer, t, k))
            else:
                a.extend(batch_values(writer, t, k))
                b.append(f"{writer}|{t}|0|1")


def proc_pair_writer(path: str, writer: str, seed: int, go: Any, results: Any) -> None:
    try:
        with sqlstream.open(path) as db:
            results.put(("ready", writer, None))
            if not go.wait(CHILD_START_TIMEOUT):
                raise TimeoutError("no start signal")
            append_pairs(db, writer, seed)
            results.put(("done", writer, None))
    except BaseException:
        results.put(("error", writer, traceback.format_exc()))


class StreamTail:
    """Incrementally reads one stream, grouping its records by (writer, transaction)."""

    def __init__(self, stream: sqlstream.Stream) -> None:
        self.stream = stream
        self.next_offset = 0
        self.groups: dict[tuple[str, int], list[int]] = {}  # -> indexes seen
        self.sizes: dict[tuple[str, int], int] = {}

    def drain(self) -> None:
        """Read to the end (several snapshots, each later than the one before)."""
        while True:
            records = self.stream.read(self.next_offset, PAGE)
            for rec in records:
                assert rec.offset == self.next_offset
                writer, t, index, size = parse_value(rec.value)
                self.groups.setdefault((writer, t), []).append(index)
                self.sizes[(writer, t)] = size
                self.next_offset += 1
            if len(records) < PAGE:
                return

    def complete(self, group: tuple[str, int]) -> bool:
        return self.groups.get(group) == list(range(self.sizes.get(group, -1)))


@pytest.mark.multiprocess
def test_transaction_across_two_streams_is_visible_in_both_at_once(tmp_path: Path) -> None:
    """Guarantee: a transaction's appends to two streams become visible all at once.

    A process and a thread commit transactions that extend 'a' and append to 'b'.
    Readers meanwhile check, with reads in both orders (a record seen in one stream
    implies its partner is visible in a later read of the other) and with one-statement
    SQL snapshots grouping by commit number, that no one ever sees one half alone."""
    path = str(tmp_path / "pairs.db")
    with sqlstream.open(path) as db:
        db.create_stream("a")
        db.create_stream("b")
        go, results = SPAWN.Event(), SPAWN.Queue()
        proc = SPAWN.Process(target=proc_pair_writer, args=(path, "p", 7, go, results), daemon=True)
        proc.start()
        try:
            errors: list[str] = []
            done = threading.Event()
            checks = {"ab": 0, "ba": 0, "sql": 0}

            def tail_reader(first: str, second: str) -> None:
                tails = {name: StreamTail(db.stream(name)) for name in ("a", "b")}
                try:
                    while True:
                        stopping = done.is_set()
                        tails[first].drain()
                        tails[second].drain()
                        for group in tails[first].groups:
                            if not tails[first].complete(group):
                                raise AssertionError(f"stream {first}: transaction {group} partly visible")
                            if not tails[second].complete(group):
                                raise AssertionError(
                                    f"transaction {group} visible in {first!r} but not (whole) in a later "
                                    f"read of {second!r}"
                                )
                        checks[first + second] += 1
                        if stopping:
                            return
                        time.sleep(0.002)
                except BaseException:
                    errors.append(f"{first}{second} reader:\n{traceback.format_exc()}")

            def sql_reader() -> None:
                try:
                    while True:
                        stopping = done.is_set()
                        rows = db.query(
                            "SELECT c.txn, sum(s.name = 'a'), sum(s.name = 'b') "
                            "FROM chunks AS c JOIN streams AS s ON s.id = c.stream_id GROUP BY c.txn"
                        ).rows
                        halves = [row for row in rows if row[1] == 0 or row[2] != 1]
                        if halves:
                            raise AssertionError(f"transactions visible in one stream only: {halves[:5]}")
                        checks["sql"] += 1
                        if stopping:
                            return
                        time.sleep(0.005)
                except BaseException:
                    errors.append(f"sql reader:\n{traceback.format_exc()}")

            def thread_writer() -> None:
                try:
                    go.wait()
                    append_pairs(db, "t", 8)
                except BaseException:
                    errors.append(f"thread writer:\n{traceback.format_exc()}")

            readers = [
                threading.Thread(target=tail_reader, args=("a", "b")),
                threading.Thread(target=tail_reader, args=("b", "a")),
                threading.Thread(target=sql_reader),
            ]
            writer = threading.Thread(target=thread_writer)
            for t in [*readers, writer]:
                t.start()
            collect(results, "ready", 1, [proc])
            go.set()
            writer.join(RUN_TIMEOUT)
            collect(results, "done", 1, [proc])
            done.set()
            for t in readers:
                t.join(RUN_TIMEOUT)
            join_all([proc])
        finally:
            go.set()
            if proc.is_alive():
                proc.kill()
                proc.join(5)

        assert not errors, "\n".join(errors)
        assert min(checks.values()) >= 3, checks
        a, b = StreamTail(db.stream("a")), StreamTail(db.stream("b"))
        a.drain()
        b.drain()
        assert set(a.groups) == set(b.groups) == {(w, t) for w in "pt" for t in range(PAIR_TXNS)}
        assert all(a.complete(g) and b.complete(g) for g in a.groups)
        print(f"\nreader passes: {checks}")


def open_and_append(path: str, name: str, barrier: Any) -> Batch:
    barrier.wait(CHILD_START_TIMEOUT)
    with sqlstream.open(path) as db:
        got = db.create_stream(STREAM, exist_ok=True).extend(batch_values(name, 0, 10))
    return (0, got.start, got.stop)


def proc_first_open(path: str, name: str, barrier: Any, results: Any) -> None:
    try:
        results.put(("done", name, open_and_append(path, name, barrier)))
    except BaseException:
        results.put(("error", name, traceback.format_exc()))


@pytest.mark.multiprocess
def test_processes_and_threads_create_the_same_new_file_at_once(tmp_path: Path) -> None:
    """Guarantee: several processes and threads may open one file at once — even when it
    does not exist yet, so they race to create it, switch it to WAL and migrate it — and
    all of them can then write, with no "database is locked" or other error, each
    migration applied once."""
    path = str(tmp_path / "fresh.db")
    procs_n, threads_n = 4, 2
    barrier, results = SPAWN.Barrier(procs_n + threads_n), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=proc_first_open, args=(path, f"p{k}", barrier, results), daemon=True)
        for k in range(procs_n)
    ]
    for p in procs:
        p.start()
    errors: list[str] = []
    written: dict[str, Batch] = {}

    def thread_main(name: str) -> None:
        try:
            written[name] = open_and_append(path, name, barrier)
        except BaseException:
            errors.append(f"{name}:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=thread_main, args=(f"t{k}",)) for k in range(threads_n)]
    try:
        for t in threads:
            t.start()
        written.update(collect(results, "done", procs_n, procs))
        for t in threads:
            t.join(RUN_TIMEOUT)
        join_all(procs)
    finally:
        barrier.abort()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert not errors, "\n".join(errors)
    with sqlstream.open(path) as db:
        assert db.query("PRAGMA integrity_check").rows == [("ok",)]
        assert db.query("PRAGMA journal_mode").rows == [("wal",)]
        assert db.query("PRAGMA user_version").rows[0][0] == sqlstream.connection.schema_version()
        assert [info.name for info in db.streams()] == [STREAM]
        records = db.stream(STREAM).read(0, 1000)
    assert len(records) == 10 * (procs_n + threads_n)
    checker = PrefixChecker()
    checker.feed(records)
    checker.snapshot_end()
    for name, (_, start, stop) in written.items():
        assert [r.value for r in records[start:stop]] == batch_values(name, 0, 10)


# --------------------------------------------------------------------------- large batches
#
# extend() inserts _ROWS_PER_INSERT (200) rows per statement; a batch must stay one
# transaction however many statements it takes. The sizes below straddle every chunk
# boundary an implementation might choose (200, 500, 1,000, 2,000 rows) and exceed all.

BIG_SIZES = (201, 1_001, 2_500, 999, 2_001)


def write_big_batches(stream: sqlstream.Stream, writer: str) -> list[Batch]:
    done: list[Batch] = []
    for batch, n in enumerate(BIG_SIZES):
        got = stream.extend(batch_values(writer, batch, n))
        assert len(got) == n
        done.append((batch, got.start, got.stop))
    return done


def proc_big_writer(path: str, writer: str, go: Any, results: Any) -> None:
    try:
        with sqlstream.open(path) as db:
            stream = db.stream(STREAM)
            results.put(("ready", writer, None))
            if not go.wait(CHILD_START_TIMEOUT):
                raise TimeoutError("no start signal")
            results.put(("done", writer, write_big_batches(stream, writer)))
    except BaseException:
        results.put(("error", writer, traceback.format_exc()))


def test_extend_of_2500_records_commits_once_with_one_txn(db: sqlstream.Database) -> None:
    """Guarantee: one extend() is one transaction however large: 2,600 records (13
    INSERT statements) carry one commit number, and the next write gets a later one."""
    stream = db.create_stream("s")
    stream.append("before")
    got = stream.extend([f"v{i}" for i in range(2_600)])
    assert got == range(1, 2_601)
    after = stream.append("after")
    records = stream.read(0, 3_000)
    assert [r.value for r in records[1:-1]] == [f"v{i}" for i in range(2_600)]
    txns = {r.txn for r in records[1:-1]}
    assert len(txns) == 1, f"a 2,600-record extend committed as {len(txns)} transactions"
    assert records[0].txn < txns.pop() < records[after].txn


def test_fault_late_in_large_extend_stores_nothing(db_path: str) -> None:
    """Guarantee: a batch is all or nothing even when the failure comes late. A real
    SQLite error (a trigger that aborts the insert of offset 2,400) in a 2,500-record
    extend leaves the stream exactly as it was: no record, no burnt offset, no bytes."""
    with sqlstream.open(db_path) as db:
        stream = db.create_stream("s")
        stream.extend(["a", "b"])
    # The fault is planted with a plain SQLite connection: the database file itself
    # refuses the insert, in the middle of the extend's statements.
    raw = apsw.Connection(db_path)
    raw.execute(
        "CREATE TRIGGER test_fault BEFORE INSERT ON chunks WHEN NEW.offset = 2 + 2400 "
        "BEGIN SELECT RAISE(ABORT, 'injected fault at offset 2402'); END"
    )
    raw.close()
    try:
        with sqlstream.open(db_path) as db:
            stream = db.stream("s")
            before = stream.info()
            with pytest.raises(sqlstream.errors.SqlstreamError, match="injected fault"):
                stream.extend([f"v{i}" for i in range(2_500)])
            info = stream.info()
            assert (info.next_offset, info.byte_length) == (before.next_offset, before.byte_length)
            assert [r.value for r in stream.read(0, 3_000)] == ["a", "b"]
            # Nothing was burnt: the next batch (below the trap) takes the very next offsets.
            assert stream.extend(["c"] * 300) == range(2, 302)
    finally:
        raw = apsw.Connection(db_path)
        raw.execute("DROP TRIGGER test_fault")
        raw.close()
    with sqlstream.open(db_path) as db:
        assert db.check().ok


@pytest.mark.multiprocess
@pytest.mark.slow
def test_batches_above_every_chunk_size_never_interleave(tmp_path: Path) -> None:
    """Guarantee: concurrent extends of 201 to 2,500 records (above every internal
    statement or chunk size) from 2 processes and 2 threads never interleave, each is
    one commit, and readers meanwhile never see part of a batch."""
    path = str(tmp_path / "big.db")
    with sqlstream.open(path) as db:
        stream = db.create_stream(STREAM)
        go, results = SPAWN.Event(), SPAWN.Queue()
        procs = [
            SPAWN.Process(target=proc_big_writer, args=(path, f"p{k}", go, results), daemon=True) for k in range(2)
        ]
        for p in procs:
            p.start()
        errors: list[str] = []
        written: dict[str, list[Batch]] = {}
        stop = threading.Event()
        checkers: list[PrefixChecker] = []

        def thread_writer(k: int) -> None:
            try:
                with sqlstream.open(path) as own:
                    go.wait()
                    written[f"t{k}"] = write_big_batches(own.stream(STREAM), f"t{k}")
            except BaseException:
                errors.append(f"writer t{k}:\n{traceback.format_exc()}")

        def thread_reader(spin: bool) -> None:
            # One reader blocks between commits; the other re-reads without waiting, so
            # that a batch committed in pieces is caught between its pieces.
            checker = PrefixChecker()
            checkers.append(checker)
            try:
                if not spin:
                    follow_prefix(stream, checker, stop.is_set)
                    return
                while True:
                    stopping = stop.is_set()
                    records = stream.read(checker.next_offset, 5_000)
                    checker.feed(records)
                    if len(records) < 5_000:
                        checker.snapshot_end()
                        if stopping:
                            return
            except BaseException:
                errors.append(f"reader:\n{traceback.format_exc()}")

        threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(2)]
        readers = [threading.Thread(target=thread_reader, args=(spin,)) for spin in (False, True)]
        try:
            for reader in readers:
                reader.start()
            for t in threads:
                t.start()
            collect(results, "ready", len(procs), procs)
            go.set()
            for t in threads:
                t.join(RUN_TIMEOUT)
            written.update(collect(results, "done", len(procs), procs))
            stop.set()
            for reader in readers:
                reader.join(RUN_TIMEOUT)
            join_all(procs)
        finally:
            go.set()
            stop.set()
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(5)
        assert not errors, "\n".join(errors)
        total = 4 * sum(BIG_SIZES)
        records = stream.read(0, total + 10)
        assert len(records) == total
        final = PrefixChecker()
        final.feed(records)
        final.snapshot_end()
        for writer, batches in written.items():
            for batch, start, stop_ in batches:
                assert stop_ - start == BIG_SIZES[batch]
                assert [r.value for r in records[start:stop_]] == batch_values(writer, batch, stop_ - start)
                assert len({r.txn for r in records[start:stop_]}) == 1, f"{writer} batch {batch}: several commits"
        for checker in checkers:
            assert checker.next_offset == total and checker.snapshot_ends >= 3, vars(checker)
