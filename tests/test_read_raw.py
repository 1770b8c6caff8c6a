"""Stream.read_raw: records as stored bytes, checked as read() checks them, cut to a byte budget.

The oracle is read(): for any values appended, read_raw's payloads decode to the values
read() returns, are the bytes read_bytes() sees at the same positions, and the byte
budget takes records while their total stays within it (the first always).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlstream
from sqlstream import errors
from sqlstream.raw import cut

_names = itertools.count()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
).filter(lambda v: v is not None)
values = st.lists(st.binary(max_size=40) | st.text(max_size=40) | json_values, min_size=1, max_size=30)


def _decoded(ctype: str, payload: bytes) -> Any:
    if ctype == "bytes":
        return payload
    text = payload.decode("utf-8")
    return json.loads(text) if ctype == "json" else text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=values, start=st.integers(0, 29), budget=st.integers(1, 400) | st.none())
def test_payloads_are_the_stored_bytes_of_what_read_returns(tmp_path: Path, vals: list[Any], start: int,
                                                            budget: int | None) -> None:
    with sqlstream.open(tmp_path / "r.db") as db:
        s = db.create_stream(f"s{next(_names)}")
        s.extend(vals)
        start = min(start, len(vals))
        raw = s.read_raw(start, 1000, budget)
        records = s.read(start, 1000)
        sizes = [len(p) for p in raw.payloads]
        expected = len(records) if budget is None else cut([r_len(r) for r in records], budget)
        assert len(raw.payloads) == expected
        assert raw.content_types == [r.content_type for r in records[:expected]]
        assert [_decoded(c, p) for c, p in zip(raw.content_types, raw.payloads)] == [
            r.value for r in records[:expected]]
        info = s.info()
        assert raw.position == (records[0].position if records else info.byte_length)
        assert raw.end_position == raw.position + sum(sizes)
        assert raw.next_offset == start + expected
        assert (raw.stream_next_offset, raw.stream_byte_length, raw.sealed) == (
            info.next_offset, info.byte_length, False)
        if raw.payloads:
            assert b"".join(raw.payloads) == s.read_bytes(raw.position, raw.end_position - raw.position).data


def r_len(record: sqlstream.Record) -> int:
    value = record.value
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def test_json_is_returned_as_the_compact_text_the_append_stored(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "r.db") as db:
        s = db.create_stream("s")
        s.extend([{"b": [1, 2.5, True], "a": "é\n"}, 7, "plain text", b"null"])
        raw = s.read_raw()
    assert raw.payloads == ['{"b":[1,2.5,true],"a":"é\\n"}'.encode(), b"7", b"plain text", b"null"]
    assert raw.content_types == ["json", "json", "text", "bytes"]


def test_the_budget_takes_the_first_record_always_and_stops_at_the_bound() -> None:
    assert cut([10, 10, 10], 25) == 2
    assert cut([10, 10, 10], 20) == 2  # exactly at the bound: the next is left out
    assert cut([30, 1], 20) == 1  # the first always, then nothing fits
    assert cut([10, 0, 5], 10) == 1  # the bound is reached: even an empty record waits
    assert cut([], 5) == 0


def test_limit_bounds_and_the_tail_and_seal_come_from_the_same_snapshot(tmp_path: Path) -> None:
    with sqlstream.open(tmp_path / "r.db") as db:
        s = db.create_stream("s")
        s.extend([b"ab", b"cd", b"ef"])
        assert s.read_raw(0, 2).payloads == [b"ab", b"cd"]
        s.seal()
        tail = s.read_raw(3)
        assert (tail.payloads, tail.position, tail.end_position, tail.sealed, tail.up_to_date) == (
            [], 6, 6, True, True)
        with pytest.raises(errors.OffsetOutOfRange):
            s.read_raw(4)
        s2 = db.create_stream("t")
        s2.extend([b"x"] * 5)
        s2.trim(2, force=True)
        with pytest.raises(errors.OffsetOutOfRange):
            s2.read_raw(1)
        db.delete_stream("t")
        with pytest.raises(errors.StreamNotFound):
            s2.read_raw()
        for bad in ({"offset": -1}, {"limit": 0}, {"max_bytes": 0}, {"max_bytes": 1.5}):
            with pytest.raises(errors.InvalidArgument):
                s.read_raw(**bad)


def test_damaged_records_end_the_page_as_in_read(tmp_path: Path) -> None:
    # Damage only other tools can do (see tests/test_damaged_records.py): offset 1 gets
    # invalid UTF-8, offset 4 JSON that does not parse, lengths kept.
    path = tmp_path / "d.db"
    with sqlstream.open(path) as db:
        db.create_stream("s").extend([{"a": 1}, "abc", b"raw", "xyz", {"b": 2}])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE chunks SET data = CAST(X'61FF63' AS TEXT) WHERE offset = 1")
    conn.execute("UPDATE chunks SET data = '{bad''  ' WHERE offset = 4")
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        s = db.stream("s")
        assert s.read_raw(0).payloads == [b'{"a":1}']  # offset 1 is damaged: the page ends before it
        assert [r.value for r in s.read(0)] == [{"a": 1}]  # as read() does
        for bad in (1, 4):
            with pytest.raises(errors.DamagedRecord) as caught:
                s.read_raw(bad)
            assert caught.value.offset == bad
        assert s.read_raw(2).payloads == [b"raw", b"xyz"]


def test_json_nested_deeper_than_python_decodes_is_a_damaged_record(tmp_path: Path) -> None:
    # Valid JSON text (another tool wrote it), nested deeper than Python's parser
    # recurses: read() and read_raw() raised a bare RecursionError instead of
    # DamagedRecord, and a page from an earlier offset did not end before it.
    path = tmp_path / "d.db"
    with sqlstream.open(path) as db:
        db.create_stream("s").extend([{"a": 1}, {"b": 2}, {"c": 3}])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE chunks SET data = ? WHERE offset = 1", ("[" * 100_000 + "]" * 100_000,))
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        s = db.stream("s")
        assert [r.value for r in s.read(0)] == [{"a": 1}]
        assert s.read_raw(0).payloads == [b'{"a":1}']
        for read in (s.read, s.read_raw):
            with pytest.raises(errors.DamagedRecord) as caught:
                read(1)
            assert caught.value.offset == 1
        assert s.read_raw(2).payloads == [b'{"c":3}'] and [r.value for r in s.read(2)] == [{"c": 3}]


def test_the_async_read_raw_is_the_sync_one_on_the_worker(tmp_path: Path) -> None:
    import asyncio

    import sqlstream.aio

    async def main() -> tuple[sqlstream.RawRecords, sqlstream.RawRecords]:
        async with await sqlstream.aio.open(tmp_path / "a.db") as adb:
            s = await adb.create_stream("s")
            await s.extend([{"a": 1}, "text", b"\x00\xff"])
            with pytest.raises(errors.InvalidArgument):  # errors as the sync call's
                await s.read_raw(0, 0)
            return await s.read_raw(1, 10, 5), s.sync.read_raw(1, 10, 5)

    got, sync = asyncio.run(main())
    assert got == sync
    assert (got.payloads, got.content_types, got.up_to_date) == ([b"text"], ["text"], False)



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vals=values, start=st.integers(0, 29), budget=st.integers(1, 400) | st.none(), json_array=st.booleans(),
       limit=st.integers(1, 40))
def test_read_joined_is_read_raw_joined_or_none(tmp_path: Path, vals: list[Any], start: int, budget: int | None,
                                                json_array: bool, limit: int) -> None:
    with sqlstream.open(tmp_path / "j.db") as db:
        s = db.create_stream(f"j{next(_names)}")
        s.extend(vals)
        start = min(start, len(vals))
        raw = s.read_raw(start, limit, budget)
        joined = s.read_joined(start, limit, budget, json_array=json_array)
        kinds = set(raw.content_types)
        texty = b"".join(p for c, p in zip(raw.content_types, raw.payloads) if c != "bytes")
        # When it must answer (and when it must not): every record JSON for an array; else
        # all bytes, or no bytes and ASCII text.
        if json_array:
            passes = kinds <= {"json"}
        else:
            passes = kinds <= {"bytes"} or ("bytes" not in kinds and texty.isascii())
        assert (joined is not None) == passes
        if joined is None:
            return
        assert joined.data == (b"," if json_array else b"").join(raw.payloads)
        assert (joined.offset, joined.records, joined.position, joined.end_position, joined.next_offset) == (
            raw.offset, len(raw.payloads), raw.position, raw.end_position, raw.next_offset)
        assert (joined.stream_next_offset, joined.stream_byte_length, joined.sealed, joined.stream_id,
                joined.up_to_date) == (raw.stream_next_offset, raw.stream_byte_length, raw.sealed, raw.stream_id,
                                       raw.up_to_date)


def test_read_joined_leaves_damaged_records_to_read_raw(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with sqlstream.open(path) as db:
        db.create_stream("s").extend([{"a": 1}, {"b": 2}, {"c": 3}, "é", "é"])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE chunks SET data = '{bad' WHERE offset = 1")  # JSON that does not parse
    conn.execute("UPDATE chunks SET data = CAST(X'C3' AS TEXT) WHERE offset = 3")  # a cut UTF-8 sequence
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        s = db.stream("s")
        assert s.read_joined(0, json_array=True) is None  # json_valid refuses offset 1
        assert s.read_joined(0, 1, json_array=True).data == b'{"a":1}'  # type: ignore[union-attr]
        assert s.read_joined(2, 1, json_array=True).data == b'{"c":3}'  # type: ignore[union-attr]
        # Text without a separator: only ASCII is settled by the joined check (here the
        # cut sequence at 3 would be completed by the next record's first byte).
        assert s.read_joined(3) is None
        with pytest.raises(errors.DamagedRecord):
            s.read_raw(3)
        assert s.record_at_position(0) == (0, 0)
        assert s.record_at_position(1) == (1, 7)  # the first record starting at or after byte 1
        assert s.record_at_position(10**9) == (5, s.info().byte_length)


@pytest.mark.parametrize("kind", ["json", "text", "bytes"])
@pytest.mark.parametrize("how", ["inline", "payload row"])
def test_read_joined_never_skips_a_record_whose_payload_is_gone(tmp_path: Path, kind: str, how: str) -> None:
    """A record whose value is gone (a NULL `data`, or its `payloads` row deleted by plain
    SQL) is damaged: the joined read must leave it to read_raw (which ends before it),
    not join the others around it and count it (group_concat skips NULLs), which sent
    HTTP readers a body with the record missing under an offset that counts it."""
    size = 10 if how == "inline" else 5000
    values: dict[str, Any] = {
        "json": [{"i": i, "p": "x" * size} for i in range(4)],
        "text": [f"t{i}" + "x" * size for i in range(4)],
        "bytes": [b"b%d" % i + b"x" * size for i in range(4)],
    }
    path = tmp_path / "gone.db"
    with sqlstream.open(path) as db:
        db.create_stream("s").extend(values[kind])
    conn = sqlite3.connect(path)
    if how == "inline":
        conn.execute("UPDATE chunks SET data = NULL WHERE offset = 2")
    else:
        conn.execute("DELETE FROM payloads WHERE offset = 2")
    conn.commit()
    conn.close()
    with sqlstream.open(path) as db:
        s = db.stream("s")
        for json_array in (False, True):
            joined = s.read_joined(0, json_array=json_array)
            assert joined is None or (joined.records, joined.next_offset) == (2, 2), joined
        assert len(s.read_raw(0).payloads) == 2  # ends before the record
        with pytest.raises(errors.DamagedRecord):
            s.read_raw(2)
