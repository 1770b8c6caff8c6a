"""Progress of the long operations (issue 15): db.maintain/check/backup and the streaming
runner's catch-up report ``progress(done, total)``; the CLI draws them on terminals only."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sqlstream
import sqlstream.database as database_module
from sqlstream.cli import main
from sqlstream.streaming import Runner, load_config

from test_cli import run  # noqa: F401 - a fixture


def _calls() -> tuple[list[tuple[int, int | None]], Any]:
    calls: list[tuple[int, int | None]] = []
    return calls, lambda done, total: calls.append((done, total))


def _assert_steady(calls: list[tuple[int, int | None]]) -> None:
    """Done never goes back and never passes the total; the last call says finished."""
    assert calls
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)
    assert all(t is not None and 0 <= d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1]


def test_maintain_reports_streams_and_freed_pages_then_finishes(db_path: str) -> None:
    with sqlstream.open(db_path, create=True) as db:
        for name in ("a", "b"):
            db.create_stream(name).extend([b"x" * 2000] * 300)
        db.set_retention("a", max_count=1)
        db.query("SELECT 1")
        with db.transaction():  # freed pages for the vacuum to give back
            db.stream("b").append(b"y")
        db.trim("b", 299)
        calls, progress = _calls()
        report = db.maintain(progress=progress)
    _assert_steady(calls)
    assert report.pages_freed > 100
    # Every freed page and the per-stream steps are counted units of work.
    assert calls[-1][0] >= report.pages_freed + 2


def test_check_reports_records_checked_out_of_the_records_held(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sqlstream.maintenance.CHECK_PROGRESS_EVERY", 100)
    with sqlstream.open(db_path, create=True) as db:
        db.create_stream("a").extend([f"r{i}" for i in range(450)])
        db.create_stream("b").extend(["x"] * 50)
        calls, progress = _calls()
        assert db.check(progress=progress).ok
    _assert_steady(calls)
    assert calls[0] == (0, 500) and calls[-1] == (500, 500)
    assert (200, 500) in calls  # intermediate reports, not only start and end


def test_backup_with_progress_is_still_the_snapshot_taken_when_it_started(
    db_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stepping for progress must not turn the backup into a mix of states, nor restart
    it: commits made by other connections mid-copy are not in the backup."""
    monkeypatch.setattr(database_module, "BACKUP_STEP_PAGES", 4)
    with sqlstream.open(db_path, create=True) as db:
        db.create_stream("s").extend([b"v" * 1000] * 200)
        calls, record = _calls()
        with sqlstream.open(db_path) as writer:
            def progress(done: int, total: int | None) -> None:
                record(done, total)
                if len(calls) in (1, 5):  # commits between steps, from another connection
                    writer.stream("s").extend([b"late"] * 50)

            dest = db.backup(tmp_path / "copy.db", progress=progress)
    assert len(calls) > 10
    _assert_steady(calls)
    assert len({t for _, t in calls}) == 1  # one page count: never restarted on a grown file
    with sqlstream.open(dest, readonly=True) as copy:
        assert copy.stream_info("s").count == 200
        assert copy.check().ok
    with sqlstream.open(db_path, readonly=True) as db:
        assert db.stream_info("s").count == 300


def _serve_config(tmp_path: Path) -> Path:
    config = tmp_path / "sqlstream.toml"
    config.write_text('[store]\nstreamers = ["file"]\n[streamers.file]\nkeys = ["*"]\nwrite_dir = "out"\n')
    return config


def test_runner_reports_the_catch_up_in_heights_then_stops_reporting(db_path: str, tmp_path: Path) -> None:
    with sqlstream.open(db_path, create=True) as db:
        stream = db.create_stream("s")
        for i in range(5):
            stream.append(f"r{i}")
        calls, progress = _calls()
        assert Runner.from_config(db, load_config(_serve_config(tmp_path))).run(once=True, progress=progress)
    _assert_steady(calls)
    total = calls[0][1]
    assert calls[0] == (0, total) and total is not None and total >= 5
    assert len(calls) >= 6  # the start, one per block, the end


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("argv", "label"),
    [(["vacuum"], "vacuum:"), (["check"], "check:"), (["backup", "{tmp}/b.db"], "backup:"),
     (["serve", "--config", "{config}", "--once"], "serve: catching up:")],
)
@pytest.mark.parametrize("with_tqdm", [True, False])
def test_long_commands_draw_progress_with_rate_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, db_path: str, tmp_path: Path, argv: list[str], label: str, with_tqdm: bool
) -> None:
    if with_tqdm:
        pytest.importorskip("tqdm", reason="the progress extra (tqdm) is not installed")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    with sqlstream.open(db_path, create=True) as db:
        stream = db.create_stream("s")
        for i in range(3):
            stream.append(f"r{i}")
    config = _serve_config(tmp_path)
    args = [a.format(tmp=tmp_path, config=config) for a in argv]
    for err, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        if args[0] == "backup":
            args[1] = str(tmp_path / f"b{int(drawn)}.db")
        assert main(["--db", db_path, *args]) == 0
        text = err.getvalue()
        if drawn:
            assert label in text and "/s" in text  # a rate
            assert "100%" in text
        else:
            assert label not in text and "\r" not in text


# --------------------------------------------------------------------------- shell completion


@pytest.mark.parametrize(("line", "expected"), [("sqlstream vac", "vacuum"), ("sqlstream backup --fo", "--force")])
def test_shell_completion_hook_answers_when_argcomplete_is_installed(tmp_path: Path, line: str, expected: str) -> None:
    """What bash's function from `register-python-argcomplete sqlstream` does: run the
    command with argcomplete's variables set and read the candidates it prints."""
    pytest.importorskip("argcomplete", reason="the completion extra (argcomplete) is not installed")
    out = tmp_path / "candidates"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    proc = subprocess.run([sys.executable, "-m", "sqlstream"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert expected in out.read_text().split()
    assert proc.stdout == ""  # the command itself did not run


def test_without_the_completion_variables_the_command_runs_normally(run: Any) -> None:
    status, out, _ = run("--version")
    assert status == 0 and out.startswith("sqlstream ")
