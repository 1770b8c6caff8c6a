"""Issue 9 (items 9, 11, 12): the command line keeps its promises under odd and hostile input.

Typed ``sql`` parameters, ``(0 rows)``, one statement per ``sql``; Ctrl-C exits 130;
unknown options are named; blank stdin lines are skipped; numbers out of range are usage
errors; anything unexpected is ``Error: internal error: ...``, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream import cli
from sqlstream.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], db_path: str) -> Iterator[Any]:
    """Run ``sqlstream --db <tmp db> ARGS...`` in-process; return (status, stdout, stderr)."""

    def runner(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--db", db_path, *argv])
        out, err = capsys.readouterr()
        return status, out, err

    yield runner


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


# --------------------------------------------------------------------------- item 9: sql


def test_sql_readme_example_binds_0_as_an_integer(run: Any) -> None:
    run("create", "orders")
    run("append", "orders", "a", "b", "-q")
    status, out, err = run("sql", "SELECT name, records FROM stream_stats WHERE records > ?", "0")
    assert (status, err) == (0, "")
    assert out.splitlines()[-1].split() == ["orders", "2"]


@pytest.mark.parametrize(
    ("text", "sql_type", "value"),
    [
        ("0", "integer", 0),
        ("-42", "integer", -42),
        ("9223372036854775807", "integer", 9223372036854775807),
        ("9223372036854775808", "text", "9223372036854775808"),  # beyond INTEGER: kept exact as text
        ("1.5", "real", 1.5),
        ("-2e3", "real", -2000.0),
        (".5", "real", 0.5),
        ("NULL", "null", None),
        ("null", "null", None),
        ("007", "text", "007"),  # leading zeros: an identifier (a zip code), not a number
        ("1e999", "text", "1e999"),  # not finite: text
        ("inf", "text", "inf"),
        ("nan", "text", "nan"),
        ("abc", "text", "abc"),
        ("", "text", ""),
        (" 1", "text", " 1"),
    ],
)
def test_sql_positional_params_are_typed_like_the_sqlite3_shell(
    run: Any, text: str, sql_type: str, value: Any
) -> None:
    run("create", "s")
    # `--` ends the options, as for any value that starts with - (argparse reads -2e3 as one).
    status, out, err = run("sql", "--json", "SELECT typeof(?) AS t, ? AS v", "--", text, text)
    assert (status, err) == (0, "")
    assert jsonl(out) == [{"t": sql_type, "v": value}]


def test_sql_named_params_and_json_params_bind_exact_types(run: Any) -> None:
    run("create", "s")
    status, out, err = run("sql", "SELECT typeof(:a) AS a, typeof(:b) AS b, :b AS v", "--param", "a=1",
                           "--param", "b=x=y", "--json")
    assert (status, err) == (0, "")
    assert jsonl(out) == [{"a": "integer", "b": "text", "v": "x=y"}]

    status, out, err = run("sql", "SELECT typeof(?) AS a, typeof(?) AS b, typeof(?) AS c, ? AS d",
                           "--json-params", '["0", 1.0, null, "007"]', "--json")
    assert (status, err) == (0, "")
    assert jsonl(out) == [{"a": "text", "b": "real", "c": "null", "d": "007"}]

    status, out, _ = run("sql", "SELECT typeof(:n) AS n", "--json-params", '{"n": "12"}', "--json")
    assert jsonl(out) == [{"n": "text"}]


@pytest.mark.parametrize(
    "argv",
    [
        ["SELECT ?", "1", "--param", "a=1"],  # positional and named together
        ["SELECT ?", "1", "--json-params", "[1]"],
        ["SELECT ?", "--json-params", "[1"],  # not JSON
        ["SELECT ?", "--json-params", "3"],  # neither a list nor an object
        ["SELECT ?", "--json-params", '[{"a": 1}]'],  # nested
        ["SELECT ?", "--json-params", "[NaN]"],
        ["SELECT :a", "--param", "novalue"],
        ["SELECT :a", "--param", "a=1", "--param", "a=2"],
    ],
)
def test_sql_bad_params_are_one_error_line(run: Any, argv: list[str]) -> None:
    run("create", "s")
    status, out, err = run("sql", *argv)
    assert status in (1, 2) and out == ""
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith("Error: ") or "usage:" in err


def test_sql_empty_result_prints_nothing_when_piped_and_nothing_as_json(run: Any) -> None:
    run("create", "s")
    assert run("sql", "SELECT name FROM streams WHERE name = 'none'") == (0, "", "")
    assert run("sql", "SELECT name FROM streams WHERE name = 'none'", "--json") == (0, "", "")


def _run_on_a_terminal(db: str, *argv: str) -> str:
    """Run the CLI as a process whose stdout is a pseudo-terminal; return what it printed."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sqlstream", "--db", db, *argv],
            stdout=follower, stderr=subprocess.PIPE, env=env(), timeout=60,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.returncode == 0, proc.stderr
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)


