"""Export under hostile conditions (issue 9): staging collisions, file modes, bad arguments,
a full disk, steady writes during ``follow=False``, and damaged records."""

from __future__ import annotations

import errno
import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream.archive import ArchiveReader
from sqlstream.errors import InvalidArgument, SqlstreamError, StorageFull, WriteError
from sqlstream.export import export_status, trim_exported

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def closed_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def records_in_closed_archives(directory: Path) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for f in closed_files(directory):
        with ArchiveReader(f) as r:
            out += [(m["stream"], int(m["offset"])) for m, _ in r]
    return out


def assert_every_trimmed_record_in_exactly_one_archive(
    directory: Path, stream: str, trimmed_below: int
) -> None:
    seen = [o for s, o in records_in_closed_archives(directory) if s == stream]
    for offset in range(trimmed_below):
        assert seen.count(offset) == 1, f"trimmed record {stream}@{offset} is in {seen.count(offset)} archives"


# --------------------------------------------------------------------------- item 1: staging

# Dies (SIGKILL, no cleanup) right after the archive is committed as pending, before it is
# delivered: the exact window of the staging collision.
KILL_AFTER_COMMIT = r"""
import os, signal, sys
import sqlstream
from sqlstream import export as ex
ex._Exporter.deliver = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
db = sqlstream.open(sys.argv[1])
db.export(sys.argv[3], sys.argv[2])
"""


def _kill_after_commit(path: str, directory: Path, stream: str) -> None:
    child = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMIT, path, str(directory), stream],
                           env=_env(), capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("other", ["a_b", "a:b"])
def test_exports_whose_names_differ_in_slash_never_lose_trimmed_records(tmp_path: Path, other: str) -> None:
    path, directory = str(tmp_path / "src.db"), tmp_path / "archives"
    with sqlstream.open(path) as db:
        a, b = db.create_stream("a/b"), db.create_stream(other)
        a.extend([f"a{i}".encode() for i in range(100)])
        b.extend([f"b{i}".encode() for i in range(100)])
        _kill_after_commit(path, directory, "a/b")  # A dies between pending commit and delivery
        assert export_status(db, "a/b").pending == 1
        db.export(other, directory)  # B, same directory
        db.export("a/b", directory)  # A's re-run
        trimmed = trim_exported(db, "a/b")["a/b"]
        assert trimmed == 100
        assert_every_trimmed_record_in_exactly_one_archive(directory, "a/b", 100)
        assert_every_trimmed_record_in_exactly_one_archive(directory, other, 0)
        assert sorted(o for s, o in records_in_closed_archives(directory) if s == other) == list(range(100))


@pytest.mark.multiprocess
def test_a_staged_archive_that_vanished_is_exported_again_not_marked_delivered(tmp_path: Path) -> None:
    path, directory = str(tmp_path / "src.db"), tmp_path / "archives"
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        s.extend([f"r{i}".encode() for i in range(50)])
        _kill_after_commit(path, directory, "s")
        staging = directory / ".sqlstream-staging"
        staged = [p for p in staging.rglob("*") if p.is_file() and p.name != "lock"]
        assert len(staged) == 1
        staged[0].unlink()  # e.g. another process cleaning the staging folder
        result = db.export("s", directory)
        assert result.records == 50
        assert export_status(db, "s").pending == 0
        assert trim_exported(db, "s") == {"s": 50}
        assert_every_trimmed_record_in_exactly_one_archive(directory, "s", 50)


@pytest.mark.multiprocess
def test_a_foreign_file_under_the_final_name_is_not_taken_for_the_lost_archive(tmp_path: Path) -> None:
    path, directory = str(tmp_path / "src.db"), tmp_path / "archives"
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        s.extend([f"r{i}".encode() for i in range(50)])
        _kill_after_commit(path, directory, "s")
        staged = [p for p in (directory / ".sqlstream-staging").rglob("*") if p.is_file() and p.name != "lock"]
        (directory / staged[0].name).write_bytes(b"")  # someone else's file under that name
        staged[0].unlink()
        db.export("s", directory)
        assert trim_exported(db, "s") == {"s": 50}
        assert_every_trimmed_record_in_exactly_one_archive(directory, "s", 50)


def test_exports_of_names_that_differ_in_slash_stage_in_different_folders(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    for name in ("a/b", "a_b", "a:b"):
        db.create_stream(name).append(b"x")
        db.export(name, tmp_path)
    folders = sorted(os.listdir(tmp_path / ".sqlstream-staging"))
    assert len(folders) == 3
