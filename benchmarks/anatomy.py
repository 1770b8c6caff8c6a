"""Where sqlstream's time goes: ``python -m benchmarks.anatomy [--rounds N]``

A diagnostic, not part of the results: it splits the W1/W2/W3 gaps to raw SQLite into
their parts by timing the same work with pieces removed — sqlstream itself, the same
SQL on sqlstream's tables without the Python layer, fewer columns, fewer pages per
commit, the cyclic GC switched off — and it watches the WAL under sustained appends.

Times are CPU seconds of this process (``time.process_time``, all threads, so
sqlstream's background checkpoint thread is counted): on a shared machine they drift far
less than wall-clock time, and every piece here is CPU work (no fsync at
``synchronous=NORMAL``). Variants alternate round by round; medians are printed.
Findings drawn from this output are in benchmarks/findings.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlstream
from sqlstream.records import RECORD_COLUMNS, make_records

from .harness import (
    SCHEMA_INSERT_SQL,
    SCHEMA_STREAM_SQL,
    SCHEMA_TXN_SQL,
    open_raw,
    open_raw_schema,
    payload,
    workdir,
)

BATCH = 1_000
ROWS = [payload(i) for i in range(BATCH)]


def compare(title: str, variants: dict[str, Callable[[], int]], rounds: int, unit: str = "ns") -> None:
    """Run each variant ``rounds`` times, alternating; print median CPU time per item."""
    scale = {"ns": 1e9, "µs": 1e6}[unit]
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always first
            fn = variants[name]
            t = time.process_time()
            n = fn()
            times[name].append((time.process_time() - t) / n * scale)
    first = statistics.median(next(iter(times.values())))
    print(f"\n{title}")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"  {name:52s} {m:8.1f} {unit} CPU   ({m / first:.2f}× the first line)")


def nogc(fn: Callable[[], int]) -> Callable[[], int]:
    def run() -> int:
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()

    return run


def commit_pages(tmp: str, rounds: int) -> None:
    conn = open_raw(os.path.join(tmp, "pages.db"))
    for t in ("a", "b", "c"):
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute(f"INSERT INTO {t} VALUES (1, 0)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, data BLOB)")

    def pages(n: int) -> Callable[[], int]:
        updates = [f"UPDATE {t} SET v = v + 1 WHERE id = 1" for t in ("a", "b", "c")[: max(0, n - 1)]]

        def run() -> int:
            for data in ROWS[:500]:
                conn.execute("BEGIN IMMEDIATE")
                for sql in updates:
                    conn.execute(sql)
                if n:
                    conn.execute("INSERT INTO log (data) VALUES (?)", (data,))
                conn.execute("COMMIT")
            return 500

        return run

    compare("Commit cost by pages written (raw apsw, WAL, synchronous=NORMAL), per commit:",
            {"empty transaction": pages(0), "1 page (one INSERT)": pages(1),
             "2 pages (+1 UPDATE of another table)": pages(2), "3 pages (+2 UPDATEs)": pages(3)},
            rounds, "µs")
    conn.close()


def singles(tmp: str, rounds: int) -> None:
    db = sqlstream.open(os.path.join(tmp, "w2.db"))
    stream = db.create_stream("s")
    schema = open_raw_schema(os.path.join(tmp, "w2-schema.db"))
    two = open_raw_schema(os.path.join(tmp, "w2-two.db"))
    one = open_raw_schema(os.path.join(tmp, "w2-one.db"))
    bare = open_raw(os.path.join(tmp, "w2-bare.db"))
    bare.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    data = ROWS[:500]

    def ours() -> int:
        for d in data:
            stream.append(d)
        return len(data)

    def same_sql() -> int:  # counters row + streams row + chunks leaf: 3 pages
        for d in data:
            schema.execute("BEGIN IMMEDIATE")
            txn = schema.execute(SCHEMA_TXN_SQL).fetchall()[0][0]
            now = time.time_ns() // 1000
            nxt, length = schema.execute(SCHEMA_STREAM_SQL, (1, len(d), now)).fetchall()[0]
            schema.execute(SCHEMA_INSERT_SQL, (nxt - 1, length - len(d), now, txn, d))
            schema.execute("COMMIT")
        return len(data)

    def no_counter() -> int:  # streams row + chunks leaf: 2 pages
        for d in data:
            two.execute("BEGIN IMMEDIATE")
            now = time.time_ns() // 1000
            nxt, length = two.execute(SCHEMA_STREAM_SQL, (1, len(d), now)).fetchall()[0]
            two.execute(SCHEMA_INSERT_SQL, (nxt - 1, length - len(d), now, 0, d))
            two.execute("COMMIT")
        return len(data)

    def chunks_only() -> int:  # next offset from the stream's last chunk: 1 page
        tail = ("SELECT offset + 1, position + length(data) FROM chunks WHERE stream_id = 1 "
                "ORDER BY offset DESC LIMIT 1")
        for d in data:
            one.execute("BEGIN IMMEDIATE")
            got = one.execute(tail).fetchall()
            nxt, pos = got[0] if got else (0, 0)
            one.execute(SCHEMA_INSERT_SQL, (nxt, pos, time.time_ns() // 1000, 0, d))
            one.execute("COMMIT")
        return len(data)

    def raw() -> int:
        for d in data:
            bare.execute("BEGIN IMMEDIATE")
            bare.execute("INSERT INTO records (data) VALUES (?)", (d,))
            bare.execute("COMMIT")
        return len(data)

    compare("W2, one append per commit, per append:", {
        "sqlstream Stream.append": ours,
        "same SQL on sqlstream's tables, raw apsw (3 pages)": same_sql,
        "without the txn counter (2 pages)": no_counter,
        "chunks row only, offset from the last chunk (1 page)": chunks_only,
        "raw apsw, bare table (the W2 baseline)": raw,
    }, rounds, "µs")
    for c in (schema, two, one, bare):
        c.close()
    db.close()


def batches(tmp: str, rounds: int) -> None:
    db = sqlstream.open(os.path.join(tmp, "w1.db"))
    stream = db.create_stream("s")
    schema = open_raw_schema(os.path.join(tmp, "w1-schema.db"))
    cols = "stream_id, offset, position, timestamp, txn, key, headers, content_type, data"
    plain = open_raw(os.path.join(tmp, "w1-plain.db"))
    plain.execute(f"CREATE TABLE chunks (id INTEGER PRIMARY KEY, {cols})")
    bare = open_raw(os.path.join(tmp, "w1-bare.db"))
    bare.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    n = 10
    offsets = {"schema": 0, "plain": 0}

    def ours() -> int:
        for _ in range(n):
            stream.extend(ROWS)
        return n * BATCH

    per = 200  # rows per INSERT statement, as sqlstream does it (multi-row VALUES)
    sql = (f"INSERT INTO chunks ({cols}) VALUES " + ",".join(["(1, ?, ?, ?, 1, NULL, NULL, 'bytes', ?)"] * per))

    def chunks_insert(conn: Any, key: str) -> Callable[[], int]:
        def run() -> int:
            for _ in range(n):
                o = offsets[key]
                conn.execute("BEGIN IMMEDIATE")
                for start in range(0, BATCH, per):
                    params: list[Any] = []
                    for i in range(start, start + per):
                        params += (o + i, (o + i) * 100, 0, ROWS[i])
                    conn.execute(sql, params)
                conn.execute("COMMIT")
                offsets[key] = o + BATCH
            return n * BATCH

        return run

    def raw() -> int:
        rows = [(d,) for d in ROWS]
        for _ in range(n):
            bare.execute("BEGIN IMMEDIATE")
            bare.executemany("INSERT INTO records (data) VALUES (?)", rows)
            bare.execute("COMMIT")
        return n * BATCH

    compare("W1, 1,000 records per transaction, per record:", {
        "sqlstream Stream.extend": ours,
        "only the INSERTs into sqlstream's chunks table (9 columns, keyed)": chunks_insert(schema, "schema"),
        "the same INSERTs into a rowid table with no key index": chunks_insert(plain, "plain"),
        "raw apsw, bare table (the W1 baseline)": raw,
    }, rounds)
    for c in (schema, plain, bare):
        c.close()
    db.close()


def reads(tmp: str, rounds: int) -> None:
    path = os.path.join(tmp, "w3.db")
    db = sqlstream.open(path)
    stream = db.create_stream("s")
    for _ in range(50):
        stream.extend(ROWS)
    db.close()
    db = sqlstream.open(path, readonly=True)
    stream = db.stream("s")
    conn = open_raw(path)
    bare = open_raw(os.path.join(tmp, "w3-bare.db"))
    bare.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    with bare:
        bare.executemany("INSERT INTO records (data) VALUES (?)", [(d,) for d in ROWS * 50])
    total = 50 * BATCH
    where = " FROM chunks WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT 1000"
    pages = [conn.execute(f"SELECT {RECORD_COLUMNS}{where}", (o,)).fetchall() for o in range(0, total, BATCH)]

    def ours() -> int:
        for o in range(0, total, BATCH):
            stream.read(o, BATCH)
        return total

    def fetch(columns: str) -> Callable[[], int]:
        def run() -> int:
            for o in range(0, total, BATCH):
                conn.execute(f"SELECT {columns}{where}", (o,)).fetchall()
            return total

        return run

    def build() -> int:
        for rows in pages:
            make_records("s", rows)
        return total

    def raw() -> int:
        last = 0
        for _ in range(50):
            last = bare.execute("SELECT id, data FROM records WHERE id > ? ORDER BY id LIMIT 1000",
                                (last,)).fetchall()[-1][0]
        return total

    compare("W3, pages of 1,000 records, per record:", {
        "sqlstream Stream.read": ours,
        "sqlstream Stream.read, cyclic GC off": nogc(ours),
        "fetch sqlstream's 8 record columns (apsw tuples)": fetch(RECORD_COLUMNS),
        "fetch offset, data only": fetch("offset, data"),
        "make_records on fetched rows": build,
        "make_records, cyclic GC off": nogc(build),
        "raw apsw, bare table (the W3 baseline)": raw,
    }, rounds)
    conn.close()
    bare.close()
    db.close()


def wal(tmp: str) -> None:
    """Sustained appends: how big the WAL gets, how often it restarts, the slowest commits."""
    path = os.path.join(tmp, "wal.db")
    db = sqlstream.open(path)
    stream = db.create_stream("s")

    def frames() -> int:
        with open(path + "-shm", "rb") as f:  # WalIndexHdr.mxFrame: u32, native order, offset 16
            return int(struct.unpack("=I", f.read(20)[16:20])[0])

    def run(label: str, count: int, fn: Callable[[], None]) -> None:
        seen, lat = [], []
        for _ in range(count):
            t = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t)
            seen.append(frames())
        restarts = sum(1 for a, b in zip(seen, seen[1:]) if b < a)
        lat.sort()
        print(f"  {label}: WAL up to {max(seen):,} frames, {restarts} restarts; commit p50 "
              f"{lat[len(lat) // 2] * 1e3:.2f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms, "
              f"max {lat[-1] * 1e3:.1f} ms")

    print("\nWAL under sustained appends (wall-clock latencies):")
    run("400 transactions of 1,000 records", 400, lambda: stream.extend(ROWS))
    run("20,000 single appends", 20_000, lambda: stream.append(ROWS[0]))
    db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.anatomy", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=11, help="alternating rounds per comparison (default 11)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1 <= args.rounds <= 100:
        raise SystemExit("--rounds must be between 1 and 100")
    with workdir("sqlstream-anatomy-") as tmp:
        commit_pages(tmp, args.rounds)
        singles(tmp, args.rounds)
        batches(tmp, args.rounds)
        reads(tmp, args.rounds)
        wal(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
