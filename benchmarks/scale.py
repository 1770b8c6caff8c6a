"""W6: one stream grown to millions of records — do appends and reads stay as fast at the end?

Measured at the start (after 10,000 warm-up records) and at the end (full size): batch-append rate
(median time of 1,000-record batches over a window), single-append rate (median
commit), page-read latency (1,000 records at random offsets); then file bytes per
record, and the RSS of a separate reader process that scans the whole stream.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import statistics
import time
from typing import Any

import apsw

import sqlstream

from .appends import BATCH
from .harness import (
    Check,
    Env,
    Outcome,
    Series,
    file_bytes,
    open_raw,
    payload,
    peak_rss_bytes,
    percentile,
    rss_bytes,
    workdir,
)
from .reads import PAGE

MiB = 1024 * 1024
WARMUP_BATCHES = 10


class _Control:
    """Raw apsw appends to a small, fresh file: the machine's speed at this moment.

    Measured interleaved with sqlstream in each window, so that the end / start ratios
    can also be shown with machine drift (other jobs on a shared host) divided out.
    """

    def __init__(self, path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        self.conn = open_raw(path)
        self.conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        self.rows = [(payload(i),) for i in range(BATCH)]

    def batch(self) -> float:
        t = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT INTO records (data) VALUES (?)", self.rows)
        self.conn.execute("COMMIT")
        return time.perf_counter() - t

    def single(self, i: int) -> float:
        t = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO records (data) VALUES (?)", self.rows[i % BATCH])
        self.conn.execute("COMMIT")
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.close()


def _window(stream: sqlstream.Stream, batches: int, singles: int, reads: int, rng: random.Random,
            control_path: str) -> dict[str, Any]:
    """Measure batch appends, single appends and random page reads at the stream's current size."""
    rows = [payload(i) for i in range(BATCH)]
    clock = time.perf_counter
    control = _Control(control_path)
    batch_s, single_s, c_batch_s, c_single_s = [], [], [], []
    try:
        parts = 4  # alternate sqlstream and the control in slices
        for _ in range(parts):
            for _ in range(batches // parts):
                c_batch_s.append(control.batch())
                t = clock()
                stream.extend(rows)
                batch_s.append(clock() - t)
            for i in range(singles // parts):
                c_single_s.append(control.single(i))
                t = clock()
                stream.append(rows[i % BATCH])
                single_s.append(clock() - t)
    finally:
        control.close()
    size = stream.info().next_offset
    read_s = []
    for _ in range(reads):
        offset = rng.randrange(0, size - PAGE)
        t = clock()
        page = stream.read(offset, PAGE)
        read_s.append(clock() - t)
        assert len(page) == PAGE
    return {
        "records": size,
        "batch_rate": BATCH / statistics.median(batch_s),
        "single_rate": 1 / statistics.median(single_s),
        "single_p99_ms": percentile(single_s, 99) * 1000,
        "read_p50_ms": statistics.median(read_s) * 1000,
        "read_p99_ms": percentile(read_s, 99) * 1000,
        "control_batch_rate": BATCH / statistics.median(c_batch_s),
        "control_single_rate": 1 / statistics.median(c_single_s),
    }


def _scanner(path: str, results: Any) -> None:
    """A separate reader process: scan everything in pages, sampling RSS as it goes."""
    start_rss = rss_bytes()
    with sqlstream.open(path, readonly=True) as db:
        stream = db.stream("w6")
        end = stream.info().next_offset
        marks = {end * k // 20: k * 5 for k in range(1, 21)}
        samples: dict[int, int] = {0: rss_bytes()}
        offset = 0
        t = time.perf_counter()
        next_mark = min(marks)
        while offset < end:
            page = stream.read(offset, PAGE)
            offset = page[-1].offset + 1
            if offset >= next_mark:
                samples[marks[next_mark]] = rss_bytes()
                later = [m for m in marks if m > offset]
                next_mark = min(later) if later else end + 1
        elapsed = time.perf_counter() - t
    results.put({
        "records": end, "seconds": elapsed, "rate": end / elapsed, "rss_before_open": start_rss,
        "rss_by_percent": samples, "peak_rss": peak_rss_bytes(),
    })


def _scan(path: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_scanner, args=(path, results))
    proc.start()
    try:
        return results.get(timeout=3600)  # type: ignore[no-any-return]
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()


def w6(env: Env) -> Outcome:
    target = env.sizes.w6_records
    out = Outcome("W6", f"scale: one stream grown to {target:,} records")
    quick = env.sizes.quick
    batches, singles, reads = (50, 300, 50) if quick else (200, 1000, 300)
    rng = random.Random(6)
    with workdir() as tmp:
        path = os.path.join(tmp, "scale.db")
        with sqlstream.open(path) as db:
            stream = db.create_stream("w6")
            t0 = time.perf_counter()
            rows = [payload(i) for i in range(BATCH)]
            for _ in range(WARMUP_BATCHES):  # first-touch costs (file growth, caches) are not "start"
                stream.extend(rows)
            control = os.path.join(tmp, "control.db")
            start = _window(stream, batches, singles, reads, rng, control)
            env.log(f"  W6 start: {start}")
            grow_to = target - batches * BATCH - singles
            size = stream.info().next_offset
            step = max(BATCH, target // 10)
            next_log = size + step
            while size + BATCH <= grow_to:
                stream.extend(rows)
                size += BATCH
                if size >= next_log:
                    env.log(f"  W6 grown to {size:,} records ({time.perf_counter() - t0:.0f} s)")
                    next_log += step
            end = _window(stream, batches, singles, reads, rng, control)
            env.log(f"  W6 end: {end}")
            records = stream.info().next_offset
        grow_seconds = time.perf_counter() - t0
        conn = apsw.Connection(path)
        list(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        conn.close()
        size_bytes = file_bytes(path)
        scan = _scan(path)
        env.log(f"  W6 scan: {scan['rate']:,.0f} rec/s, peak RSS {scan['peak_rss'] / MiB:.1f} MiB")
    by_pct = scan["rss_by_percent"]
    rss10 = by_pct.get(10, 0)
    rss_max = max(v for k, v in by_pct.items() if k >= 10)
    rss100 = by_pct.get(100, 0)
    out.facts = {
        "records": records, "start": start, "end": end, "grow_seconds": grow_seconds,
        "file_bytes": size_bytes, "file_bytes_per_record": size_bytes / records, "payload_bytes": 100,
        "scan": scan,
    }
    for label, key in (("batch append", "batch_rate"), ("single append", "single_rate")):
        out.series.append(Series("W6", f"{label}, start", "records/s", [start[key]]))
        out.series.append(Series("W6", f"{label}, end", "records/s", [end[key]]))
        out.compare(f"{label} rate: end / start", f"{label}, end", f"{label}, start", 0.9)
        drift = end[f"control_{key}"] / start[f"control_{key}"]
        out.notes.append(
            f"{label}: a raw apsw control on a small fresh file, interleaved, ran {drift:.2f}× as fast at the end "
            f"as at the start; with that machine drift divided out, sqlstream's end / start is "
            f"{end[key] / start[key] / drift:.2f}×"
        )
    out.series.append(Series("W6", "page read, start", "ms", [start["read_p50_ms"]]))
    out.series.append(Series("W6", "page read, end", "ms", [end["read_p50_ms"]]))
    out.compare("page-read rate (p50): end / start", "page read, end", "page read, start", 0.9)
    growth = (rss_max - rss10) / MiB
    out.checks.append(Check("W6", "reader RSS growth after 10% of the scan", growth, "<=", 8.0, "MiB",
                            note=f"RSS {rss10 / MiB:.1f} MiB at 10%, peak {scan['peak_rss'] / MiB:.1f} MiB"))
    out.notes.append(
        f"{records:,} records in {size_bytes / MiB:,.1f} MiB: {size_bytes / records:.1f} file bytes per "
        f"100-byte record; grown in {grow_seconds:.0f} s; a separate reader scanned it at "
        f"{scan['rate']:,.0f} records/s; its RSS was {rss10 / MiB:.1f} MiB at 10% of the scan, at most "
        f"{rss_max / MiB:.1f} MiB from there on, {rss100 / MiB:.1f} MiB at the end; peak (VmHWM, "
        f"including start-up) {scan['peak_rss'] / MiB:.1f} MiB"
    )
    out.notes.append(
        "page reads at random offsets, p99: "
        f"start {start['read_p99_ms']:.2f} ms, end {end['read_p99_ms']:.2f} ms; "
        f"single-append p99: start {start['single_p99_ms']:.2f} ms, end {end['single_p99_ms']:.2f} ms"
    )
    return out
