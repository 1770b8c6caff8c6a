"""CLI tools of issue 15: sql output formats, the read/append round trip, export --status,
extend-deadline, delete --force and progress bars (drawn on terminals only)."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sqlstream
from sqlstream.cli import main

from test_cli import feed_stdin, jsonl, run, subprocess_env  # noqa: F401 - run is a fixture

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- sql formats

QUERY = "SELECT 1 AS n, 'a,b\t\"c\"' AS t, x'00ff' AS b, NULL AS z, 2.5 AS r"


def test_sql_csv_and_tsv_keep_awkward_text_and_render_blobs_as_base64(run: Any) -> None:
    run("create", "s")
    status, out, _ = run("sql", QUERY, "--csv")
    assert status == 0
    assert list(csv.reader(io.StringIO(out))) == [["n", "t", "b", "z", "r"], ["1", 'a,b\t"c"', "AP8=", "", "2.5"]]
    status, out, _ = run("sql", QUERY, "--tsv")
    assert list(csv.reader(io.StringIO(out), delimiter="\t")) == [
        ["n", "t", "b", "z", "r"], ["1", 'a,b\t"c"', "AP8=", "", "2.5"]]
    # An empty result is at most the header line, never a blank line.
    _, out, _ = run("sql", "SELECT name FROM streams WHERE 0", "--csv")
    assert out in ("", "name\n")


def test_sql_nl_is_json_lines_like_json_and_json_array_is_one_document(run: Any) -> None:
    run("create", "s")
    row = {"n": 1, "t": 'a,b\t"c"', "b": {"base64": "AP8="}, "z": None, "r": 2.5}
    assert jsonl(run("sql", QUERY, "--nl")[1]) == [row]
    assert run("sql", QUERY, "--nl")[1] == run("sql", QUERY, "--json")[1]
    _, out, _ = run("sql", "SELECT 1 AS a UNION ALL SELECT 2", "--json-array")
    assert json.loads(out) == [{"a": 1}, {"a": 2}]
    assert json.loads(run("sql", "SELECT 1 AS a WHERE 0", "--json-array")[1]) == []


def test_sql_table_is_the_default_and_formats_conflict_is_a_clear_error(run: Any) -> None:
    run("create", "s")
    assert run("sql", QUERY)[1] == run("sql", QUERY, "--table")[1]
    assert "x'00ff'" in run("sql", QUERY)[1]
    status, out, err = run("sql", QUERY, "--csv", "--json")
    assert status == 1 and out == ""
    assert "--csv and --nl ask for different output formats" in err


# --------------------------------------------------------------------------- round trip


def _stable(record: dict[str, Any]) -> dict[str, Any]:
    """What a copy must keep: everything but the stream, time and transaction."""
    return {k: v for k, v in record.items() if k not in ("stream", "timestamp", "time", "txn")}


def test_read_json_piped_to_append_records_copies_keys_headers_types_and_bytes(
    run: Any, monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path
) -> None:
    with sqlstream.open(db_path, create=True) as db:
        src = db.create_stream("src")
        src.append(b"\xff\xfe\x00not utf-8\x80", key="k1", headers={"h": "1", "ctype": "application/octet-stream"})
        src.append({"id": 1, "nested": [1, "two", None]}, key="k2")
        src.append("plain text\twith tab", headers={"lang": "en"})
        src.append(b"")
        src.append([1, 2.5, True])
        src.append("")
        db.create_stream("dst")
    _, dumped, _ = run("read", "src", "--json")
    feed_stdin(monkeypatch, dumped.encode())
    status, out, err = run("append", "dst", "--records")
    assert (status, err) == (0, "") and out.split() == ["0", "1", "2", "3", "4", "5"]
    copied = jsonl(run("read", "dst", "--json")[1])
    assert [_stable(r) for r in copied] == [_stable(r) for r in jsonl(dumped)]
    with sqlstream.open(db_path, readonly=True) as db:
        values = [(r.value, r.key, r.headers, r.content_type) for r in db.stream("dst").read(0, 10)]
        originals = [(r.value, r.key, r.headers, r.content_type) for r in db.stream("src").read(0, 10)]
    assert values == originals
    assert values[0][0] == b"\xff\xfe\x00not utf-8\x80"


def test_append_records_real_pipe_between_two_processes(db_path: str) -> None:
    with sqlstream.open(db_path, create=True) as db:
        db.create_stream("src").append(b"\x80\x81", key="k", headers={"a": "b"})
        db.create_stream("dst")
    cli = [sys.executable, "-m", "sqlstream", "--db", db_path]
    env = subprocess_env()
    reader = subprocess.Popen([*cli, "read", "src", "--json"], stdout=subprocess.PIPE, env=env)
    writer = subprocess.run([*cli, "append", "dst", "--records", "-q"], stdin=reader.stdout, env=env,
                            capture_output=True, timeout=60)
    assert reader.stdout is not None
    reader.stdout.close()
    assert reader.wait(timeout=60) == 0 and writer.returncode == 0, writer.stderr
    with sqlstream.open(db_path, readonly=True) as db:
        rec = db.stream("dst").read(0, 1)[0]
    assert (rec.value, rec.key, rec.headers) == (b"\x80\x81", "k", {"a": "b"})


def test_append_records_keeps_a_json_string_value_a_json_record(run: Any, db_path: str) -> None:
    run("create", "dst")
    line = json.dumps({"type": "json", "value": "just a string", "key": None, "headers": {}})
    assert run("append", "dst", line, "--records") == (0, "0\n", "")
    with sqlstream.open(db_path, readonly=True) as db:
        rec = db.stream("dst").read(0, 1)[0]
    assert (rec.content_type, rec.value) == ("json", "just a string")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "value 1 is not valid JSON"),
        ('{"id": 1}', "is not a record object"),
        ('{"type": "bytes", "value": "AP8="}', 'base64 text with "encoding": "base64"'),
        ('{"type": "bytes", "value": "***", "encoding": "base64"}', "not valid base64"),
        ('{"type": "text", "value": 3}', "a text record's value must be a string"),
        ('{"type": "xml", "value": "<a/>"}', "unknown record type 'xml'"),
        ('{"value": "x", "key": 5}', '"key" must be a string or null'),
        ('{"value": "x", "headers": {"a": 1}}', '"headers" must be an object of strings'),
        ('{"type": "json", "value": null}', "JSON null"),
    ],
)
def test_append_records_refuses_a_bad_record_line_and_stores_nothing(
    run: Any, db_path: str, line: str, message: str
) -> None:
    run("create", "dst")
    good = json.dumps({"value": "fine"})
    status, out, err = run("append", "dst", good, line, "--records")
    assert status == 1 and out == "" and message in err.replace("value 2", "value 1"), err
    with sqlstream.open(db_path, readonly=True) as db:
        assert db.stream("dst").info().next_offset == 0


def test_append_base64_and_file_store_exact_bytes(run: Any, db_path: str, tmp_path: Path) -> None:
    run("create", "b")
    blob = bytes(range(256))
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    assert run("append", "b", base64.b64encode(b"\xff\x00").decode(), "--base64", "--key", "k")[0] == 0
    assert run("append", "b", "--file", str(path), "--file", str(path), "--header", "src=file")[1] == "1\n2\n"
    with sqlstream.open(db_path, readonly=True) as db:
        recs = db.stream("b").read(0, 10)
    assert [(r.value, r.key, r.headers) for r in recs] == [
        (b"\xff\x00", "k", {}), (blob, None, {"src": "file"}), (blob, None, {"src": "file"})]
    status, _, err = run("append", "b", "%%%", "--base64")
    assert status == 1 and "value 1 is not valid base64" in err
    status, _, err = run("append", "b", "--file", str(tmp_path / "missing"))
    assert status == 1 and "cannot read --file" in err
    status, _, err = run("append", "b", "x", "--file", str(path))
    assert status == 1 and "--file appends each file's bytes as one record" in err
    status, _, err = run("append", "b", "x", "--json", "--base64")
    assert status == 1 and "--json and --base64" in err


# --------------------------------------------------------------------------- export --status, extend-deadline, delete


def test_export_status_shows_progress_and_lag_per_stream(run: Any, tmp_path: Path) -> None:
    run("create", "orders")
    run("append", "orders", "a", "b", "c", "-q")
    assert run("export", "orders", "--dir", str(tmp_path / "arch"))[0] == 0
    run("append", "orders", "d", "-q")
    status, out, _ = run("export", "--status", "--json")
    assert status == 0
    assert jsonl(out) == [{
        "export": "orders", "directory": str(tmp_path / "arch"), "files": 1, "pending": 0,
        "streams": {"orders": {"exported_offset": 3, "delivered_offset": 3, "next_offset": 4, "lag": 1}},
    }]
    status, out, _ = run("export", "--status")
    assert out.splitlines()[0].split()[:6] == ["export", "stream", "exported", "delivered", "next", "lag"]
    assert out.splitlines()[2].split()[:6] == ["orders", "orders", "3", "3", "4", "1"]
    status, _, err = run("export", "--status", "--name", "nope")
    assert status == 1 and "no export named 'nope'" in err
    status, _, err = run("export", "orders")
    assert status == 1 and "--dir is required" in err


def test_extend_deadline_pushes_held_records_and_names_the_rest(run: Any, db_path: str) -> None:
    run("create", "jobs")
    run("append", "jobs", "a", "b", "-q")
    run("subscribe", "w", "jobs", "--ack-timeout", "5")
    run("fetch", "w", "--max", "1")
    status, out, err = run("extend-deadline", "w", "0", "1", "--seconds", "600", "--json")
    assert status == 0 and json.loads(out) == {"subscription": "w", "extended": [0], "ignored": [1]}
    assert "not pending, ignored: 1" in err
    with sqlstream.open(db_path, readonly=True) as db:
        (entry,) = db.subscription("w").pending()
    assert entry.deadline - db.engine.clock() > 500
    status, _, err = run("extend-deadline", "w", "0", "--seconds", "0")
    assert status == 2
    status, _, err = run("extend-deadline", "nope", "0", "--seconds", "5")
    assert status == 1 and "sqlstream subscriptions" in err


def test_delete_refuses_pending_deliveries_unless_force(run: Any, db_path: str) -> None:
    run("create", "jobs")
    run("append", "jobs", "a", "-q")
    run("subscribe", "w", "jobs")
    run("fetch", "w")
    status, _, err = run("delete", "jobs")
    assert status == 1 and "pending" in err and "--force" in err and "force=True" not in err
    with sqlstream.open(db_path, readonly=True) as db:
        assert db.stream_info("jobs").count == 1
    assert run("delete", "jobs", "--force")[0] == 0
    with sqlstream.open(db_path, readonly=True) as db:
        assert [i.name for i in db.streams()] == []


# --------------------------------------------------------------------------- progress bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _export_with_stderr(monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path, err: io.StringIO) -> int:
    with sqlstream.open(db_path, create=True) as db:
        db.create_stream("s").extend([f"r{i}" for i in range(500)])
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    return main(["--db", db_path, "export", "s", "--dir", str(tmp_path / "arch")])


def test_export_draws_a_tqdm_bar_with_rate_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path
) -> None:
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) is not installed")
    err = _Terminal()
    assert _export_with_stderr(monkeypatch, db_path, tmp_path, err) == 0
    text = err.getvalue()
    assert "export s:" in text and "500/500" in text and "record/s" in text and "100%" in text


def test_export_falls_back_to_a_plain_line_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    err = _Terminal()
    assert _export_with_stderr(monkeypatch, db_path, tmp_path, err) == 0
    text = err.getvalue()
    assert "\rexport s: 100% 500/500 records, ETA 0s" in text and "records/s" in text


def test_progress_is_never_drawn_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path
) -> None:
    err = io.StringIO()
    assert _export_with_stderr(monkeypatch, db_path, tmp_path, err) == 0
    assert err.getvalue() == "exported 500 record(s) to 1 archive(s)\n"
