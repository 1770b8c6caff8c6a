"""sqlstream for asyncio: the synchronous API's objects and semantics, awaitable.

>>> import sqlstream.aio
>>> db = await sqlstream.aio.open("app.db")            # doctest: +SKIP
>>> orders = await db.create_stream("orders", exist_ok=True)   # doctest: +SKIP
>>> await orders.append({"id": 1})                      # doctest: +SKIP

How it works, and the promises it keeps:

* **One worker thread per AsyncDatabase.** Every SQLite statement runs on it (a
  single-thread executor), never on the event loop. A transaction's statements therefore
  all run on one thread, as the synchronous engine requires; while a transaction is open,
  calls from other tasks wait (on the loop, not in the worker) until it ends, so they
  never slip into it. Tasks started inside the ``async with db.transaction()`` block
  (``asyncio.gather`` included) belong to it, as they inherit its context.
* **Blocking calls wait on futures, not threads.** ``read``/``read_bytes``/``fetch``/
  ``reader.read``/``follow`` with a timeout check once on the worker and, if nothing is
  there, await an asyncio future that sqlstream's wake-ups complete: in-process commits
  and the cross-process watcher call a listener on the file's notifier, which queues a
  re-check of each blocked call on the worker; the worker completes the call's future
  (one ``call_soon_threadsafe``) once a check finds something. Timeouts and ack
  deadlines are loop timers. No thread is parked per waiter and nothing polls on the loop.
* **Cancellation** (``task.cancel()``, ``asyncio.timeout``) of a blocked call returns at
  once. A call cancelled while its statement already runs on the worker lets it finish
  there and then undoes what it claimed: a ``fetch`` nacks the records it claimed (they
  are redelivered at once, attempts unchanged in meaning: the claim counted one), a
  reader's ``read`` seeks the reader back, a transaction rolls back. An append is atomic:
  it is stored whole or not at all. The undo is atomic with respect to other tasks'
  transactions: a call made outside a transaction is undone outside every transaction,
  in its own commit (if another task's transaction opened meanwhile, right after it ends,
  whether it commits or rolls back), so that no rollback can take the undo with it.
* Works on any asyncio loop (uvloop included); an AsyncDatabase belongs to the loop that
  opened it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import database as _database
from .database import DEFAULT_QUERY_MAX_BYTES, Database, QueryResult
from .engine import blocking_in_transaction
from .errors import ConcurrencyError, DatabaseClosed, InvalidArgument, WritePending
from .fencing import FencedAppend
from .lifetimes import Lifetime
from .producer import Producer
from .raw import RawRecords
from .readers import Reader, ReaderInfo
from .records import Chunk, Record, StreamInfo
from .retention import TrimResult
from .streams import Stream
from .subscriptions import DEFAULT_FETCH_BYTES, AckResult, Batch, PendingEntry, Subscription, SubscriptionInfo
from .validation import check_count, check_limit, check_name, check_offset, check_timeout

__all__ = [
    "AsyncConsumer",
    "AsyncDatabase",
    "AsyncProducer",
    "AsyncReader",
    "AsyncStream",
    "AsyncSubscription",
    "AsyncTransaction",
    "open",
]

_log = logging.getLogger("sqlstream")

T = TypeVar("T")
AsyncHandler = Callable[[Batch], Awaitable[Any]]

# The transaction the current task (and tasks it started) runs inside, if any.
_tx_token: contextvars.ContextVar[object | None] = contextvars.ContextVar("sqlstream_aio_tx", default=None)


async def open(path: Any, **options: Any) -> AsyncDatabase:  # noqa: A001 - mirrors sqlstream.open
    """Open the database at ``path`` (options as ``sqlstream.open``) without blocking the loop."""
    db = AsyncDatabase.__new__(AsyncDatabase)
    db._init(asyncio.get_running_loop())
    try:
        db.sync = await db._call(_database.open, path, **options)
    except BaseException:
        db._worker.close()
        raise
    return db


# A job's state, written by the worker (RETURNED, RAISED) or the loop (CANCELLED, only while
# QUEUED: a job the worker has not started is then skipped). Plain attribute writes: the GIL
# makes each atomic, and the undo that reads the state runs on the worker after the job.
_QUEUED, _CANCELLED, _RETURNED, _RAISED = range(4)


class _Job:
    __slots__ = ("fn", "args", "kwargs", "fut", "state", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 fut: asyncio.Future[Any] | None) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.fut = fut
        self.state = _QUEUED
        self.result: Any = None


def _set_result(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():  # cancelled meanwhile
        fut.set_result(result)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class _Worker:
    """The one thread that runs every SQLite statement of an AsyncDatabase, in FIFO order.

    Leaner than a ThreadPoolExecutor plus ``wrap_future`` (which costs two futures, two
    done-callbacks and a lock per call): jobs go through a ``SimpleQueue`` (``put`` never
    blocks the loop) and each result reaches the loop with one ``call_soon_threadsafe``
    that completes the caller's asyncio future directly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.closed = False
        # Completed (on the loop) by the thread as its last act: close() awaits it.
        self.ended: asyncio.Future[None] = loop.create_future()
        self.thread = threading.Thread(target=_work, args=(self.queue, loop, self.ended), name="sqlstream-aio",
                                       daemon=True)
        self.thread.start()
        _workers.add(self)

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> tuple[_Job, asyncio.Future[Any]]:
        """Queue ``fn(*args, **kwargs)``; the future (on the loop) gets its outcome."""
        if self.closed:
            raise DatabaseClosed("this AsyncDatabase is closed")
        fut = self.loop.create_future()
        job = _Job(fn, args, kwargs, fut)
        self.queue.put(job)
        return job, fut

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` without waiting for it (its outcome is dropped)."""
        self.queue.put(_Job(fn, args, {}, None))

    def close(self) -> None:
        """Let the thread finish what is queued, then exit (returns at once)."""
        if not self.closed:
            self.closed = True
            self.queue.put(None)


def _work(jobs: queue.SimpleQueue[_Job | None], loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None]) -> None:
    # Holds the queue and the loop, not the AsyncDatabase: an AsyncDatabase dropped
    # without close() is collected, and its finalizer's None ends this thread.
    post = loop.call_soon_threadsafe
    while True:
        job = jobs.get()
        if job is None:
            break
        if job.state != _CANCELLED:
            _run(job, post)
    try:
        post(_set_result, ended, None)
    except RuntimeError:
        pass  # the loop is closed: nobody waits


def _run(job: _Job, post: Callable[..., Any]) -> None:
    try:
        result = job.fn(*job.args, **job.kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        job.state = _RAISED
        if job.fut is not None:
            try:
                post(_set_exception, job.fut, exc)
            except RuntimeError:
                pass  # the loop is closed: nobody waits
    else:
        job.result = result
        job.state = _RETURNED
        if job.fut is not None:
            try:
                post(_set_result, job.fut, result)
            except RuntimeError:
                pass


_workers: weakref.WeakSet[_Worker] = weakref.WeakSet()


@atexit.register
def _close_workers() -> None:
    # Daemon threads, so a forgotten AsyncDatabase never keeps the interpreter alive; at
    # exit, let each finish its queued statements before the interpreter goes away.
    workers = list(_workers)
    for worker in workers:
        worker.close()
    for worker in workers:
        worker.thread.join(5.0)


class _Waiter:
    """One blocked call between two checks. ``check`` runs on the worker; the outcome
    reaches ``fut`` (on the loop). ``finished`` is written by the worker only, ``cancelled``
    and ``queued`` as their comments say."""

    __slots__ = ("check", "fut", "queued", "finished", "cancelled", "outcome")

    def __init__(self, check: Callable[[], Any], fut: asyncio.Future[Any]) -> None:
        self.check = check
        self.fut = fut
        self.queued = False  # a re-check is in the worker's queue (set by bumpers, cleared by it)
        self.finished = False  # an outcome was handed to the loop: no more re-checks
        self.cancelled = False  # the loop gave up (cancellation): no more re-checks
        self.outcome: Any = None


_RETRY = object()  # a waiter's outcome: check again through AsyncDatabase._call


class _Wakeups:
    """Turns the notifier's bumps into re-checks on the worker (see module docstring).

    A bump (from the committing thread or the watcher) queues a re-check of every blocked
    call straight onto the worker, which completes the call's future only when the check
    finds something: one thread hand-off to the worker and one back to the loop, nothing
    on the loop for commits that change nothing for it. ``waiters`` counts blocked calls;
    while it is positive a listener is on the notifier and a ``waiting`` registration
    (taken on the worker, FIFO with the checks) keeps the cross-process watcher running.
    """

    def __init__(self, adb: AsyncDatabase) -> None:
        self.adb = adb
        self.loop = adb._loop
        self.blocked: tuple[_Waiter, ...] = ()  # replaced, never mutated: bumpers iterate it
        self.waiters = 0
        self._registration: Any = None
        # A test seam into the lost-wake-up window: when set, called on the loop after a
        # check found nothing and before the call registers as blocked (see ``wait``), so a
        # test can commit exactly there. None in normal use.
        self.in_window: Callable[[], None] | None = None

    # Any thread: the committing one, or the watcher.
    def on_bump(self) -> None:
        for waiter in self.blocked:
            self._queue(waiter, False)

    def _queue(self, waiter: _Waiter, force: bool) -> None:
        if waiter.queued and not force:
            return  # a re-check is queued and has not started: it will see this bump too
        waiter.queued = True
        self.adb._worker.post(self._recheck, waiter, force)

    def _recheck(self, waiter: _Waiter, force: bool) -> None:  # worker thread
        waiter.queued = False  # first: a bump from now on queues another re-check
        if waiter.finished or waiter.cancelled:
            return
        if self.adb.sync.in_transaction():
            # Another task's transaction is open on this connection: checking now would
            # see its uncommitted rows. The loop checks again once it has ended.
            outcome: Any = _RETRY
        else:
            try:
                outcome = waiter.check()
            except BaseException as exc:  # noqa: BLE001 - the blocked call raises it
                waiter.finished = True
                try:
                    self.loop.call_soon_threadsafe(_set_exception, waiter.fut, exc)
                except RuntimeError:
                    pass
                return
            if outcome[1] is None and not force:
                return  # nothing yet: stay blocked, the next bump re-checks
        waiter.finished = True
        waiter.outcome = outcome
        try:
            self.loop.call_soon_threadsafe(_set_result, waiter.fut, outcome)
        except RuntimeError:
            pass  # the loop is closed

    def fire(self) -> None:
        """Re-check every blocked call and hand each its outcome, found or not (loop)."""
        for waiter in self.blocked:
            self._queue(waiter, True)

    def enter(self) -> None:
        self.waiters += 1
        if self.waiters == 1:
            notifier = self.adb.sync.engine.notifier
            notifier.add_listener(self.on_bump)
            self.adb._worker.post(self._register)

    def leave(self) -> None:
        self.waiters -= 1
        if self.waiters == 0:
            self.adb.sync.engine.notifier.remove_listener(self.on_bump)
            if self.adb._worker.closed:
                self._unregister()  # closing: the worker is gone
            else:
                self.adb._worker.post(self._unregister)

    def _register(self) -> None:  # worker thread
        if self._registration is None:
            engine = self.adb.sync.engine
            cm = engine.notifier.waiting(engine.wakeup, engine.poll_interval)
            cm.__enter__()
            self._registration = cm

    def _unregister(self) -> None:  # worker thread (or the closing loop)
        cm, self._registration = self._registration, None
        if cm is not None:
            cm.__exit__(None, None, None)

    async def wait(self, check: Callable[[], Any], seen: int, timeout: float | None,
                   undo: Callable[[Any], object] | None) -> Any:
        """Block until ``check()`` (on the worker, re-run after every commit later than
        generation ``seen``) finds something, or ``timeout`` seconds pass (then one last
        check's outcome); ``_RETRY`` if a transaction was in the way. Cancelled after
        the worker found something, ``undo(outcome)`` runs on the worker."""
        waiter = _Waiter(check, self.loop.create_future())
        if self.in_window is not None:
            self.in_window()
        self.blocked = (*self.blocked, waiter)
        # A commit after ``seen`` (the generation before the check) and before the line
        # above queued nothing for us: re-check now, or it would go unnoticed.
        if self.adb.sync.engine.notifier.generation != seen:
            self._queue(waiter, False)
        timer = None if timeout is None else self.loop.call_later(max(0.0, timeout), self._queue, waiter, True)
        try:
            return await waiter.fut
        except asyncio.CancelledError:
            waiter.cancelled = True  # before the undo is queued: re-checks after it skip
            if undo is not None:
                self.adb._post_undo(_undo_waiter, waiter, undo)
            raise
        finally:
            self.blocked = tuple(w for w in self.blocked if w is not waiter)
            if timer is not None:
                timer.cancel()


def _undo_waiter(waiter: _Waiter, undo: Callable[[Any], object]) -> None:
    """Worker thread, after every re-check queued before the cancellation."""
    if waiter.finished and waiter.outcome is not _RETRY:
        undo(waiter.outcome)


def _undo(job: _Job, undo: Callable[[Any], object]) -> None:
    """Undo a cancelled call's effect if it ran (worker thread, after it)."""
    if job.state == _RETURNED:  # not skipped, not failed (a failed call changed nothing)
        undo(job.result)


#: Calls of :meth:`AsyncDatabase.run_grouped` one group (one transaction, one commit) takes
#: at most: a bound on how long the group holds the file's write lock and how long its
#: first member waits for the commit.
GROUP_MAX = 32


class _Member:
    """One :meth:`AsyncDatabase.run_grouped` call. ``cancelled`` is set by the loop only
    while the call waits; the worker skips a cancelled member it has not started."""

    __slots__ = ("fn", "args", "fut", "cancelled")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], fut: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.args = args
        self.fut = fut
        self.cancelled = False


class _Groups:
    """Group commit for :meth:`AsyncDatabase.run_grouped` (the contract is there).

    Calls queue here (a deque: the loop appends, the worker pops, both thread-safe). When
    one is queued and no group job is in the worker's queue or running, a group job is
    posted to the worker (after another task's open transaction has ended, as for every
    call); it takes what is queued when it starts (up to :data:`GROUP_MAX`), runs each call
    in a savepoint of one transaction, commits, and posts every member's outcome back to
    the loop in one callback, which also posts the next group job if calls are waiting.
    Calls that arrive meanwhile make the next group, so under load groups grow by
    themselves and an idle database runs a lone call at once. No task and no future of
    its own: a lone call costs one hand-over to the worker and one back, as ``run_sync``.
    """

    def __init__(self, adb: AsyncDatabase) -> None:
        self.adb = adb
        self.queue: collections.deque[_Member] = collections.deque()
        self.busy = False  # a group job is posted or running, or waiting for a transaction to end
        self.waiting: asyncio.Task[None] | None = None  # waiting for a transaction (referenced: not collected)

    def add(self, member: _Member) -> None:  # loop
        self.queue.append(member)
        if not self.busy:
            self._start()

    def _start(self) -> None:  # loop
        self.busy = True
        adb = self.adb
        if adb._worker.closed:
            self._fail(DatabaseClosed("this AsyncDatabase is closed"))
        elif adb._tx_current is not None:
            self.waiting = adb._loop.create_task(self._after_transaction())
        else:
            adb._worker.post(self._run_and_answer)

    async def _after_transaction(self) -> None:
        try:
            await self.adb._transaction_free()
        except BaseException as exc:  # the loop is going away
            self._fail(exc)
            raise
        finally:
            self.waiting = None
        self._start()

    def _fail(self, exc: BaseException) -> None:  # loop
        self.busy = False
        while self.queue:
            member = self.queue.popleft()
            if isinstance(exc, asyncio.CancelledError):
                member.fut.cancel()
            else:
                _set_exception(member.fut, exc)

    def _run_and_answer(self) -> None:  # worker thread
        outcomes = self._run()
        try:
            self.adb._loop.call_soon_threadsafe(self._answer, outcomes)
        except RuntimeError:
            pass  # the loop is closed: nobody waits

    def _answer(self, group: _Outcomes) -> None:  # loop
        self.busy = False
        _hand_outcomes(group)
        if self.queue:
            self._start()

    def _run(self) -> _Outcomes:  # worker thread
        """One group: what is queued now (up to GROUP_MAX), each member's outcome. Never raises."""
        members: list[_Member] = []
        while len(members) < GROUP_MAX:
            try:
                member = self.queue.popleft()
            except IndexError:
                break
            if not member.cancelled:
                members.append(member)
        if not members:
            return members, []
        sync = self.adb.sync
        outcomes: list[tuple[bool, Any]] = []
        try:
            with sync.transaction():
                for member in members:
                    try:
                        with sync.transaction():  # a savepoint: a failure undoes this member only
                            outcomes.append((True, member.fn(*member.args)))
                    except Exception as exc:  # noqa: BLE001 - the member's caller gets it
                        outcomes.append((False, exc))
        except BaseException as exc:  # noqa: BLE001 - BEGIN or COMMIT failed: nothing is stored
            outcomes = [outcome if not outcome[0] else (False, exc) for outcome in outcomes]
            outcomes += [(False, exc)] * (len(members) - len(outcomes))
        return members, outcomes


# A group's members and, in the same order, each one's (returned, value or exception).
_Outcomes = tuple[list[_Member], list[tuple[bool, Any]]]


def _hand_outcomes(group: _Outcomes) -> None:
    """Loop thread: every member of a group its outcome, in the group's order."""
    for member, (ok, value) in zip(*group):
        if ok:
            _set_result(member.fut, value)
        else:
            _set_exception(member.fut, value)


def _in_savepoint(sync: Database, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    with sync.transaction():
        return fn(*args)


class AsyncDatabase:
    """The asyncio face of :class:`sqlstream.Database` (``sync``): same files, same rules.

    Create it with ``await sqlstream.aio.open(path)``; close with ``await db.close()`` or
    ``async with``. Each method runs the synchronous one on this database's worker thread.
    """

    sync: Database

    def _init(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._worker = _Worker(loop)
        weakref.finalize(self, self._worker.close)
        self._tx_current: object | None = None
        self._tx_ended: asyncio.Event | None = None
        self._wakeups = _Wakeups(self)
        self._groups = _Groups(self)
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        # Undos of cancelled calls waiting for another task's transaction to end (worker only).
        self._deferred_undos: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<sqlstream.aio.AsyncDatabase {self.path!r}>"

    @property
    def path(self) -> str:
        return self.sync.path

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the database: after the calls queued before it, off the loop; returns once
        the underlying Database is closed (``-wal``/``-shm`` gone when it was the last on
        the file) and the worker thread has ended. Idempotent, also from several tasks at
        once: every call waits for the one closing. A cancelled ``close()`` (``wait_for``)
        does not stop the closing, which goes on; the next call waits for it to finish."""
        if self._closing is None:
            if self._closed:
                return  # closed by close_from_outside()
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await self._call(self.sync.close)
        finally:
            self._worker.close()
            # The thread's last act completes ``ended``; the join then returns at once.
            await self._worker.ended
            self._worker.thread.join()

    def close_from_outside(self) -> None:
        """Close without an event loop (its loop has ended, e.g. at test teardown). Idempotent.

        Closes the underlying Database (waiting for a statement the worker is running) and
        ends the worker thread once its queue is drained. Not for use from the loop itself:
        there, ``await close()``.
        """
        self._closed = True
        self.sync.close()
        self._worker.close()

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- plumbing

    async def _call(
        self, fn: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None, **kwargs: Any
    ) -> T:
        """Run ``fn`` on the worker. Outside this task's transaction, first wait for any
        other task's transaction to end. If cancelled while ``fn`` runs, ``undo(result)``
        runs on the worker after it (before anything submitted later)."""
        if self._tx_current is not None and _tx_token.get() is not self._tx_current:
            await self._transaction_free()
        return await self._submit(fn, *args, undo=undo, **kwargs)

    async def _submit(
        self, fn: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None, **kwargs: Any
    ) -> T:
        job, fut = self._worker.call(fn, args, kwargs)
        try:
            return await fut  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if job.state == _QUEUED:
                job.state = _CANCELLED  # not started: the worker skips it (else it runs)
            if undo is not None:
                self._post_undo(_undo, job, undo)
            raise

    def _post_undo(self, fn: Callable[[Any, Callable[[Any], object]], None],
                   target: _Job | _Waiter, undo: Callable[[Any], object]) -> None:
        """Queue the undo of a cancelled call on the worker (loop thread, at cancellation).

        Queued now, so it runs after the call (the worker is FIFO). A call made inside its
        own task's transaction is undone inside it (it commits or rolls back with the
        call's effect). Any other call was made, and took effect, outside every
        transaction, so its undo must not run inside one either: if another task's
        transaction is open when the undo's turn comes, that transaction could roll the
        undo back and leave the effect in place (records claimed until their ack timeout,
        a reader past records nobody received). Such an undo waits on the worker and runs
        right after the transaction ends, committed or not (:meth:`_run_deferred_undos`).
        """
        own = self._in_my_transaction()
        self._worker.post(self._run_undo, fn, target, undo, own)

    def _run_undo(self, fn: Callable[[Any, Callable[[Any], object]], None], target: Any,
                  undo: Callable[[Any], object], own: bool) -> None:  # worker thread
        if not own and self.sync.in_transaction():
            self._deferred_undos.append(functools.partial(fn, target, undo))
        else:
            fn(target, undo)

    def _run_deferred_undos(self) -> None:
        """Worker thread, once the outermost transaction has ended: each in its own commit."""
        while self._deferred_undos and not self.sync.in_transaction():
            undo = self._deferred_undos.pop(0)
            try:
                undo()
            except Exception:  # noqa: BLE001 - nobody awaits an undo; keep the others going
                _log.warning("sqlstream.aio: undoing a cancelled call failed", exc_info=True)

    async def _transaction_free(self) -> None:
        while self._tx_current is not None and _tx_token.get() is not self._tx_current:
            assert self._tx_ended is not None
            await self._tx_ended.wait()

    def _end_scope(self, scope: Any, exc_type: Any, exc: Any, tb: Any) -> Any:  # worker thread
        """Commit or roll back a transaction block; after the outermost, run the deferred undos."""
        try:
            return scope.__exit__(exc_type, exc, tb)
        finally:
            self._run_deferred_undos()

    def _in_my_transaction(self) -> bool:
        return self._tx_current is not None and _tx_token.get() is self._tx_current

    async def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float | None,
        *,
        wake_at: Callable[[], float | None] | None = None,
        stop: Callable[[], bool] | None = None,
        undo: Callable[[T], object] | None = None,
    ) -> T | None:
        """``check()`` on the worker until it returns non-None, awaiting wake-ups between
        checks, at most ``timeout`` seconds (None: no limit). ``wake_at()`` (run on the
        worker after an empty check) may give a monotonic time to check again without a
        commit. ``stop()`` ends the wait (None) when true after a wake-up."""
        timeout = check_timeout(timeout)
        notifier = self.sync.engine.notifier

        def attempt() -> tuple[int, T | None, float | None]:
            seen = notifier.generation
            result = check()
            return seen, result, (wake_at() if result is None and wake_at is not None else None)

        if timeout == 0:
            return (await self._call(attempt, undo=_undo_second(undo)))[1]
        if self._in_my_transaction():
            # The transaction holds the write lock any waking commit needs: as in the sync API.
            result = (await self._call(attempt, undo=_undo_second(undo)))[1]
            if result is not None:
                return result
            raise blocking_in_transaction()
        deadline = None if timeout is None else time.monotonic() + timeout
        undo_outcome = _undo_second(undo)
        self._wakeups.enter()
        try:
            outcome = await self._call(attempt, undo=undo_outcome)
            while True:
                seen, result, at = outcome
                if result is not None:
                    return result
                if stop is not None and stop():
                    return None
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return None
                sleep = None if deadline is None else deadline - now
                if at is not None:
                    sleep = max(0.0, at - now) if sleep is None else max(0.0, min(sleep, at - now))
                outcome = await self._wakeups.wait(attempt, seen, sleep, undo_outcome)
                if outcome is _RETRY:
                    outcome = await self._call(attempt, undo=undo_outcome)
        finally:
            self._wakeups.leave()

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this database's worker thread, where all its SQLite work runs.

        For layers built on the synchronous API (the Kafka listener): ``fn`` may use
        :attr:`sync` freely and must not block on anything but SQLite. As every call here,
        it waits for another task's open transaction to end first. Cancelling the await
        does not stop ``fn`` once it runs."""
        return await self._call(fn, *args)

    async def run_grouped(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread, in a write transaction shared with the other
        ``run_grouped`` calls waiting at the time (group commit): one commit, so one fsync
        under ``synchronous="full"``, for the whole group.

        Contract: ``fn`` runs in a savepoint of the group's transaction, after the group's
        earlier members (it sees their writes: sequence checks, producer state); if it
        raises, its savepoint alone is rolled back and the exception reaches its caller
        only. Its result is returned only once the group has committed: a returned call is
        durable as any commit. If the group's BEGIN or COMMIT fails, nothing of it is stored
        and every member that had not failed on its own gets that error. Calls start in the
        order they were made, but not in order with other kinds of calls. A group takes at
        most :data:`GROUP_MAX` calls; others wait for the next. Inside this task's own
        transaction ``fn`` runs as part of it (in a savepoint), not in a group. Cancelled
        before its group starts, the call is skipped; after, it runs and may commit."""
        if self._in_my_transaction():
            return await self._call(_in_savepoint, self.sync, fn, args)
        if self._worker.closed:
            raise DatabaseClosed("this AsyncDatabase is closed")
        member = _Member(fn, args, self._loop.create_future())
        self._groups.add(member)
        try:
            return await member.fut  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            member.cancelled = True
            raise

    @property
    def grouped_waiting(self) -> int:
        """``run_grouped`` calls queued for a group that has not started (a gauge)."""
        return len(self._groups.queue)

    async def wait_for(self, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """Run ``check()`` on the worker until it returns non-None; between tries, await
        a commit to this file by any process (no thread is parked, nothing polls on the
        loop). At most ``timeout`` seconds (0: one try; None: no limit); None when the
        time ran out. ``check`` reads through :attr:`sync` and must not write."""
        return await self._wait(check, timeout)

    def wake(self) -> None:
        """Wake every blocked call of this AsyncDatabase to re-check (loop thread)."""
        self._wakeups.fire()

    # ----------------------------------------------------------------- transactions

    def transaction(self) -> AsyncTransaction:
        """``async with db.transaction():`` — as ``Database.transaction``: everything written
        inside (by this task and tasks it starts) commits together or not at all; nested
        blocks are savepoints; an exception or cancellation rolls the block back. Other
        tasks' calls on this AsyncDatabase wait until the outermost block ends."""
        return AsyncTransaction(self)

    # ----------------------------------------------------------------- streams

    async def create_stream(self, name: str, **options: Any) -> AsyncStream:
        """``Database.create_stream`` (same options and errors)."""
        return AsyncStream(self, await self._call(self.sync.create_stream, name, **options))

    async def stream(self, name: str) -> AsyncStream:
        """A handle to an existing stream (``StreamNotFound`` if absent)."""
        return AsyncStream(self, await self._call(self.sync.stream, name))

    async def writer(self, secret: str) -> AsyncStream:
        """``Database.writer``: the writable handle of a secret stream."""
        return AsyncStream(self, await self._call(self.sync.writer, secret))

    async def streams(self) -> list[StreamInfo]:
        return await self._call(self.sync.streams)

    async def stream_info(self, name: str) -> StreamInfo:
        return await self._call(self.sync.stream_info, name)

    async def delete_stream(self, name: str, *, force: bool = False) -> None:
        await self._call(self.sync.delete_stream, name, force=force)

    async def set_retention(self, name: str, **settings: Any) -> TrimResult:
        return await self._call(self.sync.set_retention, name, **settings)

    async def trim(self, stream: str, before_offset: int | None = None, *, force: bool = False) -> TrimResult:
        return await self._call(self.sync.trim, stream, before_offset, force=force)

    # Lifetimes (sqlstream.lifetimes): expiry, forks, soft deletion.
    async def fork_stream(self, name: str, source: str, offset: int | None = None, **options: Any) -> AsyncStream:
        """``Database.fork_stream`` (partial, metadata, ttl, expires_at)."""
        return AsyncStream(self, await self._call(self.sync.fork_stream, name, source, offset, **options))

    async def set_expiry(self, name: str, *, ttl: float | None = None, expires_at: float | None = None) -> None:
        await self._call(self.sync.set_expiry, name, ttl=ttl, expires_at=expires_at)

    async def touch(self, name: str) -> None:
        await self._call(self.sync.touch, name)

    async def lifetime(self, name: str) -> Lifetime:
        return await self._call(self.sync.lifetime, name)

    async def retire_stream(self, name: str) -> bool:
        return await self._call(self.sync.retire_stream, name)

    async def expire_streams(self) -> list[str]:
        return await self._call(self.sync.expire_streams)

    async def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, timeout: float | None = None,
        max_rows: int | None = None, max_bytes: int = DEFAULT_QUERY_MAX_BYTES,
    ) -> QueryResult:
        """``Database.query`` (same bounds and errors). A cancelled call stops the query on
        the worker too (within ``QUERY_CHECK_STEPS`` steps of SQLite's machine): else an
        endless query would hold the worker, and every later call, for ever."""
        cancelled = threading.Event()
        try:
            return await self._call(self.sync.query, sql, params, timeout=timeout, max_rows=max_rows,
                                    max_bytes=max_bytes, stop=cancelled.is_set)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # ----------------------------------------------------------------- subscriptions, readers

    async def create_subscription(self, name: str, stream: str, **options: Any) -> AsyncSubscription:
        """``Database.create_subscription`` (same options and errors)."""
        return AsyncSubscription(self, await self._call(self.sync.create_subscription, name, stream, **options))

    async def subscription(self, name: str) -> AsyncSubscription:
        return AsyncSubscription(self, await self._call(self.sync.subscription, name))

    async def subscriptions(self) -> list[SubscriptionInfo]:
        return await self._call(self.sync.subscriptions)

    async def delete_subscription(self, name: str, *, force: bool = False) -> int:
        return await self._call(self.sync.delete_subscription, name, force=force)

    async def reader(self, name: str, stream: str | None = None, *, start: int | str = "earliest") -> AsyncReader:
        return AsyncReader(self, await self._call(self.sync.reader, name, stream, start=start))

    async def readers(self) -> list[ReaderInfo]:
        return await self._call(self.sync.readers)

    async def delete_reader(self, name: str) -> None:
        await self._call(self.sync.delete_reader, name)

    def producer(self, **options: Any) -> AsyncProducer:
        """A buffered producer (options as ``Database.producer``); ``await p.append(...)``
        returns an awaitable of the offset, resolved when its batch is stored."""
        return AsyncProducer(self, self.sync.producer(**options))

    def consumer(
        self,
        subscription: str | AsyncSubscription,
        handler: AsyncHandler,
        *,
        name: str | None = None,
        batch: int = 100,
        concurrency: int = 1,
        nack_delay: float = 0.0,
    ) -> AsyncConsumer:
        """An :class:`AsyncConsumer` running ``await handler(batch)`` over ``subscription``."""
        return AsyncConsumer(self, subscription, handler, name=name, batch=batch, concurrency=concurrency,
                             nack_delay=nack_delay)


def _undo_second(undo: Callable[[T], object] | None) -> Callable[[tuple[int, T | None, float | None]], object] | None:
    if undo is None:
        return None
    fn = undo

    def run(outcome: tuple[int, T | None, float | None]) -> None:
        if outcome[1] is not None:
            fn(outcome[1])

    return run


class AsyncTransaction:
    """``async with db.transaction():`` (see :meth:`AsyncDatabase.transaction`)."""

    def __init__(self, adb: AsyncDatabase) -> None:
        self.adb = adb
        self._scope: Any = None
        self._outer = False
        self._reset: contextvars.Token[object | None] | None = None

    async def __aenter__(self) -> AsyncDatabase:
        adb = self.adb
        if not adb._in_my_transaction():
            await adb._transaction_free()
            self._outer = True
            token = object()
            adb._tx_current = token
            adb._tx_ended = asyncio.Event()
            self._reset = _tx_token.set(token)
        scope = adb.sync.transaction()
        try:
            # Cancelled while BEGIN runs: the undo, queued right behind it, rolls it back.
            await adb._submit(scope.__enter__, undo=lambda _: adb._end_scope(
                scope, asyncio.CancelledError, asyncio.CancelledError(), None))
        except BaseException:
            self._end()
            raise
        self._scope = scope
        return adb

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        adb = self.adb
        _, fut = adb._worker.call(adb._end_scope, (self._scope, exc_type, exc, tb), {})
        # Other tasks may go on now: their calls queue behind the commit/rollback on the
        # FIFO worker. Shielded, so that a cancellation here cannot drop it from the queue.
        self._end()
        await asyncio.shield(fut)

    def _end(self) -> None:
        if self._outer:
            adb = self.adb
            adb._tx_current = None
            if adb._tx_ended is not None:
                adb._tx_ended.set()
            adb._tx_ended = None
            if self._reset is not None:
                _tx_token.reset(self._reset)
                self._reset = None
            self._outer = False


class AsyncStream:
    """The asyncio face of :class:`sqlstream.Stream` (``sync``)."""

    def __init__(self, adb: AsyncDatabase, stream: Stream) -> None:
        self.adb = adb
        self.sync = stream
        self.name = stream.name

    def __repr__(self) -> str:
        return f"<sqlstream.aio.AsyncStream {self.name!r}>"

    @property
    def write_secret(self) -> str | None:
        return self.sync.write_secret

    async def append(self, value: Any, **options: Any) -> int:
        """``Stream.append`` (key, headers, expect_offset, dedup_id): the offset, durable on return."""
        return await self.adb._call(self.sync.append, value, **options)

    async def extend(self, values: Iterable[Any], **options: Any) -> Any:
        """``Stream.extend``: one atomic batch; a range of offsets (a list with ``dedup_ids``).

        ``values`` is handed to the worker as it is: ``Stream.extend`` validates it there
        (and reads an iterator there, so a generator that does I/O never blocks the loop)."""
        return await self.adb._call(self.sync.extend, values, **options)

    async def seal(self) -> bool:
        return await self.adb._call(self.sync.seal)

    async def append_fenced(self, values: Sequence[Any], **options: Any) -> FencedAppend:
        """``Stream.append_fenced`` (producer, epoch, seq, writer_seq, seal): one atomic batch."""
        return await self.adb._call(self.sync.append_fenced, list(values), **options)

    async def trim(self, before_offset: int | None = None, *, force: bool = False) -> TrimResult:
        return await self.adb._call(self.sync.trim, before_offset, force=force)

    async def info(self) -> StreamInfo:
        return await self.adb._call(self.sync.info)

    async def read_at(self, timestamp: Any) -> int:
        return await self.adb._call(self.sync.read_at, timestamp)

    async def read(self, offset: int = 0, limit: int = 100, timeout: float | None = 0) -> list[Record]:
        """``Stream.read``: records from ``offset``; with a timeout, awaits the first one
        (or the seal) without blocking the loop; ``[]`` when the timeout passes."""
        sync = self.sync

        def check() -> list[Record] | None:
            # One snapshot gives the records and whether the stream is sealed (as the
            # sync read's check): no separate stream-info query per attempt.
            records, state = sync._read_once(offset, limit)
            return records if records or state.sealed else None

        if timeout == 0:  # also False and 0.0: Stream.read validates (and refuses False)
            return await self.adb._call(sync.read, offset, limit, timeout)
        # As Stream.read, before anything waits: the check below trusts its arguments.
        check_offset(offset)
        check_count(limit, "limit")
        check_timeout(timeout)
        return await self.adb._wait(check, timeout) or []

    async def read_raw(self, offset: int = 0, limit: int = 1000, max_bytes: int | None = None) -> RawRecords:
        """``Stream.read_raw``: records as stored bytes, never blocks. To wait for them, pass a
        check that calls ``self.sync.read_raw`` to :meth:`AsyncDatabase.wait_for`."""
        return await self.adb._call(self.sync.read_raw, offset, limit, max_bytes)

    async def read_bytes(self, offset: int = 0, limit: int | None = None, timeout: float | None = 0) -> Chunk:
        """``Stream.read_bytes``; ``WritePending`` when the bytes are not committed in time."""
        sync = self.sync
        if timeout == 0:  # also False and 0.0: Stream.read_bytes validates (and refuses False)
            return await self.adb._call(sync.read_bytes, offset, limit, timeout)
        # As Stream.read_bytes, before anything waits.
        check_offset(offset)
        if limit is not None:
            check_offset(limit, "limit")

        def check() -> Chunk | None:
            try:
                return sync.read_bytes(offset, limit, 0)
            except WritePending:
                return None

        chunk = await self.adb._wait(check, timeout)
        if chunk is None:
            return await self.adb._call(sync.read_bytes, offset, limit, 0)  # raises WritePending
        return chunk

    async def follow(
        self, start: int | str = "earliest", *, batch: int = 100, timeout: float | None = None
    ) -> AsyncIterator[Record]:
        """``async for record in stream.follow(...)``: as ``Stream.follow`` (ends when the
        stream is sealed and drained, or after ``timeout`` seconds without a record)."""
        check_count(batch, "batch")
        timeout = check_timeout(timeout)
        offset = await self.adb._call(self.sync._resolve_start, start)
        while True:
            records = await self.read(offset, batch, timeout)
            if not records:
                return
            for record in records:
                yield record
            offset = records[-1].offset + 1


class AsyncSubscription:
    """The asyncio face of :class:`sqlstream.Subscription` (``sync``)."""

    def __init__(self, adb: AsyncDatabase, sub: Subscription) -> None:
        self.adb = adb
        self.sync = sub
        self.name = sub.name
        self.stream = sub.stream

    def __repr__(self) -> str:
        return f"<sqlstream.aio.AsyncSubscription {self.name!r} on {self.stream!r}>"

    async def fetch(self, consumer: str, max_records: int = 100, timeout: float | None = 0,
                    *, max_bytes: int | None = DEFAULT_FETCH_BYTES,
                    stop: Callable[[], bool] | None = None) -> Batch:
        """``Subscription.fetch``: claim up to ``max_records`` (within the byte budget
        ``max_bytes``); with a timeout, await them (woken by appends, acks and nacks from
        any process, and by the next ack deadline). Cancelled mid-claim, the claimed
        records are nacked back (redelivered at once)."""
        check_name(consumer, "consumer")
        check_count(max_records, "max_records")
        check_limit(max_bytes, "max_bytes")
        sub = self.sync
        if timeout == 0:
            # Not blocking: one call on the worker, without the waiting machinery.
            return await self.adb._call(sub.fetch, consumer, max_records, timeout, max_bytes=max_bytes,
                                        undo=_nack_cancelled(sub))
        deadline: list[int | None] = [None]
        in_tx = self.adb._in_my_transaction()
        first = [True]

        def check() -> Batch | None:
            if first[0]:
                first[0] = False  # claim straight away first, as the sync fetch does
                batch = sub.fetch(consumer, max_records, 0, max_bytes=max_bytes)
                if batch or in_tx:
                    return batch if batch else None
                deadline[0] = sub.probe()[1]  # empty: when to look again without a commit
                return None
            if not in_tx:
                # A read-only look first, as the sync fetch does: waiters woken by every
                # commit must not each take the write lock to find nothing.
                claimable, deadline[0] = sub.probe()
                if not claimable:
                    return None
            batch = sub.fetch(consumer, max_records, 0, max_bytes=max_bytes)
            return batch if batch else None

        def wake_at() -> float | None:
            return sub.wake_time(deadline[0])

        got = await self.adb._wait(check, timeout, wake_at=wake_at, stop=stop, undo=_nack_cancelled(sub))
        return got if got is not None else Batch(subscription=self.name, consumer=consumer)

    async def wait(self, timeout: float | None) -> bool:
        """``Subscription.wait``: await, read-only and without a lock, until a fetch could
        claim something (True) or ``timeout`` passes (False). The way to wait in the
        exactly-once pattern: wait, then ``async with db.transaction()`` and
        ``fetch(timeout=0)`` inside it. Refused inside a transaction (``InvalidArgument``)
        unless something is claimable at once."""
        sub = self.sync
        deadline: list[int | None] = [None]

        def check() -> bool | None:
            claimable, deadline[0] = sub.probe()
            return True if claimable else None

        return bool(await self.adb._wait(check, timeout, wake_at=lambda: sub.wake_time(deadline[0])))

    async def ack(self, *offsets: int, attempts: Mapping[int, int] | None = None) -> AckResult:
        """``Subscription.ack`` (``attempts=batch.attempts`` fences, as there)."""
        return await self.adb._call(self.sync.ack, *offsets, attempts=attempts)

    async def rejoin(self, consumer: str) -> int:
        """``Subscription.rejoin``: take back at once what ``consumer`` held."""
        return await self.adb._call(self.sync.rejoin, consumer)

    async def nack(self, *offsets: int, delay: float = 0.0, error: str | None = None) -> AckResult:
        return await self.adb._call(self.sync.nack, *offsets, delay=delay, error=error)

    async def extend_deadline(self, *offsets: int, seconds: float) -> AckResult:
        return await self.adb._call(self.sync.extend_deadline, *offsets, seconds=seconds)

    async def pending(self, consumer: str | None = None, limit: int | None = None) -> list[PendingEntry]:
        return await self.adb._call(self.sync.pending, consumer, limit)

    async def info(self) -> SubscriptionInfo:
        return await self.adb._call(self.sync.info)


def _nack_cancelled(sub: Subscription) -> Callable[[Batch], None]:
    """The undo of a cancelled fetch: hand what it claimed back (redelivered at once)."""

    def undo(batch: Batch) -> None:
        if batch:
            sub.nack(*batch.offsets, error="fetch cancelled")

    return undo


class AsyncReader:
    """The asyncio face of :class:`sqlstream.Reader` (``sync``)."""

    def __init__(self, adb: AsyncDatabase, reader: Reader) -> None:
        self.adb = adb
        self.sync = reader
        self.name = reader.name
        self.stream = reader.stream

    def __repr__(self) -> str:
        return f"<sqlstream.aio.AsyncReader {self.name!r} on {self.stream!r}>"

    async def read(self, max_records: int = 100, timeout: float | None = 0) -> list[Record]:
        """``Reader.read``: take records and advance; with a timeout, await them. Cancelled
        after the worker took records, the reader is moved back before them."""
        reader = self.sync
        check_count(max_records, "max_records")
        db = self.adb.sync

        def check() -> list[Record] | None:
            sealed = db.stream_info(reader.stream).sealed
            records = reader.read(max_records, 0)
            return records if records or sealed else None

        def undo(records: list[Record]) -> None:
            if records:
                reader.seek(records[0].offset)

        return await self.adb._wait(check, timeout, undo=undo) or []

    async def position(self) -> int:
        return await self.adb._call(lambda: self.sync.position)

    async def seek(self, offset: int | str) -> int:
        return await self.adb._call(self.sync.seek, offset)

    async def info(self) -> ReaderInfo:
        return await self.adb._call(self.sync.info)

    async def delete(self) -> None:
        await self.adb._call(self.sync.delete)


class AsyncProducer:
    """The asyncio face of :class:`sqlstream.Producer` (``sync``): its flusher thread batches
    appends; ``append`` returns an asyncio future of the offset."""

    def __init__(self, adb: AsyncDatabase, producer: Producer) -> None:
        self.adb = adb
        self.sync = producer

    async def append(self, stream: str, value: Any, **options: Any) -> asyncio.Future[int]:
        """Queue one record; return a future of its offset (await it for durability).
        With ``max_pending`` set, waits off the loop for room in the queue."""
        if self.sync.max_pending is not None:
            cf = await asyncio.to_thread(self.sync.append, stream, value, **options)
        else:
            cf = self.sync.append(stream, value, **options)  # never blocks without max_pending
        return asyncio.wrap_future(cf, loop=self.adb._loop)

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout)

    async def close(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.sync.close, timeout)

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncConsumer:
    """Runs ``await handler(batch)`` over a subscription in ``concurrency`` tasks: ack on
    return, nack on raise (the exception text becomes the records' last error); a
    cancelled handler nacks its batch at once. ``await run()`` until :meth:`stop`; it first
    takes back what an earlier incarnation under this name left unacked (as ``Consumer``)."""

    def __init__(self, adb: AsyncDatabase, subscription: str | AsyncSubscription, handler: AsyncHandler, *,
                 name: str | None, batch: int, concurrency: int, nack_delay: float) -> None:
        from .consumer import default_consumer_name
        from .validation import check_seconds

        if not callable(handler):
            raise InvalidArgument("handler must be an async callable: await handler(batch)")
        check_count(batch, "batch")
        check_count(concurrency, "concurrency", maximum=1024)
        self.adb = adb
        self._subscription = subscription
        self.handler = handler
        self.name = check_name(name, "consumer") if name is not None else default_consumer_name()
        self.batch = batch
        self.concurrency = concurrency
        self.nack_delay = float(check_seconds(nack_delay, "nack_delay", positive=False))
        self.acked = 0
        self.nacked = 0
        self._stopping = False

    async def run(self) -> None:
        """Consume until :meth:`stop`; re-raise the first error met outside the handler."""
        sub = self._subscription
        if isinstance(sub, str):
            sub = self._subscription = await self.adb.subscription(sub)
        await sub.rejoin(self.name)  # what an earlier incarnation under this name left unacked
        self._stopping = False
        workers = [asyncio.ensure_future(self._loop(sub)) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            self._stopping = True
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise

    def stop(self) -> None:
        """Ask the workers to stop after their current batch (``run`` then returns)."""
        self._stopping = True
        self.adb.wake()

    async def _loop(self, sub: AsyncSubscription) -> None:
        stopping = lambda: self._stopping  # noqa: E731
        while not self._stopping:
            batch = await sub.fetch(self.name, self.batch, None, stop=stopping)
            if not batch:
                continue
            try:
                await self.handler(batch)
            except Exception as exc:  # noqa: BLE001 - a failed batch is nacked, not fatal
                await sub.nack(*batch.offsets, delay=self.nack_delay, error=f"{type(exc).__name__}: {exc}")
                self.nacked += len(batch)
            except BaseException as exc:
                await asyncio.shield(sub.nack(*batch.offsets, error=f"{type(exc).__name__}: {exc}"))
                self.nacked += len(batch)
                raise
            else:
                try:
                    done = await sub.ack(*batch.offsets, attempts=batch.attempts)
                except ConcurrencyError:
                    # Delivered again meanwhile: that delivery is the one to ack.
                    _log.warning("sqlstream.aio consumer %s: offsets %s were delivered again before the ack",
                                 self.name, batch.offsets)
                    continue
                self.acked += len(done.applied)

