"""Helpers for testing code that uses sqlstream: a controllable clock, waits, assertions.

These work in any test runner; :mod:`sqlstream.pytest_plugin` (loaded automatically by
pytest once sqlstream is installed) wraps them in fixtures (``sqlstream_db``,
``sqlstream_factory``, ``sqlstream_clock``).

What the fake clock governs, and what it does not
-------------------------------------------------
A :class:`FakeClock` installed on a :class:`~sqlstream.Database` replaces the "now" that
database's deadline and age decisions read: subscription ack deadlines (redelivery after
``ack_timeout``, ``nack(delay=...)``, ``extend(seconds=...)``, the ``expired`` count of
``info()``), retention by age (``max_age`` is measured from the clock to the records'
timestamps), and the dedup window (``dedup_seconds``). Times the database stores come
from the same clock (``Record.timestamp``, a stream's ``created_at`` and seal time), so
``read_at`` and ``max_age`` agree with it; reader positions' ``updated_at`` stays
wall-clock. It does not change timeouts that bound how long a call blocks (``read(timeout=)``, ``fetch(timeout=)``, the busy timeout): those run on
real monotonic time. The clock starts at the real current time and only moves forward.

A clock belongs to the Database objects it is installed on: another Database on the same
file (another process, or a second ``sqlstream.open`` of it) keeps real time unless the
clock is installed there too.
"""

from __future__ import annotations

import difflib
import pprint
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .database import Database
from .errors import InvalidArgument
from .records import Record
from .subscriptions import SubscriptionInfo

__all__ = [
    "FakeClock",
    "assert_stream",
    "read_all",
    "snapshot",
    "use_clock",
    "wait_for",
    "wait_for_stream",
    "wait_for_subscription",
]

T = TypeVar("T")


def _check_db(db: object) -> Database:
    """``db`` if it is a sqlstream Database, else InvalidArgument (the helpers' one rule)."""
    if not isinstance(db, Database):
        raise InvalidArgument(f"expected a sqlstream Database, not {type(db).__name__}",
                              hint="pass the Database itself, e.g. the sqlstream_db fixture or sqlstream.open(path); "
                                   "for an AsyncDatabase, its .sync")
    return db


def _check_callable(value: object, what: str) -> None:
    if not callable(value):
        raise InvalidArgument(f"{what} must be a callable, not {type(value).__name__}")


