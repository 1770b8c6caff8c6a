"""Reading: W3, a sequential scan of a stream in pages of 1,000 records."""

from __future__ import annotations

import os
import time

import sqlstream

from .appends import BATCH
from .appends import SCHEMA_NAME
from .harness import (
    SCHEMA_INSERT_SQL,
    SCHEMA_READ_SQL,
    Contender,
    Env,
    Outcome,
    Sample,
    alternate,
    open_raw,
    open_raw_schema,
    payload,
    workdir,
)

PAGE = 1_000


class SqlstreamScan(Contender):
    name = "sqlstream"

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("w3")
        rows = [payload(i) for i in range(BATCH)]
        for _ in range(self.records // BATCH):
            self.stream.extend(rows)

    def round(self) -> Sample:
        read, clock, end = self.stream.read, time.perf_counter, self.records
        lat = []
        offset = seen = 0
        start = clock()
        while offset < end:
            t = clock()
            page = read(offset, PAGE)
            lat.append(clock() - t)
            seen += len(page)
            offset = page[-1].offset + 1
        elapsed = clock() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed, lat)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RawScan(Contender):
    name = "raw apsw"

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        conn = self.conn = open_raw(os.path.join(workdir, "raw.db"))
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        rows = [(payload(i),) for i in range(BATCH)]
        for _ in range(self.records // BATCH):
            with conn:
                conn.executemany("INSERT INTO records (data) VALUES (?)", rows)

    def round(self) -> Sample:
        execute, clock, end = self.conn.execute, time.perf_counter, self.records
        sql = "SELECT id, data FROM records WHERE id > ? ORDER BY id LIMIT ?"
        lat = []
        last = seen = 0
        start = clock()
        while seen < end:
            t = clock()
            page = execute(sql, (last, PAGE)).fetchall()
            lat.append(clock() - t)
            seen += len(page)
            last = page[-1][0]
        elapsed = clock() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed, lat)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class RawSchemaScan(Contender):
    """Diagnostic, no target: the 8 columns sqlstream reads, as plain tuples from its table."""

    name = SCHEMA_NAME

    def __init__(self, records: int) -> None:
        self.records = records

    def open(self, workdir: str) -> None:
        conn = self.conn = open_raw_schema(os.path.join(workdir, "schema.db"))
        for start in range(0, self.records, BATCH):
            with conn:
                conn.executemany(SCHEMA_INSERT_SQL, [(i, i * 100, i, 1, payload(i)) for i in range(start, start + BATCH)])

    def round(self) -> Sample:
        execute, clock, end = self.conn.execute, time.perf_counter, self.records
        lat = []
        offset = seen = 0
        start = clock()
        while offset < end:
            t = clock()
            page = execute(SCHEMA_READ_SQL, (offset, PAGE)).fetchall()
            lat.append(clock() - t)
            seen += len(page)
            offset = page[-1][0] + 1
        elapsed = clock() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed, lat)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class RedisScan(Contender):
    name = "Redis XREAD COUNT 1000"

    def __init__(self, env: Env, records: int) -> None:
        self.env = env
        self.records = records

    def open(self, workdir: str) -> None:
        client = self.client = self.env.redis_or_skip().client()
        client.delete("w3")
        rows = [payload(i) for i in range(BATCH)]
        for _ in range(self.records // BATCH):
            pipe = client.pipeline(transaction=False)
            for data in rows:
                pipe.xadd("w3", {"d": data})
            pipe.execute()

    def round(self) -> Sample:
        xread, clock, end = self.client.xread, time.perf_counter, self.records
        lat = []
        last: bytes | str = "0-0"
        seen = 0
        start = clock()
        while seen < end:
            t = clock()
            [(_key, entries)] = xread({"w3": last}, count=PAGE)
            lat.append(clock() - t)
            seen += len(entries)
            last = entries[-1][0]
        elapsed = clock() - start
        assert seen == end, (seen, end)
        return Sample(seen, elapsed, lat)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.delete("w3")
            self.client.close()


def w3(env: Env) -> Outcome:
    out = Outcome("W3", "sequential read in pages of 1,000")
    n = env.sizes.w3_records
    with workdir() as tmp:
        out.series = alternate("W3", [SqlstreamScan(n), RawScan(n), RedisScan(env, n), RawSchemaScan(n)], env.sizes.rounds, tmp, env.log)
    out.notes.append(f"each round reads the whole {n:,}-record stream; sqlstream builds Record objects "
                     "(9 fields, headers decoded), the raw baseline returns (id, data) tuples")
    out.compare("vs raw apsw range select", "sqlstream", "raw apsw", 0.5)  # issue 23 (issue 11: 0.4)
    out.compare("vs Redis XREAD COUNT 1000", "sqlstream", "Redis XREAD COUNT 1000")
    out.compare("vs raw apsw reading sqlstream's 8 columns", "sqlstream", SCHEMA_NAME)
    return out
