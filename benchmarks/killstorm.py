"""Kill storm: writers and consumers SIGKILLed at random moments, over and over, on one file.

``python -m benchmarks.killstorm --seconds 300`` runs it and prints the figures that the
README's guarantees table quotes; ``tests/test_killstorm.py`` runs the same storm for
~20 s in CI.

What runs, all on one database file:

* writer processes, each looping over single ``append`` calls, ``extend`` batches of
  2 to 450 records (more than one INSERT statement) and transactions that extend stream
  ``a`` and append to ``b``. Only after a call has returned does a writer report it
  (one unbuffered ``write`` per line to its own report file);
* consumer processes, each committing ``fetch`` + ``extend`` of the output stream +
  ``ack`` in one ``db.transaction()`` (exactly-once processing inside one file), and
  reporting the acked offsets after the block returned.

Every 0.05-0.4 s (at random) one running child (one that has opened the file), chosen at
random, is killed with SIGKILL and replaced by a fresh one (a new *incarnation*, whose values carry
its own id). At the end every child is killed too, and the file is checked:

* ``lost``: records reported as written (the call returned) but not in the file, plus
  records reported as consumed but whose output is missing;
* ``partial``: write groups (a batch, or a transaction across ``a`` and ``b``) present
  only in part;
* ``duplicates``: a record written twice, or a source record processed twice;
* ``gaps``: offsets not running 0, 1, 2, ... in a stream;
* ``corrupt``: records whose value is not the one written (every fourth is over 1,000
  bytes, stored out of its row in ``payloads``; ``out_of_row`` counts those in the file);
* ``check_ok``: ``db.check()`` found nothing wrong, after a final drain of the
  subscription (the drain must process every source record exactly once).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlstream

ROOT = Path(__file__).resolve().parent.parent
PAGE = 5_000

WRITER = r"""
import os, random, sys
import sqlstream

path, report, inc, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
db = sqlstream.open(path)
s, a, b = db.stream("s"), db.stream("a"), db.stream("b")
fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

def values(seq, count):
    # Every fourth record is large enough to be stored out of its row (payloads), so a
    # kill also lands between a payload's insert and its record's.
    sizes = [(seq * 7 + i * 13) % 100 + (1_000 + seq * 31 % 3_000 if (seq + i) % 4 == 0 else 0) for i in range(count)]
    return [f"{inc}:{seq}:{i}:{count}:{n}:" + "x" * n for i, n in enumerate(sizes)]

seq = 0
while True:
    roll = rng.random()
    if roll < 0.4:
        count = rng.choice((rng.randint(2, 40), rng.randint(201, 450)))
        got = s.extend(values(seq, count))
        line = f"E {inc} {seq} {got.start} {got.stop}\n"
    elif roll < 0.8:
        off = s.append(values(seq, 1)[0])
        line = f"A {inc} {seq} {off} {off + 1}\n"
    else:
        count = rng.randint(1, 30)
        with db.transaction():
            got = a.extend(values(seq, count))
            off = b.append(values(seq, 1)[0])
        line = f"T {inc} {seq} {got.start} {got.stop} {off}\n"
    os.write(fd, line.encode())  # only after the call returned
    seq += 1
"""

CONSUMER = r"""
import os, random, sys, time
import sqlstream

path, report, inc, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
db = sqlstream.open(path)
sub, out = db.subscription("sub"), db.stream("out")
fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
while True:
    with db.transaction():
        batch = sub.fetch(f"c{inc}", rng.randint(1, 60), timeout=0)
        if batch:
            out.extend([{"src": r.offset} for r in batch])
            sub.ack(*batch.offsets)
    if batch:
        os.write(fd, ("C " + " ".join(map(str, batch.offsets)) + "\n").encode())
    else:
        time.sleep(0.01)
