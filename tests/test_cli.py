"""The ``sqlstream`` command line, run in-process through ``main()`` and as a real process."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], db_path: str) -> Iterator[Any]:
    """Run ``sqlstream --db <tmp db> ARGS...`` in-process; return (status, stdout, stderr)."""

    def runner(*argv: str, db: str | None = db_path) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        status = main((["--db", db] if db is not None else []) + list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    yield runner


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SQLSTREAM_DB"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- help and usage


def command_names() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_every_command_has_help_with_an_example(run: Any) -> None:
    names = command_names()
    assert {"create", "append", "read", "tail", "streams", "info", "seal", "sql", "delete"} <= set(names)
    status, out, _ = run("-h", db=None)
    assert status == 0 and "Example:" in out
    for name in names:
        status, out, _ = run(name, "-h", db=None)
        assert status == 0, name
        assert "Example:" in out, f"`sqlstream {name} -h` has no Example"


@pytest.mark.parametrize(
    "argv",
    [
        ["read"],  # NAME missing
        ["read", "s", "--limit", "0"],
        ["read", "s", "--timeout", "-1"],
        ["append", "s", "x", "--header", "no-equals-sign"],
        ["tail", "s", "--from", "soon"],
        ["nosuchcommand"],
        [],
    ],
)
def test_usage_errors_exit_2(run: Any, argv: list[str]) -> None:
    status, out, err = run(*argv)
    assert status == 2
    assert "usage:" in err and out == ""


# --------------------------------------------------------------------------- writing and reading


def test_create_append_read_json_roundtrip(run: Any) -> None:
    assert run("create", "orders")[0] == 0
    status, out, err = run(
        "append", "orders", '{"id": 1}', "[1, 2]", "42", "true", "--json",
        "--key", "c1", "--header", "src=web", "--header", "v=a=b",
    )
    assert (status, out, err) == (0, "0\n1\n2\n3\n", "")
    status, out, _ = run("append", "orders", "007", "plain text")
    assert out == "4\n5\n"

    status, out, _ = run("read", "orders", "--json")
    recs = jsonl(out)
    assert status == 0
    assert [r["value"] for r in recs] == [{"id": 1}, [1, 2], 42, True, "007", "plain text"]
    assert [r["type"] for r in recs] == ["json"] * 4 + ["text"] * 2
    assert [r["offset"] for r in recs] == list(range(6))
    assert recs[0]["key"] == "c1" and recs[0]["headers"] == {"src": "web", "v": "a=b"}
    assert recs[4]["key"] is None and recs[4]["headers"] == {}
    # One invocation is one transaction: its records share a txn number.
    assert len({r["txn"] for r in recs[:4]}) == 1 and recs[4]["txn"] > recs[0]["txn"]
    for r in recs:
        assert ISO.match(r["time"]) and isinstance(r["timestamp"], float)
        assert "encoding" not in r and r["stream"] == "orders"


def test_human_record_lines(run: Any) -> None:
    run("create", "s")
    run("append", "s", "a\tb\nc", "--key", "k")
    run("append", "s", '{"x": "y"}', "--json")
    status, out, _ = run("read", "s")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 2
    offset, stamp, key, value = lines[0].split("\t")
    assert (offset, key, value) == ("0", "k", "a\\tb\\nc")  # control characters escaped
    assert ISO.match(stamp)
    assert lines[1].split("\t")[2:] == ["-", '{"x": "y"}']


def test_bytes_are_base64_with_a_marker(run: Any, db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("bin").extend([b"\x00\xffraw", b""])
    status, out, _ = run("read", "bin", "--json")
    recs = jsonl(out)
    assert [r["encoding"] for r in recs] == ["base64", "base64"]
    assert [base64.b64decode(r["value"]) for r in recs] == [b"\x00\xffraw", b""]
    assert all(r["type"] == "bytes" for r in recs)
    _, out, _ = run("read", "bin")
    assert out.splitlines()[0].endswith("\tb'\\x00\\xffraw'")


def test_append_reads_stdin_lines_in_one_transaction(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run("create", "logs")
    feed_stdin(monkeypatch, b"first\r\nsecond\n\nlast without newline")
    status, out, _ = run("append", "logs")
    assert (status, out) == (0, "0\n1\n2\n")  # the blank line is skipped (--keep-blank keeps it)
    _, out, _ = run("read", "logs", "--json")
    recs = jsonl(out)
    assert [r["value"] for r in recs] == ["first", "second", "last without newline"]
    assert len({r["txn"] for r in recs}) == 1

    # --json: each line is a JSON value; blank lines are skipped as JSON Lines readers do.
    feed_stdin(monkeypatch, b'{"n": 1}\n\n{"n": 2}\n')
    status, out, _ = run("append", "logs", "--json", "-q")
    assert (status, out) == (0, "")
    _, out, _ = run("read", "logs", "--offset", "3", "--json")
    assert [r["value"] for r in jsonl(out)] == [{"n": 1}, {"n": 2}]


def test_bad_json_stores_nothing(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run("create", "s")
    status, out, err = run("append", "s", '{"ok": 1}', "{not json", "--json")
    assert status == 1 and out == ""
    assert err.startswith("Error: value 2 is not valid JSON")
    assert "Hint: drop --json" in err
    assert run("append", "s", "null", "--json")[0] == 1
    assert run("append", "s", "NaN", "--json")[0] == 1
    feed_stdin(monkeypatch, b'{"a": 1}\n[oops\n')
    status, _, err = run("append", "s", "--json")
    assert status == 1 and "stdin line 2" in err
    assert run("read", "s")[1] == ""


def test_read_offset_limit_and_timeout(run: Any) -> None:
    run("create", "s")
    run("append", "s", *[str(i) for i in range(10)], "-q")
    _, out, _ = run("read", "s", "--offset", "3", "--limit", "4", "--json")
    assert [r["value"] for r in jsonl(out)] == ["3", "4", "5", "6"]
    _, out, _ = run("read", "s", "--offset", "8", "--limit", "4", "--timeout", "5", "--json")
    assert [r["value"] for r in jsonl(out)] == ["8", "9"]
    started = time.monotonic()
    status, out, _ = run("read", "s", "--offset", "10", "--timeout", "0.2")
    assert (status, out) == (0, "") and time.monotonic() - started >= 0.2


def test_read_limit_spans_pages(run: Any, db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        db.create_stream("big").extend([f"r{i}" for i in range(2500)])
    _, out, _ = run("read", "big", "--limit", "2400")
    lines = out.splitlines()
    assert len(lines) == 2400 and lines[-1].startswith("2399\t")


def test_tail_without_follow(run: Any) -> None:
    run("create", "s")
    run("append", "s", *"abcdefghijklmnop", "-q")
    _, out, _ = run("tail", "s", "--json")
    assert [r["offset"] for r in jsonl(out)] == list(range(6, 16))  # the last 10
    _, out, _ = run("tail", "s", "-n", "2")
    assert [line.split("\t")[3] for line in out.splitlines()] == ["o", "p"]
    _, out, _ = run("tail", "s", "--from", "14", "--json")
    assert [r["value"] for r in jsonl(out)] == ["o", "p"]
    assert run("tail", "s", "--from", "latest")[1] == ""
    assert len(run("tail", "s", "--from", "earliest")[1].splitlines()) == 16


def test_tail_follow_in_process_ends_when_sealed(run: Any) -> None:
    run("create", "s")
    run("append", "s", "a", "b", "-q")
    run("seal", "s")
    status, out, _ = run("tail", "s", "-f", "--from", "earliest", "--json")
    assert status == 0 and [r["value"] for r in jsonl(out)] == ["a", "b"]


# --------------------------------------------------------------------------- streams, info, seal, delete


def test_streams_info_seal_delete(run: Any) -> None:
    assert run("streams")[0] == 1  # no database yet: an error, and no file is made
    run("create", "b", "--max-count", "5", "--max-age", "60")
    run("create", "a")
    run("append", "a", "x", "-q")

    _, out, _ = run("streams")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "records", "first"]
    assert [line.split()[0] for line in lines[2:]] == ["a", "b"]
    _, out, _ = run("streams", "--json")
    infos = jsonl(out)
    assert [i["name"] for i in infos] == ["a", "b"]
    assert infos[0]["count"] == 1 and infos[1]["max_count"] == 5 and infos[1]["max_age"] == 60

    _, out, _ = run("info", "a", "--json")
    info = json.loads(out)
    assert (info["next_offset"], info["sealed"], info["secret"]) == (1, False, False)
    _, out, _ = run("info", "b")
    assert "max count:   5" in out

    status, out, _ = run("seal", "a", "--json")
    assert status == 0 and json.loads(out) == {"stream": "a", "sealed": True, "already_sealed": False}
    assert "already sealed" in run("seal", "a")[1]
    status, _, err = run("append", "a", "y")
    assert status == 1 and err.startswith("Error: ") and "sealed" in err

    status, out, _ = run("delete", "a", "--json")
    assert status == 0 and json.loads(out) == {"stream": "a", "deleted": True}
    assert [i["name"] for i in jsonl(run("streams", "--json")[1])] == ["b"]


def test_create_exist_ok_and_duplicate(run: Any) -> None:
    assert run("create", "s")[0] == 0
    status, _, err = run("create", "s")
    assert status == 1 and err.splitlines() == [
        "Error: stream 's' already exists",
        "Hint: pass --exist-ok to reuse the existing stream",
    ]
    status, out, _ = run("create", "s", "--exist-ok", "--json")
    assert status == 0 and json.loads(out) == {"stream": "s", "created": False, "write_secret": None}
    assert run("create", "bad name!")[0] == 1


def test_secret_streams(run: Any) -> None:
    status, out, _ = run("create", "log", "--secret")
    secret = out.strip()
    assert status == 0 and len(out.splitlines()) == 1 and len(secret) >= 20

    status, _, err = run("append", "log", "line")
    assert status == 1 and "Hint: pass the stream's write secret with --secret" in err
    assert run("append", "log", "line 1", "line 2", "--secret", secret)[1] == "0\n1\n"
    assert run("append", "log", "x", "--secret", "wrong")[0] == 1
    run("create", "other")
    status, _, err = run("append", "other", "x", "--secret", secret)
    assert status == 1 and "belongs to stream 'log'" in err

    assert run("seal", "log")[0] == 1
    assert run("seal", "log", "--secret", secret)[0] == 0
    _, out, _ = run("info", "log", "--json")
    assert json.loads(out)["sealed"] is True and json.loads(out)["secret"] is True


def test_expect_offset(run: Any) -> None:
    run("create", "s")
    assert run("append", "s", "a", "--expect-offset", "0")[1] == "0\n"
    status, _, err = run("append", "s", "b", "--expect-offset", "0")
    assert status == 1 and "--expect-offset" in err


# --------------------------------------------------------------------------- sql


def test_sql_table_json_and_params(run: Any) -> None:
    run("create", "orders")
    run("append", "orders", '{"id": 7}', '{"id": 8}', "--json", "-q")
    query = (
        "SELECT c.offset, json_extract(c.data, '$.id') AS id, x'00ff' AS blob, NULL AS empty "
        "FROM chunks c JOIN streams s ON s.id = c.stream_id WHERE s.name = ? AND c.offset >= ?"
    )
    status, out, _ = run("sql", query, "orders", "1")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["offset", "id", "blob", "empty"]
    assert set(lines[1]) == {"-", " "} and lines[2].split() == ["1", "8", "x'00ff'"]

    _, out, _ = run("sql", query, "orders", "0", "--json")
    assert jsonl(out) == [
        {"offset": 0, "id": 7, "blob": {"base64": "AP8="}, "empty": None},
        {"offset": 1, "id": 8, "blob": {"base64": "AP8="}, "empty": None},
    ]
    _, out, _ = run("sql", "SELECT 1 AS a, 2 AS a", "--json")
    assert jsonl(out) == [{"a": 1, "a_2": 2}]
    status, out, _ = run("sql", "SELECT records FROM stream_stats WHERE name = 'orders'")
    assert out.splitlines()[-1].strip() == "2"


def test_sql_refuses_writes(run: Any) -> None:
    run("create", "s")
    run("append", "s", "keep me", "-q")
    for statement in ("DELETE FROM chunks", "UPDATE streams SET next_offset = 0", "DROP TABLE chunks"):
        status, out, err = run("sql", statement)
        assert status == 1 and out == ""
        assert err.startswith("Error: ") and "Hint: sqlstream sql is read-only" in err
    assert run("sql", "SELECT 1", "--write")[0] == 2  # there is no write mode
    assert run("read", "s", "--json")[1] != ""


# --------------------------------------------------------------------------- errors and the database path


def test_unknown_stream_is_one_line_on_stderr(run: Any) -> None:
    run("create", "s")
    for argv in (["read", "nope"], ["info", "nope"], ["tail", "nope"],
                 ["seal", "nope"], ["delete", "nope"]):
        status, out, err = run(*argv)
        assert status == 1 and out == "", argv
        assert err.splitlines() == ["Error: no stream named 'nope'"], argv
    # Appending is where a missing stream is a user's first surprise: say how to make it.
    status, out, err = run("append", "nope", "x")
    assert (status, out) == (1, "")
    assert err.splitlines() == ["Error: no stream named 'nope'", "Hint: create it with `sqlstream create nope`"]


def test_reads_never_create_a_database(run: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for argv in (["read", "s"], ["tail", "s"], ["streams"], ["info", "s"], ["sql", "SELECT 1"],
                 ["append", "s", "x"], ["seal", "s"], ["delete", "s"]):
        status, _, err = run(*argv, db=str(missing))
        assert status == 1, argv
        assert err.startswith(f"Error: no database at {missing}") and "Hint: " in err
    assert list(tmp_path.iterdir()) == []


def test_database_from_env_default_and_after_command(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SQLSTREAM_DB", raising=False)
    assert run("create", "here", db=None)[0] == 0
    assert (tmp_path / "sqlstream.db").exists()

    monkeypatch.setenv("SQLSTREAM_DB", str(tmp_path / "env.db"))
    assert run("create", "there", db=None)[0] == 0
    assert [i["name"] for i in jsonl(run("streams", "--json", db=None)[1])] == ["there"]
    # --db after the command name works too, and wins over the environment.
    out = run("streams", "--json", "--db", str(tmp_path / "sqlstream.db"), db=None)[1]
    assert [i["name"] for i in jsonl(out)] == ["here"]


def test_not_a_database_is_a_clean_error(run: Any, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    status, _, err = run("streams", db=str(junk))
    assert status == 1 and err.startswith("Error: ")
    status, _, err = run("streams", db=str(tmp_path))  # a directory
    assert status == 1 and err.startswith("Error: ")


# --------------------------------------------------------------------------- real processes


def test_python_dash_m_subprocess(tmp_path: Path) -> None:
    db = str(tmp_path / "p.db")

    def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sqlstream", "--db", db, *argv],
            input=stdin, capture_output=True, text=True, env=subprocess_env(), timeout=30,
        )

    assert cli("create", "events").returncode == 0
    done = cli("append", "events", "--json", stdin='{"n": 1}\n{"n": 2}\n')
    assert (done.returncode, done.stdout) == (0, "0\n1\n")
    done = cli("read", "events", "--json")
    assert [r["value"] for r in jsonl(done.stdout)] == [{"n": 1}, {"n": 2}]
    done = cli("read", "nope")
    assert done.returncode == 1 and done.stderr == "Error: no stream named 'nope'\n"


def _start_tail(db: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sqlstream", "--db", db, "tail", "-f", "events", "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )


def _readline(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """One line of the child's stdout, or fail (killing the child) after ``timeout``."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        return proc.stdout.readline()
    finally:
        watchdog.cancel()


@pytest.mark.multiprocess
def test_tail_follow_subprocess_prints_new_records_until_sealed(db_path: str) -> None:
    with sqlstream.open(db_path) as db:
        events = db.create_stream("events")
        events.append("before")
        proc = _start_tail(db_path, "--from", "earliest")
        try:
            # The first line proves the follower is up before the next append.
            assert json.loads(_readline(proc))["value"] == "before"
            events.append({"late": True})
            assert json.loads(_readline(proc))["value"] == {"late": True}
            events.seal()
            assert proc.wait(timeout=15) == 0
            assert proc.stdout is not None and proc.stdout.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]


@pytest.mark.multiprocess
def test_tail_follow_exits_130_on_ctrl_c(db_path: str) -> None:
    """Ctrl-C ends `tail -f` with 130 (128 + SIGINT), as the README says; sealed ends it with 0."""
    with sqlstream.open(db_path) as db:
        db.create_stream("events").append("only")
    # A test run started where SIGINT is ignored (a shell's background job) would hand that
    # to the child, which then rightly ignores Ctrl-C: start it with the default disposition.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = _start_tail(db_path, "-n", "1")
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert json.loads(_readline(proc))["value"] == "only"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
