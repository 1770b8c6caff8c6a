"""W7's wait strategies side by side: several writer processes, one commit per record.

    python -m benchmarks.contention [--rounds 6] [--count 1500] [--writers 4]
                                    [--variants raw,jitter,stock,jitter200-2000]

Each round runs every variant once, in a rotated order (the machine is shared and its
load drifts, so variants alternate and the report gives medians over rounds):

* ``raw``: raw apsw, ``BEGIN IMMEDIATE`` + INSERT + COMMIT, SQLite's stock busy handler
  (``set_busy_timeout``), as W7's baseline;
* ``jitter``: sqlstream as shipped (the jittered 50 µs–2 ms busy handler);
* ``stock``: sqlstream with SQLite's stock busy handler instead;
* ``jitterA-B``: sqlstream with the jittered handler from A µs doubling to B µs.

Per variant: aggregate records/s, p50/p99/p99.9/max of one append's latency, the p99 of
its two parts (waiting in ``BEGIN IMMEDIATE`` for the lock; everything else: the work
under the lock, COMMIT, Python), slowest ÷ fastest writer's rate, errors (every
sqlstream run is also checked: all records present, offsets gap-free).

``queueN`` (N µs runs; 0: strict turns) measures the first-come-first-served writer queue
prototype of benchmarks/findings.md ("Contention (W7)"), which was not kept: it needs
that code back first (``git apply benchmarks/prototypes/writer-queue.patch``; it was
commit PROTOTYPE, named below).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from .harness import open_raw, payload, start_together, workdir

# The commit holding the writer queue prototype (sqlstream/writerqueue.py), not kept.
PROTOTYPE = "7d4c9f8"


def _configure(variant: str) -> None:
    """Set the wait strategy of sqlstream's connections in this (child) process.

    ``jitter``: as shipped (50 µs doubling to 2 ms, jittered); ``stock``: SQLite's own
    busy timeout (sleeps 1, 2, 5, 10, 15, 20, 25, 25, 50, 50, 100 ms ...); ``jitterA-B``:
    the jittered handler from A µs doubling to B µs.
    """
    import random

    import apsw

    from sqlstream import connection

    from sqlstream import engine

    if hasattr(engine, "WRITER_QUEUE"):
        engine.WRITER_QUEUE = variant.startswith("queue")
    if variant == "jitter":
        return
    if variant.startswith("queue"):  # the writer queue prototype; queue20000: 20 ms runs
        connection.QUEUE_SLICE = int(variant[5:] or 0) * 1000  # type: ignore[attr-defined]
        return
    if variant == "stock":
        def stock(conn: apsw.Connection, timeout: float, first: Any = None) -> None:
            conn.set_busy_timeout(int(timeout * 1000))  # (first: the same-thread check, left out)

        connection.connection_busy_handler = stock
        return
    low, high = (int(x) / 1e6 for x in variant[len("jitter"):].split("-"))

    def jittered(conn: apsw.Connection, timeout: float, first: Any = None) -> None:
        state = {"start": 0.0}

        def handler(tries: int) -> bool:
            now = time.monotonic()
            if tries == 0:
                state["start"] = now
                if first is not None:
                    first()
            elif now - state["start"] >= timeout:
                return False
            time.sleep(min(high, low * (2 ** min(tries, 12))) * (0.5 + random.random()))
            return True

        conn.set_busy_handler(handler)

    connection.connection_busy_handler = jittered


def _sqlstream_writer(variant: str, path: str, count: int, go: Any, results: Any, ident: int) -> None:
    import sqlstream.engine  # noqa: F401 - loaded before _configure patches its helpers

    from .appends import timed_appends

    _configure(variant)
    waits = _time_begins()
    out = timed_appends(path, count, go, ident)
    results.put((*out, waits[-len(out[-1]):]))


def _time_begins() -> list[float]:
    """Record how long each outermost write scope took to begin (the wait for the lock)."""
    from sqlstream import engine

    waits: list[float] = []
    enter = engine.WriteScope.__enter__
    clock = time.perf_counter

    def timed_enter(self: Any) -> Any:
        t = clock()
        try:
            return enter(self)
        finally:
            waits.append(clock() - t)

    engine.WriteScope.__enter__ = timed_enter  # type: ignore[method-assign]
    return waits


def _raw_writer(variant: str, path: str, count: int, go: Any, results: Any, ident: int) -> None:
    errors: list[str] = []
    done = 0
    conn = open_raw(path)
    rows = [payload(ident * 10_000_000 + i) for i in range(count)]
    lat = []
    waits = []
    clock = time.perf_counter
    go.wait(60)
    start = clock()
    for data in rows:
        t = clock()
        try:
            conn.execute("BEGIN IMMEDIATE")
            waits.append(clock() - t)
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
    results.put((ident, done, errors[:5], len(errors), start, end, lat, waits))


def run_variant(variant: str, path: str, count: int, writers: int) -> dict[str, Any]:
    """One W7 run of ``variant`` on a new file at ``path``; its figures."""
    import sqlstream

    if variant == "raw":
        conn = open_raw(path)
        conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, writer INTEGER, data BLOB NOT NULL)")
        conn.close()
        target = _raw_writer
    else:
        with sqlstream.open(path) as db:
            db.create_stream("w7")
        target = _sqlstream_writer
    try:
        got = start_together(target, [(variant, path, count)] * writers)
    except RuntimeError as exc:
        raise RuntimeError(f"{variant}: {exc}") from None
    start = min(g[4] for g in got)
    end = max(g[5] for g in got)
    done = sum(g[1] for g in got)
    rates = [g[1] / (g[5] - g[4]) for g in got]
    lat = sorted(x for g in got for x in g[6])
    waits = sorted(x for g in got for x in g[7])
    rest = sorted(a - b for g in got for a, b in zip(g[6], g[7]))
    res = {
        "rate": done / (end - start),
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "p999_ms": lat[min(len(lat) - 1, int(len(lat) * 0.999))] * 1000,
        "max_ms": lat[-1] * 1000,
        # The p99 split: waiting for the lock (BEGIN) and everything else (work under
        # the lock, COMMIT, Python), each append's own.
        "wait_p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000 if waits else float("nan"),
        "rest_p99_ms": rest[min(len(rest) - 1, int(len(rest) * 0.99))] * 1000 if rest else float("nan"),
        "spread": min(rates) / max(rates),
        "errors": sum(g[3] for g in got),
        "samples": [e for g in got for e in g[2]],
        "integrity": "ok",
    }
    if variant != "raw":
        with sqlstream.open(path) as db:
            total = db.query("SELECT count(*), min(offset), max(offset) FROM chunks").rows[0]
        if tuple(total) != (writers * count, 0, writers * count - 1):
            res["integrity"] = f"expected {writers * count} gap-free records, found {tuple(total)}"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--count", type=int, default=1500, help="appends per writer")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--variants", default="raw,jitter,stock")
    args = ap.parse_args()
    variants = args.variants.split(",")
    from sqlstream import engine

    if any(v.startswith("queue") for v in variants) and not hasattr(engine, "WRITER_QUEUE"):
        raise SystemExit("queue variants: the writer queue prototype is not in this tree "
                         "(git apply benchmarks/prototypes/writer-queue.patch to measure it; "
                         f"it was commit {PROTOTYPE})")
    table: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with workdir() as tmp:
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                res = run_variant(v, os.path.join(tmp, f"{v}-{r}.db"), args.count, args.writers)
                table[v].append(res)
                print(f"round {r} {v:10s} {res['rate']:8,.0f}/s p50 {res['p50_ms']:.2f} ms "
                      f"p99 {res['p99_ms']:.2f} p99.9 {res['p999_ms']:.1f} max {res['max_ms']:.1f} ms (wait p99 {res['wait_p99_ms']:.2f}, rest p99 {res['rest_p99_ms']:.2f}) slowest/fastest {res['spread']:.2f} "
                      f"errors {res['errors']} {res['integrity']} {res['samples'][:1]}", flush=True)
    print(f"\nmedians over {args.rounds} rounds ({args.writers} writers x {args.count} appends, load {os.getloadavg()[0]:.1f}):")
    print(f"{'variant':10s} {'rate/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'p99.9':>7s} {'max':>7s} {'wait99':>7s} {'rest99':>7s} {'slow/fast':>9s} {'errors':>6s}  vs raw")
    raw = statistics.median(r["rate"] for r in table["raw"]) if table.get("raw") else None
    for v in variants:
        rs = table[v]
        rate = statistics.median(r["rate"] for r in rs)
        print(f"{v:10s} {rate:9,.0f} {statistics.median(r['p50_ms'] for r in rs):7.2f} "
              f"{statistics.median(r['p99_ms'] for r in rs):7.2f} {statistics.median(r['p999_ms'] for r in rs):7.1f} "
              f"{statistics.median(r['max_ms'] for r in rs):7.1f} {statistics.median(r['wait_p99_ms'] for r in rs):7.2f} "
              f"{statistics.median(r['rest_p99_ms'] for r in rs):7.2f} {statistics.median(r['spread'] for r in rs):9.2f} "
              f"{sum(r['errors'] for r in rs):6d}  {rate / raw if raw else float('nan'):.2f}x"
              + ("" if all(r["integrity"] == "ok" for r in rs) else "  INTEGRITY FAILED"))

if __name__ == "__main__":
    main()
