"""db.maintain() and db.check(), and the trim / retention / vacuum / check / sql commands.

``check`` is tested against invariants broken on purpose, through a raw apsw connection
(what a user's stray write, or a bug, would do), and must name the stream and offset.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest

import sqlstream
from sqlstream import errors
from sqlstream.cli import main


@contextmanager
def raw(path: str) -> Iterator[apsw.Connection]:
    """A plain apsw connection, as a stray program would open the file."""
    conn = apsw.Connection(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def filled(db: sqlstream.Database, name: str = "orders", n: int = 10) -> sqlstream.Stream:
    stream = db.create_stream(name)
    stream.extend([{"i": i} for i in range(n)])
    return stream


# --------------------------------------------------------------------------- maintain


def test_maintain_gives_space_back(db: sqlstream.Database) -> None:
    stream = db.create_stream("s")
    for _ in range(20):
        stream.extend([os.urandom(1000) for _ in range(100)])
    db.maintain()
    big = os.path.getsize(db.path)
    db.trim("s", stream.info().next_offset - 10)
    report = db.maintain()
    assert report.pages_freed > 0 and report.free_pages == 0
    assert report.checkpoint == "truncate"
    assert report.optimized
    assert os.path.getsize(db.path) < big / 4
    assert os.path.getsize(db.path + "-wal") == 0
    assert db.check().ok


def test_maintain_settles_for_a_passive_checkpoint_while_a_reader_holds_the_wal(db: sqlstream.Database) -> None:
    stream = filled(db, "s", 100)
    reader = sqlstream.open(db.path)
    try:
        with reader.engine.snapshot() as conn:  # an open read transaction pins the WAL
            conn.execute("SELECT count(*) FROM chunks").fetchall()
            stream.append(b"more")
            report = db.maintain(checkpoint_timeout=0.05)
        assert report.checkpoint == "passive"
    finally:
        reader.close()


def test_maintain_is_refused_inside_a_transaction(db: sqlstream.Database) -> None:
    with db.transaction():
        with pytest.raises(errors.InvalidArgument):
            db.maintain()


def test_full_vacuum_converts_an_old_file(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("CREATE TABLE streams (id INTEGER PRIMARY KEY)")  # looks like ours: opened, migrated
    conn.execute("DROP TABLE streams")
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        filled(db, "s", 500)
        db.trim("s", 490)
        report = db.maintain()
        assert any("auto_vacuum=NONE" in n for n in report.notes)
        report = db.maintain(full=True)
        assert db.query("PRAGMA auto_vacuum").rows == [(2,)]
        assert db.check().ok


# --------------------------------------------------------------------------- check


def test_check_passes_a_healthy_database(db: sqlstream.Database) -> None:
    filled(db, "a", 50)
    filled(db, "b", 5)
    db.create_subscription("sub", "a").fetch("w", 3)
    db.reader("r", "a").read(4)
    db.stream("b").append(b"x", dedup_id="d")
    db.trim("a", 10)
    report = db.check()
    assert report.ok, report
    assert (report.streams, report.records) == (2, 46)


@pytest.mark.parametrize(
    ("damage", "offset", "words"),
    [
        ("DELETE FROM chunks WHERE offset = 5", 5, "gap: offset 5 is missing"),
        ("UPDATE chunks SET position = position + 1 WHERE offset = 6", 6, "byte position"),
        ("UPDATE chunks SET timestamp = 0 WHERE offset = 3", 3, "timestamp earlier"),
        ("UPDATE chunks SET data = 'not json' WHERE offset = 2", 2, "not valid JSON"),
        ("UPDATE chunks SET data = x'00' WHERE offset = 4", 4, "stored as blob"),
        # The counter follows a raised number (schema 19: it is never given out again), so
        # what shows is the step down at the next record; a lowered number shows the same.
        ("UPDATE chunks SET txn = 999 WHERE offset = 1", 2, "below txn 999 of the record before it"),
        ("UPDATE chunks SET txn = 1 WHERE offset = 7", 7, "txn 1 below txn"),
        # Values of another type (the table is not STRICT): check() raised a raw TypeError
        # on the first of them, so the tool every hint names crashed on the damage.
        ("UPDATE chunks SET position = 'abc' WHERE offset = 6", 6, "position is 'abc', not an integer"),
        ("UPDATE chunks SET position = 1.5 WHERE offset = 6", 6, "position is 1.5, not an integer"),
        ("UPDATE chunks SET timestamp = 'abc' WHERE offset = 3", 3, "timestamp is 'abc', not an integer"),
        # Reads refuse these (DamagedRecord); check() passed them as healthy.
        ("UPDATE chunks SET headers = '{bad' WHERE offset = 5", 5, "its headers are not a valid JSON object"),
        ("UPDATE chunks SET headers = '[1]' WHERE offset = 5", 5, "its headers are not a valid JSON object"),
        ("UPDATE chunks SET key = CAST(X'FF' AS TEXT) WHERE offset = 5", 5, "its key is not valid UTF-8"),
        # Foreign SQL raising first_offset must write the stream's ends too, as sqlstream
        # does (the row's next_offset is a floor, and CHECK (first_offset <= next_offset)).
        ("UPDATE streams SET first_offset = 3, first_position = 0, next_offset = 10", 0, "below first_offset 3"),
    ],
)
def test_check_names_the_stream_and_offset_of_a_broken_invariant(
    db: sqlstream.Database, damage: str, offset: int, words: str
) -> None:
    filled(db, "ok-stream", 3)
    filled(db, "orders", 10)
    with raw(db.path) as conn:
        conn.execute(damage.replace("WHERE", "WHERE stream_id = 2 AND") if "chunks" in damage
                     else damage + " WHERE name = 'orders'")
    report = db.check()
    assert not report.ok
    found = [p for p in report.problems if p.stream == "orders" and p.offset == offset and words in p.message]
    assert found, report.problems
    assert all(p.stream == "orders" for p in report.problems)


def test_check_reports_a_tail_deleted_by_foreign_sql_through_whoever_saw_it(
    db: sqlstream.Database, tmp_path: Path
) -> None:
    # An append writes only its record: nothing but the last record says where a stream
    # ends, so a tail deleted outside sqlstream is not a gap (README, "Guarantees").
    # What check() can see is everyone who saw the deleted records: a subscription that
    # delivered them, an export that archived them, a reader or a dedup entry past the
    # stream's end. (A streaming service that streamed their commit is not past the last
    # commit: the counters row keeps every number given out, issue 23.)
    filled(db, "ok-stream", 3)
    orders = db.create_stream("orders")
    for i in range(10):
        orders.append({"i": i}, dedup_id=f"d{i}")
    sub = db.create_subscription("billing", "orders")
    sub.ack(*(m.offset for m in sub.fetch("w", 10)))
    db.export("orders", tmp_path / "archive")
    with raw(db.path) as conn:
        conn.execute("INSERT INTO streaming_cursors (service, kind, height, updated_at) "
                     "SELECT 'feed', 'file', txn, 0 FROM last_txn")
        conn.execute("DELETE FROM chunks WHERE stream_id = 2 AND offset >= 8")
    report = db.check()
    assert not report.ok
    messages = [(p.stream, p.offset, p.message) for p in report.problems]
    assert all(stream in ("orders", None) for stream, _, _ in messages), messages
    assert any(o == 10 and "subscription 'billing'" in m and "past the stream's end 8" in m
               for _, o, m in messages), messages
    assert any(o == 10 and "export" in m and "past the stream's end 8" in m for _, o, m in messages), messages
    assert not any("streaming service 'feed'" in m for _, _, m in messages), messages
    assert any(o == 9 and "dedup id 'd9'" in m for _, o, m in messages), messages


def test_check_finds_pending_deliveries_of_missing_records(db: sqlstream.Database) -> None:
    filled(db, "orders", 10)
    db.create_subscription("billing", "orders").fetch("w", 5)
    with raw(db.path) as conn:  # a trim that forgot the deliveries
        conn.execute("DELETE FROM chunks WHERE offset < 3")
        conn.execute("UPDATE streams SET first_offset = 3, first_position = "
                     "(SELECT position FROM chunks WHERE offset = 3), next_offset = 10, "
                     "byte_length = (SELECT byte_length FROM streams_now WHERE name = 'orders')")
    report = db.check()
    messages = [str(p) for p in report.problems]
    assert messages == [
        f"stream 'orders' offset {o}: subscription 'billing' has a pending delivery of a record that does not exist"
        for o in (0, 1, 2)
    ]


def test_check_lists_at_most_max_problems(db: sqlstream.Database) -> None:
    filled(db, "orders", 30)
    with raw(db.path) as conn:
        conn.execute("UPDATE chunks SET timestamp = 0 WHERE offset % 2 = 1")
    report = db.check(max_problems=3)
    assert len(report.problems) == 3 and report.truncated


# --------------------------------------------------------------------------- CLI

Run = Callable[..., "tuple[int, str, str]"]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``sqlstream ARGS...`` in-process; (status, stdout, stderr)."""

    def runner(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return runner


def test_cli_check_reports_and_exits_1(db: sqlstream.Database, run: Run) -> None:
    filled(db, "orders", 10)
    status, out, err = run("--db", db.path, "check")
    assert status == 0 and out.startswith("ok: 1 stream(s), 10 record(s)"), (out, err)
    with raw(db.path) as conn:
        conn.execute("DELETE FROM chunks WHERE offset = 7")
    status, out, err = run("--db", db.path, "check")
    assert status == 1
    assert "stream 'orders' offset 7: gap: offset 7 is missing" in out
    assert err.startswith("Error: ")
    status, out, _ = run("--db", db.path, "check", "--json")
    doc = json.loads(out)
    assert status == 1 and doc["ok"] is False
    assert doc["problems"][0] == {"stream": "orders", "offset": 7, "message": doc["problems"][0]["message"]}


def test_cli_trim_retention_vacuum(db: sqlstream.Database, run: Run) -> None:
    filled(db, "orders", 20)
    status, out, _ = run("--db", db.path, "trim", "orders", "--before", "5")
    assert status == 0 and "trimmed 5 record(s)" in out and "first offset now 5" in out
    status, out, _ = run("--db", db.path, "retention", "orders", "--max-count", "10", "--json")
    doc = json.loads(out)
    assert status == 0 and (doc["trimmed"], doc["first_offset"], doc["max_count"]) == (5, 10, 10)
    status, out, _ = run("--db", db.path, "retention", "orders")
    assert status == 0 and "max count:    10" in out and "over limit:   no" in out
    status, out, _ = run("--db", db.path, "retention", "orders", "--max-count", "none", "--keep-unacked")
    assert status == 0 and "max count:    none" in out and "keep unacked: yes" in out
    status, out, _ = run("--db", db.path, "retention", "orders", "--max-count", "0")
    assert status == 2
    status, out, _ = run("--db", db.path, "trim", "orders", "--json")
    assert status == 0 and json.loads(out)["trimmed"] == 0
    status, out, _ = run("--db", db.path, "vacuum")
    assert status == 0 and "wal checkpoint: truncate" in out
    status, out, _ = run("--db", db.path, "vacuum", "--json")
    assert status == 0 and json.loads(out)["checkpoint"] in ("truncate", "passive")
    status, out, err = run("--db", db.path, "trim", "nope", "--before", "1")
    assert status == 1 and "no stream named 'nope'" in err


def test_cli_append_dedup_id(db: sqlstream.Database, run: Run) -> None:
    filled(db, "orders", 2)
    assert run("--db", db.path, "append", "orders", "x", "--dedup-id", "k")[:2] == (0, "2\n")
    assert run("--db", db.path, "append", "orders", "x", "--dedup-id", "k")[:2] == (0, "2\n")
    status, _, err = run("--db", db.path, "append", "orders", "x", "y", "--dedup-id", "k")
    assert status == 1 and "--dedup-id names one record" in err


def test_cli_sql_reads_the_views(db: sqlstream.Database, run: Run) -> None:
    filled(db, "orders", 4)
    status, out, _ = run("--db", db.path, "sql", "SELECT name, records, last_append FROM stream_stats", "--json")
    row = json.loads(out)
    assert status == 0 and row["name"] == "orders" and row["records"] == 4 and row["last_append"].endswith("Z")
    status, out, _ = run("--db", db.path, "sql", "-h")
    assert status == 0 and "subscription_stats" in out and "dedup" in out


# --------------------------------------------------------------------------- docs/sql.md


def test_every_query_in_docs_sql_runs_on_the_stock_sqlite3(db: sqlstream.Database) -> None:
    """The examples of docs/sql.md, run by Python's own sqlite3 (no sqlstream code), return rows."""
    import re

    orders = db.create_stream("orders", max_count=1000)
    for i in range(20):
        orders.append({"id": i, "customer": f"c{i % 3}", "total": 10.0 + i}, key=f"c{i % 3}",
                      headers={"src": "web"}, dedup_id=f"order-{i}")
    sub = db.create_subscription("billing", "orders", ack_timeout=0.001)
    for _ in range(3):
        sub.fetch("w", 2)
        time.sleep(0.002)
    text = (Path(__file__).resolve().parent.parent / "docs" / "sql.md").read_text(encoding="utf-8")
    queries = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(queries) >= 10
    conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
    try:
        for query in queries:
            rows = conn.execute(query).fetchall()
            if "attempts >= 3" not in query and "records > max_count" not in query:
                assert rows, query
    finally:
        conn.close()
    for view in ("stream_stats", "subscription_stats", "pending_deliveries"):
        if shutil.which("sqlite3"):
            out = subprocess.run(["sqlite3", "-readonly", db.path, f"SELECT count(*) FROM {view}"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and int(out.stdout) >= 1, out.stderr
