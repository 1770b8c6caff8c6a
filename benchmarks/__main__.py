"""Run the benchmarks: ``python -m benchmarks [--quick] [--out DIR] [--only W1,W3]``.

Full mode writes benchmarks/RESULTS.md, benchmarks/results.json and benchmarks/chart.png.
``--quick`` (small sizes, under two minutes; what CI runs) writes to a new temporary
directory unless ``--out`` is given, so it never overwrites the committed results.
Peers that are not installed (persist-queue, litequeue, diskcache, redis, redis-server)
are reported as skipped. Exit status 1 if a workload or contender crashed or a
correctness check failed (W7: errors or lost records); a missed speed target is reported,
not an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import apsw

from . import appends, bigrecords, manystreams, reads, report, scale, subscriptions, wakeups
from .harness import Env, Outcome, Sizes
from .peers import redis_server, version_of

HERE = os.path.dirname(os.path.abspath(__file__))

WORKLOADS: dict[str, Callable[[Env], Outcome]] = {
    "W1": appends.w1,
    "W2": appends.w2,
    "W3": reads.w3,
    "W4": subscriptions.w4,
    "W5": wakeups.w5,
    "W6": scale.w6,
    "W7": appends.w7,
    "W8": manystreams.w8,
    "W9": bigrecords.w9,
}


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sqlstream against raw SQLite, Redis Streams and SQLite queue libraries, side by side.",
        epilog="Example: python -m benchmarks --quick --out /tmp/bench",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, under two minutes (CI)")
    p.add_argument("--out", help="output directory (default: benchmarks/, or a temp dir with --quick)")
    p.add_argument("--only", help="comma-separated workloads to run, e.g. W1,W3")
    p.add_argument("--rounds", type=int, help="alternating rounds per workload (default 3 quick, 7 full)")
    p.add_argument("--no-redis", action="store_true", help="do not start redis-server (Redis rows are skipped)")
    p.add_argument("--note", help="a caveat printed at the top of RESULTS.md (e.g. 'shared, loaded machine')")
    return p.parse_args(argv)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    sizes = Sizes.make(args.quick)
    if args.rounds:
        if not 1 <= args.rounds <= 50:
            raise SystemExit("--rounds must be between 1 and 50")
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    only = [w.strip().upper() for w in args.only.split(",")] if args.only else list(WORKLOADS)
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    out_dir = args.out or (tempfile.mkdtemp(prefix="sqlstream-bench-out-") if args.quick else HERE)
    os.makedirs(out_dir, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    command = "python -m benchmarks" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    started = time.perf_counter()
    failed = False
    outcomes: list[Outcome] = []
    with redis_server(enabled=not args.no_redis) as redis:
        redis_desc = (
            redis if isinstance(redis, str) else f"redis-server {redis.version} on 127.0.0.1:{redis.port}"
        )
        log(f"Redis: {redis_desc}")
        env = Env(sizes, redis, log)
        for name in WORKLOADS:
            if name not in only:
                continue
            log(f"{name} ...")
            t = time.perf_counter()
            try:
                outcome = WORKLOADS[name](env)
            except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
                traceback.print_exc()
                outcome = Outcome(name, name, skipped=f"failed: {type(exc).__name__}: {exc}")
                failed = True
            outcome.seconds = time.perf_counter() - t
            if any(s.skipped and s.skipped.startswith("failed") for s in outcome.series):
                failed = True
            outcomes.append(outcome)
            log(f"{name} done in {outcome.seconds:.1f} s")
        redis_version = None if isinstance(redis, str) else f"{redis.version} ({redis.parser})"
    meta: dict[str, Any] = {
        "command": command,
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "python": platform.python_version(),
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "mode": "quick" if args.quick else "full",
        "rounds": sizes.rounds,
        "sizes": sizes.__dict__,
        "seconds": time.perf_counter() - started,
        "note": args.note,
        "peers": {
            "redis-server": redis_version or f"skipped: {redis}",
            "redis (client)": version_of("redis"),
            "persist-queue": version_of("persistqueue"),
            "litequeue": version_of("litequeue"),
            "diskcache": version_of("diskcache"),
        },
    }
    if isinstance(redis, str):
        meta["redis_skipped"] = redis
    title = f"sqlstream / baseline ({meta['mode']} mode, {meta['when']})"
    chart = report.chart(os.path.join(out_dir, "chart.png"), outcomes, title)
    report.write_json(os.path.join(out_dir, "results.json"), outcomes, meta)
    with open(os.path.join(out_dir, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown(outcomes, meta, chart))
    log(f"wrote {os.path.join(out_dir, 'RESULTS.md')} in {meta['seconds']:.0f} s")
    for o in outcomes:
        for c in o.checks:
            log(f"  {c.workload} {c.what}: {c.value if c.value is None else round(c.value, 3)} "
                f"{c.op} {c.threshold:g} -> {'met' if c.met else 'MISSED' if c.met is False else 'n/a'}")
    broken = [c for o in outcomes for c in o.checks if c.hard and c.met is False]
    if broken:
        log("correctness check(s) failed: " + "; ".join(f"{c.workload} {c.what}" for c in broken))
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
