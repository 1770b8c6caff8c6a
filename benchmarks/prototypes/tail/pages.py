"""One-record commits of raw apsw: a bare rowid table, sqlstream's chunks alone, chunks + the counter UPDATE (issue 23, the tail stream): python benchmarks/prototypes/tail/pages.py"""
import os, sys, time, tempfile, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # the checkout
from benchmarks.harness import open_raw_schema, open_raw
N = int(os.environ.get("COMMITS", "20000"))
data = b"x" * 100
def run(variant):
    d = tempfile.mkdtemp()
    if variant == "raw":
        c = open_raw(os.path.join(d, "r.db")); c.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        stmts = [("INSERT INTO records (data) VALUES (?)", lambda i: (data,))]
    else:
        c = open_raw_schema(os.path.join(d, "s.db"))
        stmts = [("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, content_type, data) VALUES (1,?,?,0,?,NULL,NULL,'bytes',?)", lambda i: (i, i*100, i+1, data))]
        if variant == "schema+counter":
            stmts.append(("UPDATE counters SET value = ?1 WHERE name = 'txn'", lambda i: (i+1,)))
    ex = c.execute
    t0 = time.perf_counter(); p0 = time.process_time()
    for i in range(N):
        ex("BEGIN IMMEDIATE")
        for s, b in stmts: ex(s, b(i))
        ex("COMMIT")
    t1 = time.perf_counter(); p1 = time.process_time()
    c.close()
    return N/(t1-t0), (p1-p0)/N*1e6
res = {}
vs = ["raw", "schema", "schema+counter"]
for r in range(5):
    for v in vs[r%3:]+vs[:r%3]:
        res.setdefault(v, []).append(run(v))
for v in vs:
    print(v, "rate %.0f" % statistics.median(x[0] for x in res[v]), "cpu us %.1f" % statistics.median(x[1] for x in res[v]))
