"""Opening SQLite connections with sqlstream's settings, and applying migrations.

Each per-connection setting is one small function, applied to every connection sqlstream
opens (write, read and watcher connections alike) and read back where SQLite can silently
ignore it. Each pragma is executed on its own and its cursor consumed: apsw runs the
statements of one ``execute()`` lazily, so a multi-pragma string would stop after the
first pragma that returns a row.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast
from functools import lru_cache
from pathlib import Path

import apsw

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from .errors import (
    CorruptDatabase, DatabaseError, InvalidArgument, QueryCancelled, QueryTimeout, QueryTooLarge, SchemaVersionError, translate,
)
from .writesecrets import hash_secret

SYNCHRONOUS_LEVELS = {"off": 0, "normal": 1, "full": 2, "extra": 3}


def pragma(conn: apsw.Connection, text: str) -> Any:
    """Run one pragma, consume its cursor and return the first column of its first row."""
    rows = list(conn.execute(f"PRAGMA {text}"))
    return rows[0][0] if rows and rows[0] else None


class Query(Protocol):
    """Runs one statement with bound parameters in the current write transaction; returns its rows.

    The statement modules (append, retention, dedup) take one, so the same statements run
    over sqlstream's own connections and over a SQLAlchemy caller's (sqlstream.sqlalchemy).
    """

    def __call__(self, sql: str, params: Sequence[Any] = ..., /) -> list[Any]: ...


def rows(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """All rows of one statement, typed loosely: the columns' SQL types are the query's business.

    The one "run a statement, return rows" helper; apsw errors propagate unconverted (the
    caller's write scope or ``translate()`` converts them).
    """
    return cast("list[tuple[Any, ...]]", conn.execute(sql, params).fetchall())


fetch = rows  # the earlier name, kept for one release


def runner(conn: apsw.Connection | apsw.Cursor) -> Query:
    """The :class:`Query` callable over ``conn`` (what append, retention and dedup take).

    Over a cursor, every statement reuses it (no cursor made and freed per statement): for
    a caller whose statements never overlap (the engine's write connection, under its
    write lock; each statement's rows are fetched before the call returns)."""

    def q(sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    return q


def _jitter() -> float:
    """A random fraction in [0, 1) that spreads retries of waiting processes apart.

    From ``os.urandom``, not :mod:`random`: only a busy database needs it, and importing
    ``random`` would cost every ``import sqlstream`` (tests/test_startup.py)."""
    return int.from_bytes(os.urandom(2), "big") / 65536


def connection_busy_handler(conn: apsw.Connection, timeout: float, first: Callable[[], None] | None = None) -> None:
    """Retry a busy database for up to ``timeout`` seconds, with short jittered sleeps.

    SQLite's built-in busy timeout sleeps up to 100 ms between tries, which starves
    writers of a busy file; short sleeps let queued writers follow each other closely.
    When the handler gives up, SQLite reports SQLITE_BUSY and the caller gets LockTimeout.
    ``first`` is called before the first wait: an exception it raises leaves the
    statement at once (apsw raises it), for a wait that could never end.
    """
    state = {"start": 0.0}

    def handler(tries: int) -> bool:
        now = time.monotonic()
        if tries == 0:
            state["start"] = now
            if first is not None:
                first()
        elif now - state["start"] >= timeout:
            return False
        # 50 µs doubling to 2 ms, jittered so that waiting processes do not retry in step.
        time.sleep(min(0.002, 0.00005 * (2 ** min(tries, 6))) * (0.5 + _jitter()))
        return True

    conn.set_busy_handler(handler)


def connection_foreign_keys(conn: apsw.Connection) -> None:
    """Enforce REFERENCES clauses (chunks -> streams)."""
    pragma(conn, "foreign_keys = ON")


def connection_dqs(conn: apsw.Connection) -> None:
    """Refuse double-quoted string literals, a SQLite misfeature that hides typos."""
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)


def connection_stable_plans(conn: apsw.Connection) -> None:
    """Compile each cached statement once, whatever values are bound to it (read connections).

    SQLite 3.54 reads some bound values while planning (a ``LIMIT ?``, and the range of
    ``... ORDER BY offset LIMIT ?`` reads) and marks such a statement to be compiled
    again whenever one of those parameters is bound anew: every record read recompiled
    its statement (measured: reading one record 81 µs CPU, 40 of them the recompile; with
    this setting 20 µs). The query planner stability guarantee (QPSG) makes SQLite plan
    without the values, so a cached statement is reused as it is; sqlstream's statements
    are written for one plan (a primary-key range), which is what SQLite picks without
    them. Not set on write connections, whose statements do not recompile (measured) and
    one of which (``retention.forget_stream``) needs its ``GLOB ?`` prefix planned from the
    value, nor on ``db.query()``'s connection, whose SQL is the caller's.
    """
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)


def connection_synchronous(conn: apsw.Connection, level: str) -> None:
    """Set and verify ``synchronous``: 'normal' survives a process crash, 'full' power loss."""
    pragma(conn, f"synchronous = {level}")
    got = pragma(conn, "synchronous")
    if got != SYNCHRONOUS_LEVELS[level]:
        raise DatabaseError(f"PRAGMA synchronous = {level} did not take (read back {got!r})")


def connection_wal(conn: apsw.Connection, timeout: float = 0.0) -> None:
    """Switch the file to WAL and fail loudly if SQLite refuses (e.g. on some network filesystems).

    A brand-new file first gets ``auto_vacuum = INCREMENTAL``: it can be chosen only
    before the first page is written, and switching to WAL writes page 1.
    Switching upgrades a read lock to a write lock, for which SQLite never calls the busy
    handler (it could deadlock), so when other processes create the same new file at the
    same moment SQLITE_BUSY comes back at once; it is retried here for up to ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pragma(conn, "page_count") == 0:
                pragma(conn, "auto_vacuum = INCREMENTAL")
            mode = pragma(conn, "journal_mode = wal")
            break
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001 + 0.004 * _jitter())
    if str(mode).lower() != "wal":
        raise DatabaseError(
            f"could not put the database in WAL mode (journal_mode is {mode!r})",
            hint="sqlstream needs WAL; use a local filesystem that supports shared memory",
        )


def connect(
    path: str,
    *,
    readonly: bool = False,
    busy_timeout: float,
    synchronous: str,
    create: bool = False,
    vfs: str | None = None,
    single_thread: bool = False,
) -> apsw.Connection:
    """Open one connection with every per-connection setting applied.

    ``vfs`` names a registered SQLite VFS (None: the default); tests inject I/O faults
    through one. ``single_thread``: open it ``SQLITE_OPEN_NOMUTEX`` (SQLite's
    multi-thread mode: no connection mutex taken by every call, ~1,400 instructions of a
    record read's ~8,600). Then neither SQLite nor apsw (which uses that mutex as its own
    guard) stops two threads from using the connection at once, and doing so corrupts
    memory: the caller must guarantee that one thread at a time uses it, closing
    included (see ``Engine.read_conn``).
    """
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    if create and not readonly:
        flags |= apsw.SQLITE_OPEN_CREATE
    if single_thread:
        flags |= apsw.SQLITE_OPEN_NOMUTEX
    with translate():
        conn = apsw.Connection(path, flags=flags, vfs=vfs)
        try:
            connection_busy_handler(conn, busy_timeout)
            connection_dqs(conn)
            connection_foreign_keys(conn)
            # On read connections too: synchronous is per connection, and one that ends up
            # running a checkpoint (or the last close's) syncs by its own setting.
            connection_synchronous(conn, synchronous)
        except BaseException:
            conn.close()
            raise
    return conn


# --------------------------------------------------------------------------- query()

# Pragmas that only report: allowed bare (``PRAGMA page_count``) or as table-valued
# functions; given an argument most of them would change a setting, so they are not.
_REPORTING_PRAGMAS = frozenset({
    "application_id", "auto_vacuum", "busy_timeout", "cache_size", "cache_spill",
    "collation_list", "compile_options", "data_version", "database_list", "encoding",
    "foreign_keys", "freelist_count", "function_list", "journal_mode", "journal_size_limit",
    "max_page_count", "module_list", "page_count", "page_size", "pragma_list", "query_only",
    "schema_version", "synchronous", "user_version", "wal_autocheckpoint",
})
# Pragmas whose argument names what to report on (a table, an index, a row limit).
_SUBJECT_PRAGMAS = frozenset({
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo",
    "integrity_check", "quick_check", "table_info", "table_list", "table_xinfo",
})
_READ_ACTIONS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})


#: The column holding each stream's write-secret hash (sqlstream.writesecrets), and the
#: one view that reads it (to show ``secret``: whether it is set).
SECRET_COLUMN = ("streams", "write_secret_sha256")
SECRET_VIEW = "streams_now"


def is_secret_column(table: str | None, column: str | None, via: str | None) -> bool:
    """True when an authorizer of a connection that serves people (``db.query()``, the
    Datasette plugin) should make this read of the write-secret hash column NULL.

    ``via`` is the view (or CTE) SQLite reports the read for. Reads by ``streams_now``
    are left alone (it shows only ``secret``). Tidiness more than protection: the hash
    cannot be turned back into the secret (see sqlstream.writesecrets), and a CTE named
    ``streams_now`` is reported as that view would be."""
    return ((table or "").lower() == SECRET_COLUMN[0] and (column or "").lower() == SECRET_COLUMN[1]
            and (via or "").lower() != SECRET_VIEW)


class QueryGuard:
    """The authorizer of a ``db.query()`` connection: reads only, enforced at prepare time.

    While ``user`` is set (the caller's SQL is being prepared) it allows SELECT, reading
    columns, functions, recursive CTEs and reporting pragmas, and denies everything
    else: writes to any database (temporary ones too: a TEMP VIEW named ``streams``
    would shadow the real table for sqlstream's own reads on that connection), schema
    changes, setting pragmas, ATTACH (which is also how ``VACUUM INTO`` creates its
    file), transaction control; its :meth:`trace` refuses any statement SQLite does not
    report as read-only. The write secrets' hash column reads as NULL (see
    :func:`is_secret_column`). ``denied`` names the last refused action for the error.
    The connection must have no statement cache, so every statement is authorized
    afresh (a cached statement is not re-checked).
    """

    def __init__(self) -> None:
        self.user = False
        self.denied: str | None = None
        self.pragma_vetted = False

    def __call__(self, action: int, arg1: str | None, arg2: str | None, dbname: str | None, trigger: str | None) -> int:
        if action == apsw.SQLITE_READ and is_secret_column(arg1, arg2, trigger):
            return apsw.SQLITE_IGNORE  # reads as NULL, in the result and in WHERE alike
        if not self.user or action in _READ_ACTIONS:
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _SUBJECT_PRAGMAS or (name in _REPORTING_PRAGMAS and arg2 is None):
                self.pragma_vetted = True  # SQLite calls a bare ``journal_mode`` a write
                return apsw.SQLITE_OK
            self.denied = f"PRAGMA {name}" + ("" if arg2 is None else f" = {arg2}")
        else:
            what = str(apsw.mapping_authorizer_function.get(action, action)).removeprefix("SQLITE_")
            self.denied = what.replace("_", " ") + (f" {arg1}" if arg1 else "")
        return apsw.SQLITE_DENY

    def trace(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        """Exec tracer: refuse a prepared statement SQLite says may write (``VACUUM``, which
        the authorizer never sees, and ``VACUUM INTO``, whose ATTACH runs only later)."""
        vetted, self.pragma_vetted = self.pragma_vetted, False
        if self.user and not vetted and not cursor.is_readonly:
            self.denied = " ".join(sql.split())[:60]
            return False
        return True


def connect_query(path: str, *, busy_timeout: float, synchronous: str, vfs: str | None = None) -> tuple[apsw.Connection, QueryGuard]:
    """A connection for ad-hoc queries that cannot change the file, and its guard.

    Two layers: the file is opened with SQLITE_OPEN_READONLY (no statement can write
    it), and a :class:`QueryGuard` refuses what a read-only connection still allows
    (``VACUUM INTO`` and ``ATTACH`` of other files, temporary objects, pragmas).
    """
    with translate():
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY, vfs=vfs, statementcachesize=0)
        try:
            connection_busy_handler(conn, busy_timeout)
            connection_dqs(conn)
            connection_synchronous(conn, synchronous)
            pragma(conn, "query_only = 1")
            guard = QueryGuard()
            conn.authorizer = guard
            conn.exec_trace = guard.trace
        except BaseException:
            conn.close()
            raise
    return conn, guard


#: What the smallest value (NULL, a number, an empty or short string or blob) counts
#: towards a query's ``max_bytes``: about the reference a result row holds to it.
VALUE_MIN_BYTES = 8


class QueryBounds:
    """The result-size side of :func:`query_bounds`: what :meth:`fetch` may return."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def fetch(self, cursor: apsw.Cursor, max_rows: int | None) -> list[tuple[Any, ...]]:
        """Every row of ``cursor``, or ``QueryTooLarge`` past ``max_rows`` rows or ``max_bytes``.

        A value counts its bytes (str as UTF-8), at least ``VALUE_MIN_BYTES``; any other
        value counts ``VALUE_MIN_BYTES``. The floor is what keeps the bound a bound: an
        empty string or blob still takes memory in the result, and counted as 0 bytes an
        endless query of ``''`` would be held without limit. The rows are read one at a
        time, so a refused result is never held whole.
        """
        out: list[tuple[Any, ...]] = []
        total = 0
        for row in cursor:
            if max_rows is not None and len(out) >= max_rows:
                raise QueryTooLarge(
                    f"the query returned more than max_rows={max_rows:,} rows",
                    hint="add a LIMIT (or a WHERE), or raise max_rows (CLI: --max-rows)",
                )
            for value in row:
                if isinstance(value, str):
                    size = len(value.encode("utf-8", "surrogatepass"))
                elif isinstance(value, bytes):
                    size = len(value)
                else:
                    size = 0
                total += max(size, VALUE_MIN_BYTES)
            if total > self.max_bytes:
                raise QueryTooLarge(
                    f"the query's result is larger than max_bytes={self.max_bytes:,} bytes",
                    hint="select fewer rows or columns (substr() of large values), or raise max_bytes "
                    "(CLI: --max-bytes)",
                    cli_hint="select fewer rows or columns (SQL substr(...) of large values), or raise --max-bytes",
                )
            out.append(row)
        return out


#: The largest ``max_bytes`` a query may be given. As a length limit SQLite clamps it to
#: its compile-time SQLITE_MAX_LENGTH (1e9 by default); the result total is counted here.
MAX_QUERY_BYTES = 2_000_000_000
#: Virtual-machine steps between two looks at the clock during a bounded query.
QUERY_CHECK_STEPS = 1000


@contextlib.contextmanager
def query_bounds(conn: apsw.Connection, timeout: float | None, max_bytes: int,
                 stop: Callable[[], bool] | None = None) -> Iterator[QueryBounds]:
    """Bound what a query on ``conn`` may take while the block runs.

    Time: a progress handler interrupts SQLite after ``timeout`` seconds (checked every
    ``QUERY_CHECK_STEPS`` steps of its virtual machine, so a query that never returns a
    row, such as an endless recursive CTE, is stopped too), raising ``QueryTimeout``.
    Size: ``SQLITE_LIMIT_LENGTH`` is ``max_bytes`` for the block, so SQLite refuses to
    build a longer string or blob (``zeroblob(999999999)``, a huge ``group_concat``) before
    allocating it, raising ``QueryTooLarge``; the rows themselves are counted by the
    returned :class:`QueryBounds`. After the block the connection's previous length limit
    is back and it has no progress handler (the query connection uses none otherwise).
    ``stop``, if given, is called by the same handler: True ends the query with
    ``QueryCancelled`` (how a cancelled ``sqlstream.aio`` call frees its worker thread).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    stopped = False

    def progress() -> bool:
        nonlocal timed_out, stopped
        if deadline is not None and time.monotonic() >= deadline:
            timed_out = True
        if stop is not None and not timed_out and stop():
            stopped = True
        return timed_out or stopped  # True interrupts the statement

    previous = conn.limit(apsw.SQLITE_LIMIT_LENGTH, max_bytes)
    conn.set_progress_handler(progress if deadline is not None or stop is not None else None, QUERY_CHECK_STEPS)
    try:
        yield QueryBounds(max_bytes)
    except apsw.InterruptError as exc:
        if stopped:
            raise QueryCancelled("the query was stopped by its caller") from exc
        if not timed_out:
            raise
        raise QueryTimeout(
            f"the query ran longer than its timeout of {timeout:g} s and was stopped",
            hint="narrow it (a WHERE on indexed columns, a LIMIT), or raise the timeout (CLI: --timeout)",
        ) from exc
    except apsw.TooBigError as exc:
        raise QueryTooLarge(
            f"the query built a string or blob larger than max_bytes={max_bytes:,} bytes",
            hint="select substr() of large values, or raise max_bytes (CLI: --max-bytes)",
            cli_hint="select SQL substr(...) of large values, or raise --max-bytes",
        ) from exc
    finally:
        conn.set_progress_handler(None)
        conn.limit(apsw.SQLITE_LIMIT_LENGTH, previous)


# --------------------------------------------------------------------------- migrations

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _migration_dir() -> Traversable:
    # Installed wheels carry the files as package data of ``sqlstream.migrations``; a source
    # checkout keeps them at the repository root. Traversables are used as they are:
    # a namespace package's MultiplexedPath is not a plain filesystem path.
    # Imported here, not at the top: importlib.resources is a tenth of `import sqlstream`,
    # and only opening a database needs it (tests/test_startup.py).
    from importlib import resources

    try:
        packaged = resources.files("sqlstream.migrations")
        if packaged.is_dir() and any(p.name.endswith(".sql") for p in packaged.iterdir()):
            return packaged
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "migrations"


@lru_cache(maxsize=1)
def load_migrations() -> tuple[tuple[int, str, str], ...]:
    """Return ``(version, filename, sql)`` for every migration, validated as one plan.

    The plan must number files 1, 2, 3, ... without gaps or duplicates; a broken plan is
    refused before anything runs.
    """
    directory = _migration_dir()
    plan = []
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            plan.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in plan]
    if versions != list(range(1, len(plan) + 1)):
        raise SchemaVersionError(f"migration files in {directory} are not numbered 1..N: {versions}")
    return tuple(plan)


def schema_version() -> int:
    """The schema version this code writes."""
    return len(load_migrations())


def migrate(conn: apsw.Connection, *, stepwise: bool = False) -> int:
    """Bring the database up to this code's schema version; return the version.

    Each migration runs under BEGIN IMMEDIATE together with its ``user_version`` bump, so
    a crash leaves the database at the previous version, and two processes migrating at
    once apply each step exactly once. A database newer than the code is refused.

    A brand-new file (no schema object at all, version 0) skips the steps: it gets the
    schema they end with in one transaction (:func:`create_schema`), the same schema,
    rows and version. A file at version 0 that holds an application's own tables still
    takes the steps, each checked for a name clash first. ``stepwise=True`` takes the
    steps on a new file too (the reference the one-transaction schema is tested against).

    Migrations run with ``PRAGMA secure_delete`` on (what they replace is overwritten
    with zeros where SQLite frees it) and with ``sqlstream_sha256()`` defined (migration
    10 hashes the write secrets); then a pending :func:`scrub` runs.
    """
    plan = load_migrations()
    latest = len(plan)
    with translate():
        current = int(pragma(conn, "user_version"))
        if current > latest:
            raise SchemaVersionError(
                f"the database has schema version {current}, newer than this sqlstream "
                f"understands ({latest})",
                hint="upgrade sqlstream to open this file",
            )
        if current < latest:
            if current == 0:
                _check_empty_or_ours(conn)
                if not stepwise and not _has_schema(conn) and create_schema(conn):
                    current = latest
            if current < latest:
                _apply(conn, plan)
        scrub(conn)
    return latest


@contextlib.contextmanager
def migrating(conn: apsw.Connection) -> Iterator[None]:
    """What every migration runs with: ``secure_delete`` on, ``sqlstream_sha256()``
    defined and SQLite's defensive mode off; all as they were afterwards.

    Defensive mode (on in some builds of SQLite) refuses ``PRAGMA writable_schema``, which
    migration 20 uses to remove a constraint by SQLite's documented procedure."""
    conn.create_scalar_function("sqlstream_sha256", _sha256_or_null, 1, deterministic=True)
    secure = pragma(conn, "secure_delete")
    pragma(conn, "secure_delete = 1")
    defensive = conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1)  # -1 reads the setting
    conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 0)
    try:
        yield
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, defensive)
        pragma(conn, f"secure_delete = {int(secure)}")
        conn.create_scalar_function("sqlstream_sha256", None)


