"""``lag`` counts every record not delivered yet, those waiting behind their key included.

Under ``ordering="key"`` a record met while an earlier record of its key is pending is
taken past the delivery frontier and waits (``info().waiting``). It was not delivered, so
it is lag; it is not pending. A "drained?" check written from the docstring
(``lag == 0 and pending == 0``) must not stop while such records remain, and every place
that reports lag (``info()``, the ``subscription_stats`` view, ``sqlstream
subscriptions``, ``wait_for_subscription``) must agree.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream.cli import main
from sqlstream.testing import wait_for_subscription


def _same_key(db: sqlstream.Database, n: int = 3) -> sqlstream.Subscription:
    s = db.create_stream("s")
    s.extend(list(range(n)), key="k")
    return db.create_subscription("sub", "s", ordering="key")


def drained(info: sqlstream.SubscriptionInfo) -> bool:
    """The docstring's "everything delivered and acked"."""
    return info.lag == 0 and info.pending == 0


def test_records_waiting_behind_their_key_are_lag_not_pending(db: sqlstream.Database) -> None:
    sub = _same_key(db)
    assert sub.fetch("c1", 10).offsets == [0]  # 1 and 2 wait behind 0
    info = sub.info()
    assert (info.lag, info.pending, info.waiting) == (2, 1, 2)
    sub.ack(0)
    info = sub.info()
    assert (info.lag, info.pending, info.waiting) == (2, 0, 2)  # was lag=0: "drained" too early
    assert not drained(info)
    assert sub.fetch("c1", 10).offsets == [1]
    sub.ack(1)
    assert sub.fetch("c1", 10).offsets == [2]
    assert (sub.info().lag, sub.info().pending) == (0, 1)
    sub.ack(2)
    assert drained(sub.info())


def test_every_report_of_lag_agrees(db: sqlstream.Database, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _same_key(db, 4)
    sub.fetch("c1", 10)
    sub.ack(0)
    info = sub.info()
    assert (info.lag, info.pending, info.waiting) == (3, 0, 3)
    # The view, through sqlstream and through Python's sqlite3 (what Datasette reads).
    view = "SELECT lag, pending, waiting, consumers, oldest_pending_age FROM subscription_stats"
    assert db.query(view).rows == [(3, 0, 3, 0, None)]
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute(view).fetchall() == [(3, 0, 3, 0, None)]
        assert conn.execute("SELECT count(*) FROM pending_deliveries").fetchall() == [(0,)]
    finally:
        conn.close()
    # The CLI.
    capsys.readouterr()
    assert main(["--db", db.path, "subscriptions", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["lag"], row["pending"]) == (3, 0)
    # The test helper written from the docstring waits on.
    with pytest.raises(AssertionError, match="lag=3 pending=0 waiting=3"):
        wait_for_subscription(db, "sub", timeout=0.05)


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=25),
    steps=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 6)), min_size=1, max_size=30),
)
def test_lag_is_the_records_never_delivered(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str | None], steps: list[tuple[int, int]]
) -> None:
    """Oracle: the offsets the test saw delivered. At every step lag is what remains, and
    ``drained`` holds exactly when everything was delivered and acked."""
    path = tmp_path_factory.mktemp("lag") / "l.db"
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        for i, k in enumerate(keys):
            s.append(i, key=k)
        sub = db.create_subscription("sub", "s", ordering="key")
        delivered: set[int] = set()
        held: list[int] = []
        for fetch_n, ack_n in steps + [(len(keys), len(keys))] * (len(keys) + 1):
            got = sub.fetch("c", fetch_n).offsets
            assert not delivered & set(got)  # nothing was acked and redelivered
            delivered |= set(got)
            held += got
            sub.ack(*held[:ack_n])
            del held[:ack_n]
            info = sub.info()
            assert info.lag == len(keys) - len(delivered)
            assert info.pending == len(held)
            assert drained(info) == (len(delivered) == len(keys) and not held)
        assert drained(sub.info())
