"""A brand-new file gets the migrations' final schema in one transaction
(sqlstream.connection.create_schema) instead of replaying every step: the result must be
the chain's, and only an empty file may take that path."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlstream
from sqlstream import connection as cx
from sqlstream.errors import SchemaVersionError

SPAWN = mp.get_context("spawn")

# Persistent settings of the file a migration could set, compared between the two ways.
PRAGMAS = ("user_version", "application_id", "auto_vacuum", "journal_mode", "page_size", "encoding")


def new_file(path: Path, *, stepwise: bool) -> None:
    """Create ``path`` as sqlstream.open() does (WAL first, then migrate), either way."""
    conn = cx.connect(str(path), busy_timeout=10.0, synchronous="normal", create=True)
    try:
        cx.connection_wal(conn, 10.0)
        cx.migrate(conn, stepwise=stepwise)
    finally:
        conn.close()


def snapshot(path: Path) -> dict[str, Any]:
    """Everything a migration decides about a file: its schema entries in order, its
    persistent pragmas, and every row of every table."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid").fetchall()
        pragmas = {p: conn.execute(f"PRAGMA {p}").fetchall() for p in PRAGMAS}
        tables = {name: sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)
                  for typ, name, _tbl, _sql in schema if typ == "table"}
        return {"schema": schema, "pragmas": pragmas, "tables": tables}
    finally:
        conn.close()


def file_id(snap: dict[str, Any]) -> int:
    ids = [value for name, value in snap["tables"]["counters"] if name == "file_id"]
    assert len(ids) == 1
    return int(ids[0])


