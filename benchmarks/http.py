"""HTTP front: sqlstream serve --http against the Durable Streams reference server (Node).

    python -m benchmarks.http [--seconds 5] [--messages 100000] [--reads 5] [--tail 300] [--baseline REV]

Side by side in one run, on the same machine, driven by the same Node client
(``benchmarks/http_js/driver.mjs``, Node's undici: not the bottleneck a sequential
Python client is). Every server runs for the whole run and each phase goes round them in
turn (the catch-up read round by round), so a loaded machine's ups and downs fall on all
of them alike:

- append rate: one POST per 100-byte message, 1 and 8 concurrent clients;
- catch-up read of ``--messages`` 100-byte JSON messages (MB/s of response bodies; the
  median of ``--reads`` reads);
- live-tail latency: POST returned -> its SSE event received (p50, p99).

Servers: sqlstream (``synchronous="normal"``, the default, and ``"full"``), and the
reference ``@durable-streams/server`` 0.3.7 file-backed (``dataDir``) and in memory (a
ceiling). Durability of an acknowledged append: sqlstream normal survives a process
crash (WAL), full also a power loss (fsync per commit); the reference server's
file-backed mode fdatasyncs its segment file before acknowledging an append (metadata in
LMDB), so it compares with sqlstream's ``full``; in memory survives nothing. The npm packages are
installed into ``~/.cache/sqlstream-tests/ds-bench-0.3.7`` on first use. Prints a
markdown section (kept in benchmarks/sections/3-http.md) with ratios to the reference
file-backed server.

``--baseline REV`` adds sqlstream as of git revision REV (say ``main``: ``git archive``
of it into a temporary folder, served by that tree's own code) next to this tree's, for
an A/B of a change in the same run: on a loaded machine only such side-by-side ratios
mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JS = Path(__file__).resolve().parent / "http_js"
CACHE = Path(os.environ.get("SQLSTREAM_TEST_CACHE") or Path.home() / ".cache" / "sqlstream-tests") / "ds-bench-0.3.7"


def _node_modules() -> Path:
    if not (CACHE / "node_modules" / "@durable-streams" / "server").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "@durable-streams/server@0.3.7", "undici@6"],
                       cwd=CACHE, check=True, capture_output=True)
    for name in ("driver.mjs", "reference.mjs"):
        shutil.copy(JS / name, CACHE / name)
    return CACHE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, label: str, durability: str, argv: list[str], cwd: Path, ready: str,
                 root: Path = ROOT) -> None:
        self.label, self.durability, self.argv, self.cwd, self.ready = label, durability, argv, cwd, ready
        self.root = root  # the source tree on PYTHONPATH
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(self.root)})
        stream = self.proc.stdout if self.ready == "stdout" else self.proc.stderr
        assert stream is not None
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{self.label} did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _drive(folder: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(["node", "driver.mjs", *args], cwd=folder, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _sqlstream(folder: Path, work: Path, synchronous: str, root: Path = ROOT,
               label: str = "") -> tuple[Server, str]:
    """sqlstream serving a new file, run from the source tree ``root`` (its own
    ``benchmarks.http --serve`` and its own package: ``PYTHONPATH`` comes before the
    editable install of this tree)."""
    port = _free_port()
    db = work / f"bench-{synchronous}{'-' + label if label else ''}.db"
    code = f"import sqlstream; sqlstream.open({str(db)!r}).close()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    durability = "process crash" if synchronous == "normal" else "process crash + power loss"
    # synchronous is a per-connection setting: a child serves the file opened with it.
    argv = [sys.executable, "-m", "benchmarks.http", "--serve", str(db), str(port), synchronous]
    name = f"sqlstream{' ' + label if label else ''} (synchronous={synchronous})"
    return Server(name, durability, argv, root, "stderr", root), f"http://127.0.0.1:{port}/v1/stream"


def _checkout(rev: str, into: Path) -> Path:
    """This repository's tree at ``rev``, extracted into ``into`` (no worktree, no checkout)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _reference(folder: Path, work: Path, file_backed: bool) -> tuple[Server, str]:
    port = _free_port()
    argv = ["node", "reference.mjs", str(port)] + ([str(work / "ref-data")] if file_backed else [])
    label = "reference server, file-backed" if file_backed else "reference server, in memory"
    durability = "process crash + power loss (fdatasync per append)" if file_backed else "nothing"
    return Server(label, durability, argv, folder, "stdout"), f"http://127.0.0.1:{port}/v1/stream"


def _serve(path: str, port: int, synchronous: str) -> None:
    """Child mode: serve one file with the given synchronous setting until SIGTERM."""
    import threading

    from sqlstream.http import HttpConfig
    from sqlstream.http.server import HttpServer

    server = HttpServer(path, "127.0.0.1", port, HttpConfig(max_live=10000, open_options={"synchronous": synchronous}))
    server.start()
    sys.stderr.write(f"serving {path} at {server.url}\n")
    sys.stderr.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    server.stop(10)


def _proc_stats(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, CPU seconds, open fds) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu, len(os.listdir(f"/proc/{pid}/fd"))


