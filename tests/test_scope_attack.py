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
