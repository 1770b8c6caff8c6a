"""W5: how soon a blocked reader sees a record appended by a writer.

Latency is end to end: from just before the writer calls append (XADD) to the moment the
blocked reader holds the record — commit time included. The writer waits a random
1–4 ms between records, so the reader is always blocked when the record arrives. Times
are ``time.perf_counter()``, which on Linux is CLOCK_MONOTONIC, shared by all processes.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlstream

from .harness import Check, Env, Outcome, Series, Skip, payload, workdir

MODES = ("poll", "notify")
IDLE_SECONDS = 1.0


def _sqlstream_reader(path: str, mode: str, n: int, ready: Any, results: Any) -> None:
    """Read records 0..n-1 one at a time, blocking for each; report when each arrived."""
    got: list[float] = []
    bad = 0
    idle_cpu = None
    with sqlstream.open(path, wakeup=mode) as db:
        stream = db.stream("w5")
        if results is not None:  # other process: also measure the CPU an idle waiter burns
            idle = db.stream("idle")
            cpu = time.process_time()
            idle.read(0, 1, timeout=IDLE_SECONDS)
            idle_cpu = (time.process_time() - cpu) / IDLE_SECONDS
        ready.set()
        clock = time.perf_counter
        for i in range(n):
            records = stream.read(i, 1, timeout=10)
            got.append(clock())
            if not records or records[0].value != payload(i):
                bad += 1
    if results is not None:
        results.put((got, bad, idle_cpu))
    else:
        _SAME_PROCESS_RESULT[:] = [got, bad, idle_cpu]


def _redis_reader(host: str, port: int, n: int, ready: Any, results: Any) -> None:
    import redis

    client = redis.Redis(host=host, port=port, socket_timeout=30)
    got: list[float] = []
    bad = 0
    last: Any = "0-0"
    ready.set()
    clock = time.perf_counter
    for i in range(n):
        resp = client.xread({"w5": last}, count=1, block=10_000)
        got.append(clock())
        if not resp:
            bad += 1
            continue
        last, fields = resp[0][1][0]
        if fields.get(b"d") != payload(i):
            bad += 1
    client.close()
    if results is not None:
        results.put((got, bad, None))
    else:
        _SAME_PROCESS_RESULT[:] = [got, bad, None]


_SAME_PROCESS_RESULT: list[Any] = []


def _measure(
    reader: Callable[..., None], args: tuple[Any, ...], n: int, append: Callable[[bytes], object],
    other_process: bool, seed: int,
) -> tuple[list[float], int, float | None]:
    """Run ``reader`` in a thread or a process and append n records; return latencies (s)."""
    rng = random.Random(seed)
    rows = [payload(i) for i in range(n)]
    sent: list[float] = []
    if other_process:
        ctx = multiprocessing.get_context("spawn")
        ready, results = ctx.Event(), ctx.Queue()
        worker: Any = ctx.Process(target=reader, args=(*args, n, ready, results))
    else:
        ready, results = threading.Event(), None
        _SAME_PROCESS_RESULT.clear()
        worker = threading.Thread(target=reader, args=(*args, n, ready, None))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if not worker.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the reader did not start")
        time.sleep(0.05)  # let it block on the first record
        clock = time.perf_counter
        for data in rows:
            time.sleep(rng.uniform(0.001, 0.004))
            sent.append(clock())
            append(data)
        if other_process:
            got, bad, idle_cpu = results.get(timeout=60)  # type: ignore[union-attr]
        else:
            worker.join(60)
            if not _SAME_PROCESS_RESULT:
                raise RuntimeError("the reader thread failed")
            got, bad, idle_cpu = _SAME_PROCESS_RESULT
    finally:
        worker.join(30)
        if other_process and worker.is_alive():
            worker.kill()
            worker.join()
    return [g - s for g, s in zip(got, sent)], bad, idle_cpu


def w5(env: Env) -> Outcome:
    out = Outcome("W5", "wake latency of a blocked reader (append → reader holds the record)")
    n = env.sizes.w5_samples
    seed = 5
    idle: dict[str, float | None] = {}
    with workdir() as tmp:
        for where, other in (("same process", False), ("other process", True)):
            for mode in MODES:
                name = f"sqlstream {mode}, {where}"
                s = Series("W5", name, "ms")
                path = os.path.join(tmp, f"{mode}-{int(other)}.db")
                with sqlstream.open(path, wakeup=mode) as db:
                    stream = db.create_stream("w5")
                    db.create_stream("idle")
                    lat, bad, cpu = _measure(_sqlstream_reader, (path, mode), n, stream.append, other, seed)
                s.values = [x * 1000 for x in lat]
                if bad:
                    s.note = f"{bad} reads returned the wrong record or timed out"
                if other:
                    idle[mode] = cpu
                out.series.append(s)
                env.log(f"  W5 {name}: p50 {s.median():.3f} ms p99 {s.p99():.3f} ms")
            name = f"Redis XREAD BLOCK, {where}"
            s = Series("W5", name, "ms")
            try:
                server = env.redis_or_skip()
            except Skip as exc:
                s.skipped = str(exc)
                out.series.append(s)
                continue
            client = server.client()
            client.delete("w5")
            try:
                lat, bad, _ = _measure(
                    _redis_reader, (server.host, server.port), n,
                    lambda d: client.xadd("w5", {"d": d}), other, seed,
                )
            finally:
                client.delete("w5")
                client.close()
            s.values = [x * 1000 for x in lat]
            if bad:
                s.note = f"{bad} reads returned the wrong record or timed out"
            out.series.append(s)
            env.log(f"  W5 {name}: p50 {s.median():.3f} ms p99 {s.p99():.3f} ms")
    out.facts["idle_waiter_cpu_fraction"] = idle
    out.notes.append(
        "idle CPU of a reader process blocked for 1 s with no commits: "
        + ", ".join(f"{m} {v * 100:.1f}%" for m, v in idle.items() if v is not None)
    )
    for mode in MODES:
        local = out.get(f"sqlstream {mode}, same process")
        remote = out.get(f"sqlstream {mode}, other process")
        out.checks.append(Check("W5", f"{mode}: same-process p99", local.p99() if local else None, "<=", 1.0, "ms"))
        # Issue 11: the notify wake-up (the default across processes) within 1 ms at p99;
        # polling keeps the looser bound it was built to.
        out.checks.append(Check("W5", f"{mode}: other-process p99", remote.p99() if remote else None, "<=",
                                1.0 if mode == "notify" else 5.0, "ms"))
    if idle.get("notify") is not None:
        out.checks.append(Check("W5", "notify: idle waiter CPU", idle["notify"] * 100, "<=", 0.5, "%"))
    for where in ("same process", "other process"):
        for mode in MODES:
            target = 1.0 if (mode, where) == ("notify", "other process") else None  # issue 11: p50 <= Redis
            out.compare(f"{mode}, {where}: Redis p50 / sqlstream p50", f"sqlstream {mode}, {where}",
                        f"Redis XREAD BLOCK, {where}", target)
    return out
