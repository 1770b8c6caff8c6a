"""A batch append's rows as stored (issue 23, item 3).

A batch binds its stream, timestamp, txn and first offset once per INSERT and writes row
k's offset as ``first + k`` (``append.insert_batch_sql``); only position, key, headers,
content type and data are bound per row, or only position and data when the INSERT's rows
share key, headers and content type (``append.insert_shared_sql``). These tests read the rows back from ``chunks``
and ``payloads`` and hold every column to what one append at a time would have stored,
across the statement boundaries (``ROWS_PER_INSERT``) and with payloads stored out of the
row in between.
"""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import sqlstream
from sqlstream.append import ROWS_PER_INSERT, SharedRows, insert_batch_sql, insert_shared_sql
from sqlstream.errors import InvalidValue, PayloadTooLarge
from sqlstream.records import INLINE_MAX

values = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=INLINE_MAX + 1, max_size=INLINE_MAX + 50),  # stored in `payloads`
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


_examples = itertools.count()


def _stored(db: sqlstream.Database, name: str) -> list[tuple[Any, ...]]:
    return db.query(
        "SELECT c.offset, c.position, c.timestamp, c.txn, c.key, c.headers, c.content_type, c.data IS NULL, "
        "(SELECT count(*) FROM payloads p WHERE p.stream_id = c.stream_id AND p.offset = c.offset) "
        "FROM chunks c JOIN streams s ON s.id = c.stream_id WHERE s.name = ? ORDER BY c.offset",
        (name,),
    ).rows


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.integers(0, 3),
    batch=st.lists(values, min_size=1, max_size=ROWS_PER_INSERT + 30),
    key=st.one_of(st.none(), st.text(max_size=4)),
    headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
)
def test_a_batch_stores_the_same_columns_as_appends_one_at_a_time(
    db: sqlstream.Database, before: int, batch: list[object], key: str | None, headers: dict[str, str] | None
) -> None:
    _same_as_one_at_a_time(db, before, batch, key, headers)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.integers(0, 3),
    batch=st.lists(
        st.one_of(st.binary(max_size=40), st.binary(min_size=INLINE_MAX + 1, max_size=INLINE_MAX + 50)),
        min_size=1, max_size=2 * ROWS_PER_INSERT + 30,
    ),
    key=st.one_of(st.none(), st.text(max_size=4)),
    headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
)
def test_a_batch_of_one_content_type_stores_the_same_columns_as_appends_one_at_a_time(
    db: sqlstream.Database, before: int, batch: list[object], key: str | None, headers: dict[str, str] | None
) -> None:
    _same_as_one_at_a_time(db, before, batch, key, headers)


def _same_as_one_at_a_time(
    db: sqlstream.Database, before: int, batch: list[object], key: str | None, headers: dict[str, str] | None
) -> None:
    n = next(_examples)
    one, many = db.create_stream(f"one_by_one_{n}"), db.create_stream(f"batched_{n}")
    for s in (one, many):
        s.extend([b"x" * i for i in range(before)])
    with db.transaction():
        for v in batch:
            one.append(v, key=key, headers=headers)
    got = many.extend(batch, key=key, headers=headers)
    assert got == range(before, before + len(batch))
    a, b = _stored(db, one.name), _stored(db, many.name)
    batch_rows = b[before:]
    assert len({row[2] for row in batch_rows}) == 1  # one timestamp
    assert len({row[3] for row in batch_rows}) == 1  # one txn
    # Everything but the timestamp and txn (the two streams were written by different
    # transactions) is what appending one record at a time stored.
    assert [row[:2] + row[4:] for row in a] == [row[:2] + row[4:] for row in b]
    assert [r.value for r in many.read(before, len(batch))] == [r.value for r in one.read(before, len(batch))]


def test_the_batch_statement_numbers_offsets_from_one_bound_first_offset() -> None:
    sql = insert_batch_sql(3)
    assert "(?1,?4+0,?5,?2,?3,?6,?7,?8,?9)" in sql
    assert sql.endswith("(?1,?4+2,?15,?2,?3,?16,?17,?18,?19)")
    # apsw compiles a statement again on every execute when its text is 16 KiB or more.
    assert len(insert_batch_sql(ROWS_PER_INSERT)) < 16 * 1024


