"""The writer queue (sqlstream/writerqueue.py): first come, first served for the write lock.

Properties users rely on: several writer processes all land their appends with
gap-free offsets and no errors; a writer killed while it holds the lock or waits in the
queue does not stall the others; ``busy_timeout`` still ends a wait with LockTimeout,
queued or not; readers never wait for it; without a usable doorbell folder writes
still work (no queue).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream import errors, writerqueue


def _queue_file(db: sqlstream.Database) -> str:
    return os.path.join(db.engine.notifier._bell_dir, writerqueue.QUEUE_FILE)


def _waiting_slots(path: str) -> list[int]:
    """Slots whose waiter says it waits (arrival time set)."""
    with open(path, "rb") as f:
        data = f.read(writerqueue.SIZE)
    values = struct.unpack(f"={writerqueue.SLOTS * 2}q", data.ljust(writerqueue.SIZE, b"\0"))
    return [i for i in range(writerqueue.SLOTS) if values[2 * i]]


def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)


# ----------------------------------------------------------------- many writers


def _writer(path: str, count: int, ident: int, go: Any, out: Any) -> None:
    errs: list[str] = []
    queued = 0
    with sqlstream.open(path, busy_timeout=5.0) as db:
        wait = db.engine.write_conn() and db.engine._wwait
        stream = db.stream("s")
        go.wait(30)
        for i in range(count):
            try:
                stream.append(f"{ident}:{i}".encode(), key=str(ident))
            except Exception as exc:  # noqa: BLE001 - reported, the test expects none
                errs.append(f"{type(exc).__name__}: {exc}")
        assert wait is not None and wait.queue is not None
        queued = wait.queue.joined
    out.put((ident, errs, queued))


@pytest.mark.multiprocess
def test_four_writer_processes_land_every_append_gap_free_through_the_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    count = 300
    with sqlstream.open(path) as db:
        db.create_stream("s")
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, count, i, go, out)) for i in range(4)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.3)
        go.set()
        got = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [e for _, e, _ in got if e] == []
    # The queue was used (each writer waited in it at least once), so the run tested it.
    assert sum(q for _, _, q in got) > 0
    with sqlstream.open(path) as db:
        recs = list(db.stream("s").read(0, limit=10_000))
        assert [r.offset for r in recs] == list(range(4 * count))
        for ident in range(4):  # each writer's own appends in its order
            mine = [r.value for r in recs if r.key == str(ident)]
            assert mine == [f"{ident}:{i}".encode() for i in range(count)]
        assert _waiting_slots(_queue_file(db)) == []  # nobody left queued


# ----------------------------------------------------------------- busy_timeout


def test_busy_timeout_raises_lock_timeout_for_a_writer_queued_behind_another(tmp_path: Path) -> None:
    """Holder H has the lock, W1 (long timeout) waits at the head, W2 (0.3 s) behind it:
    W2 gets LockTimeout after its own 0.3 s; readers never wait; H's commit lets W1 in."""
    path = str(tmp_path / "q.db")
    with sqlstream.open(path) as h, sqlstream.open(path, busy_timeout=20) as w1, \
            sqlstream.open(path, busy_timeout=0.3) as w2, sqlstream.open(path) as reader:
        h.create_stream("s").append(b"0")
        qfile = _queue_file(h)
        done: list[Any] = []
        with h.transaction():
            h.stream("s").append(b"held")
            t = threading.Thread(target=lambda: done.append(w1.stream("s").append(b"w1")))
            t.start()
            _until(lambda: len(_waiting_slots(qfile)) == 1)
            started = time.monotonic()
            with pytest.raises(errors.LockTimeout):
                w2.stream("s").append(b"w2")
            waited = time.monotonic() - started
            assert 0.25 <= waited < 3.0, f"waited {waited:.2f}s for a 0.3s busy timeout"
            assert not w2.in_transaction()
            # Readers are not queued: a read answers at once while writers wait.
            started = time.monotonic()
            assert [r.value for r in reader.stream("s").read(0)] == [b"0"]
            assert time.monotonic() - started < 1.0
            assert len(_waiting_slots(qfile)) == 1  # W2 left the queue, W1 still waits
        t.join(10)
        assert done == [2]
        assert _waiting_slots(qfile) == []
        assert w2.stream("s").append(b"w2") == 3  # and W2 writes again afterwards


