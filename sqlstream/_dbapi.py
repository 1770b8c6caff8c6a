"""A PEP 249 (DB-API 2.0) face on apsw, the driver behind SQLAlchemy's ``sqlite+sqlstream://``.

Why it exists: sqlstream uses apsw, which carries its own copy of SQLite. Python's
``sqlite3`` (SQLAlchemy's default SQLite driver) links another. Two copies of SQLite in
one process do not see each other's locks — POSIX advisory locks belong to the process,
and each copy keeps its own table of them — so a process that writes one WAL file
through both corrupts it (SQLite's "How To Corrupt An SQLite Database File", §2.2.1;
reproduced here: "database disk image is malformed" within a hundred concurrent
transactions). Through this module SQLAlchemy uses the same SQLite as sqlstream.

Scope: what SQLAlchemy's SQLite dialect and ordinary Core/ORM use needs — connect,
cursors (execute, executemany, fetch*, description, rowcount, lastrowid), commit,
rollback, create_function, the PEP 249 exception tree. Differences from ``sqlite3``:

* Transactions: with ``isolation_level`` not None (the default) a transaction begins
  implicitly, as ``BEGIN IMMEDIATE``, before the first statement that writes (DML, DDL,
  SAVEPOINT; not PRAGMA), like ``sqlite3``'s legacy mode but taking SQLite's write lock
  up front, so a transaction never fails half-way with "database is locked" (it waits up
  to ``timeout``). Reads before the first write run in autocommit. ``isolation_level =
  None`` is autocommit.
* Connections get sqlstream's settings (busy handler, foreign keys, ``synchronous``, no
  double-quoted string literals); ``detect_types`` and adapters are not supported.
* A commit that wrote calls the hooks sqlstream's outbox registers (``after_commit``),
  and checkpoints the WAL past 1,000 pages as SQLite's autocheckpoint would.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apsw

from . import connection as cx
from .checkpoint import checkpoint_mode, leave_checkpoints_out
from .engine import refuse_waiting_for_own_write, register_write_holder

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"
sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(p) for p in sqlite_version.split(".")[:3])
Binary = bytes
AUTOCHECKPOINT_PAGES = 1000


class Warning(Exception):  # noqa: A001 - PEP 249 names
    """PEP 249 Warning."""


class Error(Exception):
    """PEP 249 base error; the apsw exception is the ``__cause__``."""

    sqlite_errorname = ""


class InterfaceError(Error):
    """Misuse of the interface (e.g. a value that cannot be bound)."""


class DatabaseError(Error):
    """An error reported by SQLite."""


class DataError(DatabaseError):
    """A value too big or of the wrong type for SQLite."""


class OperationalError(DatabaseError):
    """Locked, busy, I/O, missing table, syntax: what sqlite3 reports as OperationalError."""


class IntegrityError(DatabaseError):
    """A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) failed."""


class InternalError(DatabaseError):
    """SQLite's internal error."""


class ProgrammingError(DatabaseError):
    """Use of a closed connection or cursor, wrong number of parameters."""


class NotSupportedError(DatabaseError):
    """A feature this module does not offer."""


_MAPPING: tuple[tuple[type[BaseException], type[Error]], ...] = (
    (apsw.ConstraintError, IntegrityError),
    (apsw.TooBigError, DataError),
    (apsw.MismatchError, DataError),
    (apsw.ConnectionClosedError, ProgrammingError),
    (apsw.CursorClosedError, ProgrammingError),
    (apsw.BindingsError, ProgrammingError),
    (apsw.InternalError, InternalError),
    (apsw.CorruptError, DatabaseError),
    (apsw.NotADBError, DatabaseError),
    (apsw.Error, OperationalError),
)


def _error(exc: BaseException) -> Error:
    for source, target in _MAPPING:
        if isinstance(exc, source):
            if isinstance(exc, (apsw.ConnectionClosedError, apsw.CursorClosedError)):
                # The text SQLAlchemy's dialect looks for to recognise a dead connection.
                err: Error = target("Cannot operate on a closed database.")
            else:
                err = target(str(exc))
            err.sqlite_errorname = f"SQLITE_{type(exc).__name__.removesuffix('Error').upper()}"
            return err
    return InterfaceError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except apsw.Error as exc:
        raise _error(exc) from exc
    except (TypeError, OverflowError, UnicodeEncodeError) as exc:  # a value apsw cannot bind
        raise InterfaceError(f"cannot bind a parameter: {exc}") from exc


# Statements that never start a transaction even though SQLite does not call them
# read-only: settings and transaction control.
_NO_IMPLICIT_BEGIN = {"PRAGMA", "VACUUM", "ANALYZE", "ATTACH", "DETACH", "REINDEX", "BEGIN", "COMMIT",
                      "END", "ROLLBACK", "RELEASE"}
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.S)


