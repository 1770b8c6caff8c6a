"""The pytest plugin (sqlstream.pytest_plugin) and helpers (sqlstream.testing), issue 15 part 1.

The fixtures are exercised the way users meet them: test files run by pytest's own
``pytester`` (in process), with the plugin loaded through its ``pytest11`` entry point.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path

import pytest

import sqlstream
from sqlstream.errors import InvalidArgument
from sqlstream.testing import (
    FakeClock,
    assert_stream,
    snapshot,
    use_clock,
    wait_for,
    wait_for_stream,
    wait_for_subscription,
)

pytest_plugins = ["pytester"]


def test_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == "sqlstream.pytest_plugin"]
    assert found, "reinstall sqlstream (pip install -e .): the pytest11 entry point is missing"


def test_a_test_file_using_the_fixtures_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from sqlstream.testing import assert_stream, snapshot

        def test_orders(sqlstream_db):
            orders = sqlstream_db.create_stream("orders")
            orders.append({"id": 1})
            orders.append({"id": 2}, key="b")
            assert_stream(sqlstream_db, "orders", [{"id": 1}, {"id": 2}])
            assert snapshot(sqlstream_db) == {"orders": [(0, None, {}, {"id": 1}), (1, "b", {}, {"id": 2})]}

        def test_fresh_file_per_test(sqlstream_db):
            assert sqlstream_db.streams() == []

        def test_two_files(sqlstream_factory):
            a, b = sqlstream_factory("a"), sqlstream_factory("b")
            assert a.path != b.path
            a.create_stream("s").append(b"x")
            assert b.streams() == []
            b.close()  # closing one early is fine: teardown still checks the file
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_a_test_that_breaks_an_invariant_fails_at_teardown(pytester: pytest.Pytester) -> None:
    # The records table is edited behind the API: a gap in the offsets, which check() names.
    pytester.makepyfile(
        """
        import apsw

        def test_corrupts(sqlstream_db):
            s = sqlstream_db.create_stream("orders")
            s.append(b"a"); s.append(b"b"); s.append(b"c")
            path = sqlstream_db.path
            sqlstream_db.close()
            conn = apsw.Connection(path)
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("DROP TRIGGER IF EXISTS chunks_no_delete")
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='chunks'").fetchall():
                conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute("DELETE FROM chunks WHERE offset = 1")
            conn.close()
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*check() found broken invariants*", "*orders*"])


def test_the_clock_redelivers_after_a_30_s_ack_timeout_at_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_redelivery(sqlstream_db, sqlstream_clock):
            sqlstream_db.create_stream("jobs").append({"n": 1})
            sub = sqlstream_db.create_subscription("workers", "jobs", ack_timeout=30)
            assert len(sub.fetch("w1")) == 1
            assert len(sub.fetch("w2")) == 0          # held by w1 for 30 s
            sqlstream_clock.advance(29)
            assert len(sub.fetch("w2")) == 0
            sqlstream_clock.advance(2)
            again = sub.fetch("w2")
            assert again.offsets == [0] and again.attempts == {0: 2}
            sub.ack(0)  # no real time passed: fetch never blocks, the fake clock did it all
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.slow  # a pytest run of its own on xdist workers: interpreters and collection
def test_the_fixtures_run_under_pytest_xdist_one_file_per_test(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_each_gets_its_own_file(sqlstream_db, n):
            s = sqlstream_db.create_stream("s")
            s.append(n)
            assert [r.value for r in s.read(0)] == [n]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4)


# ------------------------------------------------------------------------- the fake clock


@pytest.mark.parametrize("name", ["../x", "../../escaped", "ABSOLUTE", "a/b", "..", ".", "", "x\x00", "\udc80",
                                  "sub\\x", 7])
def test_the_factory_refuses_names_that_leave_the_tests_folder(
    sqlstream_factory: object, tmp_path: Path, name: object
) -> None:
    from sqlstream.pytest_plugin import SqlstreamFactory

    assert isinstance(sqlstream_factory, SqlstreamFactory)
    absolute = tmp_path.parent / f"{tmp_path.name}-absolute"
    if name == "ABSOLUTE":
        name = str(absolute)
    with pytest.raises(InvalidArgument, match="database name|is a str"):
        sqlstream_factory(name)  # type: ignore[arg-type]
    # Nothing was opened: not where the name points outside the test's folder, nor inside.
    assert not (tmp_path.parent / "escaped.db").exists() and not Path(f"{absolute}.db").exists()
    assert not list(tmp_path.rglob("*.db"))
    assert sqlstream_factory("plain.name-1").path == str(tmp_path / "sqlstream" / "plain.name-1.db")


def test_fake_clock_governs_retention_by_age_and_the_dedup_window(tmp_path: Path) -> None:
    clock = FakeClock()
    with clock.install(sqlstream.open(tmp_path / "c.db")) as db:
        s = db.create_stream("events")
        s.set_retention(max_age=3600)
        first = s.append("x", dedup_id="k")
        assert s.append("x", dedup_id="k") == first  # remembered: the same offset
        clock.advance(1800)
        db.maintain()
        assert s.info().first_offset == 0  # 30 min old: kept
        clock.advance(1801)
        db.maintain()
        # Record timestamps stay wall-clock: measured from the fake clock, the record is
        # an hour old now and goes.
        assert s.info().first_offset == s.info().next_offset == 1
        clock.advance(86400)  # past the default one-day dedup window
        assert s.append("x", dedup_id="k") == 1  # forgotten: appended again


