"""Wakeup guarantees: blocked readers wake promptly on any commit, honour timeouts, and idle quietly.

Each test blocks a reader in this process and commits from elsewhere: another process
(a spawned helper that opens its own Database, or writes with plain ``sqlite3``/``apsw``),
another Database on the same file in this process, or another thread. Latencies are
measured with ``time.monotonic`` (CLOCK_MONOTONIC is system-wide on Linux, so the
helper's timestamps are comparable) and printed (``-s``), never bounded: how fast a
reader wakes is a benchmark figure (``python -m benchmarks``, W5), and a bound would only
measure how loaded the machine is. What the tests assert is the mechanism: a blocked
reader is woken *by the commit* — it returns before its own (long) timeout could have
ended the wait, after a couple of checks of its condition, not after polling.

A reader's *check* is one evaluation of its condition; it is counted by tracing the
statements run on the waiting thread's read connection (``db.engine.read_conn()``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import multiprocessing as mp
import sqlite3
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlstream
from sqlstream import errors, wakeup

from helpers_interrupt import interrupted_at

SPAWN = mp.get_context("spawn")
MODES = ["poll", "notify"]
WAIT = 30.0  # a blocked read's own timeout: returning before it means a wakeup ended the wait
ROUNDS = 5
DELAY = 0.2  # the helper waits this long before committing, so the reader is blocked by then

LATENCIES: dict[str, list[float]] = {}


def note(kind: str, latency: float) -> None:
    LATENCIES.setdefault(kind, []).append(latency)


def summary(kind: str) -> str:
    values = LATENCIES.get(kind, [])
    if not values:
        return f"{kind}: no samples"
    return (
        f"{kind}: n={len(values)} median={statistics.median(values) * 1000:.2f}ms "
        f"max={max(values) * 1000:.2f}ms"
    )


# --------------------------------------------------------------------------- the helper process


def raw_append(conn: Any, name: str, value: str) -> None:
    """Append one text record the way sqlstream lays it out, with plain SQL (no doorbell)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # An append writes its record and takes the next commit number by sqlstream.txn's
        # general rule (the number into the counters row): the stream's ends are derived.
        sid, nxt, length = conn.execute(
            "SELECT id, next_offset, byte_length FROM streams_now WHERE name = ?", (name,)
        ).fetchall()[0]
        txn = conn.execute(
            "UPDATE counters SET value = (SELECT txn FROM last_txn) + 1 WHERE name = 'txn' RETURNING value"
        ).fetchall()[0][0]
        now = time.time_ns() // 1000
        conn.execute(
            "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
            "content_type, data) VALUES (?, ?, ?, ?, ?, NULL, NULL, 'text', ?)",
            (sid, nxt, length, now, txn, value),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def raw_connect(driver: str, path: str) -> Any:
    if driver == "sqlite3":
        return sqlite3.connect(path, isolation_level=None, timeout=30)
    conn = apsw.Connection(path)
    conn.set_busy_timeout(30_000)
    return conn


def remote_server(pipe: Any) -> None:
    """Child process: run commands from the pipe, replying with (commit start, commit end, result).

    Every command may carry ``delay``: sleep first, so the caller is blocked by then.
    """
    dbs: dict[str, sqlstream.Database] = {}

    def db(path: str) -> sqlstream.Database:
        if path not in dbs:
            dbs[path] = sqlstream.open(path)
        return dbs[path]

    while True:
        cmd, args = pipe.recv()
        if cmd == "quit":
            break
        try:
            time.sleep(args.get("delay", 0.0))
            t0 = time.monotonic()
            result: Any = None
            if cmd == "append":
                result = db(args["path"]).stream(args["stream"]).append(args["value"])
            elif cmd == "write_bytes":
                result = db(args["path"]).writer(args["secret"]).append(args["value"])
            elif cmd == "seal":
                database = db(args["path"])
                handle = database.writer(args["secret"]) if args.get("secret") else database.stream(args["stream"])
                result = handle.seal()
            elif cmd == "trickle":
                # Several appends `interval` apart; reply with each one's commit times.
                stream = db(args["path"]).stream(args["stream"])
                times = []
                for value in args["values"]:
                    time.sleep(args["interval"])
                    start = time.monotonic()
                    stream.append(value)
                    times.append((start, time.monotonic()))
                if args.get("seal"):
                    time.sleep(args["interval"])
                    start = time.monotonic()
                    stream.seal()
                    times.append((start, time.monotonic()))
                result = times
            elif cmd == "raw_append":
                conn = raw_connect(args["driver"], args["path"])
                try:
                    raw_append(conn, args["stream"], args["value"])
                finally:
                    conn.close()
            elif cmd == "raw_seal":
                conn = raw_connect(args["driver"], args["path"])
                try:
                    conn.execute(
                        "UPDATE streams SET sealed_at = ? WHERE name = ?", (time.time_ns() // 1000, args["stream"])
                    )
                finally:
                    conn.close()
            elif cmd == "close":
                for database in dbs.values():
                    database.close()
                dbs.clear()
            else:
                raise ValueError(f"unknown command {cmd!r}")
            pipe.send(("ok", t0, time.monotonic(), result))
        except BaseException:
            pipe.send(("error", 0.0, 0.0, traceback.format_exc()))
    for database in dbs.values():
        database.close()


class Remote:
    """The parent's side of the helper process."""

    def __init__(self) -> None:
        self.pipe, child_end = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=remote_server, args=(child_end,), daemon=True)
        self.proc.start()
        child_end.close()
        self.pending = 0  # commands sent whose reply has not been read

    def send(self, cmd: str, **args: Any) -> None:
        self.pipe.send((cmd, args))
        self.pending += 1

    def result(self, timeout: float = 60.0) -> tuple[float, float, Any]:
        """(commit start, commit end, result) of the oldest command sent."""
        if not self.pipe.poll(timeout):
            raise TimeoutError("the helper process did not answer")
        self.pending -= 1
        status, t0, t1, result = self.pipe.recv()
        if status != "ok":
            raise AssertionError(f"the helper process failed:\n{result}")
        return t0, t1, result

    def call(self, cmd: str, **args: Any) -> tuple[float, float, Any]:
        self.send(cmd, **args)
        return self.result()

    def drain(self) -> None:
        """Read the replies a failed test left unread, so the next test starts in step."""
        while self.pending:
            with contextlib.suppress(AssertionError):
                self.result()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(("quit", {}))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.pipe.close()


@pytest.fixture(scope="module")
def helper() -> Iterator[Remote]:
    remote = Remote()
    yield remote
    remote.stop()


@pytest.fixture
def remote(helper: Remote) -> Iterator[Remote]:
    """The helper process, with its databases closed after each test."""
    yield helper
    helper.drain()
    helper.call("close")


@pytest.fixture(scope="module", autouse=True)
def _print_latencies() -> Iterator[None]:
    yield
    if LATENCIES:
        print("\nwake latencies (commit end -> reader running):")
        for kind in sorted(LATENCIES):
            print("  " + summary(kind))


# --------------------------------------------------------------------------- instruments


class CheckCounter:
    """Counts condition checks run on one thread's read connection."""

    def __init__(self) -> None:
        self.checks = 0
        self.first_at = float("inf")  # when the first check started reading

    def trace(self, cursor: Any, sql: str, bindings: Any) -> bool:
        # Every stream read starts its snapshot by reading the stream's row.
        if "FROM streams_now WHERE name" in sql:
            self.checks += 1
            self.first_at = min(self.first_at, time.monotonic())
        return True


@contextlib.contextmanager
def counting_checks(db: sqlstream.Database) -> Iterator[CheckCounter]:
    """Trace the calling thread's read connection (the one its blocking reads use)."""
    counter = CheckCounter()
    conn = db.engine.read_conn()
    conn.exec_trace = counter.trace
    try:
        yield counter
    finally:
        conn.exec_trace = None


def wake_latency(t_wake: float, t0: float, t1: float) -> float:
    """Commit end to wake; a reader may run before the committer's call returns, hence >= 0."""
    assert t_wake >= t0, "the reader returned before the commit started"
    return max(0.0, t_wake - t1)


# --------------------------------------------------------------------------- other process


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_append_in_other_process_wakes_blocked_read(tmp_path: Path, remote: Remote, mode: str) -> None:
    """Guarantee: a reader blocked in read(timeout=...) is woken when another process
    commits an append, in poll and in notify mode — every time (before its timeout), and
    after blocking rather than spinning (a couple of checks per wake)."""
    path = str(tmp_path / "w.db")
    with sqlstream.open(path, wakeup=mode) as db:
        s = db.create_stream("s")
        blocked_rounds = 0
        for i in range(3 * ROUNDS):
            remote.send("append", path=path, stream="s", value=f"v{i}", delay=DELAY)
            t_read = time.monotonic()
            with counting_checks(db) as counter:
                records = s.read(i, timeout=WAIT)
            t_wake = time.monotonic()
            t0, t1, offset = remote.result()
            assert offset == i and [r.value for r in records] == [f"v{i}"]
            if counter.first_at >= t0:
                continue  # this (busy) machine let the commit come first: nothing was blocked
            blocked_rounds += 1
            latency = wake_latency(t_wake, t0, t1)
            note(f"{mode} other-process read", latency)
            assert t_wake - t_read < WAIT, "the read ran into its timeout: the commit did not wake it"
            assert 2 <= counter.checks <= 4, counter.checks  # blocked, then woken (not polled)
            if blocked_rounds == ROUNDS:
                break
        assert blocked_rounds == ROUNDS


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_appends_and_seal_in_other_process_wake_follow(tmp_path: Path, remote: Remote, mode: str) -> None:
    """Guarantee: follow() yields each record another process appends as it is committed,
    and ends when that process seals the stream — each woken by the commit, never by
    follow's own timeout (which would end it early, without the seal)."""
    path = str(tmp_path / "f.db")
    values = [f"r{i}" for i in range(ROUNDS)]
    with sqlstream.open(path, wakeup=mode) as db:
        s = db.create_stream("s")
        remote.send("trickle", path=path, stream="s", values=values, interval=0.15, seal=True)
        seen: list[tuple[str, float]] = []
        for rec in s.follow(timeout=WAIT):
            seen.append((rec.value, time.monotonic()))
        t_end = time.monotonic()
        _, _, times = remote.result()
        assert s.info().sealed_at is not None
    assert [v for v, _ in seen] == values
    for (_, t_wake), (t0, t1) in zip(seen, times):
        note(f"{mode} other-process follow", wake_latency(t_wake, t0, t1))
    seal_start, seal_end = times[-1]
    note(f"{mode} other-process seal", wake_latency(t_end, seal_start, seal_end))
    # follow ends at its timeout with no record; it ended at the seal, so after it.
    assert t_end >= seal_start, "follow ended before the seal: it timed out"


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_seal_in_other_process_wakes_blocked_read(tmp_path: Path, remote: Remote, mode: str) -> None:
    """Guarantee: sealing a stream wakes readers blocked on it (read returns [] at once,
    not at its timeout), and a blocked read_bytes wakes for another process's byte-log
    write and then for its seal (finished=True)."""
    path = str(tmp_path / "s.db")
    with sqlstream.open(path, wakeup=mode) as db:
        db.create_stream("s")
        s = db.stream("s")
        remote.send("seal", path=path, stream="s", delay=DELAY)
        t_read = time.monotonic()
        assert s.read(0, timeout=WAIT) == []
        t_wake = time.monotonic()
        t0, t1, sealed = remote.result()
        assert sealed is True
        note(f"{mode} other-process seal", wake_latency(t_wake, t0, t1))
        assert t_wake - t_read < WAIT, "the read ran into its timeout: the seal did not wake it"

        log = db.create_stream("log", secret=True)
        secret = log.write_secret
        remote.send("write_bytes", path=path, secret=secret, value=b"abc", delay=DELAY)
        # A blocked read_bytes that runs into its timeout raises WritePending: returning
        # the chunk means the write woke it.
        chunk = log.read_bytes(0, limit=3, timeout=WAIT)
        t_wake = time.monotonic()
        t0, t1, _ = remote.result()
        assert chunk == sqlstream.records.Chunk(b"abc", 3, False)
        note(f"{mode} other-process read_bytes", wake_latency(t_wake, t0, t1))

        remote.send("seal", path=path, secret=secret, delay=DELAY)
        chunk = log.read_bytes(3, limit=10, timeout=WAIT)  # WritePending at its timeout
        t_wake = time.monotonic()
        t0, t1, _ = remote.result()
        assert chunk == sqlstream.records.Chunk(b"", 0, True)
        note(f"{mode} other-process seal", wake_latency(t_wake, t0, t1))


# --------------------------------------------------------------------------- timeouts and idling


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_honoured(db_path: str, mode: str) -> None:
    """Guarantee: a positive timeout ends the wait — never early — for read ([]), follow
    (ends) and read_bytes (WritePending), after sleeping rather than re-checking (the
    condition is checked on entry and at the end, a check or two besides); and a timeout
    of 0 never blocks: one check, no wait. (How late a timeout may end is up to the
    machine's load, so it is not bounded here.)"""
    with sqlstream.open(db_path, wakeup=mode) as db:
        s = db.create_stream("s")
        with counting_checks(db) as counter:
            result, elapsed = timed(lambda: s.read(0, timeout=0.5))
        assert result == [] and elapsed >= 0.5, elapsed
        assert 2 <= counter.checks <= 4, counter.checks
        result, elapsed = timed(lambda: list(s.follow(timeout=0.3)))
        assert result == [] and elapsed >= 0.3, elapsed
        start = time.monotonic()
        with pytest.raises(errors.WritePending):
            s.read_bytes(0, limit=1, timeout=0.3)
        elapsed = time.monotonic() - start
        assert elapsed >= 0.3, elapsed
        with counting_checks(db) as counter:
            assert s.read(0, timeout=0) == []
        assert counter.checks == 1, counter.checks


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_timeout_is_honoured_amid_unrelated_commits(tmp_path: Path, remote: Remote, mode: str) -> None:
    """Guarantee: wakeups for other streams' commits neither end a wait early nor
    stretch it: a read on a quiet stream returns [] after its timeout while another
    process keeps appending elsewhere."""
    path = str(tmp_path / "t.db")
    with sqlstream.open(path, wakeup=mode) as db:
        s = db.create_stream("s")
        db.create_stream("other")
        remote.send("trickle", path=path, stream="other", values=[f"x{i}" for i in range(40)], interval=0.02)
        with counting_checks(db) as counter:
            result, elapsed = timed(lambda: s.read(0, timeout=0.6))
        remote.result()
        assert result == [] and elapsed >= 0.6, elapsed  # never early
        assert counter.checks >= 3  # the unrelated commits did wake it; it went back to sleep


@pytest.mark.parametrize("mode", MODES)
def test_idle_blocked_reader_does_not_spin(
    db_path: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guarantee: an idle blocked reader burns almost nothing. While it blocks for 1 s
    with nothing committed, its own condition is checked only a handful of times in
    either mode (waiters sleep on a condition variable); the one watcher thread checks
    PRAGMA data_version every poll_interval in poll mode, and in notify mode only at the
    slow fallback interval (~4 times a second)."""
    watcher_checks = {"n": 0}
    real = wakeup._data_version

    def counted(conn: apsw.Connection) -> int:
        if conn.filename == db_path:
            watcher_checks["n"] += 1
        return real(conn)

    monkeypatch.setattr(wakeup, "_data_version", counted)
    with sqlstream.open(db_path, wakeup=mode) as db:
        s = db.create_stream("s")
        s.read(0, timeout=0.05)  # start the watcher
        watcher_checks["n"] = 0
        cpu = time.process_time()
        with counting_checks(db) as counter:
            result, elapsed = timed(lambda: s.read(0, timeout=1.0))
        cpu = time.process_time() - cpu
    assert result == [] and elapsed >= 1.0
    print(f"\n{mode}: idle 1s -> {counter.checks} reader checks, {watcher_checks['n']} watcher "
          f"data_version checks, {cpu * 1000:.1f}ms process CPU")
    assert counter.checks <= 3, f"the blocked reader re-checked {counter.checks} times while idle"
    if mode == "notify":
        assert watcher_checks["n"] <= 10, watcher_checks
    else:
        assert watcher_checks["n"] >= 20, watcher_checks  # the watcher polls, not the reader


# --------------------------------------------------------------------------- same process


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("writer_db", ["other Database", "same Database"])
def test_commit_in_same_process_wakes_blocked_read(db_path: str, mode: str, writer_db: str) -> None:
    """Guarantee: in one process, a commit on one Database (or on the same Database from
    another thread) wakes a reader blocked on another Database on the same file (before its
    timeout, after a couple of checks)."""
    with sqlstream.open(db_path, wakeup=mode) as reader_db, sqlstream.open(db_path, wakeup=mode) as other:
        s = reader_db.create_stream("s")
        writer = (other if writer_db == "other Database" else reader_db).stream("s")
        blocked_rounds = 0
        for i in range(3 * ROUNDS):
            times: list[float] = []

            def append(i: int = i) -> None:
                times.append(time.monotonic())
                writer.append(f"v{i}")
                times.append(time.monotonic())

            timer = threading.Timer(DELAY, append)
            timer.start()
            t_read = time.monotonic()
            with counting_checks(reader_db) as counter:
                records = s.read(i, timeout=WAIT)
            t_wake = time.monotonic()
            timer.join()
            assert [r.value for r in records] == [f"v{i}"]
            if counter.first_at >= times[0]:
                continue  # this (busy) machine let the commit come first: nothing was blocked
            blocked_rounds += 1
            note(f"{mode} same-process ({writer_db})", wake_latency(t_wake, times[0], times[1]))
            assert t_wake - t_read < WAIT, "the read ran into its timeout: the commit did not wake it"
            assert 2 <= counter.checks <= 4, counter.checks
            if blocked_rounds == ROUNDS:
                break
        assert blocked_rounds == ROUNDS


# --------------------------------------------------------------------------- foreign writers


@pytest.mark.multiprocess
@pytest.mark.parametrize("driver", ["sqlite3", "apsw"])
def test_foreign_writer_is_noticed_in_notify_mode(tmp_path: Path, remote: Remote, driver: str) -> None:
    """Guarantee: in notify mode a commit by a process that does not ring the doorbell
    (plain sqlite3 / apsw, e.g. the sqlite3 shell) is still noticed, by the watcher's
    fallback data_version check (~0.25 s): an INSERT-style append and an UPDATE seal
    each wake the blocked reader, before its timeout."""
    path = str(tmp_path / "raw.db")
    with sqlstream.open(path, wakeup="notify") as db:
        s = db.create_stream("s")
        remote.send("raw_append", driver=driver, path=path, stream="s", value="from outside", delay=DELAY)
        t_read = time.monotonic()
        records = s.read(0, timeout=WAIT)
        t_wake = time.monotonic()
        t0, t1, _ = remote.result()
        assert [(r.offset, r.value) for r in records] == [(0, "from outside")]
        note(f"notify foreign {driver} append", wake_latency(t_wake, t0, t1))
        assert t_wake - t_read < WAIT, "the read ran into its timeout: the foreign commit went unnoticed"

        remote.send("raw_seal", driver=driver, path=path, stream="s", delay=DELAY)
        t_read = time.monotonic()
        assert s.read(1, timeout=WAIT) == []
        t_wake = time.monotonic()
        t0, t1, _ = remote.result()
        note(f"notify foreign {driver} seal", wake_latency(t_wake, t0, t1))
        assert t_wake - t_read < WAIT, "the read ran into its timeout: the foreign seal went unnoticed"
        assert s.info().sealed_at is not None


# --------------------------------------------------------------------------- the doorbell


def bell_rung(sock: socket.socket, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return False
    while True:
        try:
            sock.recv(64)
        except BlockingIOError:
            return True


@pytest.mark.multiprocess
def test_doorbell_reaches_bell_bound_after_the_committer_listed_the_folder(tmp_path: Path, remote: Remote) -> None:
    """Guarantee: a waiter in another process is rung (woken in milliseconds, not at the
    0.25 s fallback) by every commit after its bell is bound, even one bound right after a
    committer listed the doorbell folder.

    Committers keep their listing of the folder until the folder's announcement token
    changes (each newly bound bell writes a fresh one), so a commit with nobody waiting
    costs no system call. The test binds bell A, lets the helper commit (it lists the
    folder and caches the listing), binds bell B; the helper's next commit must ring B."""
    path = str(tmp_path / "bell.db")
    with sqlstream.open(path) as db:
        db.create_stream("s")
        remote.call("append", path=path, stream="s", value="warm-up")
        notifier = wakeup.notifier_for(path)
        bell_dir = notifier._bell_dir
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as a, socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM
        ) as b:
            names = [os.path.join(bell_dir, f"test-{os.getpid()}-{x}.bell") for x in "ab"]
            try:
                a.bind(names[0])
                a.setblocking(False)
                notifier.announce()
                remote.call("append", path=path, stream="s", value="a")
                assert bell_rung(a, 2.0), "a bound bell was not rung by a commit"
                b.bind(names[1])
                b.setblocking(False)
                notifier.announce()
                remote.call("append", path=path, stream="s", value="b")
                assert bell_rung(a, 2.0)
                assert bell_rung(b, 2.0), (
                    "a bell bound after the committer listed the folder was never rung: the "
                    "committer kept using its stale listing of the doorbell folder"
                )
            finally:
                for name in names:
                    with contextlib.suppress(OSError):
                        os.unlink(name)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", MODES)
def test_short_lived_databases_closing_while_others_wait(tmp_path: Path, remote: Remote, mode: str) -> None:
    """Guarantees: Databases opened and closed in quick succession on one file (one per
    request, say) while other threads block on it never break a reader or a close():
    close() never raises, every blocked read is woken by the other process's commits
    (none runs into its timeout while records are waiting), and nothing is missed.

    Each close of the last Database on the file stops the shared watcher thread while
    another thread may be starting a wait on a fresh Database."""
    path = str(tmp_path / "churn.db")
    count = 100
    with sqlstream.open(path) as db:
        db.create_stream("s")
    remote.send("trickle", path=path, stream="s", values=list(range(count)), interval=0.01, seal=True)
    errors_seen: list[str] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            while not stop.is_set():
                with sqlstream.open(path, wakeup=mode):
                    pass
        except BaseException:
            errors_seen.append(traceback.format_exc())

    churner = threading.Thread(target=churn)
    churner.start()
    got: list[int] = []
    timeouts = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlstream.open(path, wakeup=mode) as db:
                records = db.stream("s").read(len(got), timeout=WAIT)
                if records:
                    got.extend(r.value for r in records)
                elif db.stream("s").info().sealed_at is not None:
                    break
                else:
                    timeouts += 1
    except BaseException:
        errors_seen.append(traceback.format_exc())
    finally:
        stop.set()
        churner.join(30)
        remote.result()
    assert not errors_seen, "\n".join(errors_seen)
    assert got == list(range(count))
    assert timeouts == 0, f"{timeouts} blocked reads ran into their timeout: a wakeup was missed"


# --------------------------------------------------------------------------- who hears the doorbell


@pytest.mark.multiprocess
def test_a_thread_blocked_in_notify_mode_is_woken_by_the_doorbell_itself(tmp_path: Path, remote: Remote) -> None:
    """Mechanism: another process's commit wakes the blocked thread directly (it sleeps on
    the doorbell), not the watcher thread that would then have to wake it: the first bump
    of the generation after the commit runs on the reading thread."""
    path = str(tmp_path / "w.db")
    with sqlstream.open(path, wakeup="notify") as db:
        s = db.create_stream("s")
        remote.call("append", path=path, stream="s", value="v0")  # the helper has the file open now
        s.read(0, timeout=WAIT)
        bumps: list[tuple[float, threading.Thread]] = []
        db.engine.notifier.add_listener(lambda: bumps.append((time.monotonic(), threading.current_thread())))
        blocked_rounds = 0
        for i in range(1, 3 * ROUNDS):
            remote.send("append", path=path, stream="s", value=f"v{i}", delay=DELAY)
            with counting_checks(db) as counter:
                records = s.read(i, timeout=WAIT)
            t0, _, offset = remote.result()
            assert offset == i and [r.value for r in records] == [f"v{i}"]
            if counter.first_at >= t0:
                continue  # the commit came first: nothing was blocked
            blocked_rounds += 1
            first = min((b for b in bumps if b[0] >= t0), key=lambda b: b[0])
            assert first[1] is threading.current_thread(), first[1].name
            if blocked_rounds == ROUNDS:
                break
        assert blocked_rounds == ROUNDS


@pytest.mark.multiprocess
def test_every_thread_blocked_in_notify_mode_wakes_on_another_process_commit(tmp_path: Path, remote: Remote) -> None:
    """Guarantee: with several threads blocked on one file (one sleeps on the doorbell, the
    others on the condition variable) each one is woken by another process's commit, before
    its own timeout, for every commit."""
    path = str(tmp_path / "w.db")
    with sqlstream.open(path, wakeup="notify") as db:
        s = db.create_stream("s")
        remote.call("append", path=path, stream="s", value="v0")
        for i in range(1, ROUNDS + 1):
            got: dict[int, list[object]] = {}
            start = threading.Barrier(4)

            def read(k: int, i: int = i) -> None:
                start.wait()
                # A read that timed out returns no record: this records which were woken.
                got[k] = [r.value for r in s.read(i, timeout=WAIT)]

            threads = [threading.Thread(target=read, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            remote.send("append", path=path, stream="s", value=f"v{i}", delay=DELAY)
            start.wait()
            remote.result()
            for t in threads:
                t.join(WAIT + 5)
            assert got == {k: [f"v{i}"] for k in range(3)}, got


@pytest.mark.parametrize("local", ["commit", "close"])
def test_a_thread_sleeping_on_the_doorbell_wakes_on_a_local_commit_and_on_close(db_path: str, local: str) -> None:
    """Guarantee: the thread that sleeps on the doorbell is woken by this process's own
    commits (which do not ring their own process's bell) and by closing the Database."""
    with sqlstream.open(db_path, wakeup="notify") as db:
        s = db.create_stream("s")
        s.append("v0")
        s.read(0, timeout=WAIT)
        outcome: list[object] = []

        def read() -> None:
            try:
                outcome.append(s.read(1, timeout=WAIT))
            except errors.DatabaseClosed as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + WAIT
        notifier = db.engine.notifier
        while not notifier.sleeper_waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert notifier.sleeper_waiting()
        if local == "commit":
            s.append("v1")
        else:
            db.close()
        reader.join(WAIT + 5)
        assert not reader.is_alive()
        # Woken, not timed out: a timed-out read would hold an empty list, not v1 or the error.
        if local == "commit":
            assert [[r.value for r in recs] for recs in outcome] == [["v1"]]  # type: ignore[attr-defined]
        else:
            assert len(outcome) == 1 and isinstance(outcome[0], errors.DatabaseClosed)


LEAKED_HOLD = 60.0  # seconds the notifier's lock may stay taken before it counts as leaked


def test_ctrl_c_anywhere_in_a_bump_or_a_wait_leaves_the_notifier_lock_free(tmp_path: Path) -> None:
    """Guarantee: a KeyboardInterrupt (Ctrl-C) at any point of the notifier's critical
    sections leaves its lock free, so close() (which bumps) cannot deadlock afterwards.

    Regression: `sqlstream tail -f` hung for ever on Ctrl-C about once in 60 under load:
    the interrupt landed inside ``Condition.__enter__`` just after it took the lock, the
    with statement never started, and the close() that followed waited on that lock."""
    path = str(tmp_path / "ctrlc.db")
    with sqlstream.open(path) as db:
        db.create_stream("s")
        notifier = wakeup.notifier_for(path)
        calls: dict[str, Callable[[], object]] = {
            "bump": notifier.bump,
            "wait": lambda: notifier.wait_until(lambda: None, 0.0, "notify", None),
        }
        for name, call in calls.items():
            step = 1
            while interrupted_at(step, call):
                # The notifier's other threads (the doorbell's watcher, still leaving after
                # the interrupted wait) take the lock for moments: a non-blocking try failed
                # on such a moment under load, and its release then hit an unlocked lock.
                # A hold the interrupt left is one that never ends.
                free = notifier.cond.acquire(timeout=LEAKED_HOLD)
                notifier.cond.release()  # ours, or the leaked hold (so close() below cannot hang)
                assert free, f"{name}: an interrupt at point {step} left the notifier's lock held"
                step += 1
            assert step > 4, f"{name}: the interrupt was tried at only {step - 1} points"


def _wait_that_sleeps_once(notifier: wakeup.FileNotifier, mode: str) -> Callable[[], object]:
    """A wait_until whose condition holds at the second check, with a re-check time that has
    passed: it registers, sleeps once (zero seconds; on the doorbell in notify mode), wakes
    and leaves, through every step of a real wait."""

    def call() -> object:
        checks: list[int] = []

        def check() -> int | None:
            checks.append(1)
            return 1 if len(checks) > 1 else None

        return notifier.wait_until(check, None, mode, None, lambda: 0.0)

    return call


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_anywhere_in_a_wait_leaves_no_waiter_registered(tmp_path: Path, mode: str) -> None:
    """Guarantee: a KeyboardInterrupt (Ctrl-C) at any point of a blocked read's wait
    leaves no waiter registered. A registration counted for ever keeps the watcher thread
    (its connection, its doorbell) running until the Database closes, and a poll-mode one
    makes every waiter of the process poll instead of sleeping on the doorbell.

    White box: the counts are the notifier's own (``_waiters``, ``_sync_waiters``,
    ``_poll_waiters``); no public call shows them without waiting for the watcher's
    linger time."""
    path = str(tmp_path / "ctrlc.db")
    with sqlstream.open(path) as db:
        db.create_stream("s")
        notifier = wakeup.notifier_for(path)
        call = _wait_that_sleeps_once(notifier, mode)
        step = 1
        while interrupted_at(step, call):
            counts = (notifier._waiters, notifier._sync_waiters, notifier._poll_waiters)
            notifier._waiters = notifier._sync_waiters = notifier._poll_waiters = 0  # the next step starts clean
            assert counts == (0, 0, 0), f"an interrupt at point {step} left (waiters, sync, poll) = {counts}"
            step += 1
        assert step > 10, f"the interrupt was tried at only {step - 1} points"


def test_ctrl_c_anywhere_in_a_doorbell_sleep_leaves_the_doorbell_free(tmp_path: Path) -> None:
    """Guarantee: a KeyboardInterrupt (Ctrl-C) at any point of a wait that sleeps on the
    doorbell leaves nobody registered as its sleeper, and closing the Database still ends
    the watcher thread. A claim left behind keeps every later wait of the process off the
    doorbell, and the watcher's exit used to wait for the claim's release for ever
    (close() then gave up on it after 5 s, leaving its connection open).

    Regression: the claim took a second lock with ``acquire()``; an interrupt on that
    call's return, or between the claim and the sleep's ``try``, left it held."""
    if not wakeup.doorbell_supported():
        pytest.skip("no Unix datagram sockets here: waits poll, there is no doorbell")
    path = str(tmp_path / "doorbell.db")
    db = sqlstream.open(path, wakeup="notify")
    try:
        db.create_stream("s")
        notifier = wakeup.notifier_for(path)
        call = _wait_that_sleeps_once(notifier, "notify")
        step = 1
        while interrupted_at(step, call):
            assert not notifier.sleeper_waiting(), f"an interrupt at point {step} left the doorbell claimed"
            step += 1
        assert step > 10, f"the interrupt was tried at only {step - 1} points"
        watchers = [t for t in threading.enumerate() if t.name == "sqlstream-watch:doorbell.db"]
        assert watchers, "the waits started no watcher"
    finally:
        db.close()
    stuck = [t for t in watchers if t.is_alive()]
    assert not stuck, "close() left the watcher thread running: its exit waits for the doorbell"


@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_ctrl_c_taken_by_another_thread_still_stops_a_blocked_read_in_the_main_thread(db_path: str, mode: str) -> None:
    """The kernel may hand a process's SIGINT to any thread that does not block it; there
    it only sets Python's flag, and the main thread, asleep in select() or on a lock, is not
    interrupted: a `read(timeout=None)` (`sqlstream tail -f`) ignored Ctrl-C until the next
    commit. The main thread now wakes often enough to run the handler. Mechanism: the
    KeyboardInterrupt comes without the commit a helper makes only if it does not."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    raised = threading.Event()
    fallback: list[bool] = []

    def helper() -> None:
        time.sleep(0.3)  # let the main thread block first (if not, it raises at once all the same)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # to this thread, not the main one
        if not raised.wait(30):
            fallback.append(True)
            with sqlstream.open(db_path) as other:
                other.stream("events").append(b"wake")

    try:
        with sqlstream.open(db_path, wakeup=mode) as db:
            events = db.create_stream("events")
            thread = threading.Thread(target=helper)
            thread.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    events.read(0, 10, timeout=None)
                raised.set()
            finally:
                raised.set()
                thread.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fallback == [], "the read ended only at the commit, not at the signal"
