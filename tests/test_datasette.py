"""The Datasette plugin (sqlstream.datasette) in a real `datasette serve` process.

Each test builds a real sqlstream file, starts Datasette on 127.0.0.1 with a free port
through the installed ``datasette`` entry point (so the plugin is found the way users get
it), and reads its HTML pages and JSON API over HTTP.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import sqlstream

pytest.importorskip("datasette", reason="Datasette is in the test extra: pip install -e '.[test,datasette]'")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# 2023-11-14T22:13:20Z, a time with an exact µs rendering to look for in pages.
T0 = 1_700_000_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


@contextmanager
def datasette(path: Path) -> Iterator[str]:
    """Serve ``path`` with a real Datasette process; yield its base URL; stop it after."""
    if not any(e.name == "sqlstream" for e in metadata.entry_points(group="datasette")):
        pytest.fail("the sqlstream package is not installed with its datasette entry point: pip install -e .")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(path), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
                pytest.fail(f"datasette exited with {proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(base + "/-/versions.json", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail("datasette did not answer within 60 s")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _rows(base: str, path: str, **params: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({**params, "_shape": "array"})
    status, body = _get(f"{base}{path}.json?{query}")
    assert status == 200, body[:2000]
    rows: list[dict[str, Any]] = json.loads(body)
    return rows


def _make_sqlstream_file(path: Path) -> None:
    """Streams with JSON, text and bytes records; a subscription with pending deliveries
    and one dead letter; an export; all at clock times from T0 on."""
    db = sqlstream.open(path)
    try:
        now = [T0]
        db.engine.clock = lambda: now[0]
        orders = db.create_stream("orders")
        for i in range(5):
            orders.append({"id": i, "customer": f"c{i % 2}", "ok": True}, key=f"c{i % 2}", headers={"src": "web"})
        orders.append("plain text, not JSON")
        orders.append(b"\x00\x01binary\xff")
        logs = db.create_stream("logs")
        logs.append("hello")
        sub = db.create_subscription("billing", "orders", ack_timeout=30, max_deliveries=1,
                                     dead_letter="orders-dead")
        batch = sub.fetch("worker-1", 1)
        sub.nack(*[r.offset for r in batch], error="card declined")
        sub.fetch("worker-1", 1)  # offset 0 is past max_deliveries: dead-lettered; gets offset 1
        sub.fetch("worker-2", 2)  # offsets 2 and 3
        db.export("logs", path.parent / "archives", name="logs-archive")
    finally:
        db.close()


def _timestamp_micros(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        value: int = conn.execute(
            "SELECT timestamp FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = 'orders') "
            "AND offset = 0").fetchone()[0]
        return value
    finally:
        conn.close()


def test_datasette_shows_sqlstream_titles_canned_queries_and_readable_cells(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _make_sqlstream_file(path)
    micros = _timestamp_micros(path)
    from sqlstream.datasette import format_micros

    iso = format_micros(micros)
    assert iso is not None and iso.endswith("Z")
    with datasette(path) as base:
        # Database page: title, description, the canned queries listed.
        status, page = _get(f"{base}/app")
        assert status == 200
        assert "sqlstream database" in page
        for title in ("Streams and lag", "Pending deliveries", "Dead letters", "Export progress",
                      "A stream&#39;s latest records"):
            assert title in page, title

        # Table metadata: title and description, column descriptions.
        status, page = _get(f"{base}/app/chunks")
        assert status == 200
        assert "<h1" in page and "Records" in page
        assert "One row per record, keyed by (stream_id, offset)" in page
        assert "commit sequence number: records of one transaction share it" in page
        # Timestamps: readable UTC; bytes: size and printable preview.
        assert iso in page
        assert "&lt;9 bytes&gt;" in page and "\\x00\\x01binary\\xff" in page
        # stream_id shows the stream's name linked to its row (chunks has no foreign key
        # Datasette could follow since schema version 20; the records view never had one).
        assert re.search(r'<a href="/app/streams/\d+">orders</a>&nbsp;<em>\d+</em>', page), "no stream name"
        status, view = _get(f"{base}/app/records")
        assert status == 200 and re.search(r'<a href="/app/streams/\d+">logs</a>&nbsp;<em>\d+</em>', view)
        # ... and the size links to Datasette's download of the whole payload.
        link = re.search(r'<a class="blob-download" href="([^"]+)">&lt;9 bytes&gt;</a>', page)
        assert link, "no download link for the bytes record"
        with urllib.request.urlopen(base + html.unescape(link.group(1)), timeout=30) as response:
            assert response.read() == b"\x00\x01binary\xff"
        status, page = _get(f"{base}/app/deliveries")
        assert status == 200 and "Deliveries" in page and ".000Z" in page
        status, page = _get(f"{base}/app/subscription_stats")
        assert status == 200 and "records not delivered yet" in page

        # Metadata through the JSON API too.
        status, body = _get(f"{base}/-/metadata.json")
        meta = json.loads(body)["databases"]["app"]
        assert meta["tables"]["streams"]["title"] == "Streams"
        assert meta["tables"]["pending_deliveries"]["description"].startswith("One row per delivered")

        # Canned queries, through their JSON.
        lag = {r["stream"]: r for r in _rows(base, "/app/streams_and_lag")}
        assert lag["orders"]["records"] == 7 and lag["orders"]["subscriptions"] == 1
        # Offsets 0..3 were delivered (0 dead-lettered, 1..3 pending): 3 not delivered yet.
        assert lag["orders"]["max_lag"] == 3 and lag["orders"]["pending"] == 3
        assert lag["orders"]["dead_lettered"] == 1
        assert lag["logs"]["subscriptions"] == 0 and lag["logs"]["records"] == 1

        pending = _rows(base, "/app/pending", subscription="")
        assert [(r["subscription"], r["offset"], r["consumer"]) for r in sorted(pending, key=lambda r: r["offset"])] \
            == [("billing", 1, "worker-1"), ("billing", 2, "worker-2"), ("billing", 3, "worker-2")]
        assert all(r["content_type"] == "json" and '"customer"' in r["value"] for r in pending)
        assert _rows(base, "/app/pending", subscription="nobody") == []

        dead = _rows(base, "/app/dead_letters")
        assert len(dead) == 1
        assert dead[0]["dead_letter_stream"] == "orders-dead"
        assert dead[0]["source_stream"] == "orders" and dead[0]["source_offset"] == "0"
        assert dead[0]["subscription"] == "billing" and dead[0]["last_error"] == "card declined"
        assert dead[0]["time"].endswith("Z")

        progress = _rows(base, "/app/export_progress")
        assert [(r["export"], r["stream"], r["exported_offset"], r["not_exported"], r["closed_files"])
                for r in progress] == [("logs-archive", "logs", 1, 0, 1)]

        latest = _rows(base, "/app/latest_records", stream="orders", limit="3")
        assert [r["offset"] for r in latest] == [6, 5, 4]
        assert latest[0]["content_type"] == "bytes" and latest[0]["value"].startswith("<9 bytes> 0001")
        assert latest[1]["value"] == "plain text, not JSON" and latest[1]["json_fields"] is None
        assert json.loads(latest[2]["value"]) == {"id": 4, "customer": "c0", "ok": True}
        assert latest[2]["json_fields"].split("\n") == ["id: 4", 'customer: "c0"', "ok: true"]
        assert latest[2]["time"].endswith("Z") and latest[2]["key"] == "c0"
        assert len(_rows(base, "/app/latest_records", stream="orders", limit="")) == 7  # default 20
        assert _rows(base, "/app/latest_records", stream="no-such-stream", limit="5") == []

        # The canned query's HTML page: its title, and times rendered in raw SQL results too.
        status, page = _get(f"{base}/app/streams_and_lag")
        assert status == 200 and "Streams and lag" in page and "orders" in page
        status, page = _get(f"{base}/app?" + urllib.parse.urlencode(
            {"sql": "SELECT timestamp FROM chunks WHERE offset = 0 ORDER BY stream_id LIMIT 1"}))
        assert status == 200 and iso in page


def test_datasette_leaves_other_sqlite_files_alone(tmp_path: Path) -> None:
    """A SQLite file that is not sqlstream's, even with tables named alike, gets nothing."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    # Names like sqlstream's, but not its schema (user_version 0, no chunks columns).
    conn.execute("CREATE TABLE streams (id INTEGER PRIMARY KEY, name TEXT, created_at INTEGER)")
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("INSERT INTO streams VALUES (1, 'x', 1700000000000000)")
    conn.execute("INSERT INTO chunks VALUES (1, x'00ff')")
    conn.commit()
    conn.close()
    with datasette(path) as base:
        status, page = _get(f"{base}/other")
        assert status == 200
        assert "sqlstream" not in page and "Streams and lag" not in page
        status, body = _get(f"{base}/-/metadata.json")
        assert "sqlstream" not in body
        status, _ = _get(f"{base}/other/streams_and_lag")
        assert status == 404
        status, page = _get(f"{base}/other/streams")
        assert status == 200 and "1700000000000000" in page and "2023-11-14T22:13:20" not in page
        status, page = _get(f"{base}/other/chunks")
        assert status == 200 and "sqlstream-bytes" not in page


