"""Work done once per test run, shared by every pytest-xdist worker (a built wheel, a
package fetched with pip).

A module- or session-scoped fixture runs once per worker process: with two workers a
30-second build ran twice. ``@pytest.mark.xdist_group`` was meant to keep such tests on
one worker, but with pytest 9.2 and pytest-xdist 3.8 ``--dist loadgroup`` no longer groups
at all (pytest-xdist issue #1386: xdist writes the old ``_nodeid`` attribute, which pytest
9.2's structured node ids ignore), and even when it works it serialises the group's tests
on one worker. Instead the first worker to ask does the work in the run's shared temporary
directory under an exclusive file lock; the others wait for the lock and reuse the result.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest


def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory of the whole run: above each xdist worker's own."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` in the run's temporary directory, filled by ``make(folder)`` by
    the first caller of the run; later callers (other workers) get the same folder.

    ``make`` runs while the lock is held, so no caller sees a half-made folder. If it raises,
    the folder is not marked done and the next caller tries again (and fails by itself)."""
    root = run_root(tmp_path_factory)
    folder = root / name
    done = root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder
