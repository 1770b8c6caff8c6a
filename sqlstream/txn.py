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
  N - 1, the last number given out before it (:func:`move_tail` writes the tail row; the
  trigger ``counters_tail_moved``, schema 19, raises ``txn`` to the old tail's last
  number: the row's page), in the same block as those records (a rollback undoes both);
* its later appends, to any stream, carry N too, which its records in the tail stream
  already hold.

So every record outside the tail stream carries at most the larger of ``counters.txn``
and the tail's last txn, and the ``last_txn`` view (two seeks, whatever the number of
streams) is exact. Deleting records whose txn is above the row (the tail stream's
newest) raises ``txn`` to theirs (the trigger ``chunks_txn_floor``), so a number is never
given out twice. A connection without this bookkeeping takes a number with
:func:`next_txn`, which writes it into the row. A writer that keeps appending to one stream (the common
case: one process, one stream) writes one page per commit instead of two.

Schema version 19 adds triggers that keep SQL outside sqlstream from undoing this: the
two rows cannot be deleted, renamed, replaced, set to a value that is not an integer, nor
``txn`` lowered; naming another tail raises ``txn`` to the old tail's last number; a
record updated in place keeps its old and new numbers given out. A file whose rows hold
what those triggers would refuse (an earlier version's) gets ``CorruptDatabase`` from
every function here that reads them, never a raw exception or a repeated number.

(Schema versions 9 and 10 derived the number with one seek per stream; 13 to 17 wrote the
row at every appending commit. Why, with figures: benchmarks/findings.md, issue 23.)

Functions take ``q`` (a :class:`~sqlstream.connection.Query`) so the SQLAlchemy outbox
runs them on the caller's connection.
"""

from __future__ import annotations

import apsw

from .connection import Query
from .errors import CorruptDatabase

__all__ = ["LAST_TXN_SQL", "MAX_TXN", "last_txn", "txn_state", "move_tail", "next_txn", "hold_txn", "exhausted"]

#: The highest number a commit can take (SQLite's largest integer).
MAX_TXN = 2**63 - 1

LAST_TXN_SQL = "SELECT txn FROM last_txn"
# The last number and the tail stream, in one statement (the view's two seeks and the row).
# (A missing row reads as NULL, for txn_state to refuse.)
_STATE_SQL = (
    "SELECT c, t, (SELECT x.txn FROM chunks x WHERE x.stream_id = t ORDER BY x.offset DESC LIMIT 1) FROM "
    "(SELECT (SELECT value FROM counters WHERE name = 'txn') AS c, "
    "(SELECT value FROM counters WHERE name = 'txn_stream') AS t)"
)
# Both rows are on one page: the statement and its trigger write it once per commit.
_MOVE_TAIL_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn_stream'"
# Written only when a savepoint rollback took the number back (see hold_txn).
_HOLD_TXN_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn' AND value < ?1"
# next_txn: one statement that reads the maximum and writes the next number into the row,
# under the write lock the UPDATE takes (a deferred transaction cannot read a stale
# maximum first), then the row read back.
# The maximum plus one, only when it is an integer that has a successor and the tail row
# is an integer too; otherwise NULL, which the NOT NULL column refuses before anything is
# written (next_txn then says why: never 'abc' + 1 = 1, a number given out before).
_NEXT_TXN_SQL = (
    "UPDATE counters SET value = (SELECT CASE WHEN typeof(txn) = 'integer' AND txn < 9223372036854775807 "
    "AND (SELECT typeof(value) FROM counters WHERE name = 'txn_stream') = 'integer' THEN txn + 1 END "
    "FROM last_txn) WHERE name = 'txn'"
)
_TXN_SQL = "SELECT value FROM counters WHERE name = 'txn'"


def last_txn(q: Query) -> int:
    """The last commit sequence number given out (0 before the first append).

    What the streaming services call the head (block height) and ``check()`` bounds
    records' txn by. Two seeks (the ``last_txn`` view). Raises ``CorruptDatabase`` when
    that reads something other than an integer (plain SQL wrote it before schema 19).
    """
    last = q(LAST_TXN_SQL)[0][0]
    if type(last) is not int:  # noqa: E721 - SQL outside sqlstream stored something else
        raise CorruptDatabase(
            f"the last commit number (the last_txn view) reads {last!r}, not an integer",
            hint="SQL outside sqlstream wrote counters.txn or the tail stream's last record; "
            "`sqlstream check` names which, and restoring the file from a backup repairs it",
        )
    return last


def txn_state(q: Query) -> tuple[int, int]:
    """``(last number given out, tail stream id)``: what a writer needs to take the next
    number with :func:`move_tail` (0 as the id: no tail stream).

    Raises ``CorruptDatabase`` when SQL outside sqlstream deleted either ``counters``
    row, or left a value that is not an integer in it or in the tail's last record:
    without it no number can be taken safely (``check()`` names the row).
    """
    counter, tail, tail_last = q(_STATE_SQL)[0]
    if counter is None or tail is None:
        missing = "txn" if counter is None else "txn_stream"
        raise CorruptDatabase(
            f"the counters table has no {missing!r} row: the next commit number cannot be taken",
            hint="SQL outside sqlstream deleted it; restore the file from a backup "
            "(`sqlstream check` lists what else is missing)",
        )
    # Plain SQL may have stored text, a real or a blob (the column has no STRICT type).
    if type(counter) is not int:  # noqa: E721
        raise _unreadable("txn", counter)
    if type(tail) is not int:  # noqa: E721
        raise _unreadable("txn_stream", tail)
    if tail_last is None or tail_last.__class__ is int:
        return (counter if tail_last is None or tail_last < counter else tail_last), tail
    raise CorruptDatabase(
        f"the last record of stream id {tail} (the tail stream) has txn {tail_last!r}, not an integer: "
        "the next commit number cannot be taken",
        hint="SQL outside sqlstream changed it; restore the file from a backup (`sqlstream check` lists it)",
    )


def exhausted(last: int) -> CorruptDatabase:
    """The error for a file whose last number given out leaves no next one (``MAX_TXN``):
    only SQL outside sqlstream can have put it there."""
    return CorruptDatabase(
        f"the last commit number given out is {last}: no higher one fits in SQLite's integers",
        hint="SQL outside sqlstream set a record's txn or counters.txn that high; restore the file from a "
        "backup, or copy its streams into a new file (`sqlstream export` / `import`)",
    )


def _unreadable(row: str, value: object) -> CorruptDatabase:
    return CorruptDatabase(
        f"the counters row {row!r} holds {value!r}, not an integer: the next commit number cannot be taken",
        hint="SQL outside sqlstream wrote it; restore the file from a backup, or (txn) set it with "
        "UPDATE counters SET value = (SELECT max(txn) FROM chunks) WHERE name = 'txn' if no higher number "
        "was given out, (txn_stream) with UPDATE counters SET value = 0 WHERE name = 'txn_stream'",
    )


def move_tail(q: Query, stream_id: int) -> None:
    """Name ``stream_id`` the tail stream; the file's trigger ``counters_tail_moved``
    (schema 19) raises ``txn`` to the old tail's last number in the same statement, so
    ``txn`` then holds the last number given out.

    For the caller's write transaction (holding the write lock) whose first append goes
    to ``stream_id`` while another stream is the tail; it then takes the last number + 1
    (:func:`txn_state`). The caller's rollback of the enclosing transaction or savepoint
    undoes it. (One statement: writing ``txn`` too, as schema 18 did, cost a statement
    more, and the trigger must do it anyway for SQL outside sqlstream that renames the tail.)
    """
    q(_MOVE_TAIL_SQL, (stream_id,))


def next_txn(q: Query) -> int:
    """Take the next txn number for the caller's write transaction, for any stream.

    The general form (the SQLAlchemy outbox, a connection without the engine's
    bookkeeping): writes ``txn`` = the new number, so records of this transaction in any
    stream are covered. Call it once per transaction, before its first record is stored;
    the caller's rollback of the enclosing transaction or savepoint gives the number back.
    Raises ``CorruptDatabase`` (nothing written) when a counters row is missing or not an
    integer, or no higher number fits in SQLite's integers.
    """
    try:
        q(_NEXT_TXN_SQL)
        rows = q(_TXN_SQL)
    except apsw.ConstraintError:  # the NULL of _NEXT_TXN_SQL, or a guard trigger (schema 19)
        rows = []
    if rows and type(rows[0][0]) is int:  # noqa: E721
        return int(rows[0][0])
    last, _ = txn_state(q)  # raises CorruptDatabase for a missing row or one not an integer
    if last >= MAX_TXN:
        raise exhausted(last)
    raise CorruptDatabase(
        "the next commit number could not be taken (the counters rows refused it)",
        hint="run `sqlstream check`, which names what SQL outside sqlstream changed",
    )


def hold_txn(q: Query, number: int) -> None:
    """Keep ``counters.txn`` at ``number`` or above, for a caller that keeps a number taken
    earlier in its transaction across savepoint rollbacks (the SQLAlchemy outbox): a
    rolled-back savepoint may have taken the write back."""
    q(_HOLD_TXN_SQL, (number,))
