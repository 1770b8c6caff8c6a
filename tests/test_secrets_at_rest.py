"""Write secrets at rest: the file holds only their SHA-256 (sqlstream.writesecrets).

Whoever can read the file (a backup, Datasette, ``sqlstream sql``, the sqlite3 shell) must
not learn a write secret. New files never hold one; files of schema version 9, which
stored them in plain text, are migrated (migration 10) so that no byte of any old secret
is left in the main file or its ``-wal``, including copies that earlier updates of the row
left in free space. The secret still works through ``db.writer``, ``Stream`` handles, seal
and import.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream import connection as cx
from sqlstream.archive.importing import import_archives
from sqlstream.errors import AccessDenied, StreamNotFound


def _file_bytes(path: str) -> bytes:
    """The main file and, if present, its -wal, as one blob to search."""
    out = b""
    for name in (path, path + "-wal"):
        if os.path.exists(name):
            with open(name, "rb") as fh:
                out += fh.read()
    return out


def test_a_new_file_holds_the_hash_never_the_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with sqlstream.open(path) as db:
        log = db.create_stream("log", secret=True)
        secret = log.write_secret
        assert secret is not None
        log.append(b"a")
        db.writer(secret).append(b"b")
        db.writer(secret).seal()
        # While open, after a checkpoint, and after close: nowhere in the files.
        assert secret.encode() not in _file_bytes(path)
        db.maintain(vacuum=False, optimize=False)
        assert secret.encode() not in _file_bytes(path)
    data = _file_bytes(path)
    assert secret.encode() not in data
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in data  # what it holds instead
    conn = sqlite3.connect(path)  # what a sqlite3 user sees
    try:
        assert conn.execute("SELECT write_secret_sha256 FROM streams").fetchall() == [
            (hashlib.sha256(secret.encode()).hexdigest(),)
        ]
        assert conn.execute("SELECT secret FROM stream_stats").fetchall() == [(1,)]
    finally:
        conn.close()


def test_the_secret_still_authorises_and_only_it(db: sqlstream.Database) -> None:
    log = db.create_stream("log", secret=True)
    secret = log.write_secret
    assert secret is not None
    with pytest.raises(AccessDenied):
        db.stream("log").append(b"x")
    with pytest.raises(StreamNotFound):
        db.writer(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(StreamNotFound):  # the hash is not a secret that writes
        db.writer(hashlib.sha256(secret.encode()).hexdigest())
    with pytest.raises(StreamNotFound):
        db.writer("\ud800")  # a lone surrogate hashes (surrogatepass) and matches nothing
    assert db.writer(secret).append(b"x") == 0
    with db.transaction():
        assert db.writer(secret).append(b"y", dedup_id="d") == 1  # the dedup path checks it too
    with pytest.raises(AccessDenied):
        db.stream("log").seal()
    assert db.writer(secret).seal() is True


def test_query_and_views_show_whether_a_secret_is_set_never_its_hash(db: sqlstream.Database) -> None:
    log = db.create_stream("log", secret=True)
    db.create_stream("open")
    digest = hashlib.sha256(str(log.write_secret).encode()).hexdigest()
    for sql in (
        "SELECT write_secret_sha256 FROM streams",
        "SELECT * FROM streams",
        "SELECT (SELECT group_concat(write_secret_sha256) FROM streams)",
        "WITH x AS (SELECT * FROM streams) SELECT write_secret_sha256 FROM x",
        "SELECT * FROM streams_now",
        "SELECT * FROM stream_stats",
    ):
        assert digest not in json.dumps(db.query(sql).rows), sql
    # Not usable as an oracle either: it reads as NULL in WHERE too.
    assert db.query("SELECT count(*) FROM streams WHERE write_secret_sha256 IS NOT NULL").rows == [(0,)]
    assert db.query("SELECT name, secret FROM stream_stats ORDER BY name").rows == [("log", 1), ("open", 0)]
    assert [(i.name, i.secret) for i in db.streams()] == [("log", True), ("open", False)]


# --------------------------------------------------------------------------- migration

def _version9_file(path: str, names: list[str]) -> dict[str, str]:
    """A file as sqlstream wrote it at schema version 9, with plain secrets in ``streams``.

    Each secret stream is then sealed, has its metadata changed and is trimmed, as the
    old code did, so that copies of the old row (secret included) are left in free space;
    enough streams come and go to split and free pages. Returns name -> secret.
    """
    plan = cx.load_migrations()
    conn = cx.connect(path, busy_timeout=5.0, synchronous="normal", create=True)
    try:
        cx.connection_wal(conn)
        for version, _name, sql in plan[:9]:
            with conn:
                for _ in conn.execute(sql):
                    pass
                conn.execute(f"PRAGMA user_version = {version}")
        made: dict[str, str] = {}
        with conn:
            for i, name in enumerate(names):
                secret = secrets.token_urlsafe(24)
                made[name] = secret
                conn.execute(
                    "INSERT INTO streams (name, created_at, write_secret, metadata) VALUES (?, ?, ?, ?)",
                    (name, 1_700_000_000_000_000 + i, secret, json.dumps({"i": i})),
                )
                sid = conn.last_insert_rowid()
                conn.execute(
                    "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
                    "VALUES (?, 0, 0, 1, 1, 'bytes', ?)", (sid, b"x" * 100),
                )
        for name in names:  # one transaction each: the old rows go through the WAL
            with conn:
                conn.execute("UPDATE streams SET sealed_at = 1, metadata = ? WHERE name = ?",
                             (json.dumps({"sealed": True, "pad": "p" * 50}), name))
        with conn:
            for i in range(300):  # split the streams table and its indexes, then free pages
                conn.execute("INSERT INTO streams (name, created_at) VALUES (?, 1)", (f"filler-{i:04d}",))
        with conn:
            conn.execute("DELETE FROM streams WHERE name LIKE 'filler-%'")
    finally:
        conn.close()
    return made


def test_migration_hashes_old_secrets_and_leaves_no_byte_of_them(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    old = _version9_file(path, [f"log-{i}" for i in range(40)])
    before = _file_bytes(path)
    assert all(s.encode() in before for s in old.values())  # the plain secrets are there to remove

    with sqlstream.open(path) as db:
        assert db.query("PRAGMA user_version").rows == [(cx.schema_version(),)]
        assert db.query("SELECT count(*) FROM counters WHERE name = 'secret_scrub'").rows == [(0,)]
        data = _file_bytes(path)
        assert [n for n, s in old.items() if s.encode() in data] == []
        db.maintain(vacuum=False, optimize=False)  # a checkpoint brings nothing back
        assert [n for n, s in old.items() if s.encode() in _file_bytes(path)] == []
        # Every old secret still writes its stream (they were sealed: seal is idempotent,
        # and AccessDenied without the secret shows the check still holds).
        for name, secret in old.items():
            assert db.writer(secret).name == name
            assert db.writer(secret).seal() is False
            with pytest.raises(AccessDenied):
                db.stream(name).seal()
        assert {i.name for i in db.streams() if i.secret} == set(old)
    data = _file_bytes(path)
    assert [n for n, s in old.items() if s.encode() in data] == []
    for secret in old.values():
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in data


def test_an_interrupted_scrub_is_finished_at_the_next_open(tmp_path: Path) -> None:
    """The 'secret_scrub' row outlives a crash between the hashing and the VACUUM."""
    path = str(tmp_path / "old.db")
    old = _version9_file(path, ["log"])
    plan = cx.load_migrations()
    conn = cx.connect(path, busy_timeout=5.0, synchronous="normal")
    try:
        # Migration 10 as a crash right after its commit would leave it: hashed, not scrubbed.
        conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hashlib.sha256(
            str(v).encode()).hexdigest(), 1)
        with conn:
            for _ in conn.execute(plan[9][2]):
                pass
            conn.execute("PRAGMA user_version = 10")
        # Checked here: the later migrations' new tables may reuse that free page.
        assert old["log"].encode() in _file_bytes(path)  # the seal left a copy in free space
        for version, _name, sql in plan[10:]:
            with conn:
                for _ in conn.execute(sql):
                    pass
                conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()
    with sqlstream.open(path) as db:
        assert old["log"].encode() not in _file_bytes(path)
        assert db.writer(old["log"]).name == "log"
        assert db.query("SELECT count(*) FROM counters WHERE name = 'secret_scrub'").rows == [(0,)]


def test_a_file_without_secrets_is_migrated_without_a_scrub(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    _version9_file(path, [])
    conn = apsw.Connection(path)
    conn.execute("INSERT INTO streams (name, created_at) VALUES ('plain', 1)")
    conn.close()
    with sqlstream.open(path) as db:
        assert [(i.name, i.secret) for i in db.streams()] == [("plain", False)]
        db.stream("plain").append(b"x")


def test_import_with_secrets_still_works(tmp_path: Path, db: sqlstream.Database) -> None:
    src = db.create_stream("src")
    src.extend([b"a", b"b"])
    db.export("src", tmp_path / "out", roll_size_mb=None)
    with sqlstream.open(tmp_path / "other.db") as other:
        target = other.create_stream("src", secret=True)
        secret = target.write_secret
        assert secret is not None
        with pytest.raises(AccessDenied):
            import_archives(other, "*", str(tmp_path / "out"))
        with pytest.raises(AccessDenied):
            import_archives(other, "*", str(tmp_path / "out"), secrets={"src": secret + "x"})
        result = import_archives(other, "*", str(tmp_path / "out"), secrets={"src": secret})
        assert result.streams == {"src": 2}
        assert [r.value for r in other.stream("src").read(0)] == [b"a", b"b"]


def test_the_datasette_plugin_hides_the_hash_on_its_connections(tmp_path: Path) -> None:
    """The plugin's prepare_connection hook, on a plain sqlite3 connection as Datasette's."""
    plugin = pytest.importorskip("sqlstream.datasette", reason="needs the datasette extra")
    path = str(tmp_path / "s.db")
    with sqlstream.open(path) as db:
        db.create_stream("log", secret=True)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT write_secret_sha256 IS NOT NULL FROM streams").fetchall() == [(1,)]
        plugin.prepare_connection(conn, "s", None)
        assert conn.execute("SELECT write_secret_sha256 FROM streams").fetchall() == [(None,)]
        assert conn.execute("SELECT secret FROM stream_stats").fetchall() == [(1,)]
    finally:
        conn.close()
    other = str(tmp_path / "other.db")  # not a sqlstream file: no authorizer
    conn = sqlite3.connect(other)
    try:
        conn.execute("CREATE TABLE streams (write_secret_sha256 TEXT)")
        conn.execute("INSERT INTO streams VALUES ('kept')")
        plugin.prepare_connection(conn, "other", None)
        assert conn.execute("SELECT write_secret_sha256 FROM streams").fetchall() == [("kept",)]
    finally:
        conn.close()


def test_the_cli_shows_the_secret_once_and_sql_never(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlstream.cli import main

    path = str(tmp_path / "c.db")

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        status = main(["--db", path, *argv])
        return status, capsys.readouterr().out

    status, out = run("create", "log", "--secret")
    secret = out.strip()
    assert status == 0 and len(secret) == 32
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert run("append", "log", "x", "--secret", secret)[0] == 0
    for argv in (("sql", "SELECT * FROM streams"), ("sql", "SELECT * FROM streams", "--json"),
                 ("sql", "SELECT * FROM streams_now", "--csv"), ("info", "log", "--json"), ("streams", "--json")):
        status, out = run(*argv)
        assert status == 0 and secret not in out and digest not in out, argv
    status, out = run("create", "log", "--secret", "--exist-ok")
    assert secret not in out
