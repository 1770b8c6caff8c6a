"""How should the chunks table be stored? ``python -m benchmarks.layout [--quick] [--out DIR]``

Compares, for 100-byte and 64 KiB records, three layouts of the same chunks columns:

* ``WITHOUT ROWID`` — the current schema (migrations/0001_init.sql): the table *is* the
  (stream_id, offset) b-tree, so a stream's records sit together, payload inline;
* ``rowid + UNIQUE`` — an ordinary rowid table (``id INTEGER PRIMARY KEY``) with
  ``UNIQUE (stream_id, offset)``, i.e. a second b-tree that maps the key to the rowid;
* ``WITHOUT ROWID, payload out of line`` — the clustered key table holds a payload id,
  the bytes live in a rowid table ``payloads(id INTEGER PRIMARY KEY, data BLOB)``.

Measured with raw apsw and the same per-connection settings sqlstream uses (WAL,
``synchronous=NORMAL``, foreign keys on), alternating layouts round by round: append
rate in transactions of 1,000 records and one record per commit, range-read rate
(``offset >= ? ORDER BY offset LIMIT n``, all columns), metadata-scan rate (offset and
timestamp only, as ``read_at``'s search touches) and file bytes per record after a
checkpoint. Writes benchmarks/LAYOUT.md (or ``--out DIR``/LAYOUT.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw

from .harness import file_bytes, open_raw, payload, workdir

HERE = os.path.dirname(os.path.abspath(__file__))

COLUMNS = "stream_id, offset, position, timestamp, txn, key, headers, content_type"

LAYOUTS: dict[str, str] = {
    "WITHOUT ROWID (current)": """
        CREATE TABLE chunks (
            stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, position INTEGER NOT NULL,
            timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT,
            content_type TEXT NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (stream_id, offset)
        ) WITHOUT ROWID""",
    "rowid + UNIQUE(stream_id, offset)": """
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, position INTEGER NOT NULL,
            timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT,
            content_type TEXT NOT NULL, data BLOB NOT NULL,
            UNIQUE (stream_id, offset)
        )""",
    "WITHOUT ROWID, payload out of line": """
        CREATE TABLE payloads (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE chunks (
            stream_id INTEGER NOT NULL, offset INTEGER NOT NULL, position INTEGER NOT NULL,
            timestamp INTEGER NOT NULL, txn INTEGER NOT NULL, key TEXT, headers TEXT,
            content_type TEXT NOT NULL, payload_id INTEGER NOT NULL REFERENCES payloads (id),
            PRIMARY KEY (stream_id, offset)
        ) WITHOUT ROWID""",
}
OUT_OF_LINE = "WITHOUT ROWID, payload out of line"


@dataclass(frozen=True)
class Plan:
    """Sizes for one record size."""

    label: str
    size: int
    batches: int  # transactions of BATCH records per round
    singles: int  # one-record commits per round
    page: int  # records per range read


BATCH = 1_000


def plans(quick: bool) -> list[Plan]:
    if quick:
        return [Plan("100 B", 100, 10, 300, 1_000), Plan("64 KiB", 65_536, 1, 30, 100)]
    return [Plan("100 B", 100, 50, 2_000, 1_000), Plan("64 KiB", 65_536, 2, 200, 100)]


class Layout:
    """One layout's database file and its statements."""

    def __init__(self, name: str, path: str, size: int) -> None:
        self.name = name
        self.path = path
        self.size = size
        conn = self.conn = open_raw(path)
        list(conn.execute("PRAGMA foreign_keys = ON"))
        with conn:
            list(conn.execute(LAYOUTS[name]))
        self.next_offset = 0
        self.data = [payload(i, size) for i in range(BATCH)]
        if name == OUT_OF_LINE:
            self.insert = self._insert_out_of_line
            self.read_sql = (
                f"SELECT {COLUMNS}, p.data FROM chunks c JOIN payloads p ON p.id = c.payload_id "
                "WHERE c.stream_id = 1 AND c.offset >= ? ORDER BY c.offset LIMIT ?"
            )
        else:
            self.insert = self._insert_inline
            self.read_sql = (
                f"SELECT {COLUMNS}, data FROM chunks WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT ?"
            )
        self.meta_sql = "SELECT offset, timestamp FROM chunks WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT ?"

    def _insert_inline(self, rows: list[bytes]) -> None:
        o, now = self.next_offset, time.time_ns() // 1000
        self.conn.executemany(
            f"INSERT INTO chunks ({COLUMNS}, data) VALUES (1, ?, ?, ?, 1, NULL, NULL, 'bytes', ?)",
            [(o + i, (o + i) * self.size, now, d) for i, d in enumerate(rows)],
        )
        self.next_offset = o + len(rows)

    def _insert_out_of_line(self, rows: list[bytes]) -> None:
        o, now = self.next_offset, time.time_ns() // 1000
        conn = self.conn
        for i, d in enumerate(rows):
            conn.execute("INSERT INTO payloads (data) VALUES (?)", (d,))
            conn.execute(
                f"INSERT INTO chunks ({COLUMNS}, payload_id) VALUES (1, ?, ?, ?, 1, NULL, NULL, 'bytes', ?)",
                (o + i, (o + i) * self.size, now, conn.last_insert_rowid()),
            )
        self.next_offset = o + len(rows)

    def batch_round(self, batches: int) -> float:
        conn, data = self.conn, self.data
        start = time.perf_counter()
        for _ in range(batches):
            conn.execute("BEGIN IMMEDIATE")
            self.insert(data)
            conn.execute("COMMIT")
        return batches * BATCH / (time.perf_counter() - start)

    def single_round(self, count: int) -> float:
        conn, data = self.conn, self.data
        start = time.perf_counter()
        for i in range(count):
            conn.execute("BEGIN IMMEDIATE")
            self.insert([data[i % BATCH]])
            conn.execute("COMMIT")
        return count / (time.perf_counter() - start)

    def _scan(self, sql: str, page: int) -> float:
        execute, end = self.conn.execute, self.next_offset
        offset = seen = 0
        start = time.perf_counter()
        while offset < end:
            rows = execute(sql, (offset, page)).fetchall()
            seen += len(rows)
            offset = rows[-1][1 if sql is self.read_sql else 0] + 1
        assert seen == end, (seen, end)
        return seen / (time.perf_counter() - start)

    def read_round(self, page: int) -> float:
        return self._scan(self.read_sql, page)

    def meta_round(self, page: int) -> float:
        return self._scan(self.meta_sql, page)

    def bytes_per_record(self) -> float:
        list(self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        return file_bytes(self.path) / self.next_offset

    def close(self) -> None:
        self.conn.close()


@dataclass
class Row:
    size: str
    layout: str
    numbers: dict[str, list[float]] = field(default_factory=dict)
    bytes_per_record: float = 0.0

    def median(self, key: str) -> float:
        return statistics.median(self.numbers[key])


METRICS = ("batch", "single", "read", "meta")


def measure(plan: Plan, rounds: int, log: Callable[[str], None]) -> list[Row]:
    rows = {name: Row(plan.label, name, {m: [] for m in METRICS}) for name in LAYOUTS}
    with workdir("sqlstream-layout-") as tmp:
        layouts = [Layout(name, os.path.join(tmp, f"l{i}.db"), plan.size) for i, name in enumerate(LAYOUTS)]
        try:
            for r in range(rounds):
                order = layouts[r % len(layouts):] + layouts[: r % len(layouts)]
                for lay in order:
                    rows[lay.name].numbers["batch"].append(lay.batch_round(plan.batches))
                for lay in order:
                    rows[lay.name].numbers["single"].append(lay.single_round(plan.singles))
                for lay in order:
                    rows[lay.name].numbers["read"].append(lay.read_round(plan.page))
                for lay in order:
                    rows[lay.name].numbers["meta"].append(lay.meta_round(plan.page))
            for lay in layouts:
                rows[lay.name].bytes_per_record = lay.bytes_per_record()
        finally:
            for lay in layouts:
                lay.close()
    for row in rows.values():
        log(f"  {plan.label:7s} {row.layout:36s} " + "  ".join(f"{m} {row.median(m):>11,.0f}/s" for m in METRICS)
            + f"  {row.bytes_per_record:,.0f} B/rec")
    return list(rows.values())


def markdown(results: list[Row], command: str, plans_: list[Plan], rounds: int, note: str | None) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# chunks table layout: WITHOUT ROWID vs rowid",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"{when} · {platform.system()} {platform.release()}, {os.cpu_count()} CPUs · Python "
        f"{platform.python_version()} · apsw {apsw.apsw_version()} (SQLite {apsw.sqlite_lib_version()}) · "
        f"{rounds} alternating rounds, medians",
        "",
    ]
    if note:
        lines += [f"> **Note:** {note}", ""]
    lines += [
        "Raw apsw on the chunks columns only (no Python layer, no streams/counters bookkeeping), WAL, "
        "`synchronous=NORMAL`, foreign keys on. Sizes per round: "
        + "; ".join(f"{p.label}: {p.batches} × {BATCH:,}-record transactions, {p.singles:,} single commits, "
                    f"reads of {p.page:,} records" for p in plans_)
        + ". Ratios are against the current layout (WITHOUT ROWID), above 1 = better.",
        "",
        "| records | layout | batch append (rec/s) | single append (rec/s) | range read (rec/s) "
        "| metadata scan (rec/s) | file bytes / record |",
        "|---|---|---|---|---|---|---|",
    ]
    base: dict[str, Row] = {}
    for row in results:
        base.setdefault(row.size, row)
        ref = base[row.size]

        def cell(m: str, row: Row = row, ref: Row = ref) -> str:
            v = row.median(m)
            return f"{v:,.0f}" if row is ref else f"{v:,.0f} ({v / ref.median(m):.2f}×)"

        size_ratio = "" if row is ref else f" ({ref.bytes_per_record / row.bytes_per_record:.2f}×)"
        lines.append(
            f"| {row.size} | {row.layout} | {cell('batch')} | {cell('single')} | {cell('read')} | {cell('meta')} "
            f"| {row.bytes_per_record:,.0f}{size_ratio} |"
        )
    lines += [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.layout", description=__doc__.split("\n")[0],
                                epilog="Example: python -m benchmarks.layout --quick --out /tmp/layout")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", help="directory for LAYOUT.md (default: benchmarks/)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3 quick, 5 full)")
    p.add_argument("--note", help="a caveat printed at the top of LAYOUT.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rounds = args.rounds or (3 if args.quick else 5)
    if not 1 <= rounds <= 50:
        raise SystemExit("--rounds must be between 1 and 50")
    out_dir = args.out or HERE
    os.makedirs(out_dir, exist_ok=True)
    command = "python -m benchmarks.layout" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    results: list[Row] = []
    chosen = plans(args.quick)
    for plan in chosen:
        results += measure(plan, rounds, lambda m: print(m, flush=True))
    path = os.path.join(out_dir, "LAYOUT.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(results, command, chosen, rounds, args.note))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
