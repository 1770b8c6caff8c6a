"""Large payloads out of the row (migration 15): the layout, its migration, and no orphans.

A payload longer than ``records.inline_max`` (906 bytes at a 4,096-byte page) is stored in
``payloads`` under its record's (stream_id, offset), and its ``chunks`` row keeps ``data``
NULL; reads, ``read_bytes``, the byte accounting, ``check``, export and the ``records`` view see the value wherever it is.
An older file is converted by the migration with offsets, positions and commit numbers
unchanged; deleting records (trim, retention, a deleted stream, plain SQL) deletes their
payload rows in the same statement.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import apsw
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sqlstream
from sqlstream import connection as cx
from sqlstream.records import INLINE_MAX, inline_max

# Sizes on both sides of the limit, and well past a page.
SIZES = (0, 1, 100, INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1, 4000, 5000, 65536)


def _value(kind: str, size: int, salt: int) -> Any:
    """A value whose stored payload is exactly ``size`` bytes (json: at least 2)."""
    if kind == "bytes":
        return bytes((salt + i) % 256 for i in range(size))
    if kind == "text":
        return ("é" * (size // 2) + "t" * (size % 2))  # 2-byte characters: bytes != characters
    return {"p": "j" * max(size - 8, 0)}  # {"p":"…"} is 8 bytes around the string


def _layout(db: sqlstream.Database) -> tuple[int, int, int]:
    """(records stored in the row, records stored out of it, payload rows)."""
    inline = db.query("SELECT count(*) FROM chunks WHERE data IS NOT NULL").rows[0][0]
    out = db.query("SELECT count(*) FROM chunks WHERE data IS NULL").rows[0][0]
    return inline, out, db.query("SELECT count(*) FROM payloads").rows[0][0]


def test_the_limit_is_the_index_cell_local_size_less_room_for_the_other_columns() -> None:
    # SQLite keeps (U - 12) * 64 / 255 - 23 bytes of an index-b-tree cell on its page.
    assert inline_max(4096) == 1002 - 96 == INLINE_MAX
    assert inline_max(65536) > inline_max(4096) > inline_max(1024)


@pytest.mark.parametrize("kind", ["bytes", "text", "json"])
def test_values_round_trip_on_both_sides_of_the_limit(db: sqlstream.Database, kind: str) -> None:
    s = db.create_stream("s")
    values = [_value(kind, size, i) for i, size in enumerate(SIZES) if kind != "json" or size >= 8]
    offsets = [s.append(v, key=f"k{i}", headers={"h": str(i)}) for i, v in enumerate(values[:3])]
    offsets += list(s.extend(values[3:]))
    records = s.read(0, 100)
    assert [r.value for r in records] == values
    assert [r.offset for r in records] == offsets == list(range(len(values)))
    sizes = [len(v if isinstance(v, bytes) else (v if isinstance(v, str) else sqlstream.records.encode_value(v)[1])
                 .encode()) for v in values]
    assert [r.position for r in records] == [sum(sizes[:i]) for i in range(len(values))]
    assert s.info().byte_length == sum(sizes)
    # The layout: exactly the payloads above the limit are out of the row.
    big = sum(1 for n in sizes if n > INLINE_MAX)
    assert big > 0
    assert _layout(db) == (len(values) - big, big, big)
    # The byte log crosses both kinds of record.
    log = b"".join(v if isinstance(v, bytes) else (v if isinstance(v, str) else
                   sqlstream.records.encode_value(v)[1]).encode() for v in values)
    assert s.read_bytes(0, len(log)).data == log
    assert s.read_bytes(sizes[0] + 3, 5000).data == log[sizes[0] + 3: sizes[0] + 5003]
    # The records view shows every value as stored, with its size; stream_stats the bytes.
    rows = db.query("SELECT data, size, typeof(data) FROM records ORDER BY offset").rows
    assert [r[1] for r in rows] == sizes
    assert {r[2] for r in rows} == ({"blob"} if kind == "bytes" else {"text"})
    assert db.query("SELECT bytes FROM stream_stats").rows == [(sum(sizes),)]
    assert db.check().ok


def test_a_json_value_out_of_the_row_is_queryable_in_sql(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.append({"id": 7, "blob": "x" * 70_000})
    assert _layout(db) == (0, 1, 1)
    assert db.query("SELECT json_extract(data, '$.id') FROM records").rows == [(7,)]
    assert db.query("SELECT data FROM chunks").rows == [(None,)]


def test_retention_trim_delete_and_plain_sql_delete_take_the_payloads_along(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend([b"x" * 5000, b"y" * 10, b"z" * 5000, b"w" * 5000])
    assert _layout(db) == (1, 3, 3)
    s.trim(2)
    assert _layout(db) == (0, 2, 2)
    assert [r.value[:1] for r in s.read(2, 10)] == [b"z", b"w"]
    s.set_retention(max_bytes=6000)  # keeps the newest record only
    assert _layout(db) == (0, 1, 1) and s.read(3, 10)[0].value == b"w" * 5000
    db.create_stream("t").append(b"q" * 9000)
    db.delete_stream("s")
    assert _layout(db) == (0, 1, 1)
    conn = apsw.Connection(str(db.path))  # another tool, by hand
    try:
        conn.execute("DELETE FROM chunks WHERE stream_id = (SELECT id FROM streams WHERE name = 't')")
    finally:
        conn.close()
    assert _layout(db) == (0, 0, 0)


def test_check_names_a_missing_payload_and_an_orphan_payload_row(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend([b"a" * 5000, b"b" * 5000])
    assert db.check().ok
    conn = apsw.Connection(str(db.path))
    try:
        conn.execute("DELETE FROM payloads WHERE offset = 0")
        conn.execute("INSERT INTO payloads (id, stream_id, offset, data) VALUES (1000, 1, 99, x'00')")
    finally:
        conn.close()
    problems = [p.message for p in db.check().problems]
    assert any("payload row is missing" in m for m in problems), problems
    assert any("belong to no record" in m for m in problems), problems


def _damage(db: sqlstream.Database, *statements: str) -> None:
    """Run SQL on the file outside sqlstream, as a foreign tool would."""
    conn = apsw.Connection(str(db.path))
    try:
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["bytes", "text", "json"])
def test_a_record_whose_payload_row_is_gone_reads_as_damaged(db: sqlstream.Database, tmp_path: Path, kind: str) -> None:
    # SQL outside sqlstream deleted the payloads row of record 1: read() and read_raw()
    # raised TypeError (len of None), read_bytes() and export AttributeError, a Kafka
    # fetch TypeError. Now each raises DamagedRecord naming the record (the reads before
    # it return what precedes it), and check names it.
    from sqlstream.errors import DamagedRecord

    s = db.create_stream("s", metadata={"content_type": "application/json"} if kind == "json" else None)
    s.extend([_value(kind, 10, 0), _value(kind, 5000, 1), _value(kind, 10, 2)])
    assert _layout(db) == (2, 1, 1)
    _damage(db, "DELETE FROM payloads WHERE offset = 1")
    for read in (lambda: s.read(1, 10), lambda: s.read_raw(1, 10), lambda: s.read_bytes(0, 20),
                 lambda: db.export("s", str(tmp_path / "out"))):
        with pytest.raises(DamagedRecord) as caught:
            read()
        assert (caught.value.stream, caught.value.offset) == ("s", 1)
        assert "payload row is missing" in str(caught.value)
    assert [r.offset for r in s.read(0, 10)] == [0]
    assert s.read_raw(0, 10).next_offset == 1
    assert [r.offset for r in s.read(2, 10)] == [2]
    assert [p.offset for p in db.check().problems] == [1]


def test_a_subscription_sets_aside_a_record_whose_payload_row_is_gone(db: sqlstream.Database) -> None:
    # fetch() sets a damaged record aside (to the dead-letter stream, as bytes): copying
    # one whose payload row was gone raised AttributeError (None has no decode).
    s = db.create_stream("s")
    s.extend([b"a", b"b" * 5000, b"c"])
    sub = db.create_subscription("g", "s", start="earliest", dead_letter="dlq", max_deliveries=5)
    _damage(db, "DELETE FROM payloads WHERE offset = 1")
    batch = sub.fetch("w", max_records=10)
    assert batch.offsets == [0, 2] and sub.info().dead_lettered == 1
    (copy,) = db.stream("dlq").read(0, 10)
    assert copy.value == b"" and copy.headers["sqlstream.source_offset"] == "1"


def test_a_kafka_fetch_ends_before_a_record_whose_payload_row_is_gone(db: sqlstream.Database) -> None:
    pytest.importorskip("kio", reason="the kafka extra (kio needs Python 3.11+)")
    from sqlstream.errors import DamagedRecord
    from sqlstream.kafka.store import KafkaStore

    store = KafkaStore(db)
    store.topic("k", create=True)
    db.stream("k").extend([b"a", b"b" * 5000, b"c"])
    _damage(db, "DELETE FROM payloads WHERE offset = 1")
    got = store.read("k", 0, 1 << 20)
    assert got is not None and [r[0] for r in got.records] == [0]
    with pytest.raises(DamagedRecord):
        store.read("k", 1, 1 << 20)
    got = store.read("k", 2, 1 << 20)
    assert got is not None and [r[3] for r in got.records] == [b"c"]


def test_check_reads_a_text_payload_row_written_as_text_by_foreign_sql(db: sqlstream.Database) -> None:
    # `X'FF' || zeroblob(n)` is TEXT in SQLite: such a payload row came back from check's
    # query as a str apsw could not decode, and check raised UnicodeDecodeError.
    s = db.create_stream("s")
    s.append("x" * 5000)
    _damage(db, "UPDATE payloads SET data = X'FFFE' || zeroblob(4998) WHERE offset = 0")
    problems = db.check().problems
    assert (problems[0].offset, "not valid UTF-8" in problems[0].message) == (0, True), problems


# --------------------------------------------------------------------------- migration


def _as_version_14(src: str, dst: str) -> None:
    """Write ``dst`` as the code before migration 15 would have: schema version 14 built
    from migrations 1..14 as plain SQL, holding every row of ``src`` (a current file) in
    the columns version 14 has, each record's payload in its ``chunks`` row."""
    plan = cx.load_migrations()
    conn = apsw.Connection(dst)
    try:
        conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hashlib.sha256(
            str(v).encode()).hexdigest(), 1)
        with conn:
            for version, _name, sql in plan[:14]:
                for _ in conn.execute(sql):
                    pass
            conn.execute("PRAGMA user_version = 14")
        conn.execute("PRAGMA journal_mode = wal")
        conn.execute("ATTACH ? AS new", (src,))
        with conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            for table in tables:
                source = "records" if table == "chunks" else table  # the view: every value in `data`
                have = {r[1] for r in conn.execute(f"PRAGMA new.table_info({source})")}
                cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})") if r[1] in have)
                conn.execute(f"DELETE FROM main.{table}")  # rows the migrations seeded (counters)
                if cols:  # a table later migrations dropped (its rows moved elsewhere) stays empty
                    conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM new.{source}")
        conn.execute("DETACH new")
    finally:
        conn.close()