def _check_seconds(value: object, what: str) -> float:
    """A finite number of seconds >= 0, else InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0, not {value!r}"[:200])
    try:
        return float(value)
    except OverflowError:  # an int past float range: no clock reaches it
        raise InvalidArgument(f"{what} must be a finite number of seconds >= 0, not {value!r}"[:200]) from None


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a name (a str), not {type(value).__name__}")
    return value


def use_clock(db: Database, clock: Callable[[], float] | None) -> None:
    """Make ``db`` read "now" (seconds since the epoch, a float) from ``clock``.

    ``None`` restores real time. This is the one place that knows where a Database keeps
    its clock; see the module docstring for what the clock governs. Raises
    ``InvalidArgument`` unless ``db`` is a Database and ``clock`` a callable or None.
    """
    _check_db(db)
    if clock is not None:
        _check_callable(clock, "clock")
    db.engine.clock = time.time if clock is None else clock


def _wake_waiters(db: Database) -> None:
    """Let calls blocked in other threads re-check their deadlines after the clock moved."""
    db.engine.notifier.bump()


#: The latest time a FakeClock may show: the end of year 9999 UTC, which ``datetime``
#: (``read_at``, timestamps of records) can still represent.
MAX_CLOCK_SECONDS = 253_402_300_799.0


def _clock_time(value: object, what: str) -> float:
    """``value`` as a clock time the database can store, else InvalidArgument.

    Times outside 0 (the epoch) .. year 9999 would be accepted here and fail later, deep
    in the engine, as raw OverflowError/ValueError (or, negative, give timestamps that
    import refuses).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_CLOCK_SECONDS:
        raise InvalidArgument(
            f"{what} {value!r}: a fake clock shows seconds since the epoch from 0 to "
            f"{MAX_CLOCK_SECONDS:.0f} (year 9999)"[:300],
            hint="start the clock at a real time (e.g. FakeClock(1_700_000_000)) and advance it by seconds",
        )
    return float(value)


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it. Thread-safe.

    Call it for the current time (seconds since the epoch). :meth:`install` makes a
    Database use it.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else _clock_time(start, "FakeClock(start=...)")
        self._lock = threading.Lock()
        self._databases: weakref.WeakSet[Database] = weakref.WeakSet()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        """The current fake time, seconds since the epoch."""
        return self()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time.

        Calls blocked in another thread on an installed Database (e.g. ``fetch(timeout=5)``
        waiting for a redelivery) re-check at once. Raises ``InvalidArgument`` for a
        negative or non-numeric amount (deadlines already passed stay passed), and for one
        that would move it past :data:`MAX_CLOCK_SECONDS`.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise InvalidArgument(
                f"advance() takes seconds >= 0, not {seconds!r}", hint="the fake clock only moves forward"
            )
        with self._lock:
            self._now = _clock_time(self._now + float(min(seconds, MAX_CLOCK_SECONDS + 1)), "advance() to")
            now = self._now
            databases = list(self._databases)
        for db in databases:
            _wake_waiters(db)
        return now

    def install(self, db: Database) -> Database:
        """Make ``db`` use this clock (see :func:`use_clock`); return ``db``."""
        use_clock(db, self)
        with self._lock:
            self._databases.add(db)
        return db

    def __repr__(self) -> str:
        return f"<sqlstream.testing.FakeClock {self.now:.6f}>"


