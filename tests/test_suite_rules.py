"""Rules for the test suite itself, checked on every test file (new ones too).

No test bounds wall-clock time tightly: on a shared or loaded machine such a bound
measures the machine, and the suite flakes. A wake-up, a timeout, a "without waiting" is
tested by its mechanism (a wait that only a commit can end before its own long timeout,
a fake clock, a count of checks); timing figures belong in benchmarks/. What is allowed:
lower bounds ("never early") and hang guards of ``HANG_GUARD`` seconds or more.

(Stable parametrization ids, the other rule the parallel run needs, are enforced at
collection by tests/conftest.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

HANG_GUARD = 30.0  # seconds: an upper bound on elapsed time below this is a tight bound

# Files with known tight bounds that another branch fixes; each must still have one (so the
# list only shrinks once the fix is merged).
PENDING: set[str] = set()  # test files allowed a tight bound while their fix is in progress

_CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns"}


def _reads_a_clock(node: ast.AST, tainted: set[str]) -> bool:
    """Whether ``node`` reads the wall clock (``time.monotonic()``, ``loop.time()``...) or a
    name assigned from such a reading."""
    for n in ast.walk(node):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _CLOCKS
                and isinstance(n.func.value, ast.Name) and n.func.value.id in ("time", "loop")):
            return True
        if isinstance(n, ast.Name) and n.id in tainted:
            return True
    return False


def _constants(tree: ast.Module) -> dict[str, float]:
    found: dict[str, float] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, (int, float)):
                    found[target.id] = float(node.value.value)
    return found


def _value(node: ast.AST, constants: dict[str, float]) -> float | None:
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return float(value) if isinstance(value, (int, float)) else None


def tight_bounds(source: str) -> list[str]:
    """``assert <elapsed> < N`` (or ``N > <elapsed>``) with N below ``HANG_GUARD``, as text."""
    tree = ast.parse(source)
    constants = _constants(tree)
    found: list[str] = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        tainted: set[str] = set()
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and _reads_a_clock(node.value, tainted):
                tainted.update(n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for node in ast.walk(function):
            if not isinstance(node, ast.Assert):
                continue
            for compare in (c for c in ast.walk(node.test) if isinstance(c, ast.Compare)):
                operands = [compare.left, *compare.comparators]
                for op, left, right in zip(compare.ops, operands, operands[1:]):
                    if isinstance(op, (ast.Gt, ast.GtE)):
                        op, left, right = ast.Lt(), right, left
                    if not isinstance(op, (ast.Lt, ast.LtE)):
                        continue
                    if _reads_a_clock(left, tainted) and not _reads_a_clock(right, tainted):
                        bound = _value(right, constants)
                        if bound is not None and bound < HANG_GUARD:
                            found.append(f"line {node.lineno}: {ast.unparse(compare)}")
    return found


def test_the_scan_finds_tight_bounds_and_lets_mechanisms_and_hang_guards_pass() -> None:
    bad = (
        "import time\nBOUND = 0.5\n"
        "def test_a():\n    t0 = time.monotonic()\n    x = 1\n    elapsed = time.monotonic() - t0\n"
        "    assert elapsed < 1.5\n    assert 0.2 < time.monotonic() - t0 < BOUND\n    assert 2 > elapsed\n"
    )
    assert len(tight_bounds(bad)) == 3
    good = (
        "import time\nWAIT = 30.0\n"
        "def test_b():\n    t0 = time.monotonic()\n    elapsed = time.monotonic() - t0\n"
        "    assert elapsed >= 0.5\n    assert elapsed < WAIT\n    assert time.monotonic() - t0 < 60\n"
        "    assert len([1]) < 2\n"
    )
    assert tight_bounds(good) == []


def test_no_test_bounds_wall_clock_time_tightly() -> None:
    offenders: dict[str, list[str]] = {}
    for path in sorted(TESTS.glob("test_*.py")):
        found = tight_bounds(path.read_text(encoding="utf-8"))
        if found and path.name not in PENDING:
            offenders[path.name] = found
        if path.name in PENDING:
            assert found, f"{path.name} has no tight bound left: remove it from PENDING"
    assert not offenders, (
        "tests that bound elapsed time below a hang guard (test the mechanism instead: a wait only the "
        f"event can end before its own long timeout, the fake clock, a count): {offenders}"
    )
