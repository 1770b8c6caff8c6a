"""The commit sequence number (``txn``): one rule, in one place.

``txn`` is strictly increasing over every commit that appends, shared by all streams and
all processes writing the file (the streaming services use it as a block height).
Writers are serialised by the write lock, so numbers follow commit order; a rolled-back
transaction (or savepoint) takes its writes back with its records, so it consumes nothing.

Where the number lives (schema version 18): the last number given out is the larger of
the ``counters`` row ``txn`` and the txn of the last record of the one stream the row
``txn_stream`` names (the *tail stream*; 0 names none). The rule every appending
transaction keeps, taking number N = last + 1:

* when its first append goes to the tail stream it writes nothing more: those records
  carry N, the new maximum;
* when its first append goes elsewhere, it names that stream the tail, with ``txn`` =
  N - 1, the last number given out before it (:func:`move_tail`: the row's page), in the
  same block as those records (a rollback undoes both);
* its later appends, to any stream, carry N too, which its records in the tail stream
  already hold.

So every record outside the tail stream carries at most the larger of ``counters.txn``
and the tail's last txn, and the ``last_txn`` view (two seeks, whatever the number of
streams) is exact. Deleting records whose txn is above the row (the tail stream's
newest) raises ``txn`` to theirs (the trigger ``chunks_txn_floor``), so a number is never
given out twice. A connection without this bookkeeping takes a number with
:func:`next_txn`, which writes it into the row. A writer that keeps appending to one stream (the common
case: one process, one stream) writes one page per commit instead of two.

(Schema versions 9 and 10 derived the number with one seek per stream; 13 to 17 wrote the
row at every appending commit. Why, with figures: benchmarks/findings.md, issue 23.)

Functions take ``q`` (a :class:`~sqlstream.connection.Query`) so the SQLAlchemy outbox
runs them on the caller's connection.
"""

from __future__ import annotations

from .connection import Query
from .errors import CorruptDatabase

__all__ = ["LAST_TXN_SQL", "last_txn", "txn_state", "move_tail", "next_txn", "hold_txn"]

LAST_TXN_SQL = "SELECT txn FROM last_txn"
# The last number and the tail stream, in one statement (the view's two seeks and the row).
# (A missing row reads as NULL, for txn_state to refuse.)
_STATE_SQL = (
    "SELECT c, t, (SELECT x.txn FROM chunks x WHERE x.stream_id = t ORDER BY x.offset DESC LIMIT 1) FROM "
    "(SELECT (SELECT value FROM counters WHERE name = 'txn') AS c, "
    "(SELECT value FROM counters WHERE name = 'txn_stream') AS t)"
)
# Both rows are on one page: the two statements write it once per commit.
_MOVE_TXN_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn'"
_MOVE_TAIL_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn_stream'"
# Written only when a savepoint rollback took the number back (see hold_txn).
_HOLD_TXN_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn' AND value < ?1"
# next_txn: one statement that reads the maximum and writes the next number into the row,
# under the write lock the UPDATE takes (a deferred transaction cannot read a stale
# maximum first), then the row read back.
_NEXT_TXN_SQL = "UPDATE counters SET value = (SELECT txn FROM last_txn) + 1 WHERE name = 'txn'"
_TXN_SQL = "SELECT value FROM counters WHERE name = 'txn'"


def last_txn(q: Query) -> int:
    """The last commit sequence number given out (0 before the first append).

    What the streaming services call the head (block height) and ``check()`` bounds
    records' txn by. Two seeks (the ``last_txn`` view).
    """
    return int(q(LAST_TXN_SQL)[0][0])


def txn_state(q: Query) -> tuple[int, int]:
    """``(last number given out, tail stream id)``: what a writer needs to take the next
    number with :func:`move_tail` (0 as the id: no tail stream).

    Raises ``CorruptDatabase`` when SQL outside sqlstream deleted either ``counters``
    row: without it no number can be taken safely (``check()`` names the row).
    """
    counter, tail, tail_last = q(_STATE_SQL)[0]
    if counter is None or tail is None:
        missing = "txn" if counter is None else "txn_stream"
        raise CorruptDatabase(
            f"the counters table has no {missing!r} row: the next commit number cannot be taken",
            hint="SQL outside sqlstream deleted it; restore the file from a backup "
            "(`sqlstream check` lists what else is missing)",
        )
    return (counter if tail_last is None or tail_last < counter else tail_last), tail


def move_tail(q: Query, last: int, stream_id: int) -> None:
    """Name ``stream_id`` the tail stream, ``last`` (the last number given out) in ``txn``.

    For the caller's write transaction (holding the write lock) whose first append goes
    to ``stream_id`` while another stream is the tail; it then takes ``last + 1``. The
    caller's rollback of the enclosing transaction or savepoint undoes it.
    """
    q(_MOVE_TXN_SQL, (last,))
    q(_MOVE_TAIL_SQL, (stream_id,))


def next_txn(q: Query) -> int:
    """Take the next txn number for the caller's write transaction, for any stream.

    The general form (the SQLAlchemy outbox, a connection without the engine's
    bookkeeping): writes ``txn`` = the new number, so records of this transaction in any
    stream are covered. Call it once per transaction, before its first record is stored;
    the caller's rollback of the enclosing transaction or savepoint gives the number back.
    """
    q(_NEXT_TXN_SQL)
    return int(q(_TXN_SQL)[0][0])


def hold_txn(q: Query, number: int) -> None:
    """Keep ``counters.txn`` at ``number`` or above, for a caller that keeps a number taken
    earlier in its transaction across savepoint rollbacks (the SQLAlchemy outbox): a
    rolled-back savepoint may have taken the write back."""
    q(_HOLD_TXN_SQL, (number,))