@contextlib.contextmanager
def _immediate(conn: apsw.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction around the block: committed when it ends,
    rolled back (if SQLite has not already) when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if not conn.getautocommit():
            conn.execute("ROLLBACK")
        raise


def _apply(conn: apsw.Connection, plan: tuple[tuple[int, str, str], ...]) -> None:
    """Run the steps of ``plan`` the file lacks, each in its own transaction."""
    with migrating(conn):
        for version, filename, sql in plan:
            with _immediate(conn):
                # Another process may have migrated while we waited for the lock.
                if int(pragma(conn, "user_version")) < version:
                    _refuse_name_clash(conn, version, filename, sql)
                    for _ in conn.execute(sql):
                        pass
                    pragma(conn, f"user_version = {version}")


def _has_schema(conn: apsw.Connection) -> bool:
    """Whether the file holds any table, index, view or trigger (anyone's)."""
    return bool(rows(conn, "SELECT 1 FROM sqlite_schema LIMIT 1"))


# Rows a migration fills with a value of each file's own, drawn again for every file the
# fast path creates instead of copied from the template (migration 0006: the file's random
# identity, sqlstream.lineage). tests/test_migrations_fast.py fails if the template holds
# any other value that differs from one chain-built file to the next.
_PER_FILE_VALUES = (
    "UPDATE counters SET value = random() & 9223372036854775807 WHERE name = 'file_id'",
)


@lru_cache(maxsize=1)
def final_schema() -> tuple[tuple[str | None, str | None, tuple[tuple[Any, ...], ...]], ...]:
    """What the migration chain leaves in a new file, as steps that recreate it in order.

    Derived once per process by running the chain (:func:`_apply`, the real steps) on an
    in-memory database, so it cannot drift from the migration files. One step per
    ``sqlite_schema`` entry in rowid order: ``(sql, insert, rows)``: the entry's
    statement (None for the objects SQLite makes by itself: a table's automatic indexes,
    ``sqlite_sequence``) and, for a table the migrations put rows in, the INSERT and the
    rows, run right after the table is made (before any trigger on it exists, as when the
    migration inserted them).
    """
    mem = apsw.Connection(":memory:")
    try:
        connection_dqs(mem)
        connection_foreign_keys(mem)
        _apply(mem, load_migrations())
        steps: list[tuple[str | None, str | None, tuple[tuple[Any, ...], ...]]] = []
        for kind, name, sql in rows(mem, "SELECT type, name, sql FROM sqlite_schema ORDER BY rowid"):
            statement = None if sql is None or name.startswith("sqlite_") else sql
            insert: str | None = None
            content: tuple[tuple[Any, ...], ...] = ()
            if kind == "table":
                cols = [r[1] for r in rows(mem, "SELECT * FROM pragma_table_xinfo(?)", (name,)) if r[6] == 0]
                rowid = bool(rows(mem, "SELECT 1 FROM pragma_table_list(?) WHERE wr = 0", (name,)))
                if rowid:
                    cols.insert(0, "rowid")
                names = ", ".join(f'"{c}"' for c in cols)
                content = tuple(rows(mem, f'SELECT {names} FROM "{name}"'))
                insert = f'INSERT INTO "{name}" ({names}) VALUES ({", ".join("?" * len(cols))})'
            steps.append((statement, insert if content else None, content))
        return tuple(steps)
    finally:
        mem.close()


def create_schema(conn: apsw.Connection) -> bool:
    """Give a brand-new file the migrations' final schema in one transaction; return
    whether it did (False: under the write lock the file turned out not to be empty, e.g.
    another process migrated it first; the caller then runs the steps it lacks).

    The result is the chain's (:func:`final_schema`): the same ``sqlite_schema`` entries
    (type, name, table, SQL) in the same order, the same rows (each file's own values
    drawn afresh: ``_PER_FILE_VALUES``) and ``user_version``. Not the same: the
    ``schema_version`` counter (fewer schema changes), and no free pages left by the
    steps' dropped objects. Measured: ~3 ms of CPU instead of ~21 ms for the 19 steps.
    """
    steps = final_schema()
    with migrating(conn), _immediate(conn):
        if int(pragma(conn, "user_version")) != 0 or _has_schema(conn):
            return False
        for statement, insert, content in steps:
            if statement is not None:
                conn.execute(statement)
            if insert is not None:
                conn.executemany(insert, content)
        for statement in _PER_FILE_VALUES:
            conn.execute(statement)
        pragma(conn, f"user_version = {len(load_migrations())}")
    return True


# The schema statements of a migration file, in order: what each step creates, drops or
# renames (comments removed first; migration files hold no string literal with "--").
_SCHEMA_STATEMENT = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|VIEW|INDEX|TRIGGER)\s+(?P<maybe>IF\s+NOT\s+EXISTS\s+)?(?P<created>\w+)"
    r"|\bDROP\s+(?:TABLE|VIEW|INDEX|TRIGGER)\s+(?:IF\s+EXISTS\s+)?(?P<dropped>\w+)"
    r"|\bALTER\s+TABLE\s+(?P<renamed>\w+)\s+RENAME\s+TO\s+(?P<target>\w+)",
    re.IGNORECASE,
)


