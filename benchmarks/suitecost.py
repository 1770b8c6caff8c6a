"""What each test of the suite costs in CPU, per test and per xdist worker: a pytest plugin.

Wall time on a shared machine mostly measures the other jobs; the CPU a test burns (its
own process plus the child processes it waited for) is what it costs every contributor.
This plugin records, for each test (setup, call and teardown together), the CPU of the
pytest process (all its threads) and of its reaped children, and the wall time; then it
prints the top consumers and each worker's totals (an xdist group pinned to one worker
shows up as one worker far above the other).

    python -m pytest -p benchmarks.suitecost -n 2 -q          # from the checkout
    SQLSTREAM_SUITECOST=costs.jsonl python -m pytest -p benchmarks.suitecost

Each worker appends one JSON line per test to ``$SQLSTREAM_SUITECOST`` (default
``.suitecost.jsonl`` in the current directory, truncated at the start of a run by the
controller); the controller prints the summary at the end. ``python -m benchmarks.suitecost
FILE`` prints the summary of a saved file again.

A session-scoped fixture's cost lands on the first test that uses it; a server a fixture
starts counts when its process is reaped (at the fixture's teardown).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_DEFAULT = ".suitecost.jsonl"


def _path() -> Path:
    return Path(os.environ.get("SQLSTREAM_SUITECOST", _DEFAULT))


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _path().write_text("")  # the controller (or a serial run) starts a fresh file


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, None]:
    own0, children0 = _cpu()
    wall0 = time.monotonic()
    yield
    own1, children1 = _cpu()
    row = {
        "test": item.nodeid,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "own": round(own1 - own0, 4),
        "children": round(children1 - children0, 4),
        "wall": round(time.monotonic() - wall0, 4),
        "end": time.time(),
    }
    with _path().open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def summary(rows: list[dict[str, Any]], top: int = 25) -> str:
    lines: list[str] = []
    cpu = lambda r: r["own"] + r["children"]  # noqa: E731
    total = sum(cpu(r) for r in rows)
    lines.append(f"{len(rows)} tests, CPU {total:.1f} s (own {sum(r['own'] for r in rows):.1f} s, "
                 f"children {sum(r['children'] for r in rows):.1f} s), test wall {sum(r['wall'] for r in rows):.1f} s")
    workers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        workers[r["worker"]].append(r)
    for name, mine in sorted(workers.items()):
        lines.append(f"  worker {name}: {len(mine)} tests, CPU {sum(cpu(r) for r in mine):.1f} s, "
                     f"wall {sum(r['wall'] for r in mine):.1f} s")
    files: dict[str, float] = defaultdict(float)
    for r in rows:
        files[r["test"].split("::")[0]] += cpu(r)
    lines.append(f"top {top} tests by CPU (own + children), s:")
    for r in sorted(rows, key=cpu, reverse=True)[:top]:
        lines.append(f"  {cpu(r):7.2f}  wall {r['wall']:6.2f}  {r['worker']:>4}  {r['test']}")
    lines.append(f"top {top} files by CPU, s:")
    for name, value in sorted(files.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        lines.append(f"  {value:7.2f}  {name}")
    return "\n".join(lines)


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rows = _read(_path())
    if rows:
        terminalreporter.write_sep("=", "CPU per test (benchmarks/suitecost.py)")
        terminalreporter.write_line(summary(rows))


if __name__ == "__main__":
    print(summary(_read(Path(sys.argv[1] if len(sys.argv) > 1 else _DEFAULT)), top=int(sys.argv[2]) if len(sys.argv) > 2 else 25))
