"""Shared fixtures: real database files in tmp paths, and a check that tests close them."""

from __future__ import annotations

import gc
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

# Tests import the package from the checkout unless an installed copy is asked for.
ROOT = Path(__file__).resolve().parent.parent
if os.environ.get("SQLSTREAM_TEST_INSTALLED") != "1" and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlstream  # noqa: E402


# Where the suite's files go: a RAM file system (/dev/shm) when there is one with room,
# unless the caller chose (TMPDIR set). A new database file costs ~7 ms of CPU and ~36 ms
# of wall time on this project's CI disk, ten fdatasync()s of it (two rollback-journal
# transactions to set auto_vacuum and WAL, the first WAL frame, the checkpoint at close),
# and the suite creates ~2,100 of them and opens ~2,700 more: the workers waited on the
# disk for the most part of their time (benchmarks/findings.md, issue 20 item 2,
# second round). No test depends on data reaching the disk (a crash test kills a
# process; it cannot cut the power), so the tests check the same things on either;
# SQLSTREAM_TEST_DISK_TMP=1 keeps the system's temporary folder. Set before pytest picks
# its base temporary folder and before any worker or child starts, so all of them
# (tempfile.mkdtemp() in the models, tmp_path) use it. A passed test's tmp_path is
# removed at its teardown (pyproject.toml: tmp_path_retention_policy), so the run holds
# little memory; a failed test's stays for a look, as on disk.
_RAM_TMP, _RAM_TMP_ROOM = "/dev/shm", 2 << 30


def _ram_temp_root() -> None:
    if os.environ.get("TMPDIR") or os.environ.get("SQLSTREAM_TEST_DISK_TMP") == "1":
        return
    try:
        st = os.statvfs(_RAM_TMP)
    except OSError:
        return
    if st.f_bavail * st.f_frsize >= _RAM_TMP_ROOM and os.access(_RAM_TMP, os.W_OK | os.X_OK):
        os.environ["TMPDIR"] = _RAM_TMP
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


_ram_temp_root()

from hypothesis import HealthCheck, is_hypothesis_test, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# A memory address in a test id ("<object object at 0x7f...>", a function's repr): it differs
# from one process to the next, so pytest-xdist's workers collect different test ids and
# the run stops before any test ran.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse unstable test ids at collection, in serial runs too, with the fix named."""
    unstable = [item.nodeid for item in items if _ADDRESS.search(item.nodeid)]
    if unstable:
        raise pytest.UsageError(
            "test ids must be the same in every process (pytest-xdist compares them), but these hold a "
            "memory address; give the parametrization ids= (strings, or a function that renders the "
            "value without its address):\n  " + "\n  ".join(unstable)
        )
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items[:] = sorted(items, key=_run_early)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (the README's command, through addopts) starts one worker more than the
    CPUs this process may run on.

    Many tests wait part of their time, not on the CPU: for a server or child process to
    start, for a SIGKILLed child to be reaped, for a blocked reader to wake. With one worker
    per CPU those waits left the CPUs idle (the clean-clone CI run used ~375 s of CPU in
    261 s on two cores: 72% busy); a third worker fills them. ``PYTEST_XDIST_AUTO_NUM_WORKERS``
    still overrides this, and ``-n N`` is taken as given."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return cpus + 1


def _run_early(item: pytest.Item) -> int:
    """Where a test goes in an xdist worker's collection: the long ones first.

    The workers are handed tests in collection order, so a long test collected late (the
    file order put the README walk-through and mypy near the end) ran while the other
    worker had finished and sat idle. Longest first keeps both busy to the end: tests
    marked slow, then Hypothesis tests (each runs dozens of examples), then the rest, each
    group in file order (the sort is stable and the same in every worker, as xdist needs).
    Serial runs keep the file order."""
    if item.get_closest_marker("slow") is not None:
        return 0
    if is_hypothesis_test(getattr(item, "obj", None)) or hasattr(getattr(item, "cls", None), "state_machine_factory"):
        return 1
    return 2


@pytest.fixture(scope="session", autouse=True)
def _child_bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Child interpreters (the CLI, helper processes) reuse compiled byte code.

    Where writing byte code is turned off (PYTHONDONTWRITEBYTECODE, as in some CI images),
    every child process the suite starts compiled sqlstream from source again: a tenth
    of a second of CPU each, hundreds of times. The children get a byte-code cache of
    their own instead, in the session's temporary directory (shared by the xdist workers,
    never in the checkout), so each module is compiled once per run. Where byte code is
    written as usual, nothing changes.
    """
    if not sys.flags.dont_write_bytecode or "PYTHONPYCACHEPREFIX" in os.environ:
        yield
        return
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    try:
        yield
    finally:
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        if saved is not None:
            os.environ["PYTHONDONTWRITEBYTECODE"] = saved


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.db")


@pytest.fixture
def db(db_path: str) -> Iterator[sqlstream.Database]:
    database = sqlstream.open(db_path)
    yield database
    database.close()


@pytest.fixture(autouse=True)
def _connections_closed() -> Iterator[None]:
    """Every test must close what it opened (watcher threads get a moment to exit)."""
    before = {id(c) for c in apsw.connections()}
    yield
    # A full garbage collection costs tens of milliseconds once the worker holds every
    # module of the suite (about a minute of CPU over the suite), and most tests leave no
    # connection at all: collect only when one is still there, to tell a leak from garbage
    # waiting for the collector (a cycle holding a closed-over Database, say).
    if not any(id(c) not in before for c in apsw.connections()):
        return
    deadline = time.monotonic() + 3.0
    while True:
        gc.collect()
        leaked = [c for c in apsw.connections() if id(c) not in before]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left {len(leaked)} apsw connection(s) open: {[c.filename for c in leaked]}"