def idle_and_churn(folder: Path, count: int, churn: int, seconds: float = 10.0) -> None:
    """sqlstream serve --http holding ``count`` idle SSE connections (RSS, CPU), then
    ``churn`` connects and disconnects (RSS and fds before and after)."""
    with tempfile.TemporaryDirectory() as tmp:
        server, base = _sqlstream(folder, Path(tmp), "normal")
        with server:
            assert server.proc is not None
            pid = server.proc.pid
            rss0, _cpu0, fds0 = _proc_stats(pid)
            holder = subprocess.Popen(["node", "driver.mjs", "idle", f"{base}/idle", str(count), str(seconds)],
                                      cwd=folder, stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None
            holder.stdout.readline()  # "open": every connection is established
            time.sleep(1.0)
            rss1, cpu1, _ = _proc_stats(pid)
            time.sleep(seconds - 2)
            rss2, cpu2, _ = _proc_stats(pid)
            holder.wait()
            cpu_share = (cpu2 - cpu1) / (seconds - 2) * 100
            print(f"| {count:,} idle SSE connections | RSS {rss0:.0f} MiB before, {rss2:.0f} MiB held "
                  f"(+{rss2 - rss0:.0f} MiB) | CPU {cpu_share:.2f}% of a core while idle |")
            _drive(folder, "churn", f"{base}/churn", "500")  # warm-up: allocator and caches settle
            time.sleep(1.0)
            rss3, _, fds3 = _proc_stats(pid)
            _drive(folder, "churn", f"{base}/churn", str(churn))
            time.sleep(1.0)
            rss4, _, fds4 = _proc_stats(pid)
            print(f"| {churn:,} SSE connects and disconnects | RSS {rss3:.0f} -> {rss4:.0f} MiB | "
                  f"open fds {fds3} -> {fds4} (at start {fds0}) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="append phase length per client count")
    parser.add_argument("--messages", type=int, default=100_000, help="messages read in the catch-up phase")
    parser.add_argument("--reads", type=int, default=5, help="catch-up reads of the stream (the median is shown)")
    parser.add_argument("--tail", type=int, default=300, help="live-tail round trips")
    parser.add_argument("--idle", type=int, metavar="N",
                        help="instead: hold N idle SSE connections (RSS, CPU), then 10,000 connects/disconnects")
    parser.add_argument("--baseline", metavar="REV",
                        help="also serve sqlstream as of this git revision (A/B in one run)")
    parser.add_argument("--only-sqlstream", action="store_true",
                        help="leave out the reference server (A/B of sqlstream changes only)")
    parser.add_argument("--serve", nargs=3, metavar=("DB", "PORT", "SYNC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return 0
    folder = _node_modules()
    if args.idle:
        print("| what | memory | other |\n|---|---|---|")
        idle_and_churn(folder, args.idle, 10_000)
        return 0
    rows: list[dict[str, Any]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setups = [_sqlstream(folder, work, "normal"), _sqlstream(folder, work, "full")]
        if args.baseline:
            old = _checkout(args.baseline, work / "baseline")
            setups += [_sqlstream(folder, work, sync, old, f"@{args.baseline}") for sync in ("normal", "full")]
        if not args.only_sqlstream:
            setups += [_reference(folder, work, True), _reference(folder, work, False)]
        # Every server runs for the whole run and each phase goes round them in turn, so
        # that what else the machine does in a given minute weighs on every server alike.
        with contextlib.ExitStack() as running:
            for server, _ in setups:
                running.enter_context(server)
            rows = [{"server": server.label, "durability": server.durability} for server, _ in setups]
            for clients in (1, 8):
                for row, (_, base) in zip(rows, setups):
                    r = _drive(folder, "append", f"{base}/append-{clients}", str(clients), str(args.seconds))
                    row[f"append{clients}"] = r["messages"] / r["seconds"]
            for _, base in setups:
                _drive(folder, "fill", f"{base}/catchup", str(args.messages))
            # The median of a few reads, taken round by round: one read is a second or two,
            # and on a shared machine a single one moves by 2x with what else runs then.
            reads: list[list[dict[str, Any]]] = [[] for _ in setups]
            for _ in range(args.reads):
                for done, (_, base) in zip(reads, setups):
                    done.append(_drive(folder, "catchup", f"{base}/catchup"))
            for row, done in zip(rows, reads):
                r = sorted(done, key=lambda r: float(r["seconds"]))[len(done) // 2]
                row["catchup_mbs"] = r["bytes"] / r["seconds"] / 1e6
                row["catchup_s"] = r["seconds"]
            for row, (_, base) in zip(rows, setups):
                r = _drive(folder, "tail", f"{base}/tail", str(args.tail))
                row["p50"], row["p99"] = r["p50"], r["p99"]
                print(json.dumps(row), file=sys.stderr, flush=True)
    base_label = "sqlstream (synchronous=full)" if args.only_sqlstream else "reference server, file-backed"
    base_row = next(r for r in rows if r["server"] == base_label)
    print("## HTTP front (`sqlstream serve --http`) against the Durable Streams reference server\n")
    print("```\npython -m benchmarks.http" + (f" --seconds {args.seconds:g}" if args.seconds != 5 else "")
          + (f" --messages {args.messages}" if args.messages != 100_000 else "")
          + (f" --reads {args.reads}" if args.reads != 5 else "")
          + (f" --tail {args.tail}" if args.tail != 300 else "")
          + (f" --baseline {args.baseline}" if args.baseline else "")
          + (" --only-sqlstream" if args.only_sqlstream else "") + "\n```\n")
    print(f"One Node (undici) client for every server; 100-byte messages. Ratios are to {base_label} "
          "(higher is better for rates, lower for latencies).\n")
    print("| server | an acked append survives | append/s, 1 client | append/s, 8 clients | catch-up MB/s "
          f"({args.messages:,} msgs) | tail p50 | tail p99 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        def ratio(key: str) -> str:
            return f" ({r[key] / base_row[key]:.2f}×)" if base_row[key] else ""
        print(f"| {r['server']} | {r['durability']} | {r['append1']:,.0f}{ratio('append1')} | "
              f"{r['append8']:,.0f}{ratio('append8')} | {r['catchup_mbs']:.1f}{ratio('catchup_mbs')} | "
              f"{r['p50']:.2f} ms{ratio('p50')} | {r['p99']:.2f} ms{ratio('p99')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