def test_a_file_with_every_table_and_column_but_no_schema_version_is_not_taken_for_sqlstream(
    tmp_path: Path,
) -> None:
    """Only the schema-version check can reject this file: it is a sqlstream file's schema
    and data with ``PRAGMA user_version`` 0, as another application's copy might be."""
    from sqlstream.datasette import schema_objects

    path = tmp_path / "foreign.db"
    _make_sqlstream_file(path)

    def set_version(version: int) -> frozenset[str] | None:
        conn = sqlite3.connect(path)
        try:
            conn.execute(f"PRAGMA user_version = {version}")
            conn.commit()
            return schema_objects(conn)
        finally:
            conn.close()

    current = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert set_version(current) is not None  # everything else passes...
    assert set_version(0) is None  # ...so the version alone decides
    with datasette(path) as base:
        status, page = _get(f"{base}/foreign")
        assert status == 200 and "Streams and lag" not in page
        status, _ = _get(f"{base}/foreign/streams_and_lag")
        assert status == 404
        status, page = _get(f"{base}/foreign/chunks")
        assert status == 200 and "sqlstream-bytes" not in page


def test_readme_datasette_commands_print_the_canned_queries_as_json(tmp_path: Path) -> None:
    """The README's Datasette snippet runs as written (datasette app.db --get ...)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Looking inside with Datasette", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert block, "README's Datasette section lost its sh snippet"
    _make_sqlstream_file(tmp_path / "app.db")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outputs = []
    for line in block.group(1).splitlines():
        assert line.startswith("datasette app.db --get "), line
        argv = [sys.executable, "-m", "datasette", "app.db", "--get", line.split("'")[1]]
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        outputs.append(json.loads(out.stdout))
    assert {r["stream"] for r in outputs[0]} == {"orders", "logs", "orders-dead"}
    assert [r["offset"] for r in outputs[1]] == [6, 5, 4, 3, 2]


def test_datasette_never_shows_a_write_secret_or_its_hash(tmp_path: Path) -> None:
    """Issue 19 item 10: /app/streams(.json) and arbitrary SQL showed streams.write_secret."""
    path = tmp_path / "app.db"
    with sqlstream.open(path) as db:
        secret = db.create_stream("build-log", secret=True).write_secret
        db.create_stream("open")
    assert secret is not None
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with datasette(path) as base:
        pages = [
            _get(f"{base}/app/streams")[1],
            _get(f"{base}/app/streams.json")[1],
            _get(f"{base}/app/streams_now.json")[1],
            _get(f"{base}/app.json?" + urllib.parse.urlencode({"sql": "SELECT * FROM streams"}))[1],
            _get(f"{base}/app.json?" + urllib.parse.urlencode(
                {"sql": "SELECT group_concat(write_secret_sha256) AS h FROM streams"}))[1],
        ]
        for page in pages:
            assert secret not in page and digest not in page
        assert _rows(base, "/app/stream_stats", _sort="name")[0]["secret"] == 1