def _first_word(sql: str) -> str:
    match = _FIRST_WORD.match(sql)
    return match.group(1).upper() if match else ""


def connect(
    database: str,
    timeout: float = 5.0,
    isolation_level: str | None = "",
    detect_types: int = 0,
    check_same_thread: bool = True,
    uri: bool = False,
    cached_statements: int = 128,
    *,
    synchronous: str = "normal",
) -> Connection:
    """Open a connection (arguments as ``sqlite3.connect``; ``synchronous`` as ``sqlstream.open``)."""
    if detect_types:
        raise NotSupportedError("detect_types is not supported; SQLAlchemy's types convert values")
    if uri or str(database) in ("", ":memory:"):
        raise NotSupportedError("sqlite+sqlstream:// needs the path of a database file (no URI, no :memory:)")
    del check_same_thread, cached_statements  # apsw connections may be used from any thread
    return Connection(str(database), float(timeout), isolation_level, synchronous)


_ready: set[str] = set()  # files this process has seen at the current schema version


def _ensure_schema(path: str, timeout: float, synchronous: str) -> None:
    key = os.path.realpath(path)
    if key in _ready:
        return
    from .database import Database

    Database(path, busy_timeout=timeout, synchronous=synchronous).close()
    _ready.add(key)


class Connection:
    """A PEP 249 connection over one apsw connection (``apsw``, for sqlstream's outbox)."""

    def __init__(self, path: str, timeout: float, isolation_level: str | None, synchronous: str) -> None:
        try:
            # sqlstream.open() creates the file (mode 0600), switches it to WAL and applies
            # the migrations; only then does this connection open it.
            _ensure_schema(path, timeout, synchronous)
            self.apsw = cx.connect(path, busy_timeout=timeout, synchronous=synchronous)
            self.path_key = os.path.realpath(path)
            # Before its first wait for the write lock: refused at once when this thread
            # holds a sqlstream Database's transaction on the file (its own lock).
            cx.connection_busy_handler(self.apsw, timeout, functools.partial(
                refuse_waiting_for_own_write, path, self.path_key, waiter="a SQLAlchemy connection"))
            # $SQLSTREAM_CHECKPOINTS=external: Litestream (or another process) owns them.
            self._checkpoints = checkpoint_mode(None) == "auto"
            if not self._checkpoints:
                leave_checkpoints_out(self.apsw)
        except apsw.Error as exc:
            raise _error(exc) from exc
        except Exception as exc:  # noqa: BLE001 - sqlstream's own errors, in PEP 249 terms
            raise OperationalError(str(exc)) from exc
        self.path = path
        self.last_thread = 0  # the thread that ran the latest statement (Cursor._run)
        self.isolation_level = isolation_level
        self._after_commit: list[Callable[[], None]] = []
        self.sqlstream_txn: int | None = None  # the outbox's txn number for the open transaction
        self.apsw.set_wal_hook(self._wal_hook)
        self.apsw.set_rollback_hook(self._rolled_back)
        self.apsw.set_commit_hook(self._committing)
        register_write_holder(self)

    def held_by_this_thread(self) -> bool:
        """Whether this connection has a write transaction open, begun or used by the
        calling thread (sqlstream.engine.WriteHolder): a sqlstream write of this thread
        would wait for its own lock."""
        try:
            writing = self.apsw.txn_state() == apsw.SQLITE_TXN_WRITE
        except apsw.Error:  # closed
            return False
        return writing and self.last_thread == threading.get_ident()

    # -- hooks: run by SQLite on this connection's own thread, inside its calls

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, after the current transaction commits (dropped on rollback)."""
        self._after_commit.append(callback)

    def _wal_hook(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        # SQLite calls this after a commit that wrote, with the write lock released.
        callbacks, self._after_commit = self._after_commit, []
        self.sqlstream_txn = None
        if self._checkpoints and pages >= AUTOCHECKPOINT_PAGES:  # a WAL hook replaces SQLite's autocheckpoint
            with contextlib.suppress(apsw.Error):
                conn.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
        for callback in callbacks:
            with contextlib.suppress(Exception):  # a wake-up must never fail a commit
                callback()
        return apsw.SQLITE_OK

    def _committing(self) -> bool:
        # SQLite calls this for every commit of a write transaction, however it is issued
        # (commit(), COMMIT in SQL), before it is durable: the transaction's txn number
        # (sqlalchemy._txn_number) ends with it; the counters row holds it.
        self.sqlstream_txn = None
        return False  # False: let the commit proceed

    def _rolled_back(self) -> None:
        self._after_commit = []
        self.sqlstream_txn = None

    # -- PEP 249

    @property
    def in_transaction(self) -> bool:
        return not self.apsw.getautocommit()

    def begin_if_needed(self) -> None:
        """Begin (``BEGIN IMMEDIATE``) unless in a transaction or in autocommit mode."""
        self.last_thread = threading.get_ident()
        if self.isolation_level is not None and self.apsw.getautocommit():
            with _translated():
                self.apsw.execute("BEGIN IMMEDIATE")

    def cursor(self) -> Cursor:
        return Cursor(self)

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        return self.cursor().execute(sql, parameters)

    def commit(self) -> None:
        if not self.apsw.getautocommit():
            with _translated():
                self.apsw.execute("COMMIT")
        self.sqlstream_txn = None

    def rollback(self) -> None:
        if not self.apsw.getautocommit():
            with _translated():
                self.apsw.execute("ROLLBACK")
        self._rolled_back()

    def close(self) -> None:
        with contextlib.suppress(apsw.Error):
            self.apsw.close(True)

    def create_function(self, name: str, narg: int, func: Callable[..., Any], *, deterministic: bool = False) -> None:
        with _translated():
            self.apsw.create_scalar_function(name, func, narg, deterministic=deterministic)


_Row = tuple[Any, ...]


class Cursor:
    """A PEP 249 cursor. Rows are fetched lazily, except a writing statement's (RETURNING)."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: Iterator[_Row] = iter(())
        self._cursor: apsw.Cursor | None = None
        self._closed = False

    def _run(self, sql: str, run: Callable[[apsw.Cursor], Any]) -> tuple[apsw.Cursor, bool]:
        """Run a statement with the implicit BEGIN rule; return (apsw cursor, read-only)."""
        conn = self.connection
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        if self._cursor is not None:
            with contextlib.suppress(apsw.Error):
                self._cursor.close(True)
        conn.last_thread = threading.get_ident()
        seen: dict[str, Any] = {}
        word = _first_word(sql)
        wants_begin = conn.isolation_level is not None and word not in _NO_IMPLICIT_BEGIN

        def trace(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            readonly = cursor.is_readonly and word != "SAVEPOINT"
            if wants_begin and not readonly and conn.apsw.getautocommit():
                seen["begin"] = True
                return False  # stop before it runs: begin first, then run it again
            seen["readonly"] = readonly
            seen["description"] = cursor.description
            return True

        with _translated():
            cur = conn.apsw.cursor()
            cur.exec_trace = trace
            try:
                run(cur)
            except apsw.ExecTraceAbort:
                conn.apsw.execute("BEGIN IMMEDIATE")
                cur = conn.apsw.cursor()
                cur.exec_trace = trace
                run(cur)
        self._cursor = cur
        self.description = seen.get("description") or None
        return cur, bool(seen.get("readonly", True))

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        conn = self.connection.apsw
        cur, readonly = self._run(sql, lambda c: c.execute(sql, parameters))
        with _translated():
            if self.description is None:
                self._rows = iter(())
                self.rowcount = -1 if readonly else conn.changes()
            elif readonly:
                self._rows = iter(cur)
                self.rowcount = -1
            else:
                # A writing statement with RETURNING: SQLite made every change at the first
                # step; fetch the rows now so that no statement stays active until COMMIT.
                rows = list(cur)
                self._rows = iter(rows)
                self.rowcount = len(rows)
            self.lastrowid = conn.last_insert_rowid()
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Any]) -> Cursor:
        conn = self.connection.apsw
        before = conn.total_changes()
        params = list(seq_of_parameters)
        if not params:
            self.description, self.rowcount, self._rows = None, 0, iter(())
            return self
        self._run(sql, lambda c: [None for _ in c.executemany(sql, params)])
        self.description = None
        self._rows = iter(())
        self.rowcount = conn.total_changes() - before
        return self

    def _next(self) -> _Row | None:
        with _translated():
            return next(self._rows, None)

    def fetchone(self) -> _Row | None:
        return self._next()

    def fetchmany(self, size: int | None = None) -> list[_Row]:
        with _translated():
            return list(itertools.islice(self._rows, size or self.arraysize))

    def fetchall(self) -> list[_Row]:
        with _translated():
            return list(self._rows)

    def __iter__(self) -> Iterator[_Row]:
        return self

    def __next__(self) -> _Row:
        row = self._next()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._closed = True
        self._rows = iter(())
        if self._cursor is not None:
            with contextlib.suppress(apsw.Error):
                self._cursor.close(True)
            self._cursor = None

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass
