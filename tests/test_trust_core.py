"""Issue 9, database core: query() never writes, close() leaves one self-contained file,
backup(), the doorbell directory's trust checks, hostile files at the database path."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream import errors

# --------------------------------------------------------------------------- item 3


def _records(db: sqlstream.Database) -> int:
    return int(db.query("SELECT count(*) FROM chunks").rows[0][0])


WRITES = [
    "DELETE FROM chunks",
    "INSERT INTO streams (name, created_at, metadata) VALUES ('evil', 0, '{}')",
    "UPDATE streams SET sealed_at = 1",
    "DROP TABLE chunks",
    "CREATE TABLE evil (x)",
    "CREATE TEMP TABLE evil (x)",
    "CREATE TEMP VIEW streams AS SELECT 1",  # would shadow the library's own table
    "PRAGMA query_only = 0",
    "PRAGMA writable_schema = 1",
    "PRAGMA user_version = 99",
    "PRAGMA journal_mode = delete",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA incremental_vacuum",
    "PRAGMA optimize",
    "ANALYZE",
    "VACUUM",
    "REINDEX",
    "SAVEPOINT x",
]


@pytest.mark.parametrize("sql", WRITES)
def test_query_refuses_every_write_and_setting_change(db: sqlstream.Database, sql: str) -> None:
    db.create_stream("s").extend([b"a", b"b", b"c"])
    with pytest.raises(errors.ReadOnlyDatabase) as info:
        db.query(sql)
    assert info.value.hint == "query() is read-only; use the API to change data"
    assert _records(db) == 3
    assert db.query("PRAGMA user_version").rows[0][0] < 99
    assert db.query("SELECT name FROM streams").rows == [("s",)]
    assert db.stream("s").info().next_offset == 3


def test_query_only_off_then_delete_cannot_remove_records(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend([b"a", b"b"])
    with pytest.raises(errors.ReadOnlyDatabase):
        db.query("PRAGMA query_only=0")
    with pytest.raises(errors.ReadOnlyDatabase):
        db.query("DELETE FROM chunks")
    assert [r.value for r in s.read(0, 10)] == [b"a", b"b"]
    # The thread's ordinary read connection is still query-only.
    assert db.query("PRAGMA query_only").rows == [(1,)]


def test_query_cannot_attach_or_vacuum_into_a_new_file(db: sqlstream.Database, tmp_path: Path) -> None:
    db.create_stream("s").append(b"x")
    target = tmp_path / "copy.db"
    for sql in (f"ATTACH '{target}' AS other", f"VACUUM INTO '{target}'", f"ATTACH '{db.path}' AS again"):
        with pytest.raises(errors.ReadOnlyDatabase):
            db.query(sql)
        assert not target.exists()


def test_cli_sql_vacuum_into_creates_no_file(db_path: str, tmp_path: Path) -> None:
    from sqlstream.cli import main

    with sqlstream.open(db_path) as db:
        db.create_stream("s").append(b"x")
    target = tmp_path / "stolen.db"
    code = main(["--db", db_path, "sql", f"VACUUM INTO '{target}'"])
    assert code != 0
    assert not target.exists()


def test_query_still_reads_schema_and_settings(db: sqlstream.Database) -> None:
    db.create_stream("s").append({"a": 1})
    assert db.query("PRAGMA journal_mode").rows == [("wal",)]
    assert db.query("PRAGMA table_info(streams)").rows
    assert db.query("SELECT name FROM pragma_table_info('chunks') LIMIT 1").rows
    assert db.query(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) SELECT sum(x) FROM c"
    ).rows == [(6,)]
    assert db.query("SELECT count(*) FROM chunks WHERE stream_id = ?", (1,)).rows == [(1,)]


# --------------------------------------------------------------------------- item 7


def _copy_db_only(src: str, dst_dir: Path) -> str:
    dst_dir.mkdir()
    dst = str(dst_dir / "copy.db")
    shutil.copyfile(src, dst)
    return dst


def test_closed_file_is_self_contained_after_a_blocking_wait(db_path: str, tmp_path: Path) -> None:
    with sqlstream.open(db_path) as db:
        s = db.create_stream("s")
        s.extend([f"r{i}" for i in range(500)])
        # A blocking wait starts the watcher, whose read-only connection used to close last.
        assert s.read(500, timeout=0.05) == []
        s.append("last")
    assert not os.path.exists(db_path + "-wal")
    assert not os.path.exists(db_path + "-shm")
    copy = _copy_db_only(db_path, tmp_path / "elsewhere")
    with sqlstream.open(copy, readonly=True) as db2:
        assert db2.stream("s").info().next_offset == 501
        assert db2.stream("s").read(500, 1)[0].value == "last"


def test_last_of_two_databases_closing_checkpoints(db_path: str, tmp_path: Path) -> None:
    writer = sqlstream.open(db_path)
    reader = sqlstream.open(db_path, readonly=True)
    writer.create_stream("s").extend([b"x"] * 50)
    assert reader.stream("s").read(50, timeout=0.02) == []
    writer.close()  # not the last one here: the WAL may stay while `reader` is open
    reader.close()
    assert not os.path.exists(db_path + "-wal")
    copy = _copy_db_only(db_path, tmp_path / "elsewhere")
    with sqlstream.open(copy) as db2:
        assert db2.stream("s").info().next_offset == 50


def test_backup_of_a_live_file_is_consistent_and_private(db_path: str, tmp_path: Path) -> None:
    import threading

    dest = str(tmp_path / "backup.db")
    with sqlstream.open(db_path) as db:
        s = db.create_stream("s")
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                s.extend([b"y" * 100] * 20)  # each batch one transaction

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while s.info().next_offset < 2000:
                pass
            db.backup(dest)
        finally:
            stop.set()
            writer.join()
        with pytest.raises(errors.InvalidArgument):
            db.backup(dest)  # never overwrites unless asked
        db.backup(dest, overwrite=True)
        final = s.info().next_offset
    assert stat.S_IMODE(os.stat(dest).st_mode) & 0o077 == 0
    assert not os.path.exists(dest + "-wal")
    with sqlstream.open(dest) as copy:
        assert copy.check().ok
        info = copy.stream("s").info()
        assert info.next_offset == final


def test_backup_taken_mid_writes_holds_whole_transactions(db_path: str, tmp_path: Path) -> None:
    import threading

    dest = str(tmp_path / "mid.db")
    with sqlstream.open(db_path) as db:
        s = db.create_stream("s")
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                s.extend([b"z"] * 20)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while s.info().next_offset < 1000:
                pass
            db.backup(dest)
        finally:
            stop.set()
            writer.join()
    with sqlstream.open(dest) as copy:
        assert copy.check().ok
        assert copy.stream("s").info().next_offset % 20 == 0  # no partial batch


def test_cli_backup_writes_a_copy_and_refuses_to_overwrite(db_path: str, tmp_path: Path) -> None:
    from sqlstream.cli import main

    with sqlstream.open(db_path) as db:
        db.create_stream("s").append(b"x")
    dest = str(tmp_path / "cli-backup.db")
    assert main(["--db", db_path, "backup", dest]) == 0
    assert main(["--db", db_path, "backup", dest]) != 0
    assert main(["--db", db_path, "backup", "--force", dest]) == 0
    with sqlstream.open(dest, readonly=True) as copy:
        assert copy.stream("s").info().next_offset == 1


# --------------------------------------------------------------------------- item 6 (doorbell)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own, where the doorbell directory goes."""
    import tempfile

    from sqlstream import wakeup

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(wakeup, "_warned", set(), raising=False)
    monkeypatch.setattr(wakeup, "_cleaned", set(), raising=False)
    return tmp


