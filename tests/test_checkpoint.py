"""WAL checkpoints run in the background and really copy frames."""

from __future__ import annotations

import os
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
    cp = db._notifier.checkpointer
    deadline = time.monotonic() + 10
    while (cp.checkpoints == 0 or cp.last_result[1] <= 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cp.checkpoints >= 1
    frames, copied = cp.last_result
    assert frames > 0 and copied > 0, cp.last_result


def test_checkpointer_stops_with_the_last_database(db_path: str) -> None:
    """Closing the last Database on a file ends its checkpoint thread."""
    db = sqlstream.open(db_path)
    db.create_stream("s").extend([b"x" * 4000] * (checkpoint.SOFT_LIMIT + 50))
    cp = db._notifier.checkpointer
    db.close()
    assert cp.stopped
    assert cp._thread is None or not cp._thread.is_alive()
