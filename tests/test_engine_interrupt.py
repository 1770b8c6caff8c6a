"""Ctrl-C (KeyboardInterrupt) anywhere in an append leaves the engine usable: the write
lock free for other threads, no SQLite transaction left open, no scope depth left behind,
and the next append committed for real (seen from another connection).

The interrupts are raised at every point where CPython may deliver a signal in
sqlstream's frames (tests/helpers_interrupt.py). (A user's own ``with db.transaction():``
keeps one such point, the first instruction of its ``__exit__``: WriteScope.abandon.) Before the write scope took the lock
inside its try and the append path undid a scope whose ``__exit__`` never ran, such
points left the lock held (other threads' writes timed out) or a transaction open that
later appends went into as savepoints and that never committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import sqlstream
from helpers_interrupt import interrupted_at


def _other_thread_can_write(db: sqlstream.Database) -> bool:
    got: list[bool] = []

    def probe() -> None:
        lock = db.engine._lock
        ok = lock.acquire(timeout=5)
        if ok:
            lock.release()
        got.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return got[0]


@pytest.mark.parametrize("what", ["append", "extend", "append_keyed"])
def test_ctrl_c_anywhere_in_an_append_leaves_the_engine_usable(db_path: str, what: str) -> None:
    db = sqlstream.open(db_path)
    other = sqlstream.open(db_path)
    try:
        s = db.create_stream("s")
        s.append("warm")
        calls: dict[str, Callable[[], object]] = {
            "append": lambda: s.append("x"),
            "extend": lambda: s.extend(["x", "y"]),
            "append_keyed": lambda: s.append({"k": 1}, key="k", headers={"h": "v"}),
        }
        call = calls[what]
        step = 1
        problems = []
        while interrupted_at(step, call):
            engine = db.engine
            state = (_other_thread_can_write(db), engine._tx_depth, engine.write_conn().getautocommit())
            if state != (True, 0, True):
                problems.append((step, state))
            # and the next append commits for real
            before = other.stream("s").info().next_offset
            offset = s.append("after")
            assert other.stream("s").info().next_offset == offset + 1 > before, step
            step += 1
        assert step > 10  # the call had interrupt points
        assert problems == [], problems
    finally:
        other.close()
        db.close()
