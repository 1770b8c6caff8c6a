"""A file copied by other means than backup() gets an identity of its own (lineage.settle).

The relay names records by the identity of the file that wrote them; two files that
share one would name different records alike, and the server would drop one as a
duplicate. A cp, a snapshot or a restore cannot be told at the time it is made, so a
writable open at a place the file has not been at forks it before it writes anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sqlstream


def identity(path: Path, readonly: bool = False) -> tuple[int, list[tuple[int, int]]]:
    with sqlstream.open(str(path), readonly=readonly) as db:
        file_id = db.query("SELECT value FROM counters WHERE name = 'file_id'").rows[0][0]
        lineage = db.query("SELECT file_id, upto_txn FROM file_lineage ORDER BY upto_txn").rows
    return file_id, lineage


def make(path: Path) -> int:
    with sqlstream.open(str(path)) as db:
        db.create_stream("a").extend([b"x", b"y"])
        return int(db.query("SELECT txn FROM last_txn").rows[0][0])


def test_a_copy_made_with_cp_is_forked_at_its_first_writable_open_and_the_original_is_not(tmp_path: Path) -> None:
    head = make(tmp_path / "app.db")
    original, _ = identity(tmp_path / "app.db")
    shutil.copyfile(tmp_path / "app.db", tmp_path / "copy.db")
    assert identity(tmp_path / "copy.db", readonly=True) == (original, [])  # a reader changes nothing
    copy, lineage = identity(tmp_path / "copy.db")
    assert copy != original and lineage == [(original, head)]
    assert identity(tmp_path / "copy.db") == (copy, lineage)  # forked once, then at home
    assert identity(tmp_path / "app.db") == (original, [])


def test_a_file_moved_or_renamed_keeps_its_identity(tmp_path: Path) -> None:
    make(tmp_path / "app.db")
    before = identity(tmp_path / "app.db")
    (tmp_path / "moved").mkdir()
    os.rename(tmp_path / "app.db", tmp_path / "moved" / "renamed.db")
    assert identity(tmp_path / "moved" / "renamed.db") == before


def test_a_backup_copy_is_forked_once_by_backup_and_not_again_when_opened(tmp_path: Path) -> None:
    make(tmp_path / "app.db")
    with sqlstream.open(str(tmp_path / "app.db")) as db:
        db.backup(str(tmp_path / "copy.db"))
    first = identity(tmp_path / "copy.db")
    assert len(first[1]) == 1
    assert identity(tmp_path / "copy.db") == first


def test_a_copy_restored_over_the_original_is_a_new_identity_that_keeps_the_shared_records_origin(
        tmp_path: Path) -> None:
    """Restoring means putting a copy in the file's place: a new inode there."""
    head = make(tmp_path / "app.db")
    original, _ = identity(tmp_path / "app.db")
    shutil.copyfile(tmp_path / "app.db", tmp_path / "saved.db")
    with sqlstream.open(str(tmp_path / "app.db")) as db:
        db.stream("a").append(b"z")  # written after the copy, by the original only
    os.rename(tmp_path / "app.db", tmp_path / "app.db.broken")
    shutil.copyfile(tmp_path / "saved.db", tmp_path / "app.db")
    restored, lineage = identity(tmp_path / "app.db")
    assert restored != original and lineage == [(original, head)]
