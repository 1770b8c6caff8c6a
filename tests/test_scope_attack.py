"""The write scope against its own Database's misuse: closed under an open block."""

from __future__ import annotations

import threading

import pytest

import sqlstream
from sqlstream import errors


@pytest.mark.parametrize("raise_inside", [False, True])
def test_closing_the_database_inside_its_own_transaction_gives_database_closed(db_path: str, raise_inside: bool) -> None:
    """The block's end met a closed connection: apsw's ConnectionClosedError escaped raw."""
    with sqlstream.open(db_path) as db:
        db.create_stream("s").append("committed")
    db = sqlstream.open(db_path)
    s = db.stream("s")
    with pytest.raises(errors.DatabaseClosed, match="nothing written"):
        with db.transaction():
            s.append("in the block")
            db.close()
            if raise_inside:
                raise ValueError("the block's own error")
    with sqlstream.open(db_path) as db:
        assert [r.value for r in db.stream("s").read(0, 10)] == ["committed"]


def test_a_close_from_another_thread_past_the_busy_timeout_ends_the_block_with_database_closed(db_path: str) -> None:
    """close() waits busy_timeout for an open transaction, then closes under it."""
    with sqlstream.open(db_path) as db:
        db.create_stream("s").append("committed")
    db = sqlstream.open(db_path, busy_timeout=0.2)
    s = db.stream("s")
    closed = threading.Event()
    with pytest.raises(errors.DatabaseClosed):
        with db.transaction():
            s.append("in the block")
            closer = threading.Thread(target=lambda: (db.close(), closed.set()))
            closer.start()
            closer.join()  # close() gave up waiting for this block's lock
            assert closed.is_set()
    with sqlstream.open(db_path) as db:
        assert [r.value for r in db.stream("s").read(0, 10)] == ["committed"]


def test_a_write_through_a_second_database_inside_the_firsts_transaction_is_refused_at_once(db_path: str) -> None:
    """Two handles on one file in one process, one thread: the second's BEGIN waited for the
    lock the first's open transaction holds (its own thread's) for all of busy_timeout,
    then blamed another connection (the unfixed code fails here after b's 1 s, on the
    message)."""
    a = sqlstream.open(db_path)
    b = sqlstream.open(db_path, busy_timeout=1.0)
    try:
        a.create_stream("s").append("committed")
        with a.transaction():
            a.stream("s").append("in a's block")
            with pytest.raises(errors.LockTimeout, match="this thread holds a write transaction"):
                b.stream("s").append("through b")
            a.stream("s").append("a goes on")
        b.stream("s").append("b after the block")  # b's connection is fine
        assert [r.value for r in b.stream("s").read(0, 10)] == [
            "committed", "in a's block", "a goes on", "b after the block"]
        # Another thread's write through a third handle waits for a's block as before.
        c = sqlstream.open(db_path)
        done = threading.Event()
        with a.transaction():
            a.stream("s").append("a again")
            writer = threading.Thread(target=lambda: (c.stream("s").append("b from a thread"), done.set()))
            writer.start()
            assert not done.wait(0.2)  # waiting behind a's block, not refused
        writer.join()
        c.close()
        assert done.is_set()
        assert [r.value for r in b.stream("s").read(4, 10)] == ["a again", "b from a thread"]
    finally:
        a.close()
        b.close()


def test_the_self_wait_check_survives_a_restart_checkpoint(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A RESTART checkpoint (past checkpoint.HARD_LIMIT pages of WAL, run after a COMMIT)
    puts the write connection's busy handler back when done: it put back one without
    the check, so from then on the self-wait waited out busy_timeout again."""
    from sqlstream import checkpoint

    monkeypatch.setattr(checkpoint, "HARD_LIMIT", 1)  # every commit marks a RESTART due
    monkeypatch.setattr(checkpoint, "SOFT_LIMIT", 1)
    a = sqlstream.open(db_path)
    b = sqlstream.open(db_path, busy_timeout=1.0)
    try:
        a.create_stream("s")
        b.stream("s").extend([b"x" * 5000] * 4)  # b's COMMIT runs a RESTART on b's connection
        with a.transaction():
            a.stream("s").append("in a's block")
            with pytest.raises(errors.LockTimeout, match="this thread holds a write transaction"):
                b.stream("s").append("through b")
    finally:
        a.close()
        b.close()
