"""The benchmarks run (quick mode) so they cannot rot; their figures are not judged here.

Speed targets live in benchmarks/RESULTS.md, measured side by side; a timed assertion in a
unit test on a shared machine would only be noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.multiprocess
def test_quick_benchmarks_run_and_report(tmp_path: Path) -> None:
    """`python -m benchmarks --quick` finishes, reports every workload and loses no record."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    for workload in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert f"### {workload}" in results, f"{workload} missing from RESULTS.md"
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert raw, "results.json is empty"