def _bell_root(tmp: Path) -> Path:
    return tmp / f"sqlstream-{os.getuid()}"


def _wakes_on_foreign_commit(db: sqlstream.Database) -> None:
    """A blocked read wakes for a commit by a writer that does not ring (a raw connection)."""
    import threading

    s = db.stream("s")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.extend(s.read(1, timeout=5)))
    t.start()
    import time

    time.sleep(0.1)
    raw = apsw.Connection(db.path)
    raw.execute(
        "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
        "SELECT id, 1, 1, 0, 0, 'bytes', x'41' FROM streams WHERE name = 's'"
    )
    raw.execute("UPDATE streams SET next_offset = 2, byte_length = 2 WHERE name = 's'")
    raw.close()
    t.join(5)
    assert got, "the blocked read never woke"


@pytest.mark.parametrize("hostile", ["world-writable", "symlink"])
def test_unsafe_doorbell_directory_is_refused_and_readers_poll(
    private_tmp: Path, tmp_path: Path, hostile: str
) -> None:
    root = _bell_root(private_tmp)
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    if hostile == "world-writable":
        root.mkdir()
        os.chmod(root, 0o777)
        planted = root
    else:
        root.symlink_to(elsewhere)
        planted = elsewhere
    with pytest.warns(errors.SqlstreamWarning, match="doorbell"):
        db = sqlstream.open(str(tmp_path / "d.db"), wakeup="notify")
    try:
        db.create_stream("s").append(b"0")
        _wakes_on_foreign_commit(db)
        assert list(planted.iterdir()) == []  # nothing of ours went into it
    finally:
        db.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_doorbell_directory_of_another_user_is_refused(private_tmp: Path, tmp_path: Path) -> None:
    root = _bell_root(private_tmp)
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.warns(errors.SqlstreamWarning, match="belongs to uid 65534"):
        db = sqlstream.open(str(tmp_path / "d.db"), wakeup="notify")
    try:
        db.create_stream("s").append(b"0")
        _wakes_on_foreign_commit(db)
        assert list(root.iterdir()) == []
    finally:
        db.close()