def _refuse_name_clash(conn: apsw.Connection, version: int, filename: str, sql: str) -> None:
    """Raise ``SchemaVersionError`` before migration ``version`` runs if it would create
    a table, view, index or trigger under a name the file already uses (an application
    sharing the file, e.g. through the SQLAlchemy outbox, may own a ``records`` table).

    SQLite would refuse the step with a bare "already exists"; this names the object and
    what to do. Names the step drops or renames first are free for it to reuse.
    """
    owner = {name.lower(): table.lower() for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_schema")}
    for m in _SCHEMA_STATEMENT.finditer(re.sub(r"--[^\n]*", "", sql)):
        if m["dropped"]:
            gone = m["dropped"].lower()
            # A dropped table takes its indexes and triggers with it.
            owner = {n: t for n, t in owner.items() if n != gone and t != gone}
        elif m["renamed"]:
            old, new = m["renamed"].lower(), m["target"].lower()
            if new in owner:
                _clash(version, filename, new)
            owner = {(new if n == old else n): (new if t == old else t) for n, t in owner.items()}
        elif not m["maybe"]:
            name = m["created"].lower()
            if name in owner:
                _clash(version, filename, m["created"])
            owner[name] = name


def _clash(version: int, filename: str, name: str) -> NoReturn:
    raise SchemaVersionError(
        f"cannot upgrade the file to schema version {version} ({filename}): it already holds a table, view, "
        f"index or trigger named {name!r}, a name sqlstream's schema needs; nothing was changed",
        hint=f"rename the application's {name!r} (e.g. ALTER TABLE {name} RENAME TO app_{name}) and open the file again",
        # Not the class's "run a writing command to upgrade": that is what failed.
        cli_hint=f"rename the application's {name!r} (e.g. sqlite3 FILE 'ALTER TABLE {name} RENAME TO app_{name}') "
        "and run the command again",
    )


def _sha256_or_null(*values: Any) -> str | None:
    """SQL ``sqlstream_sha256(x)``: the stored form of write secret ``x`` (NULL stays NULL)."""
    return None if values[0] is None else hash_secret(str(values[0]))


def scrub(conn: apsw.Connection) -> None:
    """Finish the scrub migration 10 asked for: ``VACUUM``, then empty the WAL.

    Migration 10 replaced each plain write secret by its hash with ``secure_delete`` on,
    but earlier updates of a stream row (a seal, a trim) had left copies of the secret
    in the free space of its page, and freed pages keep whatever they held: only
    rewriting every page removes them. The ``counters`` row ``secret_scrub`` marks the
    work as due and is deleted only after the VACUUM, so a crash in between means the
    next open scrubs again. The checkpoint (TRUNCATE) then empties the ``-wal`` file,
    which could hold the old pages; while another connection reads, it cannot, and the
    ``-wal`` is emptied by a later checkpoint or deleted when the last connection closes.
    Runs once per file (a no-op query on every other open); outside any transaction.
    """
    if not rows(conn, "SELECT 1 FROM counters WHERE name = 'secret_scrub'"):
        return
    conn.execute("VACUUM")
    conn.execute("DELETE FROM counters WHERE name = 'secret_scrub'")
    rows(conn, "PRAGMA wal_checkpoint(TRUNCATE)")


_OUR_TABLES = frozenset({"streams", "chunks", "counters"})  # created by migration 1


def _check_empty_or_ours(conn: apsw.Connection) -> None:
    """Refuse a SQLite database that sqlstream did not create.

    Ours means empty (a new file), or stamped by migration 1, which creates these tables
    and sets ``user_version`` >= 1 in one transaction. A file at version 0 with tables,
    or missing one of ours, belongs to another program, whatever its tables are called.
    """
    tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'"))
    if not tables:
        return
    version = int(pragma(conn, "user_version"))
    if version == 0 or not _OUR_TABLES.issubset(tables):
        raise SchemaVersionError(
            f"the file is a SQLite database of some other program (tables: {', '.join(tables[:5])})",
            hint="open a new file, or one created by sqlstream",
        )


def inspect_existing(path: str, vfs: str | None = None) -> None:
    """Refuse another program's SQLite file through a read-only connection.

    Runs before any connection that could write (switching a file to WAL rewrites its
    header and creates -wal/-shm). SQLite cannot always read a file read-only (a hot
    rollback journal); then the same check runs again on the write connection, still
    before the switch to WAL.
    """
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY, vfs=vfs)
    except apsw.Error:
        return
    try:
        with translate():
            try:
                _check_empty_or_ours(conn)
            except (apsw.NotADBError, apsw.CorruptError):
                raise
            except apsw.Error:
                return
    finally:
        try:
            conn.close()
        except apsw.Error:
            pass  # it only read; nothing of the file depends on this close


