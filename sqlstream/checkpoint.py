"""Moving WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside whichever COMMIT pushes the WAL past 1,000
pages, and with ``synchronous=NORMAL`` that checkpoint fsyncs: one commit in a few
hundred pays milliseconds. sqlstream's write connections instead install a WAL hook
that asks a background thread (one per file per process) to run a PASSIVE checkpoint on
its own connection. PASSIVE never takes the write lock, so writers keep committing
while it copies pages. If the WAL still grows past ``HARD_LIMIT`` pages (the thread is
starved, readers pin old frames, or other writers keep appending while it copies), the
committing connection runs a RESTART checkpoint itself right after its COMMIT, so the
WAL cannot grow without bound: it takes the write lock (waiting at most ``RESTART_WAIT``
for it and for readers of old frames), copies what is left and starts the WAL over.

Why RESTART and not PASSIVE there: the WAL starts over only when a writer begins with
every frame copied. With other writers committing during the copy, a PASSIVE checkpoint
almost never ends that way, so with several writer processes the WAL stayed past
``HARD_LIMIT`` and every commit paid an inline checkpoint (two fsyncs): 5,000–8,000 of
W7's 12,000 commits did (benchmarks/findings.md, issue 23, "W7"). A failed attempt is
retried only after ``SOFT_LIMIT`` more pages, not at every commit.

``checkpoints="external"`` (``sqlstream.open``, or ``$SQLSTREAM_CHECKPOINTS``) leaves every
checkpoint to another process, such as Litestream, which must own them: it copies WAL
frames before it checkpoints them, and a checkpoint it did not run makes it take a full
new snapshot. sqlstream's connections then never checkpoint: no background thread, no
inline or automatic checkpoint, none at close (``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``), so
``-wal`` and ``-shm`` stay beside the file after the last close. ``db.maintain()`` still
checkpoints when asked to (``checkpoint=False`` skips it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import apsw

from .connection import connection_busy_handler
from .errors import InvalidArgument

SOFT_LIMIT = 1000  # pages; SQLite's default autocheckpoint threshold
HARD_LIMIT = 8000  # pages (~32 MiB of WAL at 4 KiB pages)
# How long the committing connection's RESTART checkpoint at HARD_LIMIT may wait for the
# write lock and for readers of old frames. It holds the write lock while it waits for
# readers, so every writer waits with it: short, and retried after SOFT_LIMIT more pages.
RESTART_WAIT = 0.1  # seconds

CHECKPOINT_MODES = ("auto", "external")
CHECKPOINTS_ENV = "SQLSTREAM_CHECKPOINTS"


def checkpoint_mode(value: str | None) -> str:
    """The checkpoint mode to use: ``value``, else ``$SQLSTREAM_CHECKPOINTS``, else ``"auto"``.

    The environment variable lets every process on a file (the CLI, ``serve``, an
    application) agree without code changes, as Litestream needs. Raises InvalidArgument.
    """
    chosen = value if value is not None else os.environ.get(CHECKPOINTS_ENV) or "auto"
    if chosen not in CHECKPOINT_MODES:
        where = "checkpoints" if value is not None else f"${CHECKPOINTS_ENV}"
        raise InvalidArgument(f"{where} must be 'auto' or 'external', not {chosen!r}",
                              hint="'external' leaves checkpoints to another process such as Litestream")
    return chosen


def leave_checkpoints_out(conn: apsw.Connection) -> None:
    """A connection that never checkpoints: not after commits, not when it closes last."""
    conn.wal_autocheckpoint(0)
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)


class Checkpointer:
    """A background thread that runs PASSIVE checkpoints when asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._wanted = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # completed background checkpoints (for tests and stats)
        # RESTART checkpoints run by committing connections past HARD_LIMIT (tried, and
        # those that completed: every frame copied, no reader left on the WAL).
        self.restarts_tried = 0
        self.restarts = 0
        self.last_result: tuple[int, int] = (-1, -1)  # (WAL frames, frames checkpointed)

    def request(self) -> None:
        """Ask for a checkpoint soon; cheap and non-blocking."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop:
                    self._thread = threading.Thread(target=self._run, name="sqlstream-checkpoint", daemon=True)
                    self._thread.start()
        self._wanted.set()

    @property
    def stopped(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """Tell the thread to finish; returns at once (see :meth:`join`)."""
        with self._lock:
            self._stop = True
        self._wanted.set()

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    def stop(self) -> None:
        self.request_stop()
        self.join()

    def _run(self) -> None:
        conn = None
        try:
            conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
            # Never wait on a lock: a busy checkpoint is simply retried at the next request.
            conn.set_busy_timeout(0)
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stop:
                    return
                try:
                    # A connection opens the WAL on its first read; until then its checkpoint
                    # silently does nothing (SQLite reports (-1, -1) frames).
                    conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
                    self.last_result = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                    self.checkpoints += 1
                except apsw.BusyError:
                    pass
        except apsw.Error:
            pass  # the inline HARD_LIMIT checkpoint keeps the WAL bounded without us
        finally:
            if conn is not None:
                conn.close()


class WalHook:
    """The WAL hook of one write connection: asks the background thread for a PASSIVE
    checkpoint every ``SOFT_LIMIT`` pages, and past ``HARD_LIMIT`` marks a RESTART
    checkpoint due, which the owner runs with :meth:`restart` once its COMMIT has
    returned (inside the hook the connection still holds its own read lock, which a
    RESTART waits for: it would always fail there). At most one RESTART per
    ``SOFT_LIMIT`` pages of WAL growth."""

    __slots__ = ("checkpointer", "busy_timeout", "first", "asked_at", "tried_at", "restart_due")

    def __init__(self, checkpointer: Checkpointer, busy_timeout: float,
                 first: Callable[[], None] | None = None) -> None:
        self.checkpointer = checkpointer
        # The connection's own busy handler, put back after a RESTART: its timeout and
        # its check before the first wait (connection_busy_handler's ``first``).
        self.busy_timeout = busy_timeout
        self.first = first
        self.asked_at = 0  # WAL size at the last request: ask again after SOFT_LIMIT more pages
        self.tried_at = 0  # WAL size at the last RESTART marked due
        self.restart_due = False

    def on_commit(self, connection: apsw.Connection, dbname: str, pages: int) -> int:
        """The hook itself (SQLite calls it after every commit with the WAL's size in pages)."""
        if pages < self.asked_at:
            self.asked_at = 0  # the WAL was restarted after a complete checkpoint
        if pages < self.tried_at:
            self.tried_at = 0
        if pages >= HARD_LIMIT and pages - self.tried_at >= SOFT_LIMIT:
            self.tried_at = pages
            self.restart_due = True
        elif pages - self.asked_at >= SOFT_LIMIT:
            self.asked_at = pages
            self.checkpointer.request()
        return apsw.SQLITE_OK

    def restart(self, conn: apsw.Connection) -> None:
        """Run the due RESTART checkpoint on ``conn`` (outside any transaction), trying for
        at most ``RESTART_WAIT`` to get the write lock and readers off the WAL; never raises.

        Another connection's checkpoint in progress (this process's background thread, or
        another process's) makes SQLite refuse at once without calling the busy handler,
        so that case is retried here after a short sleep."""
        self.restart_due = False
        cp = self.checkpointer
        cp.restarts_tried += 1
        deadline = time.monotonic() + RESTART_WAIT
        try:
            while True:
                left = deadline - time.monotonic()
                conn.set_busy_timeout(max(1, int(left * 1000)))
                try:
                    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
                    cp.restarts += 1
                    return
                except apsw.BusyError:
                    if time.monotonic() >= deadline:
                        return  # the background checkpoints go on; tried again SOFT_LIMIT pages on
                    time.sleep(0.0005)
                except apsw.Error:
                    return
        finally:
            with contextlib.suppress(apsw.Error):
                connection_busy_handler(conn, self.busy_timeout, self.first)


def install_wal_hook(conn: apsw.Connection, checkpointer: Checkpointer, busy_timeout: float,
                     first: Callable[[], None] | None = None) -> WalHook:
    """Replace SQLite's inline autocheckpoint on ``conn`` with the background one and the
    RESTART past ``HARD_LIMIT``; the caller runs :meth:`WalHook.restart` after a COMMIT
    when ``restart_due`` (``busy_timeout`` and ``first``: the connection's own busy
    handler, as :func:`~sqlstream.connection.connection_busy_handler` takes them)."""
    hook = WalHook(checkpointer, busy_timeout, first)
    # A bound method, not the instance: calling an instance from C looks up __call__ on
    # its type at every commit (~2,000 instructions more per append, callgrind).
    conn.set_wal_hook(hook.on_commit)
    return hook