"""


@dataclasses.dataclass
class Figures:
    seconds: float = 0.0
    kills: int = 0
    writer_kills: int = 0
    consumer_kills: int = 0
    records: int = 0  # records in the file's written streams (s, a, b)
    acknowledged: int = 0  # of them, reported by a writer as returned
    consumed: int = 0  # source records processed exactly once (including the final drain)
    consumed_before_drain: int = 0  # reported acked by killed consumers
    lost: int = 0
    partial: int = 0
    duplicates: int = 0
    gaps: int = 0
    corrupt: int = 0  # records whose value is not the one written (its filler's length and bytes)
    out_of_row: int = 0  # records in the file stored out of their row (large payloads, in payloads)
    check_ok: bool = False

    @property
    def clean(self) -> bool:
        return self.check_ok and not (self.lost or self.partial or self.duplicates or self.gaps or self.corrupt)


def _read_all(stream: sqlstream.Stream) -> list[sqlstream.Record]:
    records: list[sqlstream.Record] = []
    while True:
        page = stream.read(len(records), PAGE)
        records.extend(page)
        if len(page) < PAGE:
            return records


def _report_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    # Only complete lines count: a kill may cut the last one.
    return [line.split() for line in path.read_text().split("\n")[:-1]]


def _groups(records: list[sqlstream.Record], fig: Figures) -> dict[tuple[int, int], tuple[int, int]]:
    """(incarnation, seq) -> (first offset, stop) of each whole write group; counts the rest."""
    found: dict[tuple[int, int], list[tuple[int, int, int]]] = collections.defaultdict(list)
    for i, rec in enumerate(records):
        if rec.offset != i:
            fig.gaps += 1
        inc, seq, index, count, size = (int(x) for x in str(rec.value).split(":")[:5])
        if str(rec.value).split(":", 5)[5] != "x" * size:
            fig.corrupt += 1
        found[(inc, seq)].append((rec.offset, index, count))
    groups: dict[tuple[int, int], tuple[int, int]] = {}
    for key, members in found.items():
        count = members[0][2]
        indexes = [m[1] for m in members]
        offsets = [m[0] for m in members]
        if len(indexes) != len(set(indexes)):
            fig.duplicates += len(indexes) - len(set(indexes))
        if sorted(set(indexes)) != list(range(count)) or offsets != list(range(offsets[0], offsets[0] + count)):
            fig.partial += 1
            continue
        groups[key] = (offsets[0], offsets[0] + count)
    return groups


def _drain(db: sqlstream.Database) -> None:
    sub, out = db.subscription("sub"), db.stream("out")
    while True:
        with db.transaction():
            batch = sub.fetch("drain", 500, timeout=0)
            if batch:
                out.extend([{"src": r.offset} for r in batch])
                sub.ack(*batch.offsets)
        if not batch:
            return


def verify(path: Path, reports: list[Path], fig: Figures) -> Figures:
    """Check the file against every report; fill in ``fig``'s counts."""
    lines = [line for report in reports for line in _report_lines(report)]
    with sqlstream.open(path) as db:
        s, a, b = (_read_all(db.stream(n)) for n in ("s", "a", "b"))
        fig.records = len(s) + len(a) + len(b)
        fig.out_of_row = db.query("SELECT count(*) FROM chunks WHERE data IS NULL").rows[0][0]
        s_groups, a_groups, b_groups = _groups(s, fig), _groups(a, fig), _groups(b, fig)
        # A transaction across 'a' and 'b' is whole in both, or in neither.
        fig.partial += len(set(a_groups) ^ set(b_groups))
        consumed_reported: list[int] = []
        for line in lines:
            kind = line[0]
            if kind == "C":
                consumed_reported.extend(int(x) for x in line[1:])
                continue
            key = (int(line[1]), int(line[2]))
            start, stop = int(line[3]), int(line[4])
            fig.acknowledged += stop - start
            if kind in ("E", "A"):
                if s_groups.get(key) != (start, stop):
                    fig.lost += stop - start
            else:
                fig.acknowledged += 1
                if a_groups.get(key) != (start, stop):
                    fig.lost += stop - start
                if b_groups.get(key) != (int(line[5]), int(line[5]) + 1):
                    fig.lost += 1
        fig.consumed_before_drain = len(consumed_reported)
        fig.duplicates += len(consumed_reported) - len(set(consumed_reported))
        # Every record the consumers reported as acked has its output, exactly once; then
        # a final drain processes the rest, and every source record is out exactly once.
        outputs = collections.Counter(int(r.value["src"]) for r in _read_all(db.stream("out")))
        fig.lost += sum(1 for off in set(consumed_reported) if outputs[off] == 0)
        _drain(db)
        outputs = collections.Counter(int(r.value["src"]) for r in _read_all(db.stream("out")))
        fig.duplicates += sum(n - 1 for n in outputs.values() if n > 1)
        fig.lost += sum(1 for off in range(len(s)) if outputs[off] == 0)
        fig.consumed = len(outputs)
        info = db.subscription("sub").info()
        if (info.pending, info.lag, info.acked_frontier) != (0, 0, len(s)):
            fig.lost += max(0, len(s) - info.acked_frontier)
        fig.check_ok = bool(db.check().ok) and db.query("PRAGMA integrity_check").rows == [("ok",)]
    return fig


