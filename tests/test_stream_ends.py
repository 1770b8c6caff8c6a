"""A stream's ends (next offset, byte length, last append time) with one page per append.

An append writes only its record: the ``streams`` columns ``next_offset``,
``byte_length`` and ``last_append_at`` are floors, exact right after create, trim and
seal, and everything that reports a stream's ends derives them from its last record.
"""

from __future__ import annotations

import sqlstream

ROW = "SELECT first_offset, next_offset, first_position, byte_length, last_append_at FROM streams WHERE name = ?"
NOW = "SELECT first_offset, next_offset, first_position, byte_length, last_append_at FROM streams_now WHERE name = ?"


def test_an_append_leaves_the_stream_row_alone_and_every_reader_of_the_ends_is_exact(
    db: sqlstream.Database,
) -> None:
    s = db.create_stream("s")
    s.append(b"abc")
    s.append("é€")  # text: 5 bytes of UTF-8 for 2 characters
    s.append({"k": "ü"})
    size = 3 + len("é€".encode()) + len('{"k":"ü"}'.encode())
    assert db.query(ROW, ("s",)).rows == [(0, 0, 0, 0, None)]  # no page written for the row
    last = s.read(2, 1)[0].timestamp
    info = db.stream_info("s")
    assert (info.next_offset, info.byte_length, info.count) == (3, size, 3)
    assert db.query(NOW, ("s",)).rows[0][:4] == (0, 3, 0, size)
    assert db.query("SELECT next_offset, records, total_bytes FROM stream_stats WHERE name = 's'").rows == [
        (3, 3, size)]
    assert info.last_append_at is not None and abs(info.last_append_at - last) < 1e-3
    assert s.append(b"z") == 3  # the next offset, from the last record
    assert db.check().ok


def test_trim_and_seal_write_the_exact_ends_into_the_row(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend([b"aa", b"bbb", b"c"])
    s.trim(1)
    assert db.query(ROW, ("s",)).rows[0][:4] == (1, 3, 2, 6)
    s.append(b"dddd")
    assert db.query(ROW, ("s",)).rows[0][:4] == (1, 3, 2, 6)  # a floor again
    s.seal()
    assert db.query(ROW, ("s",)).rows == db.query(NOW, ("s",)).rows
    assert db.query(ROW, ("s",)).rows[0][:4] == (1, 4, 2, 10)


def test_a_stream_trimmed_to_nothing_continues_where_it_ended(db: sqlstream.Database) -> None:
    s = db.create_stream("s")
    s.extend([b"aa", b"bbb", b"c"])
    s.trim(3)  # every record gone: only the row says where the stream ended
    info = db.stream_info("s")
    assert (info.first_offset, info.next_offset, info.byte_length, info.count) == (3, 3, 6, 0)
    assert s.append(b"x") == 3  # never reused
    assert db.stream_info("s").byte_length == 7
    assert db.check().ok
