"""sqlstream.sqlalchemy: Core tables that match the migrated schema, and the transactional outbox.

The outbox tests write an application row and a record in one SQLAlchemy transaction and
check that they commit together, roll back together (also a savepoint), die together
when the process is SIGKILLed before COMMIT, interleave correctly with a concurrent
sqlstream writer, and that a sqlstream reader blocked in another process wakes right
after the commit.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers_subscriptions import spawn

sqlalchemy = pytest.importorskip("sqlalchemy")

import sqlstream  # noqa: E402
import sqlstream.sqlalchemy as ssa  # noqa: E402
from sqlstream import errors  # noqa: E402


@pytest.fixture
def engine(db_path: str) -> Any:
    eng = ssa.create_engine(db_path)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
    yield eng
    eng.dispose()


def app_rows(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT item FROM orders ORDER BY id")]


# --------------------------------------------------------------------------- tables


def _shape(md: Any) -> dict[str, Any]:
    out = {}
    for name, table in md.tables.items():
        if name == "sqlite_sequence" or name == "orders":
            continue
        out[name] = {
            # SQLite reports an INTEGER PRIMARY KEY as nullable; a key is never NULL in practice.
            "columns": [(c.name, type(c.type).__name__.upper(), c.nullable and not c.primary_key, c.primary_key)
                        for c in table.columns],
            "foreign_keys": sorted(
                (fk.parent.name, fk.column.table.name, fk.column.name, (fk.constraint.ondelete or "").upper())
                for fk in table.foreign_keys
            ),
            "indexes": sorted((i.name, tuple(c.name for c in i.columns)) for i in table.indexes),
        }
    return out


def test_tables_match_a_migrated_database(db: sqlstream.Database) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{db.path}")
    try:
        reflected = sqlalchemy.MetaData()
        reflected.reflect(engine)
        views = sqlalchemy.MetaData()
        views.reflect(engine, views=True)
    finally:
        engine.dispose()
    ours, theirs = _shape(ssa.metadata), _shape(reflected)
    # SQLAlchemy's SQLite reflection does not read ON DELETE back; SQLite itself does.
    for name, shape in theirs.items():
        shape["foreign_keys"] = sorted(
            (row[3], row[2], row[4], row[6] if row[6] != "NO ACTION" else "")
            for row in db.query(f"PRAGMA foreign_key_list({name})").rows
        )
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name] == theirs[name], name
    for view in ssa.views.tables.values():
        assert [c.name for c in views.tables[view.name].columns] == [c.name for c in view.columns], view.name


def test_the_tables_query_like_any_core_table(db: sqlstream.Database, engine: Any) -> None:
    db.create_stream("events").extend([{"n": 1}, {"n": 2}])
    stmt = (
        sqlalchemy.select(ssa.chunks.c.offset, sqlalchemy.func.json_extract(ssa.chunks.c.data, "$.n"))
        .join(ssa.streams, ssa.streams.c.id == ssa.chunks.c.stream_id)
        .where(ssa.streams.c.name == "events")
        .order_by(ssa.chunks.c.offset)
    )
    with engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(stmt)] == [(0, 1), (1, 2)]
        stats = conn.execute(sqlalchemy.select(ssa.stream_stats.c.records)).scalar_one()
    assert stats == 2


# --------------------------------------------------------------------------- outbox


def test_outbox_commits_with_the_application(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO orders (item) VALUES ('book')")
        assert ssa.append(conn, "events", {"order": "book"}, key="k", headers={"h": "v"}) == 0
        assert ssa.extend(conn, "events", ["a", b"b"]) == [1, 2]
        assert events.info().next_offset == 0  # nobody sees it before the commit
    assert app_rows(engine) == ["book"]
    records = events.read(0, 10)
    assert [r.value for r in records] == [{"order": "book"}, "a", b"b"]
    assert records[0].key == "k" and records[0].headers == {"h": "v"}
    assert len({r.txn for r in records}) == 1  # one transaction, one txn number
    assert events.append("native") == 3
    assert events.read(3)[0].txn > records[0].txn
    assert [r.position for r in events.read(0, 10)] == [0, 16, 17, 18]
    assert db.check().ok


def test_outbox_rollback_leaves_nothing(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events")
    events.append("before")
    txn_before = db.query("SELECT value FROM counters").rows[0][0]
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO orders (item) VALUES ('book')")
            ssa.append(conn, "events", "rolled back")
            raise RuntimeError
    assert app_rows(engine) == []
    assert events.info().next_offset == 1
    assert db.query("SELECT value FROM counters").rows[0][0] == txn_before
    assert events.append("after") == 1  # no offset was burned


def test_outbox_savepoint_rollback_keeps_the_txn_rules(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events")
    with engine.begin() as conn:
        with pytest.raises(RuntimeError):
            with conn.begin_nested():
                ssa.append(conn, "events", "gone")  # assigns the txn number inside the savepoint
                raise RuntimeError
        ssa.append(conn, "events", "kept")
        ssa.append(conn, "events", "kept too")
    events.append("native")
    records = events.read(0, 10)
    assert [r.value for r in records] == ["kept", "kept too", "native"]
    assert records[0].txn == records[1].txn < records[2].txn


def test_outbox_dedup_and_retention(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events", max_count=2)
    with engine.begin() as conn:
        assert ssa.append(conn, "events", "a", dedup_id="k") == 0
        assert ssa.append(conn, "events", "a", dedup_id="k") == 0
        assert ssa.extend(conn, "events", ["b", "c", "d"], dedup_ids=["x", None, "x"]) == [1, 2, 1]
    assert events.append("e", dedup_id="k") == 0  # the same dedup table as sqlstream's own appends
    info = events.info()
    assert (info.first_offset, info.next_offset) == (1, 3)
    assert db.check().ok


def test_outbox_errors_are_sqlstream_errors(db: sqlstream.Database, engine: Any) -> None:
    db.create_stream("events")
    sealed = db.create_stream("sealed")
    sealed.seal()
    with engine.begin() as conn:
        with pytest.raises(errors.StreamNotFound):
            ssa.append(conn, "missing", 1)
        with pytest.raises(errors.StreamSealed):
            ssa.append(conn, "sealed", 1)
        with pytest.raises(errors.ConcurrencyError):
            ssa.append(conn, "events", 1, expect_offset=5)
        with pytest.raises(errors.InvalidValue):
            ssa.append(conn, "events", None)
    with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        with pytest.raises(errors.InvalidArgument, match="autocommit"):
            ssa.append(conn, "events", 1)
    assert db.stream("events").info().next_offset == 0
    with pytest.raises(errors.InvalidArgument, match="SQLAlchemy Connection"):
        ssa.append(engine, "events", 1)


def test_outbox_refuses_a_second_sqlite_library(db: sqlstream.Database) -> None:
    """pysqlite links another copy of SQLite: together with sqlstream's it corrupts the file."""
    db.create_stream("events")
    engine = sqlalchemy.create_engine(f"sqlite:///{db.path}")
    try:
        with engine.connect() as conn:
            with pytest.raises(errors.InvalidArgument, match="sqlite\\+sqlstream"):
                ssa.append(conn, "events", 1)
    finally:
        engine.dispose()
    url_engine = sqlalchemy.create_engine(f"sqlite+sqlstream:///{db.path}")
    try:
        with url_engine.connect() as conn:
            assert ssa.append(conn, "events", 2) == 0
            conn.commit()
    finally:
        url_engine.dispose()
    assert [r.value for r in db.stream("events").read()] == [2]