def without_file_id(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot with the one value each file draws for itself (migration 0006) left out."""
    tables = dict(snap["tables"])
    tables["counters"] = [row for row in tables["counters"] if row[0] != "file_id"]
    return {**snap, "tables": tables}


def test_a_new_file_made_in_one_step_equals_the_chains_schema_pragmas_and_rows(tmp_path: Path) -> None:
    """Two files made step by step differ in file_id alone, so anything else a migration
    drew per file (a time, a random value) would show up here as a difference from the
    one-step file, whose rows come from a template made once per process."""
    paths = {name: tmp_path / f"{name}.db" for name in ("chain1", "chain2", "fast1", "fast2")}
    for name, path in paths.items():
        new_file(path, stepwise=name.startswith("chain"))
    snaps = {name: snapshot(path) for name, path in paths.items()}
    reference = without_file_id(snaps["chain1"])
    assert reference["pragmas"]["user_version"] == [(cx.schema_version(),)]
    assert any(typ == "trigger" for typ, *_ in reference["schema"])  # a real schema, not an empty one
    for name, snap in snaps.items():
        assert without_file_id(snap) == reference, name
    ids = [file_id(snap) for snap in snaps.values()]
    assert len(set(ids)) == len(ids), "every file draws its own identity"
    assert all(0 <= fid < 2**63 for fid in ids)


@pytest.fixture
def traced() -> Iterator[list[tuple[str, str]]]:
    """(file name, statement) of every statement run by any connection opened meanwhile."""
    cx.final_schema()  # the template (an in-memory chain) exists before tracing starts
    log: list[tuple[str, str]] = []

    def hook(conn: apsw.Connection) -> None:
        name = conn.filename

        def trace(_cursor: apsw.Cursor, sql: str, _bindings: Any) -> bool:
            log.append((name, sql))
            return True

        conn.exec_trace = trace

    apsw.connection_hooks.append(hook)
    try:
        yield log
    finally:
        apsw.connection_hooks.remove(hook)


def statements(log: list[tuple[str, str]], path: Path) -> list[str]:
    return [" ".join(sql.split()) for name, sql in log if Path(name) == path]


def test_sqlstream_open_gives_a_new_file_its_schema_in_one_transaction_without_the_steps(
    tmp_path: Path, traced: list[tuple[str, str]],
) -> None:
    path = tmp_path / "new.db"
    sqlstream.open(str(path)).close()
    run = statements(traced, path)
    # One write transaction for the schema, one for the file's place (sqlstream.lineage).
    assert run.count("BEGIN IMMEDIATE") == 2
    assert not any(sql.startswith(("DROP ", "ALTER ")) for sql in run), "a migration step ran"
    assert f"PRAGMA user_version = {cx.schema_version()}" in run
    assert "PRAGMA user_version = 1" not in run


def test_a_file_holding_any_object_of_an_application_still_takes_every_step(
    tmp_path: Path, traced: list[tuple[str, str]],
) -> None:
    """Only a file with no schema object at all takes the one-step path. A version-0
    file with an application's tables is refused as another program's
    (``_check_empty_or_ours``); one with only a view, index-less and table-less, is
    migrated step by step, so each step still checks that it creates no name the file
    already uses."""
    path = tmp_path / "shared.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE VIEW app_answer AS SELECT 42 AS answer")
    conn.close()
    new_file(path, stepwise=False)
    run = statements(traced, path)
    assert run.count("BEGIN IMMEDIATE") == cx.schema_version()
    for version in range(1, cx.schema_version() + 1):
        assert f"PRAGMA user_version = {version}" in run
    snap = snapshot(path)
    assert snap["schema"][0] == ("view", "app_answer", "app_answer", "CREATE VIEW app_answer AS SELECT 42 AS answer")
    reference = tmp_path / "reference.db"
    new_file(reference, stepwise=True)
    assert snap["schema"][1:] == snapshot(reference)["schema"]


def test_an_applications_object_named_like_ours_is_still_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "clash.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE VIEW records AS SELECT 1 AS x")
    conn.close()
    with pytest.raises(SchemaVersionError, match="named 'records'"):
        new_file(path, stepwise=False)
    conn = apsw.Connection(str(path))
    try:
        assert conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'records'").fetchall() == [
            ("CREATE VIEW records AS SELECT 1 AS x",)]
    finally:
        conn.close()


@pytest.mark.parametrize("steps_done", [1, 19])
def test_the_one_step_schema_rechecks_under_the_write_lock_and_leaves_a_migrated_file_alone(
    tmp_path: Path, steps_done: int,
) -> None:
    """migrate() reads version 0 and an empty schema before it takes the write lock;
    another process may migrate the file meanwhile (all of it, or its first steps). Under
    the lock create_schema() sees that and does nothing, and the steps go on from there."""
    path = tmp_path / "raced.db"
    first = cx.connect(str(path), busy_timeout=10.0, synchronous="normal", create=True)
    late = cx.connect(str(path), busy_timeout=10.0, synchronous="normal")
    try:
        cx.connection_wal(first, 10.0)
        assert int(cx.pragma(late, "user_version")) == 0  # what the late one saw
        for version, _name, sql in cx.load_migrations()[:steps_done]:
            with cx.migrating(first):
                first.execute("BEGIN IMMEDIATE")
                first.execute(sql).fetchall()
                cx.pragma(first, f"user_version = {version}")
                first.execute("COMMIT")
        before = snapshot(path)
        assert cx.create_schema(late) is False
        assert snapshot(path) == before
        cx.migrate(late)
    finally:
        late.close()
        first.close()
    reference = tmp_path / "reference.db"
    new_file(reference, stepwise=True)
    assert without_file_id(snapshot(path)) == without_file_id(snapshot(reference))


def create_at_once(path: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(60)
        sqlstream.open(path).close()
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc())


def test_processes_creating_one_new_file_at_once_end_with_the_chains_schema(tmp_path: Path) -> None:
    path = tmp_path / "raced.db"
    procs_n = 6
    barrier, results = SPAWN.Barrier(procs_n), SPAWN.Queue()
    procs = [SPAWN.Process(target=create_at_once, args=(str(path), barrier, results), daemon=True)
             for _ in range(procs_n)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        barrier.abort()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert outcomes == ["ok"] * procs_n, "\n".join(outcomes)
    reference = tmp_path / "reference.db"
    new_file(reference, stepwise=True)
    got, want = snapshot(path), snapshot(reference)
    assert got["schema"] == want["schema"]
    assert got["pragmas"] == want["pragmas"]
    # The places the file was opened at (sqlstream.lineage) aside, its rows are the chain's:
    # no row inserted twice, one file_id.
    got_counters = [row for row in got["tables"]["counters"] if not row[0].startswith("file_place/")]
    assert without_file_id({"tables": {"counters": got_counters}}) == without_file_id({"tables": {"counters": want["tables"]["counters"]}})
    file_id(got)
