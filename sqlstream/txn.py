"""The commit sequence number (``txn``): one rule, in one place.

``txn`` is strictly increasing over every commit that appends, shared by all streams and
all processes writing the file (the streaming services use it as a block height). It is
kept without a page write per append:

- the last number given out is the ``last_txn`` view: ``max(counters.txn,
  max(chunks.txn))``, one seek down the index ``chunks_by_txn`` (the migration named
  ``txn_index``), so its cost does not grow with the number of streams; every insert
  pays that index's entry, at its right end (benchmarks/findings.md, W8);
- ``counters.txn`` is a floor, raised by :func:`keep_txn_floor` only before records are
  deleted (trim, retention, stream deletion, storage objects), so the view never goes
  back and no number is given out twice, even once every record is gone;
- a write connection continues from the number it last committed while no other
  connection committed since (:func:`next_number`): the SQLAlchemy outbox tells by
  ``PRAGMA data_version`` (:func:`next_txn`), the engine by the pager's data version
  (``Connection.data_version()``, a file control, no statement: see ``engine.py``); both
  keep that cache per connection, promoted only on commit.

Functions take ``q`` (a :class:`~sqlstream.connection.Query`) so the outbox runs them on
the caller's connection.
"""

from __future__ import annotations

from .connection import Query

__all__ = ["LAST_TXN_SQL", "last_txn", "next_number", "next_txn", "keep_txn_floor"]

LAST_TXN_SQL = "SELECT txn FROM last_txn"

# Raise the floor to the txn of the stream's last record below ?2, before those records
# are deleted (a stream's txn never decreases with its offset, so that is their highest).
# Written only when it raises the floor.
_TXN_FLOOR_SQL = """
UPDATE counters SET value = f.txn
  FROM (SELECT txn FROM chunks WHERE stream_id = ?1 AND offset < ?2 ORDER BY offset DESC LIMIT 1) AS f
 WHERE name = 'txn' AND value < f.txn
"""


def last_txn(q: Query) -> int:
    """The last commit sequence number given out (0 before the first append).

    What the streaming services call the head (block height) and ``check()`` bounds
    records' txn by. Costs one index seek (``chunks_by_txn``), whatever the number of streams.
    """
    return int(q(LAST_TXN_SQL)[0][0])


def next_number(q: Query, continued: int | None) -> int:
    """The txn number for the caller's write transaction (call it holding the write lock).

    ``continued``: the last number this connection committed, passed only when the caller
    knows no other connection committed since (see :func:`next_txn` and the engine); then
    the next number is that + 1 with nothing read. None: :func:`last_txn` + 1.
    """
    return continued + 1 if continued is not None else last_txn(q) + 1


def next_txn(q: Query, committed: tuple[int, int] | None) -> tuple[int, int]:
    """The txn number for the caller's write transaction, and ``PRAGMA data_version`` now.

    Call it inside the write transaction (holding the write lock), once per transaction.
    ``committed`` is ``(txn, data_version)`` as returned for the last transaction this
    connection committed with a txn, or None. While data_version is unchanged no other
    connection committed since, so the next number is that txn + 1 with nothing read or
    written; otherwise it is :func:`last_txn` + 1. The caller keeps the returned pair as
    its new ``committed`` only once the transaction commits: a rolled-back number is
    given out again.
    """
    version = int(q("PRAGMA data_version")[0][0])
    continued = committed[0] if committed is not None and committed[1] == version else None
    return next_number(q, continued), version


def keep_txn_floor(q: Query, stream_id: int, below_offset: int | None = None) -> None:
    """Before deleting stream ``stream_id``'s records below ``below_offset`` (all if None):
    keep their highest txn in the ``counters`` floor, so that :func:`last_txn` never goes
    back and no number is given out twice once they are gone. Every ``DELETE FROM
    chunks`` runs this first, in the same transaction."""
    q(_TXN_FLOOR_SQL, (stream_id, (1 << 63) - 1 if below_offset is None else below_offset))
