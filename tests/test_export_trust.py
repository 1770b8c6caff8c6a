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
from sqlstream.errors import InvalidArgument, StorageFull
from sqlstream.archive.export import export_status, trim_exported

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
from sqlstream.archive import export as ex
ex._Exporter.deliver = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
db = sqlstream.open(sys.argv[1])
storage = {"driver": "filesystem", "root": sys.argv[4]} if len(sys.argv) > 4 else None
db.export(sys.argv[3], sys.argv[2], storage=storage)
"""


def _kill_after_commit(path: str, directory: Path, stream: str, *storage_root: str) -> None:
    child = subprocess.run([sys.executable, "-c", KILL_AFTER_COMMIT, path, str(directory), stream, *storage_root],
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


@pytest.mark.multiprocess
def test_an_archive_neither_staged_nor_uploaded_is_exported_again(tmp_path: Path) -> None:
    path, directory, root = str(tmp_path / "src.db"), tmp_path / "staging", tmp_path / "objects"
    storage = {"driver": "filesystem", "root": str(root)}
    with sqlstream.open(path) as db:
        db.create_stream("s").extend([f"r{i}".encode() for i in range(30)])
        _kill_after_commit(path, directory, "s", str(root))
        for p in (directory / ".sqlstream-staging").rglob("*"):
            if p.is_file() and p.name != "lock":
                p.unlink()
        assert db.export("s", directory, storage=storage).records == 30
        assert trim_exported(db, "s") == {"s": 30}
        assert_every_trimmed_record_in_exactly_one_archive(root, "s", 30)


def test_exports_of_names_that_differ_in_slash_stage_in_different_folders(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    folders = set()
    for name in ("a/b", "a_b", "a:b"):
        db.create_stream(name).append(b"x")
        db.export(name, tmp_path, progress=lambda p: folders.update(os.listdir(tmp_path / ".sqlstream-staging")))
    assert len(folders) == 3


# --------------------------------------------------------------------------- item 6: file modes


def modes_under(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode) for p in [directory, *directory.rglob("*")]}


@pytest.mark.parametrize("compress", [None, "gzip"])
def test_export_files_are_no_more_readable_than_the_database(tmp_path: Path, compress: str | None) -> None:
    path = tmp_path / "private.db"
    with sqlstream.open(path) as db:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        s = db.create_stream("s")
        s.extend([os.urandom(300) for _ in range(20)])
        _kill_after_commit(str(path), tmp_path / "out", "s")  # leaves a staged, pending archive
        # The staging folder and lock go when a run ends: look while the runs work too.
        modes = modes_under(tmp_path / "out")
        snap = lambda p: modes.update(modes_under(tmp_path / "out"))  # noqa: E731
        db.export("s", tmp_path / "out", roll_size_mb=0.001, compress=compress, progress=snap)
        s.extend([os.urandom(300) for _ in range(5)])
        db.export("s", tmp_path / "out", compress=compress, progress=snap)
    modes.update(modes_under(tmp_path / "out"))
    assert len(modes) > 5 and any(name.endswith("lock") for name in modes)
    for name, mode in modes.items():
        assert mode & 0o077 == 0, f"{name} has mode {mode:o}, the database 600"


def test_export_files_follow_a_group_readable_database(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with sqlstream.open(path) as db:
        os.chmod(path, 0o640)
        db.create_stream("s").extend([b"x"] * 3)
        db.export("s", tmp_path / "out")
    for name, mode in modes_under(tmp_path / "out").items():
        assert mode & 0o027 == 0, f"{name} has mode {mode:o}, the database 640"
    archive = closed_files(tmp_path / "out")[0]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_compressed_copy_keeps_the_mode_of_its_source(tmp_path: Path, compression: str) -> None:
    from sqlstream.archive.callbacks import compress_file

    if compression == "zstd":
        pytest.importorskip("zstandard")
    source = tmp_path / "a.events"
    source.write_bytes(b"x" * 1000)
    os.chmod(source, 0o600)
    target = compress_file(str(source), compression)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_a_file_moved_across_filesystems_keeps_its_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlstream.archive import callbacks

    source = tmp_path / "a.events"
    source.write_bytes(b"x" * 1000)
    os.chmod(source, 0o600)
    real_replace = os.replace

    def cross_device(src: str, dst: str) -> None:  # what rename(2) says across filesystems
        if os.path.basename(src) == "a.events":
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(callbacks.os, "replace", cross_device)
    target = callbacks.move_file(str(source), str(tmp_path / "elsewhere"))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert not source.exists()


def test_roll_manager_files_take_the_mode_asked_for(tmp_path: Path) -> None:
    from sqlstream.archive.rolling import WritingRollManager

    with WritingRollManager("x-%Y.events", directory=tmp_path / "rolls", file_mode=0o600) as manager:
        manager.write({"k": "v"}, b"payload")
    (archive,) = list((tmp_path / "rolls").iterdir())
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- item 12: bad input

BAD_CALLS: list[tuple[str, Any, dict[str, Any]]] = [
    ("directory None", ("s", None), {}),
    ("streams True", (True, "DIR"), {}),
    ("streams int", (7, "DIR"), {}),
    ("template int", ("s", "DIR"), {"template": 1}),
    ("template lone surrogate", ("s", "DIR"), {"template": "x\udc80-%Y.events"}),
    ("template NUL", ("s", "DIR"), {"template": "x\0y"}),
    ("template 300 characters", ("s", "DIR"), {"template": "t" * 300}),
    ("batch 2**64", ("s", "DIR"), {"batch": 2**64}),
    ("roll_size_mb inf", ("s", "DIR"), {"roll_size_mb": math.inf}),
    ("roll_size_mb nan", ("s", "DIR"), {"roll_size_mb": math.nan}),
    ("roll_minutes nan", ("s", "DIR"), {"roll_minutes": math.nan}),
    ("roll_minutes inf", ("s", "DIR"), {"roll_minutes": math.inf}),
    ("directory under /dev/null", ("s", "/dev/null/x"), {}),
    ("directory with NUL", ("s", "DIR\0x"), {}),
    ("directory lone surrogate", ("s", "DIR\udc80"), {}),
]


@pytest.mark.parametrize("label, args, kwargs", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_export_arguments_raise_invalid_argument_and_change_nothing(
    db: sqlstream.Database, tmp_path: Path, label: str, args: Any, kwargs: dict[str, Any]
) -> None:
    s = db.create_stream("s")
    s.extend([b"a", b"b"])
    out = tmp_path / "out"
    args = tuple(str(out) + a[3:] if isinstance(a, str) and a.startswith("DIR") else a for a in args)
    with pytest.raises(InvalidArgument):
        db.export(*args, **kwargs)
    with pytest.raises(InvalidArgument):  # no export was registered
        export_status(db, "s")
    assert not out.exists()
    assert [r.value for r in s.read(0, 10)] == [b"a", b"b"]


def test_a_directory_that_is_a_file_is_an_invalid_argument(db: sqlstream.Database, tmp_path: Path) -> None:
    db.create_stream("s").append(b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidArgument):
        db.export("s", tmp_path / "file" / "sub")


FULL_DISK_CHILD = r"""
import resource, signal, sys
import sqlstream
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
db = sqlstream.open(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
try:
    db.export("s", sys.argv[2], roll_size_mb=1, compress=sys.argv[4] or None)
except Exception as exc:
    print(type(exc).__name__, isinstance(exc, sqlstream.errors.SqlstreamError), flush=True)
    import os
    os._exit(0)
print("finished", flush=True)
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize("compress", ["", "gzip"])
def test_a_full_disk_during_export_is_storage_full_and_the_rerun_is_exact(tmp_path: Path, compress: str) -> None:
    path, directory = str(tmp_path / "src.db"), tmp_path / "out"
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        s.extend([os.urandom(1000) for _ in range(300)])
        db.export("s", directory, roll_size_mb=0.05)  # some archives closed before the disk fills
        s.extend([os.urandom(1000) for _ in range(300)])
        before = export_status(db, "s").streams["s"]
    # The database is closed (checkpointed), so only the export's archive reaches the limit.
    child = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, path, str(directory), str(150_000), compress],
                           env=_env(), capture_output=True, text=True, timeout=60)
    assert child.stdout.split() == ["StorageFull", "True"], child.stdout + child.stderr
    with sqlstream.open(path) as db:
        assert export_status(db, "s").streams["s"] == before  # the failed run committed nothing
        result = db.export("s", directory)
        assert result.offsets == {"s": 600}
        assert sorted(records_in_closed_archives(directory)) == [("s", i) for i in range(600)]
        assert trim_exported(db, "s") == {"s": 600}


