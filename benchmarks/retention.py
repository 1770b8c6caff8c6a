"""Retention and dedup: file size under steady append + trim, and what they cost an append.

``python -m benchmarks.retention [--quick] [--records N] [--out DIR] [--rounds R] [--note TEXT]``

1. **File size stays flat.** One stream takes ``--records`` (default 1,000,000) 100-byte
   records in transactions of 100 while its oldest records are trimmed, two ways:
   *retention* (``max_count=100,000``: appends trim in batches as they go) and
   *explicit* (no limit; ``db.trim(before_offset=next - 100,000)`` every 10,000 records and
   ``db.maintain()`` every 100,000). The database file and its WAL are sampled every
   tenth of the run (half-way between the explicit run's ``maintain()`` calls), with the
   free pages inside the file; a final ``db.maintain()`` shows what it gives back.
2. **Append cost, A/B.** Alternating rounds (the harness of ``python -m benchmarks``) of
   single appends (one commit each, as W2) and of 1,000-record batches (as W1) to a
   stream without limits, a stream with ``max_count`` (trims amortized), and appends with
   a ``dedup_id``. Ratios against the plain stream; above 1 = faster.

Writes benchmarks/RETENTION.md (or ``--out DIR``/RETENTION.md). ``--quick`` uses
100,000 records and small rounds (seconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw

import sqlstream

from .harness import Contender, Sample, Series, alternate, file_bytes, payload, workdir

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP = 100_000  # records retained
TXN = 100  # records per transaction in the size run
SAMPLES = 10


@dataclass
class SizeRun:
    label: str
    records: int = 0
    seconds: float = 0.0
    samples: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    # (records appended, database bytes, WAL bytes, free pages, retained records)
    after_maintain: tuple[int, int, int] = (0, 0, 0)  # (database bytes, WAL bytes, free pages)


def _sample(db: sqlstream.Database, appended: int) -> tuple[int, int, int, int, int]:
    free = db.query("PRAGMA freelist_count").rows[0][0]
    info = db.stream("s").info()
    wal = os.path.getsize(db.path + "-wal") if os.path.exists(db.path + "-wal") else 0
    return appended, os.path.getsize(db.path), wal, free, info.count


def size_run(label: str, total: int, tmp: str, log: Callable[[str], None]) -> SizeRun:
    path = os.path.join(tmp, f"{label}.db")
    run = SizeRun(label)
    rows = [payload(i) for i in range(TXN)]
    every = max(TXN, total // SAMPLES // TXN * TXN)
    with sqlstream.open(path) as db:
        stream = db.create_stream("s", max_count=KEEP if label == "retention" else None)
        start = time.perf_counter()
        for done in range(TXN, total + 1, TXN):
            stream.extend(rows)
            if label == "explicit":
                if done % 10_000 == 0 and done > KEEP:
                    db.trim("s", done - KEEP)
                if done % 100_000 == 0:
                    db.maintain(optimize=False)
            if done % every == every // 2 or done == total:  # between the explicit run's maintain() calls
                run.samples.append(_sample(db, done))
                log(f"  {label}: {done:>9,} appended, file {run.samples[-1][1] / 2**20:6.1f} MiB "
                    f"+ WAL {run.samples[-1][2] / 2**20:5.1f} MiB, {run.samples[-1][3]:,} free pages")
        run.seconds = time.perf_counter() - start
        run.records = total
        db.maintain()
        _, size, wal, free, _ = _sample(db, total)
        run.after_maintain = (size, wal, free)
    return run


# --------------------------------------------------------------------------- A/B


class Singles(Contender):
    """Single appends, one commit each."""

    def __init__(self, name: str, n: int, **stream_options: object) -> None:
        self.name, self.n, self.options = name, n, stream_options
        self.ids = itertools.count()

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("s", **self.options)  # type: ignore[arg-type]

    def round(self) -> Sample:
        append, data, n = self.stream.append, payload(0), self.n
        lat = []
        if self.name.startswith("dedup"):
            ids = [f"id-{next(self.ids)}" for _ in range(n)]
            start = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                append(data, dedup_id=ids[i])
                lat.append(time.perf_counter() - t)
        else:
            start = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                append(data)
                lat.append(time.perf_counter() - t)
        return Sample(n, time.perf_counter() - start, lat)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


class Batches(Contender):
    """Batches of 1,000 records, one transaction each."""

    def __init__(self, name: str, batches: int, **stream_options: object) -> None:
        self.name, self.batches, self.options = name, batches, stream_options
        self.rows = [payload(i) for i in range(1000)]
        self.ids = itertools.count()

    def open(self, workdir: str) -> None:
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.stream = self.db.create_stream("s", **self.options)  # type: ignore[arg-type]

    def round(self) -> Sample:
        extend, rows = self.stream.extend, self.rows
        if self.name.startswith("dedup"):
            id_lists = [[f"id-{next(self.ids)}" for _ in rows] for _ in range(self.batches)]
            start = time.perf_counter()
            for ids in id_lists:
                extend(rows, dedup_ids=ids)
        else:
            start = time.perf_counter()
            for _ in range(self.batches):
                extend(rows)
        return Sample(self.batches * len(rows), time.perf_counter() - start)

    def close(self) -> None:
        if hasattr(self, "db"):
            self.db.close()


def ab_runs(quick: bool, rounds: int, tmp: str, log: Callable[[str], None]) -> dict[str, list[Series]]:
    singles = 500 if quick else 3000
    batches = 20 if quick else 100
    cap = 2000  # small enough that trims happen during every round
    out = {}
    out["single appends"] = alternate(
        "single", [Singles("plain stream", singles), Singles("max_count stream", singles, max_count=cap),
                   Singles("dedup_id", singles)], rounds, os.path.join(tmp, "single"), log)
    out["1,000-record batches"] = alternate(
        "batch", [Batches("plain stream", batches), Batches("max_count stream", batches, max_count=cap * 10),
                  Batches("dedup_ids", batches)], rounds, os.path.join(tmp, "batch"), log)
    return out


# --------------------------------------------------------------------------- report


def markdown(
    sizes: list[SizeRun], ab: dict[str, list[Series]], command: str, rounds: int, note: str | None, seconds: float
) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mib = 2**20
    lines = [
        "# Retention: file size under steady append + trim, and the cost of retention and dedup",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"{when} · {platform.system()} {platform.release()}, {os.cpu_count()} CPUs · Python "
        f"{platform.python_version()} · apsw {apsw.apsw_version()} (SQLite {apsw.sqlite_lib_version()}) · "
        f"{seconds:.0f} s",
        "",
    ]
    if note:
        lines += [f"> **Note:** {note}", ""]
    lines += [
        "## File size under steady append + trim",
        "",
        f"One stream, 100-byte records appended in transactions of {TXN}, the newest {KEEP:,} kept. "
        "*retention*: `max_count` (appends trim in batches). *explicit*: `db.trim()` every 10,000 records, "
        "`db.maintain()` every 100,000. Sizes in MiB; free pages are pages inside the file awaiting reuse.",
        "",
    ]
    for run in sizes:
        lines += [
            f"### {run.label}: {run.records:,} records in {run.seconds:.1f} s ({run.records / run.seconds:,.0f}/s)",
            "",
            "| appended | retained | database | WAL | free pages |",
            "|---|---|---|---|---|",
        ]
        for appended, size, wal, free, retained in run.samples:
            lines.append(f"| {appended:,} | {retained:,} | {size / mib:.1f} | {wal / mib:.1f} | {free:,} |")
        size, wal, free = run.after_maintain
        lines += [f"| after `db.maintain()` | | {size / mib:.1f} | {wal / mib:.1f} | {free:,} |", ""]
        later = [s[1] for s in run.samples[len(run.samples) // 2:]]
        if later:
            lines += [
                f"Database file over the second half of the run: {min(later) / mib:.1f}–{max(later) / mib:.1f} MiB "
                f"(max/min {max(later) / min(later):.2f}).",
                "",
            ]
    lines += [
        "## What retention and dedup cost an append",
        "",
        f"Alternating rounds ({rounds}), medians; p50/p99 per single append over all rounds. The "
        "*max_count* stream is trimmed during every round (limit 2,000 records for singles, "
        "20,000 for batches). Ratio: rate ÷ the plain stream's, above 1 = faster.",
        "",
    ]
    for title, series in ab.items():
        base = series[0].median() or 0.0
        lines += [f"### {title}", "", "| stream | rate (records/s) | ratio | p50 | p99 |", "|---|---|---|---|---|"]
        for s in series:
            med = s.median()
            if med is None:
                lines.append(f"| {s.system} | {s.skipped or 'no data'} | | | |")
                continue
            p50 = f"{s.op_p(50):.3f} ms" if s.op_ms else "—"
            p99 = f"{s.op_p(99):.3f} ms" if s.op_ms else "—"
            lines.append(f"| {s.system} | {med:,.0f} | {med / base:.2f}× | {p50} | {p99} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retention", description=__doc__.split("\n")[0],
                                epilog="Example: python -m benchmarks.retention --quick --out /tmp/retention")
    p.add_argument("--quick", action="store_true", help="100,000 records and small rounds (seconds)")
    p.add_argument("--records", type=int, help="records per size run (default 1,000,000; 100,000 with --quick)")
    p.add_argument("--out", help="directory for RETENTION.md (default: benchmarks/)")
    p.add_argument("--rounds", type=int, default=None, help="alternating A/B rounds (default 3 quick, 7 full)")
    p.add_argument("--note", help="a caveat printed at the top of RETENTION.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rounds = args.rounds or (3 if args.quick else 7)
    records = args.records or (100_000 if args.quick else 1_000_000)
    if not 1 <= rounds <= 50 or records < 2 * KEEP:
        raise SystemExit(f"--rounds must be 1..50 and --records at least {2 * KEEP:,}")
    out_dir = args.out or HERE
    os.makedirs(out_dir, exist_ok=True)
    command = "python -m benchmarks.retention" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    with workdir("sqlstream-retention-") as tmp:
        sizes = [size_run(label, records, tmp, log) for label in ("retention", "explicit")]
        for sub in ("single", "batch"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        ab = ab_runs(args.quick, rounds, tmp, log)
    path = os.path.join(out_dir, "RETENTION.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(sizes, ab, command, rounds, args.note, time.perf_counter() - start))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
