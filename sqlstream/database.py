"""The Database: one SQLite file, its connections, transactions and streams.

Connections: one write connection per Database, guarded by a re-entrant lock, every
write transaction ``BEGIN IMMEDIATE`` so writers queue on SQLite's lock (never the
"database is locked" failure of a deferred transaction upgrading); one read connection
per thread, in autocommit, so readers never block writers. After ``fork`` the child
opens fresh connections on first use and never touches the parent's.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar, overload

import apsw

from . import connection as cx
from .errors import (
    AccessDenied,
    ConcurrencyError,
    CorruptDatabase,
    DatabaseClosed,
    DatabaseError,
    InvalidArgument,
    InvalidValue,
    LockTimeout,
    PayloadTooLarge,
    ReadOnlyDatabase,
    SchemaVersionError,
    SqlstreamError,
    StreamExists,
    StreamNotFound,
    StreamSealed,
    SubscriptionInUse,
    convert,
    translate,
)
from .records import StreamInfo, check_name
from . import append as _append, dedup as _dedup, retention as _retention, validation as _validation
from .clock import now_us, us
from .checkpoint import install_wal_hook
from .wakeup import WAKEUP_MODES, FileNotifier, notifier_for

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024

_STREAM_COLUMNS = (
    "name, first_offset, next_offset, byte_length, first_position, created_at, sealed_at, "
    "last_append_at, write_secret IS NOT NULL, max_count, max_age, max_bytes, metadata, "
    "keep_unacked, dedup_seconds, dedup_records, id"
)

_QUERY_HINT = "query() is read-only; use the API to change data"

_KEEP: Any = object()  # set_retention(): "leave this setting as it is"


_query = cx.runner  # the shared statement runner under its local name


class QueryResult(NamedTuple):
    """Rows of an ad-hoc query with their column names."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


# A row queued for insertion: (key, headers_json, content_type, data, byte_length).
PreparedRecord = _append.PreparedRecord  # (key, headers, content type, data, bytes)


