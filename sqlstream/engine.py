"""The engine: one file's connections, write scope, snapshots, waiting, clock and append path.

This is the internal interface every layer above it uses (``Database`` the façade, the
handles ``Stream``/``Subscription``/``Reader``/``Producer``/``Consumer``, maintenance, the
archive wing, the SQLite storage driver); none of them touches an ``Engine``'s private
members. Contracts:

- :meth:`Engine.write` is the write scope: ``BEGIN IMMEDIATE`` (outermost) or a
  ``SAVEPOINT`` (nested), under a re-entrant per-Engine lock, yielding the write
  connection. An exception rolls the scope back and propagates; an ``apsw.Error`` leaves
  as a :mod:`sqlstream.errors` class (cause kept). Whether the commit wakes blocked
  readers is *derived*: from SQLite's change count (``total_changes()``) over the scope,
  unless the scope says ``wakes=False`` (deliberately quiet bookkeeping: claims, reader
  positions, export progress) or ``wakes=True``.
- :meth:`Engine.snapshot` is a consistent read (the writer's own view inside a write
  scope, else a read transaction on this thread's read connection); errors converted.
- :meth:`Engine.wait_until` blocks until a check passes, woken by commits.
- :meth:`Engine.now_us`/:attr:`Engine.clock` is the one clock (record timestamps, ack
  deadlines, retention, dedup); tests assign a fake ``clock`` to one instance.
- :meth:`Engine.append_rows` is the append.

Connections: one write connection per Engine, every write transaction ``BEGIN IMMEDIATE``
so writers queue on SQLite's lock (never the "database is locked" failure of a deferred
transaction upgrading); one read connection per thread, in autocommit, so readers never
block writers. After ``fork`` the child opens fresh connections on first use and never
touches the parent's.

A thread's read connection is opened without SQLite's connection mutex (NOMUTEX: a record
read takes ~15% fewer instructions), so nothing below Python stops a second thread from
using it at once. Only its own thread uses it (it lives in a ``threading.local``), always
inside :meth:`Engine.snapshot` or :meth:`Engine.reading`, which hold the connection's
guard lock; :meth:`Engine.close`, the one caller from another thread, takes that guard
before closing it.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Protocol, TypeVar, overload

import apsw

from . import append as _append
from . import clock as _clock
from . import connection as cx
from . import lineage as _lineage
from . import retention as _retention
from . import txn as _txn
from .txn import MAX_TXN as _MAX_TXN
from . import writesecrets as _writesecrets
from .checkpoint import WalHook, install_wal_hook, leave_checkpoints_out
from .errors import (
    AccessDenied,
    ConcurrencyError,
    DatabaseClosed,
    DatabaseError,
    InvalidArgument,
    LockTimeout,
    PayloadTooLarge,
    ReadOnlyDatabase,
    SchemaVersionError,
    SqlstreamError,
    StreamNotFound,
    StreamSealed,
    convert,
    translate,
)
from .records import INLINE_MAX, inline_max
from .validation import check_timeout
from .wakeup import FileNotifier, notifier_for

T = TypeVar("T")
_time_time = time.time
_time_ns = time.time_ns

DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024
DEFAULT_SYNCHRONOUS = "normal"
DEFAULT_WAKEUP = "auto"
# The append path's statements and rules live in sqlstream/append.py (shared with the
# SQLAlchemy outbox and archive import); the engine runs them in its write scope.
PreparedRecord = _append.PreparedRecord
us = _clock.us
runner = cx.runner


class Engine:
    """One file's connections, write scope, snapshots, waiting, clock and append path.

    Opening validates nothing the façade already did (``Database.__init__`` checks the
    arguments); it opens or creates the file, migrates it, and attaches the file's
    in-process wake-up notifier.
    """

    # Slots, not an instance dict: an append reads and writes ~40 of these attributes,
    # and a dict of more than 30 keys is no shared-key dict, so CPython 3.11 looks each
    # one up by hash (LOAD_ATTR_WITH_HINT) instead of at a fixed slot: ~1,200 instructions
    # per single append (benchmarks/findings.md, issue 23, branch perf5). A new attribute
    # goes here too (assigning an undeclared one raises AttributeError).
    __slots__ = (
        "path", "checkpoints", "readonly", "synchronous", "busy_timeout", "wakeup",
        "poll_interval", "max_record_bytes", "vfs", "clock", "_closed", "_closing", "_open_lock",
        "_wconn", "_wq", "_wcur", "_wrun", "_wtxn", "_wal_hook", "_pid", "_lock", "_local",
        "_read_conns", "_guarded", "_tx_depth", "_tx_txn", "_tx_txn_depth", "_tx_tail", "_txn_committed", "_txn_tail",
        "_txn_token", "_version_after_commit", "_tx_wake", "_tx_quiet", "_ends",
        "_inline_max", "notifier", "path_key", "__weakref__",
    )
    # One cursor of the write connection for the statements of every write scope (BEGIN,
    # the runner's, COMMIT): each runs to its end before the next, under the write lock,
    # so none overlaps; conn.execute() would make and free a cursor for each (~2,300
    # instructions a statement, 4 statements per single append). Set by write_conn() with
    # _wconn, which every write scope opens first.
    _wcur: apsw.Cursor

    def __init__(
        self,
        path: str,
        *,
        readonly: bool,
        create: bool,
        synchronous: str,
        busy_timeout: float,
        wakeup: str,
        poll_interval: float | None,
        max_record_bytes: int,
        vfs: str | None,
        checkpoints: str = "auto",
    ) -> None:
        self.path = path
        self.path_key = os.path.realpath(path)  # the file, for write holders (register_write_holder)
        self.checkpoints = checkpoints  # "auto" or "external" (checkpoint.py)
        self.readonly = readonly
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self.wakeup = wakeup
        self.poll_interval = poll_interval
        self.max_record_bytes = max_record_bytes
        self.vfs = vfs
        # Wall-clock seconds for record timestamps, ack deadlines, retention and dedup.
        # Tests assign a function to one instance's ``clock`` to move time without
        # sleeping; processes sharing a file must all use real time.
        self.clock: Callable[[], float] = time.time
        self._closed = False
        # Set when close() starts closing the read connections (before it waits for the
        # write lock, so an open transaction still finishes: _closed comes after it).
        self._closing = False
        self._open_lock = threading.Lock()
        self._wconn: apsw.Connection | None = None
        self._wq: cx.Query | None = None
        self._wrun: Callable[[str, Sequence[Any]], object] | None = None
        self._wtxn: Callable[[int], int] | None = None
        # The write connection's WAL hook (checkpoint.py; None with external checkpoints):
        # past HARD_LIMIT it marks a RESTART checkpoint due, run after the COMMIT.
        self._wal_hook: WalHook | None = None
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
                    raise DatabaseError(f"no database at {self.path}", hint="check the path, or open with create=True",
                                        cli_hint="check the path (--db); `sqlstream create NAME` makes a new file")
                try:
                    cx.create_private_file(self.path)
                except OSError as exc:
                    raise DatabaseError(
                        f"cannot create {self.path}: {exc.strerror}",
                        hint="check that the directory exists and is writable",
                    ) from exc
            self.notifier: FileNotifier = notifier_for(self.path)
            if exists and self.notifier.open_count == 0:
                # Only while no Database here holds SQLite locks on it (see above).
                cx.check_header(self.path)
                cx.inspect_existing(self.path, self.vfs)
            self.notifier.attach()
            if readonly:
                try:
                    self._check_readable_schema()
                except BaseException:
                    self.close()
                    raise
            else:
                conn = self.write_conn()
                try:
                    with translate():
                        # Refuse another program's database before switching it to WAL,
                        # which would rewrite its header.
                        if cx.pragma(conn, "user_version") == 0:
                            cx._check_empty_or_ours(conn)
                        cx.connection_wal(conn, self.busy_timeout)
                    cx.migrate(conn)
                    self._settle_place(conn)
                except BaseException:
                    self.close()
                    raise

    def _settle_place(self, conn: apsw.Connection) -> None:
        """Give a file copied by other means than backup() (cp, a snapshot, a restore) an
        identity of its own before it writes anything (:func:`sqlstream.lineage.settle`).
        At a known place this is one read."""
        where = _lineage.location(self.path)
        if where is None:
            return
        with translate():
            q = cx.runner(conn)
            if _lineage.known_place(q, where):
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                _lineage.settle(q, where, self.now_us())
                conn.execute("COMMIT")
            except BaseException:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                raise

    def _check_readable_schema(self) -> None:
        with self.reading() as conn:
            mode = cx.pragma(conn, "journal_mode")
            version = int(cx.pragma(conn, "user_version"))
            cx._check_empty_or_ours(conn)
        latest = cx.schema_version()
        if version != latest:
            raise SchemaVersionError(
                f"the database has schema version {version}; this sqlstream reads version {latest}",
                hint="open it once without readonly=True to upgrade it" if version < latest else None,
            )
        if str(mode).lower() != "wal":
            raise SchemaVersionError(f"{self.path} is not in WAL mode (journal_mode={mode})")

    # ----------------------------------------------------------------- time

    def now_us(self) -> int:
        """The clock in integer microseconds: record timestamps, deadlines, retention, dedup."""
        clock = self.clock
        if clock is _time_time:
            return _time_ns() // 1000  # the same reading, without float rounding (every append)
        return us(clock())

    # ----------------------------------------------------------------- connections and fork

    def _init_process_state(self) -> None:
        """(Re)create everything that must not cross a fork."""
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._read_conns: list[apsw.Connection] = []
        # Each thread's read connection and its guard (see the module docstring).
        self._guarded: list[tuple[apsw.Connection, threading.RLock]] = []
        self._tx_depth = 0
        self._tx_txn: int | None = None
        self._tx_txn_depth = 0
        # The tail stream the counters row names once the transaction has its number.
        self._tx_tail: int | None = None
        # The txn number the write connection's last outermost commit took, the tail
        # stream the counters row named after it, and the connection's total_changes()
        # at that commit: while that count is unchanged (this connection changed no row
        # since) the file still holds both (see txn_number). Dropped, as the stream-ends
        # copy is, when another connection committed and on every rollback.
        self._txn_committed: int | None = None
        self._txn_tail: int | None = None
        self._txn_token = 0
        # Whether another connection committed since this one's last commit (for the
        # two copies above and below): the write connection's pager data version
        # (sqlite3_file_control DATA_VERSION, ~0.1 µs, no statement) read right after each
        # of its commits and again right after BEGIN IMMEDIATE. It moves with every commit,
        # this connection's own included (hence read after them), and when a read
        # transaction starts on a file another connection changed.
        self._version_after_commit: int | None = None
        self._tx_wake = False  # the outermost commit wakes blocked readers
        self._tx_quiet = 0  # changes made by wakes=False scopes in this transaction
        # Each stream's state as the write connection's last append left it (see
        # append.StreamEnds): valid while this connection changed no other row (its
        # token, total_changes(), set when the connection opens); dropped when another
        # connection committed (data_version, in WriteScope.__enter__) and on every rollback.
        self._ends = _append.StreamEnds(_no_changes)
        self._inline_max = INLINE_MAX  # the write connection's (set when it opens)

    def check_process(self) -> None:
        """Raise ``DatabaseClosed`` once closed; after a fork, drop the parent's connections."""
        if self._closed:
            raise DatabaseClosed(f"the database {self.path} is closed")
        if self._pid != os.getpid():
            # Forked: the parent's connections belong to the parent. Dropping them
            # without closing keeps the child from disturbing the parent's locks.
            with self._open_lock:
                if self._pid != os.getpid():
                    _abandoned.extend(self._read_conns)
                    _abandoned.extend(conn for conn, _ in self._guarded)
                    if self._wconn is not None:
                        _abandoned.append(self._wconn)
                    self._wconn = None
                    self._init_process_state()
                    self.notifier = notifier_for(self.path)
                    self.notifier.attach()

    def connect(self, *, readonly: bool = True) -> apsw.Connection:
        """A new connection of the caller's own (with sqlstream's settings); the caller closes it."""
        conn = cx.connect(
            self.path,
            readonly=readonly,
            busy_timeout=self.busy_timeout,
            synchronous=self.synchronous,
            vfs=self.vfs,
        )
        if self.checkpoints == "external":
            leave_checkpoints_out(conn)
        return conn

    def write_conn(self) -> apsw.Connection:
        """The write connection (opened on first use). Write through :meth:`write` only;
        outside a scope it serves pragmas that must not run in a transaction."""
        if self.readonly:
            raise ReadOnlyDatabase(f"{self.path} was opened read-only", hint="open it without readonly=True")
        conn = self._wconn
        if conn is None:
            with self._open_lock:
                if self._wconn is None:
                    conn = self.connect(readonly=False)
                    cx.connection_busy_handler(conn, self.busy_timeout, self._refuse_waiting_for_itself)
                    with _writers_lock:
                        _writers.add(self)
                    if self.checkpoints == "auto":
                        self._wal_hook = install_wal_hook(conn, self.notifier.checkpointer, self.busy_timeout,
                                                         self._refuse_waiting_for_itself)
                    # Made once per connection, not per append: the statement runner and
                    # the transaction's lazily assigned commit number.
                    self._wcur = conn.cursor()
                    self._wq = cx.runner(self._wcur)
                    self._wrun = self._wcur.execute  # the INSERTs of an append (no rows to fetch)
                    # The bound C method, not a Python function: read twice per append.
                    self._ends = _append.StreamEnds(conn.total_changes)
                    self._wtxn = self.txn_number
                    self._wconn = conn
                    # The page size is the file's: fixed once it holds a table.
                    self._inline_max = inline_max(int(cx.pragma(conn, "page_size")))
                conn = self._wconn
        return conn

    def _refuse_waiting_for_itself(self) -> None:
        """The write connection's busy handler, before its first wait: when this thread
        holds a write transaction of another Database on this file (two handles opened in
        one process), the lock it waits for is its own and would never come free; it
        waited out busy_timeout and got a LockTimeout blaming another connection. The same
        for a transaction of a ``sqlite+sqlstream`` SQLAlchemy connection of this thread
        (:func:`register_write_holder`)."""
        with _writers_lock:
            others = [e for e in _writers if e is not self and e.notifier is self.notifier and not e._closed]
            holders = [h for h in _holders if h.path_key == self.path_key]
        for other in others:
            if other.in_transaction():
                raise _self_wait(self.path, "another Database", "write through the Database whose transaction is "
                                 "open (one sqlstream.open() per file per process is enough), or end its transaction first")
        for holder in holders:
            if holder.held_by_this_thread():
                raise _self_wait(self.path, "a SQLAlchemy connection", "write through that connection "
                                 "(sqlstream.sqlalchemy.append), or commit or roll its transaction back first")

    def read_conn(self) -> apsw.Connection:
        """This thread's read connection (autocommit, ``query_only``, opened NOMUTEX).

        Use it only inside :meth:`snapshot` or :meth:`reading` (they hold its guard, which
        :meth:`close` takes from another thread before closing it)."""
        return self._read_pair()[0]

    def _read_pair(self) -> tuple[apsw.Connection, threading.RLock]:
        pair: tuple[apsw.Connection, threading.RLock] | None = getattr(self._local, "read", None)
        if pair is None:
            conn = cx.connect(self.path, readonly=self.readonly, busy_timeout=self.busy_timeout,
                              synchronous=self.synchronous, vfs=self.vfs, single_thread=True)
            if self.checkpoints == "external":
                leave_checkpoints_out(conn)
            try:
                with translate():
                    cx.pragma(conn, "query_only = 1")
                    cx.connection_stable_plans(conn)
            except BaseException:
                conn.close()
                raise
            pair = (conn, threading.RLock())
            with self._open_lock:
                if self._closing:  # close() ran meanwhile: it would never see this one
                    conn.close()
                    raise DatabaseClosed(f"the database {self.path} is closed")
                self._guarded.append(pair)
            self._local.read = pair
        return pair

    @contextlib.contextmanager
    def reading(self) -> Iterator[apsw.Connection]:
        """This thread's read connection, held for the block (no transaction): for pragmas."""
        self.check_process()
        conn, guard = self._read_pair()
        with guard:
            if self._closing:  # closed by another thread while we waited for the guard
                raise DatabaseClosed(f"the database {self.path} is closed")
            with translate():
                yield conn

    def query_conn(self) -> tuple[apsw.Connection, cx.QueryGuard]:
        """This thread's connection for ``Database.query`` (read-only file, guarded; see connection.py)."""
        pair: tuple[apsw.Connection, cx.QueryGuard] | None = getattr(self._local, "query", None)
        if pair is None:
            pair = cx.connect_query(
                self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous, vfs=self.vfs
            )
            with self._open_lock:
                self._read_conns.append(pair[0])
            self._local.query = pair
        return pair

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the write lock without a transaction (for ``VACUUM``, which cannot run in one).

        Keeps this process's other threads out; SQLite's own locks keep other processes out.
        Raises ``LockTimeout`` after ``busy_timeout``.
        """
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise LockTimeout(
                f"another thread held the write lock on {self.path} for over {self.busy_timeout:g}s",
                hint="raise busy_timeout or shorten transactions",
            )
        try:
            yield
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close every connection this Engine opened. Idempotent.

        Waits (up to the busy timeout) for a transaction running in another thread to end.
        When this is the last open Database on the file in this process, the helper
        threads' connections are closed first and a write connection last, so that
        SQLite checkpoints the WAL into the main file and deletes ``-wal``/``-shm``: the
        closed ``.db`` is then self-contained and can be copied alone. That needs no other
        process to hold the file open; if one does, the WAL is still checkpointed and
        truncated when no reader pins it, else SQLite's usual rules apply (the last
        connection anywhere to close does it). A read-only Database that closes last does
        the same when the file is writable to this process (no record changes: the WAL
        holds only what others committed), so reading leaves no ``-wal``/``-shm`` behind.
        """
        if self._closed:
            return
        if self._pid != os.getpid():
            self._closed = True  # the parent's connections are not ours to close
            return
        deadline = time.monotonic() + self.busy_timeout
        with self._open_lock:
            self._closing = True
            guarded = list(self._guarded)
            self._guarded.clear()
        # Before the write lock: a reader may hold its guard while it waits for that lock.
        for conn, guard in guarded:
            # NOMUTEX: closing while the owner is inside a call would free memory under it.
            if guard.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    with contextlib.suppress(apsw.Error):
                        conn.close(True)
                finally:
                    guard.release()
            # else: still in use after busy_timeout; left open (as apsw leaves a connection
            # that another thread is inside), not closed under its user.
        got = self._lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            self._closed = True
            with self._open_lock:
                conns = list(self._read_conns)
                self._read_conns.clear()
                wconn, self._wconn = self._wconn, None
            for conn in conns:
                with contextlib.suppress(apsw.Error):
                    conn.close(True)
            notifier = getattr(self, "notifier", None)
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
                # A read-only connection creates -wal and -shm but may not delete them at
                # its close; a write connection, closed last, checkpoints (nothing, if no
                # one wrote) and deletes them, so reading leaves one .db as it found it.
                owed = notifier.checkpoint_owed or os.path.exists(self.path + "-wal")
                ours = self.checkpoints == "auto"  # "external": another process checkpoints
                if last and wconn is None and owed and ours and os.access(self.path, os.W_OK):
                    with contextlib.suppress(SqlstreamError, apsw.Error):
                        wconn = self.connect(readonly=False)
                if wconn is not None:
                    if last and ours:
                        _checkpoint_on_close(wconn)
                    with contextlib.suppress(apsw.Error):
                        wconn.close(True)
        finally:
            if got:
                self._lock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def closing(self) -> bool:
        """``close()`` has begun (its read connections are closed or being closed)."""
        return self._closing

    # ----------------------------------------------------------------- write scope, snapshot, wait

    def in_transaction(self) -> bool:
        """True when the calling thread is inside a write scope of this Engine."""
        return self._tx_depth > 0 and self._lock._is_owned()  # type: ignore[attr-defined]

    def write(self, *, wakes: bool | None = None) -> WriteScope:
        """The write scope: ``with engine.write() as conn:`` (see the module docstring).

        ``wakes``: None derives it from the rows the scope changed; False keeps the
        scope's changes from waking readers (bookkeeping nobody waits for); True always
        wakes. Waits up to ``busy_timeout`` for the lock (``LockTimeout``).
        """
        return WriteScope(self, wakes)

    def _rollback(self, conn: apsw.Connection, depth: int, savepoint: str) -> None:
        # A txn number assigned inside the rolled-back block (at a deeper level than the
        # block's own) was undone with it; one assigned outside it still stands.
        if self._tx_txn_depth > depth:
            self._tx_txn = None
        self._ends.clear()  # total_changes() does not go back with the rows it counted
        self._txn_committed = None
        with contextlib.suppress(apsw.Error):
            if depth == 0:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")

    def txn_number(self, stream_id: int) -> int:
        """The commit sequence number of the current write transaction, which is about to
        append to stream ``stream_id`` (assigned lazily, at its first append; called
        inside a write scope, on the write connection).

        Keeps :mod:`sqlstream.txn`'s rule: the first append takes last + 1 and, when
        ``stream_id`` is not the tail stream, names it the tail
        (:func:`~sqlstream.txn.move_tail`) in the same block as its records, so the
        number is in the tail stream for as long as the transaction keeps it. What the
        file holds is read (:func:`~sqlstream.txn.txn_state`) unless the write
        connection's own last commit left it and nothing changed since (no other
        connection committed, this one changed no row); so a writer that keeps appending
        to one stream runs no statement for its number. A rollback of the block that took
        the number gives it back, with the tail it named.
        """
        number = self._tx_txn
        if number is None:
            q, conn = self._wq, self._wconn
            assert q is not None and conn is not None  # set with the write connection
            last, tail = self._txn_committed, self._txn_tail
            if last is None or tail is None or self._txn_token != conn.total_changes():
                last, tail = _txn.txn_state(q)
            if last >= _MAX_TXN:  # only SQL outside sqlstream puts it there
                raise _txn.exhausted(last)
            if tail != stream_id:
                _txn.move_tail(q, stream_id)
            number = self._tx_txn = last + 1
            self._tx_tail = stream_id
            self._tx_txn_depth = self._tx_depth
        return number

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[apsw.Connection]:
        """A consistent read: the writer's own view inside a write scope, else a read txn.

        Nested in another snapshot of the same thread (outside a write scope), it joins
        that one's read transaction: code that makes several reads (each its own
        snapshot) sees one state of the file when a caller wraps them in one snapshot,
        without the write lock a ``db.transaction()`` would take. apsw errors raised
        inside leave as sqlstream errors (cause kept).
        """
        self.check_process()
        if self.in_transaction():
            with translate():
                yield self.write_conn()
            return
        conn, guard = self._read_pair()
        with guard:
            if self._closing:  # closed by another thread while we waited for the guard
                raise DatabaseClosed(f"the database {self.path} is closed")
            if not conn.getautocommit():
                # Only this thread uses its read connection (the guard is held), and only
                # an enclosing snapshot leaves it inside a transaction: join it.
                with translate():
                    yield conn
                return
            with translate():
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if not conn.getautocommit():
                        conn.execute("COMMIT")

    def wait_until(
        self,
        check: Callable[[], T | None],
        timeout: float | None,
        wake_at: Callable[[], float | None] | None = None,
    ) -> T | None:
        """Evaluate ``check`` until it returns non-None, waiting for commits up to ``timeout``.

        ``timeout``: 0 checks once, a positive number waits at most that long, None waits
        indefinitely (validated by ``validation.check_timeout``). Blocking inside a write
        scope would hold the write lock that any waking commit needs, so it is refused
        (``InvalidArgument``).
        """
        timeout = check_timeout(timeout)  # huge (inf too) means None: no limit
        if timeout == 0:
            return check()
        if self.in_transaction():
            result = check()
            if result is not None:
                return result
            raise blocking_in_transaction()
        self.check_process()
        return self.notifier.wait_until(check, timeout, self.wakeup, self.poll_interval, wake_at)

    # ----------------------------------------------------------------- writes

    @overload
    def append_rows(
        self, name: str, secret: str | None, rows: Sequence[PreparedRecord], expect_offset: int | None,
        ids: None = None, timestamps: Sequence[int] | None = None,
    ) -> range: ...

    @overload
    def append_rows(
        self, name: str, secret: str | None, rows: Sequence[PreparedRecord], expect_offset: int | None,
        ids: Sequence[str | None], timestamps: Sequence[int] | None = None,
    ) -> list[int]: ...

    def append_rows(
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
        expected offset, payload limit, retention triggers) in a write scope, or a
        savepoint of the caller's. Arguments are checked before BEGIN, so a refused call
        never waits for the write lock. Times come from :attr:`clock`. Raises
        ``StreamNotFound``, ``AccessDenied``, ``StreamSealed``, ``ConcurrencyError``,
        ``PayloadTooLarge``, ``InvalidArgument``.
        """
        if len(rows) == 1 and expect_offset is None and rows[0][4] <= self.max_record_bytes:
            total = rows[0][4]  # check_rows()'s answer for one record, without its frame
        else:
            total = _append.check_rows(rows, expect_offset, self.max_record_bytes)
        scope = WriteScope(self, None)  # what write() returns, without its call
        try:
            with scope:
                q, txn = self._wq, self._wtxn
                assert q is not None and txn is not None  # set with the write connection
                clock = self.clock  # now_us() without its frame (every append)
                now = _time_ns() // 1000 if clock is _time_time else us(clock())
                if ids is None:  # no dedup: straight to the statements
                    return _append.store(q, name, rows, total, secret, expect_offset, txn, now,
                                         timestamps, self._ends, self._inline_max, self._wrun)
                return _append.append_rows(
                    q, name, rows, secret=secret, expect_offset=expect_offset, ids=ids,
                    timestamps=timestamps, txn=txn, now_us=now,
                    max_record_bytes=self.max_record_bytes, checked_bytes=total, ends=self._ends,
                    inline_max=self._inline_max,
                )
        except BaseException:
            scope.abandon()  # a Ctrl-C at the start of __exit__ (see WriteScope.abandon)
            raise

    def seal(self, name: str, secret: str | None) -> bool:
        """Seal a stream; True if this call sealed it, False if it already was.

        Raises ``StreamNotFound``, ``AccessDenied`` (a secret stream, without its secret).
        """
        with self.write() as conn:
            rows = conn.execute(
                "SELECT sealed_at, write_secret_sha256, id FROM streams WHERE name = ?", (name,)
            ).fetchall()
            if not rows:
                raise StreamNotFound(f"no stream named {name!r}")
            sealed_at, write_secret, sid = rows[0]
            assert isinstance(sid, int)
            if not _writesecrets.matches(write_secret, secret):
                raise AccessDenied(f"stream {name!r} can be sealed only through its write secret")
            if sealed_at is not None:
                return False
            _retention.settle_ends(cx.runner(conn), sid)
            conn.execute("UPDATE streams SET sealed_at = ? WHERE id = ?", (self.now_us(), sid))
        return True


class WriteScope:
    """The context manager behind :meth:`Engine.write` (a class: it is on every append's path).

    Wake accounting, per transaction: each scope notes SQLite's change count and the
    transaction's quiet count on entry. On a successful exit its own changes are the
    difference; a ``wakes=False`` scope adds them to the quiet count, any other scope with
    changes beyond the quiet ones it enclosed (or ``wakes=True``) marks the transaction
    as waking. A rolled-back scope's changes count as quiet (they are undone). The
    outermost commit calls ``notifier.committed()`` when marked.
    """

    __slots__ = ("engine", "wakes", "conn", "depth", "changes0", "quiet0", "acquired", "open", "forks")

    def __init__(self, engine: Engine, wakes: bool | None) -> None:
        self.engine = engine
        self.wakes = wakes
        self.open = False

    def __enter__(self) -> apsw.Connection:
        engine = self.engine
        if engine._closed or engine._pid != os.getpid():
            engine.check_process()
        # The write connection once it is open (every append after the first), without a call.
        conn = self.conn = engine._wconn or engine.write_conn()
        lock = engine._lock
        # A thread that holds the lock already is in a scope (nested) or in exclusive():
        # it takes no second hold. Otherwise the lock is taken inside the try, so a Ctrl-C
        # landing just after acquire() returned is undone below (it cannot leave the lock
        # held: this thread did not hold it before, so holding it now means it took it).
        acquired = self.acquired = not lock._is_owned()  # type: ignore[attr-defined]
        depth = self.depth = -1
        try:
            # Uncontended first: acquire with a timeout is several times slower.
            if acquired and not lock.acquire(False) and not lock.acquire(timeout=engine.busy_timeout):
                raise LockTimeout(
                    f"another thread held the write lock on {engine.path} for over {engine.busy_timeout:g}s",
                    hint="raise busy_timeout or shorten transactions",
                )
            depth = self.depth = engine._tx_depth
            if depth == 0:
                engine._wcur.execute("BEGIN IMMEDIATE")
                if conn.data_version() != engine._version_after_commit:
                    # Another connection committed: the stream ends and the txn number
                    # this connection kept may be stale.
                    engine._ends.clear()
                    engine._txn_committed = None
                engine._tx_txn = None
                engine._tx_wake = False
                engine._tx_quiet = 0
            else:
                if conn.getautocommit():
                    # SQLite rolled the whole transaction back after an error the caller
                    # caught (disk full, I/O error). A SAVEPOINT now would start a new
                    # transaction that commits on its own, outside the caller's block.
                    raise _rolled_back()
                conn.execute(f"SAVEPOINT sqlstream_{depth}")
            self.changes0 = conn.total_changes()
            self.quiet0 = engine._tx_quiet
        except BaseException as exc:
            # Whatever was begun is undone: BEGIN's transaction (a savepoint opened just
            # now holds nothing yet and goes with the enclosing block), the lock if taken.
            if depth == 0:
                _end_begun(conn, depth)
            elif depth > 0:  # a savepoint opened just before the interrupt: empty, released
                with contextlib.suppress(apsw.Error):
                    conn.execute(f"RELEASE sqlstream_{depth}")
            if acquired and lock._is_owned():  # type: ignore[attr-defined]
                lock.release()
            if isinstance(exc, apsw.Error):
                raise convert(exc) from exc
            raise
        # No call from here to the return: nothing can interrupt between these stores.
        engine._tx_depth = depth + 1
        self.forks = _forks
        self.open = True
        return conn

    def abandon(self) -> None:
        """Undo a scope whose ``__exit__`` never ran: a Ctrl-C (KeyboardInterrupt) can land
        at the very start of ``__exit__``, before its first statement, and propagate from
        the ``with`` statement. A caller that wraps the ``with`` in ``try/except
        BaseException`` calls this in the handler: it rolls the scope's block back (its
        savepoint, or the whole transaction at depth 0), restores the depth and releases
        the lock, as ``__exit__`` with an exception would have. A no-op after ``__exit__``.
        """
        if self.open:
            self.__exit__(KeyboardInterrupt, None, None)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        engine, conn, depth = self.engine, self.conn, self.depth
        if self.forks != _forks:
            return self._inherited(exc_type)
        # Whether the block has ended (committed, released or rolled back): anything raised
        # before that, a Ctrl-C between two statements here included, rolls it back.
        ended = False
        try:
            self.open = False
            engine._tx_depth = depth
            changes = conn.total_changes()  # a COMMIT changes no row: still the count after it
            delta = changes - self.changes0
            if exc_type is not None:
                engine._tx_quiet = self.quiet0 + delta
                engine._rollback(conn, depth, f"sqlstream_{depth}")
                ended = True
                if isinstance(exc, apsw.Error):
                    raise convert(exc) from exc
                return
            if conn.getautocommit():  # SQLite already rolled it back (see __enter__)
                raise _rolled_back()
            if self.wakes is False:
                engine._tx_quiet = self.quiet0 + delta
            elif self.wakes or delta > engine._tx_quiet - self.quiet0:
                engine._tx_wake = True
            try:
                engine._wcur.execute("COMMIT" if depth == 0 else f"RELEASE sqlstream_{depth}")
            except apsw.Error as err:
                raise convert(err) from err  # rolled back below, as anything raised before the end
            ended = True
            if depth > 0 and engine._tx_txn_depth > depth:
                # The released block's work, a txn number assigned in it included, now
                # belongs to the enclosing block: only that block's rollback can undo it.
                engine._tx_txn_depth = depth
            if depth == 0:
                engine._version_after_commit = conn.data_version()
                if engine._tx_txn is not None:
                    engine._txn_committed = engine._tx_txn
                    engine._txn_tail = engine._tx_tail  # this transaction's first stream
                    engine._txn_token = changes
                if engine._tx_wake:
                    engine.notifier.committed()
                hook = engine._wal_hook
                if hook is not None and hook.restart_due:
                    hook.restart(conn)
        except BaseException as err:
            if not ended:
                engine._rollback(conn, depth, f"sqlstream_{depth}")
            if isinstance(err, apsw.Error):
                # The connection failed under the block's end: closed by db.close() inside
                # the block or, past the busy timeout, from another thread.
                if engine._closed:
                    raise _closed_in_scope(engine.path) from err
                raise convert(err) from err
            raise
        finally:
            if self.acquired:
                engine._lock.release()


    def _inherited(self, exc_type: object) -> None:
        """Leave a scope opened before ``os.fork()``, in the child: the transaction and
        its connection are the parent's. Committing the child's copy wrote the parent's
        uncommitted pages into the WAL at the end the copy knew, over what the parent
        committed since; rolling it back can touch the shared WAL index. So neither
        runs: the child's Database drops the parent's connections (as on its first use
        after a fork) and the block fails, or the block's own exception propagates."""
        self.open = False
        engine = self.engine
        if not engine._closed:
            engine.check_process()
        if exc_type is None:
            raise DatabaseError(
                "this transaction was opened before os.fork() in the parent process: it is "
                "the parent's, and nothing the child wrote in the block is committed",
                hint="fork outside transactions: SQLite's lock state in this process still "
                "shows the parent's write lock, so this child's writes to the file wait out "
                "the busy timeout (reads work)",
                cli_hint="",
            )


