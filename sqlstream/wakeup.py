"""Waking blocked readers when something commits.

One :class:`FileNotifier` exists per database file per process, shared by every
``Database`` on that file. It keeps a *generation* counter behind a condition variable:

* a commit made in this process bumps it directly, right after COMMIT returns;
* commits made by other processes are seen by one watcher thread per file, which runs
  only while somebody waits and checks ``PRAGMA data_version`` on its own connection.
  In ``poll`` mode it checks every ``poll_interval``; in ``notify`` mode it sleeps on a
  Unix datagram socket (the *doorbell*) that committing processes ring, and checks only
  then, plus a slow fallback check for writers that do not ring (the ``sqlite3`` shell).
  A committer learns whether anyone listens without a system call: the doorbell folder
  holds a small shared-memory *announcement* file that every newly bound bell overwrites
  with a fresh random token; committers re-list the folder only when the token changed.

A waiter reads the generation, evaluates its condition, and sleeps only if the
generation has not moved since — so a commit between the check and the sleep is never
missed. Nothing spins: a waiter sleeps on the condition variable until woken or timed out.

In notify mode one blocked thread (``wait_until``'s caller, the *sleeper*) sleeps on the
doorbell itself instead of the condition variable, so another process's commit wakes the
thread that reads the record: one thread woken per commit, not the watcher and then the
waiter (measured: the watcher's hand-over took a sixth of a cross-process wake-up). The
watcher leaves the doorbell to such threads while they come and go, and reads it again
when only registrations without a thread of their own (``sqlstream.aio``) wait. Whoever
bumps the generation while a sleeper sleeps rings this process's own bell.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import re
import select
import socket
import stat
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import apsw

from .checkpoint import Checkpointer
from .errors import SqlstreamWarning

T = TypeVar("T")

WAKEUP_MODES = ("auto", "poll", "notify")
DEFAULT_POLL_INTERVAL = 0.001  # poll mode: cross-process wake within ~1 ms
DEFAULT_FALLBACK_INTERVAL = 0.25  # notify mode: catches writers that do not ring
_LINGER = 1.0  # keep the watcher this long after the last waiter, to avoid churn
# The longest the main thread sleeps at once while it waits. A signal (Ctrl-C's SIGINT)
# that the kernel hands to another thread of the process (any thread that does not block
# it may take it) only sets Python's flag: the main thread, asleep in select() or on a
# lock, is not interrupted and would run the handler (raise KeyboardInterrupt) only at
# the next commit. Waking this often lets it run within this bound.
SIGNAL_CHECK_INTERVAL = 0.1
_socket_ids = itertools.count()
ANNOUNCE_FILE = "announce"  # in each doorbell folder: 8 bytes, rewritten by every new bell


def doorbell_supported() -> bool:
    return hasattr(socket, "AF_UNIX") and os.name == "posix"


class FileNotifier:
    """Process-wide wakeup hub for one database file (see the module docstring)."""

    def __init__(self, path: str, ident: tuple[int, int]) -> None:
        self.path = path
        lock = threading.Lock()  # shared with _watch_cond (below)
        # Every critical section says ``with self._lock`` (the C lock), never ``with
        # self.cond``: Condition.__enter__ is Python code, and a KeyboardInterrupt that lands
        # just after its acquire (Ctrl-C) leaves the lock held for ever, so the next
        # bump (close() makes one) deadlocks. The with statement on the C lock cannot
        # leave it half-entered. ``cond.wait``/``notify`` work on the same lock.
        self._lock = lock
        self.cond = threading.Condition(lock)
        self.generation = 0
        self._waiters = 0
        self._poll_waiters = 0
        self._poll_interval = DEFAULT_POLL_INTERVAL
        self._fallback = DEFAULT_FALLBACK_INTERVAL
        self._watcher: threading.Thread | None = None
        self._watcher_ready = threading.Event()  # replaced for every new watcher thread
        self._last_waiter_left = 0.0
        import tempfile  # here, not at the top: start-up time (tests/test_startup.py)

        root = os.path.join(tempfile.gettempdir(), f"sqlstream-{os.getuid() if hasattr(os, 'getuid') else 0}")
        self._bell_dir = os.path.join(root, f"{ident[0]:x}-{ident[1]:x}")
        # (announcement token when the folder was listed, the bells it held)
        self._bell_cache: tuple[bytes, list[str]] = (b"", [])
        self._announce_map: mmap.mmap | None = None  # read by committers, never written
        self._announce_fd = -1
        # The doorbell needs a directory only we can write: anyone who can write it could
        # plant or swap sockets. When it fails the checks, this file's waiters poll instead.
        self._bell_ok = False
        if doorbell_supported():
            problem = _private_dir(root)
            if problem is None:
                _clean_stale_bell_dirs(root)
                problem = _private_dir(self._bell_dir)
            if problem is None:
                opened = _open_announcements(self._bell_dir)
                if isinstance(opened, str):
                    problem = opened
                else:
                    fd, self._announce_map = opened
                    self._announce_fd = fd
                    # The descriptor holds the shared flock that marks the folder in use.
                    weakref.finalize(self, _close_announcements, fd, self._announce_map)
                    self._bell_ok = True
            if problem is not None:
                _warn_once(root, problem)
        self._own_bell: str | None = None
        self._send_sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        # The bound doorbell socket (the watcher's) and who reads it right now: one waiter
        # sleeping on it (``_sleeping_on``) or the watcher (``_watcher_on``), never both.
        # Claimed and released by plain stores under ``_lock``, not by acquiring a second
        # lock: a KeyboardInterrupt landing on the return of an acquire() would leave it
        # held with nobody to release it, and the watcher's exit waiting for ever. The
        # watcher closes its socket only once no sleeper is on it.
        self._bell_sock: socket.socket | None = None
        self._sleeping_on: socket.socket | None = None
        self._watcher_on: socket.socket | None = None
        self._sync_waiters = 0  # threads inside wait_until (not aio registrations)
        self._last_sync_left = -_LINGER  # monotonic time the last of them left
        # The watcher waits on this (same lock as ``cond``) while it leaves the doorbell to
        # sleepers, so that the generation's bumps do not wake it too.
        self._watch_cond = threading.Condition(lock)
        # Called after every generation bump, from whichever thread bumped (a committer
        # or the watcher): sqlstream.aio completes asyncio futures from here. A tuple,
        # replaced on change, so bump() iterates it without holding the lock.
        self._listeners: tuple[Callable[[], None], ...] = ()
        self.open_count = 0
        self.checkpoint_owed = False  # see detach()
        self.checkpointer = Checkpointer(path)

    # ----------------------------------------------------------------- lifetime

    def attach(self) -> None:
        """A Database on this file opened in this process."""
        with self._lock:
            self.open_count += 1
            if self.open_count == 1:
                self.checkpoint_owed = False
                if self.checkpointer.stopped:
                    self.checkpointer = Checkpointer(self.path)

    def detach(self, wrote: bool = False) -> bool:
        """A Database on this file closed; the last one stops the helper threads.

        Returns True for the last one, once the helper threads' connections are closed
        (it then closes its write connection so that SQLite checkpoints the WAL).
        ``wrote``: the closing Database had a write connection; if it is not the last,
        ``checkpoint_owed`` tells the last one (maybe read-only) to checkpoint for it.
        The checkpointer is marked stopped under the same lock ``attach`` checks, so a
        Database opening concurrently gets a fresh one instead of the dying one.
        """
        with self._lock:
            self.open_count -= 1
            last = self.open_count <= 0
            if last:
                checkpointer = self.checkpointer
                checkpointer.request_stop()
            elif wrote:
                self.checkpoint_owed = True
        if last:
            self.close_watcher()
            checkpointer.join()
        return last

    # ----------------------------------------------------------------- committers

    def bump(self) -> None:
        """Wake every waiter in this process, then call the listeners."""
        self._bump(True)

    def _bump(self, ring_sleeper: bool) -> None:
        with self._lock:
            self.generation += 1
            self.cond.notify_all()
            sleeping = self._sleeping_on is not None and ring_sleeper
        if sleeping:
            self._ring_own_bell()  # the sleeper sleeps on the doorbell, not on cond
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener must never fail a commit
                pass

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every generation bump (any thread; keep it quick and
        non-blocking). Listeners that also need other processes' commits must hold a
        :meth:`waiting` registration meanwhile, which keeps the watcher running."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with self._lock:
            self._listeners = tuple(cb for cb in self._listeners if cb != listener)

    def committed(self) -> None:
        """Called after a commit in this process: wake local waiters, ring other processes.

        With no waiter registered in this process and no listener the condition variable
        is skipped (the generation still moves): a waiter registers (``waiting()``)
        before its first check, so one registering after this test runs its check after
        the commit. Listeners are called after every commit, as :meth:`add_listener` says.
        """
        if self._waiters or self._listeners:
            self.bump()
        else:
            self.generation += 1
        if self._bell_ok:
            # The common case without ring()'s frame: nobody has waited since the last
            # listing (the announcement token unchanged, no bell listed).
            token = self._announce_map[:8]  # type: ignore[index]
            cached, bells = self._bell_cache
            if token != cached or bells:
                self.ring(token)

    def ring(self, token: bytes) -> None:
        """Send one datagram to every process that sleeps on this file's doorbell
        (``token``: the announcement token just read from the mapping).

        No system call while nobody waits: the folder is listed again only when the
        announcement token changed (a bell was bound) since the last listing. A bell bound
        after our listing wrote a token after it, so the next commit lists and rings it.
        """
        cached, bells = self._bell_cache
        if token == cached:
            if not bells:
                return  # nobody has waited since the last listing
        else:
            try:
                names = os.listdir(self._bell_dir)
            except OSError:
                return
            bells = [os.path.join(self._bell_dir, n) for n in names if n.endswith(".bell")]
            self._bell_cache = (token, bells)
        gone = []
        with self._send_lock:
            if self._send_sock is None:
                self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._send_sock.setblocking(False)
            for bell in bells:
                if bell == self._own_bell:
                    continue
                try:
                    self._send_sock.sendto(b"!", bell)
                except BlockingIOError:
                    pass  # its queue is full: it has wakeups pending already
                except FileNotFoundError:
                    gone.append(bell)  # its watcher stopped and removed it
                except ConnectionRefusedError:
                    # The process died without removing its bell; tidy up for it.
                    gone.append(bell)
                    with contextlib.suppress(OSError):
                        os.unlink(bell)
                except OSError:
                    pass
        if gone:
            cached, bells = self._bell_cache
            if cached == token:
                self._bell_cache = (token, [b for b in bells if b not in gone])

    def announce(self) -> None:
        """Tell committers in every process to list the doorbell folder again (a bell was bound).

        A fresh random token rather than a counter: writers race without a lock, and a
        value never written before cannot equal what a committer cached. Written with
        ``pwrite`` (rare: once per bound bell), never through the mapping: a store into a
        mapped page that the file system cannot back (full disk) would be SIGBUS, not an
        error.
        """
        if self._announce_fd >= 0:
            with contextlib.suppress(OSError):  # committers then miss us until the fallback check
                os.pwrite(self._announce_fd, os.urandom(8), 0)

    # ----------------------------------------------------------------- waiters

    @contextlib.contextmanager
    def waiting(self, mode: str, poll_interval: float | None, *, sleeper: bool = False) -> Iterator[None]:
        """Register a waiter for the duration of the block; the watcher runs meanwhile.

        On return from ``__enter__`` the watcher has its baseline ``data_version`` (and,
        in notify mode, its doorbell is bound), so any commit after that point wakes us.
        ``sleeper``: the registration is a thread that sleeps in :meth:`wait_until` (it may
        read the doorbell itself); other registrations rely on the watcher and listeners.
        """
        poll = mode == "poll" or not self._bell_ok
        # The counts and ``registered`` change with no call between them (a signal lands
        # only where a function starts or returns), all inside the try: a KeyboardInterrupt
        # anywhere (starting the watcher, waiting for it to be ready) leaves either nothing
        # counted or the finally to uncount it, never a waiter counted for ever.
        registered = False
        try:
            with self._lock:
                self._waiters += 1
                if sleeper:
                    self._sync_waiters += 1
                if poll:
                    self._poll_waiters += 1
                registered = True
                if poll and poll_interval:
                    self._poll_interval = min(self._poll_interval, poll_interval)
                elif poll_interval:
                    self._fallback = min(self._fallback, poll_interval)
                if self._watcher is None or not self._watcher.is_alive():
                    ready = self._watcher_ready = threading.Event()
                    self._watcher = threading.Thread(
                        target=self._watch,
                        args=(ready,),
                        name=f"sqlstream-watch:{os.path.basename(self.path)}",
                        daemon=True,
                    )
                    self._watcher.start()
                else:
                    ready = self._watcher_ready
                    self._watch_cond.notify_all()  # let the watcher pick up a shorter interval
            ready.wait(5.0)
            yield
        finally:
            if registered:
                with self._lock:
                    self._waiters -= 1
                    if sleeper:
                        self._sync_waiters -= 1
                        if self._sync_waiters == 0:
                            self._last_sync_left = time.monotonic()
                    if poll:
                        self._poll_waiters -= 1
                    if self._waiters == 0:
                        self._last_waiter_left = time.monotonic()

    def wait_until(
        self,
        check: Callable[[], T | None],
        timeout: float | None,
        mode: str,
        poll_interval: float | None,
        wake_at: Callable[[], float | None] | None = None,
    ) -> T | None:
        """Return ``check()``'s first non-None result, or None after ``timeout`` seconds.

        ``timeout=None`` waits without limit. ``wake_at`` may return a monotonic time at
        which to re-check even without a commit (subscriptions' ack deadlines).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bell = mode != "poll" and self._bell_ok
        main = threading.current_thread() is threading.main_thread()  # see SIGNAL_CHECK_INTERVAL
        with self.waiting(mode, poll_interval, sleeper=bell):
            seen = -1  # no generation yet: check first
            until: float | None = None  # when the wait ends if nothing wakes it (None: never)
            while True:
                now = time.monotonic()
                # Check after a wake (a bump) or at the end of the wait, not after the main
                # thread's short sleeps that nothing ended (an idle reader stays idle).
                if self.generation != seen or (until is not None and now >= until):
                    seen = self.generation
                    result = check()
                    if result is not None:
                        return result
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return None
                    until = deadline
                    if wake_at is not None:
                        at = wake_at()
                        if at is not None:
                            until = at if until is None else min(until, at)
                sleep = None if until is None else max(0.0, until - now)
                if main and (sleep is None or sleep > SIGNAL_CHECK_INTERVAL):
                    sleep = SIGNAL_CHECK_INTERVAL  # a signal another thread took is handled by then
                # Become the sleeper if nobody reads the doorbell. The claim (a store of
                # ``sock`` in _sleeping_on) and its release are inside one try, and no
                # call comes between reading ``sock`` and the claim: a KeyboardInterrupt
                # at any point leaves the doorbell either unclaimed or released.
                sock = None
                rung = False
                try:
                    with self._lock:
                        if self.generation != seen:
                            continue
                        if bell and not self._poll_waiters and self._sleeping_on is None:
                            sock = self._bell_sock
                            if sock is self._watcher_on:  # the watcher reads it (or None: no bell)
                                sock = None
                            else:
                                self._sleeping_on = sock
                        if sock is None:
                            self.cond.wait(sleep)
                            continue
                    # Until a datagram (a commit elsewhere, or a bump in this process
                    # ringing our own bell: a local commit, the watcher noticing a writer
                    # that does not ring, a close) or ``sleep`` seconds (None: no limit).
                    rung = _read_bell(sock, sleep)
                finally:
                    if sock is not None:
                        with self._lock:
                            self._sleeping_on = None
                            if self._bell_sock is not sock or self._waiters > self._sync_waiters:
                                # The watcher retiring this bell waits for us; aio
                                # registrations: the watcher hears the bell now.
                                self._watch_cond.notify_all()
                            # Threads that waited on cond while we slept: one of them takes the bell next.
                            self.cond.notify_all()
                if rung:
                    self._bump(False)  # wake the others and the listeners; we are awake already

    def sleeper_waiting(self) -> bool:
        """Whether a thread of this process sleeps on the doorbell right now."""
        return self._sleeping_on is not None

    # ----------------------------------------------------------------- watcher

    def close_watcher(self) -> None:
        """Retire the watcher thread (a later waiter starts a new one) and wait for it."""
        with self._lock:
            watcher = self._watcher
            self._watcher = None  # a watcher runs only while it is self._watcher
            self.cond.notify_all()
            self._watch_cond.notify_all()
        if watcher is not None and watcher is not threading.current_thread():
            self._wake_own_bell()
            watcher.join(5.0)
        with self._send_lock:
            if self._send_sock is not None:
                self._send_sock.close()
                self._send_sock = None

    def _ring_own_bell(self) -> None:
        """Wake the thread sleeping on this process's doorbell (a local bump, a close)."""
        bell = self._own_bell
        if not bell:
            return
        with self._send_lock:
            if self._send_sock is None:
                self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._send_sock.setblocking(False)
            with contextlib.suppress(OSError):  # BlockingIOError: wake-ups are pending already
                self._send_sock.sendto(b"!", bell)

    def _wake_own_bell(self) -> None:
        bell = self._own_bell  # read once: the exiting watcher sets it to None at any moment
        if bell:
            with contextlib.suppress(OSError):
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    s.sendto(b"!", bell)

    def _bind_bell(self) -> tuple[socket.socket, str] | None:
        if not self._bell_ok:
            return None
        path = os.path.join(self._bell_dir, f"{os.getpid()}-{next(_socket_ids)}.bell")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Twice: another process may remove this file's folder as stale (it was empty)
        # between our check and the bind.
        for attempt in (1, 2):
            try:
                if _private_dir(self._bell_dir) is not None:
                    raise OSError("the doorbell folder failed its checks")
                sock.bind(path)
                os.chmod(path, 0o600)
                sock.setblocking(False)
                break
            except FileNotFoundError:
                if attempt == 2:
                    sock.close()
                    return None
            except OSError:
                sock.close()
                return None  # fall back to the slow data_version check
        self._own_bell = path
        self.announce()  # after binding: a committer that lists from now on sees the bell
        return sock, path

    def _watch(self, ready: threading.Event) -> None:
        conn = None
        bell = None
        bell_path = None
        try:
            conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
            last = _data_version(conn)
            bound = self._bind_bell()
            if bound is not None:
                bell, bell_path = bound
                self._bell_sock = bell
            ready.set()
            while True:
                reading: socket.socket | None = None
                with self._lock:
                    if self._watcher is not threading.current_thread():
                        return  # retired by close_watcher(), possibly replaced already
                    now = time.monotonic()
                    if self._waiters == 0 and now - self._last_waiter_left > _LINGER:
                        self._watcher = None
                        return
                    interval = self._poll_interval if self._poll_waiters else self._fallback
                    # Leave the doorbell to sleepers while threads wait in wait_until (and
                    # for _LINGER after, as they come and go), unless registrations without
                    # a thread (aio) need the watcher to hear it.
                    to_sleepers = (self._waiters == self._sync_waiters
                                   and (self._sync_waiters > 0 or now - self._last_sync_left < _LINGER))
                    if bell is not None and not self._poll_waiters:
                        if to_sleepers or self._sleeping_on is bell:
                            # A sleeper reads the bell (and bumps) meanwhile, or soon will.
                            self._watch_cond.wait(interval)
                            interval = -1.0  # waited: check data_version below
                        else:
                            self._watcher_on = reading = bell
                if reading is not None:
                    try:
                        _read_bell(reading, interval)
                    finally:
                        with self._lock:
                            self._watcher_on = None
                elif interval >= 0:
                    time.sleep(interval)
                current = _data_version(conn)
                if current != last:
                    last = current
                    # Also rings a sleeper's doorbell: a writer that does not ring (the
                    # sqlite3 shell) is noticed here only. After a commit that rang, the
                    # sleeper has been woken already and checks once more in vain.
                    self.bump()
        except apsw.Error:
            # The file went away or cannot be read; waiters still wake on local commits
            # and on their own timeouts.
            pass
        finally:
            if bell is not None:
                with self._lock:
                    if self._bell_sock is bell:
                        self._bell_sock = None  # no sleeper claims it from now on
                    while self._sleeping_on is bell:  # never close it under a sleeper's select
                        self._watch_cond.wait(self._fallback)  # woken by the sleeper leaving
                bell.close()
                with contextlib.suppress(OSError):
                    os.unlink(bell_path)  # type: ignore[arg-type]
                if self._own_bell == bell_path:
                    self._own_bell = None
            if conn is not None:
                conn.close()
            ready.set()


def _read_bell(sock: socket.socket, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: no limit) for the doorbell to ring, and drain
    it; True if it rang. A socket closed under us counts as not rung (check again)."""
    try:
        rung = bool(select.select([sock], [], [], timeout)[0])
        if rung:
            with contextlib.suppress(OSError):
                while sock.recv(64):
                    pass
        return rung
    except (OSError, ValueError):
        return False


def _private_dir(path: str) -> str | None:
    """Create ``path`` (mode 0700) if absent; return why it is unsafe to use, or None.

    Safe means: a real directory (``lstat``: a symbolic link is refused, whatever it
    points to), owned by this user, and writable by nobody else.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _open_announcements(folder: str) -> tuple[int, mmap.mmap] | str:
    """Open and map ``folder``'s announcement file (creating it); or say why it cannot be used.

    The descriptor keeps a shared ``flock`` for the notifier's lifetime: the stale-folder
    cleaner removes a folder only when it can lock the file exclusively (nobody uses it).
    A file the cleaner unlinked between our open and our lock is noticed (no links left)
    and the folder is made again.
    """
    path = os.path.join(folder, ANNOUNCE_FILE)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            return f"cannot open {path}: {exc.strerror}"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0:
                os.close(fd)
                problem = _private_dir(folder)
                if problem is not None:
                    return problem
                continue
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                os.close(fd)
                return f"{path} is not a regular file of this user"
            if st.st_size < 8:
                os.pwrite(fd, os.urandom(8), 0)  # real blocks (ENOSPC here, not SIGBUS later)
            return fd, mmap.mmap(fd, 8, prot=mmap.PROT_READ)
        except OSError as exc:
            os.close(fd)
            return f"cannot use {path}: {exc.strerror}"
    return f"{path} kept disappearing"


def _close_announcements(fd: int, mapping: mmap.mmap) -> None:
    with contextlib.suppress(OSError, ValueError, BufferError):
        mapping.close()
    with contextlib.suppress(OSError):
        os.close(fd)


_warned: set[str] = set()


def _warn_once(root: str, problem: str) -> None:
    if root in _warned:
        return
    _warned.add(root)
    warnings.warn(
        f"sqlstream: not using the doorbell directory: {problem}; blocked reads poll "
        f"PRAGMA data_version instead (more CPU while waiting). Remove or fix {root}, "
        "or set TMPDIR to a private directory.",
        SqlstreamWarning,
        stacklevel=4,
    )


_STALE_AFTER = 60.0  # seconds: a folder this fresh may be in use by a process starting up
_FOLDER_NAME = re.compile(r"^[0-9a-f]+-[0-9a-f]+$")
_cleaned: set[str] = set()


def _clean_stale_bell_dirs(root: str) -> int:
    """Remove per-file folders under ``root`` that hold no live doorbell; return how many.

    Once per process per root. A bell is live when a datagram socket is bound to it
    (connecting succeeds); a folder is removed only if every entry is a dead ``.bell``
    and it has not changed for ``_STALE_AFTER`` seconds. A bell bound meanwhile makes
    ``rmdir`` fail, and the folder stays.
    """
    if root in _cleaned:
        return 0
    _cleaned.add(root)
    removed = 0
    now = time.time()
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        folder = os.path.join(root, name)
        fd = -1
        try:
            st = os.lstat(folder)
            if (not _FOLDER_NAME.match(name) or not stat.S_ISDIR(st.st_mode)
                    or now - st.st_mtime < _STALE_AFTER):
                continue
            entries = os.listdir(folder)
            if ANNOUNCE_FILE in entries:
                # In use while any process holds its shared lock; ours (exclusive) keeps a
                # process from starting to use it until the folder is gone.
                fd = os.open(os.path.join(folder, ANNOUNCE_FILE), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
            bells = [e for e in entries if e != ANNOUNCE_FILE]
            if not all(e.endswith(".bell") and not _bell_alive(os.path.join(folder, e)) for e in bells):
                continue
            for entry in entries:
                os.unlink(os.path.join(folder, entry))
            os.rmdir(folder)
            removed += 1
        except OSError:
            continue
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _bell_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # unknown: keep it
    return True


def _data_version(conn: apsw.Connection) -> int:
    return int(next(iter(conn.execute("PRAGMA data_version")))[0])


_registry: dict[tuple[int, tuple[int, int]], weakref.ReferenceType[FileNotifier]] = {}
_registry_lock = threading.Lock()


def notifier_for(path: str) -> FileNotifier:
    """The process's notifier for the database file at ``path`` (which must exist).

    Files are identified by device and inode, so different spellings of one path (and
    hard links) share a notifier; a fresh registry is used after ``fork``.
    """
    st = os.stat(path)
    ident = (st.st_dev, st.st_ino)
    key = (os.getpid(), ident)
    with _registry_lock:
        ref = _registry.get(key)
        notifier = ref() if ref is not None else None
        if notifier is None:
            notifier = FileNotifier(path, ident)
            _registry[key] = weakref.ref(notifier)
        return notifier