# ----------------------------------------------------------------------------- waiting


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    message: str = "condition",
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Raises ``AssertionError`` after ``timeout`` real seconds, naming ``message`` and, when
    given, what ``describe()`` says is there instead. Polls every ``interval`` seconds
    (real time: a :class:`FakeClock` does not shorten it).
    """
    _check_callable(condition, "condition")
    timeout = _check_seconds(timeout, "timeout")
    interval = _check_seconds(interval, "interval")
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f"; instead: {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}{detail}")
        time.sleep(interval)


def read_all(db: Database, stream: str, start: int | None = None) -> list[Record]:
    """Every retained record of ``stream`` from ``start`` (default: the first retained)."""
    s = _check_db(db).stream(stream)
    offset = s.info().first_offset if start is None else start
    records: list[Record] = []
    while True:
        page = s.read(offset, limit=1000)
        if not page:
            return records
        records.extend(page)
        offset = page[-1].offset + 1


def _describe_records(records: Sequence[Record], limit: int = 10) -> str:
    if not records:
        return "no records"
    shown = ", ".join(f"{r.offset}: {r.value!r}" for r in records[-limit:])
    more = f"... ({len(records) - limit} earlier), " if len(records) > limit else ""
    return f"{len(records)} record(s): {more}{shown}"


def wait_for_stream(
    db: Database,
    stream: str,
    until: int | Callable[[list[Record]], object],
    *,
    timeout: float = 5.0,
) -> list[Record]:
    """Wait until ``stream`` holds ``until`` records (an int: at least that many), or until
    ``until(records)`` is truthy; return its records then.

    Raises ``AssertionError`` after ``timeout`` seconds showing the records it held.
    """
    _check_db(db)
    _check_name(stream, "stream")
    if isinstance(until, bool) or not (isinstance(until, int) or callable(until)):
        raise InvalidArgument(f"until is a record count (an int) or a callable, not {until!r}"[:200])
    if isinstance(until, int):
        wanted = until
        check: Callable[[list[Record]], object] = lambda records: len(records) >= wanted  # noqa: E731
        what = f"stream {stream!r} to hold {wanted} record(s)"
    else:
        check = until
        what = f"stream {stream!r} to satisfy {getattr(until, '__name__', 'the condition')}"
    last: list[Record] = []

    def attempt() -> list[Record] | None:
        nonlocal last
        last = read_all(db, stream)
        return last if check(last) else None

    result = wait_for(attempt, timeout=timeout, message=what, describe=lambda: _describe_records(last))
    return result


def wait_for_subscription(
    db: Database,
    name: str,
    until: Callable[[SubscriptionInfo], object] = lambda info: info.lag == 0 and info.pending == 0,
    *,
    timeout: float = 5.0,
) -> SubscriptionInfo:
    """Wait until ``until(info)`` is truthy for subscription ``name``; return that info.

    The default waits until everything was delivered and acked (``lag == 0`` and
    ``pending == 0``). Raises ``AssertionError`` after ``timeout`` seconds showing the
    subscription's last counters.
    """
    _check_db(db)
    _check_name(name, "name")
    _check_callable(until, "until")
    last: list[SubscriptionInfo] = []

    def attempt() -> SubscriptionInfo | None:
        info = db.subscription(name).info()
        last[:] = [info]
        return info if until(info) else None

    def describe() -> str:
        if not last:
            return "no info read"
        i = last[0]
        return (
            f"lag={i.lag} pending={i.pending} waiting={i.waiting} expired={i.expired} acked={i.acked} "
            f"dead_lettered={i.dead_lettered} next_offset={i.next_offset} consumers={i.consumers}"
        )

    return wait_for(attempt, timeout=timeout, message=f"subscription {name!r}", describe=describe)


# ----------------------------------------------------------------------------- asserting


def assert_stream(
    db: Database,
    stream: str,
    expected: Sequence[Any],
    *,
    start: int | None = None,
    select: Callable[[Record], Any] = lambda record: record.value,
) -> None:
    """Assert that ``stream``'s records (from ``start``) are exactly ``expected``.

    Each record is compared as ``select(record)`` (default: its value; e.g.
    ``select=lambda r: (r.key, r.value)``). On a mismatch raises ``AssertionError`` with a
    line diff of expected against actual, each line prefixed by its offset.
    """
    _check_db(db)
    _check_name(stream, "stream")
    if isinstance(expected, (str, bytes)) or not isinstance(expected, Sequence):
        raise InvalidArgument(f"expected is a list of values, not {type(expected).__name__}",
                              hint='e.g. assert_stream(db, "orders", [{"id": 1}])')
    _check_callable(select, "select")
    records = read_all(db, stream, start)
    actual = [select(r) for r in records]
    if actual == list(expected):
        return
    first = records[0].offset if records else (start or 0)

    def lines(values: Sequence[Any]) -> list[str]:
        return [f"{first + i}: {pprint.pformat(v, width=100, compact=True)}" for i, v in enumerate(values)]

    diff = "\n".join(difflib.unified_diff(
        lines(list(expected)), lines(actual), "expected", f"stream {stream!r}", lineterm="", n=2,
    ))
    raise AssertionError(
        f"stream {stream!r} holds {len(actual)} record(s), expected {len(expected)}:\n{diff}"
    )


def snapshot(db: Database, streams: Sequence[str] | None = None) -> dict[str, list[tuple[int, str | None, dict[str, str], Any]]]:
    """Every retained record of ``streams`` (default: all), comparable with ``==``.

    Maps each stream name to ``(offset, key, headers, value)`` tuples; timestamps are left
    out so that two runs of the same scenario compare equal. Each stream is read on its
    own: take it while nothing writes if the streams must agree with each other.
    """
    _check_db(db)
    if streams is not None and (isinstance(streams, (str, bytes)) or not isinstance(streams, Sequence)):
        raise InvalidArgument(f"streams is a list of stream names, not {type(streams).__name__}",
                              hint='e.g. snapshot(db, ["orders"])')
    names = [info.name for info in db.streams()] if streams is None else list(streams)
    return {
        name: [(r.offset, r.key, r.headers, r.value) for r in read_all(db, name)]
        for name in names
    }
