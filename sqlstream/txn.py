"""The commit sequence number (``txn``): one rule, in one place.

``txn`` is strictly increasing over every commit that appends, shared by all streams and
all processes writing the file (the streaming services use it as a block height). It is
the ``counters`` row ``txn``, which every transaction that appends increments once
(:func:`next_txn`), in that transaction: writers are serialised by the write lock, so
numbers follow commit order, and a rolled-back transaction (or savepoint) takes its
increment back with its records, so it consumes nothing. The ``last_txn`` view reads the
row: one seek, whatever the number of streams.

(Schema versions 9 and 10 derived the number from each stream's last record instead,
one seek per stream; the migration named ``txn_counter`` made the row exact again. Why,
with figures: benchmarks/findings.md, issue 23.)

Functions take ``q`` (a :class:`~sqlstream.connection.Query`) so the SQLAlchemy outbox
runs them on the caller's connection.
"""

from __future__ import annotations

from .connection import Query

__all__ = ["LAST_TXN_SQL", "last_txn", "next_txn", "set_txn", "hold_txn"]

LAST_TXN_SQL = "SELECT txn FROM last_txn"
# Two statements, not one UPDATE ... RETURNING: SQLite runs a RETURNING statement through
# an ephemeral table of its results, and the pair costs a single append ~8,600 fewer
# instructions (callgrind, a one-record commit: RETURNING 63.5k, UPDATE + SELECT 54.9k;
# benchmarks/findings.md, issue 23 item 3). The SELECT reads this transaction's own
# write, under the write lock.
_NEXT_TXN_SQL = "UPDATE counters SET value = value + 1 WHERE name = 'txn'"
_TXN_SQL = "SELECT value FROM counters WHERE name = 'txn'"
# The number when the caller knows the row's value (set_txn).
_SET_TXN_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn'"
# Written only when a savepoint rollback took the increment back (see hold_txn).
_HOLD_TXN_SQL = "UPDATE counters SET value = ?1 WHERE name = 'txn' AND value < ?1"


def last_txn(q: Query) -> int:
    """The last commit sequence number given out (0 before the first append).

    What the streaming services call the head (block height) and ``check()`` bounds
    records' txn by. One row read.
    """
    return int(q(LAST_TXN_SQL)[0][0])


def next_txn(q: Query) -> int:
    """Take the next txn number for the caller's write transaction (holding the write lock).

    Call it once per transaction, before its first record is stored. It writes the
    ``counters`` row (one page per commit); the caller's rollback of the enclosing
    transaction or savepoint gives the number back.
    """
    q(_NEXT_TXN_SQL)
    return int(q(_TXN_SQL)[0][0])


def set_txn(q: Query, number: int) -> int:
    """Take ``number`` as the caller's txn: for a caller that knows the ``counters`` row
    holds ``number - 1`` (the engine's write connection, when its own last commit took
    ``number - 1`` and no connection has committed or changed a row since). One statement
    instead of :func:`next_txn`'s two; the same write, given back by a rollback alike."""
    q(_SET_TXN_SQL, (number,))
    return number


def hold_txn(q: Query, number: int) -> None:
    """Keep ``counters.txn`` at ``number`` or above, for a caller that keeps a number taken
    earlier in its transaction across savepoint rollbacks (the SQLAlchemy outbox): a
    rolled-back savepoint may have taken the increment back."""
    q(_HOLD_TXN_SQL, (number,))