def _state(db: sqlstream.Database) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for info in db.streams():
        s = db.stream(info.name)
        records = s.read(info.first_offset, 1000)
        out[info.name] = (
            (info.first_offset, info.next_offset, info.first_position, info.byte_length),
            [tuple(r) for r in records],
            s.read_bytes(info.first_position, info.byte_length - info.first_position).data if info.byte_length > info.first_position else b"",
        )
    out["stats"] = db.query("SELECT * FROM stream_stats ORDER BY name").rows
    out["subscriptions"] = db.query("SELECT name, stream, delivered_up_to, lag, pending, acked_frontier, acked "
                                    "FROM subscription_stats ORDER BY name").rows
    out["deliveries"] = db.query("SELECT subscription_id, offset, consumer, attempts FROM deliveries "
                                 "ORDER BY subscription_id, offset").rows
    out["txn"] = db.query("SELECT txn FROM last_txn").rows
    return out


def test_migration_15_converts_an_older_file_with_offsets_positions_and_txns_unchanged(tmp_path: Path) -> None:
    current, path = str(tmp_path / "current.db"), str(tmp_path / "old.db")
    with sqlstream.open(current) as db:
        a = db.create_stream("a")
        for i, size in enumerate(SIZES * 2):
            kind = ("bytes", "text", "json")[i % 3]
            a.append(_value(kind, max(size, 8) if kind == "json" else size, i),
                     key=None if i % 4 == 0 else f"key-{i % 3}", headers={} if i % 2 else {"n": str(i)})
        b = db.create_stream("b")
        b.extend([_value("bytes", size, i) for i, size in enumerate(SIZES)])
        b.trim(4)  # a trimmed stream: first_offset and first_position past 0
        db.create_stream("empty")
        sub = db.create_subscription("billing", "a", start="earliest")
        fetched = sub.fetch("w1", max_records=5)
        sub.ack(fetched[0].offset)
        before = _state(db)
    _as_version_14(current, path)
    conn = apsw.Connection(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(14,)]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'payloads'").fetchall() == [(0,)]
        big_before = conn.execute("SELECT count(*) FROM chunks WHERE length(CAST(data AS BLOB)) > ?",
                                  (INLINE_MAX,)).fetchall()[0][0]
    finally:
        conn.close()
    assert big_before > 0
    with sqlstream.open(path) as db:
        assert db.query("PRAGMA user_version").rows == [(cx.schema_version(),)]
        assert _state(db) == before
        _inline, out, payloads = _layout(db)
        assert out == payloads == big_before
        assert db.check().ok
        # The file goes on: new appends continue the numbering, the subscription its work.
        offset = db.stream("a").append(b"n" * 70_000)
        assert offset == before["a"][0][1]
        assert db.stream("a").read(offset, 1)[0].txn == before["txn"][0][0] + 1
        assert [r.offset for r in db.subscription("billing").fetch("w2", max_records=100)][:1] == [5]


