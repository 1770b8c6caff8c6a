"""sqlstream.aio: the synchronous semantics, awaitable, without ever blocking the loop."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlstream
import sqlstream.aio
from sqlstream.errors import InvalidArgument, WritePending

_BACKENDS: list[Any] = [pytest.param(("asyncio", {}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    _BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))

pytestmark = pytest.mark.anyio


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
async def adb(db_path: str) -> AsyncIterator[sqlstream.aio.AsyncDatabase]:
    database = await sqlstream.aio.open(db_path)
    yield database
    await database.close()


class SqlThreads:
    """Records the thread of every SQLite statement run by connections opened inside the
    block: the loop is never blocked by sqlstream.aio when none ran on the loop's thread."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.statements = 0

    def _trace(self, event: dict[str, Any]) -> None:
        self.threads.add(threading.get_ident())
        self.statements += 1

    def _hook(self, conn: apsw.Connection) -> None:
        conn.trace_v2(apsw.SQLITE_TRACE_STMT, self._trace, id="test-aio-threads")

    def __enter__(self) -> SqlThreads:
        apsw.connection_hooks.append(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        apsw.connection_hooks.remove(self._hook)

    def assert_none_on_this_thread(self) -> None:
        assert self.statements > 0, "no statement was traced: the check would prove nothing"
        assert threading.get_ident() not in self.threads, "an SQLite statement ran on the event loop's thread"


async def _blocked(adb: sqlstream.aio.AsyncDatabase, calls: int = 1) -> None:
    """Return once ``calls`` calls are registered as blocked on ``adb`` (its wake-ups
    re-check them from now on). The worker is FIFO, so after ``streams()`` their first
    check has run; registering happens next, on the loop, which this coroutine yields to.
    A test that then holds the loop (a busy wait) relies on that: a commit before the
    registration would leave the wake-up to the held loop, and the test waiting for ever."""
    await adb.streams()
    for _ in range(100_000):
        if len(adb._wakeups.blocked) >= calls:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{calls} blocked call(s) expected, {len(adb._wakeups.blocked)} registered")


async def test_append_read_roundtrip_matches_the_sync_api(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("orders")
    assert await s.append({"id": 1}, key="k") == 0
    assert list(await s.extend([b"a", "b"])) == [1, 2]
    records = await s.read(0)
    assert [r.value for r in records] == [{"id": 1}, b"a", "b"]
    assert records[0].key == "k"
    assert [i.name for i in await adb.streams()] == ["orders"]
    assert (await s.read_bytes(0, 2)).length == 2
    with sqlstream.open(adb.path) as sync:
        assert [r.value for r in sync.stream("orders").read(0)] == [{"id": 1}, b"a", "b"]
    await adb.delete_stream("orders", force=True)
    assert await adb.streams() == []


async def test_blocked_read_wakes_on_append_and_never_runs_sql_on_the_loop(db_path: str) -> None:
    with SqlThreads() as sql:
        async with await sqlstream.aio.open(db_path) as adb:
            s = await adb.create_stream("s")
            reader = asyncio.ensure_future(s.read(0, timeout=None))
            await _blocked(adb)
            assert not reader.done()
            await s.append("x")
            records = await reader  # no timeout: only the append's wake-up ends it
    assert [r.value for r in records] == ["x"]
    sql.assert_none_on_this_thread()


async def test_blocked_read_times_out_empty_without_blocking_the_loop(db_path: str) -> None:
    with SqlThreads() as sql:
        async with await sqlstream.aio.open(db_path) as adb:
            s = await adb.create_stream("s")
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            ticker = asyncio.ensure_future(tick())
            started = time.monotonic()
            assert await s.read(0, timeout=0.3) == []
            waited = time.monotonic() - started
            ticker.cancel()
            with pytest.raises(WritePending):
                await s.read_bytes(0, 5, timeout=0.05)
    # Not before the timeout (a loop timer may fire a clock tick early), and other tasks
    # ran meanwhile; no upper bound: a loaded machine may be late.
    assert waited >= 0.25
    assert ticks > 1
    sql.assert_none_on_this_thread()


@pytest.mark.parametrize("wakeup", ["notify", "poll"])
async def test_read_wakes_on_a_commit_from_another_process(db_path: str, wakeup: str) -> None:
    # The child appends only once told to, after the read is blocked: the read cannot have
    # found the record on its first check, so only the cross-process wake-up returns it
    # (timeout=None: no timer ends the wait either).
    code = (
        "import sqlstream, sys; sys.stdin.readline(); "
        "db = sqlstream.open(sys.argv[1]); db.stream('s').append('from afar'); db.close()"
    )
    with SqlThreads() as sql:
        async with await sqlstream.aio.open(db_path, wakeup=wakeup) as adb:
            s = await adb.create_stream("s")
            child = subprocess.Popen([sys.executable, "-c", code, adb.path], stdin=subprocess.PIPE,
                                     cwd=str(Path(__file__).parent.parent))
            try:
                read = asyncio.ensure_future(s.read(0, timeout=None))
                await _blocked(adb)
                assert not read.done()
                assert child.stdin is not None
                child.stdin.write(b"go\n")
                child.stdin.close()
                records = await read
            finally:
                assert await asyncio.to_thread(child.wait) == 0
    assert [r.value for r in records] == ["from afar"]
    sql.assert_none_on_this_thread()


async def test_cancelled_blocked_fetch_returns_promptly_and_claims_nothing(
    adb: sqlstream.aio.AsyncDatabase,
) -> None:
    s = await adb.create_stream("s")
    sub = await adb.create_subscription("g", "s")
    task = asyncio.ensure_future(sub.fetch("c1", 10, timeout=None))
    await _blocked(adb)
    # Promptly: the cancellation needs nothing from the worker, which is kept busy here
    # (its next job waits for the write lock this thread holds) until the task is over.
    with sqlstream.open(adb.path) as sync, sync.transaction():
        busy = asyncio.ensure_future(s.append("queued behind a held lock"))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled() and not busy.done()
    await busy
    await s.append("later")
    assert (await sub.info()).pending == 0
    batch = await sub.fetch("c2", 10)
    assert [r.value for r in batch] == ["queued behind a held lock", "later"]


async def test_fetch_cancelled_while_claiming_hands_the_records_back(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    await s.extend(range(5))
    sub = await adb.create_subscription("g", "s", ack_timeout=600)
    for _ in range(20):  # cancel at various points, including while the claim runs on the worker
        task = asyncio.ensure_future(sub.fetch("c1", 5, timeout=1))
        await asyncio.sleep(0)
        task.cancel()
        try:
            batch = await task
        except asyncio.CancelledError:
            pass
        else:
            await sub.nack(*batch.offsets)
    info = await sub.info()
    assert info.consumers == {}, "a cancelled fetch left records held by its consumer"
    assert len(await sub.fetch("c2", 10)) == 5


async def test_asyncio_timeout_on_a_blocked_reader_leaves_its_position(adb: sqlstream.aio.AsyncDatabase) -> None:
    await adb.create_stream("s")
    r = await adb.reader("r", "s")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await r.read(10, timeout=None)
    assert await r.position() == 0


async def test_fetch_wakes_at_the_ack_deadline_for_redelivery(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    await s.append("x")
    sub = await adb.create_subscription("g", "s", ack_timeout=0.3)
    assert len(await sub.fetch("c1", 1)) == 1
    # No commit comes and timeout=None: only the loop timer set for the ack deadline can
    # end this wait.
    again = await sub.fetch("c2", 1, timeout=None)
    assert [r.value for r in again] == ["x"] and again.attempts[0] == 2


async def test_transaction_commits_together_and_other_tasks_wait_outside_it(
    adb: sqlstream.aio.AsyncDatabase,
) -> None:
    s = await adb.create_stream("s")
    outsider_done = asyncio.Event()
    go = asyncio.Event()

    async def outsider() -> None:
        await go.wait()
        await s.append("outside")
        outsider_done.set()

    task = asyncio.ensure_future(outsider())  # started outside: not part of the transaction
    async with adb.transaction():
        await s.append("a")
        go.set()
        await asyncio.sleep(0.1)
        assert not outsider_done.is_set(), "another task's append slipped into the transaction"
        await asyncio.gather(s.append("b"), s.append("c"))  # tasks started inside belong to it
    await task
    assert [r.value for r in await s.read(0)][:3] == ["a", "b", "c"]
    assert [r.value for r in await s.read(0)][3] == "outside"


async def test_transaction_rolls_back_on_error_and_on_cancellation(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    with pytest.raises(RuntimeError):
        async with adb.transaction():
            await s.append("a")
            raise RuntimeError("boom")

    async def cancelled_tx() -> None:
        async with adb.transaction():
            await s.append("b")
            await asyncio.sleep(10)

    task = asyncio.ensure_future(cancelled_tx())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await s.read(0) == []
    await s.append("c")
    assert [r.value for r in await s.read(0)] == ["c"]
    async with adb.transaction():
        with pytest.raises(InvalidArgument):
            await s.read(5, timeout=1)  # blocking inside a transaction: refused, as in sync


async def test_follow_is_an_async_iterator_that_ends_at_the_seal(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    await s.extend([1, 2])

    async def writer() -> None:
        await asyncio.sleep(0.05)
        await s.append(3)
        await s.seal()

    w = asyncio.ensure_future(writer())
    seen = [r.value async for r in s.follow("earliest", timeout=5)]
    await w
    assert seen == [1, 2, 3]


async def test_consumer_runs_async_handlers_acks_and_nacks(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    await s.extend(range(6))
    await adb.create_subscription("g", "s")
    seen: list[int] = []
    failed = [False]

    async def handler(batch: sqlstream.Batch) -> None:
        if not failed[0]:
            failed[0] = True
            raise ValueError("first try fails")
        seen.extend(r.value for r in batch)
        if len(seen) >= 6:
            consumer.stop()

    consumer = adb.consumer("g", handler, batch=3, concurrency=2)
    await consumer.run()
    assert sorted(seen) == list(range(6))
    assert consumer.nacked == 3 and consumer.acked == 6
    assert (await (await adb.subscription("g")).info()).pending == 0


async def test_producer_futures_resolve_to_offsets(adb: sqlstream.aio.AsyncDatabase) -> None:
    await adb.create_stream("s")
    async with adb.producer(max_delay=0.001) as p:
        futures = [await p.append("s", i) for i in range(10)]
        assert [await f for f in futures] == list(range(10))


async def test_reader_read_waits_and_advances(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    r = await adb.reader("r", "s")
    task = asyncio.ensure_future(r.read(10, timeout=None))
    await _blocked(adb)
    await s.extend(["a", "b"])
    assert [x.value for x in await task] == ["a", "b"]
    assert await r.position() == 2


async def test_notifier_listener_is_removed_when_no_call_waits(adb: sqlstream.aio.AsyncDatabase) -> None:
    s = await adb.create_stream("s")
    notifier = adb.sync.engine.notifier
    calls: list[int] = []
    notifier.add_listener(lambda: calls.append(1))
    await s.append("x")
    assert calls == [1]
    notifier.remove_listener(notifier._listeners[0])
    assert await s.read(1, timeout=0.01) == []
    assert notifier._listeners == ()


async def test_blocked_fetch_cancelled_after_a_commit_woke_it_hands_the_claim_back(
    adb: sqlstream.aio.AsyncDatabase,
) -> None:
    # A commit re-checks blocked calls straight on the worker, which claims the records
    # before the loop hears of it; a cancellation in between must hand them back.
    s = await adb.create_stream("s")
    sub = await adb.create_subscription("g", "s", ack_timeout=600)
    task = asyncio.ensure_future(sub.fetch("c1", 10, timeout=None))
    await _blocked(adb)
    adb.sync.stream("s").append("x")  # on the loop thread, on purpose: no await until cancel
    for _ in range(60_000):  # holding the loop: the worker's re-check claims, its result waits
        if adb.sync.subscription("g").info().pending:
            break
        time.sleep(0.001)
    else:
        raise AssertionError("the commit's re-check on the worker never claimed the record")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await sub.info()).consumers == {}, "the cancelled fetch left the record held by c1"
    assert [r.value for r in await sub.fetch("c2", 10)] == ["x"]


async def test_blocked_read_raises_when_its_stream_is_deleted_meanwhile(adb: sqlstream.aio.AsyncDatabase) -> None:
    await adb.create_stream("s")
    other = await adb.create_stream("t")
    s = await adb.stream("s")
    task = asyncio.ensure_future(s.read(0, timeout=None))
    await _blocked(adb)
    await adb.delete_stream("s", force=True)
    await other.append("a commit that re-checks the blocked read")
    with pytest.raises(sqlstream.errors.StreamNotFound):
        await task
