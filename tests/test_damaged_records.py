"""Damaged records (issue 9 item 13): a stored payload that cannot be decoded.

A record whose text is not valid UTF-8, or whose JSON does not parse, can only come from
outside sqlstream (a hand edit, a buggy tool, disk damage): the tests write them with
Python's own ``sqlite3`` module, keeping every length so only the decoding fails. The
contract: ``DamagedRecord`` (a ``CorruptDatabase``) naming the stream and offset, never
a raw UnicodeDecodeError/JSONDecodeError; the bytes stay readable with ``read_bytes``;
subscriptions set the record aside (dead-letter stream if configured, else skipped and
counted in ``dead_lettered``) so one record never blocks them; ``check()`` names it.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path

import pytest

import sqlstream
from sqlstream import errors

# Offsets 0..4: json, text, bytes, text, json. Offset 1 gets invalid UTF-8 (same length),
# offset 4 gets JSON that does not parse (same length).
VALUES = [{"a": 1}, "abc", b"raw", "xyz", {"b": 2}]
BAD_TEXT = 1
BAD_JSON = 4


def damage(path: Path, stream: str = "s") -> None:
    """Overwrite offset 1 with invalid UTF-8 and offset 4 with unparsable JSON, directly."""
    conn = sqlite3.connect(path)
    try:
        sid = conn.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()[0]
        conn.execute(
            "UPDATE chunks SET data = CAST(X'61FF63' AS TEXT) WHERE stream_id = ? AND offset = ?", (sid, BAD_TEXT)
        )
        conn.execute(
            "UPDATE chunks SET data = '{bad''  ' WHERE stream_id = ? AND offset = ?", (sid, BAD_JSON)
        )
        assert conn.execute(
            "SELECT length(CAST(data AS BLOB)) FROM chunks WHERE stream_id = ? AND offset = ?", (sid, BAD_JSON)
        ).fetchone()[0] == len('{"b":2}')
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "d.db"
    with sqlstream.open(p) as db:
        db.create_stream("s").extend(VALUES)
    damage(p)
    return p


def test_reading_a_damaged_record_raises_damaged_record_naming_stream_and_offset(path: Path) -> None:
    with sqlstream.open(path) as db:
        s = db.stream("s")
        with pytest.raises(errors.DamagedRecord) as info:
            s.read(BAD_TEXT, 10)
        err = info.value
        assert isinstance(err, errors.CorruptDatabase)
        assert (err.stream, err.offset) == ("s", BAD_TEXT)
        assert "record 1 of stream 's'" in str(err) and "UTF-8" in str(err)
        assert "read_bytes(7, 3)" in (err.hint or "")  # its position (after '{"a":1}') and length
        with pytest.raises(errors.DamagedRecord, match="record 4 of stream 's'.*json"):
            s.read(BAD_JSON)
        err2 = pickle.loads(pickle.dumps(err))  # crosses process boundaries intact
        assert (type(err2), err2.stream, err2.offset) == (errors.DamagedRecord, "s", BAD_TEXT)


def test_a_read_stops_before_a_damaged_record_and_continues_after_it(path: Path) -> None:
    with sqlstream.open(path) as db:
        s = db.stream("s")
        assert [r.value for r in s.read(0, 10)] == [{"a": 1}]
        assert [r.value for r in s.read(BAD_TEXT + 1, 2)] == [b"raw", "xyz"]
        follower = s.follow(timeout=0)
        assert next(follower).value == {"a": 1}
        with pytest.raises(errors.DamagedRecord):
            next(follower)


def test_a_damaged_records_bytes_stay_readable_with_read_bytes(path: Path) -> None:
    with sqlstream.open(path) as db:
        s = db.stream("s")
        rows = db.query("SELECT position, octet_length(data) FROM chunks WHERE offset = 1").rows
        position, length = rows[0]
        assert s.read_bytes(position, length).data == b"a\xffc"
        assert s.read_bytes(0, 10).data == b'{"a":1}a\xffc'  # across record boundaries too


def test_query_over_damaged_text_raises_corrupt_database(path: Path) -> None:
    with sqlstream.open(path) as db:
        with pytest.raises(errors.CorruptDatabase, match="not valid UTF-8"):
            db.query("SELECT data FROM chunks")
        assert db.query("SELECT CAST(data AS BLOB) FROM chunks WHERE offset = 1").rows == [(b"a\xffc",)]


def test_a_subscription_without_dead_letter_skips_damaged_records_and_is_never_stuck(path: Path) -> None:
    with sqlstream.open(path) as db:
        sub = db.create_subscription("sub", "s")
        got = []
        for _ in range(5):
            batch = sub.fetch("c", 1)
            got += [(r.offset, r.value) for r in batch]
            sub.ack(*batch.offsets)
        assert got == [(0, {"a": 1}), (2, b"raw"), (3, "xyz")]
        info = sub.info()
        assert info.dead_lettered == 2 and info.pending == 0 and info.lag == 0
        assert sub.pending() == []


def test_a_damaged_record_first_in_a_batch_does_not_make_a_nonblocking_fetch_come_back_empty(path: Path) -> None:
    with sqlstream.open(path) as db:
        sub = db.create_subscription("sub", "s", start=BAD_TEXT)
        assert sub.fetch("c", 1, timeout=0).offsets == [2]


def test_a_subscription_with_a_dead_letter_stream_moves_damaged_records_there_as_bytes(path: Path) -> None:
    with sqlstream.open(path) as db:
        sub = db.create_subscription("sub", "s", max_deliveries=3, dead_letter="dl")
        assert sub.fetch("c", 10).offsets == [0, 2, 3]
        letters = db.stream("dl").read(0, 10)
        assert [(r.value, r.content_type) for r in letters] == [(b"a\xffc", "bytes"), (b"{bad'  ", "bytes")]
        assert [r.headers["sqlstream.source_offset"] for r in letters] == ["1", "4"]
        assert all(r.headers["sqlstream.last_error"].startswith("damaged record:") for r in letters)
        assert sub.info().dead_lettered == 2


def test_a_record_damaged_while_pending_is_set_aside_on_redelivery(tmp_path: Path) -> None:
    p = tmp_path / "r.db"
    with sqlstream.open(p) as db:
        db.create_stream("s").extend(VALUES)
        sub = db.create_subscription("sub", "s", ack_timeout=0.05)
        assert sub.fetch("c", 10).offsets == [0, 1, 2, 3, 4]
        sub.ack(0, 2, 3)
    damage(p)
    with sqlstream.open(p) as db:
        sub = db.subscription("sub")
        time.sleep(0.06)  # past the ack deadline: both are due for redelivery
        assert sub.fetch("c", 10, timeout=0).offsets == []  # both pending ones were damaged
        info = sub.info()
        assert info.pending == 0 and info.dead_lettered == 2


def test_a_reader_stops_on_a_damaged_record_and_seek_skips_it(path: Path) -> None:
    with sqlstream.open(path) as db:
        reader = db.reader("r", "s")
        assert [r.offset for r in reader.read(10)] == [0]
        with pytest.raises(errors.DamagedRecord) as info:
            reader.read(10)
        assert info.value.offset == BAD_TEXT and "seek(2)" in (info.value.hint or "")
        assert reader.position == BAD_TEXT  # nothing consumed by the failed read
        reader.seek(BAD_TEXT + 1)
        assert [r.offset for r in reader.read(10)] == [2, 3]


def test_check_names_every_damaged_record(path: Path) -> None:
    with sqlstream.open(path) as db:
        report = db.check()
        damaged = [(p.stream, p.offset) for p in report.problems if "damaged record" in p.message]
        assert damaged == [("s", BAD_TEXT), ("s", BAD_JSON)]
        assert not report.ok


@pytest.mark.parametrize("value", ["'abc'", "1.5"])
def test_a_position_of_another_type_is_corrupt_database_naming_the_record(tmp_path: Path, value: str) -> None:
    """A position plain SQL set to text or a real (the table is not STRICT) made the
    searches over positions raise a raw TypeError (an HTTP catch-up answered 500
    Internal Server Error for ever); now CorruptDatabase names the record."""
    p = tmp_path / "pos.db"
    with sqlstream.open(p) as db:
        db.create_stream("s").extend([b"ab"] * 8)
    conn = sqlite3.connect(p)
    conn.execute(f"UPDATE chunks SET position = {value} WHERE offset = 4")
    conn.commit()
    conn.close()
    with sqlstream.open(p) as db:
        s = db.stream("s")
        for call in (lambda: s.record_at_position(9), lambda: s.read_raw(0, max_bytes=8),
                     lambda: s.read_joined(4)):
            with pytest.raises(errors.CorruptDatabase, match="record 4 of stream 's' has position"):
                call()
        assert [r.value for r in s.read(0)] == [b"ab"] * 8  # reads that need no position still work
