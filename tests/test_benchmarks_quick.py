"""The benchmarks run (quick mode) so they cannot rot; their figures are not judged here.

Speed targets live in benchmarks/RESULTS.md, measured side by side; a timed assertion in a
unit test on a shared machine would only be noise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_benchmarks_run_and_report(tmp_path: Path) -> None:
    """`python -m benchmarks --quick` finishes, reports every workload and loses no record."""
    # PYTHONFAULTHANDLER: if the run hangs, SIGABRT makes it print every thread's stack.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
    # Two rounds, not quick mode's three: the second still rotates the contenders' order
    # (every code path of a round runs), and the figures are not what this test checks.
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--rounds", "2", "--out", str(tmp_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        pytest.fail(f"quick benchmarks hung; stacks:\n{stderr[-6000:]}\n{stdout[-2000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9"):
        assert f"### {workload}" in results, f"{workload} missing from RESULTS.md"
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert raw, "results.json is empty"


@pytest.mark.slow
def test_quick_streaming_benchmark_runs_and_reports_both_commit_shapes() -> None:
    """`python -m benchmarks.streaming --quick` finishes and prints both shapes, side by side."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--quick", "--rounds", "1"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for shape in ("single-record commits", "1,000-record commits"):
        assert f"| {shape} | sqlstream file service | " in done.stdout
        assert f"| {shape} | raw open/write/rename | " in done.stdout
    assert "failed" not in done.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_jetstream_benchmark_runs_and_reports_relay_and_direct_side_by_side() -> None:
    """`python -m benchmarks.jetstream --quick` forwards every record and prints both publishers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.jetstream", "--quick", "--rounds", "1"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    if "skipped: " in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])  # no nats-server or nats-py here
    for shape in ("single-record commits", "100-record commits"):
        assert f"| {shape} | sqlstream jetstream relay | " in done.stdout
        assert f"| {shape} | nats-py publish_async | " in done.stdout
    assert "failed" not in done.stdout and "FAILED" not in done.stderr, done.stdout + done.stderr[-3000:]


@pytest.mark.slow
def test_quick_startup_benchmark_runs_and_reports_every_case_beside_the_bare_interpreter() -> None:
    """`python -m benchmarks.startup --quick` times fresh processes and prints each case."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--quick", "--rounds", "1"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for case in ("python -c pass", "python -c 'import sqlstream'", "--version", "-h"):
        assert f"| `{case}" in done.stdout or f"{case}` |" in done.stdout, (case, done.stdout)
    assert "Targets: `import sqlstream`" in done.stdout
