"""Runner.stop() streams what was committed before it (issue 20, item 5).

The README's in-process snippet is ``runner.start(); orders.append(...); runner.stop();
runner.join()``. Before, ``stop()`` only set the stop event, so a run that had not reached
the append yet ended without it and the lag grew by one per run.
"""

from __future__ import annotations

from pathlib import Path

import sqlstream
from sqlstream.archive import ArchiveReader
from sqlstream.streaming import Runner, load_config


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sqlstream.toml"
    path.write_text(body)
    return path


FILE = '[store]\nstreamers = ["file"]\n\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out"\n'
ARCHIVE = '[store]\nstreamers = ["archive"]\n\n[streamers.archive]\nkeys = ["orders"]\ndir = "archives"\n'


def _lag(db: sqlstream.Database) -> list[tuple[str, int]]:
    return [(name, head - height) for name, height, head in
            db.query("SELECT service, height, (SELECT txn FROM last_txn) FROM streaming_progress").rows]


def test_start_append_stop_join_streams_the_append_every_run(tmp_path: Path, db: sqlstream.Database) -> None:
    orders = db.create_stream("orders")
    config = load_config(_config(tmp_path, FILE))
    for run in range(1, 4):  # the README snippet, pasted three times on one file
        runner = Runner.from_config(db, config)
        runner.start()
        orders.append({"id": run})
        runner.stop()
        runner.join()
        assert _lag(db) == [("file", 0)], f"run {run}"
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    heights = [txn for (txn,) in db.query("SELECT DISTINCT txn FROM chunks ORDER BY txn").rows]
    assert written == sorted(f"block-{h}-{part}" for h in heights for part in ("data", "meta"))


def test_stop_drains_a_self_paced_service_into_a_closed_archive(tmp_path: Path, db: sqlstream.Database) -> None:
    orders = db.create_stream("orders")
    runner = Runner.from_config(db, load_config(_config(tmp_path, ARCHIVE)))
    runner.start()
    orders.extend(["a", "b"])
    runner.stop()
    runner.join()
    payloads = []
    for path in sorted(p for p in (tmp_path / "archives").rglob("*") if p.is_file()
                       and ".sqlstream-staging" not in p.parts):
        with ArchiveReader(path) as reader:
            payloads += [payload for _meta, payload in reader]
    assert payloads == [b"a", b"b"]
    assert _lag(db) == [("archive", 0)]


def test_stop_without_drain_ends_the_run_without_streaming(tmp_path: Path, db: sqlstream.Database) -> None:
    db.create_stream("orders").append("committed before the run")
    runner = Runner.from_config(db, load_config(_config(tmp_path, FILE)))
    runner.stop(drain=False)  # before the run starts: it ends at once
    runner.start()
    runner.join()
    assert runner.result == {}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_service_failing_while_draining_ends_the_stop_with_its_error_recorded(
        tmp_path: Path, db: sqlstream.Database) -> None:
    """stop-node-on-error = false retries for ever while running, but a drain does not wait
    on a failing service (a `finally: stop(); join()` must end)."""
    orders = db.create_stream("orders")
    (tmp_path / "out").write_text("a file where the output directory should be")
    runner = Runner.from_config(db, load_config(_config(tmp_path, FILE + "stop-node-on-error = false\n")))
    runner.stop()  # before the run: it goes straight to the drain
    orders.append({"id": 1})
    thread = runner.start()
    thread.join(120)  # liveness only: without the fix it never ends
    assert not thread.is_alive()
    runner.join()
    (error,) = db.query("SELECT last_error FROM streaming_cursors").rows[0]
    assert error is not None and "block" in error
    assert _lag(db) == [("file", db.query("SELECT txn FROM last_txn").rows[0][0])]
