"""The Kafka listener's per-record hot paths, A/B between checkouts in one process.

``python -m benchmarks.kafka_paths [--size B] [--records N] [--passes P] NAME=DIR ...``
prints the CPU time per record of Produce's batch decoding (``decode_batches``), Fetch's
read of a partition (``KafkaStore.read``) and Fetch's encoding of what it read
(``handlers._fetch_partition``), for each checkout DIR (e.g. ``main=/tmp/main`` made with
``git archive main | tar -x -C /tmp/main``, ``branch=.``).

Each checkout's ``sqlstream`` package is copied under its own name into a temporary
directory and imported side by side; every pass runs each version back to back (in
alternating order) over the same request bytes, with the garbage collector paused, and
measures the thread's CPU time (``time.thread_time``), so a loaded machine's waiting is
left out. Each figure is the median over the passes. The functions are internal: this
is a tool for comparing versions of them, not an API.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _load(workdir: str, name: str, checkout: str) -> Any:
    """The ``sqlstream`` package of ``checkout`` imported as ``ss_<name>``."""
    shutil.copytree(os.path.join(checkout, "sqlstream"), os.path.join(workdir, f"ss_{name}"))
    if not os.path.exists(os.path.join(workdir, "migrations")):  # found next to the package
        shutil.copytree(os.path.join(checkout, "migrations"), os.path.join(workdir, "migrations"))
    return importlib.import_module(f"ss_{name}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--size", type=int, default=100, help="value bytes per record")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args(argv)
    n = args.records - args.records % 1000
    with tempfile.TemporaryDirectory() as workdir:
        sys.path.insert(0, workdir)
        versions: dict[str, tuple[Any, Any, Any]] = {}
        for spec in args.versions:
            name, _, checkout = spec.partition("=")
            pkg = _load(workdir, name, os.path.abspath(checkout))
            records = importlib.import_module(f"ss_{name}.kafka.records")
            store = importlib.import_module(f"ss_{name}.kafka.store").KafkaStore(
                pkg.open(os.path.join(workdir, f"{name}.db")))
            store.create_topic("t", 1)
            versions[name] = (records, store, importlib.import_module(f"ss_{name}.kafka.handlers"))
        first = next(iter(versions.values()))[0]
        # Producer batches of 1,000 records as a client sends them: timestamps a few ms apart.
        wires = [first.encode_batch(0, [first.KafkaRecord(1_700_000_000_000 + j * 10 + i // 100, None,
                                                          b"x" * args.size, ()) for i in range(1000)])
                 for j in range(n // 1000)]
        results: dict[tuple[str, str], list[float]] = {}

        def timed(key: tuple[str, str], fn: Callable[[], Any]) -> Any:
            gc.collect()
            gc.disable()
            try:
                t = time.thread_time()
                out = fn()
                results.setdefault(key, []).append((time.thread_time() - t) * 1e6 / n)
            finally:
                gc.enable()
            return out

        names = list(versions)
        for p in range(args.passes):
            for name in (names if p % 2 == 0 else names[::-1]):
                records, store, handlers = versions[name]
                batches = timed((name, "decode_batches"), lambda: [
                    records.decode_batches(w, max_record_bytes=1 << 24, max_batch_bytes=1 << 28)[0] for w in wires])
                if p == 0:
                    for b in batches:
                        store.produce("t", b)

                def read_all() -> list[Any]:
                    got, offset = [], 0
                    while offset < n:
                        fetched = store.read("t", offset, 1 << 20)
                        got.append(fetched)
                        offset += len(fetched.records)
                    return got

                fetched = timed((name, "KafkaStore.read"), read_all)
                timed((name, "encode (_fetch_partition)"), lambda: [handlers._fetch_partition(0, 0, f)
                                                                    for f in fetched])
        print(f"{args.size} B records, {n:,} per pass, CPU µs per record (thread time), median of {args.passes} "
              f"passes; load {os.getloadavg()[0]:.1f}\n")
        print("| path | " + " | ".join(names) + (f" | {names[-1]} / {names[0]} |" if len(names) > 1 else " |"))
        print("|---|" + "---|" * (len(names) + (len(names) > 1)))
        for path in ("decode_batches", "KafkaStore.read", "encode (_fetch_partition)"):
            med = [statistics.median(results[(v, path)]) for v in names]
            ratio = f" {med[-1] / med[0]:.2f} |" if len(names) > 1 else ""
            print(f"| {path} | " + " | ".join(f"{m:.2f}" for m in med) + " |" + ratio)


if __name__ == "__main__":
    main()
