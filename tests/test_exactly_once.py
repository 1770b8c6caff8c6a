"""Exactly-once inside one file: an ack made in ``db.transaction()`` is part of it.

The README promises that a fetch, the appends it causes and the ack commit together or
not at all. Looking only after the block cannot tell an ack applied in the transaction
from one deferred to after COMMIT; these tests look inside the block, and kill a process
at the first moment after its COMMIT has completed, before anything that follows it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sqlstream

ROOT = Path(__file__).resolve().parent.parent


def _fill(db: sqlstream.Database, n: int) -> sqlstream.Stream:
    stream = db.create_stream("s")
    stream.extend([{"n": i} for i in range(n)])
    return stream


def test_ack_inside_a_transaction_is_visible_inside_it(db: sqlstream.Database) -> None:
    """Inside the transaction, right after ack(): the acked offsets are no longer
    pending, info() counts them as acked, an offset never delivered is reported in
    ``ignored`` (and one acked a moment ago in the same block too)."""
    _fill(db, 6)
    out = db.create_stream("out")
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    with db.transaction():
        batch = sub.fetch("w", 3, timeout=0)
        assert batch.offsets == [0, 1, 2]
        assert [p.offset for p in sub.pending()] == [0, 1, 2]
        out.extend([r.value for r in batch])
        result = sub.ack(0, 1)
        assert result.applied == (0, 1) and result.ignored == ()
        assert [p.offset for p in sub.pending()] == [2]
        assert [p.offset for p in sub.pending("w")] == [2]
        info = sub.info()
        assert (info.acked, info.pending, info.next_offset) == (2, 1, 3)
        assert info.acked_frontier == 2
        # 4 was never delivered, 0 was acked a moment ago in this very block.
        again = sub.ack(2, 4, 0)
        assert again.applied == (2,) and sorted(again.ignored) == [0, 4]
        assert sub.pending() == []
        info = sub.info()
        assert (info.acked, info.pending, info.acked_frontier) == (3, 0, 3)
    info = sub.info()
    assert (info.acked, info.pending, info.acked_frontier) == (3, 0, 3)
    assert sub.fetch("w", 10, timeout=0).offsets == [3, 4, 5]


def test_ack_inside_a_rolled_back_transaction_never_happened(db: sqlstream.Database) -> None:
    """The counterpart: the state seen inside the block is undone by its rollback."""
    _fill(db, 3)
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    with pytest.raises(RuntimeError):
        with db.transaction():
            batch = sub.fetch("w", 3, timeout=0)
            sub.ack(*batch.offsets)
            assert sub.info().acked == 3 and sub.pending() == []
            raise RuntimeError("abandon")
    info = sub.info()
    assert (info.acked, info.pending, info.next_offset) == (0, 0, 0)


# The child commits fetch + append + ack in one transaction. Every connection it opens
# gets a SQLite profile trace (apsw supports several traces per connection), which runs
# when a statement has finished: for the transaction's COMMIT that is after the commit
# is complete and before control returns to sqlstream, i.e. before anything that
# follows the COMMIT (wake-ups, callbacks, a deferred ack, ...). It SIGKILLs itself there.
KILL_AFTER_COMMIT_CHILD = r"""
import os, signal, sys
import apsw, sqlstream

armed = False

def profile(event):
    if armed and event["sql"].strip().upper().startswith("COMMIT"):
        os.kill(os.getpid(), signal.SIGKILL)

def hook(conn):
    conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, profile, id="kill-after-commit")

apsw.connection_hooks.append(hook)
path, count = sys.argv[1], int(sys.argv[2])
db = sqlstream.open(path)
sub, out = db.subscription("sub"), db.stream("out")
with db.transaction():
    batch = sub.fetch("w", count, timeout=0)
    out.extend([r.value for r in batch])
    sub.ack(*batch.offsets)
    armed = True
print("COMMIT returned: the kill did not happen", flush=True)
sys.exit(3)
"""


@pytest.mark.multiprocess
def test_kill_right_after_commit_leaves_exactly_once(db: sqlstream.Database) -> None:
    """Guarantee: once COMMIT of a fetch + append + ack transaction has completed, a
    SIGKILL before anything else runs leaves every record processed exactly once: the
    output written once, the acks recorded, nothing pending, nothing redelivered."""
    _fill(db, 5)
    out = db.create_stream("out")
    sub = db.create_subscription("sub", "s", ack_timeout=600)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for round_, count in enumerate((2, 2)):
        child = subprocess.run(
            [sys.executable, "-c", KILL_AFTER_COMMIT_CHILD, db.path, str(count)],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr)
        done = 2 * (round_ + 1)
        assert [r.value for r in out.read(0, 100)] == [{"n": i} for i in range(done)]
        info = sub.info()
        assert (info.acked, info.pending, info.acked_frontier, info.next_offset) == (done, 0, done, done)
        assert sub.pending() == []
    with sqlstream.open(db.path) as fresh:
        assert fresh.check().ok
        assert fresh.subscription("sub").fetch("w", 10, timeout=0).offsets == [4]
