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

A copy made any other way (``cp``, a file-system snapshot, a Litestream restore, a file
shipped to many devices from one template) cannot be forked when it is made. It is
noticed when it is first opened for writing where it now is, before it writes anything:
the file keeps the places it has been opened for writing at (fingerprints of machine,
file system and inode, :func:`location`), and a writable open at a place not among them
forks it (:func:`settle`) if it had been noted anywhere else. A file moved to another
file system, or opened from a second machine or a container with a host name of its own,
is forked once too; that costs a ``file_lineage`` row and nothing else (its new records
take a new id, the ones it had keep theirs), and the place is then known.

Functions take ``q`` (a :class:`~sqlstream.connection.Query`): one SQL statement with
bound parameters, returning its rows.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass

from .connection import Query
from .txn import last_txn

__all__ = ["Identity", "read_identity", "fork", "location", "known_place", "settle", "forget_places"]

_NEW_ID_SQL = "random() & 9223372036854775807"  # a positive 63-bit random number
# ``counters`` rows ``file_place/<location>`` (value: when first noted, µs): the places
# the file has been opened for writing at since it last became a copy.
_PLACE = "file_place/"
_PLACE_END = "file_place0"  # '0' sorts right after '/': the end of the prefix range


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


def location(path: str) -> int | None:
    """A positive 63-bit fingerprint of where the file at ``path`` lives, or None when it
    cannot be told (no such file: a VFS of its own).

    It hashes the machine id (``/etc/machine-id`` where there is one), the host name, the
    file system and the inode: a copy on the same machine has another inode, elsewhere
    another machine. Not the path: a file moved or renamed, hard-linked or bind-mounted
    into a container is the same file.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    machine = b""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(candidate, "rb") as fh:
                machine = fh.read(256).strip()
            break
        except OSError:
            continue
    parts = [machine, socket.gethostname().encode("utf-8", "surrogateescape"),
             str(st.st_dev).encode(), str(st.st_ino).encode()]
    digest = hashlib.blake2b(b"\0".join(parts), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def _place(where: int) -> str:
    return f"{_PLACE}{where}"


def known_place(q: Query, where: int) -> bool:
    """Whether the file has been opened for writing at ``where`` (a :func:`location`)
    since it last became a copy: one read, no transaction needed."""
    return bool(q("SELECT 1 FROM counters WHERE name = ?", (_place(where),)))


def settle(q: Query, where: int, now_us: int) -> bool:
    """At a writable open in a place the file has not been at (not :func:`known_place`):
    fork it (:func:`fork`) if it has been noted anywhere else before (it is a copy, or a
    restore), then note ``where``. Returns whether it forked. Runs in the caller's write
    transaction. A file from before places were kept is noted without a fork."""
    if known_place(q, where):
        return False
    elsewhere = bool(q("SELECT 1 FROM counters WHERE name > ? AND name < ? LIMIT 1", (_PLACE, _PLACE_END)))
    if elsewhere:
        fork(q)
        # The places the original has been at are its own; this file starts afresh here.
        q("DELETE FROM counters WHERE name > ? AND name < ?", (_PLACE, _PLACE_END))
    q("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (_place(where), now_us))
    return elsewhere


def forget_places(q: Query) -> None:
    """Drop every noted place (a copy being made that will note its own)."""
    q("DELETE FROM counters WHERE name > ? AND name < ?", (_PLACE, _PLACE_END))
