"""python delbench.py SRC N: CPU per row of one DELETE of N tail-stream rows above the counter (SRC: a source tree)."""
import sys, os, time, tempfile, apsw
sys.path.insert(0, sys.argv[1])
import sqlstream
N = int(sys.argv[2])
d = tempfile.mkdtemp(); p = os.path.join(d, "b.db")
db = sqlstream.open(p); db.create_stream("s").append("x"); db.close()
c = apsw.Connection(p)
c.execute("BEGIN")
c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
          "INSERT INTO chunks (stream_id, offset, position, timestamp, txn, content_type, data) "
          "SELECT 1, i, i, 1, i + 1, 'bytes', x'00' FROM n", (N,))
c.execute("COMMIT")
t = time.process_time()
c.execute("DELETE FROM chunks WHERE stream_id = 1")
print(sys.argv[1], round((time.process_time() - t) / N * 1e6, 3), "us/row", c.execute("select value from counters where name='txn'").fetchall())
