"""A first-come-first-served queue for the write lock, shared by every process on one file.

SQLite's write lock has no queue: a waiting process polls it from its busy handler, and a
process that commits and begins its next transaction within microseconds usually wins
it again before any sleeping waiter looks. Under several writer processes that is what
makes the slow commits (the p99) and the unequal per-process rates.

This queue is advisory and sits in front of ``BEGIN IMMEDIATE``; SQLite's lock still
decides who writes, so a queue that is wrong (a torn read, a slot lost to a race, a
process that died in it) can only make a writer wait a little longer or try out of
turn, never let two write at once. How it works:

* The file ``writers`` in the file's private doorbell folder holds ``SLOTS`` slots of
  two 8-byte integers: since when the slot's writer waits (``CLOCK_MONOTONIC`` ns,
  shared by all processes; 0 = not waiting) and when it last said it is alive.
  Each write connection owns one slot for its lifetime, claimed with an open-file-
  description lock (``F_OFD_SETLK``) on one byte of the file: the kernel releases it
  when the owner dies, so a crashed process's slot is reused, never leaked.
* A writer that finds the lock busy, or finds anyone queued when it wants to begin,
  writes its arrival time into its slot and waits until no live slot arrived before
  it (ties: the lower slot first). Only that head of the queue retries SQLite's lock.
* A slot counts only while its writer refreshes it (every wait step, at most
  ``STEP`` apart): a process killed while it waits stops refreshing, and the others
  go past it after ``STALE_NS`` — no deadlock, only a short delay.
* A writer that gets the lock (or gives up) clears its slot. A committer that begins
  again while others wait finds the queue non-empty and joins its end: the hand-off.

Writes go through ``pwrite`` (only while waiting), never through the mapping: a store
into a mapped page the file system cannot back would be SIGBUS, not an error. Reads go
through a read-only mapping, so a writer that finds the queue empty makes no system call.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import socket
import stat
import struct
import time

QUEUE_FILE = "writers"
SLOTS = 32
SLOT_BYTES = 16
SIZE = SLOTS * SLOT_BYTES
TURNS = SIZE  # offset of an 8-byte counter the releasing writer bumps when it wakes the head
RUN_END = SIZE + 8  # offset: the lock holder's run ends at (monotonic ns); see WriteWait
FILE_SIZE = SIZE + 16
LOCK_BASE = 1 << 20  # slot claims lock bytes far past the data, so they never cover it
STALE_NS = 20_000_000  # a waiter silent for 20 ms is taken to be gone
STEP = 0.002  # a waiter not woken re-checks its place (and says it is alive) this often
_ZERO = bytes(SIZE)
_SLOT = struct.Struct("=qq")
_TURN = struct.Struct("=q")
_ALL = struct.Struct(f"={SLOTS * 2}q")
_monotonic_ns = time.monotonic_ns


def bell_path(folder: str, slot: int) -> str:
    """Where slot ``slot``'s waiter listens for "your turn"."""
    return os.path.join(folder, f"w{slot}.wq")


def _flock(kind: int, start: int) -> bytes:
    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    # (l_pid must be 0 for open-file-description locks), native layout and padding.
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