def test_fake_clock_only_moves_forward_and_restores_real_time(tmp_path: Path) -> None:
    clock = FakeClock(start=1000.0)
    with pytest.raises(InvalidArgument):
        clock.advance(-1)
    assert clock.advance(2.5) == 1002.5
    with sqlstream.open(tmp_path / "c.db") as db:
        use_clock(db, clock)
        assert db.engine.clock() == 1002.5
        use_clock(db, None)
        before = time.time()
        now = db.engine.clock()
        after = time.time()
        assert before - 1 <= now <= after + 1  # the real clock again (1 s: float rounding room)


def test_advancing_the_clock_wakes_a_fetch_blocked_in_another_thread(tmp_path: Path) -> None:
    import threading

    clock = FakeClock()
    with clock.install(sqlstream.open(tmp_path / "c.db")) as db:
        db.create_stream("jobs").append(1)
        sub = db.create_subscription("g", "jobs", ack_timeout=30)
        assert len(sub.fetch("a")) == 1
        got: list[object] = []
        started = time.monotonic()
        t = threading.Thread(target=lambda: got.append(sub.fetch("b", timeout=60)))
        t.start()
        time.sleep(0.1)
        clock.advance(31)
        t.join(90)
        assert got and [r.offset for r in got[0]] == [0]  # type: ignore[attr-defined]
        # Before its own (real) 60 s timeout: the clock's advance woke the blocked fetch.
        assert time.monotonic() - started < 60


# ------------------------------------------------------------------------- helpers


def test_assert_stream_shows_a_diff_with_offsets(db: sqlstream.Database) -> None:
    s = db.create_stream("orders")
    for i in (1, 2, 4):
        s.append({"id": i})
    assert_stream(db, "orders", [{"id": 1}, {"id": 2}, {"id": 4}])
    with pytest.raises(AssertionError) as info:
        assert_stream(db, "orders", [{"id": 1}, {"id": 2}, {"id": 3}])
    text = str(info.value)
    assert "-2: {'id': 3}" in text and "+2: {'id': 4}" in text, text
    assert_stream(db, "orders", [(None, {"id": 4})], start=2, select=lambda r: (r.key, r.value))


def test_wait_for_stream_says_what_was_there_on_timeout(db: sqlstream.Database) -> None:
    s = db.create_stream("orders")
    s.append("a")
    assert [r.value for r in wait_for_stream(db, "orders", 1)] == ["a"]
    with pytest.raises(AssertionError) as info:
        wait_for_stream(db, "orders", 3, timeout=0.2)
    assert "stream 'orders' to hold 3 record(s)" in str(info.value)
    assert "1 record(s): 0: 'a'" in str(info.value)


def test_wait_for_subscription_reports_its_counters(db: sqlstream.Database) -> None:
    db.create_stream("jobs").append(1)
    sub = db.create_subscription("g", "jobs")
    with pytest.raises(AssertionError) as info:
        wait_for_subscription(db, "g", timeout=0.1)
    assert "lag=1 pending=0" in str(info.value)
    batch = sub.fetch("w")
    sub.ack(*batch.offsets)
    assert wait_for_subscription(db, "g").acked == 1


def test_wait_for_returns_the_value_and_snapshot_compares(db: sqlstream.Database) -> None:
    assert wait_for(lambda: 42) == 42
    db.create_stream("a").append(b"x", headers={"h": "1"})
    db.create_stream("b")
    before = snapshot(db)
    assert before == {"a": [(0, None, {"h": "1"}, b"x")], "b": []}
    db.stream("b").append("y")
    assert snapshot(db, ["a"]) == {"a": before["a"]} and snapshot(db) != before


# ------------------------------------------------------------------------- open(":memory:")


def test_open_memory_gives_a_private_temporary_file_removed_at_close() -> None:
    db = sqlstream.open(":memory:")
    other = sqlstream.open(":memory:")
    try:
        assert db.path != other.path  # each open is its own database, as in SQLite
        db.create_stream("s").append(b"x")
        assert other.streams() == []
        assert os.stat(db.path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(db.path)).st_mode & 0o777 == 0o700
        # Other connections (another Database, a worker) can share it by its path meanwhile.
        with sqlstream.open(db.path) as same:
            assert [r.value for r in same.stream("s").read(0)] == [b"x"]
    finally:
        db.close()
        other.close()
    assert not os.path.exists(os.path.dirname(db.path))
    assert not os.path.exists(os.path.dirname(other.path))


def test_open_memory_refuses_readonly_and_create_false() -> None:
    for options in ({"readonly": True}, {"create": False}):
        with pytest.raises(InvalidArgument) as info:
            sqlstream.open(":memory:", **options)  # type: ignore[arg-type]
        assert info.value.hint


def test_the_readme_testing_example_passes_under_pytest(pytester: pytest.Pytester) -> None:
    """The README's "Testing with sqlstream" block is a test file: run it as one (the
    snippet runner in test_readme.py only defines its functions)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
                if b.startswith("# test_orders.py\n")]
    pytester.makepyfile(test_orders=block)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_wait_for_refuses_a_timeout_too_large_for_a_float() -> None:
    """sqlstream.testing.wait_for(timeout=10**400) raised a raw OverflowError from float()."""
    from sqlstream.testing import wait_for

    for what in ("timeout", "interval"):
        with pytest.raises(InvalidArgument, match=what):
            wait_for(lambda: True, **{what: 10**400})  # type: ignore[arg-type]
