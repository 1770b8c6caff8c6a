"""WAL checkpoints run in the background and really copy frames."""

from __future__ import annotations

import os
import threading
import time

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