def open(  # noqa: A001 - the public name is part of the design
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    create: bool = True,
    synchronous: str = "normal",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    wakeup: str = "auto",
    poll_interval: float | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    vfs: str | None = None,
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
        synchronous: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wakeup: str = "auto",
        poll_interval: float | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        vfs: str | None = None,
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
        if not (isinstance(busy_timeout, (int, float)) and busy_timeout >= 0):
            raise InvalidArgument(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
        if poll_interval is not None and not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise InvalidArgument(f"poll_interval must be a positive number of seconds, not {poll_interval!r}")
        if not (isinstance(max_record_bytes, int) and 0 < max_record_bytes <= 1_000_000_000):
            raise InvalidArgument("max_record_bytes must be an int between 1 and 1,000,000,000")
        if vfs is not None and not isinstance(vfs, str):
            raise InvalidArgument(f"vfs must be the name of a registered SQLite VFS or None, not {vfs!r}")
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
        )
        self._closed = False
        self._open_lock = threading.Lock()
        self._wconn: apsw.Connection | None = None
        self._init_process_state()

        # One opening at a time per file in this process: check_header() and
        # create_private_file() open and close the file, and closing any descriptor drops
        # every POSIX lock the process holds on the file, SQLite's included. Done while
        # another thread's connection is still switching a new file to WAL (rollback-journal
        # locking), that let other processes roll back and delete its journal under it.
        with _init_lock(self.path):
            exists = cx.check_file_type(self.path)
            if not exists:
                if readonly or not create:
                    raise DatabaseError(f"no database at {self.path}", hint="check the path, or open with create=True")
                try:
                    cx.create_private_file(self.path)
                except OSError as exc:
                    raise DatabaseError(
                        f"cannot create {self.path}: {exc.strerror}",
                        hint="check that the directory exists and is writable",
                    ) from exc
            self._notifier: FileNotifier = notifier_for(self.path)
            if exists and self._notifier.open_count == 0:
                # Only while no Database here holds SQLite locks on it (see above).
                cx.check_header(self.path)
                cx.inspect_existing(self.path, self.vfs)
            self._notifier.attach()
            if readonly:
                try:
                    self._check_readable_schema()
                except BaseException:
                    self.close()
                    raise
            else:
                conn = self._write_conn()
                try:
                    with translate():
                        # Refuse another program's database before switching it to WAL,
                        # which would rewrite its header.
                        if cx.pragma(conn, "user_version") == 0:
                            cx._check_empty_or_ours(conn)
                        cx.connection_wal(conn, self.busy_timeout)
                    cx.migrate(conn)
                except BaseException:
                    self.close()
                    raise

    def _check_readable_schema(self) -> None:
        conn = self._read_conn()
        with translate():
            mode = cx.pragma(conn, "journal_mode")
            version = int(cx.pragma(conn, "user_version"))
        latest = cx.schema_version()
        with translate():
            cx._check_empty_or_ours(conn)
        if version != latest:
            raise SchemaVersionError(
                f"the database has schema version {version}; this sqlstream reads version {latest}",
                hint="open it once without readonly=True to upgrade it" if version < latest else None,
            )
        if str(mode).lower() != "wal":
            raise SchemaVersionError(f"{self.path} is not in WAL mode (journal_mode={mode})")

    # ----------------------------------------------------------------- lifecycle

    def _init_process_state(self) -> None:
        """(Re)create everything that must not cross a fork."""
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._read_conns: list[apsw.Connection] = []
        self._tx_depth = 0
        self._tx_txn: int | None = None
        self._tx_txn_depth = 0
        self._tx_dirty = False
        self._tx_after: list[Callable[[], None]] = []

    def _check_process(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"the database {self.path} is closed")
        if self._pid != os.getpid():
            # Forked: the parent's connections belong to the parent. Dropping them
            # without closing keeps the child from disturbing the parent's locks.
            with self._open_lock:
                if self._pid != os.getpid():
                    _abandoned.extend(self._read_conns)
                    if self._wconn is not None:
                        _abandoned.append(self._wconn)
                    self._wconn = None
                    self._init_process_state()
                    self._notifier = notifier_for(self.path)
                    self._notifier.attach()

    def _connect(self, *, readonly: bool) -> apsw.Connection:
        return cx.connect(
            self.path,
            readonly=readonly,
            busy_timeout=self.busy_timeout,
            synchronous=self.synchronous,
            vfs=self.vfs,
        )

    def _write_conn(self) -> apsw.Connection:
        if self.readonly:
            raise ReadOnlyDatabase(f"{self.path} was opened read-only", hint="open it without readonly=True")
        conn = self._wconn
        if conn is None:
            with self._open_lock:
                if self._wconn is None:
                    conn = self._connect(readonly=False)
                    install_wal_hook(conn, self._notifier.checkpointer)
                    self._wconn = conn
                conn = self._wconn
        return conn

    def _read_conn(self) -> apsw.Connection:
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=self.readonly)
            with translate():
                cx.pragma(conn, "query_only = 1")
            with self._open_lock:
                self._read_conns.append(conn)
            self._local.conn = conn
        return conn

    def _query_conn(self) -> tuple[apsw.Connection, cx.QueryGuard]:
        """This thread's connection for :meth:`query` (read-only file, guarded; see connection.py)."""
        pair: tuple[apsw.Connection, cx.QueryGuard] | None = getattr(self._local, "query", None)
        if pair is None:
            pair = cx.connect_query(
                self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous, vfs=self.vfs
            )
            with self._open_lock:
                self._read_conns.append(pair[0])
            self._local.query = pair
        return pair

    def close(self) -> None:
        """Close every connection this Database opened. Idempotent.

        Waits (up to the busy timeout) for a transaction running in another thread to end.
        When this is the last open Database on the file in this process, the helper
        threads' connections are closed first and a write connection last, so that
        SQLite checkpoints the WAL into the main file and deletes ``-wal``/``-shm``: the
        closed ``.db`` is then self-contained and can be copied alone. That needs no other
        process to hold the file open; if one does, the WAL is still checkpointed and
        truncated when no reader pins it, else SQLite's usual rules apply (the last
        connection anywhere to close does it). A read-only Database that closes last
        checkpoints only if a writable one in this process closed before it.
        """
        if self._closed:
            return
        if self._pid != os.getpid():
            self._closed = True  # the parent's connections are not ours to close
            return
        got = self._lock.acquire(timeout=self.busy_timeout)
        try:
            self._closed = True
            with self._open_lock:
                conns = list(self._read_conns)
                self._read_conns.clear()
                wconn, self._wconn = self._wconn, None
            for conn in conns:
                with contextlib.suppress(apsw.Error):
                    conn.close(True)
            notifier = getattr(self, "_notifier", None)
            if notifier is None:
                if wconn is not None:
                    with contextlib.suppress(apsw.Error):
                        wconn.close(True)
                return
            notifier.bump()  # waiters re-check and meet DatabaseClosed
            # Under the file's open lock: a Database opening meanwhile must not see
            # open_count 0 (and close descriptors, dropping SQLite's locks) while the
            # write connection below still holds them.
            with _init_lock(self.path):
                last = notifier.detach(wrote=wconn is not None)
                if last and wconn is None and notifier.checkpoint_owed and os.access(self.path, os.W_OK):
                    with contextlib.suppress(SqlstreamError, apsw.Error):
                        wconn = self._connect(readonly=False)
                if wconn is not None:
                    if last:
                        _checkpoint_on_close(wconn)
                    with contextlib.suppress(apsw.Error):
                        wconn.close(True)
        finally:
            if got:
                self._lock.release()
            if self._memory_dir is not None:  # open(":memory:"): the file goes with it
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
        self._memory_dir = tempfile.mkdtemp(prefix="sqlstream-memory-")
        return os.path.join(self._memory_dir, "memory.db")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.path, self._options))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"<sqlstream.Database {self.path!r} {state}>"

    # ----------------------------------------------------------------- transactions

    def in_transaction(self) -> bool:
        """True when the calling thread is inside :meth:`transaction` on this Database."""
        return self._tx_depth > 0 and self._lock._is_owned()  # type: ignore[attr-defined]

    def transaction(self) -> _Transaction:
        """A write transaction; everything written inside commits together or not at all.

        Use as ``with db.transaction():``. Re-entrant: a nested block is a savepoint,
        rolled back alone if it raises. The outermost block starts with ``BEGIN
        IMMEDIATE``, so it waits (up to the busy timeout, then ``LockTimeout``) for other
        writers up front instead of failing later. Any exception, including
        ``KeyboardInterrupt``, rolls the block back and propagates. Blocked readers are
        woken once the outermost block commits. Other threads' writes on this Database
        wait until the block ends.
        """
        return _Transaction(self)

    def _rollback(self, conn: apsw.Connection, depth: int, savepoint: str) -> None:
        # A txn number assigned inside the rolled-back block (at a deeper level than the
        # block's own) was undone with it; one assigned outside it still stands.
        if self._tx_txn_depth > depth:
            self._tx_txn = None
        with contextlib.suppress(apsw.Error):
            if depth == 0:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[apsw.Connection]:
        """A write transaction (a savepoint when nested) yielding the write connection.

        apsw errors raised inside become sqlstream errors with the cause kept. For the
        modules built on Database; the append path spells this out to stay lean.
        """
        with self.transaction():
            conn = self._wconn
            assert conn is not None
            try:
                yield conn
            except apsw.Error as exc:
                raise convert(exc) from exc

    def _txn_number(self, conn: apsw.Connection) -> int:
        """The commit sequence number of the current write transaction (assigned lazily)."""
        if self._tx_txn is None:
            row = cx.fetch(conn, _append.TXN_SQL)
            self._tx_txn = int(row[0][0])
            self._tx_txn_depth = self._tx_depth
        return self._tx_txn

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[apsw.Connection]:
        """A consistent read: the writer's own view inside a transaction, else a read txn."""
        self._check_process()
        if self.in_transaction():
            with translate():
                yield self._write_conn()
            return
        conn = self._read_conn()
        with translate():
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if not conn.getautocommit():
                    conn.execute("COMMIT")

    def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float | None,
        wake_at: Callable[[], float | None] | None = None,
    ) -> T | None:
        """Evaluate ``check`` until it returns non-None, waiting for commits up to ``timeout``.

        ``timeout``: 0 checks once, a positive number waits at most that long, None waits
        indefinitely. Blocking inside a transaction would hold the write lock that any
        waking commit needs, so it is refused.
        """
        timeout = _validation.check_timeout(timeout)  # huge (inf too) means None: no limit
        if timeout == 0:
            return check()
        if self.in_transaction():
            result = check()
            if result is not None:
                return result
            raise InvalidArgument(
                "cannot block inside db.transaction(): the transaction holds the write lock "
                "that the commit you wait for needs",
                hint="pass timeout=0 inside transactions",
            )
        self._check_process()
        return self._notifier.wait_until(check, timeout, self.wakeup, self.poll_interval, wake_at)

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
        _check_retention_extras(keep_unacked, dedup_seconds, dedup_records)
        _validation.check_flag(secret, "secret")
        _validation.check_flag(exist_ok, "exist_ok")
        meta = _validation.encode_metadata(metadata)
        write_secret = secrets.token_urlsafe(24) if secret else None
        with self.transaction():
            conn = self._write_conn()
            with translate():
                existing = conn.execute("SELECT 1 FROM streams WHERE name = ?", (name,)).fetchall()
                if existing:
                    if exist_ok:
                        return Stream(self, name)
                    raise StreamExists(f"stream {name!r} already exists", hint="pass exist_ok=True to reuse it")
                created = now_us()
                conn.execute(
                    "INSERT INTO streams (name, created_at, write_secret, max_count, max_age, "
                    "max_bytes, metadata, keep_unacked, dedup_seconds, dedup_records, trim_offset, "
                    "trim_bytes, trim_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, created, write_secret, max_count, max_age, max_bytes, meta, int(keep_unacked),
                     float(dedup_seconds), dedup_records,
                     *_retention.initial_triggers(max_count, max_bytes, max_age, created)),
                )
        return Stream(self, name, write_secret)

    def stream(self, name: str) -> Stream:
        """A handle to an existing stream (``StreamNotFound`` if absent).

        For a stream created with ``secret=True`` the handle reads but cannot write.
        """
        check_name(name)
        with self._snapshot() as conn:
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
        with self._snapshot() as conn:
            row = cx.fetch(conn, "SELECT name FROM streams WHERE write_secret = ?", (secret,))
        if not row:
            raise StreamNotFound("no stream has that write secret")
        return Stream(self, row[0][0], secret)

    def streams(self) -> list[StreamInfo]:
        """Every stream, by name."""
        with self._snapshot() as conn:
            rows = conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams ORDER BY name").fetchall()
            return [_stream_info(row, self._over_limit(conn, row), self._dropped(conn, row)) for row in rows]

    def stream_info(self, name: str) -> StreamInfo:
        """The :class:`StreamInfo` of one stream (``StreamNotFound`` if absent)."""
        check_name(name)
        with self._snapshot() as conn:
            rows = conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams WHERE name = ?", (name,)).fetchall()
            if not rows:
                raise StreamNotFound(f"no stream named {name!r}")
            return _stream_info(rows[0], self._over_limit(conn, rows[0]), self._dropped(conn, rows[0]))

    def _over_limit(self, conn: apsw.Connection, row: tuple[Any, ...]) -> str | None:
        """StreamInfo.over_limit for a row of _STREAM_COLUMNS (no query for a stream without limits)."""
        if row[9] is None and row[10] is None and row[11] is None:
            return None
        return _retention.over_limit(_query(conn), row[16], us(self._clock()))

    def _dropped(self, conn: apsw.Connection, row: tuple[Any, ...]) -> int:
        """StreamInfo.dropped_deliveries for a row of _STREAM_COLUMNS."""
        return _retention.dropped_deliveries(_query(conn), row[16])

    def delete_stream(self, name: str, *, force: bool = False) -> None:
        """Delete a stream, its records, subscriptions and readers in one transaction.

        Refused with ``SubscriptionInUse`` while a subscription of the stream has pending
        (delivered, unacked) records, unless ``force`` (as ``delete_subscription``).
        ``StreamNotFound`` if absent. Readers blocked on the stream wake and get
        ``StreamNotFound``.
        """
        check_name(name)
        _validation.check_flag(force, "force")
        with self.transaction():
            conn = self._write_conn()
            with translate():
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
                conn.execute("DELETE FROM chunks WHERE stream_id = ?", (row[0][0],))
                conn.execute("DELETE FROM streams WHERE id = ?", (row[0][0],))
                # Its id may be reused by a new stream, which must not inherit the count.
                stream_id: Any = row[0][0]
                conn.execute("DELETE FROM counters WHERE name = ?", (_retention.dropped_counter(stream_id),))
            self._tx_dirty = True

    # ----------------------------------------------------------------- retention and upkeep (issue 5)

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
        _check_retention_extras(
            False if keep_unacked is _KEEP else keep_unacked,
            1 if dedup_seconds is _KEEP else dedup_seconds,
            1 if dedup_records is _KEEP else dedup_records,
        )
        if keep_unacked is not _KEEP:
            changes["keep_unacked"] = int(keep_unacked)
        if dedup_seconds is not _KEEP:
            changes["dedup_seconds"] = float(dedup_seconds)
        if dedup_records is not _KEEP:
            changes["dedup_records"] = dedup_records
        with self.transaction():
            conn = self._write_conn()
            with translate():
                stream_id = self._stream_id(conn, stream)
                result = _retention.set_retention(_query(conn), stream_id, changes, us(self._clock()))
            self._tx_dirty = True  # followers of trimmed records re-check
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
        with self.transaction():
            conn = self._write_conn()
            with translate():
                stream_id = self._stream_id(conn, stream)
                result = _retention.trim(_query(conn), stream_id, before_offset, us(self._clock()), force=force)
            self._tx_dirty = True
        return result

    def _stream_id(self, conn: apsw.Connection, name: str) -> int:
        rows = _query(conn)("SELECT id FROM streams WHERE name = ?", (name,))
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
    ) -> MaintenanceReport:
        """Enforce retention, prune dedup ids, free pages, checkpoint the WAL, optimize.

        A delegation to :func:`sqlstream.maintenance.maintain` (see it for what each option
        does and what blocks: each step is its own short transaction; ``full`` rewrites the
        file and blocks writers meanwhile). Refused inside ``db.transaction()``.
        """
        from .maintenance import maintain

        return maintain(
            self, retention=retention, vacuum=vacuum, full=full, checkpoint=checkpoint, optimize=optimize,
            checkpoint_timeout=checkpoint_timeout,
        )

    def check(self, *, quick: bool = False, max_problems: int = 100) -> CheckReport:
        """Verify the file (``PRAGMA integrity_check``) and every stream's invariants.

        A delegation to :func:`sqlstream.maintenance.check`; returns its
        :class:`~sqlstream.maintenance.CheckReport` (``ok``, and each problem with its
        stream and offset). Read-only: one read transaction, writers carry on.
        """
        from .maintenance import check

        return check(self, quick=quick, max_problems=max_problems)

    # ----------------------------------------------------------------- writing records

    @overload
    def _append_rows(
        self, name: str, secret: str | None, rows: Sequence[PreparedRecord], expect_offset: int | None,
        ids: None = None, timestamps: Sequence[int] | None = None,
    ) -> range: ...

    @overload
    def _append_rows(
        self, name: str, secret: str | None, rows: Sequence[PreparedRecord], expect_offset: int | None,
        ids: Sequence[str | None], timestamps: Sequence[int] | None = None,
    ) -> list[int]: ...

    def _append_rows(
        self,
        name: str,
        secret: str | None,
        rows: Sequence[PreparedRecord],
        expect_offset: int | None,
        ids: Sequence[str | None] | None = None,
        timestamps: Sequence[int] | None = None,
    ) -> range | list[int]:
        """Append prepared rows to one stream atomically; return their offsets.

        The one append path (:func:`sqlstream.append.append_rows`: validation, dedup ids,
        expected offset, payload limit, retention triggers) in a write transaction, or a
        savepoint of the caller's. Times come from ``self._clock``.
        """
        _append.check_rows(rows, expect_offset, self.max_record_bytes)  # refused before BEGIN
        with self.transaction():
            conn = self._write_conn()
            with translate():
                stored = _append.append_rows(
                    cx.runner(conn), name, rows, secret=secret, expect_offset=expect_offset, ids=ids,
                    timestamps=timestamps, txn=lambda: self._txn_number(conn), now_us=us(self._clock()),
                    max_record_bytes=self.max_record_bytes,
                )
            self._tx_dirty = True
        return stored

    def _seal(self, name: str, secret: str | None) -> bool:
        """Seal a stream; True if this call sealed it, False if it already was."""
        with self.transaction():
            conn = self._write_conn()
            with translate():
                rows = conn.execute(
                    "SELECT sealed_at, write_secret FROM streams WHERE name = ?", (name,)
                ).fetchall()
                if not rows:
                    raise StreamNotFound(f"no stream named {name!r}")
                sealed_at, write_secret = rows[0]
                if write_secret is not None and write_secret != secret:
                    raise AccessDenied(f"stream {name!r} can be sealed only through its write secret")
                if sealed_at is not None:
                    return False
                conn.execute("UPDATE streams SET sealed_at = ? WHERE name = ?", (now_us(), name))
            self._tx_dirty = True
        return True

    # ----------------------------------------------------------------- inspection

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> QueryResult:
        """Run one read-only SQL statement and return its columns and rows.

        The query can never change the file: it runs on a connection opened read-only
        whose authorizer refuses every write (temporary tables included), schema change,
        setting pragma, ATTACH, ``VACUUM INTO`` and transaction control, each with
        ``ReadOnlyDatabase``. Reporting pragmas (``PRAGMA page_count``,
        ``PRAGMA table_info(chunks)``) are allowed. Several statements in one string see
        one snapshot. Inside :meth:`transaction` it is refused (``InvalidArgument``).
        """
        if not isinstance(sql, str):
            raise InvalidValue("sql must be a str")
        self._check_process()
        if self.in_transaction():
            raise InvalidArgument("db.query() is for reads outside transactions")
        conn, guard = self._query_conn()
        try:
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
                        return QueryResult(columns, cursor.fetchall())
                    except UnicodeDecodeError as exc:  # a damaged record's text (see sqlstream.records)
                        raise CorruptDatabase(
                            f"the result holds text that is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                            hint="select CAST(column AS BLOB) to see the stored bytes; `sqlstream check` names "
                            "damaged records",
                        ) from None
                finally:
                    guard.user = False
            finally:
                if not conn.getautocommit():
                    conn.execute("COMMIT")
        except (apsw.AuthError, apsw.ReadOnlyError, apsw.ExecTraceAbort) as exc:
            what = guard.denied or "writing"
            raise ReadOnlyDatabase(
                f"query() is read-only: {what} is not allowed", hint=_QUERY_HINT
            ) from exc
        except apsw.Error as exc:
            raise convert(exc) from exc
        except (TypeError, OverflowError, UnicodeEncodeError) as exc:  # unbindable params
            raise InvalidArgument(f"cannot run the query with these parameters: {exc}") from exc

    def backup(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
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
        """
        self._check_process()
        try:
            dest = os.path.abspath(os.fspath(path))
        except TypeError:
            raise InvalidArgument(f"the backup path must be a str or os.PathLike, not {type(path).__name__}") from None
        if not isinstance(dest, str) or "\x00" in dest:
            raise InvalidArgument("the backup path must be a str without NUL characters")
        if os.path.exists(dest):
            with contextlib.suppress(OSError):
                if os.path.samefile(dest, self.path):
                    raise InvalidArgument(f"cannot back {self.path} up onto itself")
            if not overwrite:
                raise InvalidArgument(f"{dest} already exists", hint="choose a new path, or pass overwrite=True")
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
                            job.step(-1)
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
            raise InvalidArgument(f"{dest} already exists", hint="choose a new path, or pass overwrite=True") from None
        except OSError as exc:
            raise DatabaseError(f"cannot write the backup {dest}: {exc.strerror}",
                                hint="check that the directory exists and is writable") from exc
        finally:
            for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        return dest

    # ----------------------------------------------------------------- archives (issue 4)

    def export(self, streams: str | Sequence[str], directory: str | os.PathLike[str], **options: Any) -> Any:
        """Export streams to rolled archive files, incrementally and resumably.

        A thin delegation to :func:`sqlstream.export.export` (see it for the options:
        ``name``, ``template``, ``roll_size_mb``, ``roll_minutes``, ``compress``,
        ``storage``, ``follow``...); returns its :class:`~sqlstream.export.ExportResult`.
        """
        from .export import export

        return export(self, streams, directory, **options)

    # ================================================================= subscriptions, readers,
    # producer, consumer (issue 3). Thin delegations: the logic lives in subscriptions.py,
    # readers.py, producer.py and consumer.py.

    def _clock(self) -> float:
        """Wall-clock seconds used for ack deadlines (``time.time``).

        An internal hook: tests assign a function to ``db._clock`` on one instance to expire
        ack deadlines without sleeping. Processes sharing a file must all use real time.
        """
        return time.time()

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
    ) -> Subscription:
        """Create a subscription (consumer group) on ``stream`` and return a handle to it.

        ``start`` (``"earliest"``, ``"latest"`` or a retained offset) is fixed now.
        ``ack_timeout``: seconds a consumer holds a fetched record before it is redelivered.
        ``max_unacked``: most records pending (delivered, unacked) at once.
        ``max_deliveries`` with ``dead_letter``: a record delivered that many times without
        an ack moves to the ``dead_letter`` stream (created now if absent, and again on
        demand if deleted later). ``exist_ok``: return an existing subscription of that
        name on the same stream unchanged. Raises ``StreamNotFound``,
        ``SubscriptionExists``, ``InvalidName``, ``InvalidArgument``, ``OffsetOutOfRange``.
        """
        return _subscriptions.create_subscription(
            self, name, stream, start=start, ack_timeout=ack_timeout, max_unacked=max_unacked,
            max_deliveries=max_deliveries, dead_letter=dead_letter, exist_ok=exist_ok,
        )

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
        max_batch: int = 1000,
        max_delay: float = 0.005,
        max_bytes: int = 4 * 1024 * 1024,
        on_success: SuccessCallback | None = None,
        on_error: ErrorCallback | None = None,
        retries: int = 0,
        retry_delay: float = 0.05,
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
        batch: int = 100,
        concurrency: int = 1,
        nack_delay: float = 0.0,
    ) -> Consumer:
        """A :class:`Consumer` running ``handler(batch)`` over ``subscription``: ack on
        return, nack on raise (see ``sqlstream.consumer``). ``SubscriptionNotFound`` if absent."""
        return Consumer(
            self, subscription, handler, name=name, batch=batch, concurrency=concurrency, nack_delay=nack_delay
        )


class _Transaction:
    """Context manager behind :meth:`Database.transaction` (a class: it is on every append's path)."""

    __slots__ = ("db", "conn", "depth")

    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> Database:
        db = self.db
        if db._closed or db._pid != os.getpid():
            db._check_process()
        conn = self.conn = db._write_conn()
        if not db._lock.acquire(timeout=db.busy_timeout):
            raise LockTimeout(
                f"another thread held the write lock on {db.path} for over {db.busy_timeout:g}s",
                hint="raise busy_timeout or shorten transactions",
            )
        depth = self.depth = db._tx_depth
        try:
            if depth == 0:
                conn.execute("BEGIN IMMEDIATE")
                db._tx_txn = None
                db._tx_dirty = False
                db._tx_after = []
            else:
                if conn.getautocommit():
                    # SQLite rolled the whole transaction back after an error the caller
                    # caught (disk full, I/O error). A SAVEPOINT now would start a new
                    # transaction that commits on its own, outside the caller's block.
                    raise _rolled_back()
                conn.execute(f"SAVEPOINT sqlstream_{depth}")
        except apsw.Error as exc:
            db._lock.release()
            raise convert(exc) from exc
        except BaseException:
            db._lock.release()
            raise
        db._tx_depth = depth + 1
        return db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db, conn, depth = self.db, self.conn, self.depth
        try:
            db._tx_depth = depth
            if exc_type is not None:
                db._rollback(conn, depth, f"sqlstream_{depth}")
                return
            if conn.getautocommit():  # SQLite already rolled it back (see __enter__)
                raise _rolled_back()
            try:
                conn.execute("COMMIT" if depth == 0 else f"RELEASE sqlstream_{depth}")
            except apsw.Error as err:
                db._rollback(conn, depth, f"sqlstream_{depth}")
                raise convert(err) from err
            except BaseException:
                db._rollback(conn, depth, f"sqlstream_{depth}")
                raise
            if depth > 0 and db._tx_txn_depth > depth:
                # The released block's work, a txn number assigned in it included, now
                # belongs to the enclosing block: only that block's rollback can undo it.
                db._tx_txn_depth = depth
            if depth == 0:
                after, db._tx_after = db._tx_after, []
                if db._tx_dirty:
                    db._notifier.committed()
                for callback in after:
                    callback()
        finally:
            db._lock.release()


def _private_temp(directory: str, name: str) -> tuple[int, str]:
    """A new empty file (mode 0600) next to ``name`` in ``directory``: (descriptor, path)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
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


def _checkpoint_on_close(conn: apsw.Connection) -> None:
    """Copy the whole WAL into the main file and truncate it, without waiting.

    The last close of a connection checkpoints and deletes the WAL on its own, but only
    when no other process has the file open; this TRUNCATE checkpoint also succeeds when
    one does but no reader needs the WAL, so the ``.db`` alone is still complete. It
    never waits on a lock: a busy file is left to SQLite's rules.
    """
    with contextlib.suppress(apsw.Error):
        conn.set_busy_timeout(0)
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)


def _rolled_back() -> DatabaseError:
    return DatabaseError(
        "this transaction was rolled back after an earlier error; nothing written in the "
        "db.transaction() block is committed",
        hint="let the error leave the transaction block, then retry the whole block",
    )


_init_locks: dict[str, threading.RLock] = {}
_init_locks_guard = threading.Lock()


def _init_lock(path: str) -> threading.RLock:
    """The process-wide lock that serialises opening (and the last close of) the file at ``path``.

    Re-entrant: a failed open closes the Database while holding it.
    """
    with _init_locks_guard:
        lock = _init_locks.get(path)
        if lock is None:
            lock = _init_locks[path] = threading.RLock()
        return lock


def _reset_init_locks() -> None:
    """After fork: a lock another parent thread held would stay held in the child forever."""
    global _init_locks_guard
    _init_locks_guard = threading.Lock()
    _init_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_init_locks)


def _reopen(path: str, options: dict[str, Any]) -> Database:
    return Database(path, **options)


def _check_retention_extras(keep_unacked: object, dedup_seconds: object, dedup_records: object) -> None:
    if not isinstance(keep_unacked, bool):
        raise InvalidArgument(f"keep_unacked must be True or False, not {keep_unacked!r}")
    if dedup_seconds is None or dedup_records is None:
        raise InvalidArgument("dedup_seconds and dedup_records must be positive numbers (the window cannot be unbounded)")
    _validation.check_seconds(dedup_seconds, "dedup_seconds", positive=True)
    _validation.check_limit(dedup_records, "dedup_records")


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


# Connections inherited across fork: kept referenced so they are never closed (or
# garbage-collected and closed) in the child, which would disturb the parent's locks.
_abandoned: builtins.list[apsw.Connection] = []

from .streams import Stream  # noqa: E402  (Stream needs Database's helpers at import)

# Issue 3 (subscriptions, readers, producer, consumer): imported last, like Stream.
from . import readers as _readers, subscriptions as _subscriptions  # noqa: E402
from .consumer import Consumer, Handler  # noqa: E402
from .producer import ErrorCallback, Producer, SuccessCallback  # noqa: E402
from .readers import Reader, ReaderInfo  # noqa: E402
from .subscriptions import Subscription, SubscriptionInfo  # noqa: E402
from .maintenance import CheckReport, MaintenanceReport  # noqa: E402
from .retention import TrimResult  # noqa: E402
