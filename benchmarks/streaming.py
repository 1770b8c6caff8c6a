"""Streaming to files: what the ``file`` service (Cosmos ADR-038) costs over writing the bytes.

``python -m benchmarks.streaming [--quick] [--rounds R]``

Two commit shapes: single-record commits (one block per record) and 1,000-record commits.
Per round, the commits are appended first (not timed), then the ``file`` service streams
them (``Runner.run(once=True)``: read each block from the database, encode the
``StoreKVPair`` data file and the meta file, write each under a temporary name and rename
it; no fsync, the service's default). The baseline writes the very same file bytes (taken
from a sqlstream run beforehand) with the same open/write/rename and no sqlstream at all.
Rounds alternate (the harness of ``python -m benchmarks``); medians of blocks/s and
records/s. Prints a markdown section: benchmarks/sections/1-streaming.md keeps it (with its commentary), and
``python -m benchmarks`` puts it into RESULTS.md.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import sqlstream
from sqlstream.streaming import Runner, parse_config

from .harness import Contender, Sample, Series, alternate, payload, section_args, workdir

PREFIX = "bench"


def _append(db: sqlstream.Database, blocks: int, per_block: int, start: int) -> None:
    stream = db.stream("bench")
    for b in range(blocks):
        with db.transaction():
            for i in range(per_block):
                n = start + b * per_block + i
                stream.append(payload(n), key=f"k{n % 100}")


def _service(tmp: str, name: str) -> Any:
    return parse_config({"store": {"streamers": [name]},
                         "streamers": {name: {"service": "file", "keys": ["bench"], "write_dir": tmp,
                                              "prefix": PREFIX}}})


class FileService(Contender):
    """sqlstream: the file service streams the round's blocks."""

    name = "sqlstream file service"

    def __init__(self, blocks: int, per_block: int) -> None:
        self.blocks, self.per_block = blocks, per_block
        self.db: sqlstream.Database | None = None
        self.rounds = 0

    def open(self, workdir: str) -> None:
        self.dir = workdir
        self.db = sqlstream.open(os.path.join(workdir, "bench.db"))
        self.db.create_stream("bench")

    def round(self) -> Sample:
        assert self.db is not None
        _append(self.db, self.blocks, self.per_block, self.rounds * self.blocks * self.per_block)
        out = os.path.join(self.dir, f"out-{self.rounds}")
        self.rounds += 1
        runner = Runner.from_config(self.db, _service(out, "file"))
        start = time.perf_counter()
        done = runner.run(once=True)
        seconds = time.perf_counter() - start
        if done.get("file") != self.blocks:
            raise RuntimeError(f"streamed {done} blocks, expected {self.blocks}")
        return Sample(self.blocks, seconds)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class RawFiles(Contender):
    """Baseline: the same data and meta file bytes, written with open/write/rename."""

    name = "raw open/write/rename"

    def __init__(self, blocks: int, per_block: int) -> None:
        self.blocks, self.per_block = blocks, per_block
        self.files: list[tuple[str, bytes]] = []
        self.rounds = 0

    def open(self, workdir: str) -> None:
        self.dir = workdir
        source = os.path.join(workdir, "source")
        with sqlstream.open(os.path.join(workdir, "source.db")) as db:
            db.create_stream("bench")
            _append(db, self.blocks, self.per_block, 0)
            Runner.from_config(db, _service(source, "file")).run(once=True)
        for name in sorted(os.listdir(source)):
            with open(os.path.join(source, name), "rb") as fh:
                self.files.append((name, fh.read()))

    def round(self) -> Sample:
        out = os.path.join(self.dir, f"out-{self.rounds}")
        self.rounds += 1
        start = time.perf_counter()
        os.makedirs(out)
        for name, content in self.files:
            tmp = os.path.join(out, f".{name}.0000abcd.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.replace(tmp, os.path.join(out, name))
        return Sample(self.blocks, time.perf_counter() - start)


def run(quick: bool, rounds: int, log: Any = print) -> list[tuple[str, int, list[Series]]]:
    shapes = [("single-record commits", 1, 200 if quick else 3000),
              ("1,000-record commits", 1000, 3 if quick else 30)]
    out = []
    with workdir("sqlstream-streaming-") as tmp:
        for title, per_block, blocks in shapes:
            sub = os.path.join(tmp, str(per_block))
            os.makedirs(sub)
            series = alternate(title, [FileService(blocks, per_block), RawFiles(blocks, per_block)], rounds, sub, log)
            out.append((title, per_block, series))
    return out


def markdown(results: list[tuple[str, int, list[Series]]], command: str, rounds: int) -> str:
    lines = [
        "## Streaming to files (`sqlstream serve`, the `file` service)",
        "",
        "```",
        command,
        "```",
        "",
        f"The `file` service streaming already committed blocks (`serve --once`; no fsync, its default) "
        f"against writing the same data and meta file bytes with open/write/rename and no sqlstream. "
        f"{rounds} alternating rounds, medians; 100-byte records. Ratio: sqlstream ÷ raw.",
        "",
        "| commits | writer | blocks/s | records/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for title, per_block, series in results:
        base = series[-1].median() or 0.0
        for s in series:
            med = s.median()
            if med is None:
                lines.append(f"| {title} | {s.system} | {s.skipped or 'no data'} | | |")
                continue
            ratio = f"{med / base:.2f}×" if base else ""
            lines.append(f"| {title} | {s.system} | {med:,.0f} | {med * per_block:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    quick, rounds, command = section_args("python -m benchmarks.streaming", __doc__.split("\n")[0], argv)
    results = run(quick, rounds, lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(results, command, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
