"""HTTP front (branch `http`): a JSON append body of ~4 MiB `[0,0,...]` becomes 2M records
in one transaction; measure what the server takes (time, RSS) and whether other writers wait.
Run: PYTHONPATH=<http worktree> python http_json_flatten.py
"""
import http.client, os, tempfile, threading, time

import sqlstream
from sqlstream.http.server import HttpServer

d = tempfile.mkdtemp()
path = os.path.join(d, "h.db")
sqlstream.open(path).close()
srv = HttpServer(path, "127.0.0.1", 0)
srv.start()


def rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


try:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=300)
    c.request("PUT", "/v1/stream/j", headers={"Content-Type": "application/json"})
    print("create:", c.getresponse().status)
    c.close()
    n = 2_000_000
    body = ("[" + ",".join(["0"] * n) + "]").encode()
    before = rss()
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=300)
    c.request("POST", "/v1/stream/j", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    print(f"append of {len(body):,} bytes: {r.status} in {time.monotonic() - t:.1f}s, server RSS +{rss() - before} MiB "
          "(noisy: shared machine)")
    db = sqlstream.open(path)
    print("records stored:", db.stream("j").info().next_offset)
    db.close()
finally:
    srv.stop()