class WriterQueue:
    """One write connection's place in the file's writer queue (see the module docstring)."""

    def __init__(self, fd: int, mapping: mmap.mmap, slot: int, folder: str, sock: socket.socket) -> None:
        self._fd = fd
        self._map = mapping
        self.slot = slot
        self._offset = slot * SLOT_BYTES
        self.since = 0  # our arrival time while we wait, else 0
        self._folder = folder
        self._sock = sock  # bound to bell_path(folder, slot): "your turn" datagrams
        self._send: socket.socket | None = None
        self.joined = 0  # times this connection queued (tests and benchmarks read it)

    @classmethod
    def open(cls, folder: str) -> WriterQueue | None:
        """Claim a slot in ``folder``'s queue file (created if absent); None where it cannot be used.

        ``folder`` must be the file's private doorbell folder (already checked by the
        notifier). None when the platform has no open-file-description locks, the file is
        not a regular file of this user, or all slots are taken: callers then wait the
        old way (the busy handler alone).
        """
        setlk = getattr(fcntl, "F_OFD_SETLK", None)
        if setlk is None:
            return None
        path = os.path.join(folder, QUEUE_FILE)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise OSError("not a regular file of this user")
            if st.st_size < FILE_SIZE:
                os.pwrite(fd, bytes(FILE_SIZE - st.st_size), st.st_size)  # real blocks: no SIGBUS later
            for slot in range(SLOTS):
                try:
                    fcntl.fcntl(fd, setlk, _flock(fcntl.F_WRLCK, LOCK_BASE + slot))
                except OSError:
                    continue  # another live connection owns it
                # Ours now; whatever a dead owner left in it is void, its bell too.
                os.pwrite(fd, bytes(SLOT_BYTES), slot * SLOT_BYTES)
                bell = bell_path(folder, slot)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bell)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.bind(bell)
                    os.chmod(bell, 0o600)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    raise
                return cls(fd, mmap.mmap(fd, FILE_SIZE, prot=mmap.PROT_READ), slot, folder, sock)
        except (OSError, ValueError):
            pass
        os.close(fd)
        return None

    def close(self) -> None:
        """Give the slot back (closing the descriptor drops its lock)."""
        with contextlib.suppress(OSError):
            os.unlink(bell_path(self._folder, self.slot))
        self._sock.close()
        if self._send is not None:
            self._send.close()
        with contextlib.suppress(OSError, ValueError, BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    def others_waiting(self) -> bool:
        """True when some slot other than ours may hold a waiter (no system call)."""
        data = self._map[:SIZE]
        if data == _ZERO:
            return False
        if self.since:
            return True  # we are queued: head() is exact
        mine = self._offset
        return data[:mine] != _ZERO[:mine] or data[mine + SLOT_BYTES:] != _ZERO[mine + SLOT_BYTES:]

    def join(self) -> None:
        """Take our place at the end of the queue (once per wait)."""
        if not self.since:
            now = _monotonic_ns()
            self.since = now
            self.joined += 1
            self._write(now, now)

    def beat(self) -> None:
        """Say we are still waiting (a slot not refreshed for ``STALE_NS`` is ignored)."""
        if self.since:
            self._write(self.since, _monotonic_ns())

    def leave(self) -> None:
        """Clear our slot: we hold the lock now, or stopped waiting."""
        if self.since:
            self.since = 0
            self._write(0, 0)

    def head(self) -> int:
        """The slot of the live waiter that arrived first (ties: the lower slot), or -1."""
        return self.first()[0]

    def first(self) -> tuple[int, int]:
        """(slot, arrival ns) of the live waiter that arrived first; (-1, 0) if none."""
        values = _ALL.unpack(self._map[:SIZE])
        now = _monotonic_ns()
        best, best_since = -1, 0
        for i in range(SLOTS):
            since = values[2 * i]
            if since and (best < 0 or since < best_since) and (i == self.slot or 0 <= now - values[2 * i + 1] < STALE_NS):
                best, best_since = i, since
        return best, best_since

    def wait_turn(self, deadline: float) -> int:
        """Join the queue if not in it and sleep until we are its head.

        Returns 1 when we were the head at once, 2 when we became it while sleeping
        (the "your turn" that woke us is consumed: retry the lock now), 0 at ``deadline``
        (``time.monotonic()``), still queued (the caller leaves).
        """
        self.join()
        turn = 1
        while self.head() != self.slot:
            now = time.monotonic()
            if now >= deadline:
                return 0
            self.sleep(min(STEP, deadline - now))
            self.beat()
            turn = 2
        return turn

    def sleep(self, seconds: float) -> None:
        """Sleep until woken by :meth:`wake_head` (or ``seconds`` pass)."""
        sock = self._sock
        try:
            if not select.select([sock], [], [], seconds)[0]:
                return
            while sock.recv(16):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            time.sleep(seconds)

    def wake_head(self) -> None:
        """Tell the head of the queue that the lock is free (no-op when nobody waits)."""
        if not self.others_waiting():
            return
        head = self.head()
        if head < 0 or head == self.slot:
            return
        if self._send is None:
            self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._send.setblocking(False)
        with contextlib.suppress(OSError):  # only lock holders write it, one at a time
            os.pwrite(self._fd, _TURN.pack(_TURN.unpack(self._map[TURNS:RUN_END])[0] + 1), TURNS)
        with contextlib.suppress(OSError):  # gone or full: it wakes on its own within STEP
            self._send.sendto(b"!", bell_path(self._folder, head))

    def publish_run_end(self, ns: int) -> None:
        """Say until when our run lasts (we hold the lock; the head sleeps until then)."""
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, _TURN.pack(ns), RUN_END)

    def run_end(self) -> int:
        """Until when the lock holder's run lasts (monotonic ns; in the past: no run)."""
        return int(_TURN.unpack(self._map[RUN_END:FILE_SIZE])[0])

    def spin(self, seconds: float) -> bool:
        """Watch the turn counter for up to ``seconds`` without sleeping; True if it moved."""
        view = self._map
        seen = view[TURNS:RUN_END]
        until = time.perf_counter() + seconds
        clock = time.perf_counter
        while clock() < until:
            if view[TURNS:RUN_END] != seen:
                return True
        return False

    def _write(self, since: int, beat: int) -> None:
        with contextlib.suppress(OSError):  # a slot we cannot write only costs fairness
            os.pwrite(self._fd, _SLOT.pack(since, beat), self._offset)
