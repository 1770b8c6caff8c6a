"""sqlstream.aio under hostile arguments (issue 20 item 17): the asyncio entry points
validate exactly as the synchronous API does.

Each example opens a fresh file (a stream ``s`` with records, one pending delivery, a
subscription ``sub``, a reader ``r``) and makes a few random calls, each through the
synchronous API first and then through ``sqlstream.aio`` with the same arguments:

* the aio call returns or raises a ``SqlstreamError`` — never a raw exception — and ends
  (waiting timeouts are drawn from 0..0.05 s, invalid ones included);
* when the synchronous call refused the arguments, the aio call refuses them with the
  same error class, and neither changed anything stored.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
import sqlstream.aio
from sqlstream import errors
from sqlstream.validation import show

from test_fuzz_api import HOSTILE, NAMES, snapshot

CALL_LIMIT = 30.0  # seconds any one call may take before it counts as hung (they wait at most 0.05 s)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))

hostile = st.sampled_from(HOSTILE) | st.integers() | st.floats() | st.text(max_size=20)
names = st.sampled_from(NAMES) | st.text(max_size=8)
timeouts = st.sampled_from([0, 0, 0.001, 0.05, -1, float("nan"), float("-inf"), True, False, "0.1", [], -1e300, 2**64])

Sync = Callable[..., object]
Async = Callable[..., Awaitable[object]]


def _ops(db: sqlstream.Database, adb: sqlstream.aio.AsyncDatabase) -> dict[str, tuple[Sync, Async, list[Any]]]:
    """name -> (sync call, aio call, argument strategies). Handles are made per call."""
    s = lambda: sqlstream.Stream(db, "s")  # noqa: E731 - handles without a lookup
    a = lambda: sqlstream.aio.AsyncStream(adb, sqlstream.Stream(adb.sync, "s"))  # noqa: E731

    async def asub() -> sqlstream.aio.AsyncSubscription:
        return await adb.subscription("sub")

    async def first(iterator: Any) -> object:
        async for record in iterator:
            return record
        return None

    return {
        "append": (lambda v, k, h: s().append(v, key=k, headers=h),
                   lambda v, k, h: a().append(v, key=k, headers=h), [hostile, hostile, hostile]),
        "extend": (lambda vs, k: s().extend(vs, key=k), lambda vs, k: a().extend(vs, key=k),
                   [hostile | st.lists(hostile, max_size=3), hostile]),
        "read": (lambda o, n, t: s().read(o, n, timeout=t), lambda o, n, t: a().read(o, n, timeout=t),
                 [hostile, hostile, timeouts]),
        "read_at": (lambda t: s().read_at(t), lambda t: a().read_at(t), [hostile]),
        "read_bytes": (lambda o, n, t: s().read_bytes(o, n, timeout=t),
                       lambda o, n, t: a().read_bytes(o, n, timeout=t), [hostile, hostile, timeouts]),
        "follow": (lambda start, b: next(s().follow(start, batch=b, timeout=0.01), None),
                   lambda start, b: first(a().follow(start, batch=b, timeout=0.01)), [hostile, hostile]),
        "trim": (lambda o, f: s().trim(o, force=f), lambda o, f: a().trim(o, force=f), [hostile, hostile]),
        "fetch": (lambda c, n, t: db.subscription("sub").fetch(c, n, timeout=t),
                  lambda c, n, t: _then(asub(), lambda sub: sub.fetch(c, n, timeout=t)), [names, hostile, timeouts]),
        "wait": (lambda t: db.subscription("sub").wait(t), lambda t: _then(asub(), lambda sub: sub.wait(t)), [timeouts]),
        "ack": (lambda *o: db.subscription("sub").ack(*o), lambda *o: _then(asub(), lambda sub: sub.ack(*o)),
                [hostile, hostile]),
        "ack_fenced": (lambda o, a: db.subscription("sub").ack(o, attempts=a),
                       lambda o, a: _then(asub(), lambda sub: sub.ack(o, attempts=a)),
                       [hostile, hostile | st.dictionaries(st.text(max_size=5) | st.integers(), hostile, max_size=2)]),
        "rejoin": (lambda c: db.subscription("sub").rejoin(c), lambda c: _then(asub(), lambda sub: sub.rejoin(c)),
                   [names]),
        "nack": (lambda o, d, e: db.subscription("sub").nack(o, delay=d, error=e),
                 lambda o, d, e: _then(asub(), lambda sub: sub.nack(o, delay=d, error=e)), [hostile, hostile, hostile]),
        "extend_deadline": (lambda o, sec: db.subscription("sub").extend_deadline(o, seconds=sec),
                            lambda o, sec: _then(asub(), lambda sub: sub.extend_deadline(o, seconds=sec)),
                            [hostile, hostile]),
        "pending": (lambda c, n: db.subscription("sub").pending(c, n),
                    lambda c, n: _then(asub(), lambda sub: sub.pending(c, n)), [names | st.none(), hostile]),
        "reader_read": (lambda n, t: db.reader("r").read(n, timeout=t),
                        lambda n, t: _then(adb.reader("r"), lambda r: r.read(n, timeout=t)), [hostile, timeouts]),
        "reader_seek": (lambda o: db.reader("r").seek(o), lambda o: _then(adb.reader("r"), lambda r: r.seek(o)),
                        [hostile]),
        "reader": (lambda n, s_, start: db.reader(n, s_, start=start),
                   lambda n, s_, start: adb.reader(n, s_, start=start), [names, names, hostile]),
        "create_stream": (lambda n, c, sec: db.create_stream(n, max_count=c, secret=sec),
                          lambda n, c, sec: adb.create_stream(n, max_count=c, secret=sec), [names, hostile, hostile]),
        "create_subscription": (
            lambda n, s_, start, at: db.create_subscription(n, s_, start=start, ack_timeout=at),
            lambda n, s_, start, at: adb.create_subscription(n, s_, start=start, ack_timeout=at),
            [names, names, hostile, hostile],
        ),
        "stream": (lambda n: db.stream(n), lambda n: adb.stream(n), [names]),
        "stream_info": (lambda n: db.stream_info(n), lambda n: adb.stream_info(n), [names]),
        "writer": (lambda secret: db.writer(secret), lambda secret: adb.writer(secret), [hostile]),
        "subscription": (lambda n: db.subscription(n), lambda n: adb.subscription(n), [names]),
        "delete_stream": (lambda n, f: db.delete_stream(n, force=f), lambda n, f: adb.delete_stream(n, force=f),
                          [names, hostile]),
        "delete_subscription": (lambda n, f: db.delete_subscription(n, force=f),
                                lambda n, f: adb.delete_subscription(n, force=f), [names, hostile]),
        "set_retention": (lambda n, c, a_: db.set_retention(n, max_count=c, max_age=a_),
                          lambda n, c, a_: adb.set_retention(n, max_count=c, max_age=a_), [names, hostile, hostile]),
        "query": (lambda sql, p: db.query(sql, p), lambda sql, p: adb.query(sql, p),
                  [st.sampled_from(["SELECT ?", "SELECT :a", "DELETE FROM chunks", "SELEC", 1, None]),
                   hostile | st.lists(hostile, max_size=2)]),
        "consumer": (lambda b, c, d: db.consumer("sub", lambda batch: None, batch=b, concurrency=c, nack_delay=d),
                     lambda b, c, d: _ready(adb.consumer("sub", _handler, batch=b, concurrency=c, nack_delay=d)),
                     [hostile, hostile, hostile]),
        "producer": (lambda b, d: db.producer(max_batch=b, max_delay=d).close(timeout=5),
                     lambda b, d: adb.producer(max_batch=b, max_delay=d).close(timeout=5), [hostile, hostile]),
    }


async def _then(handle: Awaitable[Any], call: Callable[[Any], Awaitable[object]]) -> object:
    return await call(await handle)


async def _ready(value: object) -> object:
    return value


async def _handler(batch: sqlstream.Batch) -> None:
    pass


def _outcome(exc: BaseException | None) -> str:
    return "returned" if exc is None else type(exc).__name__


async def _example(path: str, data: st.DataObject) -> None:
    with sqlstream.open(path) as db:
        db.create_stream("s").extend([{"id": 1}, "two", b"three"])
        db.create_subscription("sub", "s").fetch("w", 1)
        db.reader("r", "s")
    async with await sqlstream.aio.open(path) as adb:
        with sqlstream.open(path) as db:
            ops = _ops(db, adb)
            for _ in range(data.draw(st.integers(1, 5), label="calls")):
                name = data.draw(st.sampled_from(sorted(ops)), label="op")
                sync_call, aio_call, strategies = ops[name]
                args = [data.draw(strategy, label=f"{name} arg {i}") for i, strategy in enumerate(strategies)]
                described = f"{name}{show(tuple(args))}"
                before = snapshot(path)
                sync_error: BaseException | None = None
                try:
                    await asyncio.to_thread(sync_call, *args)
                except errors.SqlstreamError as exc:
                    sync_error = exc
                except BaseException as exc:  # noqa: BLE001 - test_fuzz_api's business, noted here
                    sync_error = exc
                aio_error: BaseException | None = None
                try:
                    await asyncio.wait_for(aio_call(*args), CALL_LIMIT)
                except TimeoutError:
                    pytest.fail(f"aio {described} did not return within {CALL_LIMIT} s")
                except errors.SqlstreamError as exc:
                    aio_error = exc
                    assert str(exc)
                except BaseException as exc:  # noqa: BLE001 - the property under test
                    raise AssertionError(f"aio {described} raised a raw {type(exc).__name__}: {exc}") from exc
                if isinstance(sync_error, errors.SqlstreamError) and not isinstance(sync_error, errors.LockTimeout):
                    # The sync call refused these arguments on this state; so must aio.
                    assert type(aio_error) is type(sync_error), (
                        f"{described}: sync raised {type(sync_error).__name__} ({sync_error}), "
                        f"aio {_outcome(aio_error)} ({aio_error})"
                    )
                    assert snapshot(path) == before, f"refused {described} changed the stored data"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_aio_calls_refuse_what_the_sync_api_refuses_with_the_same_errors(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = str(tmp_path_factory.mktemp("fuzz-aio") / "f.db")
    asyncio.run(_example(path, data))


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.read("x", timeout=1), errors.InvalidArgument),
    (lambda s: s.read(0, "x", timeout=1), errors.InvalidArgument),
    (lambda s: s.read(-1, timeout=1), errors.InvalidArgument),
    (lambda s: s.read(0, 0, timeout=None), errors.InvalidArgument),
    (lambda s: s.read_bytes("x", timeout=1), errors.InvalidArgument),
    (lambda s: s.extend(5), errors.InvalidArgument),
    (lambda s: s.extend(None), errors.InvalidArgument),
])
def test_aio_stream_calls_that_block_validate_before_waiting(tmp_path: Path, call: Any, error: type) -> None:
    async def main() -> None:
        async with await sqlstream.aio.open(str(tmp_path / "v.db")) as adb:
            s = await adb.create_stream("s")
            with pytest.raises(error):
                await call(s)

    asyncio.run(main())
