"""W8: single appends in files holding many streams (issue 23, item 1).

Each writer process opens the file, waits for the start signal and makes ``count``
single-record commits to a stream of its own; the rate is every writer's records over
the span from the first start to the last end, so a writer's first append after opening
(which derives the commit number once) is included, as it is for a short-lived process.
With two writers every append finds the other's commit (``PRAGMA data_version``
changed) and derives the commit number again: the cost this workload watches, at 10,
10,000 and 1,000,000 streams (quick mode: 10, 1,000, 10,000).

The many-stream files are built with plain SQL (one ``streams`` row and one 100-byte
record per stream, and the commit counter, as sqlstream stores them), then opened with sqlstream: creating a
million streams through the API would take minutes of setup on the benchmark machine.

``python -m benchmarks.manystreams [--quick] [--rounds N]`` runs W8 alone and prints its
table (benchmarks/findings.md compares it with the same module run on older code).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Sequence
from typing import Any

import apsw

import sqlstream

from .harness import Check, Env, Outcome, Series, payload, section_args, start_together, workdir

def stream_counts(quick: bool) -> tuple[int, ...]:
    return (10, 1_000, 10_000) if quick else (10, 10_000, 1_000_000)


def build(path: str, streams: int) -> None:
    """A sqlstream file holding ``streams`` streams named ``s0``, ``s1``, … with one record each."""
    with sqlstream.open(path):
        pass  # the schema, by sqlstream's own migrations
    conn = apsw.Connection(path)
    try:
        conn.set_busy_timeout(30_000)
        data = payload(0)
        step = 100_000
        for lo in range(0, streams, step):
            hi = min(streams, lo + step)
            with conn:
                conn.executemany(
                    "INSERT INTO streams (id, name, created_at) VALUES (?, ?, 0)",
                    ((i + 1, f"s{i}") for i in range(lo, hi)),
                )
                # txn i + 1: a distinct commit per stream, as streams filled one by one.
                conn.executemany(
                    "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, "
                    "content_type, data) VALUES (?, 0, 0, 0, ?, NULL, NULL, 'bytes', ?)",
                    ((i + 1, i + 1, data) for i in range(lo, hi)),
                )
                conn.execute("UPDATE counters SET value = ? WHERE name = 'txn'", (hi,))  # as the appends would
    finally:
        conn.close()
    with sqlstream.open(path):
        pass  # checkpointed and self-contained again


def _writer(path: str, stream: str, count: int, go: Any, results: Any, ident: int) -> None:
    errors = 0
    with sqlstream.open(path) as db:
        handle = db.stream(stream)
        rows = [payload(ident * 10_000_000 + i) for i in range(count)]
        go.wait(60)
        start = time.perf_counter()
        for data in rows:
            try:
                handle.append(data)
            except sqlstream.SqlstreamError:
                errors += 1
        end = time.perf_counter()
    results.put((ident, count - errors, errors, start, end))


def run_writers(path: str, writers: int, count: int) -> dict[str, Any]:
    """``writers`` processes, each ``count`` single appends to its own stream (s0, s1, …)."""
    got = start_together(_writer, [(path, f"s{i}", count) for i in range(writers)])
    done = sum(g[1] for g in got)
    seconds = max(g[4] for g in got) - min(g[3] for g in got)
    return {"appended": done, "errors": sum(g[2] for g in got), "rate": done / seconds}


def check_file(path: str, streams: int, writers: int, appended: int) -> str:
    """The appends left gap-free offsets and strictly increasing txn in every written stream."""
    with sqlstream.open(path, readonly=True) as db:
        total = 0
        for i in range(writers):
            rows = db.query("SELECT offset, txn FROM chunks WHERE stream_id = ? ORDER BY offset", (i + 1,)).rows
            offsets = [r[0] for r in rows]
            txns = [r[1] for r in rows]
            if offsets != list(range(len(offsets))):
                return f"stream s{i}: offsets not gap-free"
            if any(b <= a for a, b in zip(txns, txns[1:])):
                return f"stream s{i}: txn not strictly increasing"
            total += len(rows) - 1
        if total != appended:
            return f"expected {appended} appended records, found {total}"
        head = db.query("SELECT txn FROM last_txn").rows[0][0]
        if head != streams + appended:
            return f"last_txn {head}, expected {streams + appended} (one per commit)"
    return "ok"


def measure(
    counts: Sequence[int], rounds: int, appends: int, log: Any,
) -> tuple[dict[tuple[str, int, int], list[float]], list[str]]:
    """Rates per ("sqlstream", streams, writers), rounds alternating over every configuration."""
    variants = ("sqlstream",)
    rates: dict[tuple[str, int, int], list[float]] = {}
    problems: list[str] = []
    with workdir("sqlstream-bench-w8-") as tmp:
        files: dict[tuple[str, int], str] = {}
        appended: dict[tuple[str, int], int] = {}
        for n in counts:
            base = os.path.join(tmp, f"base-{n}.db")
            t = time.perf_counter()
            build(base, n)
            log(f"  W8 built {n:,} streams in {time.perf_counter() - t:.1f} s")
            for v in variants:
                path = os.path.join(tmp, f"{v[:6]}-{n}.db")
                shutil.copyfile(base, path)
                files[v, n] = path
                appended[v, n] = 0
            os.remove(base)
        configs = [(v, n, w) for n in counts for w in (1, 2) for v in variants]
        for r in range(rounds):
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for v, n, w in order:
                res = run_writers(files[v, n], w, appends)
                appended[v, n] += res["appended"]
                if res["errors"]:
                    problems.append(f"{v}, {n} streams, {w} writers: {res['errors']} errors")
                rates.setdefault((v, n, w), []).append(res["rate"])
        for (v, n), path in files.items():
            # Each writer count used streams s0 (and s1): every append is in those two.
            verdict = check_file(path, n, 2, appended[v, n])
            if verdict != "ok":
                problems.append(f"{v}, {n} streams: {verdict}")
    return rates, problems


def w8(env: Env) -> Outcome:
    counts = stream_counts(env.sizes.quick)
    appends = 300 if env.sizes.quick else 1_000
    rounds = env.sizes.rounds if env.sizes.quick else 3
    out = Outcome("W8", "single appends in files of many streams (1 and 2 writer processes)")
    rates, problems = measure(counts, rounds, appends, env.log)
    for (_, n, w), values in rates.items():
        out.series.append(Series("W8", f"sqlstream, {w} writer{'s' if w > 1 else ''}, {n:,} streams",
                                 "records/s", values))
    for s in out.series:
        env.log(f"  W8 {s.system}: {s.median():,.0f} rec/s")
    small, big = counts[0], counts[-1]
    for w in (1, 2):
        label = f"{w} writer{'s' if w > 1 else ''}"
        ours, theirs = f"sqlstream, {label}, {big:,} streams", f"sqlstream, {label}, {small:,} streams"
        out.compare(f"{label}: {big:,} streams vs {small:,}", ours, theirs, 0.8 if w == 2 else None)
    out.facts = {"appends_per_writer": appends, "stream_counts": list(counts), "rounds": rounds}
    out.checks.append(Check("W8", "errors, gaps or txn out of order", float(len(problems)), "<=", 0, unit="",
                            hard=True))
    if problems:
        out.notes.append("integrity: " + "; ".join(problems))
    out.notes.append("many-stream files built with plain SQL (one 100-byte record per stream); "
                     "each rate counts the writers' first append after opening")
    return out


def main(argv: list[str] | None = None) -> int:
    quick, rounds, command = section_args("python -m benchmarks.manystreams", "W8 alone", argv)
    counts = stream_counts(quick)
    appends = 300 if quick else 1_000
    rates, problems = measure(counts, rounds, appends, print)
    print(f"\n#### W8: `{command}`, {rounds} alternating rounds, medians, {appends} appends per writer\n")
    print("| streams | 1 writer (rec/s) | 2 writers (rec/s) |")
    print("|---|---|---|")
    for n in counts:
        one, two = (statistics.median(rates["sqlstream", n, w]) for w in (1, 2))
        print(f"| {n:,} | {one:,.0f} | {two:,.0f} |")
    if problems:
        print("\nproblems: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
