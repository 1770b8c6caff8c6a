"""CPU of creating a brand-new database file: the migration steps against the one-step schema.

    python -m benchmarks.newfile [N] [ROUNDS]     # defaults: 200 files, 3 rounds

Each round runs both variants in fresh processes, alternated, and prints the CPU per file
(``time.process_time``) of: connect with sqlstream's settings, switch to WAL, migrate
(``stepwise=True``: the 19 steps; else ``create_schema``), close — what ``sqlstream.open``
of a new path does around the schema. Then the medians and their ratio. Every variant
builds its template (one in-memory chain) before the clock starts, as a process creating
many files pays it once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from sqlstream import connection as cx


def one_variant(stepwise: bool, n: int) -> float:
    """CPU seconds per new file for one variant, in this process."""
    cx.final_schema()
    with tempfile.TemporaryDirectory() as d:
        start = time.process_time()
        for i in range(n):
            conn = cx.connect(os.path.join(d, f"{i}.db"), busy_timeout=10.0, synchronous="normal", create=True)
            cx.connection_wal(conn, 10.0)
            cx.migrate(conn, stepwise=stepwise)
            conn.close()
        return (time.process_time() - start) / n


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(one_variant(sys.argv[2] == "steps", int(sys.argv[3])))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    got: dict[str, list[float]] = {"steps": [], "one-step": []}
    for r in range(rounds):
        for variant in ("steps", "one-step"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.newfile", "--child", variant, str(n)],
                                 check=True, capture_output=True, text=True).stdout
            got[variant].append(float(out))
            print(f"round {r + 1}: {variant:8} {float(out) * 1000:6.2f} ms CPU per new file")
    steps, fast = statistics.median(got["steps"]), statistics.median(got["one-step"])
    print(f"median: steps {steps * 1000:.2f} ms, one-step {fast * 1000:.2f} ms, ratio {fast / steps:.2f}x "
          f"({n} files a round, {rounds} rounds, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
