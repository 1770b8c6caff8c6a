"""WAL checkpoints run in the background and really copy frames."""

from __future__ import annotations

import os
import threading
import time

import apsw
import pytest

import sqlstream
from sqlstream import checkpoint


def test_background_checkpoint_copies_frames(db: sqlstream.Database) -> None:
    """After more than SOFT_LIMIT pages of appends the background checkpointer has run
    and reported real frame counts (a connection that never opened the WAL reports -1)."""
    stream = db.create_stream("s")
    payload = os.urandom(3000)  # about a page per append
    for _ in range(checkpoint.SOFT_LIMIT + 200):
        stream.append(payload)
    cp = db.engine.notifier.checkpointer
    deadline = time.monotonic() + 10
    while (cp.checkpoints == 0 or cp.last_result[1] <= 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cp.checkpoints >= 1
    frames, copied = cp.last_result
    assert frames > 0 and copied > 0, cp.last_result


def test_checkpointer_stops_with_the_last_database(db_path: str) -> None:
    """Closing the last Database on a file ends its checkpoint thread — which must have
    been started by then (more than SOFT_LIMIT pages were written), so the test cannot
    pass on a checkpointer that never ran."""
    db = sqlstream.open(db_path)
    db.create_stream("s").extend([b"x" * 4000] * (checkpoint.SOFT_LIMIT + 50))
    cp = db.engine.notifier.checkpointer
    thread = cp._thread
    alive = thread is not None and thread.is_alive()
    db.close()
    assert thread is not None and alive, "the checkpoint thread was never started"
    assert cp.stopped
    assert not thread.is_alive(), "the checkpoint thread outlived the last Database"
    assert thread not in threading.enumerate()


def _wal_frames(path: str) -> int:
    """Frames the -wal file holds (header 32 bytes, each frame 24 + page bytes)."""
    size = os.path.getsize(path + "-wal")
    return max(0, (size - 32) // (24 + 4096))


TRANSIENT_BUSY = 60.0  # seconds another connection's checkpoint may keep one from running


def test_past_the_hard_limit_a_held_wal_is_not_checkpointed_at_every_commit(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's open snapshot keeps every later frame in the WAL, so no checkpoint can
    complete. Past HARD_LIMIT the committing connection tries a RESTART checkpoint once
    per SOFT_LIMIT pages, not at every commit (it used to run one, two fsyncs, at every
    commit: with several writer processes the WAL stayed past the limit and most commits
    paid it). Once the reader lets go, the next try completes and the WAL starts over."""
    monkeypatch.setattr(checkpoint, "SOFT_LIMIT", 20)
    monkeypatch.setattr(checkpoint, "HARD_LIMIT", 100)
    monkeypatch.setattr(checkpoint, "RESTART_WAIT", 0.001)
    db = sqlstream.open(db_path)
    held = False
    try:
        stream = db.create_stream("s")
        stream.append(b"first")
        reader = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
        held = True
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM chunks").fetchall()
        cp = db.engine.notifier.checkpointer
        # Creating the file wrote more than this test's HARD_LIMIT: counted from here.
        tried0, restarts0 = cp.restarts_tried, cp.restarts
        commits = 0
        while _wal_frames(db_path) < 100 + 10 * 20:
            stream.append(b"x" * 300)
            commits += 1
        past = _wal_frames(db_path) - 100
        assert commits > 2 * (past // 20 + 1), "the workload must commit more often than it tries"
        assert 1 <= cp.restarts_tried - tried0 <= past // 20 + 2, (cp.restarts_tried, tried0, past, commits)
        assert cp.restarts == restarts0
        reader.execute("COMMIT")
        reader.close()
        held = False
        # Only a checkpoint in progress (the background thread's) can hold it off now.
        monkeypatch.setattr(checkpoint, "RESTART_WAIT", 10.0)
        tried = cp.restarts_tried
        while cp.restarts == restarts0 and cp.restarts_tried < tried + 3:
            stream.append(b"y" * 300)
        assert cp.restarts == restarts0 + 1, (cp.restarts_tried, tried)
        stream.append(b"z")  # the first commit after the RESTART writes at the WAL's start
        check = apsw.Connection(db_path)
        # The background thread's own PASSIVE checkpoint (asked for every SOFT_LIMIT pages)
        # may be running: then this one reports busy, -1, -1 (seen once in a whole-suite
        # run) and is asked again; the WAL's size is what is checked.
        deadline = time.monotonic() + TRANSIENT_BUSY
        while True:
            busy, log, copied = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            if busy == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        check.close()
        assert busy == 0 and log < 20, (log, copied)
    finally:
        if held:
            reader.close()
        db.close()


def test_the_restart_checkpoint_gives_the_connection_its_busy_handler_back(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RESTART checkpoint waits only RESTART_WAIT; afterwards the write connection
    waits for the write lock as long as busy_timeout allows again, not RESTART_WAIT."""
    monkeypatch.setattr(checkpoint, "SOFT_LIMIT", 20)
    monkeypatch.setattr(checkpoint, "HARD_LIMIT", 60)
    monkeypatch.setattr(checkpoint, "RESTART_WAIT", 0.001)
    db = sqlstream.open(db_path)
    try:
        stream = db.create_stream("s")
        cp = db.engine.notifier.checkpointer
        while cp.restarts_tried == 0:
            stream.append(b"x" * 300)
        holder = apsw.Connection(db_path)
        holder.execute("BEGIN IMMEDIATE")
        released = threading.Event()

        def release() -> None:
            time.sleep(0.3)  # far past RESTART_WAIT, far below busy_timeout
            holder.execute("COMMIT")
            released.set()

        thread = threading.Thread(target=release)
        thread.start()
        try:
            stream.append(b"after")  # waits for the holder, then commits
        finally:
            thread.join()
            holder.close()
        assert released.is_set()
        assert stream.info().next_offset == stream.read(0, 10_000)[-1].offset + 1
    finally:
        db.close()