def test_an_application_table_named_records_stops_the_upgrade_with_advice_and_no_change(tmp_path: Path) -> None:
    # The SQLAlchemy outbox puts the application's tables in the same file.
    current, path = str(tmp_path / "current.db"), str(tmp_path / "app.db")
    with sqlstream.open(current) as db:
        db.create_stream("s").append(b"x" * 5000)
    _as_version_14(current, path)
    conn = apsw.Connection(path)
    try:
        conn.execute("CREATE TABLE Records (id INTEGER PRIMARY KEY, note TEXT)")
        conn.execute("INSERT INTO records (note) VALUES ('mine')")
    finally:
        conn.close()
    with pytest.raises(sqlstream.errors.SchemaVersionError, match="'records'") as caught:
        sqlstream.open(path)
    assert "ALTER TABLE records RENAME TO app_records" in (caught.value.hint or "")
    conn = apsw.Connection(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchall() == [(14,)]
        assert conn.execute("SELECT length(data) FROM chunks").fetchall() == [(5000,)]
        conn.execute("ALTER TABLE records RENAME TO app_records")
    finally:
        conn.close()
    with sqlstream.open(path) as db:
        assert db.stream("s").read(0, 1)[0].value == b"x" * 5000
        assert db.query("SELECT note FROM app_records").rows == [("mine",)]


# --------------------------------------------------------------------------- model


class PayloadModel(RuleBasedStateMachine):
    """Streams of small and big records against a list per stream; after every step the
    database holds the model's records and exactly one payload row per big one."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlstream-payloads-")
        self.db = sqlstream.open(str(Path(self.dir) / "m.db"))
        self.model: dict[str, tuple[int, list[bytes]]] = {}  # name -> (first offset, values)
        self.salt = 0

    def teardown(self) -> None:
        try:
            assert self.db.check().ok
        finally:
            self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _new(self, big: bool) -> bytes:
        self.salt += 1
        return bytes([self.salt % 251]) * (INLINE_MAX + 1 + self.salt % 3000 if big else self.salt % 200)

    @rule(name=st.sampled_from(["a", "b"]))
    def create(self, name: str) -> None:
        if name not in self.model:
            self.db.create_stream(name)
            self.model[name] = (0, [])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), bigs=st.lists(st.booleans(), min_size=1, max_size=5))
    def append(self, data: st.DataObject, bigs: list[bool]) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        values = [self._new(b) for b in bigs]
        s = self.db.stream(name)
        if len(values) == 1:
            s.append(values[0])
        else:
            s.extend(values)
        self.model[name][1].extend(values)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), drop=st.integers(0, 6))
    def trim(self, data: st.DataObject, drop: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        first, values = self.model[name]
        drop = min(drop, len(values))
        self.db.stream(name).trim(first + drop, force=True)
        self.model[name] = (first + drop, values[drop:])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.db.delete_stream(name, force=True)
        del self.model[name]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), bigs=st.lists(st.booleans(), min_size=1, max_size=3))
    def rolled_back(self, data: st.DataObject, bigs: list[bool]) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        with pytest.raises(RuntimeError), self.db.transaction():
            self.db.stream(name).extend([self._new(b) for b in bigs])
            raise RuntimeError("roll back")

    @invariant()
    def matches_the_model(self) -> None:
        for name, (first, values) in self.model.items():
            records = self.db.stream(name).read(first, 1000)
            assert [r.value for r in records] == values
            assert [r.offset for r in records] == list(range(first, first + len(values)))
            info = self.db.stream(name).info()
            assert info.retained_bytes == sum(len(v) for v in values)
        big = sum(1 for _f, values in self.model.values() for v in values if len(v) > INLINE_MAX)
        assert _layout(self.db)[1:] == (big, big)
        orphans = self.db.query("SELECT count(*) FROM payloads p WHERE NOT EXISTS "
                                "(SELECT 1 FROM chunks c WHERE c.stream_id = p.stream_id AND c.offset = p.offset "
                                "AND c.data IS NULL)").rows
        assert orphans == [(0,)]


PayloadModel.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
test_payload_model = PayloadModel.TestCase