def _has_reported(report: Path) -> bool:
    try:
        return report.stat().st_size > 0
    except FileNotFoundError:
        return False


def run(
    directory: Path,
    seconds: float,
    *,
    writers: int = 3,
    consumers: int = 2,
    interval: tuple[float, float] = (0.05, 0.4),
    seed: int = 0,
) -> Figures:
    """Run the storm in ``directory`` for ``seconds``, then verify; return the figures."""
    rng = random.Random(seed)
    path = directory / "storm.db"
    with sqlstream.open(path) as db:
        for name in ("s", "a", "b", "out"):
            db.create_stream(name, exist_ok=True)
        db.create_subscription("sub", "s", ack_timeout=5, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    fig = Figures()
    reports: list[Path] = []
    incarnations = iter(range(1, 10**9))
    children: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
    reports_of: dict[int, Path] = {}

    def start(slot: int, kind: str) -> None:
        inc = next(incarnations)
        report = directory / f"report-{inc}.txt"
        reports.append(report)
        script = WRITER if kind == "writer" else CONSUMER
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(report), str(inc), str(rng.randrange(2**32))],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        children[slot] = (kind, child)
        reports_of[slot] = report

    def kill(slot: int) -> None:
        kind, child = children.pop(slot)
        if child.poll() is not None:
            err = child.stderr.read().decode(errors="replace") if child.stderr else ""
            raise RuntimeError(f"a {kind} exited by itself with status {child.returncode}:\n{err}")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        if child.stderr:
            child.stderr.close()
        fig.kills += 1
        if kind == "writer":
            fig.writer_kills += 1
        else:
            fig.consumer_kills += 1

    kinds = ["writer"] * writers + ["consumer"] * consumers
    started = time.monotonic()
    try:
        for slot, kind in enumerate(kinds):
            start(slot, kind)
        while time.monotonic() - started < seconds:
            time.sleep(rng.uniform(*interval))
            # Kill a child that is working (it has reported a write or a batch), not one still
            # importing Python or opening the file: such kills would prove nothing, and on
            # a loaded machine every kill could land there.
            ready = [slot for slot in children if _has_reported(reports_of[slot])]
            if not ready:
                continue
            slot = rng.choice(ready)
            kill(slot)
            start(slot, kinds[slot])
        for slot in list(children):
            kill(slot)
    finally:
        for _, child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait(30)
            if child.stderr:
                child.stderr.close()
    fig.seconds = round(time.monotonic() - started, 1)
    return verify(path, reports, fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.killstorm", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to keep killing (default 300)")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="killstorm-") as tmp:
        directory = Path(args.dir) if args.dir else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        fig = run(directory, args.seconds, writers=args.writers, consumers=args.consumers, seed=args.seed)
    data: dict[str, Any] = dataclasses.asdict(fig)
    if args.json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key:>22}: {value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{key:>22}: {value}")
        print("clean" if fig.clean else "NOT CLEAN: records were lost, partial, duplicated or the check failed")
    return 0 if fig.clean else 1


if __name__ == "__main__":
    sys.exit(main())
