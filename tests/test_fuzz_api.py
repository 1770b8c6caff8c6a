"""API fuzzing (issue 9 item 12): random public calls with hostile arguments.

Each example opens a fresh file holding a stream ``s`` (a few records, one pending
delivery), a subscription and a reader, then makes a few random calls chosen among the
public API with arguments drawn from hostile values: wrong types, bools, huge/inf/NaN
numbers, 2**64, negatives, lone surrogates, bad names, deep nesting, unknown streams.

Properties, for every call:

* it returns, or raises a ``SqlstreamError`` (whose ``TypeError``/``ValueError``/
  ``KeyError`` mix-ins are allowed by being subclasses) — never a raw exception;
* it ends within a few seconds: waiting timeouts are drawn only from 0..0.1 s (hostile
  *invalid* timeouts included; ``None``/``inf``, which rightly wait forever, are not);
* a call that raised left every table exactly as it was (a dump through a separate
  connection, before and after).

Bounded for CI: 300 examples of up to 6 calls (``FUZZ_EXAMPLES`` overrides).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream import errors
from sqlstream.validation import show

CALL_LIMIT = 60.0  # a hang guard: the calls wait at most 0.1 s; more is a hang, not slowness
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE: list[Any] = [
    None, True, False, 0, 1, -1, 2, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**64), 10**23,
    0.5, -0.0, 1e-300, 1e13, 9e18, 1e300, float("inf"), float("-inf"), float("nan"),
    "", "s", "x" * 300, "\udc80", "a\x00b", "../etc", "1", "nan", b"", b"\xff", bytearray(b"x"),
    [], [1], {}, {"a": 1}, {1: 2}, {"a": float("nan")}, _deep(5000), (1, 2), {1, 2}, object(),
    datetime.datetime(1, 1, 1), datetime.datetime(9999, 12, 31, 23, 59),
    datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
]
NAMES: list[Any] = ["s", "t", "dl", "sub", "r", "new", "gone", "", "x" * 300, "\udc80", "a b", "-x", 5, None, b"s"]
TIMEOUTS: list[Any] = [0, 0, 0, 0.001, 0.05, -1, float("nan"), float("-inf"), True, False, "0.1", [], -1e300]

hostile = st.sampled_from(HOSTILE) | st.integers() | st.floats() | st.text(max_size=20)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# Dictionary keys must hash: Hypothesis itself raised TypeError drawing a dict keyed by a
# hostile value that does not (a list, a dict); not a filter: its repr recurses into _deep.
hashable = (st.sampled_from([v for v in HOSTILE if _hashable(v)]) | st.integers() | st.floats()
            | st.text(max_size=20))
names = st.sampled_from(NAMES) | st.text(max_size=8)
timeouts = st.sampled_from(TIMEOUTS)


def _ops(db: sqlstream.Database) -> dict[str, tuple[Callable[..., object], list[st.SearchStrategy[Any]]]]:
    """name -> (call, strategies of its arguments). Handles are made fresh per call."""
    s = lambda: sqlstream.Stream(db, "s")  # noqa: E731 - a handle without a lookup
    return {
        "create_stream": (
            lambda n, c, a, b, m, sec: db.create_stream(n, max_count=c, max_age=a, max_bytes=b, metadata=m, secret=sec),
            [names, hostile, hostile, hostile, hostile, hostile],
        ),
        "append": (lambda v, k, h, e: s().append(v, key=k, headers=h, expect_offset=e), [hostile, hostile, hostile, hostile]),
        "append_dedup": (lambda v, d: s().append(v, dedup_id=d), [hostile, hostile]),
        "extend": (lambda vs, k: s().extend(vs, key=k), [hostile | st.lists(hostile, max_size=3), hostile]),
        "read": (lambda o, n, t: s().read(o, n, timeout=t), [hostile, hostile, timeouts]),
        "read_at": (lambda t: s().read_at(t), [hostile]),
        "read_bytes": (lambda o, n, t: s().read_bytes(o, n, timeout=t), [hostile, hostile, timeouts]),
        "iter_bytes": (lambda n, o: next(s().iter_bytes(n, o, timeout=0)), [hostile, hostile]),
        "follow": (lambda start, b: next(s().follow(start, batch=b, timeout=0), None), [hostile, hostile]),
        "fetch": (lambda c, n, t: db.subscription("sub").fetch(c, n, timeout=t), [names, hostile, timeouts]),
        "ack": (lambda *o: db.subscription("sub").ack(*o), [hostile, hostile]),
        "ack_fenced": (lambda o, a: db.subscription("sub").ack(o, attempts=a),
                       [hostile, hostile | st.dictionaries(hashable, hostile, max_size=2)]),
        "rejoin": (lambda c: db.subscription("sub").rejoin(c), [names]),
        "wait": (lambda t: db.subscription("sub").wait(t), [timeouts]),
        "nack": (lambda o, d, e: db.subscription("sub").nack(o, delay=d, error=e), [hostile, hostile, hostile]),
        "extend_deadline": (lambda o, sec: db.subscription("sub").extend_deadline(o, seconds=sec), [hostile, hostile]),
        "pending": (lambda c, n: db.subscription("sub").pending(c, n), [names | st.none(), hostile]),
        "reader_read": (lambda n, t: db.reader("r").read(n, timeout=t), [hostile, timeouts]),
        "reader_seek": (lambda o: db.reader("r").seek(o), [hostile]),
        "reader": (lambda n, s_, start: db.reader(n, s_, start=start), [names, names, hostile]),
        "create_subscription": (
            lambda n, s_, start, at, mu, md, dl: db.create_subscription(
                n, s_, start=start, ack_timeout=at, max_unacked=mu, max_deliveries=md, dead_letter=dl
            ),
            [names, names, hostile, hostile, hostile, hostile, names | st.none()],
        ),
        "set_retention": (
            lambda n, c, a, b, ds, dr: db.set_retention(n, max_count=c, max_age=a, max_bytes=b, dedup_seconds=ds,
                                                        dedup_records=dr),
            [names, hostile, hostile, hostile, hostile | st.just(60), hostile | st.just(100)],
        ),
        "trim": (lambda n, o, f: db.trim(n, o, force=f), [names, hostile, hostile]),
        "query": (lambda sql, p: db.query(sql, p), [st.sampled_from(
            ["SELECT ?", "SELECT :a", "SELECT count(*) FROM chunks", "DELETE FROM chunks", "SELEC", 1, None]
        ), hostile | st.lists(hostile, max_size=2) | st.dictionaries(st.sampled_from(["a", "b"]), hostile)]),
        "stream_info": (lambda n: db.stream_info(n), [names]),
        "delete_stream": (lambda n, f: db.delete_stream(n, force=f), [names, hostile]),
        "delete_subscription": (lambda n, f: db.delete_subscription(n, force=f), [names, hostile]),
        "seal": (lambda: s().seal(), []),
        "writer": (lambda secret: db.writer(secret), [hostile]),
        "subscription": (lambda n: db.subscription(n).info(), [names]),
        "maintain": (lambda r, t: db.maintain(retention=r, vacuum=False, optimize=False, checkpoint_timeout=t),
                     [hostile | st.just(True), hostile | st.just(0.01)]),
        "producer": (lambda b, d, n, r: db.producer(max_batch=b, max_delay=d, max_bytes=n, retries=r).close(timeout=5),
                     [hostile, hostile, hostile, hostile]),
        "consumer": (lambda b, c, d: db.consumer("sub", lambda batch: None, batch=b, concurrency=c, nack_delay=d),
                     [hostile, hostile, hostile]),
        "fetch_in_transaction": (lambda c, n, t: _in_transaction(db, lambda: db.subscription("sub").fetch(c, n, timeout=t)),
                                 [names, hostile, timeouts]),
        "check": (lambda q, m: db.check(quick=q, max_problems=m), [hostile, hostile]),
    }


def _in_transaction(db: sqlstream.Database, call: Callable[[], object]) -> object:
    with db.transaction():
        return call()


def snapshot(path: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Every row of every table, through a connection of its own."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
        return [(t, sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)) for t in tables]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """One thread runs the calls, so the test can give up on one that hangs."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The file every example starts from, made once and copied per example: creating and
    migrating a new file for each of the examples was most of this test's time."""
    path = str(tmp_path_factory.mktemp("fuzz-template") / "template.db")
    with sqlstream.open(path) as db:  # closed: one self-contained file (no -wal) to copy
        s = db.create_stream("s")
        s.extend([{"id": 1}, "two", b"three"])
        db.create_subscription("sub", "s")
        db.reader("r", "s")
    return path


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_hostile_api_calls_raise_only_sqlstream_errors_never_hang_and_refusals_change_nothing(
    tmp_path_factory: pytest.TempPathFactory, worker: concurrent.futures.ThreadPoolExecutor, template: str,
    data: st.DataObject,
) -> None:
    path = str(tmp_path_factory.mktemp("fuzz") / "f.db")
    shutil.copyfile(template, path)  # streams s (3 records), subscription sub, reader r
    db = sqlstream.open(path)
    try:
        db.subscription("sub").fetch("w", 1)
        ops = _ops(db)
        for _ in range(data.draw(st.integers(1, 6), label="calls")):
            name = data.draw(st.sampled_from(sorted(ops)), label="op")
            call, strategies = ops[name]
            args = [data.draw(strategy, label=f"{name} arg {i}") for i, strategy in enumerate(strategies)]
            before = snapshot(path)
            future = worker.submit(call, *args)
            try:
                future.result(timeout=CALL_LIMIT)
            except concurrent.futures.TimeoutError:
                pytest.fail(f"{name}{show(tuple(args))} did not return within {CALL_LIMIT} s")
            except errors.SqlstreamError as exc:
                assert str(exc)
                after = snapshot(path)
                assert after == before, f"refused {name} ({type(exc).__name__}: {exc}) changed the stored data"
            except BaseException as exc:  # noqa: BLE001 - the property under test
                raise AssertionError(
                    f"{name}{show(tuple(args))} raised a raw {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        db.close()