def test_stale_doorbell_folders_are_removed_live_ones_kept(private_tmp: Path, tmp_path: Path) -> None:
    import socket
    import time

    root = _bell_root(private_tmp)
    root.mkdir(mode=0o700)
    old = time.time() - 3600

    def folder(name: str, bells: int, live: bool = False, age: float = old) -> Path:
        f = root / name
        f.mkdir(mode=0o700)
        for i in range(bells):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(f / f"99-{i}.bell"))
            if live:
                keep.append(sock)
            else:
                sock.close()  # the process died: the socket file stays, nobody listens
        os.utime(f, (age, age))
        return f

    keep: list[socket.socket] = []
    try:
        stale = [folder(f"{i:x}-1", bells=i % 3) for i in range(1, 30)]
        live = folder("aa-1", bells=1, live=True)
        fresh = folder("bb-1", bells=0, age=time.time())
        other = root / "not-ours"
        other.mkdir()
        os.utime(other, (old, old))
        with sqlstream.open(str(tmp_path / "d.db")) as db:
            db.create_stream("s")
        assert not any(f.exists() for f in stale)
        assert live.exists() and fresh.exists() and other.exists()
    finally:
        for sock in keep:
            sock.close()


def test_doorbell_folder_in_use_by_a_live_process_is_kept_unused_one_removed(
    private_tmp: Path, tmp_path: Path
) -> None:
    """A doorbell folder whose announcement file a process still holds (its shared lock)
    is in use even with no bell bound, however old; once nobody holds it, it is stale."""
    import fcntl
    import time

    from sqlstream import wakeup

    root = _bell_root(private_tmp)
    root.mkdir(mode=0o700)
    old = time.time() - 3600
    folders = {}
    held = None
    try:
        for name in ("cc-1", "dd-1"):
            f = root / name
            f.mkdir(mode=0o700)
            fd = os.open(f / wakeup.ANNOUNCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            if name == "cc-1":
                fcntl.flock(fd, fcntl.LOCK_SH)  # a live process uses it
                held = fd
            else:
                os.close(fd)  # its process exited
            os.utime(f, (old, old))
            folders[name] = f
        with sqlstream.open(str(tmp_path / "d.db")) as db:
            db.create_stream("s")
        assert folders["cc-1"].exists()
        assert not folders["dd-1"].exists()
    finally:
        if held is not None:
            os.close(held)


def test_doorbell_files_are_private(private_tmp: Path, tmp_path: Path) -> None:
    with sqlstream.open(str(tmp_path / "d.db"), wakeup="notify") as db:
        s = db.create_stream("s")
        assert s.read(0, timeout=0.05) == []
        root = _bell_root(private_tmp)
        assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700
        for folder in root.iterdir():
            assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
            for bell in folder.iterdir():
                assert stat.S_IMODE(os.lstat(bell).st_mode) & 0o077 == 0


# --------------------------------------------------------------------------- items 14, 11: files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_at_the_database_path_is_refused_without_hanging(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt(**options: object) -> None:
        try:
            sqlstream.open(str(fifo), **options).close()  # type: ignore[arg-type]
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    for options in ({}, {"readonly": True}):
        outcome.clear()
        t = threading.Thread(target=attempt, kwargs=options, daemon=True)
        t.start()
        t.join(5)
        if t.is_alive():  # unblock the stuck open() so the thread can end, then fail
            with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                pass
            pytest.fail("open() hung on a FIFO")
        assert isinstance(outcome[0], errors.DatabaseError), outcome
        assert "not a regular file" in str(outcome[0])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_directory_as_database_path_says_so(tmp_path: Path) -> None:
    for options in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises(errors.DatabaseError, match="is a directory") as info:
            sqlstream.open(tmp_path, **options)  # type: ignore[arg-type]
        assert "I/O" not in str(info.value)


def _foreign(path: Path, version: int, tables: tuple[str, ...]) -> bytes:
    conn = apsw.Connection(str(path))
    for table in tables:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, what TEXT)")
        conn.execute(f"INSERT INTO {table} (what) VALUES ('theirs')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("version", "tables"),
    [(0, ("streams",)), (0, ("streams", "chunks", "counters")), (3, ("streams", "events")), (1, ("streams",))],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_sqlite_file_is_refused_before_anything_changes(
    tmp_path: Path, version: int, tables: tuple[str, ...], readonly: bool
) -> None:
    path = tmp_path / "theirs.db"
    before = _foreign(path, version, tables)
    with pytest.raises(errors.SchemaVersionError, match="some other program"):
        sqlstream.open(path, readonly=readonly)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.db"]
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(before).digest()


def test_apsw_class_names_stay_out_of_messages(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    with pytest.raises(errors.SqlstreamError) as info:
        sqlstream.open(missing)
    assert "Error:" not in str(info.value)
    with sqlstream.open(tmp_path / "ok.db") as db:
        with pytest.raises(errors.SqlstreamError) as info2:
            db.query("SELECT * FROM no_such_table")
        assert str(info2.value).startswith("no such table")
    converted = errors.convert(apsw.SQLError("SQLError: near \"x\": syntax error"))
    assert "SQLError" not in str(converted)


def test_vacuum_never_grows_a_small_file(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("s").extend([b"x"] * 10)
    before = os.path.getsize(db_path)
    for _ in range(2):
        with sqlstream.open(db_path) as db:
            report = db.maintain()
            assert report.bytes_after <= report.bytes_before
        assert os.path.getsize(db_path) <= before


@pytest.mark.parametrize("level", ["normal", "full"])
def test_synchronous_applies_to_every_connection(db_path: str, level: str) -> None:
    expected = {"normal": 1, "full": 2}[level]
    with sqlstream.open(db_path, synchronous=level) as db:
        db.create_stream("s").append(b"x")
        assert db.engine.write_conn().execute("PRAGMA synchronous").fetchall() == [(expected,)]
        assert db.engine.read_conn().execute("PRAGMA synchronous").fetchall() == [(expected,)]
        assert db.query("PRAGMA synchronous").rows == [(expected,)]
        generation = db.engine.notifier.generation  # the in-process wake-up, before append returns
        db.stream("s").append(b"y")
        assert db.engine.notifier.generation > generation
    with sqlstream.open(db_path, readonly=True, synchronous=level) as ro:
        assert ro.engine.read_conn().execute("PRAGMA synchronous").fetchall() == [(expected,)]
        assert ro.query("PRAGMA synchronous").rows == [(expected,)]
