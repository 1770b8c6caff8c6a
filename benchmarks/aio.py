"""sqlstream.aio next to the synchronous API: append and fetch+ack rates, wake latency.

``python -m benchmarks.aio [--quick] [--rounds N]`` prints a Markdown table. Each figure
is the median of N rounds (default 5) on fresh files, sync and aio interleaved (alternating
which goes first) so that a shared machine's load hits both alike. Wake latency: a record
appended by another thread (sync API, same process, same file) until the blocked reader
holds it — a thread parked in ``Stream.read(timeout=...)`` for sync, a task awaiting
``AsyncStream.read`` for aio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import sqlstream
import sqlstream.aio

T = TypeVar("T")
BATCH = 1000
FETCH = 100


def _interleaved(rounds: int, sync: Callable[[str], T], aio: Callable[[str], T]) -> tuple[list[T], list[T]]:
    """Run both ``rounds`` times on fresh files, alternating which goes first."""
    out: tuple[list[T], list[T]] = ([], [])
    for r in range(rounds):
        order = ((0, sync), (1, aio)) if r % 2 == 0 else ((1, aio), (0, sync))
        for i, run in order:
            with tempfile.TemporaryDirectory() as d:
                out[i].append(run(os.path.join(d, "bench.db")))
    return out


def sync_batches(path: str, batches: int) -> float:
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        rows = [b"x" * 100] * BATCH
        t = time.perf_counter()
        for _ in range(batches):
            s.extend(rows)
        return batches * BATCH / (time.perf_counter() - t)


async def aio_batches(path: str, batches: int) -> float:
    async with await sqlstream.aio.open(path) as db:
        s = await db.create_stream("s")
        rows = [b"x" * 100] * BATCH
        t = time.perf_counter()
        for _ in range(batches):
            await s.extend(rows)
        return batches * BATCH / (time.perf_counter() - t)


def sync_singles(path: str, n: int) -> float:
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        t = time.perf_counter()
        for i in range(n):
            s.append(b"x" * 100)
        return n / (time.perf_counter() - t)


async def aio_singles(path: str, n: int) -> float:
    async with await sqlstream.aio.open(path) as db:
        s = await db.create_stream("s")
        t = time.perf_counter()
        for i in range(n):
            await s.append(b"x" * 100)
        return n / (time.perf_counter() - t)


def sync_fetch_ack(path: str, n: int) -> float:
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        sub = db.create_subscription("g", "s", max_unacked=10 * FETCH)
        for start in range(0, n, BATCH):
            s.extend([b"x" * 100] * min(BATCH, n - start))
        t = time.perf_counter()
        done = 0
        while done < n:
            batch = sub.fetch("c", FETCH)
            sub.ack(*batch.offsets)
            done += len(batch)
        return n / (time.perf_counter() - t)


async def aio_fetch_ack(path: str, n: int) -> float:
    async with await sqlstream.aio.open(path) as db:
        s = await db.create_stream("s")
        sub = await db.create_subscription("g", "s", max_unacked=10 * FETCH)
        for start in range(0, n, BATCH):
            await s.extend([b"x" * 100] * min(BATCH, n - start))
        t = time.perf_counter()
        done = 0
        while done < n:
            batch = await sub.fetch("c", FETCH)
            await sub.ack(*batch.offsets)
            done += len(batch)
        return n / (time.perf_counter() - t)


def _pcts(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99) - 1] * 1e3


def sync_wake(path: str, n: int) -> tuple[float, float]:
    with sqlstream.open(path) as db:
        s = db.create_stream("s")
        lat: list[float] = []
        for i in range(n):
            sent: list[float] = []

            def write() -> None:
                time.sleep(0.002)
                sent.append(time.perf_counter())
                s.append(i)

            w = threading.Thread(target=write)
            w.start()
            s.read(i, 1, timeout=5)
            lat.append(time.perf_counter() - sent[0])
            w.join()
        return _pcts(lat)


async def aio_wake(path: str, n: int) -> tuple[float, float]:
    async with await sqlstream.aio.open(path) as adb:
        s = await adb.create_stream("s")
        sync_stream = adb.sync.stream("s")  # the writer: another thread, the sync API
        lat: list[float] = []
        for i in range(n):
            sent: list[float] = []

            def write(i: int = i) -> None:
                time.sleep(0.002)
                sent.append(time.perf_counter())
                sync_stream.append(i)

            w = threading.Thread(target=write)
            w.start()
            await s.read(i, 1, timeout=5)
            lat.append(time.perf_counter() - sent[0])
            w.join()
        return _pcts(lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (median)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    batches, singles, fetched, wakes = 100 // scale, 2000 // scale, 20000 // scale, 300 // scale
    med = statistics.median
    rows = []
    for what, sync_run, aio_run in (
        ("batch append (1,000/txn), records/s", lambda p: sync_batches(p, batches),
         lambda p: asyncio.run(aio_batches(p, batches))),
        ("single append (1 commit each), records/s", lambda p: sync_singles(p, singles),
         lambda p: asyncio.run(aio_singles(p, singles))),
        ("fetch 100 + ack, records/s", lambda p: sync_fetch_ack(p, fetched),
         lambda p: asyncio.run(aio_fetch_ack(p, fetched))),
    ):
        s, a = _interleaved(args.rounds, sync_run, aio_run)
        rows.append((what, med(s), med(a)))
    print("| workload | sync | aio | aio / sync |")
    print("|---|---:|---:|---:|")
    for what, s_rate, a_rate in rows:
        print(f"| {what} | {s_rate:,.0f} | {a_rate:,.0f} | {a_rate / s_rate:.2f}x |")
    sw, aw = _interleaved(args.rounds, lambda p: sync_wake(p, wakes), lambda p: asyncio.run(aio_wake(p, wakes)))
    sp50, sp99 = med(x[0] for x in sw), med(x[1] for x in sw)
    ap50, ap99 = med(x[0] for x in aw), med(x[1] for x in aw)
    print(f"| wake latency p50 / p99, ms | {sp50:.3f} / {sp99:.3f} | {ap50:.3f} / {ap99:.3f} | |")


if __name__ == "__main__":
    main()