def test_an_os_error_while_delivering_is_converted_and_the_rerun_finishes_it(
    db: sqlstream.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlstream.archive import export as ex

    db.create_stream("s").extend([b"x"] * 10)

    def no_space(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ex.os, "link", no_space)
    monkeypatch.setattr(ex.os, "replace", no_space)
    with pytest.raises(StorageFull):
        db.export("s", tmp_path / "out")
    monkeypatch.undo()
    assert export_status(db, "s").pending == 1
    assert db.export("s", tmp_path / "out").recovered == 1
    assert sorted(records_in_closed_archives(tmp_path / "out")) == [("s", i) for i in range(10)]


# --------------------------------------------------------------------------- item 14: follow=False


def test_export_without_follow_stops_at_what_was_committed_when_it_started(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    s = db.create_stream("s")
    s.extend([b"seed"] * 100)
    appended = 0

    def write_more(progress: Any) -> None:  # a writer that always keeps ahead of the export
        nonlocal appended
        if appended < 2000:
            s.extend([b"new"] * 10)
            appended += 10

    result = db.export("s", tmp_path / "out", batch=5, progress=write_more)
    assert result.records == 100 and result.offsets == {"s": 100}
    rest = db.export("s", tmp_path / "out")
    assert rest.records == s.info().next_offset - 100
    assert sorted(records_in_closed_archives(tmp_path / "out")) == [("s", i) for i in range(s.info().next_offset)]


@pytest.mark.slow
def test_export_without_follow_returns_under_steady_writes(db: sqlstream.Database, tmp_path: Path) -> None:
    s = db.create_stream("s")
    s.extend([b"seed"] * 100)
    stop_writer, stop_export = threading.Event(), threading.Event()

    def writer() -> None:
        with sqlstream.open(db.path) as other:
            target = other.stream("s")
            while not stop_writer.is_set():
                target.extend([b"w"] * 20)

    thread = threading.Thread(target=writer)
    thread.start()
    results: list[Any] = []
    try:
        time.sleep(0.2)
        committed = s.info().next_offset
        exporter = threading.Thread(target=lambda: results.append(
            db.export("s", tmp_path / "out", batch=50, stop=stop_export)))
        exporter.start()
        exporter.join(timeout=10)
        returned = not exporter.is_alive()
    finally:
        stop_export.set()
        stop_writer.set()
        thread.join()
        exporter.join()
    assert returned, "export(follow=False) was still chasing new records after 10 s"
    assert results[0].offsets["s"] >= committed
    db.export("s", tmp_path / "out")  # the rest, now that writes stopped
    total = s.info().next_offset
    assert sorted(records_in_closed_archives(tmp_path / "out")) == [("s", i) for i in range(total)]


# --------------------------------------------------------------------------- item 13: damaged records


def test_export_archives_the_stored_bytes_of_damaged_records(tmp_path: Path) -> None:
    path, directory = tmp_path / "src.db", tmp_path / "out"
    with sqlstream.open(path) as db:
        db.create_stream("t").extend(["fine", "bad utf-8", "fine too"])
        db.create_stream("j").extend([{"a": 1}, {"b": 2}])
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE chunks SET data = CAST(X'66FF80' AS TEXT) WHERE offset = 1 AND stream_id = "
                    "(SELECT id FROM streams WHERE name = 't')")
        raw.execute("UPDATE chunks SET data = '{bad' WHERE offset = 0 AND stream_id = "
                    "(SELECT id FROM streams WHERE name = 'j')")
    raw.close()
    with sqlstream.open(path) as db:
        db.export(["t", "j"], directory)
    payloads = {}
    for f in closed_files(directory):
        with ArchiveReader(f) as r:
            payloads.update({(m["stream"], int(m["offset"])): p for m, p in r})
    assert payloads[("t", 1)] == b"\x66\xff\x80"
    assert payloads[("j", 0)] == b"{bad"
    assert payloads[("t", 2)] == b"fine too"
