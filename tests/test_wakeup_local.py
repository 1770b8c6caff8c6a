"""Same-process wake-ups are signalled by the commit itself, not found by a fallback.

A commit made in this process bumps the file's notifier (a generation counter behind a
condition variable) right after COMMIT. The watcher thread's slow fallback check
(every 0.25 s in notify mode) would also wake a reader, a little later, so a loose
latency bound cannot tell the two apart. These tests check the mechanism itself
(the generation moves before ``append()`` returns, with no watcher running) and the
latency with the fallback pushed out to a minute.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

import sqlstream
from sqlstream import wakeup


def test_append_advances_the_notifier_generation_before_it_returns(db: sqlstream.Database) -> None:
    """Nobody waits, so no watcher thread runs: only the committing call itself can
    move the generation. append, extend and a transaction's COMMIT each move it before
    returning; appends inside an open transaction do not (nothing is visible yet)."""
    stream = db.create_stream("s")
    # notifier_for() returns the process's one notifier for this file: the very object
    # the Database signals and its readers sleep on.
    notifier = wakeup.notifier_for(db.path)
    assert notifier.open_count >= 1
    before = notifier.generation
    stream.append(b"a")
    assert notifier.generation > before
    before = notifier.generation
    stream.extend([b"b", b"c"])
    assert notifier.generation > before
    before = notifier.generation
    with db.transaction():
        stream.append(b"d")
        db.create_stream("t").append(b"e")
        assert notifier.generation == before, "waiters woken before the COMMIT"
    assert notifier.generation > before


@pytest.mark.slow
def test_blocked_reader_wakes_at_once_without_the_fallback(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader blocked in another thread wakes within milliseconds of an append in this
    process, at delays unrelated to any polling period, with the watcher's fallback
    check pushed out to 60 s (so only the commit's own signal can wake it in time)."""
    monkeypatch.setattr(wakeup, "DEFAULT_FALLBACK_INTERVAL", 60.0)
    with sqlstream.open(db_path, wakeup="notify") as db:
        stream = db.create_stream("s")
        latencies: list[float] = []
        for i, delay in enumerate((0.05, 0.13, 0.031, 0.27, 0.09, 0.41, 0.17)):
            got: dict[str, float] = {}

            def reader(offset: int = i) -> None:
                records = stream.read(offset, 1, timeout=10.0)
                got["woke"] = time.monotonic()
                got["n"] = len(records)

            thread = threading.Thread(target=reader)
            thread.start()
            time.sleep(delay)
            stream.append(f"r{i}")
            appended = time.monotonic()
            thread.join(15.0)
            assert got.get("n") == 1, f"round {i}: the reader got nothing"
            latencies.append(got["woke"] - appended)
    # Without the in-process signal every wake would take ~10 s (the read's timeout).
    assert max(latencies) < 1.0, latencies
    assert statistics.median(latencies) < 0.1, latencies
