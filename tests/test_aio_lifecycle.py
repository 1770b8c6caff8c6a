"""sqlstream.aio: close() and cancellation are complete and atomic (issue 19 items 2, 3, 17)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
import sqlstream.aio

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _fds_into(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(folder)):
            found.append(target)
    return found


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc/self/fd to count descriptors")
async def test_close_cancelled_during_a_long_extend_completes_on_the_next_call(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    threads = _threads()
    adb = await sqlstream.aio.open(path)
    s = await adb.create_stream("s")
    # Queued behind a long extend: the first close cannot have started when it is cancelled.
    extend = asyncio.ensure_future(s.extend([b"x" * 100] * 50_000))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(adb.close(), 0.001)
    await adb.close()
    assert len(await extend) == 50_000, "close() went ahead of a queued call"
    await adb.close()  # idempotent
    leaked = [t for t in _threads() - threads if t.is_alive()]
    assert leaked == [], f"threads left running after close(): {leaked}"
    assert _fds_into(tmp_path) == [], "file descriptors left open after close()"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db"], "the -wal/-shm files stayed"
    assert adb.closed and adb.sync.closed
    with sqlstream.open(path) as sync:
        assert sync.stream("s").info().next_offset == 50_000


async def test_close_called_from_many_tasks_at_once_closes_once(tmp_path: Path) -> None:
    threads = _threads()
    adb = await sqlstream.aio.open(str(tmp_path / "m.db"))
    await adb.create_stream("s")
    closers = [asyncio.ensure_future(adb.close()) for _ in range(5)]
    closers[0].cancel()
    await asyncio.gather(*closers[1:])
    assert adb.sync.closed
    assert [t for t in _threads() - threads if t.is_alive()] == []
    with pytest.raises(sqlstream.errors.DatabaseClosed):
        await adb.streams()


class _Rollback(Exception):
    """Raised inside a transaction to roll it back."""


async def _wait_on_the_loop_thread(done: Callable[[], bool]) -> None:
    """Block the loop thread (on purpose: no callback runs, no task moves) until ``done()``."""
    while not done():
        time.sleep(0.001)


async def _rolled_back_transaction(adb: sqlstream.aio.AsyncDatabase, other: sqlstream.aio.AsyncStream,
                                   go: asyncio.Event) -> None:
    with contextlib.suppress(_Rollback):
        async with adb.transaction():
            await other.append("rolled back")
            await go.wait()
            raise _Rollback


async def test_cancelled_fetch_is_undone_outside_another_tasks_rolled_back_transaction(tmp_path: Path) -> None:
    # Deterministic order on the worker: the fetch claims, then another task's BEGIN, then
    # the cancelled fetch's undo. The undo must not join (and die with) that transaction.
    path = str(tmp_path / "u.db")
    async with await sqlstream.aio.open(path) as adb:
        s = await adb.create_stream("s")
        other = await adb.create_stream("other")
        await s.extend(["a", "b", "c"])
        sub = await adb.create_subscription("g", "s", ack_timeout=600)
        with sqlstream.open(path) as sync:
            fetch = asyncio.ensure_future(sub.fetch("c1", 10))
            await asyncio.sleep(0)  # the claim is queued on the worker
            go = asyncio.Event()
            tx = asyncio.ensure_future(_rolled_back_transaction(adb, other, go))
            await asyncio.sleep(0)  # its BEGIN is queued behind the claim
            await _wait_on_the_loop_thread(lambda: sync.subscription("g").info().pending == 3)
            fetch.cancel()  # the claim ran: its undo is queued behind the BEGIN
            with pytest.raises(asyncio.CancelledError):
                await fetch
            go.set()
            await tx
        assert (await sub.info()).consumers == {}, "the cancelled fetch's records stay claimed"
        assert [r.value for r in await sub.fetch("c2", 10)] == ["a", "b", "c"]
        assert await other.read(0) == []


async def test_cancelled_reader_read_is_undone_outside_another_tasks_rolled_back_transaction(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "r.db")
    async with await sqlstream.aio.open(path) as adb:
        s = await adb.create_stream("s")
        other = await adb.create_stream("other")
        await s.extend(["a", "b", "c"])
        reader = await adb.reader("ui", "s")
        with sqlstream.open(path) as sync:
            read = asyncio.ensure_future(reader.read(10))
            await asyncio.sleep(0)
            go = asyncio.Event()
            tx = asyncio.ensure_future(_rolled_back_transaction(adb, other, go))
            await asyncio.sleep(0)
            await _wait_on_the_loop_thread(lambda: [r.position for r in sync.readers()] == [3])  # read-only
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            go.set()
            await tx
        assert await reader.position() == 0, "a cancelled read left the reader past records nobody got"
        assert [r.value for r in await reader.read(10)] == ["a", "b", "c"]


# One task's part in a concurrent run: a fetch or a reader read (each under its own
# consumer/reader name), cancelled after some loop ticks or not; or a transaction that
# writes elsewhere and commits or rolls back after some ticks.
_calls = st.tuples(st.sampled_from(["fetch", "read"]), st.integers(1, 4), st.sampled_from([0, 0.05]),
                   st.none() | st.integers(0, 6))
_transactions = st.tuples(st.just("tx"), st.booleans(), st.integers(0, 6))


async def _run_concurrently(path: str, plan: list[tuple[Any, ...]], freezes: list[bool]) -> None:
    async with await sqlstream.aio.open(path) as adb:
        s = await adb.create_stream("s")
        other = await adb.create_stream("other")
        await s.extend(range(12))
        sub = await adb.create_subscription("g", "s", ack_timeout=600)
        readers = [await adb.reader(f"r{i}", "s") for i in range(len(plan))]

        async def transaction(commit: bool, ticks: int) -> None:
            with contextlib.suppress(_Rollback):
                async with adb.transaction():
                    await other.append("x")
                    for _ in range(ticks):
                        await asyncio.sleep(0)
                    if not commit:
                        raise _Rollback

        tasks: list[asyncio.Future[Any]] = []
        cancels: list[tuple[int, asyncio.Future[Any]]] = []
        for i, (kind, *args) in enumerate(plan):
            if kind == "tx":
                tasks.append(asyncio.ensure_future(transaction(*args)))
                continue
            count, timeout, cancel_after = args
            call = sub.fetch(f"c{i}", count, timeout) if kind == "fetch" else readers[i].read(count, timeout)
            task = asyncio.ensure_future(call)
            tasks.append(task)
            if cancel_after is not None:
                cancels.append((cancel_after, task))
        for tick, freeze in enumerate(freezes):
            if freeze:
                # Hold the loop while the worker runs what is queued: the cancellations
                # below then meet calls that already took effect (their undo runs).
                time.sleep(0.003)
            for at, task in cancels:
                if at == tick:
                    task.cancel()
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await s.append("a last commit")  # nothing changes for the checks below
        held = (await sub.info()).consumers
        for i, ((kind, *_), outcome) in enumerate(zip(plan, outcomes)):
            got = [] if isinstance(outcome, BaseException) else (outcome or [])
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, asyncio.CancelledError), outcome
            if kind == "fetch":
                assert held.get(f"c{i}", 0) == len(got), f"c{i} holds records it never received"
            elif kind == "read":
                assert await readers[i].position() == len(got), f"r{i} moved past records it never received"
        committed = [i for i, (kind, *args) in enumerate(plan) if kind == "tx" and args[0]]
        assert len(await other.read(0)) == len(committed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(_calls | _transactions, min_size=2, max_size=10),
       freezes=st.lists(st.booleans(), min_size=7, max_size=7))
def test_cancelled_calls_among_rolled_back_transactions_deliver_nothing_or_are_undone(
    tmp_path: Path, plan: list[tuple[Any, ...]], freezes: list[bool]
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        asyncio.run(_run_concurrently(os.path.join(folder, "h.db"), plan, freezes))


async def test_a_commit_between_a_blocked_calls_check_and_its_registration_wakes_it(tmp_path: Path) -> None:
    # The window of a lost wake-up: the worker checked (nothing there) and handed the
    # result to the loop; before the loop registers the call as blocked, a commit lands.
    # The seam runs exactly there; it commits (in this process: the notifier is bumped
    # while the call is not registered, so the bump queues nothing for it) and queues a
    # barrier call on the FIFO worker. The call registers right after the seam returns:
    # it must queue its own re-check then, which runs before the barrier, so the call
    # is done when the barrier returns. Were the re-check missing, only a later commit
    # or the watcher's slow fallback poll could wake it (notify mode: every 0.25 s).
    path = str(tmp_path / "w.db")
    async with await sqlstream.aio.open(path, wakeup="notify") as adb:
        s = await adb.create_stream("s")
        barrier: list[asyncio.Future[Any]] = []
        with sqlstream.open(path) as sync:

            def commit_in_the_window() -> None:
                adb._wakeups.in_window = None
                sync.stream("s").append("x")
                barrier.append(asyncio.ensure_future(adb.stream_info("s")))

            adb._wakeups.in_window = commit_in_the_window
            blocked = asyncio.ensure_future(s.read(0, timeout=None))
            while not barrier:
                await asyncio.sleep(0)
            await barrier[0]
            assert blocked.done(), "a commit between the check and the registration went unnoticed"
            assert [r.value for r in blocked.result()] == ["x"]
