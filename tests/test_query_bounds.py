"""Bounds on ad-hoc queries: ``db.query(timeout=, max_rows=, max_bytes=)`` and ``sqlstream sql``.

The read-only guard keeps a query from changing the file; these bounds keep it from
running for ever or taking all the memory. The tests use tiny limits and queries that
would never end (or would allocate about a gigabyte) without them: a bound that does not
work hangs or fails the test; none of them measures time.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream.cli import main
from sqlstream.errors import InvalidArgument, QueryLimitExceeded, QueryTimeout, QueryTooLarge

ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
ENDLESS_ROWS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"


def rows(n: int) -> str:
    return f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n"


def test_an_endless_recursive_cte_stops_at_the_timeout(db: sqlstream.Database) -> None:
    with pytest.raises(QueryTimeout, match="timeout"):
        db.query(ENDLESS, timeout=1e-6)
    with pytest.raises(QueryTimeout):  # one that returns rows for ever, too
        db.query(ENDLESS_ROWS, timeout=1e-6)
    # The connection is clean afterwards: no leftover handler stops the next query.
    assert db.query(rows(50_000) + " ORDER BY i DESC LIMIT 1").rows == [(50_000,)]


def test_the_timeout_stops_a_query_that_would_otherwise_end(db: sqlstream.Database) -> None:
    """Same query both ways: finishes without a timeout, stopped with a tiny one."""
    sql = rows(300_000) + " ORDER BY -i LIMIT 1"
    assert db.query(sql).rows == [(300_000,)]
    with pytest.raises(QueryTimeout):
        db.query(sql, timeout=1e-9)


def test_a_huge_value_is_refused_before_it_is_built(db: sqlstream.Database) -> None:
    with pytest.raises(QueryTooLarge, match="max_bytes"):
        db.query("SELECT zeroblob(999999999)")  # the default bound (256 MiB)
    with pytest.raises(QueryTooLarge):
        db.query("SELECT length(zeroblob(999999999))")  # built, even if not returned
    with pytest.raises(QueryTooLarge):
        db.query("SELECT group_concat(i) FROM (" + rows(1000) + ")", max_bytes=100)
    assert db.query("SELECT zeroblob(100)", max_bytes=100).rows == [(b"\0" * 100,)]
    with pytest.raises(QueryTooLarge):
        db.query("SELECT zeroblob(101)", max_bytes=100)
    # The limit was the query's only: the next one has the default again.
    assert db.query("SELECT length(zeroblob(1000000))").rows == [(1_000_000,)]


def test_stored_records_larger_than_the_bound_are_refused(db: sqlstream.Database) -> None:
    # Through the records view, which reads a large payload from out of the row.
    db.create_stream("s").extend([b"x" * 1000, b"y" * 100_000])
    with pytest.raises(QueryTooLarge):
        db.query("SELECT data FROM records WHERE offset = 0", max_bytes=999)
    with pytest.raises(QueryTooLarge):
        db.query("SELECT data FROM records WHERE offset = 1", max_bytes=99_999)
    # A value stored out of the row is built whole when read, inside length() too.
    with pytest.raises(QueryTooLarge):
        db.query("SELECT length(data) FROM records", max_bytes=999)
    assert db.query("SELECT length(data) FROM records", max_bytes=100_000).rows == [(1000,), (100_000,)]


def test_max_rows_is_exact(db: sqlstream.Database) -> None:
    assert len(db.query(rows(10), max_rows=10).rows) == 10
    with pytest.raises(QueryTooLarge, match="max_rows=10"):
        db.query(rows(11), max_rows=10)
    with pytest.raises(QueryTooLarge):  # an endless result ends at the bound
        db.query(ENDLESS_ROWS, max_rows=1000)


def test_max_bytes_bounds_the_whole_result(db: sqlstream.Database) -> None:
    ten = "SELECT 'abcdefgh' FROM (" + rows(10) + ")"  # 10 rows of 8 bytes
    assert len(db.query(ten, max_bytes=80).rows) == 10
    with pytest.raises(QueryTooLarge, match="result"):
        db.query(ten, max_bytes=79)
    with pytest.raises(QueryTooLarge):
        db.query("SELECT '€€' FROM (" + rows(10) + ")", max_bytes=59)  # UTF-8 bytes, not characters
    with pytest.raises(QueryTooLarge):
        db.query(ENDLESS_ROWS, max_bytes=10_000)


@pytest.mark.parametrize("value", ["''", "x''", "NULL", "0", "'a'"])
def test_max_bytes_bounds_a_result_of_empty_or_tiny_values(db: sqlstream.Database, value: str) -> None:
    """An endless result of empty strings or blobs is refused like any other: each value
    counts at least 8 bytes (it takes memory however short it is). Counted as 0, rows of
    '' never reached max_bytes and were held until memory ran out."""
    # (Finite here, so that a bound that does not work fails the test rather than filling memory.)
    with pytest.raises(QueryTooLarge, match="max_bytes=1,000"):
        db.query(f"SELECT {value}, {value} FROM (" + rows(100_000) + ")", max_bytes=1000)
    # Exactly at the bound: 62 rows of two values fit in 1,000 bytes, 63 do not.
    assert len(db.query(f"SELECT {value}, {value} FROM (" + rows(62) + ")", max_bytes=1000).rows) == 62
    with pytest.raises(QueryTooLarge):
        db.query(f"SELECT {value}, {value} FROM (" + rows(63) + ")", max_bytes=1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0}, {"timeout": -1}, {"timeout": math.nan}, {"timeout": math.inf}, {"timeout": "1"},
        {"max_rows": 0}, {"max_rows": -1}, {"max_rows": 1.5}, {"max_rows": True},
        {"max_bytes": 0}, {"max_bytes": None}, {"max_bytes": 2**40},
    ],
)
def test_bad_bounds_are_refused(db: sqlstream.Database, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        db.query("SELECT 1", **kwargs)


def test_limit_errors_share_a_base(db: sqlstream.Database) -> None:
    for call in (lambda: db.query(ENDLESS, timeout=1e-6), lambda: db.query("SELECT zeroblob(99)", max_bytes=10)):
        with pytest.raises(QueryLimitExceeded):
            call()
    assert issubclass(QueryTimeout, TimeoutError)


# --------------------------------------------------------------------------- CLI

def _sql(capsys: pytest.CaptureFixture[str], db_path: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--db", db_path, "sql", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def cli_db(db_path: str) -> str:
    sqlstream.open(db_path).close()
    return db_path


def test_cli_sql_stops_at_timeout_with_one_line(capsys: pytest.CaptureFixture[str], cli_db: str) -> None:
    status, out, err = _sql(capsys, cli_db, ENDLESS, "--timeout", "0.000001")
    assert status == 1 and out == ""
    assert "timeout" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_cli_sql_has_a_default_timeout(capsys: pytest.CaptureFixture[str], cli_db: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --timeout the default applies (made tiny here so the test never waits long)."""
    from sqlstream.cli import streams as cli_streams

    monkeypatch.setattr(cli_streams, "DEFAULT_SQL_TIMEOUT", 1e-6)
    status, _, err = _sql(capsys, cli_db, ENDLESS)
    assert status == 1 and "timeout" in err
    # --timeout 0 lifts it: a query that ends, ends.
    status, out, _ = _sql(capsys, cli_db, rows(20_000) + " ORDER BY -i LIMIT 1", "--timeout", "0")
    assert status == 0 and "20000" in out


