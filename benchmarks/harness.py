"""What every workload shares: sizes, timing, alternating rounds, statistics, results.

A workload compares *contenders* (sqlstream and its baselines). Each contender is opened
once, then the workload runs rounds in turn — sqlstream, baseline, baseline, sqlstream,
… with the order rotated every round — so that drift on a shared machine (other jobs,
thermal state, page cache) hits every contender alike. Rates are reported as the median
over rounds; latencies as p50/p99 over all samples. The mean is never reported.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PAYLOAD_BYTES = 100


def payload(i: int = 0, size: int = PAYLOAD_BYTES) -> bytes:
    """A ``size``-byte payload that differs per record (so nothing compresses or dedups)."""
    head = f"{i:012d}".encode()
    return (head + b"x" * size)[:size]


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does; ``quick`` keeps the whole run under two minutes."""

    quick: bool
    rounds: int
    w1_batches: int  # batches of 1,000 per round
    w2_appends: int  # single appends per round
    w2_slow_appends: int  # per round, for peers that fsync every commit
    w3_records: int  # stream length read back each round
    w4_records: int  # records consumed per round
    w5_samples: int  # wakeups per configuration
    w6_records: int  # final stream length
    w7_appends: int  # single appends per writer process

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(True, 3, 20, 500, 100, 50_000, 500, 60, 200_000, 500)
        return cls(False, 7, 100, 3_000, 500, 500_000, 3_000, 400, 10_000_000, 3_000)


@dataclass
class Series:
    """One contender's numbers in one workload."""

    workload: str
    system: str
    unit: str  # "records/s" (higher is better) or "ms" (lower is better)
    values: list[float] = field(default_factory=list)  # rates per round, or latency samples
    skipped: str | None = None  # why there are no numbers
    note: str = ""
    op_ms: list[float] = field(default_factory=list)  # per-operation latencies of rate rounds

    def op_p(self, pct: float) -> float | None:
        return percentile(self.op_ms, pct) if self.op_ms else None

    @property
    def is_latency(self) -> bool:
        return self.unit == "ms"

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def p99(self) -> float | None:
        return percentile(self.values, 99) if self.values else None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["op_ms"]  # summarised below; per-op samples would bloat the JSON
        out["median"] = self.median()
        if self.op_ms:
            out["op_count"] = len(self.op_ms)
            out["op_p50_ms"] = self.op_p(50)
            out["op_p99_ms"] = self.op_p(99)
            out["op_max_ms"] = max(self.op_ms)
        if self.is_latency:
            out["p50"] = self.median()
            out["p99"] = self.p99()
            out["max"] = max(self.values) if self.values else None
        return out


@dataclass
class Check:
    """A target: ``value op threshold`` (``met`` is None when it could not be measured)."""

    workload: str
    what: str
    value: float | None
    op: str  # ">=" or "<="
    threshold: float
    unit: str = "×"
    note: str = ""
    hard: bool = False  # a correctness property, not a speed target: missing it fails the run

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class Ratio:
    """ours ÷ theirs, oriented so that above 1 means ``ours`` is better."""

    label: str
    ours: str
    theirs: str
    value: float | None
    target: float | None = None


@dataclass
class Outcome:
    """Everything one workload measured."""

    workload: str
    title: str
    series: list[Series] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # extra numbers (W6, W7)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # the whole workload did not run, and why

    def get(self, system: str) -> Series | None:
        for s in self.series:
            if s.system == system:
                return s
        return None

    def compare(self, label: str, ours: str, theirs: str, target: float | None = None) -> None:
        """Report ``ours`` against ``theirs``; with a target, also check ratio >= target."""
        value = self.ratio(ours, theirs)
        self.ratios.append(Ratio(label, ours, theirs, value, target))
        if target is not None:
            what = f"sqlstream {label}" if ours == "sqlstream" else label
            self.checks.append(Check(self.workload, what, value, ">=", target))

    def ratio(self, ours: str, theirs: str) -> float | None:
        """median(ours) / median(theirs) for rates; median(theirs) / median(ours) for latencies.

        Either way a ratio above 1 means sqlstream is better.
        """
        a, b = self.get(ours), self.get(theirs)
        if a is None or b is None or not a.values or not b.values:
            return None
        ma, mb = a.median(), b.median()
        assert ma is not None and mb is not None
        if a.is_latency:
            return mb / ma if ma else None
        return ma / mb if mb else None


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Sample:
    """What one round of one contender did: ``ops`` operations in ``seconds``."""

    ops: int
    seconds: float
    latencies: list[float] | None = None  # per-operation seconds, when the workload has them