# ----------------------------------------------------------------- killed writers


def _hold_lock(path: str, ready: Any) -> None:
    with sqlstream.open(path) as db:
        with db.transaction():
            db.stream("s").append(b"holder")
            ready.set()
            time.sleep(60)


def _queued_append(path: str, out: Any) -> None:
    with sqlstream.open(path, busy_timeout=30) as db:
        stream = db.stream("s")
        t0 = time.monotonic()
        try:
            stream.append(b"late")
            out.put(("ok", time.monotonic() - t0))
        except Exception as exc:  # noqa: BLE001
            out.put((type(exc).__name__, time.monotonic() - t0))


@pytest.mark.multiprocess
def test_writer_killed_while_waiting_at_the_head_of_the_queue_does_not_stall_the_others(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with sqlstream.open(path, busy_timeout=30) as db:
        db.create_stream("s").append(b"0")
        qfile = _queue_file(db)
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        with db.transaction():
            db.stream("s").append(b"1")
            victim = ctx.Process(target=_queued_append, args=(path, out))
            victim.start()
            _until(lambda: len(_waiting_slots(qfile)) == 1, 30)  # the victim is the head
            survivor = ctx.Process(target=_queued_append, args=(path, out))
            survivor.start()
            _until(lambda: len(_waiting_slots(qfile)) == 2, 30)  # the survivor queued behind it
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join(10)
        # The dead head's slot still says "waiting"; the survivor must go past it quickly
        # (not wait for its 30 s busy timeout).
        status, waited = out.get(timeout=20)
        survivor.join(10)
        assert status == "ok"
        assert waited < 10
        assert [r.value for r in db.stream("s").read(0)] == [b"0", b"1", b"late"]


@pytest.mark.multiprocess
def test_writer_killed_while_holding_the_lock_lets_the_queued_writers_in(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with sqlstream.open(path, busy_timeout=30) as db:
        db.create_stream("s").append(b"0")
        qfile = _queue_file(db)
        ctx = multiprocessing.get_context("spawn")
        ready, out = ctx.Event(), ctx.Queue()
        holder = ctx.Process(target=_hold_lock, args=(path, ready))
        holder.start()
        assert ready.wait(30)
        waiters = [ctx.Process(target=_queued_append, args=(path, out)) for _ in range(2)]
        for w in waiters:
            w.start()
        _until(lambda: len(_waiting_slots(qfile)) == 2, 30)
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(10)
        got = [out.get(timeout=20) for _ in waiters]
        for w in waiters:
            w.join(10)
        assert [s for s, _ in got] == ["ok", "ok"]
        assert [r.value for r in db.stream("s").read(0)] == [b"0", b"late", b"late"]


# ----------------------------------------------------------------- fallbacks


def test_single_writer_never_joins_the_queue(tmp_path: Path) -> None:
    with sqlstream.open(str(tmp_path / "q.db")) as db:
        s = db.create_stream("s")
        for i in range(200):
            s.append(b"x")
        wait = db.engine._wwait
        assert wait is not None and wait.queue is not None
        assert wait.queue.joined == 0  # no queue system call for a lone writer


def test_writes_work_without_a_usable_doorbell_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue lives in the doorbell folder; when that folder is unsafe there is no
    queue, and writers (several Databases here) wait on SQLite's lock as before."""
    import tempfile

    from sqlstream import wakeup

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    root = tmp / f"sqlstream-{os.getuid()}"
    root.mkdir()
    os.chmod(root, 0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(wakeup, "_warned", set(), raising=False)
    monkeypatch.setattr(wakeup, "_cleaned", set(), raising=False)
    with pytest.warns(errors.SqlstreamWarning, match="doorbell"):
        a = sqlstream.open(str(tmp_path / "d.db"))
    with a, sqlstream.open(str(tmp_path / "d.db"), busy_timeout=10) as b:
        a.create_stream("s")
        assert a.engine.write_conn() and a.engine._wwait is not None
        assert a.engine._wwait.queue is None
        threads = [threading.Thread(target=lambda db=db: [db.stream("s").append(b"x") for _ in range(100)])
                   for db in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.offset for r in a.stream("s").read(0, limit=1000)] == list(range(200))
    assert list(root.iterdir()) == []
