"""CPU time per record of layouts.py's phases, variants alternating round by round in one
process (medians): ``python cpu.py [ROUNDS]``. Less exact than ic.sh on a shared machine,
but in the unit the benchmarks report."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from layouts import Store

VARIANTS = ("raw", "current", "keyed", "keyed9")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with tempfile.TemporaryDirectory() as tmp:
        stores = {v: Store(v, os.path.join(tmp, f"{v}.db")) for v in VARIANTS}
        for s in stores.values():
            s.batch()
        batch: dict[str, list[float]] = {v: [] for v in VARIANTS}
        read: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for v in VARIANTS[r % 4:] + VARIANTS[:r % 4]:
                s = stores[v]
                t = time.process_time()
                for _ in range(20):
                    s.batch()
                batch[v].append((time.process_time() - t) / 20_000)
        for r in range(rounds):
            for v in VARIANTS[r % 4:] + VARIANTS[:r % 4]:
                s = stores[v]
                t = time.process_time()
                n = s.read_all()
                read[v].append((time.process_time() - t) / n)
        b0, r0 = statistics.median(batch["raw"]), statistics.median(read["raw"])
        for v in VARIANTS:
            b, rd = statistics.median(batch[v]), statistics.median(read[v])
            print(f"{v:8s} batch {b * 1e9:7.0f} ns/record ({b0 / b:.2f}x raw)   read {rd * 1e9:6.0f} ns/record ({r0 / rd:.2f}x raw)")


if __name__ == "__main__":
    main()
