"""Appending: W1 (batches of 1,000 per transaction), W2 (one commit per record), W7 (4 writer processes)."""

from __future__ import annotations

import os
import time
from typing import Any

import sqlstream

from .harness import (
    SCHEMA_INSERT_SQL,
    SCHEMA_LAST_SQL,
    SCHEMA_TAIL_TXN_SQL,
    Check,
    Contender,
    Env,
    Outcome,
    Sample,
    Series,
    alternate,
    open_raw,
    open_raw_schema,
    payload,
    start_together,
    workdir,
)

SCHEMA_NAME = "raw apsw, sqlstream's schema"
from .peers import need

BATCH = 1_000


# --------------------------------------------------------------------------- W1


class SqlstreamBatch(Contender):
    name = "sqlstream"

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.rows = [payload(i) for i in range(BATCH)]

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("w1")

    def round(self) -> Sample:
        extend, rows = self.stream.extend, self.rows
        start = time.perf_counter()
        for _ in range(self.batches):
            extend(rows)
        return Sample(self.batches * BATCH, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RawBatch(Contender):
    name = "raw apsw"

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.rows = [(payload(i),) for i in range(BATCH)]

    def open(self, workdir: str) -> None:
        self.conn = open_raw(os.path.join(workdir, "raw.db"))
        self.conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    def round(self) -> Sample:
        conn, rows = self.conn, self.rows
        start = time.perf_counter()
        for _ in range(self.batches):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO records (data) VALUES (?)", rows)
            conn.execute("COMMIT")
        return Sample(self.batches * BATCH, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class RawSchemaBatch(Contender):
    """Diagnostic, no target: sqlstream's tables and bookkeeping written as plain SQL
    (the next offset and position read from the last record, the txn from the counter)."""

    name = SCHEMA_NAME

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.data = [payload(i) for i in range(BATCH)]

    def open(self, workdir: str) -> None:
        self.conn = open_raw_schema(os.path.join(workdir, "schema.db"))

    def round(self) -> Sample:
        conn, data = self.conn, self.data
        start = time.perf_counter()
        for _ in range(self.batches):
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute(SCHEMA_LAST_SQL).fetchall()
            first, pos = last[0] if last else (0, 0)
            txn = conn.execute(SCHEMA_TAIL_TXN_SQL).fetchall()[0][0]
            now = time.time_ns() // 1000
            conn.executemany(
                SCHEMA_INSERT_SQL, [(first + i, pos + i * len(d), now, txn, d) for i, d in enumerate(data)]
            )
            conn.execute("COMMIT")
        return Sample(self.batches * BATCH, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class RedisPipelined(Contender):
    name = "Redis XADD pipelined"

    def __init__(self, env: Env, batches: int) -> None:
        self.env = env
        self.batches = batches
        self.rows = [payload(i) for i in range(BATCH)]

    def open(self, workdir: str) -> None:
        self.client = self.env.redis_or_skip().client()
        self.client.delete("w1")

    def round(self) -> Sample:
        client, rows = self.client, self.rows
        start = time.perf_counter()
        for _ in range(self.batches):
            pipe = client.pipeline(transaction=False)
            for data in rows:
                pipe.xadd("w1", {"d": data})
            pipe.execute()
        return Sample(self.batches * BATCH, time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.delete("w1")
            self.client.close()


def w1(env: Env) -> Outcome:
    out = Outcome("W1", "batch append, 1,000 records per transaction")
    n = env.sizes.w1_batches
    with workdir() as tmp:
        out.series = alternate(
            "W1", [SqlstreamBatch(n), RawBatch(n), RedisPipelined(env, n), RawSchemaBatch(n)], env.sizes.rounds, tmp, env.log
        )
    out.compare("vs raw apsw executemany", "sqlstream", "raw apsw", 0.8)  # issue 11
    out.compare("vs Redis XADD pipelined", "sqlstream", "Redis XADD pipelined", 2.0)
    out.compare("vs raw apsw doing sqlstream's bookkeeping", "sqlstream", SCHEMA_NAME)
    return out


# --------------------------------------------------------------------------- W2


class _Singles(Contender):
    """Appends ``count`` records one at a time, timing each."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.rows = [payload(i) for i in range(count)]

    def append(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def round(self) -> Sample:
        append, clock = self.append, time.perf_counter
        lat = []
        start = clock()
        for data in self.rows:
            t = clock()
            append(data)
            lat.append(clock() - t)
        return Sample(self.count, clock() - start, lat)


class SqlstreamSingle(_Singles):
    name = "sqlstream"

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.append = self.db.create_stream("w2").append  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class RawSingle(_Singles):
    name = "raw apsw"

    def open(self, workdir: str) -> None:
        conn = self.conn = open_raw(os.path.join(workdir, "raw.db"))
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")

        def append(data: bytes) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO records (data) VALUES (?)", (data,))
            conn.execute("COMMIT")

        self.append = append  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class RawSchemaSingle(_Singles):
    """Diagnostic, no target: sqlstream's tables and bookkeeping written as plain SQL
    (the next offset and position read from the last record, the txn from the counter)."""

    name = SCHEMA_NAME

    def open(self, workdir: str) -> None:
        conn = self.conn = open_raw_schema(os.path.join(workdir, "schema.db"))

        def append(data: bytes) -> None:
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute(SCHEMA_LAST_SQL).fetchall()
            nxt, position = last[0] if last else (0, 0)
            txn = conn.execute(SCHEMA_TAIL_TXN_SQL).fetchall()[0][0]
            now = time.time_ns() // 1000
            conn.execute(SCHEMA_INSERT_SQL, (nxt, position, now, txn, data))
            conn.execute("COMMIT")

        self.append = append  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


class PersistQueuePut(_Singles):
    name = "persist-queue put"

    def open(self, workdir: str) -> None:
        persistqueue = need("persistqueue", "persist-queue")
        self.q = persistqueue.SQLiteQueue(os.path.join(workdir, "pq"), auto_commit=True)
        self.append = self.q.put  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "q"):
            self.q.close()


class LitequeuePut(_Singles):
    name = "litequeue put"

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.rows = [r.decode() for r in self.rows]  # type: ignore[misc]  # litequeue stores TEXT

    def open(self, workdir: str) -> None:
        litequeue = need("litequeue", "litequeue")
        self.q = litequeue.LiteQueue(os.path.join(workdir, "lq.db"))
        self.append = self.q.put  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "q"):
            self.q.close()


class DiskcacheAppend(_Singles):
    name = "diskcache Deque.append"

    def open(self, workdir: str) -> None:
        diskcache = need("diskcache", "diskcache")
        self.dq = diskcache.Deque(directory=os.path.join(workdir, "dc"))
        self.append = self.dq.append  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "dq"):
            self.dq.cache.close()


class RedisSingle(_Singles):
    name = "Redis XADD"

    def __init__(self, env: Env, count: int) -> None:
        super().__init__(count)
        self.env = env

    def open(self, workdir: str) -> None:
        client = self.client = self.env.redis_or_skip().client()
        client.delete("w2")
        self.append = lambda data: client.xadd("w2", {"d": data})  # type: ignore[method-assign]

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.delete("w2")
            self.client.close()


def w2(env: Env) -> Outcome:
    out = Outcome("W2", "single appends, one commit each")
    n, slow = env.sizes.w2_appends, env.sizes.w2_slow_appends
    contenders = [
        SqlstreamSingle(n), RawSingle(n), PersistQueuePut(slow), LitequeuePut(n), DiskcacheAppend(n),
        RedisSingle(env, n), RawSchemaSingle(n),
    ]
    with workdir() as tmp:
        out.series = alternate("W2", contenders, env.sizes.rounds, tmp, env.log)
    pq = out.get("persist-queue put")
    if pq is not None:
        pq.note = "fsyncs every commit (WAL, synchronous=FULL, its default); fewer records per round"
    targets = {"raw apsw": 0.7, "persist-queue put": 2.0, "litequeue put": 1.8}  # issue 23 (issue 11: 0.6, 1.5)
    for c in contenders[1:]:
        out.compare(f"vs {c.name}", "sqlstream", c.name, targets.get(c.name))
    return out


# --------------------------------------------------------------------------- W7

WRITERS = 4


def _sqlstream_writer(path: str, count: int, go: Any, results: Any, ident: int) -> None:
    results.put(timed_appends(path, count, go, ident))


def timed_appends(path: str, count: int, go: Any, ident: int) -> tuple[Any, ...]:
    """One W7 writer: ``count`` single-record commits to stream w7 once ``go`` is set.

    Returns (ident, appended, first error texts, errors, start, end, per-append seconds).
    """
    errors: list[str] = []
    done = 0
    with sqlstream.open(path) as db:
        stream = db.stream("w7")
        rows = [payload(ident * 10_000_000 + i) for i in range(count)]
        lat = []
        key = str(ident)
        clock = time.perf_counter
        go.wait(60)
        start = clock()
        for data in rows:
            t = clock()
            try:
                stream.append(data, key=key)
                done += 1
            except Exception as exc:  # noqa: BLE001 - counted, the target is zero
                errors.append(f"{type(exc).__name__}: {exc}")
            lat.append(clock() - t)
        end = clock()
    return ident, done, errors[:5], len(errors), start, end, lat


def _raw_writer(path: str, count: int, go: Any, results: Any, ident: int) -> None:
    errors: list[str] = []
    done = 0
    conn = open_raw(path)
    rows = [payload(ident * 10_000_000 + i) for i in range(count)]
    lat = []
    clock = time.perf_counter
    go.wait(60)
    start = clock()
    for data in rows:
        t = clock()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO records (writer, data) VALUES (?, ?)", (ident, data))
            conn.execute("COMMIT")
            done += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
        lat.append(clock() - t)
    end = clock()
    conn.close()
    results.put((ident, done, errors[:5], len(errors), start, end, lat))


def _run_writers(target: Any, path: str, count: int) -> dict[str, Any]:
    got = start_together(target, [(path, count)] * WRITERS)
    start = min(g[4] for g in got)
    end = max(g[5] for g in got)
    done = sum(g[1] for g in got)
    return {
        "writers": WRITERS,
        "appended": done,
        "errors": sum(g[3] for g in got),
        "error_samples": [e for g in got for e in g[2]],
        "seconds": end - start,
        "rate": done / (end - start),
        "per_writer_rate": [g[1] / (g[5] - g[4]) for g in sorted(got)],
        "latencies": [x for g in got for x in g[6]],
    }


def w7(env: Env) -> Outcome:
    out = Outcome("W7", f"{WRITERS} writer processes appending at once (one commit per record)")
    count = env.sizes.w7_appends
    ours = Series("W7", "sqlstream", "records/s")
    raw = Series("W7", "raw apsw", "records/s",
                 note="BEGIN IMMEDIATE + SQLite's stock busy handler (sleeps 1 ms growing to 100 ms; 30 s timeout)")
    runs: list[dict[str, Any]] = []
    with workdir() as tmp:
        for r in range(max(1, env.sizes.rounds // 2)):
            for name in (("sqlstream", "raw") if r % 2 == 0 else ("raw", "sqlstream")):
                path = os.path.join(tmp, f"{name}-{r}.db")
                if name == "sqlstream":
                    with sqlstream.open(path) as db:
                        db.create_stream("w7")
                    res = _run_writers(_sqlstream_writer, path, count)
                    with sqlstream.open(path) as db:
                        res["integrity"] = _check_w7(db, count)
                    ours.values.append(res["rate"])
                    ours.op_ms.extend(x * 1000 for x in res.pop("latencies"))
                else:
                    conn = open_raw(path)
                    conn.execute(
                        "CREATE TABLE records (id INTEGER PRIMARY KEY, writer INTEGER, data BLOB NOT NULL)"
                    )
                    conn.close()
                    res = _run_writers(_raw_writer, path, count)
                    raw.values.append(res["rate"])
                    raw.op_ms.extend(x * 1000 for x in res.pop("latencies"))
                res["system"] = name
                runs.append(res)
                env.log(f"  W7 {name}: {res['rate']:,.0f} rec/s, errors {res['errors']}")
    out.series = [ours, raw]
    out.facts = {"runs": runs, "appends_per_writer": count}
    ours_runs = [r for r in runs if r["system"] == "sqlstream"]
    errors = sum(r["errors"] for r in ours_runs)
    broken = [r["integrity"] for r in ours_runs if r["integrity"] != "ok"]
    out.facts["sqlstream_errors"] = errors
    out.compare("vs raw apsw, 4 processes", "sqlstream", "raw apsw", 0.6)  # issue 11's targets
    out.checks.append(Check("W7", "sqlstream p99 per append (4 writers)", ours.op_p(99) if ours.op_ms else None, "<=",
                            2.0, "ms"))
    spreads = sorted(min(r["per_writer_rate"]) / max(r["per_writer_rate"]) for r in ours_runs
                     if r.get("per_writer_rate") and max(r["per_writer_rate"]) > 0)
    out.facts["slowest_over_fastest_writer"] = spreads
    if spreads:
        out.checks.append(Check("W7", "sqlstream slowest ÷ fastest writer (median of runs)",
                                spreads[len(spreads) // 2], ">=", 0.5, "×"))
    out.checks.append(Check("W7", "sqlstream errors (4 writers)", float(errors + len(broken)), "<=", 0, unit="",
                            hard=True))
    if broken:
        out.notes.append("integrity check failed: " + "; ".join(broken))
    return out


def _check_w7(db: sqlstream.Database, count: int) -> str:
    """Every writer's records are present once, offsets are gap-free."""
    info = db.stream("w7").info()
    if info.next_offset != WRITERS * count:
        return f"expected {WRITERS * count} records, found {info.next_offset}"
    rows = db.query("SELECT key, count(*), min(offset), max(offset) FROM chunks GROUP BY key").rows
    per = {k: c for k, c, _, _ in rows}
    if per != {str(i): count for i in range(WRITERS)}:
        return f"per-writer counts {per}"
    total = db.query("SELECT count(*), min(offset), max(offset) FROM chunks").rows[0]
    if tuple(total) != (WRITERS * count, 0, WRITERS * count - 1):
        return f"offsets not gap-free: {total}"
    return "ok"
