"""Bulk DELETE of 200,000 records with and without the chunks_txn_floor trigger (issue 23): python benchmarks/prototypes/tail/trig.py"""
import os, sys, time, tempfile, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))  # the checkout
from benchmarks.harness import open_raw_schema
N = int(os.environ.get("ROWS", "200000"))
def run(v):
    d = tempfile.mkdtemp()
    c = open_raw_schema(os.path.join(d, "s.db"))
    if v == "none":  # the migrations (schema 18) create it: measure without it too
        c.execute("DROP TRIGGER chunks_txn_floor")
    with c:
        c.executemany("INSERT INTO chunks (stream_id, offset, position, timestamp, txn, key, headers, content_type, data) VALUES (1,?,?,0,?,NULL,NULL,'bytes',?)", ((i, i*100, i//100+1, b"x"*100) for i in range(N)))
        c.execute("UPDATE counters SET value = ? WHERE name='txn'", (N//100,))
    p0 = time.process_time()
    with c:
        c.execute("DELETE FROM chunks WHERE stream_id = 1 AND offset < ?", (N,))
    p1 = time.process_time()
    c.close()
    return (p1-p0)/N*1e6
res = {}
for r in range(4):
    for v in (["none","trigger"] if r%2==0 else ["trigger","none"]):
        res.setdefault(v, []).append(run(v))
for v in res: print(v, "%.2f us/row" % statistics.median(res[v]), [round(x,2) for x in res[v]])
