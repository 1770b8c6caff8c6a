"""One git revision's sqlstream against another's, and both against raw apsw, in one run.

    python -m benchmarks.versus main HEAD                 # 7 alternating rounds
    python -m benchmarks.versus main HEAD --rounds 3 --only 64k-read,100-read

Each revision is checked out with ``git archive`` into a temporary directory, and each
measurement runs in a fresh process whose ``sys.path`` starts with that checkout (so the
two versions never share a process, a page cache warm-up or an import). The rounds
alternate A, B and raw apsw, rotating who goes first. The measured loops are the
benchmarks' own contenders: W9's (64 KiB single appends, reads in pages of 100; issue
23), W2's single appends, W1's batches of 1,000 and W3's pages of 1,000 (100-byte
records). Each process opens its contender, runs one warm-up round, then ``--repeat``
measured rounds; the figures are medians over the processes of each process's median
wall-clock records/s and CPU seconds per record (``time.process_time``, which a loaded
machine disturbs less).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from .harness import Contender

# workload -> (what it measures, the sqlstream contender, the raw apsw one); built in the child.
WORKLOADS: dict[str, str] = {
    "64k-append": "64 KiB records, one commit per append (W9)",
    "64k-read": "64 KiB records read in pages of 100 (W9)",
    "100-append": "100-byte records, one commit per append (W2)",
    "100-batch": "100-byte records, batches of 1,000 (W1)",
    "100-read": "100-byte records read in pages of 1,000 (W3)",
}


def _contenders(workload: str) -> tuple[Callable[[], Contender], Callable[[], Contender]]:
    """(sqlstream, raw apsw) factories; imported here, after the child's sys.path is set."""
    from . import appends, bigrecords, reads

    return {
        "64k-append": (lambda: bigrecords.SqlstreamAppend(300), lambda: bigrecords.RawAppend(300)),
        "64k-read": (lambda: bigrecords.SqlstreamRead(1_000), lambda: bigrecords.RawRead(1_000)),
        "100-append": (lambda: appends.SqlstreamSingle(2_000), lambda: appends.RawSingle(2_000)),
        "100-batch": (lambda: appends.SqlstreamBatch(20), lambda: appends.RawBatch(20)),
        "100-read": (lambda: reads.SqlstreamScan(50_000), lambda: reads.RawScan(50_000)),
    }[workload]


def _child(workload: str, side: str, code: str, repeat: int) -> None:
    """Measure ``repeat`` rounds of one contender after a warm-up; print the medians
    {"rate", "cpu", "module"} as JSON."""
    import sqlstream

    if side != "raw" and not os.path.realpath(sqlstream.__file__).startswith(os.path.realpath(code) + os.sep):
        raise SystemExit(f"sqlstream was imported from {sqlstream.__file__}, not from {code}")
    make = _contenders(workload)[1 if side == "raw" else 0]
    contender = make()
    tmp = tempfile.mkdtemp(prefix="sqlstream-versus-")
    try:
        contender.open(tmp)
        contender.round()  # warm-up: caches, statement cache, first pages
        rates, cpus = [], []
        for _ in range(repeat):
            cpu = time.process_time()
            sample = contender.round()
            cpus.append((time.process_time() - cpu) / sample.ops)
            rates.append(sample.ops / sample.seconds)
    finally:
        contender.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"rate": statistics.median(rates), "cpu": statistics.median(cpus), "module": sqlstream.__file__}))


def _checkout(rev: str, root: str, into: str) -> str:
    """``git archive`` of ``rev`` extracted into ``into``; returns the commit it names."""
    commit = subprocess.run(["git", "-C", root, "rev-parse", rev], check=True, capture_output=True,
                            text=True).stdout.strip()
    os.makedirs(into)
    archive = subprocess.run(["git", "-C", root, "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return commit


def _run(bench: str, code: str, workload: str, side: str, repeat: int) -> dict[str, float]:
    # sys.path: a directory holding only this tree's benchmarks package (the checkouts
    # have their own, older ones), then the revision's checkout (its sqlstream). The
    # working directory holds no sqlstream either, so nothing else shadows the checkout's.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([bench, code]))
    out = subprocess.run([sys.executable, "-m", "benchmarks.versus", "--child", workload, side, code, str(repeat)],
                         cwd=os.path.dirname(bench), env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__.split("\n\n")[0])
    p.add_argument("a", nargs="?", help="git revision A (e.g. main)")
    p.add_argument("b", nargs="?", help="git revision B (e.g. HEAD)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", help="comma-separated workloads: " + ", ".join(WORKLOADS))
    p.add_argument("--repeat", type=int, default=3, help="measured rounds in each process (its median counts)")
    p.add_argument("--child", nargs=4, metavar=("WORKLOAD", "SIDE", "CODE", "REPEAT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child[:3], int(args.child[3]))
        return 0
    if not args.a or not args.b:
        p.error("give two git revisions, e.g. main HEAD")
    names = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    bench_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="sqlstream-versus-code-")
    try:
        codes = {}
        for label, rev in (("A", args.a), ("B", args.b)):
            codes[label] = os.path.join(tmp, label)
            print(f"{label} = {rev} ({_checkout(rev, bench_root, codes[label])[:10]})", flush=True)
        bench = os.path.join(tmp, "bench")
        os.makedirs(bench)
        os.symlink(os.path.join(bench_root, "benchmarks"), os.path.join(bench, "benchmarks"))
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.rounds} rounds of "
              f"{args.repeat} measured rounds each", flush=True)
        sides = [("A", codes["A"]), ("B", codes["B"]), ("raw", codes["B"])]
        print("| workload | A rec/s | B rec/s | raw rec/s | B/A wall | B/A CPU | B/raw wall | A/raw wall |")
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            rates: dict[str, list[float]] = {s: [] for s, _ in sides}
            cpus: dict[str, list[float]] = {s: [] for s, _ in sides}
            for r in range(args.rounds):
                for side, code in sides[r % 3:] + sides[:r % 3]:
                    got = _run(bench, code, name, side, args.repeat)
                    rates[side].append(got["rate"])
                    cpus[side].append(got["cpu"])
            med = {s: statistics.median(v) for s, v in rates.items()}
            cpu = {s: statistics.median(v) for s, v in cpus.items()}
            print(f"| {name}: {WORKLOADS[name]} | {med['A']:,.0f} | {med['B']:,.0f} | {med['raw']:,.0f} | "
                  f"{med['B'] / med['A']:.2f}× | {cpu['A'] / cpu['B']:.2f}× | {med['B'] / med['raw']:.2f}× | "
                  f"{med['A'] / med['raw']:.2f}× |", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
