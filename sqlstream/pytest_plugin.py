"""pytest fixtures for sqlstream, loaded through the ``pytest11`` entry point.

``sqlstream_db``: a fresh database file under the test's ``tmp_path``. ``sqlstream_factory``:
opens more (``sqlstream_factory("other")``). ``sqlstream_clock``: a
:class:`~sqlstream.testing.FakeClock` installed on every database the factory opens.
``sqlstream_kafka``: a Kafka-protocol listener on a fresh file, on a free loopback port
(its ``bootstrap_servers`` for any Kafka client, its ``path`` for ``sqlstream.open``);
needs the ``kafka`` extra (the test is skipped without it).

At teardown every database the factory opened is closed, then each file is reopened
read-only and verified with ``check()``: a test that left a file with a broken invariant
fails there (an error at teardown), even if the test itself passed. Set
``sqlstream_factory.check_at_teardown = False`` in a test that breaks a file on purpose.

Each test gets its own files (``tmp_path`` is per test), so the fixtures work unchanged
under pytest-xdist: workers never share a file.

Async tests (anyio's ``@pytest.mark.anyio`` or pytest-asyncio's ``@pytest.mark.asyncio``)
use ``db = await sqlstream_factory.aio()``: a :class:`sqlstream.aio.AsyncDatabase` on the
loop of the test, closed and checked at teardown like the others (the fixtures stay
synchronous, so they need no async plugin of their own). ``await
sqlstream.aio.open(sqlstream_db.path)`` opens the test's file for asyncio too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .database import Database, open as _open
from .errors import InvalidArgument
from .testing import FakeClock

if TYPE_CHECKING:
    from .aio import AsyncDatabase

__all__ = ["SqlstreamFactory"]


class SqlstreamFactory:
    """Opens databases in a test's temporary directory and checks them at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock: FakeClock | None = None
        self.check_at_teardown = True
        self._opened: list[Database] = []
        self._opened_async: list[AsyncDatabase] = []

    def __call__(self, name: str = "test", **options: Any) -> Database:
        """Open (creating) ``<tmp_path>/sqlstream/<name>.db`` with ``sqlstream.open``'s
        options. The same name twice gives two Database objects on one file.

        ``name`` is a plain file name part: a path (``"../x"``, ``"/abs"``, ``"a/b"``)
        would open a file outside the test's folder, shared with other tests and never
        cleaned up, so it raises :class:`~sqlstream.errors.InvalidArgument`."""
        path = self.path_of(name)
        self.directory.mkdir(exist_ok=True)
        db = _open(path, **options)
        if self.clock is not None:
            self.clock.install(db)
        self._opened.append(db)
        return db

    async def aio(self, name: str = "test", **options: Any) -> AsyncDatabase:
        """``await factory.aio(name)``: the same file as ``factory(name)``, opened with
        :func:`sqlstream.aio.open` on the running loop (the fake clock installed too).
        Closing it in the test is optional: teardown closes and checks it."""
        from . import aio  # only async tests pay for importing asyncio

        path = self.path_of(name)
        self.directory.mkdir(exist_ok=True)
        adb = await aio.open(path, **options)
        if self.clock is not None:
            self.clock.install(adb.sync)
        self._opened.append(adb.sync)
        self._opened_async.append(adb)
        return adb

    def path_of(self, name: object) -> Path:
        """``<directory>/<name>.db``; InvalidArgument unless ``name`` is a plain file name part."""
        if not isinstance(name, str):
            raise InvalidArgument(f"a database name is a str, not {type(name).__name__}",
                                  hint='e.g. sqlstream_factory("other")')
        separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
        problem = None
        if name in ("", ".", "..") or any(sep in name for sep in separators) or os.path.isabs(name):
            problem = "is a path, not a plain name"
        elif "\x00" in name:
            problem = "contains a NUL character"
        else:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                problem = "is not valid Unicode (a lone surrogate)"
        if problem is None and os.path.dirname(os.path.join(self.directory, f"{name}.db")) != str(self.directory):
            problem = "does not stay in the test's folder"  # e.g. a drive letter on Windows
        if problem is not None:
            raise InvalidArgument(
                f"database name {name!r} {problem}: the factory opens files only in the test's own folder "
                f"({self.directory})"[:400],
                hint='use a plain name such as sqlstream_factory("other"); for a file elsewhere, '
                     "call sqlstream.open(path) yourself",
            )
        return self.directory / f"{name}.db"

    def use_clock(self, clock: FakeClock) -> None:
        """Install ``clock`` on every database opened so far and from now on."""
        self.clock = clock
        for db in self._opened:
            if not db.closed:
                clock.install(db)

    def close_and_check(self) -> list[str]:
        """Close every database opened here; return the problems ``check()`` finds."""
        paths = list(dict.fromkeys(db.path for db in self._opened))
        for db in self._opened:
            db.close()
        self._opened.clear()
        for adb in self._opened_async:
            # The test's loop is gone by now: close without it (ends the worker thread).
            adb.close_from_outside()
        self._opened_async.clear()
        if not self.check_at_teardown:
            return []
        problems: list[str] = []
        for path in paths:
            if not os.path.exists(path):
                continue  # the test removed it: nothing to verify
            with _open(path, readonly=True) as db:
                report = db.check()
            problems.extend(f"{path}: {p}" for p in report.integrity)
            problems.extend(f"{path}: {p}" for p in report.problems)
        return problems