def check_file_type(path: str) -> bool:
    """Whether ``path`` exists; refuse anything there but a regular file (or a link to one).

    Opening a FIFO would block forever, and SQLite reports a directory as a disk I/O error.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # SQLite takes UTF-8 file names: a lone surrogate (a name's bytes that were not
        # UTF-8, or a made-up str) cannot reach it.
        raise InvalidArgument(f"the database path {path!r} is not valid Unicode (a lone surrogate)",
                              hint="name the file in UTF-8") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except ValueError:
        raise InvalidArgument("the database path contains a NUL character") from None
    except OSError as exc:
        raise DatabaseError(f"cannot open {path}: {exc.strerror}", hint="check the path and its permissions") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DatabaseError(f"{path} is a directory, not a database file",
                              hint=f"name a file, e.g. {os.path.join(path, 'app.db')}")
    if not stat.S_ISREG(st.st_mode):
        raise DatabaseError(f"{path} is not a regular file (a FIFO, socket or device)",
                              hint="a sqlstream database is a regular file; check the path")
    return True


def create_private_file(path: str) -> bool:
    """Create an empty database file readable by its owner only; False if it existed.

    SQLite gives the -wal and -shm files the permissions of the main file, so creating it
    with mode 0600 keeps the whole database private.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def check_header(path: str) -> None:
    """Refuse a non-empty file that is not a SQLite database before SQLite touches it."""
    try:
        # O_NONBLOCK: a FIFO swapped in since check_file_type() must not block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DatabaseError(f"{path} is not a regular file", hint="check the path")
        head = os.read(fd, 16)
    except OSError:
        return
    finally:
        os.close(fd)
    if head and head != b"SQLite format 3\x00":
        raise CorruptDatabase(
            f"{path} is not a SQLite database", hint="check the path; sqlstream will not overwrite it"
        )

