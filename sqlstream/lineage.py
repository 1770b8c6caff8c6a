"""A file's identity, and the identities it had before it was copied (migration 0011).

Every sqlstream file has a random ``file_id`` (``counters`` row, migration 0006). The
JetStream relay names each record it forwards by it, so it must never name two different
records. A copy made by :meth:`sqlstream.Database.backup` shares every record up to its
last commit with its original, and then both files go on writing different records at
the same offsets. So the copy is given a new id at once (:func:`fork`), and the id it had
is kept in ``file_lineage`` with that last commit (``upto_txn``): a record keeps the
identity of the file that wrote it (:meth:`Identity.origin`). Resending a shared record
from the copy is then the same message the original sent (dropped by the server's
duplicate window), and the copy's new records never collide with the original's.

Functions take ``q`` (a :class:`~sqlstream.connection.Query`): one SQL statement with
bound parameters, returning its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .connection import Query
from .txn import last_txn

__all__ = ["Identity", "read_identity", "fork"]

_NEW_ID_SQL = "random() & 9223372036854775807"  # a positive 63-bit random number


@dataclass(frozen=True)
class Identity:
    """``file_id`` now, and ``ancestors``: (upto_txn, file_id) of the identities the file
    had before it was copied, oldest first (``upto_txn`` ascending)."""

    file_id: int
    ancestors: tuple[tuple[int, int], ...] = ()

    def origin(self, txn: int) -> int:
        """The identity of the file that wrote the records of commit ``txn``."""
        for upto, file_id in self.ancestors:
            if txn <= upto:
                return file_id
        return self.file_id

    def upto(self, file_id: int) -> int | None:
        """The last commit written under ``file_id``: None for the current id (no limit) and
        for an id that is not this file's; else its ``upto_txn``."""
        for upto, known in self.ancestors:
            if known == file_id:
                return upto
        return None

    def owns(self, file_id: int) -> bool:
        """Whether ``file_id`` is this file's identity, now or before a copy."""
        return file_id == self.file_id or any(known == file_id for _upto, known in self.ancestors)

    @property
    def copied_at(self) -> int:
        """The last commit shared with the file this one was copied from (0: not a copy)."""
        return self.ancestors[-1][0] if self.ancestors else 0


def read_identity(q: Query) -> Identity:
    """The file's identity (creating ``file_id`` if a file lacks it, inside the caller's
    write transaction; in a read-only one the row must exist)."""
    rows = q("SELECT value FROM counters WHERE name = 'file_id'")
    if not rows:
        q(f"INSERT INTO counters (name, value) VALUES ('file_id', {_NEW_ID_SQL})")
        rows = q("SELECT value FROM counters WHERE name = 'file_id'")
    ancestors = tuple((int(upto), int(fid)) for fid, upto in
                      q("SELECT file_id, upto_txn FROM file_lineage ORDER BY upto_txn, rowid"))
    return Identity(int(rows[0][0]), ancestors)


def fork(q: Query) -> Identity:
    """Make this file a copy with its own identity: keep the current ``file_id`` in
    ``file_lineage`` with the last commit, and draw a new one (never one the file had).
    Runs in the caller's write transaction; returns the new identity."""
    old = read_identity(q)
    q("INSERT INTO file_lineage (file_id, upto_txn) VALUES (?, ?) "
      "ON CONFLICT (file_id) DO UPDATE SET upto_txn = max(upto_txn, excluded.upto_txn)",
      (old.file_id, last_txn(q)))
    while True:
        q(f"UPDATE counters SET value = {_NEW_ID_SQL} WHERE name = 'file_id'")
        new = read_identity(q)
        if new.file_id != old.file_id and not any(fid == new.file_id for _u, fid in new.ancestors):
            return new