@pytest.fixture
def sqlstream_factory(tmp_path: Path) -> Iterator[SqlstreamFactory]:
    """Opens sqlstream databases under ``tmp_path``; closes and ``check()``s them after."""
    factory = SqlstreamFactory(tmp_path / "sqlstream")
    yield factory
    problems = factory.close_and_check()
    if problems:
        pytest.fail("sqlstream check() found broken invariants after the test:\n" + "\n".join(problems),
                    pytrace=False)


@pytest.fixture
def sqlstream_db(sqlstream_factory: SqlstreamFactory) -> Database:
    """A fresh sqlstream database file for this test (closed and checked at teardown)."""
    return sqlstream_factory()


@pytest.fixture
def sqlstream_clock(sqlstream_factory: SqlstreamFactory) -> FakeClock:
    """A fake clock, installed on every database ``sqlstream_factory``/``sqlstream_db`` opens.

    ``sqlstream_clock.advance(31)`` expires a 30 s ack deadline at once. Install it on a
    database opened otherwise with ``sqlstream_clock.install(db)``.
    """
    clock = FakeClock()
    sqlstream_factory.use_clock(clock)
    return clock


@pytest.fixture
def sqlstream_kafka(tmp_path: Path) -> Iterator[Any]:
    """A Kafka listener on ``<tmp_path>/sqlstream/kafka.db`` (a free 127.0.0.1 port).

    Yields a :class:`sqlstream.kafka.RunningListener`: ``.bootstrap_servers`` for Kafka
    clients, ``.path`` for the file. Stopped at teardown, then the file is ``check()``ed.
    """
    try:
        # The listener's dependencies are an optional extra: only this fixture needs them.
        from . import kafka
    except ImportError as exc:
        pytest.skip(f"sqlstream_kafka needs the kafka extra (pip install 'sqlstream[kafka]'): {exc}")
    directory = tmp_path / "sqlstream"
    directory.mkdir(exist_ok=True)
    path = directory / "kafka.db"
    running = kafka.start(path, kafka.Settings(port=0))
    try:
        yield running
    finally:
        running.close()
    with _open(path, readonly=True) as db:
        report = db.check()
    problems = [str(p) for p in (*report.integrity, *report.problems)]
    if problems:
        pytest.fail("sqlstream check() found broken invariants after the test:\n" + "\n".join(problems),
                    pytrace=False)
