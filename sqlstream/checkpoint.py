"""Moving WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside whichever COMMIT pushes the WAL past 1,000
pages, and with ``synchronous=NORMAL`` that checkpoint fsyncs: one commit in a few
hundred pays milliseconds. sqlstream's write connections instead install a WAL hook
that asks a background thread (one per file per process) to run a PASSIVE checkpoint on
its own connection. PASSIVE never takes the write lock, so writers keep committing
while it copies pages. If the WAL still grows past ``HARD_LIMIT`` pages (the thread is
starved, or readers pin old frames), the committing connection checkpoints itself,
as SQLite would have, so the WAL cannot grow without bound.

``checkpoints="external"`` (``sqlstream.open``, or ``$SQLSTREAM_CHECKPOINTS``) leaves every
checkpoint to another process, such as Litestream, which must own them: it copies WAL
frames before it checkpoints them, and a checkpoint it did not run makes it take a full
new snapshot. sqlstream's connections then never checkpoint: no background thread, no
inline or automatic checkpoint, none at close (``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``), so
``-wal`` and ``-shm`` stay beside the file after the last close. ``db.maintain()`` still
checkpoints when asked to (``checkpoint=False`` skips it).
"""

from __future__ import annotations

import os
import threading

import apsw

from .errors import InvalidArgument

SOFT_LIMIT = 1000  # pages; SQLite's default autocheckpoint threshold
HARD_LIMIT = 8000  # pages (~32 MiB of WAL at 4 KiB pages)

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


def install_wal_hook(conn: apsw.Connection, checkpointer: Checkpointer) -> None:
    """Replace SQLite's inline autocheckpoint on ``conn`` with the background one."""

    asked_at = [0]  # WAL size at the last request: ask again only after SOFT_LIMIT more pages

    def hook(connection: apsw.Connection, dbname: str, pages: int) -> int:
        if pages < asked_at[0]:
            asked_at[0] = 0  # the WAL was restarted after a complete checkpoint
        if pages >= HARD_LIMIT:
            # We are inside COMMIT's WAL hook, where SQLite's own autocheckpoint runs too.
            try:
                connection.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
            except apsw.Error:
                pass
        elif pages - asked_at[0] >= SOFT_LIMIT:
            asked_at[0] = pages
            checkpointer.request()
        return apsw.SQLITE_OK

    conn.set_wal_hook(hook)