def test_outbox_beside_a_concurrent_sqlstream_writer(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events")
    stop = threading.Event()
    native: list[int] = []

    def writer() -> None:
        with sqlstream.open(db.path) as other:
            stream = other.stream("events")
            while not stop.is_set():
                native.append(stream.append({"from": "sqlstream"}))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        outbox = []
        for i in range(100):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO orders (item) VALUES (?)", (f"o{i}",))
                outbox.append(ssa.append(conn, "events", {"from": "outbox", "i": i}))
                if i % 10 == 0:
                    time.sleep(0.002)  # hold the write lock a moment: the other writer queues
    finally:
        stop.set()
        thread.join()
    records = events.read(0, 100_000)
    assert [r.offset for r in records] == list(range(len(native) + 100))
    assert sorted(outbox + native) == [r.offset for r in records]
    assert len(app_rows(engine)) == 100
    txns = [r.txn for r in records]
    assert txns == sorted(txns) and len(set(txns)) == len(txns)  # one per transaction, commit order
    assert db.check().ok


def test_an_outbox_write_inside_this_threads_db_transaction_fails_at_once(db_path: str) -> None:
    """The SQLAlchemy connection would wait for the write lock this thread's sqlstream
    transaction holds until busy_timeout (30 s here), then blame another connection: the
    busy handler sees the lock is this thread's own and refuses before waiting."""
    with sqlstream.open(db_path) as db:
        db.create_stream("events")
        engine = ssa.create_engine(db_path, busy_timeout=30)
        try:
            with db.transaction():
                db.stream("events").append(b"from sqlstream")
                with engine.connect() as conn:
                    with pytest.raises(errors.LockTimeout, match="holds a write transaction of a Database") as caught:
                        ssa.append(conn, "events", b"from the outbox")
                    conn.rollback()
            assert "commit the Database's transaction" in (caught.value.hint or "")
            with engine.begin() as conn:  # after the block the outbox writes as usual
                ssa.append(conn, "events", b"after")
        finally:
            engine.dispose()
        assert [r.value for r in db.stream("events").read()] == [b"from sqlstream", b"after"]


def test_a_sqlstream_write_inside_this_threads_outbox_transaction_fails_at_once(db_path: str) -> None:
    """The other way round: a sqlstream append of the thread whose SQLAlchemy transaction
    holds the write lock is refused before it waits for it."""
    with sqlstream.open(db_path, busy_timeout=30) as db:
        events = db.create_stream("events")
        engine = ssa.create_engine(db_path)
        try:
            with engine.begin() as conn:
                ssa.append(conn, "events", b"from the outbox")
                with pytest.raises(errors.LockTimeout, match="holds a write transaction of a SQLAlchemy connection"):
                    events.append(b"from sqlstream")
            events.append(b"after")  # the outbox committed: the lock is free again
            # Another thread's open outbox transaction is waited for, not refused.
            with engine.begin() as conn:
                ssa.append(conn, "events", b"outbox, held")
                waiter = threading.Thread(target=lambda: events.append(b"waited"))
                waiter.start()
                waiter.join(0.2)
                assert waiter.is_alive()  # still waiting for the lock this thread holds
            waiter.join()
        finally:
            engine.dispose()
        assert [r.value for r in events.read()] == [b"from the outbox", b"after", b"outbox, held", b"waited"]


CRASHER = r"""
import sys, time
import sqlstream.sqlalchemy as ssa
engine = ssa.create_engine(sys.argv[1])
with engine.begin() as conn:
    conn.exec_driver_sql("INSERT INTO orders (item) VALUES ('doomed')")
    ssa.append(conn, "events", {"order": "doomed"})
    print("written", flush=True)
    time.sleep(60)  # SIGKILLed here, before COMMIT
"""


@pytest.mark.multiprocess
def test_sigkill_between_the_write_and_the_commit_leaves_neither(db: sqlstream.Database, engine: Any) -> None:
    events = db.create_stream("events")
    events.append("before")
    for _ in range(2):
        proc = spawn(CRASHER, db.path, stdout=-1, stderr=-1)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    assert app_rows(engine) == []
    assert events.info().next_offset == 1
    assert events.append("after") == 1
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO orders (item) VALUES ('kept')")
        assert ssa.append(conn, "events", "outbox") == 2
    assert app_rows(engine) == ["kept"]
    assert db.check().ok


WAITER = r"""
import sys, time, sqlstream
from sqlstream import wakeup
# The fallback data_version check is slowed past the read's timeout: only the doorbell
# the driver's commit rings can wake the read before it times out.
wakeup.DEFAULT_FALLBACK_INTERVAL = 600.0
with sqlstream.open(sys.argv[1], wakeup="notify") as db:
    stream = db.stream("events")
    for i in range(int(sys.argv[2])):
        print("ready", flush=True)
        started = time.monotonic()
        records = stream.read(i, 1, timeout=30)
        print("woken" if records and time.monotonic() - started < 30 else "timeout", flush=True)
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_blocked_reader_in_another_process_wakes_after_the_commit(db: sqlstream.Database, engine: Any) -> None:
    db.create_stream("events")
    rounds = 5
    proc = spawn(WAITER, db.path, str(rounds), stdout=-1, stderr=-1)
    try:
        assert proc.stdout is not None
        for i in range(rounds):
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.3)  # let it block
            with engine.begin() as conn:
                ssa.append(conn, "events", i)
            # Without the doorbell the reader would sit out its timeout.
            assert proc.stdout.readline().strip() == "woken"
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_blocked_reader_in_this_process_wakes_at_once(db: sqlstream.Database, engine: Any) -> None:
    """The driver's commit tells this process's waiters itself, before it returns (the
    notifier's generation moved), instead of leaving them to the watcher's polling."""
    events = db.create_stream("events")
    woke: list[float] = []
    started = time.monotonic()

    def wait() -> None:
        if events.read(0, 1, timeout=30):
            woke.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    generation = db.engine.notifier.generation
    with engine.begin() as conn:
        ssa.append(conn, "events", "x")
    assert db.engine.notifier.generation > generation
    thread.join(60)
    assert woke and woke[0] - started < 30  # woken, not at the end of its timeout


def test_the_driver_runs_ordinary_core_and_orm_code(db_path: str) -> None:
    """sqlite+sqlstream is a full SQLAlchemy driver: DDL, ORM unit of work, RETURNING, rowcounts."""
    from sqlalchemy.orm import DeclarativeBase, Session

    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "app_orders"
        id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True)
        item = sqlalchemy.Column(sqlalchemy.String, nullable=False)
        qty = sqlalchemy.Column(sqlalchemy.Integer, nullable=False, default=1)

    engine = ssa.create_engine(db_path)
    try:
        Base.metadata.create_all(engine)
        with sqlstream.open(db_path) as db:
            db.create_stream("orders")
        with Session(engine) as session:
            session.add_all([Order(item="book"), Order(item="pen", qty=3)])
            session.flush()
            assert ssa.append(session.connection(), "orders", {"orders": 2}) == 0
            session.commit()
        with Session(engine) as session, session.begin():
            pen = session.scalars(sqlalchemy.select(Order).where(Order.item == "pen")).one()
            pen.qty += 1
        with engine.begin() as conn:
            result = conn.execute(sqlalchemy.update(Order.__table__).where(Order.__table__.c.qty > 0).values(qty=9))
            assert result.rowcount == 2
            assert conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(Order.__table__)).scalar() == 2
            assert conn.execute(sqlalchemy.select(Order.__table__).where(Order.__table__.c.id == 99)).all() == []
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                with conn.begin_nested():
                    conn.execute(sqlalchemy.insert(Order.__table__).values(id=1, item="dup"))
            got = conn.execute(
                sqlalchemy.insert(Order.__table__).values(item="ink").returning(Order.__table__.c.id)
            ).scalar_one()
            assert got == 3
        assert sqlalchemy.inspect(engine).has_table("app_orders")
    finally:
        engine.dispose()