# Forks of this process so far, counted in the child (os.register_at_fork): a write scope
# notes the count at entry, so one left in a forked child is told from the parent's.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


def _no_changes() -> int:
    """The stream-ends token before the write connection opens (no append stores an entry
    before then: every append opens it first)."""
    return 0


def _end_begun(conn: apsw.Connection, depth: int) -> None:
    """A scope that failed while opening: roll back a transaction its BEGIN already opened
    (the data-version read after it raised), so the connection is not left inside it."""
    if depth == 0 and not conn.getautocommit():
        with contextlib.suppress(apsw.Error):
            conn.execute("ROLLBACK")


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


def _closed_in_scope(path: str) -> DatabaseClosed:
    return DatabaseClosed(
        f"the database {path} was closed while this transaction was open; nothing written "
        "in the db.transaction() block is committed",
        hint="close the Database after the transaction block ends (close() from another "
        "thread waits up to busy_timeout for it)",
        cli_hint="",  # only the Python API opens transactions
    )


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

    Re-entrant: a failed open closes the Engine while holding it.
    """
    with _init_locks_guard:
        lock = _init_locks.get(path)
        if lock is None:
            lock = _init_locks[path] = threading.RLock()
        return lock


def _reset_init_locks() -> None:
    """After fork: a lock another parent thread held would stay held in the child forever."""
    global _init_locks_guard, _writers_lock
    _init_locks_guard = threading.Lock()
    _init_locks.clear()
    _writers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_init_locks)
    os.register_at_fork(after_in_child=_count_fork)


# Engines with a write connection, for _refuse_waiting_for_itself (weak: a closed and
# dropped Database leaves it).
_writers: weakref.WeakSet[Engine] = weakref.WeakSet()
_writers_lock = threading.Lock()


class WriteHolder(Protocol):
    """A connection of this process that is not an Engine's and can hold a file's write
    lock (sqlstream's SQLAlchemy driver): ``path_key`` is its file's real path."""

    path_key: str

    def held_by_this_thread(self) -> bool:
        """Whether the calling thread has this connection's write transaction open."""


_holders: weakref.WeakSet[WriteHolder] = weakref.WeakSet()


def register_write_holder(holder: WriteHolder) -> None:
    """Make ``holder``'s transactions known to this process's Engines: a write of the
    thread that holds one, which would wait for its own lock until busy_timeout, fails at
    once with ``LockTimeout`` (the other way: :func:`refuse_waiting_for_own_write`)."""
    with _writers_lock:
        _holders.add(holder)


def refuse_waiting_for_own_write(path: str, key: str, *, waiter: str) -> None:
    """For the busy handler of a connection that is not an Engine's (``waiter`` names it),
    before its first wait: raise ``LockTimeout`` when the calling thread holds a write
    transaction of a sqlstream Database on ``path`` (``key``: its real path), whose lock
    would never come free while this thread waits for it."""
    with _writers_lock:
        engines = [e for e in _writers if not e._closed and e.path_key == key]
    for engine in engines:
        if engine.in_transaction():
            raise _self_wait(path, "a Database", f"commit the Database's transaction before writing through {waiter}, "
                             "or write through the Database (db.transaction() holds the lock until it ends)")


def _self_wait(path: str, holder: str, hint: str) -> LockTimeout:
    return LockTimeout(
        f"this thread holds a write transaction of {holder} on {path}: this write would wait "
        "for that transaction's lock, which this thread holds",
        hint=hint,
        cli_hint="",
    )


# Connections inherited across fork: kept referenced so they are never closed (or
# garbage-collected and closed) in the child, which would disturb the parent's locks.
_abandoned: builtins.list[apsw.Connection] = []


def blocking_in_transaction() -> InvalidArgument:
    """The error of a call that would block inside a write transaction (sync and aio alike)."""
    return InvalidArgument(
        "cannot block inside db.transaction(): the transaction holds the write lock "
        "that the commit you wait for needs",
        hint="pass timeout=0 inside transactions; to wait for a subscription's records, "
        "call sub.wait(timeout) before the transaction opens",
        # Only the Python API opens transactions: no command blocks inside one.
        cli_hint="",
    )
