"""Layouts for `chunks` against the W1/W3 baselines, raw apsw, no Python layer.

``python layouts.py VARIANT PHASE N`` does N units of PHASE on a fresh file of VARIANT,
after an untimed setup; ``ic.sh`` runs it under callgrind with N and 0 units and prints
the instructions per record of the difference (valgrind counts do not drift with load).

VARIANT: ``raw``, the W1/W3 baseline (``records(id INTEGER PRIMARY KEY, data BLOB)``,
``executemany`` of one-column rows, reads of ``(id, data)``); ``current``, the chunks
table as it is (WITHOUT ROWID, key (stream_id, offset), 9 columns); ``currentfk``, the same
with the foreign key to ``streams`` sqlstream declared before schema version 20; ``keyed``, a rowid
table whose rowid is ``stream_id << 40 | offset`` (the b-tree key is one integer), with
the 7 other columns; ``keyed9``, the same keeping ``stream_id`` and ``offset`` as
ordinary columns too (what plain-SQL readers of the file would expect to find).
PHASE: ``batch`` (transactions of 1,000 records, multi-row INSERTs of 200 rows binding
only position and data per row, as sqlstream's extend does; raw uses executemany as the
benchmark's baseline does), ``read`` (pages of 1,000 of the record's 8 columns; raw:
``id, data``), ``spread`` (single-record commits to 1,000 streams in turn, each stream
already holding records: inserts land in the middle of the b-tree).
"""

from __future__ import annotations

import os
import sys
import tempfile

import apsw

BATCH, ROWS = 1000, 200
SHIFT = 40
DATA = [(f"{i:012d}".encode() + b"x" * 100)[:100] for i in range(BATCH)]

DDL = {
    "raw": "CREATE TABLE records(id INTEGER PRIMARY KEY, data BLOB)",
    "current": (
        "CREATE TABLE chunks(stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, position INTEGER NOT NULL, "
        "timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT, content_type TEXT NOT NULL "
        "CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'), data BLOB, "
        "PRIMARY KEY (stream_id, offset)) WITHOUT ROWID"
    ),
    # `current` with the foreign key sqlstream declares (and foreign_keys on): the per-row
    # probe of `streams` every inserted record pays.
    "currentfk": (
        "CREATE TABLE chunks(stream_id INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE, "
        "offset INTEGER NOT NULL, position INTEGER NOT NULL, "
        "timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT, content_type TEXT NOT NULL "
        "CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'), data BLOB, "
        "PRIMARY KEY (stream_id, offset)) WITHOUT ROWID"
    ),
    "keyed": (
        "CREATE TABLE chunks(id INTEGER PRIMARY KEY, position INTEGER NOT NULL, timestamp INTEGER NOT NULL, "
        "txn INTEGER NOT NULL, key TEXT, headers TEXT, content_type TEXT NOT NULL "
        "CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'), data BLOB)"
    ),
    "keyed9": (
        "CREATE TABLE chunks(id INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, "
        "position INTEGER NOT NULL, timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT, "
        "content_type TEXT NOT NULL CHECK (content_type = 'bytes' OR content_type = 'text' OR content_type = 'json'), "
        "data BLOB)"
    ),
}


def insert_sql(variant: str, rows: int) -> str:
    """Parameters: ?1 first key (offset, or stream << 40 | offset), ?2 timestamp, ?3 txn,
    ?4 stream id, then (position, data) per row."""
    if variant in ("current", "currentfk"):
        cols, row = ("stream_id, offset, position, timestamp, txn, key, headers, content_type, data",
                     "(?4,?1+{k},?{p},?2,?3,NULL,NULL,'bytes',?{d})")
    elif variant == "keyed":
        cols, row = ("id, position, timestamp, txn, key, headers, content_type, data",
                     "(?1+{k},?{p},?2,?3,NULL,NULL,'bytes',?{d})")
    else:
        cols, row = ("id, stream_id, offset, position, timestamp, txn, key, headers, content_type, data",
                     "(?1+{k},?4,(?1+{k})&" + str((1 << SHIFT) - 1) + ",?{p},?2,?3,NULL,NULL,'bytes',?{d})")
    values = ",".join(row.format(k=k, p=5 + 2 * k, d=6 + 2 * k) for k in range(rows))
    return f"INSERT INTO chunks ({cols}) VALUES {values}"