def test_cli_sql_bounds_rows_and_bytes(capsys: pytest.CaptureFixture[str], cli_db: str) -> None:
    status, _, err = _sql(capsys, cli_db, rows(3), "--max-rows", "2")
    assert status == 1 and "max_rows" in err and "--max-rows" in err
    assert _sql(capsys, cli_db, rows(2), "--max-rows", "2")[0] == 0
    status, _, err = _sql(capsys, cli_db, "SELECT zeroblob(999999999)")
    assert status == 1 and "max_bytes" in err
    status, _, err = _sql(capsys, cli_db, "SELECT zeroblob(11)", "--max-bytes", "10")
    assert status == 1 and "Traceback" not in err
    for bad in (["--max-rows", "0"], ["--max-bytes", "-1"], ["--timeout", "nan"], ["--max-bytes", str(2**40)]):
        status, _, err = _sql(capsys, cli_db, "SELECT 1", *bad)
        assert status != 0 and "Traceback" not in err


@pytest.mark.slow
def test_cli_sql_process_ends_on_an_endless_query(tmp_path: Path) -> None:
    path = str(tmp_path / "p.db")
    sqlstream.open(path).close()
    proc = subprocess.run(
        [sys.executable, "-m", "sqlstream", "--db", path, "sql", ENDLESS, "--timeout", "0.01"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "timeout" in proc.stderr


async def _aio_bounds(path: str) -> None:
    from sqlstream import aio

    adb = await aio.open(path)
    try:
        with pytest.raises(QueryTimeout):
            await adb.query(ENDLESS, timeout=1e-6)
        with pytest.raises(QueryTooLarge):
            await adb.query(rows(3), max_rows=2)
        with pytest.raises(QueryTooLarge):
            await adb.query("SELECT zeroblob(11)", max_bytes=10)
        assert (await adb.query(rows(2))).rows == [(1,), (2,)]
    finally:
        await adb.close()


def test_the_asyncio_face_takes_the_same_bounds(db_path: str) -> None:
    import asyncio

    asyncio.run(_aio_bounds(db_path))


async def _cancelled_query_frees_the_worker(path: str) -> None:
    import asyncio

    from sqlstream import aio

    adb = await aio.open(path)
    task = asyncio.ensure_future(adb.query(ENDLESS))  # no timeout: runs until stopped
    await asyncio.sleep(0.05)  # let the worker start it (either way it must not run on)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker is free again: before, the endless query held it for ever, and this call
    # (like every later call, and close()) never returned. 60 s is only a hang guard; when
    # it fires, close() is not called (it would hang too).
    try:
        result = await asyncio.wait_for(adb.query("SELECT 1"), 60)
    except asyncio.TimeoutError:
        pytest.fail("the cancelled query still holds the asyncio worker")
    await adb.close()
    assert result.rows == [(1,)]


def test_a_cancelled_asyncio_query_stops_on_the_worker(db_path: str) -> None:
    import asyncio

    asyncio.run(_cancelled_query_frees_the_worker(db_path))


def test_stop_ends_a_query_with_query_cancelled(db: sqlstream.Database) -> None:
    from sqlstream.errors import QueryCancelled

    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(QueryCancelled):
        db.query(ENDLESS, stop=stop)
    assert len(calls) == 3
    assert db.query("SELECT 1", stop=lambda: False).rows == [(1,)]
    with pytest.raises(InvalidArgument):
        db.query("SELECT 1", stop="no")  # type: ignore[arg-type]
