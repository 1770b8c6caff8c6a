"""The Database: the public façade over one SQLite file's engine.

``Database`` validates arguments, owns the stream catalogue (create, list, delete,
retention, trim) and hands out the handles (streams, subscriptions, readers, producer,
consumer), delegating maintenance and archives to their modules. Connections, the write
scope, snapshots, waiting, the clock and the append live in :mod:`sqlstream.engine`
(``db.engine``), the one internal interface every module builds on.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import apsw

from . import connection as cx
from .checkpoint import checkpoint_mode
from . import consumer as _consumer
from . import dedup as _dedup
from . import lifetimes as _lifetimes
from . import lineage as _lineage
from . import producer as _producer
from . import ranges as _ranges
from . import readers as _readers
from . import retention as _retention
from . import subscriptions as _subscriptions
from . import txn as _txn
from . import validation as _validation
from . import writesecrets as _writesecrets
from .consumer import Consumer, Handler
from .engine import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_SYNCHRONOUS,
    DEFAULT_WAKEUP,
    Engine,
    WriteScope,
)
from .lifetimes import Lifetime
from .errors import (
    CorruptDatabase,
    DatabaseError,
    InvalidArgument,
    InvalidValue,
    ReadOnlyDatabase,
    StreamExists,
    StreamNotFound,
    SubscriptionInUse,
    convert,
    translate,
)
from .maintenance import CheckReport, MaintenanceReport, ProgressCallback
from .maintenance import check as check_database
from .maintenance import maintain as maintain_database
from .producer import ErrorCallback, Producer, SuccessCallback
from .readers import Reader, ReaderInfo
from .records import Record, StreamInfo, check_name
from .retention import TrimResult
from .streams import Stream
from .subscriptions import Subscription, SubscriptionInfo
from .wakeup import WAKEUP_MODES

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping

    from .archive.export import ExportProgress, ExportResult
    from .storage import StorageDriver


_STREAM_COLUMNS = (
    "name, first_offset, next_offset, byte_length, first_position, created_at, sealed_at, "
    "last_append_at, secret, max_count, max_age, max_bytes, metadata, "
    "keep_unacked, dedup_seconds, dedup_records, id"
)

# A new stream's id: above every id in use and every id ever used (the counters row
# `stream_id_floor`, raised by the trigger streams_delete_records, schema version 20), so
# rows a deleted stream left where foreign keys were off never belong to a new stream.
_NEW_STREAM_ID = (
    "SELECT max(coalesce((SELECT max(id) FROM streams), 0), "
    "coalesce((SELECT value FROM counters WHERE name = 'stream_id_floor' AND typeof(value) = 'integer'), 0)) + 1"
)

_QUERY_HINT = "query() is read-only; use the API to change data"
_BACKUP_EXISTS = "choose a new path, or pass overwrite=True"
_BACKUP_EXISTS_CLI = "choose a new path, or pass --force to replace it"

DEFAULT_QUERY_MAX_BYTES = 256 * 1024 * 1024
"""db.query()'s default bound on the bytes of a result (and of any one value in it)."""

_KEEP: Any = object()  # set_retention(): "leave this setting as it is"