class Contender:
    """A system under test in one workload. Subclasses set ``name`` and override the hooks."""

    name = "?"
    unit = "records/s"

    def open(self, workdir: str) -> None:
        """Create files, connections and fixtures; raise Skip if the system is unavailable."""

    def round(self) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release everything ``open`` made. Called even when ``open`` failed half-way."""


class Skip(Exception):
    """A contender cannot run here (a peer is not installed); reported, never faked."""


def alternate(
    workload: str, contenders: Sequence[Contender], rounds: int, workdir: str, log: Callable[[str], None]
) -> list[Series]:
    """Open every contender, run ``rounds`` rounds alternating between them, close them.

    Returns one Series per contender: per-round rates (records/s), or per-operation
    latencies (ms) for contenders whose ``unit`` is ms. A contender that raises Skip in
    ``open`` is reported as skipped; one that fails in a round is reported as failed
    with the error (never silently dropped).
    """
    series = {c.name: Series(workload, c.name, c.unit) for c in contenders}
    live: list[Contender] = []
    try:
        for c in contenders:
            sub = os.path.join(workdir, _slug(c.name))
            os.makedirs(sub, exist_ok=True)
            try:
                c.open(sub)
            except Skip as exc:
                series[c.name].skipped = str(exc)
                log(f"  {workload} {c.name}: skipped ({exc})")
                c.close()
                continue
            except Exception as exc:  # noqa: BLE001 - reported as a failure, the others still run
                series[c.name].skipped = f"failed: {type(exc).__name__}: {exc}"
                log(f"  {workload} {c.name}: FAILED in setup\n{traceback.format_exc()}")
                with contextlib.suppress(Exception):
                    c.close()
                continue
            live.append(c)
        for r in range(rounds):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for c in order:
                s = series[c.name]
                if s.skipped:
                    continue
                try:
                    sample = c.round()
                except Exception as exc:  # noqa: BLE001 - reported in the results, not hidden
                    s.skipped = f"failed: {type(exc).__name__}: {exc}"
                    log(f"  {workload} {c.name}: FAILED\n{traceback.format_exc()}")
                    continue
                if c.unit == "ms":
                    s.values.extend(x * 1000 for x in (sample.latencies or []))
                else:
                    s.values.append(sample.ops / sample.seconds)
                    if sample.latencies:
                        s.op_ms.extend(x * 1000 for x in sample.latencies)
        for c in live:
            s = series[c.name]
            if s.values:
                shown = f"p50 {s.median():.3f} ms p99 {s.p99():.3f} ms" if s.is_latency else f"{s.median():,.0f} rec/s"
                log(f"  {workload} {c.name}: {shown}")
    finally:
        for c in live:
            with contextlib.suppress(Exception):
                c.close()
    return list(series.values())


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


@contextlib.contextmanager
def workdir(prefix: str = "sqlstream-bench-") -> Iterator[str]:
    """A temporary directory removed afterwards, even on error."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def file_bytes(path: str) -> int:
    """Bytes of a SQLite file and its -wal/-shm companions."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started its program (0 if unknown).

    Linux's VmHWM, which exec resets. Not ru_maxrss: that keeps the high-water mark of
    the process before exec, so a spawned child would report its parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Env:
    """What a workload gets: its sizes, the Redis server (or why there is none), a logger."""

    sizes: Sizes
    redis: Any  # peers.RedisServer, or a str saying why Redis is skipped
    log: Callable[[str], None]

    def redis_or_skip(self) -> Any:
        if isinstance(self.redis, str):
            raise Skip(self.redis)
        return self.redis


def open_raw(path: str) -> Any:
    """A raw apsw connection with sqlstream's journal and sync settings (WAL, NORMAL)."""
    import apsw

    conn = apsw.Connection(path)
    conn.set_busy_timeout(30_000)
    mode = list(conn.execute("PRAGMA journal_mode = wal"))[0][0]
    list(conn.execute("PRAGMA synchronous = normal"))
    sync = list(conn.execute("PRAGMA synchronous"))[0][0]
    if str(mode).lower() != "wal" or sync != 1:
        raise RuntimeError(f"raw baseline settings did not take: journal_mode={mode} synchronous={sync}")
    return conn


MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def open_raw_schema(path: str) -> Any:
    """A raw apsw connection (as ``open_raw``) on a file with sqlstream's own tables.

    The migrations are run as plain SQL and one stream row is created (id 1), so a
    baseline can do sqlstream's bookkeeping by hand: the cost of the schema without
    sqlstream's Python layer (and with SQLite's stock inline checkpoints).
    """
    from sqlstream.writesecrets import hash_secret

    conn = open_raw(path)
    list(conn.execute("PRAGMA foreign_keys = ON"))
    # Migration 10 hashes stored write secrets with a function sqlstream defines on its
    # migrating connection (none are stored here, but the statement must compile).
    conn.create_scalar_function("sqlstream_sha256", lambda v: None if v is None else hash_secret(str(v)), 1)
    for name in sorted(os.listdir(MIGRATIONS)):
        if name.endswith(".sql"):
            with open(os.path.join(MIGRATIONS, name), encoding="utf-8") as f:
                with conn:
                    list(conn.execute(f.read()))  # consume: apsw runs a script lazily
    conn.execute("INSERT INTO streams (id, name, created_at) VALUES (1, 's', 0)")
    conn.execute("UPDATE counters SET value = 1 WHERE name = 'txn_stream'")  # the tail stream
    return conn


# sqlstream's bookkeeping for one append transaction, written out as plain SQL.
SCHEMA_TXN_SQL = "UPDATE counters SET value = value + 1 WHERE name = 'txn' RETURNING value"
SCHEMA_STREAM_SQL = (
    "UPDATE streams SET next_offset = next_offset + ?, byte_length = byte_length + ?, last_append_at = ? "
    "WHERE id = 1 RETURNING next_offset, byte_length"
)
# sqlstream's bookkeeping since schema version 18: the next offset and byte position come
# from the stream's last record (issue 11), and so does the txn, the stream being the tail
# stream (sqlstream.txn): last_txn + 1, nothing written for it (SCHEMA_TAIL_TXN_SQL; the
# stream is named the tail once, in open_raw_schema). A single-record commit writes the
# chunks leaf only. (SCHEMA_TXN_SQL, the versions 13-17 counter, is kept for anatomy.)
SCHEMA_TAIL_TXN_SQL = "SELECT txn + 1 FROM last_txn"
SCHEMA_LAST_SQL = (
    "SELECT offset + 1, position + length(data) FROM chunks WHERE stream_id = 1 "
    "ORDER BY offset DESC LIMIT 1"
)
SCHEMA_INSERT_SQL = (
    "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, content_type, data) "
    "VALUES (1, ?, ?, ?, ?, NULL, NULL, 'bytes', ?)"
)
SCHEMA_READ_SQL = (
    "SELECT offset, timestamp, key, headers, data, position, txn, content_type FROM chunks "
    "WHERE stream_id = 1 AND offset >= ? ORDER BY offset LIMIT ?"
)


def section_args(prog: str, description: str, argv: list[str] | None) -> tuple[bool, int, str]:
    """The command line of a benchmark that prints a RESULTS.md section (``--quick``,
    ``--rounds``): returns (quick, rounds, the command as run, for the section's header)."""
    import argparse
    import shlex
    import sys

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="small rounds (seconds)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3 quick, 5 full)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rounds = args.rounds or (3 if args.quick else 5)
    if not 1 <= rounds <= 50:
        raise SystemExit("--rounds must be 1..50")
    return args.quick, rounds, prog + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))


def start_together(target: Callable[..., None], args: Sequence[tuple[Any, ...]], timeout: float = 600) -> list[Any]:
    """Run ``target(*args[i], go, results, i)`` in one spawned process per ``args`` entry.

    Every process opens what it needs, then waits on ``go``; the start signal is given once
    all have had half a second to get there, so the measured part begins together. Each
    process puts one result on ``results``; they are returned in the order they arrived.
    A process that dies without a result, or ``timeout`` seconds without all results,
    raises ``RuntimeError`` (rather than waiting out the timeout on a dead writer).
    """
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, go, results, i)) for i, a in enumerate(args)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)  # every process opens its connection before the start signal
        go.set()
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=1))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker process failed (exit codes {dead})") from None
        return got
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