def read_sql(variant: str) -> str:
    if variant == "raw":
        return "SELECT id, data FROM records WHERE id >= ? ORDER BY id LIMIT 1000"
    cols = "timestamp, key, headers, data, position, txn, content_type"
    if variant in ("current", "currentfk"):
        return f"SELECT offset, {cols} FROM chunks WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT 1000"
    # The offset is the key's low bits; the stream is fixed by the range.
    return (f"SELECT id - {1 << SHIFT}, {cols} FROM chunks WHERE id >= {1 << SHIFT} + ? "
            f"AND id < {2 << SHIFT} ORDER BY id LIMIT 1000")


class Store:
    def __init__(self, variant: str, path: str) -> None:
        self.variant = variant
        self.conn = apsw.Connection(path)
        for p in ("journal_mode = wal", "synchronous = normal"):
            list(self.conn.execute(f"PRAGMA {p}"))
        if variant == "currentfk":
            self.conn.execute("CREATE TABLE streams(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
            self.conn.executemany("INSERT INTO streams VALUES (?, ?)", [(i, f"s{i}") for i in range(1, 1001)])
            list(self.conn.execute("PRAGMA foreign_keys = ON"))
        self.conn.execute(DDL[variant])
        self.next = {}  # stream -> next offset
        self.sql = None if variant == "raw" else insert_sql(variant, ROWS)
        self.one = None if variant == "raw" else insert_sql(variant, 1)

    def key(self, stream: int, offset: int) -> int:
        return offset if self.variant in ("current", "currentfk") else (stream << SHIFT) | offset

    def batch(self, stream: int = 1) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        if self.variant == "raw":
            c.executemany("INSERT INTO records(data) VALUES (?)", [(d,) for d in DATA])
        else:
            o = self.next.get(stream, 0)
            for j in range(0, BATCH, ROWS):
                params: list[object] = [self.key(stream, o + j), 1_700_000_000_000_000, 7, stream]
                for k in range(ROWS):
                    params += [(o + j + k) * 100, DATA[j + k]]
                c.execute(self.sql, params)
            self.next[stream] = o + BATCH
        c.execute("COMMIT")

    def single(self, stream: int) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        if self.variant == "raw":
            c.execute("INSERT INTO records(data) VALUES (?)", (DATA[0],))
        else:
            o = self.next.get(stream, 0)
            c.execute(self.one, (self.key(stream, o), 1_700_000_000_000_000, 7, stream, o * 100, DATA[0]))
            self.next[stream] = o + 1
        c.execute("COMMIT")

    def read_all(self) -> int:
        sql, execute = read_sql(self.variant), self.conn.execute
        offset = 1 if self.variant == "raw" else 0
        seen = 0
        while True:
            page = execute(sql, (offset,)).fetchall()
            if not page:
                return seen
            seen += len(page)
            offset = page[-1][0] + 1


def main() -> None:
    variant, phase, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        s = Store(variant, os.path.join(tmp, "x.db"))
        if phase == "batch":
            s.batch()  # warm: statements prepared, first pages made
            for _ in range(n):
                s.batch()
        elif phase == "read":
            for _ in range(20):
                s.batch()
            s.read_all()  # warm
            for _ in range(n):
                assert s.read_all() == 20_000
        elif phase == "spread":
            if variant == "raw":  # the baseline of one table: appends at its end
                for _ in range(10):
                    s.batch()
            else:
                for stream in range(1, 1001):
                    for _ in range(10):
                        s.single(stream)
            for _ in range(n):
                for stream in range(1, 1001):
                    s.single(stream)


if __name__ == "__main__":
    main()