class QueryResult(NamedTuple):
    """Rows of an ad-hoc query with their column names."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def open(  # noqa: A001 - the public name is part of the design
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    create: bool = True,
    synchronous: str = DEFAULT_SYNCHRONOUS,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    wakeup: str = DEFAULT_WAKEUP,
    poll_interval: float | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    vfs: str | None = None,
    checkpoints: str | None = None,
) -> Database:
    """Open (creating if needed) the sqlstream database at ``path``.

    ``synchronous``: ``"normal"`` (default) makes every returned append survive a process
    crash; ``"full"`` also survives power loss, at the cost of an fsync per commit.
    ``busy_timeout``: seconds a write waits for another writer before ``LockTimeout``.
    ``wakeup``: how blocked readers learn of other processes' commits — ``"notify"`` (a
    doorbell socket, near-zero idle CPU), ``"poll"`` (``PRAGMA data_version`` every
    ``poll_interval`` seconds, default 1 ms), or ``"auto"`` (notify where supported).
    ``max_record_bytes``: larger records are refused with ``PayloadTooLarge``.
    ``vfs``: the name of a registered SQLite VFS for sqlstream's own connections (None:
    SQLite's default); the fault-injection tests use one.
    ``checkpoints``: ``"auto"`` (sqlstream checkpoints the WAL in the background and at the
    last close) or ``"external"`` (never: another process such as Litestream owns the
    checkpoints; see ``sqlstream.checkpoint``); None takes ``$SQLSTREAM_CHECKPOINTS``, else
    ``"auto"``.

    ``path=":memory:"``: a new private temporary file, deleted when this Database closes
    (WAL needs a file); other Databases and processes may open it by ``db.path`` meanwhile.

    New files are created with mode 0600. Raises ``SchemaVersionError`` for a database
    written by a newer sqlstream, ``CorruptDatabase`` for a file that is not SQLite.
    """
    return Database(
        path,
        readonly=readonly,
        create=create,
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        wakeup=wakeup,
        poll_interval=poll_interval,
        max_record_bytes=max_record_bytes,
        vfs=vfs,
        checkpoints=checkpoints,
    )


class Database:
    """A sqlstream database file. Thread-safe; use one per process or share it freely.

    Use as a context manager or call :meth:`close`. Picklable (it pickles to its path and
    options), so it can be handed to ``multiprocessing`` workers, which reopen it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        create: bool = True,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wakeup: str = DEFAULT_WAKEUP,
        poll_interval: float | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        vfs: str | None = None,
        checkpoints: str | None = None,
    ) -> None:
        try:
            path = os.fspath(path)
        except TypeError:
            raise InvalidArgument(f"the database path must be a str or os.PathLike, not {type(path).__name__}") from None
        if not isinstance(path, str):
            raise InvalidArgument("the database path must be a str or os.PathLike of str")
        if path == "" or path.startswith("file:"):
            raise InvalidArgument(
                f"sqlstream needs a file path, not {path!r}",
                hint="use a temporary file (tempfile.mkstemp) for a throwaway database",
            )
        if synchronous not in ("normal", "full"):
            raise InvalidArgument(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        if wakeup not in WAKEUP_MODES:
            raise InvalidArgument(f"wakeup must be one of {', '.join(WAKEUP_MODES)}, not {wakeup!r}")
        # Finite and bounded: the lock waits take it as a timeout (inf overflowed there).
        busy_timeout = _validation.check_seconds(busy_timeout, "busy_timeout", positive=False)
        _validation.check_optional_seconds(poll_interval, "poll_interval")
        _validation.check_count(max_record_bytes, "max_record_bytes", maximum=1_000_000_000)
        if vfs is not None and not isinstance(vfs, str):
            raise InvalidArgument(f"vfs must be the name of a registered SQLite VFS or None, not {vfs!r}")
        checkpoints = checkpoint_mode(checkpoints)
        self._memory_dir: str | None = None
        if path == ":memory:":
            path = self._memory_file(readonly, create)
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self.wakeup = wakeup
        self.poll_interval = poll_interval
        self.max_record_bytes = max_record_bytes
        self.vfs = vfs
        self._options = dict(
            readonly=readonly, create=create, synchronous=synchronous, busy_timeout=busy_timeout,
            wakeup=wakeup, poll_interval=poll_interval, max_record_bytes=max_record_bytes, vfs=vfs,
            checkpoints=checkpoints,
        )
        self.checkpoints = checkpoints
        # Connections, the write scope, snapshots, waiting and the clock (sqlstream.engine).
        self.engine = Engine(
            self.path, readonly=readonly, create=create, synchronous=synchronous, busy_timeout=self.busy_timeout,
            wakeup=wakeup, poll_interval=poll_interval, max_record_bytes=max_record_bytes, vfs=vfs,
            checkpoints=checkpoints,
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close every connection this Database opened. Idempotent.

        Waits (up to the busy timeout) for a transaction running in another thread to end.
        When this is the last open Database on the file in this process, SQLite
        checkpoints the WAL into the main file and deletes ``-wal``/``-shm``: the closed
        ``.db`` is then self-contained and can be copied alone (see ``Engine.close``).
        """
        try:
            self.engine.close()
        finally:
            if self._memory_dir is not None:  # open(":memory:"): the file goes with it
                import shutil  # here, not at the top: start-up time (tests/test_startup.py)

                shutil.rmtree(self._memory_dir, ignore_errors=True)

    def _memory_file(self, readonly: bool, create: bool) -> str:
        """``open(":memory:")``: a private temporary file, deleted when this Database closes.

        WAL mode and the helper threads' connections need a real file; a directory of
        mode 0700 keeps it (and its -wal/-shm) private. Each ``:memory:`` open is its own
        database, as in SQLite; other connections may share it through ``db.path``.
        """
        if readonly or not create:
            raise InvalidArgument(
                "':memory:' is always a new, empty database: readonly=True or create=False cannot apply",
                hint="open ':memory:' without readonly/create, or open a file path",
            )
        import tempfile  # here, not at the top: start-up time (tests/test_startup.py)

        self._memory_dir = tempfile.mkdtemp(prefix="sqlstream-memory-")
        return os.path.join(self._memory_dir, "memory.db")

    @property
    def closed(self) -> bool:
        return self.engine.closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.path, self._options))

    def __repr__(self) -> str:
        state = "closed" if self.engine.closed else ("read-only" if self.readonly else "open")
        return f"<sqlstream.Database {self.path!r} {state}>"

    # ----------------------------------------------------------------- transactions

    def in_transaction(self) -> bool:
        """True when the calling thread is inside :meth:`transaction` on this Database."""
        return self.engine.in_transaction()

    def transaction(self) -> Transaction:
        """A write transaction; everything written inside commits together or not at all.

        Use as ``with db.transaction():``. Re-entrant: a nested block is a savepoint,
        rolled back alone if it raises. The outermost block starts with ``BEGIN
        IMMEDIATE``, so it waits (up to the busy timeout, then ``LockTimeout``) for other
        writers up front instead of failing later. Any exception, including
        ``KeyboardInterrupt``, rolls the block back and propagates. Blocked readers are
        woken once the outermost block commits. Other threads' writes on this Database
        wait until the block ends.
        """
        return Transaction(self)

    # ----------------------------------------------------------------- streams

    def create_stream(
        self,
        name: str,
        *,
        max_count: int | None = None,
        max_age: float | None = None,
        max_bytes: int | None = None,
        secret: bool = False,
        exist_ok: bool = False,
        metadata: dict[str, Any] | None = None,
        keep_unacked: bool = False,
        dedup_seconds: float = _dedup.DEFAULT_SECONDS,
        dedup_records: int = _dedup.DEFAULT_RECORDS,
    ) -> Stream:
        """Create a stream and return a handle to it.

        Retention (see :meth:`set_retention`): ``max_count`` records, ``max_age`` seconds,
        ``max_bytes`` retained payload bytes; the oldest records are trimmed as appends
        happen. ``keep_unacked=True``: retention never trims a record some subscription
        has not acked. ``dedup_seconds``/``dedup_records``: the window in which an append
        with a repeated ``dedup_id`` is recognised (see ``sqlstream.dedup``).
        ``secret=True`` makes a byte-log style stream that takes appends only through its
        ``write_secret`` (the returned handle holds it; others use ``db.writer(secret)``).
        With ``exist_ok=True`` an existing stream is returned unchanged (its settings are
        not compared; a secret stream's handle then comes without the secret).
        Raises ``StreamExists``, ``InvalidName``, ``InvalidArgument``.
        """
        check_name(name)
        _validation.check_limit(max_count, "max_count")
        _validation.check_optional_seconds(max_age, "max_age")
        _validation.check_limit(max_bytes, "max_bytes")
        _validation.check_flag(keep_unacked, "keep_unacked")
        _validation.check_dedup_window(dedup_seconds, dedup_records)
        _validation.check_flag(secret, "secret")
        _validation.check_flag(exist_ok, "exist_ok")
        meta = _validation.encode_metadata(metadata)
        write_secret = _writesecrets.new_secret() if secret else None
        # Only the hash is stored: the secret is shown this once, on the returned handle.
        stored = None if write_secret is None else _writesecrets.hash_secret(write_secret)
        with self.engine.write() as conn:
            existing = conn.execute("SELECT 1 FROM streams WHERE name = ?", (name,)).fetchall()
            if existing:
                if exist_ok:
                    return Stream(self, name)
                raise StreamExists(f"stream {name!r} already exists", hint="pass exist_ok=True to reuse it")
            created = self.engine.now_us()
            try:
                conn.execute(
                    "INSERT INTO streams (id, name, created_at, write_secret_sha256, max_count, max_age, "
                    "max_bytes, metadata, keep_unacked, dedup_seconds, dedup_records, trim_offset, "
                    f"trim_bytes, trim_time) VALUES (({_NEW_STREAM_ID}), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, created, stored, max_count, max_age, max_bytes, meta, int(keep_unacked),
                     float(dedup_seconds), dedup_records,
                     *_retention.initial_triggers(max_count, max_bytes, max_age, created)),
                )
            except apsw.MismatchError as exc:  # the next id is past the largest integer
                raise CorruptDatabase(
                    "no stream id is left: the largest stream id in use or the counters row "
                    "'stream_id_floor' is at the largest integer SQLite holds",
                    hint="if SQL outside sqlstream set it, lower it to the largest id in use: UPDATE counters "
                    "SET value = (SELECT max(id) FROM streams) WHERE name = 'stream_id_floor'",
                ) from exc
        return Stream(self, name, write_secret)

    def stream(self, name: str) -> Stream:
        """A handle to an existing stream (``StreamNotFound`` if absent).

        For a stream created with ``secret=True`` the handle reads but cannot write.
        """
        check_name(name)
        with self.engine.snapshot() as conn:
            if not conn.execute("SELECT 1 FROM streams WHERE name = ?", (name,)).fetchall():
                raise StreamNotFound(f"no stream named {name!r}", hint="create it with db.create_stream()")
        return Stream(self, name)

    def writer(self, secret: str) -> Stream:
        """A writable handle to the stream whose write secret is ``secret``.

        Raises ``StreamNotFound`` when no stream has that secret (as BuildGrid does for a
        wrong write resource name).
        """
        if not isinstance(secret, str):
            raise InvalidValue(f"a write secret is a str, not {type(secret).__name__}")
        if not secret.isascii():  # secrets are URL-safe ASCII; SQLite could not bind a lone surrogate
            raise StreamNotFound("no stream has that write secret")
        with self.engine.snapshot() as conn:
            row = cx.rows(conn, "SELECT name FROM streams WHERE write_secret_sha256 = ?",
                          (_writesecrets.hash_secret(secret),))
        if not row:
            raise StreamNotFound("no stream has that write secret")
        return Stream(self, row[0][0], secret)

    def streams(self) -> list[StreamInfo]:
        """Every stream, by name."""
        with self.engine.snapshot() as conn:
            rows = conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams_now ORDER BY name").fetchall()
            return [_stream_info(row, self._over_limit(conn, row), self._dropped(conn, row)) for row in rows]

    def stream_info(self, name: str) -> StreamInfo:
        """The :class:`StreamInfo` of one stream (``StreamNotFound`` if absent)."""
        check_name(name)
        with self.engine.snapshot() as conn:
            rows = conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams_now WHERE name = ?", (name,)).fetchall()
            if not rows:
                raise StreamNotFound(f"no stream named {name!r}")
            return _stream_info(rows[0], self._over_limit(conn, rows[0]), self._dropped(conn, rows[0]))

    def _over_limit(self, conn: apsw.Connection, row: tuple[Any, ...]) -> str | None:
        """StreamInfo.over_limit for a row of _STREAM_COLUMNS (no query for a stream without limits)."""
        if row[9] is None and row[10] is None and row[11] is None:
            return None
        return _retention.over_limit(cx.runner(conn), row[16], self.engine.now_us())

    def _dropped(self, conn: apsw.Connection, row: tuple[Any, ...]) -> int:
        """StreamInfo.dropped_deliveries for a row of _STREAM_COLUMNS."""
        return _retention.dropped_deliveries(cx.runner(conn), row[16])

    def delete_stream(self, name: str, *, force: bool = False) -> None:
        """Delete a stream, its records, subscriptions and readers in one transaction.

        Refused with ``SubscriptionInUse`` while a subscription of the stream has pending
        (delivered, unacked) records, unless ``force`` (as ``delete_subscription``).
        ``StreamNotFound`` if absent. Readers blocked on the stream wake and get
        ``StreamNotFound``.
        """
        check_name(name)
        _validation.check_flag(force, "force")
        with self.engine.write() as conn:
            row = conn.execute("SELECT id FROM streams WHERE name = ?", (name,)).fetchall()
            if not row:
                raise StreamNotFound(f"no stream named {name!r}")
            busy = conn.execute(
                "SELECT s.name, count(*) FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id "
                "WHERE s.stream_id = ? GROUP BY s.name ORDER BY s.name",
                (row[0][0],),
            ).fetchall()
            if busy and not force:
                subs = ", ".join(f"{sub!r} ({n})" for sub, n in busy)
                raise SubscriptionInUse(
                    f"stream {name!r} has subscriptions with pending (delivered, unacked) records: {subs}",
                    hint="ack them first, or pass force=True (CLI: --force) to delete them with the stream",
                )
            stream_id: Any = row[0][0]
            conn.execute("DELETE FROM chunks WHERE stream_id = ?", (stream_id,))
            conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
            # Its id may be reused by a new stream, which must inherit none of its counters.
            _retention.forget_stream(cx.runner(conn), stream_id)

    # ----------------------------------------------------------------- retention and upkeep

    def set_retention(
        self,
        stream: str,
        *,
        max_count: int | None = _KEEP,
        max_age: float | None = _KEEP,
        max_bytes: int | None = _KEEP,
        keep_unacked: bool = _KEEP,
        dedup_seconds: float = _KEEP,
        dedup_records: int = _KEEP,
    ) -> TrimResult:
        """Change a stream's retention and dedup settings, then apply the limits at once.

        Only the settings given change; ``None`` removes a limit. One transaction: the
        new settings and the trim they cause commit together. Returns the
        :class:`~sqlstream.retention.TrimResult` of that trim (``held`` names the
        subscription keeping records with ``keep_unacked``). Raises ``StreamNotFound``,
        ``InvalidArgument``.
        """
        check_name(stream)
        changes: dict[str, Any] = {}
        for what, value in (("max_count", max_count), ("max_age", max_age), ("max_bytes", max_bytes)):
            if value is not _KEEP:
                if what == "max_age":
                    _validation.check_optional_seconds(value, what)
                else:
                    _validation.check_limit(value, what)
                changes[what] = value
        if keep_unacked is not _KEEP:
            _validation.check_flag(keep_unacked, "keep_unacked")
        _validation.check_dedup_window(
            1 if dedup_seconds is _KEEP else dedup_seconds, 1 if dedup_records is _KEEP else dedup_records
        )
        if keep_unacked is not _KEEP:
            changes["keep_unacked"] = int(keep_unacked)
        if dedup_seconds is not _KEEP:
            changes["dedup_seconds"] = float(dedup_seconds)
        if dedup_records is not _KEEP:
            changes["dedup_records"] = dedup_records
        with self.engine.write() as conn:
            stream_id = self._stream_id(conn, stream)
            result = _retention.set_retention(cx.runner(conn), stream_id, changes, self.engine.now_us())
        return result

    def trim(self, stream: str, before_offset: int | None = None, *, force: bool = False) -> TrimResult:
        """Delete a stream's records below ``before_offset`` now; None applies its retention limits exactly.

        ``first_offset`` advances; offsets are never reused, and reading below the new
        first offset raises ``OffsetOutOfRange``. An offset past the end trims every
        record (appends continue at ``next_offset``). With ``keep_unacked`` records a
        subscription has not acked are kept unless ``force=True`` (then their pending
        deliveries are dropped too); ``TrimResult.held`` says who held them. Atomic (one
        transaction, or part of the caller's). Raises ``StreamNotFound``, ``InvalidArgument``.
        """
        check_name(stream)
        if before_offset is not None:
            _validation.check_offset(before_offset, "before_offset")
        _validation.check_flag(force, "force")
        with self.engine.write() as conn:
            stream_id = self._stream_id(conn, stream)
            result = _retention.trim(cx.runner(conn), stream_id, before_offset, self.engine.now_us(), force=force)
        return result

    def _stream_id(self, conn: apsw.Connection, name: str) -> int:
        rows = cx.rows(conn, "SELECT id FROM streams WHERE name = ?", (name,))
        if not rows:
            raise StreamNotFound(f"no stream named {name!r}", hint="list the streams with db.streams()")
        return int(rows[0][0])

    def maintain(
        self,
        *,
        retention: bool = True,
        vacuum: bool = True,
        full: bool = False,
        checkpoint: bool = True,
        optimize: bool = True,
        checkpoint_timeout: float = 1.0,
        progress: ProgressCallback | None = None,
    ) -> MaintenanceReport:
        """Enforce retention, prune dedup ids, free pages, checkpoint the WAL, optimize.

        A delegation to :func:`sqlstream.maintenance.maintain` (see it for what each option
        does and what blocks: each step is its own short transaction; ``full`` rewrites the
        file and blocks writers meanwhile). Refused inside ``db.transaction()``.
        """
        return maintain_database(
            self, retention=retention, vacuum=vacuum, full=full, checkpoint=checkpoint, optimize=optimize,
            checkpoint_timeout=checkpoint_timeout, progress=progress,
        )

    def check(
        self, *, quick: bool = False, max_problems: int = 100, progress: ProgressCallback | None = None
    ) -> CheckReport:
        """Verify the file (``PRAGMA integrity_check``) and every stream's invariants.

        A delegation to :func:`sqlstream.maintenance.check`; returns its
        :class:`~sqlstream.maintenance.CheckReport` (``ok``, and each problem with its
        stream and offset). Read-only: one read transaction, writers carry on.
        """
        return check_database(self, quick=quick, max_problems=max_problems, progress=progress)

    # ----------------------------------------------------------------- inspection

    def query(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int | None = None,
        max_bytes: int = DEFAULT_QUERY_MAX_BYTES,
        stop: Callable[[], bool] | None = None,
    ) -> QueryResult:
        """Run one read-only SQL statement and return its columns and rows.

        The query can never change the file: it runs on a connection opened read-only
        whose authorizer refuses every write (temporary tables included), schema change,
        setting pragma, ATTACH, ``VACUUM INTO`` and transaction control, each with
        ``ReadOnlyDatabase``. Reporting pragmas (``PRAGMA page_count``,
        ``PRAGMA table_info(chunks)``) are allowed. Several statements in one string see
        one snapshot. Inside :meth:`transaction` it is refused (``InvalidArgument``).
        The hash of the streams' write secrets reads as NULL.

        Bounds (see :func:`sqlstream.connection.query_bounds`): ``timeout`` seconds of
        running (None: no limit; the CLI's ``sqlstream sql`` sets one by default), then
        ``QueryTimeout``; more than ``max_rows`` rows (None: no limit) or ``max_bytes``
        bytes of values in the result (each value counts at least 8, so rows of empty
        strings are bounded too), or any one string or blob built on the way longer
        than ``max_bytes``, ``QueryTooLarge``. Either way nothing is returned, and other
        connections were never blocked (the query only reads).

        ``stop``: a callable checked as often as the timeout (from the calling thread);
        when it returns True the query ends with ``QueryCancelled``. ``sqlstream.aio``
        uses it so that a cancelled ``query()`` frees the worker thread.
        """
        if not isinstance(sql, str):
            raise InvalidValue("sql must be a str")
        if timeout is not None:
            timeout = _validation.check_seconds(timeout, "timeout", positive=True)
        _validation.check_count(max_rows, "max_rows", optional=True)
        _validation.check_count(max_bytes, "max_bytes", maximum=cx.MAX_QUERY_BYTES)
        if stop is not None and not callable(stop):
            raise InvalidArgument("stop must be a callable returning a bool, or None")
        self.engine.check_process()
        if self.in_transaction():
            raise InvalidArgument("db.query() is for reads outside transactions")
        conn, guard = self.engine.query_conn()
        try:
            with cx.query_bounds(conn, timeout, max_bytes, stop) as bounds:
                conn.execute("BEGIN")
                try:
                    guard.user, guard.denied = True, None
                    try:
                        try:
                            cursor = conn.execute(sql, params)
                        except (TypeError, ValueError, OverflowError, KeyError) as exc:  # unbindable params
                            what = f"no value for parameter {exc}" if isinstance(exc, KeyError) else str(exc)
                            raise InvalidArgument(f"cannot run the query with these parameters: {what}") from None
                        try:
                            columns = [d[0] for d in cursor.get_description()]
                        except apsw.ExecutionCompleteError:
                            return QueryResult([], [])
                        try:
                            return QueryResult(columns, bounds.fetch(cursor, max_rows))
                        except UnicodeDecodeError as exc:  # a damaged record's text (see sqlstream.records)
                            raise CorruptDatabase(
                                f"the result holds text that is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                                hint="select CAST(column AS BLOB) to see the stored bytes; `sqlstream check` "
                                "names damaged records",
                            ) from None
                    finally:
                        guard.user = False
                finally:
                    if not conn.getautocommit():
                        conn.execute("COMMIT")
        except (apsw.AuthError, apsw.ReadOnlyError, apsw.ExecTraceAbort) as exc:
            what = guard.denied or "writing"
            raise ReadOnlyDatabase(
                f"read-only query: {what} is not allowed", hint=_QUERY_HINT
            ) from exc
        except apsw.Error as exc:
            raise convert(exc) from exc
        except (TypeError, OverflowError, UnicodeEncodeError) as exc:  # unbindable params
            raise InvalidArgument(f"cannot run the query with these parameters: {exc}") from exc

    def backup(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, progress: ProgressCallback | None = None
    ) -> str:
        """Copy the database to a new file at ``path`` while it stays in use; return its path.

        Uses SQLite's online backup API in one step: the copy is the database as committed
        when the backup started (a consistent snapshot; writers in this and other
        processes keep committing meanwhile, readers are not disturbed), never a torn mix.
        It is written to a temporary file in the destination directory, synced, and
        moved into place, so ``path`` never holds a partial copy. The result is one
        self-contained file (no ``-wal``) with mode 0600, or less if the source is.
        An existing ``path`` is refused (``InvalidArgument``) unless ``overwrite``; a
        destination that looks open (it has a ``-wal``) is refused even then. Raises
        ``DatabaseError`` when the directory cannot be written, ``StorageFull``.

        The copy gets an identity of its own (:mod:`sqlstream.lineage`): the JetStream
        relay names the records both files share as the original does, and the records
        each file writes afterwards differently, so neither file's records are taken for
        the other's (a relay resuming from a restored copy resends, never loses).

        ``progress``, if given, is called as ``progress(pages_copied, pages_total)`` after
        each ``BACKUP_STEP_PAGES`` pages: the copy then runs in steps, all inside one read
        transaction held on the source, so it is the same snapshot as the one-step copy.
        """
        self.engine.check_process()
        if progress is not None and not callable(progress):
            raise InvalidArgument(f"progress must be a callable (pages_copied, pages_total) or None, not "
                                  f"{type(progress).__name__}")
        try:
            dest = os.path.abspath(os.fspath(path))
        except TypeError:
            raise InvalidArgument(f"the backup path must be a str or os.PathLike, not {type(path).__name__}") from None
        if not isinstance(dest, str) or "\x00" in dest:
            raise InvalidArgument("the backup path must be a str without NUL characters")
        try:
            dest.encode("utf-8")  # SQLite takes UTF-8 file names
        except UnicodeEncodeError:
            raise InvalidArgument(f"the backup path {dest!r} is not valid Unicode (a lone surrogate)") from None
        if os.path.exists(dest):
            with contextlib.suppress(OSError):
                if os.path.samefile(dest, self.path):
                    raise InvalidArgument(f"cannot back {self.path} up onto itself")
            if not overwrite:
                raise InvalidArgument(f"{dest} already exists", hint=_BACKUP_EXISTS, cli_hint=_BACKUP_EXISTS_CLI)
            if not os.path.isfile(dest) or os.path.islink(dest):
                raise InvalidArgument(f"{dest} is not a regular file; refusing to replace it")
            if os.path.exists(dest + "-wal"):
                raise InvalidArgument(
                    f"{dest} looks open or not cleanly closed (it has a -wal file)",
                    hint="close every program using it, or choose a new path",
                )
        directory = os.path.dirname(dest)
        fd, tmp = _private_temp(directory, os.path.basename(dest))
        os.close(fd)
        try:
            source = cx.connect(self.path, readonly=True, busy_timeout=self.busy_timeout,
                                synchronous=self.synchronous, vfs=self.vfs)
            try:
                with translate():
                    target = apsw.Connection(tmp, flags=apsw.SQLITE_OPEN_READWRITE)
                    try:
                        # One step: the whole copy under one read transaction, so other
                        # connections' commits cannot restart it or tear it.
                        # The copy is in WAL mode like its source; closing its only
                        # connection checkpoints and removes its -wal.
                        with target.backup("main", source, "main") as job:
                            if progress is None:
                                job.step(-1)
                            else:
                                _backup_in_steps(source, job, progress)
                        # The copy is a file of its own from now on: the records it
                        # writes must never share relay ids with the original's.
                        if target.execute("SELECT 1 FROM sqlite_schema WHERE name = 'file_lineage'").fetchall():
                            with target:
                                _lineage.fork(cx.runner(target))
                                # Its first writable open notes where it lives (a rename
                                # keeps the inode) without forking it again.
                                _lineage.forget_places(cx.runner(target))
                    finally:
                        target.close()
            finally:
                source.close()
            for leftover in (tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            mode = os.stat(self.path).st_mode & 0o600
            os.chmod(tmp, mode)
            with builtins.open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, dest)
            else:
                os.link(tmp, dest)  # fails if dest appeared meanwhile: never overwrite silently
                os.unlink(tmp)
            _fsync_dir(directory)
        except FileExistsError:
            raise InvalidArgument(f"{dest} already exists", hint=_BACKUP_EXISTS, cli_hint=_BACKUP_EXISTS_CLI) from None
        except OSError as exc:
            raise DatabaseError(f"cannot write the backup {dest}: {exc.strerror}",
                                hint="check that the directory exists and is writable") from exc
        finally:
            for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        return dest

    # ----------------------------------------------------------------- archives

    def export(
        self,
        streams: str | Sequence[str],
        directory: str | os.PathLike[str],
        *,
        name: str | None = None,
        template: str | None = None,
        # The two numbers are archive.export.DEFAULT_ROLL_SIZE_MB and DEFAULT_BATCH,
        # spelled by value: naming them would load the archive wing at ``import
        # sqlstream``. tests/test_structure.py holds this signature equal to export()'s.
        roll_size_mb: float | None = 100,
        roll_minutes: float | None = None,
        compress: str | None = None,
        storage: StorageDriver | Mapping[str, Any] | None = None,
        storage_prefix: str = "",
        follow: bool = False,
        version: int = 2,
        batch: int = 1000,
        stop: threading.Event | None = None,
        progress: Callable[[ExportProgress], None] | None = None,
    ) -> ExportResult:
        """Export streams to rolled archive files, incrementally and resumably.

        A thin delegation to :func:`sqlstream.archive.export.export`, which documents the
        options; returns its :class:`~sqlstream.archive.export.ExportResult`.
        """
        # Imported here, not at the top: ``import sqlstream`` (every worker process's
        # start-up) should not pay for loading the archive wing and the storage drivers.
        from .archive.export import export

        return export(
            self, streams, directory, name=name, template=template, roll_size_mb=roll_size_mb,
            roll_minutes=roll_minutes, compress=compress, storage=storage, storage_prefix=storage_prefix,
            follow=follow, version=version, batch=batch, stop=stop, progress=progress,
        )

    # ================================================================= subscriptions, readers,
    # producer, consumer. Thin delegations: the logic lives in subscriptions.py,
    # readers.py, producer.py and consumer.py.

    def create_subscription(
        self,
        name: str,
        stream: str,
        *,
        start: int | str = "earliest",
        ack_timeout: float = 30.0,
        max_unacked: int = 1000,
        max_deliveries: int | None = None,
        dead_letter: str | None = None,
        exist_ok: bool = False,
        ordering: str | None = None,
    ) -> Subscription:
        """Create a subscription (consumer group) on ``stream`` and return a handle to it.

        ``start`` (``"earliest"``, ``"latest"`` or a retained offset) is fixed now.
        ``ack_timeout``: seconds a consumer holds a fetched record before it is redelivered.
        ``max_unacked``: most records pending (delivered, unacked) at once.
        ``max_deliveries`` with ``dead_letter``: a record delivered that many times without
        an ack moves to the ``dead_letter`` stream (created now if absent, and again on
        demand if deleted later). ``exist_ok``: return an existing subscription of that
        name on the same stream unchanged. ``ordering="key"``: a record is not delivered
        while an earlier record of its key is pending (None/"none": no per-key order). Raises ``StreamNotFound``,
        ``SubscriptionExists``, ``InvalidName``, ``InvalidArgument``, ``OffsetOutOfRange``.
        """
        return _subscriptions.create_subscription(
            self, name, stream, start=start, ack_timeout=ack_timeout, max_unacked=max_unacked,
            max_deliveries=max_deliveries, dead_letter=dead_letter, exist_ok=exist_ok,
            ordering=ordering,
        )

    def read_many(
        self, positions: Mapping[str, int], *, limit: int = 100, timeout: float | None = 0
    ) -> dict[str, builtins.list[Record]]:
        """Read several streams at once (Redis ``XREAD STREAMS``): see :func:`sqlstream.ranges.read_many`."""
        return _ranges.read_many(self, positions, limit=limit, timeout=timeout)

    def subscription(self, name: str) -> Subscription:
        """A handle to an existing subscription (``SubscriptionNotFound`` if absent)."""
        return _subscriptions.get_subscription(self, name)

    def subscriptions(self) -> builtins.list[SubscriptionInfo]:
        """Every subscription's :class:`SubscriptionInfo`, by name (one consistent snapshot)."""
        return _subscriptions.list_subscriptions(self)

    def delete_subscription(self, name: str, *, force: bool = False) -> int:
        """Delete a subscription; return how many pending records were dropped with it.

        Refused with ``SubscriptionInUse`` while records are pending (delivered, unacked),
        unless ``force``. ``SubscriptionNotFound`` if absent. Fetches blocked on it wake
        and raise ``SubscriptionNotFound``; a new subscription of the same name starts fresh.
        """
        return _subscriptions.delete_subscription(self, name, force=force)

    def reader(self, name: str, stream: str | None = None, *, start: int | str = "earliest") -> Reader:
        """Reader ``name``, created on ``stream`` at ``start`` if it does not exist yet.

        An existing reader resumes from its stored position (``start`` is then ignored;
        naming another stream is ``InvalidArgument``). Without ``stream`` the reader must
        exist (``ReaderNotFound``). Raises ``StreamNotFound``, ``OffsetOutOfRange``.
        """
        return _readers.open_reader(self, name, stream, start)

    def readers(self) -> builtins.list[ReaderInfo]:
        """Every reader with its stream, position and lag, by name."""
        return _readers.list_readers(self)

    def delete_reader(self, name: str) -> None:
        """Delete a reader and its position (``ReaderNotFound`` if absent)."""
        _readers.delete_reader(self, name)

    def producer(
        self,
        *,
        max_batch: int = _producer.DEFAULT_MAX_BATCH,
        max_delay: float = _producer.DEFAULT_MAX_DELAY,
        max_bytes: int = _producer.DEFAULT_MAX_BYTES,
        on_success: SuccessCallback | None = None,
        on_error: ErrorCallback | None = None,
        retries: int = 0,
        retry_delay: float = _producer.DEFAULT_RETRY_DELAY,
        max_pending: int | None = None,
    ) -> Producer:
        """A buffered :class:`Producer`: ``append`` returns futures, batches are written by
        one background thread, one transaction per batch (see ``sqlstream.producer``)."""
        return Producer(
            self, max_batch=max_batch, max_delay=max_delay, max_bytes=max_bytes, on_success=on_success,
            on_error=on_error, retries=retries, retry_delay=retry_delay, max_pending=max_pending,
        )

    def consumer(
        self,
        subscription: str | Subscription,
        handler: Handler,
        *,
        name: str | None = None,
        batch: int = _consumer.DEFAULT_BATCH,
        concurrency: int = _consumer.DEFAULT_CONCURRENCY,
        nack_delay: float = _consumer.DEFAULT_NACK_DELAY,
    ) -> Consumer:
        """A :class:`Consumer` running ``handler(batch)`` over ``subscription``: ack on
        return, nack on raise (see ``sqlstream.consumer``). ``SubscriptionNotFound`` if absent."""
        return Consumer(
            self, subscription, handler, name=name, batch=batch, concurrency=concurrency, nack_delay=nack_delay
        )


    # ----------------------------------------------------------------- lifetimes (sqlstream.lifetimes)

    def fork_stream(self, name: str, source: str, offset: int | None = None, *, partial: int = 0,
                    metadata: dict[str, Any] | None = None, ttl: float | None = None,
                    expires_at: float | None = None) -> Stream:
        """Create ``name`` as a copy of ``source``'s records below ``offset`` at the same offsets
        (see :func:`sqlstream.lifetimes.fork_stream` for the contract)."""
        return _lifetimes.fork_stream(self, name, source, offset, partial=partial, metadata=metadata,
                                      ttl=ttl, expires_at=expires_at)

    def set_expiry(self, name: str, *, ttl: float | None = None, expires_at: float | None = None) -> None:
        """Give a stream a sliding ``ttl`` and/or an absolute ``expires_at`` (see ``sqlstream.lifetimes``)."""
        _lifetimes.set_expiry(self, name, ttl=ttl, expires_at=expires_at)

    def touch(self, name: str) -> None:
        """Restart a stream's TTL window; quiet (wakes no reader)."""
        _lifetimes.touch(self, name)

    def lifetime(self, name: str) -> Lifetime:
        """A stream's expiry, fork origin and (soft) deletion state."""
        return _lifetimes.lifetime(self, name)

    def retire_stream(self, name: str) -> bool:
        """Delete a stream, or soft-delete it while forks name it (False); see ``sqlstream.lifetimes``."""
        return _lifetimes.retire_stream(self, name)

    def expire_streams(self) -> builtins.list[str]:
        """Retire every expired stream; return their names."""
        return _lifetimes.expire_streams(self)


class Transaction(WriteScope):
    """Context manager behind :meth:`Database.transaction`: the engine's write scope, yielding the Database."""

    __slots__ = ("db",)

    def __init__(self, db: Database) -> None:
        super().__init__(db.engine, None)
        self.db = db

    def __enter__(self) -> Database:  # type: ignore[override]
        super().__enter__()
        return self.db


BACKUP_STEP_PAGES = 1024  # pages per backup step when progress is reported


def _backup_in_steps(source: apsw.Connection, job: apsw.Backup, progress: ProgressCallback) -> None:
    """Copy in steps for ``progress`` without losing the one-step snapshot.

    A step opens (and closes) its own read transaction only when the source has none, and
    a commit by another connection between two such steps restarts the copy. Holding one
    read transaction across every step keeps the copy on one snapshot (WAL lets writers
    carry on), so it never restarts and never mixes two states.
    """
    source.execute("BEGIN")
    try:
        source.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # starts the read transaction
        done = False
        while not done:
            done = job.step(BACKUP_STEP_PAGES)
            progress(job.pagecount - job.remaining, job.pagecount)
    finally:
        source.execute("ROLLBACK")  # read-only: nothing to keep


def _private_temp(directory: str, name: str) -> tuple[int, str]:
    """A new empty file (mode 0600) next to ``name`` in ``directory``: (descriptor, path)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise DatabaseError(f"cannot create a file in {directory}: {exc.strerror}",
                                hint="check that the directory exists and is writable") from exc
    raise DatabaseError(f"cannot create a temporary file in {directory}")


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the platform allows syncing a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reopen(path: str, options: dict[str, Any]) -> Database:
    return Database(path, **options)


def _stream_info(row: tuple[Any, ...], over_limit: str | None = None, dropped: int = 0) -> StreamInfo:
    (name, first, nxt, length, first_pos, created, sealed, last, secret, mc, ma, mb, meta,
     keep_unacked, dedup_seconds, dedup_records, _id) = row
    return StreamInfo(
        name=name,
        first_offset=first,
        next_offset=nxt,
        byte_length=length,
        first_position=first_pos,
        created_at=created / 1e6,
        sealed_at=None if sealed is None else sealed / 1e6,
        last_append_at=None if last is None else last / 1e6,
        secret=bool(secret),
        max_count=mc,
        max_age=ma,
        max_bytes=mb,
        metadata=json.loads(meta),
        keep_unacked=bool(keep_unacked),
        dedup_seconds=dedup_seconds,
        dedup_records=dedup_records,
        over_limit=over_limit,
        dropped_deliveries=dropped,
    )

