"""Server CPU per HTTP append, per thread, for source trees side by side (an A/B tool).

    python -m benchmarks.http_cpu [--rounds 5] [--seconds 3] [--clients 1,8] [--sync full] LABEL=TREE ...

Each ``TREE`` is a source tree of sqlstream (this checkout, or ``git archive REV`` of
another revision extracted somewhere). Round by round, alternating the order, each tree
serves a fresh file in a fresh process (a ``python -c`` child with that tree on
``PYTHONPATH``) and ``benchmarks/http_js/driver.mjs append`` (the Node client of
``python -m benchmarks.http``) POSTs 100-byte messages with 1 and 8 clients. Printed per
tree and client count, medians over rounds: the rate, and the server's CPU per POST (from
``/proc/PID/task/TID/stat``, 10 ms ticks) of the event-loop thread (uvicorn, the app), the
database thread (``sqlstream.aio``'s worker) and the rest of the process. CPU time moves far
less with the machine's load than the rate does; the load average is printed too.

``LABEL=TREE@httptools`` serves that tree with uvicorn's httptools parser instead of the
h11 protocol the server configures (needs ``pip install httptools``; an experiment only:
see ``sqlstream/http/server.py`` for why the server uses h11).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .http import _drive, _free_port, _node_modules

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# The child serving one file: run as ``python -c`` with only the tree under test on its path
# (the tree may be an older revision, without this module).
_CHILD = """
import json, signal, sys, threading
from sqlstream.http import HttpConfig
from sqlstream.http.server import HttpServer
path, port, synchronous, parser = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
server = HttpServer(path, "127.0.0.1", port, HttpConfig(max_live=10000, open_options={"synchronous": synchronous}))
if parser == "httptools":
    server.server.config.http = "httptools"
server.start()
sys.stderr.write("ready " + json.dumps({t.name: t.native_id for t in threading.enumerate()}) + "\\n")
sys.stderr.flush()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
server.stop(10)
"""


def _one(folder: Path, tree: str, parser: str, synchronous: str, clients: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        env = {**os.environ, "PYTHONPATH": tree}
        subprocess.run([sys.executable, "-c", f"import sqlstream; sqlstream.open({str(db)!r}).close()"],
                       check=True, env=env, cwd=tree)
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(db), str(port), synchronous, parser], env=env,
                                cwd=tree, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            if not line.startswith("ready "):
                raise RuntimeError(line + proc.stderr.read())
            ids = json.loads(line[len("ready "):])
            loop = f"/proc/{proc.pid}/task/{ids['sqlstream-http']}/stat"
            worker = f"/proc/{proc.pid}/task/{ids['sqlstream-aio']}/stat"
            url = f"http://127.0.0.1:{port}/v1/stream/a"
            _drive(folder, "append", url, str(clients), "0.5")  # warm-up
            before = (_cpu(loop), _cpu(worker), _cpu(f"/proc/{proc.pid}/stat"))
            result = _drive(folder, "append", url, str(clients), str(seconds))
            after = (_cpu(loop), _cpu(worker), _cpu(f"/proc/{proc.pid}/stat"))
        finally:
            proc.terminate()
            proc.wait()
    n = result["messages"]
    loop_ms, db_ms, total_ms = ((a - b) / n * 1e3 for a, b in zip(after, before))
    return {"rate": n / result["seconds"], "loop_ms": loop_ms, "db_ms": db_ms, "other_ms": total_ms - loop_ms - db_ms,
            "total_ms": total_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--sync", default="full", choices=("normal", "full"))
    parser.add_argument("trees", nargs="+", metavar="LABEL=TREE[@httptools]")
    args = parser.parse_args(argv)
    folder = _node_modules()
    variants: list[tuple[str, str, str]] = []
    for spec in args.trees:
        label, _, rest = spec.partition("=")
        tree, _, parser_name = rest.partition("@")
        variants.append((label, str(Path(tree).resolve()), parser_name or "h11"))
    counts = [int(c) for c in args.clients.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {(v[0], c): [] for v in variants for c in counts}
    loads = [os.getloadavg()[0]]
    for rnd in range(args.rounds):
        for clients in counts:
            for label, tree, parser_name in (variants if rnd % 2 == 0 else variants[::-1]):
                r = _one(folder, tree, parser_name, args.sync, clients, args.seconds)
                results[(label, clients)].append(r)
                print(rnd, label, clients, json.dumps({k: round(v, 3) for k, v in r.items()}), file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
    print(f"python -m benchmarks.http_cpu --rounds {args.rounds} --seconds {args.seconds:g} --clients {args.clients} "
          f"--sync {args.sync} ...: load average (1 min) {min(loads):.1f}-{max(loads):.1f}\n")
    print("| tree | clients | append/s | loop thread ms/POST | database thread ms/POST | rest ms/POST | process ms/POST |")
    print("|---|---|---|---|---|---|---|")
    for (label, clients), rs in results.items():
        med: dict[str, Any] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {label} | {clients} | {med['rate']:,.0f} | {med['loop_ms']:.3f} | {med['db_ms']:.3f} | "
              f"{med['other_ms']:.3f} | {med['total_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
