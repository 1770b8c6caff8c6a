"""One rule for showing a time (issue 20, item 14).

The same record showed ``...26.394Z`` in ``sqlstream read`` (truncated) and ``...26.395Z``
in ``stream_stats`` and Datasette (rounded by SQLite). ``sqlstream.clock.iso_time`` now
renders every time, rounding as SQLite's ``strftime('%Y-%m-%dT%H:%M:%fZ', us / 1e6,
'unixepoch')`` does, which the views use.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import apsw
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream.cli import main
from sqlstream.clock import iso_time_us
from sqlstream.testing import FakeClock

_SQL = apsw.Connection(":memory:")


def sqlite_renders(micros: int) -> str | None:
    row = _SQL.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', ? / 1e6, 'unixepoch')", (micros,)).fetchone()
    return None if row is None else row[0]


DAY_US = 86_400_000_000
# Near the rounding step of a millisecond, and where rounding up carries into the next
# second, minute, day and year.
BOUNDARIES = [0, 499, 500, 501, 999_499, 999_500, 59_999_500, DAY_US - 500, DAY_US - 501,
              1_798_761_599_999_500, 1_796_000_000_394_500, 1_796_000_000_394_499, 253_402_300_799_999_499,
              253_402_300_799_999_500]


@pytest.mark.parametrize("micros", BOUNDARIES)
def test_the_rule_is_sqlites_at_the_boundaries(micros: int) -> None:
    assert iso_time_us(micros) == sqlite_renders(micros)


def test_half_a_millisecond_rounds_up_as_sqlite_does() -> None:
    assert iso_time_us(1_796_000_000_394_500) == "2026-11-30T00:53:20.395Z"
    assert iso_time_us(1_796_000_000_394_400) == "2026-11-30T00:53:20.394Z"
    # SQLite sums in doubles whose step here is 1/32 ms: .499 ms lands on .5 and rounds up.
    assert iso_time_us(1_796_000_000_394_499) == "2026-11-30T00:53:20.395Z"
    assert iso_time_us(DAY_US - 500) == "1970-01-02T00:00:00.000Z"


@settings(max_examples=500, deadline=None)
@given(micros=st.integers(min_value=0, max_value=253_402_300_799_999_999))
@example(micros=1_765_000_000_000_000 + 26_394_600)
def test_the_rule_is_sqlites_everywhere(micros: int) -> None:
    assert iso_time_us(micros) == sqlite_renders(micros)


def test_cli_view_and_datasette_cell_show_one_time(tmp_path: Path) -> None:
    """A record appended at ...26.3946 s: every face shows ...26.395Z (read used to cut to .394)."""
    from sqlstream.datasette import format_micros  # noqa: PLC0415 - the plugin's own renderer

    pytest.importorskip("datasette")
    path = str(tmp_path / "app.db")
    with sqlstream.open(path) as db:
        FakeClock(start=1_765_081_526.3946).install(db)
        db.create_stream("s").append("x")
        (micros,) = db.query("SELECT timestamp FROM chunks").rows[0]
        (view,) = db.query("SELECT last_append FROM stream_stats").rows[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--db", path, "read", "s", "--json"]) == 0
    cli_json = json.loads(out.getvalue())["time"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--db", path, "read", "s"]) == 0
    cli_line = out.getvalue().split("\t")[1]
    assert view.endswith("26.395Z")
    assert cli_json == cli_line == view == format_micros(micros) == iso_time_us(micros)
