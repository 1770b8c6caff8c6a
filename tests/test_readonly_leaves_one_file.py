"""Read-only opens leave the file as one ``.db`` after the last close (issue 20, item 9).

A read-only SQLite connection creates ``-wal`` and ``-shm`` beside a WAL database but may
not delete them on close; the CLI's reading commands and ``open(readonly=True)`` left
``app.db-wal`` (0 B) and ``app.db-shm`` behind.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

import sqlstream
from sqlstream.cli import main

CONFIG = '[store]\nstreamers = ["file"]\n\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out"\n'

READING_COMMANDS = [
    ["streams"],
    ["info", "orders"],
    ["read", "orders"],
    ["read", "orders", "--json"],
    ["read-many", "orders=0"],
    ["sql", "SELECT count(*) FROM chunks"],
    ["check"],
    ["subscriptions"],
    ["pending", "billing"],
    ["serve", "--config", "{config}", "--status"],
]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with sqlstream.open(path) as db:
        db.create_stream("orders").extend([{"id": 1}, {"id": 2}])
        db.create_subscription("billing", "orders")
    (tmp_path / "sqlstream.toml").write_text(CONFIG)
    assert sorted(os.listdir(tmp_path)) == ["app.db", "sqlstream.toml"]
    return path


def _left(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path.parent) if n.startswith(path.name))


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_a_reading_command_leaves_only_the_db_file(app: Path, command: list[str]) -> None:
    argv = [a.replace("{config}", str(app.parent / "sqlstream.toml")) for a in command]
    before = app.read_bytes()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--db", str(app), *argv])
    assert code == 0, err.getvalue()
    assert _left(app) == ["app.db"]
    assert app.read_bytes() == before  # nothing in the file changed


def test_open_readonly_leaves_only_the_db_file(app: Path) -> None:
    before = app.read_bytes()
    with sqlstream.open(app, readonly=True) as db:
        assert [r.value for r in db.stream("orders").read(0)] == [{"id": 1}, {"id": 2}]
        assert db.stream("orders").read(2, timeout=0.01) == []  # the watcher's connection too
    assert _left(app) == ["app.db"]
    assert app.read_bytes() == before


def test_a_reader_closing_while_a_writer_is_open_leaves_the_writers_files(app: Path) -> None:
    """Not the last close: the WAL belongs to the open writer and stays."""
    writer = sqlstream.open(app)
    writer.stream("orders").append({"id": 3})
    with sqlstream.open(app, readonly=True) as reader:
        assert reader.stream("orders").info().next_offset == 3
    assert "app.db-wal" in _left(app)
    writer.close()
    assert _left(app) == ["app.db"]