def test_rows_that_share_key_headers_and_content_type_bind_them_once_per_insert(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    bound: list[int] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        if sql.startswith("INSERT INTO chunks"):
            bound.append(len(bindings))
        return True

    conn = db.engine.write_conn()
    conn.exec_trace = trace
    try:
        s.extend([b"x"] * (ROWS_PER_INSERT + 3), key="k", headers={"h": "v"})
        assert bound == [7 + 2 * ROWS_PER_INSERT, 7 + 2 * 3]  # stream, time, txn, offset, key, headers, type
        bound.clear()
        s.extend([b"x", "t"] * 2)  # two content types: each row binds its own
        assert bound == [4 + 5 * 4]
    finally:
        conn.exec_trace = None
    assert [r.value for r in s.read(0, ROWS_PER_INSERT + 7)][-5:] == [b"x", b"x", "t", b"x", "t"]
    assert {r.key for r in s.read(0, ROWS_PER_INSERT + 3)} == {"k"}


def test_the_shared_statement_binds_two_parameters_a_row() -> None:
    sql = insert_shared_sql(3)
    assert "(?1,?4+0,?8,?2,?3,?5,?6,?7,?9)" in sql
    assert sql.endswith("(?1,?4+2,?12,?2,?3,?5,?6,?7,?13)")
    assert len(insert_shared_sql(ROWS_PER_INSERT)) < 16 * 1024


# A batch of bytes values is handed to the append path as one `SharedRows` (the payloads
# and their sizes as two lists) and bound by list operations instead of a loop per record.

small_bytes = st.binary(max_size=40) | st.sampled_from([b"", b"z" * INLINE_MAX])  # INLINE_MAX: still in the row
# Non-ASCII text: a record's size (and the next one's position) is its UTF-8 length.
utf8_text = st.text(max_size=12) | st.sampled_from(["é" * 453, "€"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.integers(0, 3),
    # Sizes drawn first, so batches that cross one or two INSERT boundaries are common.
    batch=st.tuples(st.integers(1, 2 * ROWS_PER_INSERT + 30), st.sampled_from([small_bytes, utf8_text])).flatmap(
        lambda size_kind: st.lists(size_kind[1], min_size=size_kind[0], max_size=size_kind[0])),
    key=st.one_of(st.none(), st.text(max_size=4)),
    headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
)
def test_a_batch_of_small_bytes_or_of_text_stores_the_same_columns_as_appends_one_at_a_time(
    db: sqlstream.Database, before: int, batch: list[object], key: str | None, headers: dict[str, str] | None
) -> None:
    _same_as_one_at_a_time(db, before, batch, key, headers)


def test_a_batch_of_text_with_a_lone_surrogate_is_refused_and_stores_nothing(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    with pytest.raises(InvalidValue, match="valid Unicode"):
        s.extend(["fine", "bad \udc80"])
    assert s.info().next_offset == 0
    assert s.extend(["a", "é"]) == range(0, 2)
    assert [(r.position, r.value, r.content_type) for r in s.read(0, 2)] == [(0, "a", "text"), (1, "é", "text")]
    assert s.info().byte_length == 3


@given(
    data=st.lists(st.binary(max_size=8), max_size=12),
    key=st.one_of(st.none(), st.just("k")),
    index=st.integers(-15, 15),
    bounds=st.tuples(st.none() | st.integers(-15, 15), st.none() | st.integers(-15, 15), st.sampled_from([None, 1, 2, -1])),
)
def test_shared_rows_are_the_rows_they_stand_for(
    data: list[bytes], key: str | None, index: int, bounds: tuple[int | None, int | None, int | None]
) -> None:
    rows = SharedRows(key, None, "bytes", data, list(map(len, data)))
    as_list = [(key, None, "bytes", d, len(d)) for d in data]
    assert len(rows) == len(as_list) and list(rows) == as_list
    assert (rows.total, rows.largest) == (sum(map(len, data)), max(map(len, data), default=0))
    assert rows[slice(*bounds)] == as_list[slice(*bounds)]
    if -len(data) <= index < len(data):
        assert rows[index] == as_list[index]
    else:
        with pytest.raises(IndexError):
            rows[index]


def test_a_batch_of_small_bytes_is_bound_without_reading_a_row(db: sqlstream.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism: check_rows and store take sizes and payloads from the lists (a
    SharedRows item built anywhere on the way would mean a loop per record)."""
    read: list[object] = []
    original = SharedRows.__getitem__

    def counting(self: SharedRows, index: Any) -> Any:
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(SharedRows, "__getitem__", counting)
    s = db.create_stream("s")
    assert s.extend([b"abc", b"", b"de"] * ROWS_PER_INSERT) == range(0, 3 * ROWS_PER_INSERT)
    assert read == []
    assert s.read_bytes(0, 10).data == b"abcdeabcde"
    assert [(r.offset, r.position, r.value) for r in s.read(3 * ROWS_PER_INSERT - 3, 3)] == [
        (597, 995, b"abc"), (598, 998, b""), (599, 998, b"de")]
    # A payload stored out of the row takes the loop (which reads the rows).
    s.extend([b"x", b"y" * (INLINE_MAX + 1)])
    assert read != []
    assert s.read(600, 2)[1].value == b"y" * (INLINE_MAX + 1)
    read.clear()
    t = db.create_stream("t")
    assert t.extend(["é", "ab"] * ROWS_PER_INSERT) == range(0, 2 * ROWS_PER_INSERT)
    assert read == []
    assert [(r.position, r.value) for r in t.read(2 * ROWS_PER_INSERT - 2, 2)] == [(796, "é"), (798, "ab")]


def test_a_batch_of_bytes_over_the_limit_names_the_first_too_large_and_stores_nothing(tmp_path: Any) -> None:
    db = sqlstream.open(str(tmp_path / "limit.db"), max_record_bytes=100)
    try:
        s = db.create_stream("s")
        with pytest.raises(PayloadTooLarge, match="a record of 101 bytes exceeds"):
            s.extend([b"a" * 10, b"b" * 101, b"c" * 200])
        assert s.info().next_offset == 0
        assert s.extend([b"a" * 100] * 3) == range(0, 3)
    finally:
        db.close()


def test_a_batch_of_bytes_with_dedup_ids_stores_only_the_new_ones(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    assert s.extend([b"a", b"b"], dedup_ids=["1", "2"]) == [0, 1]
    assert s.extend([b"b2", b"c", b"d", b"c2"], dedup_ids=["2", "3", None, "3"]) == [1, 2, 3, 2]
    assert [(r.offset, r.position, r.value) for r in s.read(0, 10)] == [
        (0, 0, b"a"), (1, 1, b"b"), (2, 2, b"c"), (3, 3, b"d")]
