"""Big records: W9, 64 KiB records appended one commit each and read in pages of 100.

Side by side with raw apsw on a rowid table ``records(id INTEGER PRIMARY KEY, data
BLOB)``, the layout SQLite suits best to large rows. sqlstream stores a payload this
large out of its ``chunks`` row, in ``payloads`` (migration 15); before that, a 64 KiB
row in the WITHOUT ROWID b-tree lived mostly in overflow pages that every seek and scan
passing it read (benchmarks/findings.md, issue 23).
"""

from __future__ import annotations

import os
import time

import sqlstream

from .harness import Contender, Env, Outcome, Sample, alternate, open_raw, payload, workdir

SIZE = 65_536
PAGE = 100
BATCH = 100  # records per transaction when a read workload fills its stream


def _counts(env: Env) -> tuple[int, int]:
    """(single appends per round, records read per round)."""
    return (100, 500) if env.sizes.quick else (500, 2_000)


class SqlstreamAppend(Contender):
    name = "sqlstream append"

    def __init__(self, count: int, size: int = SIZE) -> None:
        self.count = count
        self.data = payload(0, size)

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("w9")

    def round(self) -> Sample:
        append, data = self.stream.append, self.data
        start = time.perf_counter()
        for _ in range(self.count):
            append(data)
        return Sample(self.count, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RawAppend(Contender):
    name = "raw apsw append"

    def __init__(self, count: int, size: int = SIZE) -> None:
        self.count = count
        self.data = payload(0, size)

    def open(self, workdir: str) -> None:
        self.conn = open_raw(os.path.join(workdir, "raw.db"))
        self.conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    def round(self) -> Sample:
        execute, data = self.conn.execute, self.data
        start = time.perf_counter()
        for _ in range(self.count):
            execute("BEGIN IMMEDIATE")
            execute("INSERT INTO records (data) VALUES (?)", (data,))
            execute("COMMIT")
        return Sample(self.count, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class SqlstreamRead(Contender):
    name = "sqlstream read"

    def __init__(self, records: int, size: int = SIZE, page: int = PAGE) -> None:
        self.records, self.size, self.page = records, size, page

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("w9")
        for start in range(0, self.records, BATCH):
            self.stream.extend([payload(i, self.size) for i in range(start, min(start + BATCH, self.records))])

    def round(self) -> Sample:
        read, end, size = self.stream.read, self.records, self.page
        offset = seen = 0
        start = time.perf_counter()
        while offset < end:
            page = read(offset, size)
            seen += len(page)
            offset = page[-1].offset + 1
        elapsed = time.perf_counter() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RawRead(Contender):
    name = "raw apsw read"

    def __init__(self, records: int, size: int = SIZE, page: int = PAGE) -> None:
        self.records, self.size, self.page = records, size, page

    def open(self, workdir: str) -> None:
        conn = self.conn = open_raw(os.path.join(workdir, "raw.db"))
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        for start in range(0, self.records, BATCH):
            with conn:
                conn.executemany("INSERT INTO records (data) VALUES (?)",
                                 [(payload(i, self.size),) for i in range(start, min(start + BATCH, self.records))])

    def round(self) -> Sample:
        execute, end, size = self.conn.execute, self.records, self.page
        sql = "SELECT id, data FROM records WHERE id > ? ORDER BY id LIMIT ?"
        last = seen = 0
        start = time.perf_counter()
        while seen < end:
            page = execute(sql, (last, size)).fetchall()
            seen += len(page)
            last = page[-1][0]
        elapsed = time.perf_counter() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


def w9(env: Env) -> Outcome:
    out = Outcome("W9", "64 KiB records: single appends and reads in pages of 100")
    appends, records = _counts(env)
    with workdir() as tmp:
        out.series = alternate("W9", [SqlstreamAppend(appends), RawAppend(appends)], env.sizes.rounds, tmp, env.log)
        out.series += alternate("W9", [SqlstreamRead(records), RawRead(records)], env.sizes.rounds, tmp, env.log)
    out.notes.append(f"{SIZE:,}-byte records: {appends:,} one-record commits per round; a {records:,}-record "
                     f"stream read in pages of {PAGE} per round; the raw baseline is a rowid table (id, data)")
    out.compare("append vs raw apsw (rowid table)", "sqlstream append", "raw apsw append", 1.2)  # issue 23
    out.compare("read vs raw apsw (rowid table)", "sqlstream read", "raw apsw read", 0.7)  # issue 23
    return out