@pytest.mark.multiprocess
def test_sql_empty_result_says_0_rows_on_a_terminal(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("s")
    empty = _run_on_a_terminal(db_path, "sql", "SELECT name FROM streams WHERE name = ?", "nope")
    assert empty.splitlines()[-1] == "(0 rows)"
    shown = _run_on_a_terminal(db_path, "sql", "SELECT name FROM streams")
    assert shown.splitlines()[-1] == "s" and "(0 rows)" not in shown


@pytest.mark.parametrize(
    "query",
    ["SELECT 1; SELECT 2", "SELECT 1;SELECT 2;", "SELECT 1; DELETE FROM chunks", "SELECT 1; /* c */ SELECT 2"],
)
def test_sql_refuses_several_statements(run: Any, query: str) -> None:
    run("create", "s")
    run("append", "s", "keep", "-q")
    status, out, err = run("sql", query)
    assert (status, out) == (1, "")
    assert err.splitlines()[0].startswith("Error: sql runs one statement")
    assert err.splitlines()[1].startswith("Hint: ")
    assert run("read", "s", "--json")[1] != ""


@pytest.mark.parametrize(
    "query",
    ["SELECT 1", "SELECT 1;", "SELECT 1; ", "SELECT 1; -- done", "SELECT 1 /* ; */", "SELECT ';' AS x",
     'SELECT 1 AS ";"', "SELECT 1;\n/* trailing */\n"],
)
def test_sql_one_statement_with_semicolons_in_strings_or_comments_runs(run: Any, query: str) -> None:
    run("create", "s")
    status, out, err = run("sql", query, "--json")
    assert (status, err) == (0, ""), err
    assert len(jsonl(out)) == 1


# --------------------------------------------------------------------------- item 11: CLI truths


@pytest.mark.parametrize("argv", [["--bogus"], ["--bogus", "streams"], ["streams", "--bogus"]])
def test_unknown_option_is_named_not_a_missing_command(run: Any, argv: list[str]) -> None:
    status, out, err = run(*argv)
    assert status == 2 and out == ""
    assert "unrecognized arguments: --bogus" in err
    assert "required: COMMAND" not in err


def test_no_command_still_says_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_blank_stdin_lines_are_skipped_unless_keep_blank(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run("create", "logs")
    data = b"first\n\n   \r\nsecond\n\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert run("append", "logs") == (0, "0\n1\n", "")
    assert [r["value"] for r in jsonl(run("read", "logs", "--json")[1])] == ["first", "second"]

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert run("append", "logs", "--keep-blank", "-q")[0] == 0
    values = [r["value"] for r in jsonl(run("read", "logs", "--offset", "2", "--json")[1])]
    assert values == ["first", "", "   ", "second", ""]


def test_only_blank_stdin_appends_nothing(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run("create", "logs")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n\n"), encoding="utf-8"))
    assert run("append", "logs") == (0, "", "")
    assert run("info", "logs", "--json")[1] and jsonl(run("info", "logs", "--json")[1])[0]["count"] == 0


def test_append_to_missing_stream_hints_create(run: Any) -> None:
    run("create", "s")
    status, out, err = run("append", "logs", "x")
    assert (status, out) == (1, "")
    assert err.splitlines() == ["Error: no stream named 'logs'", "Hint: create it with `sqlstream create logs`"]


# --------------------------------------------------------------------------- item 12: numbers


HUGE = str(10**23)
INT64_MAX = str(2**63 - 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["read", "s", "--timeout", "1e300"],
        ["read", "s", "--timeout", "inf"],
        ["read", "s", "--timeout", "nan"],
        ["read", "s", "--limit", HUGE],
        ["read", "s", "--offset", HUGE],
        ["tail", "s", "-n", HUGE],
        ["tail", "s", "--from", HUGE],
        ["fetch", "sub", "--timeout", "1e300"],
        ["fetch", "sub", "--max", HUGE],
        ["nack", "sub", "0", "--delay", "1e300"],
        ["nack", "sub", HUGE],
        ["ack", "sub", HUGE],
        ["pending", "sub", "--limit", HUGE],
        ["subscribe", "sub2", "s", "--max-unacked", HUGE],
        ["subscribe", "sub2", "s", "--ack-timeout", "1e300"],
        ["subscribe", "sub2", "s", "--max-deliveries", HUGE],
        ["subscribe", "sub2", "s", "--start", HUGE],
        ["create", "t", "--max-count", INT64_MAX],
        ["create", "t", "--max-count", HUGE],
        ["create", "t", "--max-bytes", INT64_MAX],
        ["create", "t", "--max-age", "1e300"],
        ["append", "s", "x", "--expect-offset", HUGE],
        ["reader", "r", "s", "--limit", HUGE],
        ["reader", "r", "s", "--timeout", "1e300"],
        ["reader", "r", "s", "--seek", HUGE],
    ],
)
def test_out_of_range_numbers_are_usage_errors_not_tracebacks(run: Any, db_path: str, argv: list[str]) -> None:
    run("create", "s")
    run("append", "s", "keep", "-q")
    run("subscribe", "sub", "s")
    status, out, err = run(*argv)
    assert status == 2, (status, err)
    assert out == "" and "Traceback" not in err and "internal error" not in err
    assert "usage:" in err and "error: argument" in err
    with sqlstream.open(db_path, readonly=True) as db:
        assert [s.name for s in db.streams()] == ["s"]
        assert [r.value for r in db.stream("s").read(0, 10)] == ["keep"]
        assert [i.name for i in db.subscriptions()] == ["sub"]


@pytest.mark.parametrize(
    "argv",
    [
        ["read", "s", "--timeout", "1e9", "--offset", "1"],  # the maximum is accepted, but no wait: sealed
        ["create", "t", "--max-count", str(cli.COUNT_MAX), "--max-bytes", str(cli.COUNT_MAX), "--max-age", "1e9"],
        ["subscribe", "sub2", "s", "--max-unacked", str(cli.COUNT_MAX), "--ack-timeout", "1e9"],
        ["fetch", "sub", "--max", str(cli.COUNT_MAX)],
        ["nack", "sub", "0", "--delay", "1e9"],
        ["tail", "s", "-n", INT64_MAX],
        ["read", "s", "--offset", INT64_MAX],
    ],
)
def test_largest_accepted_numbers_work_without_internal_errors(run: Any, argv: list[str]) -> None:
    run("create", "s")
    run("append", "s", "keep", "-q")
    run("seal", "s")
    run("subscribe", "sub", "s")
    status, _, err = run(*argv)
    assert "Traceback" not in err and "internal error" not in err, err
    assert status in (0, 1), err


def test_unexpected_exception_is_an_internal_error_line_not_a_traceback(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: a bug anywhere below the CLI is one Error line and exit 1."""
    run("create", "s")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sqlstream.Database, "streams", broken)
    status, out, err = run("streams")
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        "Error: internal error: RuntimeError: boom second line",
        "Hint: this is a bug in sqlstream; please report it with the command that caused it",
    ]


@pytest.mark.parametrize("argv", [["create", "\udcff"], ["append", "s", "ok", "\udcffbad"], ["nack", "sub", "0", "--error", "\udc80"]])
def test_non_utf8_arguments_are_refused_before_anything_runs(run: Any, db_path: str, argv: list[str]) -> None:
    """A non-UTF-8 argv byte (a lone surrogate in Python) is one clear error; nothing is stored."""
    run("create", "s")
    run("subscribe", "sub", "s")
    status, out, err = run(*argv)
    assert (status, out) == (2, "")
    assert err.startswith("Error: argument ") and "is not valid UTF-8" in err
    with sqlstream.open(db_path, readonly=True) as db:
        assert [s.name for s in db.streams()] == ["s"] and db.stream("s").info().count == 0


def test_json_params_nested_too_deep_is_an_error_not_a_crash(run: Any) -> None:
    run("create", "s")
    status, out, err = run("sql", "SELECT ?", "--json-params", "[" * 100_000)
    assert (status, out) == (1, "")
    assert err.startswith("Error: --json-params is not valid JSON")


def test_write_secrets_never_start_with_a_dash_so_cli_options_take_them(tmp_path: Path) -> None:
    # A urlsafe token starts with "-" one time in 64; `--secret "$S"` then reads it as an
    # option and the README's own CLI tour failed now and then.
    db = sqlstream.open(str(tmp_path / "s.db"))
    try:
        made = [db.create_stream(f"log-{i}", secret=True).write_secret for i in range(400)]
    finally:
        db.close()
    assert all(s is not None and not s.startswith("-") for s in made)
    assert len(set(made)) == len(made)


def test_a_retention_limit_of_400_digits_is_an_error_line_not_a_traceback(run: Any, db_path: str) -> None:
    """math.isfinite() of such an int raised OverflowError inside argparse's type function:
    a traceback, exit 1 from the interpreter (failed before)."""
    assert run("create", "s")[0] == 0
    huge = "9" * 400
    for option in ("--max-count", "--max-bytes"):
        status, _, err = run("retention", "s", option, huge)
        assert status in (1, 2) and "Traceback" not in err and err.count("\n") <= 3, err
    status, out, _ = run("retention", "s", "--json")
    assert status == 0 and "999" not in out
