"""Wake-ups by construction: every public write that changes rows wakes blocked readers.

The engine's write scope derives the wake from SQLite's change count at commit, so no
write path can forget it. Each case blocks a waiter in another thread of this process
(``wakeup="notify"`` with the ``data_version`` fallback check and the poll slowed to
10 minutes: only the commit notification can wake it), runs one public write, and
requires the waiter to re-check before its own ``WAIT`` ran out — woken, not timed out. The deliberately quiet writes (a subscription's claim, a reader's move)
must not wake anyone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import sqlstream
from sqlstream import wakeup
from sqlstream.archive import import_archives
from sqlstream.archive.export import trim_exported
from sqlstream.storage.sqlite import SqliteDriver

WAIT = 30.0  # the waiter's own timeout; the fallback check and the poll are slower still

Op = Callable[[sqlstream.Database, Path], Callable[[], object]]  # prepare, return the write


def _stream(db: sqlstream.Database, n: int = 3, **options: object) -> sqlstream.Stream:
    stream = db.create_stream("s", **options)  # type: ignore[arg-type]
    stream.extend([b"x%d" % i for i in range(n)])
    return stream


def _held(db: sqlstream.Database) -> tuple[sqlstream.Subscription, list[int]]:
    _stream(db)
    sub = db.create_subscription("sub", "s")
    return sub, [r.offset for r in sub.fetch("c", 10)]


def op_append(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    stream = _stream(db)
    return lambda: stream.append(b"new")


def op_extend(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    stream = _stream(db)
    return lambda: stream.extend([b"a", b"b"])


def op_trim(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    _stream(db)
    return lambda: db.trim("s", 2)


def op_set_retention(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    _stream(db)
    return lambda: db.set_retention("s", max_count=1)


def op_seal(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    stream = _stream(db)
    return stream.seal


def op_delete_stream(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    _stream(db)
    return lambda: db.delete_stream("s")


def op_ack(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    sub, offsets = _held(db)
    return lambda: sub.ack(offsets[0])


def op_nack(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    sub, offsets = _held(db)
    return lambda: sub.nack(offsets[0])


def op_extend_deadline(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    sub, offsets = _held(db)
    return lambda: sub.extend_deadline(offsets[0], seconds=60)


def op_delete_subscription(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    _held(db)
    return lambda: db.delete_subscription("sub", force=True)


def op_maintain_retention(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    stream = _stream(db, 3, max_age=60)
    later = time.time() + 120
    db.engine.clock = lambda: later  # the records are now past max_age; no append trims them
    assert stream.info().over_limit is not None
    return lambda: db.maintain(vacuum=False, checkpoint=False, optimize=False)


def op_trim_exported(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    _stream(db)
    db.export("s", tmp / "arch", name="e")
    return lambda: trim_exported(db, "e")


def op_import(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    with sqlstream.open(tmp / "source.db") as source:
        _stream(source)
        source.export("s", tmp / "arch", name="e")
    return lambda: import_archives(db, "*.events", tmp / "arch")


def op_storage_delete(db: sqlstream.Database, tmp: Path) -> Callable[[], object]:
    driver = SqliteDriver(database=db)
    driver.put_object("dir/obj", b"payload")
    return lambda: driver.delete_object("dir/obj")


OPS: dict[str, Op] = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_row_changing_write_wakes_a_blocked_reader(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not wakeup.doorbell_supported():
        pytest.skip("needs the notify wake-up mode")
    monkeypatch.setattr(wakeup, "DEFAULT_FALLBACK_INTERVAL", 600.0)  # read when the file's notifier is made
    with sqlstream.open(tmp_path / "w.db", wakeup="notify", poll_interval=600) as db:
        write = OPS[name](db, tmp_path)
        checks: list[float] = []
        blocked = threading.Event()

        def check() -> bool | None:
            checks.append(time.monotonic())
            if len(checks) == 1:
                blocked.set()
                return None
            return True

        waiter = threading.Thread(target=db.engine.wait_until, args=(check, WAIT))
        waiter.start()
        try:
            assert blocked.wait(60)
            time.sleep(0.05)  # the waiter is asleep on the notifier by now
            write()
            waiter.join(WAIT + 30)
            assert len(checks) >= 2, f"{name} did not wake the blocked reader"
            assert checks[1] - checks[0] < WAIT, f"{name} did not wake the blocked reader: it ran into its timeout"
        finally:
            db.engine.notifier.bump()
            waiter.join(5)


def test_claims_and_reader_moves_do_not_wake_anyone(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "q.db") as db:
        _stream(db)
        sub = db.create_subscription("sub", "s")
        reader = db.reader("r", "s")
        generation = db.engine.notifier.generation
        assert len(sub.fetch("c", 2)) == 2  # a claim: deliveries rows, nobody waits on them
        assert len(reader.read(2)) == 2  # a reader's position moves
        reader.seek(0)
        assert db.engine.notifier.generation == generation
        sub.ack(0)  # an ack frees capacity a blocked fetch may wait for: it wakes
        assert db.engine.notifier.generation > generation
